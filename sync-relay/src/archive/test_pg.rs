//! Postgres for tests: a uniquely named database on the machine's server (127.0.0.1:5432, or
//! `FLYT_TEST_POSTGRES`), dropped afterwards; and a throwaway cluster of our own
//! (`initdb`/`pg_ctl` in a temp dir, on a free loopback port) that a test can kill and restart.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The server other Postgres tests use.
fn server_url() -> String {
    std::env::var("FLYT_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

async fn admin(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!("these tests need Postgres at {url} (FLYT_TEST_POSTGRES overrides it): {e}")
        });
    tokio::spawn(conn);
    client
}

/// A fresh database, dropped when this goes out of scope.
#[derive(Debug)]
pub(crate) struct TestDb {
    name: String,
}

impl TestDb {
    pub async fn create() -> TestDb {
        let name = format!(
            "flyt_test_{}_{}",
            std::process::id(),
            hex::encode(rand_bytes())
        );
        admin(&format!("{}/postgres", server_url()))
            .await
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        TestDb { name }
    }

    pub fn url(&self) -> String {
        format!("{}/{}", server_url(), self.name)
    }

    pub async fn execute(&self, sql: &str) {
        admin(&self.url()).await.batch_execute(sql).await.unwrap();
    }
}

fn rand_bytes() -> [u8; 6] {
    let mut b = [0u8; 6];
    getrandom::fill(&mut b).expect("randomness");
    b
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let url = format!("{}/postgres", server_url());
        // Drop runs inside a test's runtime: use a runtime of our own on another thread.
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(async {
                    if let Ok((c, conn)) =
                        tokio_postgres::connect(&url, tokio_postgres::NoTls).await
                    {
                        tokio::spawn(conn);
                        let _ = c.batch_execute(&sql).await;
                    }
                })
        })
        .join();
    }
}

/// A free TCP port on 127.0.0.1 (nothing listens there once this returns).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn pg_bin() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries in /usr/lib/postgresql (apt-get install postgresql)")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .expect("an initdb under /usr/lib/postgresql/*/bin")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// Runs a Postgres binary, as the `postgres` user when we are root (Postgres refuses root).
fn run(bin: &Path, args: &[&str]) {
    let mut cmd = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin);
        c
    } else {
        Command::new(bin)
    };
    let out = cmd.args(args).output().expect("run a Postgres binary");
    assert!(
        out.status.success(),
        "{} {args:?} failed: {}{}",
        bin.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A Postgres cluster of our own in a temp dir, on a free loopback port. Stopped on drop.
#[derive(Debug)]
pub(crate) struct PgCluster {
    _dir: tempfile::TempDir,
    data: PathBuf,
    bin: PathBuf,
    port: u16,
    running: bool,
}

impl PgCluster {
    pub fn start() -> PgCluster {
        let bin = pg_bin();
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("data");
        std::fs::create_dir(&data).expect("data dir");
        if is_root() {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
                .expect("chmod");
            let ok = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(&data)
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "chown the cluster directory to postgres");
        }
        let d = data.to_str().expect("utf-8 path");
        run(
            &bin.join("initdb"),
            &[
                "-D",
                d,
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        let mut c = PgCluster {
            _dir: dir,
            data,
            bin,
            port: free_port(),
            running: false,
        };
        c.restart();
        c
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts (again) on the same port and data; returns once it accepts connections.
    pub fn restart(&mut self) {
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c fsync=off",
            self.port
        );
        let log = self.data.join("log");
        run(
            &self.bin.join("pg_ctl"),
            &[
                "-D",
                self.data.to_str().expect("utf-8"),
                "-l",
                log.to_str().expect("utf-8"),
                "-o",
                &opts,
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
        self.running = true;
    }

    /// Kills it the hard way (immediate shutdown: no checkpoint, connections cut).
    pub fn kill(&mut self) {
        run(
            &self.bin.join("pg_ctl"),
            &[
                "-D",
                self.data.to_str().expect("utf-8"),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
        self.running = false;
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.running {
            self.kill();
        }
    }
}
