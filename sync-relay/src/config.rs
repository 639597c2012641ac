//! The relay's configuration: defaults that work on a laptop, an optional TOML file, then
//! `FLYT_RELAY_*` environment variables and `--flags` (the later wins).
//!
//! Every key of the TOML file is a field of [`Config`] (same name); unknown keys are an error,
//! so a typo never silently falls back to a default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crdt_model::DocId;
use serde::{Deserialize, Serialize};

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("could not read the config file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for [`Config`].
    #[error("config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with its line.
        #[source]
        source: toml::de::Error,
    },
    /// A value is out of range.
    #[error("config: {0}")]
    Invalid(String),
}

/// Everything `flyt-relay` can be told. See the module docs for where values come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// HTTP address for `/info`, `/healthz`, `/readyz`, `/metrics`, `/join`, `/relay` and the
    /// archive's routes. Loopback by default: put a TLS-terminating proxy in front to expose it.
    pub listen: SocketAddr,
    /// The URL members use to reach this HTTP face (what `flyt relay add` is given), without a
    /// trailing slash. Default: `http://{listen}`. `/info` reports `{public_url}/relay` as the
    /// relay URL for NAT traversal.
    pub public_url: Option<String>,
    /// Where the relay keeps its SQLite database (documents, sync state, its key).
    pub data_dir: PathBuf,
    /// UDP address of the iroh endpoint that speaks the Flyt sync protocol. A fixed port, so
    /// the address recorded in workspaces stays valid across restarts.
    pub iroh_bind: SocketAddr,
    /// Postgres URL for the archive (`postgres://user@host/db`). Without it the archive is an
    /// embedded SQLite database in `data_dir`.
    pub database_url: Option<String>,
    /// Serve only these workspaces (ids). Empty: any workspace whose owner or admin adds this
    /// relay with `flyt relay add`.
    pub workspaces: Vec<String>,
    /// An HTTP request taking longer than this many seconds is answered with 408.
    pub request_timeout_secs: u64,
    /// Sustained frames per second one sync connection may send; a peer above it (after the
    /// burst) is disconnected.
    pub frames_per_sec: u32,
    /// How many frames above the sustained rate a connection may send at once.
    pub frame_burst: u32,
    /// Sustained bytes per second one sync connection may send.
    pub bytes_per_sec: u64,
    /// How many bytes above the sustained rate a connection may send at once (at least one
    /// maximal frame, 16 MiB).
    pub byte_burst: u64,
    /// Frames queued for one peer before it counts as too slow and is disconnected (it resumes
    /// from its saved sync state when it reconnects).
    pub send_queue: usize,
    /// At most this many sync connections at once; more are refused.
    pub max_connections: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8787)),
            public_url: None,
            data_dir: dirs::data_dir()
                .map(|d| d.join("flyt-relay"))
                .unwrap_or_else(|| PathBuf::from("flyt-relay-data")),
            iroh_bind: SocketAddr::from(([127, 0, 0, 1], 8788)),
            database_url: None,
            workspaces: Vec::new(),
            request_timeout_secs: 10,
            frames_per_sec: 500,
            frame_burst: 5_000,
            bytes_per_sec: 8 * 1024 * 1024,
            byte_burst: 64 * 1024 * 1024,
            send_queue: 4_096,
            max_connections: 20_000,
        }
    }
}

/// Command-line and environment overrides (each flag also reads `FLYT_RELAY_<NAME>`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Overrides {
    /// HTTP address [default: 127.0.0.1:8787]
    #[arg(long, env = "FLYT_RELAY_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// The URL members use to reach this relay [default: http://LISTEN]
    #[arg(long, env = "FLYT_RELAY_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Data directory [default: the platform data dir, then flyt-relay]
    #[arg(long, env = "FLYT_RELAY_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// UDP address of the iroh endpoint [default: 127.0.0.1:8788]
    #[arg(long, env = "FLYT_RELAY_IROH_BIND")]
    pub iroh_bind: Option<SocketAddr>,
    /// Postgres URL for the archive [default: embedded SQLite in the data dir]
    #[arg(long, env = "FLYT_RELAY_DATABASE_URL")]
    pub database_url: Option<String>,
}

impl Config {
    /// Defaults, then `file` (if given), then `overrides`.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let mut cfg = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                toml::from_str(&text).map_err(|source| ConfigError::Parse {
                    path: path.to_owned(),
                    source,
                })?
            }
            None => Config::default(),
        };
        let o = overrides.clone();
        cfg.listen = o.listen.unwrap_or(cfg.listen);
        cfg.public_url = o.public_url.or(cfg.public_url);
        cfg.data_dir = o.data_dir.unwrap_or(cfg.data_dir);
        cfg.iroh_bind = o.iroh_bind.unwrap_or(cfg.iroh_bind);
        cfg.database_url = o.database_url.or(cfg.database_url);
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        if self.frames_per_sec == 0 || self.bytes_per_sec == 0 {
            return bad("frames_per_sec and bytes_per_sec must be above 0");
        }
        if self.byte_burst < peer::sync::protocol::MAX_FRAME as u64 {
            return bad("byte_burst must be at least one maximal frame (16777216)");
        }
        if self.send_queue == 0 || self.max_connections == 0 || self.request_timeout_secs == 0 {
            return bad("send_queue, max_connections and request_timeout_secs must be above 0");
        }
        if let Some(w) = self.workspaces.iter().find(|w| w.parse::<DocId>().is_err()) {
            return Err(ConfigError::Invalid(format!("{w:?} is not a workspace id")));
        }
        if let Some(u) = &self.public_url
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            return bad("public_url must start with http:// or https://");
        }
        Ok(())
    }

    /// The workspaces this relay is limited to (empty: any that adds it).
    pub fn allowed_workspaces(&self) -> Vec<DocId> {
        self.workspaces
            .iter()
            .filter_map(|w| w.parse().ok())
            .collect()
    }

    /// The URL members use to reach the HTTP face.
    pub fn public_url(&self) -> String {
        match &self.public_url {
            Some(u) => u.trim_end_matches('/').to_owned(),
            None => format!("http://{}", self.listen),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:9000\"\nframes_per_sec = 7\ndata_dir = \"/tmp/x\"\n",
        )
        .unwrap();
        let o = Overrides {
            data_dir: Some("/tmp/y".into()),
            ..Default::default()
        };
        let cfg = Config::load(Some(&path), &o).unwrap();
        assert_eq!(cfg.listen, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(cfg.frames_per_sec, 7);
        assert_eq!(cfg.data_dir, PathBuf::from("/tmp/y"));
        assert_eq!(cfg.public_url(), "http://127.0.0.1:9000");
        assert_eq!(cfg.iroh_bind, Config::default().iroh_bind);
    }

    #[test]
    fn typos_and_bad_values_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.toml");
        std::fs::write(&path, "lisen = \"127.0.0.1:9000\"\n").unwrap();
        let e = Config::load(Some(&path), &Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("lisen"), "{e}");
        std::fs::write(&path, "frames_per_sec = 0\n").unwrap();
        assert!(matches!(
            Config::load(Some(&path), &Overrides::default()),
            Err(ConfigError::Invalid(_))
        ));
        let missing = dir.path().join("nope.toml");
        assert!(matches!(
            Config::load(Some(&missing), &Overrides::default()),
            Err(ConfigError::Read { .. })
        ));
    }
}
