//! A Flyt home: the folder holding one device's database (and so its secret keys). The CLI and
//! the desktop app find and create it the same way, so `flyt` and `flyt-app` on one machine
//! share a home unless told otherwise.

use std::path::{Path, PathBuf};

/// The database file inside a home.
pub const DB_FILE: &str = "flyt.db";

/// The home used when none is given: `$FLYT_HOME` if set and not empty, else the user's data
/// folder's `flyt` (e.g. `~/.local/share/flyt`). `None` when neither exists (no `$HOME`).
pub fn default_home() -> Option<PathBuf> {
    match std::env::var_os("FLYT_HOME") {
        Some(h) if !h.is_empty() => Some(PathBuf::from(h)),
        _ => data_home(),
    }
}

/// The data folder's `flyt`, ignoring `$FLYT_HOME` (for callers that read it themselves).
pub fn data_home() -> Option<PathBuf> {
    dirs::data_dir().map(|d| d.join("flyt"))
}

/// The database of the home `dir`.
pub fn db_path(dir: &Path) -> PathBuf {
    dir.join(DB_FILE)
}

/// Creates the home `dir` (and its parents) if needed; a new one is readable by its owner
/// only (it holds secret keys).
pub fn create(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_home_is_private_and_an_existing_one_is_fine() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("a/b/home");
        create(&home).unwrap();
        create(&home).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&home).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700, "{mode:o}");
        }
        assert_eq!(db_path(&home), home.join("flyt.db"));
    }

    #[test]
    fn a_file_in_the_way_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("home");
        std::fs::write(&file, "not a folder").unwrap();
        assert!(create(&file).is_err());
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "not a folder");
    }
}
