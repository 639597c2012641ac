//! The node's control socket: while `flyt serve` runs, every other `flyt` command on the same
//! home runs through it, so the node alone writes the database (no "database is locked" while
//! it is busy) and what a second terminal sends goes out to peers at once.
//!
//! The socket is `node.sock` in the home, a Unix socket only its owner may use: created as
//! `node.sock.<pid>`, made 0600, checked, then renamed into place (nobody can connect in
//! between). A client refuses a socket that is not its own user's or that others may use, and
//! a home another user owns or others may write. A socket left by a node that was killed is
//! stale: connecting fails, the client works on storage directly, and the next `flyt serve`
//! replaces it. A clean stop removes it.
//!
//! Protocol: one request per connection, one line of JSON (at most [`MAX_REQUEST`] bytes),
//! answered with one line of JSON, `{"ok": ...}` or `{"error": {"code", "message"}}`:
//! - `{"cmd": "cli", "argv": [...], "color": bool}`: a `flyt` command line; the node parses and
//!   runs it with the very code a node-less `flyt` runs (`exec`, each storage step on the
//!   node's store thread); `ok` is `{"stdout": "..."}`, what the command printed.
//! - `{"cmd": "events"}`: the app's event stream (`peer/src/api.md`), one event per line, until
//!   either side closes.
//! - any other `cmd`: a `peer::api::Request`, answered by the same dispatcher as the app's
//!   (`typing`, `status`, `send`...).

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use peer::Store;
use peer::api::{Api, ApiError, ErrorCode, Request};
use peer::node::Node;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::sync::broadcast;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span, warn};

use crate::output::{Buffer, Out};
use crate::{Access, Cli, Command};

/// The socket's file name in the home.
pub const SOCKET: &str = "node.sock";

/// The longest request line accepted.
pub const MAX_REQUEST: usize = 1024 * 1024;

/// How long a client may take to send its request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// At most this many requests are served at once; more wait to be accepted.
const MAX_CLIENTS: usize = 64;

/// This process's effective user: the owner of `/proc/self` on Linux; elsewhere, the owner of
/// a file it creates.
fn euid(home: &Path) -> Result<u32> {
    if let Ok(m) = std::fs::metadata("/proc/self") {
        return Ok(m.uid());
    }
    let probe = home.join(format!(".uid.{}", std::process::id()));
    std::fs::write(&probe, b"").with_context(|| format!("writing in {}", home.display()))?;
    let uid = std::fs::metadata(&probe)?.uid();
    let _ = std::fs::remove_file(&probe);
    Ok(uid)
}

/// Refuses a home that another user owns or that others may write (they could put their own
/// socket in its place).
fn check_home(home: &Path) -> Result<()> {
    let m = std::fs::metadata(home).with_context(|| format!("reading {}", home.display()))?;
    if m.uid() != euid(home)? {
        bail!(
            "{} belongs to another user (uid {}): refusing to use its node socket",
            home.display(),
            m.uid()
        );
    }
    if m.mode() & 0o022 != 0 {
        bail!(
            "{} may be written by other users (mode {:o}): run `chmod 700 {}`",
            home.display(),
            m.mode() & 0o777,
            home.display()
        );
    }
    Ok(())
}

/// Refuses a socket that is not this user's, or that others may use.
fn check_socket(home: &Path, path: &Path) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let m =
        std::fs::symlink_metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if !m.file_type().is_socket() {
        bail!(
            "{} is not a socket: remove it (a node creates it when it starts)",
            path.display()
        );
    }
    if m.uid() != euid(home)? {
        bail!(
            "{} belongs to another user (uid {}): refusing to talk to it",
            path.display(),
            m.uid()
        );
    }
    if m.mode() & 0o077 != 0 {
        bail!(
            "{} may be used by other users (mode {:o}): refusing to talk to it; stop the node \
             and remove it",
            path.display(),
            m.mode() & 0o777
        );
    }
    Ok(())
}

/// A connection to this home's running node, or `None` when no node runs (no socket, or a
/// stale one a killed node left).
pub fn connect(home: &Path) -> Result<Option<UnixStream>> {
    let path = home.join(SOCKET);
    if std::fs::symlink_metadata(&path).is_err() {
        return Ok(None);
    }
    check_home(home)?;
    check_socket(home, &path)?;
    match UnixStream::connect(&path) {
        Ok(s) => Ok(Some(s)),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound
            ) =>
        {
            debug!("{} is stale (no node behind it)", path.display());
            Ok(None)
        }
        Err(e) => Err(e).with_context(|| format!("connecting to {}", path.display())),
    }
}

/// Sends one request and reads the one answer: the `ok` value, or the node's error.
pub fn request(mut conn: UnixStream, req: &Value) -> Result<Value> {
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    conn.write_all(&line)
        .context("sending the request to the node")?;
    let _ = conn.shutdown(std::net::Shutdown::Write);
    let mut answer = Vec::new();
    conn.read_to_end(&mut answer)
        .context("reading the node's answer")?;
    if answer.is_empty() {
        bail!("the node stopped before answering; nothing may have been done, check and retry");
    }
    let v: Value = serde_json::from_slice(&answer).context("the node's answer is not JSON")?;
    if let Some(e) = v.get("error") {
        bail!("{}", e["message"].as_str().unwrap_or("the node refused"));
    }
    Ok(v.get("ok").cloned().unwrap_or(Value::Null))
}

/// Runs this command line in the node and prints what it printed.
pub fn run_remote(conn: UnixStream, argv: Vec<String>, out: &mut Out) -> Result<()> {
    let color = Out::colors(out.is_json());
    let ok = request(conn, &json!({ "cmd": "cli", "argv": argv, "color": color }))?;
    out.raw(ok["stdout"].as_str().unwrap_or("").as_bytes())
}

/// Events from the running node, one JSON object per line, on a thread; `None` when no node
/// runs. The iterator ends when the node stops.
pub fn events(home: &Path) -> Result<Option<impl Iterator<Item = Value>>> {
    let Some(mut conn) = connect(home)? else {
        return Ok(None);
    };
    conn.write_all(b"{\"cmd\":\"events\"}\n")?;
    let lines = std::io::BufReader::new(conn);
    Ok(Some(std::io::BufRead::lines(lines).map_while(|l| {
        l.ok().and_then(|l| serde_json::from_str::<Value>(&l).ok())
    })))
}

/// The bound control socket; removed from the home when dropped.
pub struct Listener {
    path: PathBuf,
    ino: u64,
    listener: Option<UnixListener>,
}

impl Listener {
    /// Binds `node.sock` in `home`, owner-only. Refuses when a node already runs there;
    /// replaces a stale socket. Call inside the runtime.
    pub fn bind(home: &Path) -> Result<Listener> {
        check_home(home)?;
        let path = home.join(SOCKET);
        if std::fs::symlink_metadata(&path).is_ok() {
            if UnixStream::connect(&path).is_ok() {
                bail!(
                    "a node is already running for {} (its control socket answers): stop it \
                     first, or use another --home",
                    home.display()
                );
            }
            debug!("replacing the stale socket {}", path.display());
            std::fs::remove_file(&path)
                .with_context(|| format!("removing the stale {}", path.display()))?;
        }
        let tmp = home.join(format!("{SOCKET}.{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let listener =
            UnixListener::bind(&tmp).with_context(|| format!("binding {}", tmp.display()))?;
        let made = (|| -> Result<u64> {
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
            check_socket(home, &tmp)?;
            let ino = std::fs::symlink_metadata(&tmp)?.ino();
            std::fs::rename(&tmp, &path)?;
            Ok(ino)
        })();
        let ino = match made {
            Ok(ino) => ino,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e).context("creating the control socket");
            }
        };
        Ok(Listener {
            path,
            ino,
            listener: Some(listener),
        })
    }

    /// Serves requests until `stop`; then waits for the requests in flight.
    pub async fn serve(&mut self, api: Arc<Api>, home: PathBuf, stop: CancellationToken) {
        let Some(listener) = self.listener.take() else {
            return;
        };
        let mut clients = JoinSet::new();
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                Some(_) = clients.join_next(), if !clients.is_empty() => {}
                accepted = listener.accept(), if clients.len() < MAX_CLIENTS => match accepted {
                    Ok((stream, _)) => {
                        let (api, home, stop) = (api.clone(), home.clone(), stop.clone());
                        clients.spawn(
                            handle(stream, api, home, stop).instrument(info_span!("control")),
                        );
                    }
                    Err(e) => warn!("control socket: accept failed: {e}"),
                },
            }
        }
        drop(listener);
        self.remove();
        while clients.join_next().await.is_some() {}
    }

    /// Removes the socket file, if it is still ours.
    fn remove(&self) {
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == self.ino) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.remove();
    }
}

fn error_line(e: &ApiError) -> Value {
    json!({ "error": e })
}

/// Reads the one request line (bounded in size and time).
async fn read_request(
    r: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
) -> Result<Value, ApiError> {
    let mut line = Vec::new();
    let read = tokio::time::timeout(
        REQUEST_TIMEOUT,
        r.take(MAX_REQUEST as u64 + 1).read_until(b'\n', &mut line),
    )
    .await;
    match read {
        Err(_) => {
            return Err(ApiError::bad_request(format!(
                "No request arrived within {} seconds.",
                REQUEST_TIMEOUT.as_secs()
            )));
        }
        Ok(Err(e)) => return Err(ApiError::bad_request(format!("Reading the request: {e}."))),
        Ok(Ok(_)) => {}
    }
    if line.len() > MAX_REQUEST {
        return Err(ApiError::bad_request(format!(
            "The request is longer than {MAX_REQUEST} bytes."
        )));
    }
    if line.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "The request is empty: send one line of JSON.",
        ));
    }
    serde_json::from_slice(&line)
        .map_err(|e| ApiError::bad_request(format!("The request is not JSON ({e}).")))
}

async fn handle(
    stream: tokio::net::UnixStream,
    api: Arc<Api>,
    home: PathBuf,
    stop: CancellationToken,
) {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let answer = match read_request(&mut r).await {
        Err(e) => error_line(&e),
        Ok(req) => match req.get("cmd").and_then(Value::as_str) {
            Some("events") => {
                stream_events(api, &mut w, stop).await;
                return;
            }
            Some("cli") => match cli(&api, &home, req).await {
                Ok(stdout) => json!({ "ok": { "stdout": stdout } }),
                Err(e) => error_line(&e),
            },
            _ => match api.handle_json(req).await {
                Ok(v) => json!({ "ok": v }),
                Err(e) => error_line(&e),
            },
        },
    };
    let mut line = serde_json::to_vec(&answer).expect("answers serialize");
    line.push(b'\n');
    if let Err(e) = w.write_all(&line).await {
        debug!("control socket: the client left before the answer: {e}");
    }
    let _ = w.shutdown().await;
}

/// The app's event stream, one event per line, until the client goes or the node stops.
async fn stream_events(
    api: Arc<Api>,
    w: &mut tokio::net::unix::OwnedWriteHalf,
    stop: CancellationToken,
) {
    let mut rx = api.subscribe();
    // Subscribed: first who is around now, so the client knows it hears what follows.
    let mut buf = Vec::new();
    if let Ok(Value::Array(members)) = api.handle(Request::Members).await {
        for m in members.iter().filter(|m| m["online"] != "offline") {
            let ev = json!({
                "type": "presence",
                "person": m["person"],
                "name": m["name"],
                "state": m["online"],
            });
            serde_json::to_writer(&mut buf, &ev).expect("events serialize");
            buf.push(b'\n');
        }
    }
    if w.write_all(&buf).await.is_err() {
        return;
    }
    loop {
        let batch = tokio::select! {
            _ = stop.cancelled() => return,
            b = rx.recv() => match b {
                Ok(b) => b,
                Err(broadcast::error::RecvError::Lagged(_)) => peer::api::lagged_batch(),
                Err(broadcast::error::RecvError::Closed) => return,
            },
        };
        let mut buf = Vec::new();
        for ev in batch.iter() {
            serde_json::to_writer(&mut buf, ev).expect("events serialize");
            buf.push(b'\n');
        }
        if w.write_all(&buf).await.is_err() {
            return;
        }
    }
}

/// The storage, reached through the node: each step runs on its store thread.
struct Remote {
    node: Arc<Node>,
    rt: tokio::runtime::Handle,
}

impl Access for Remote {
    fn with<R: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut Store) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        self.rt
            .block_on(self.node.call(f))
            .context("the node stopped")?
    }
}

fn failed(e: &anyhow::Error) -> ApiError {
    ApiError::new(ErrorCode::BadRequest, format!("{e:#}"))
}

/// Runs a `flyt` command line for a client; returns what it printed.
async fn cli(api: &Api, home: &Path, req: Value) -> Result<String, ApiError> {
    let argv: Vec<String> = serde_json::from_value(req["argv"].clone()).map_err(|_| {
        ApiError::bad_request("A \"cli\" request needs \"argv\", a list of strings.")
    })?;
    let color = req["color"].as_bool().unwrap_or(false);
    let parsed = Cli::try_parse_from(std::iter::once("flyt".to_owned()).chain(argv))
        .map_err(|e| ApiError::bad_request(e.to_string().trim_end().to_owned()))?;
    let buf = Buffer::default();
    let mut out = Out::to_buffer(parsed.json, color, buf.clone());
    let node = api.node().await?;
    match parsed.command {
        Command::Serve { .. } => {
            return Err(ApiError::bad_request(format!(
                "A node is already running for {}.",
                home.display()
            )));
        }
        Command::Device(crate::DeviceCmd::Join { .. }) | Command::Init { .. } => {
            let name = node
                .call(|s| s.identity().map(|i| i.name.clone()))
                .await??;
            return Err(ApiError::bad_request(format!(
                "This home already has an identity ({name})."
            )));
        }
        Command::Tail { .. } => {
            return Err(ApiError::bad_request(
                "`tail` reads the database and subscribes with {\"cmd\": \"events\"}.",
            ));
        }
        Command::Typing { channel } => {
            api.handle_json(json!({ "cmd": "typing", "channel": channel }))
                .await?;
        }
        Command::Status => {
            let live = api.handle(Request::Status).await?;
            let st = node.call(|s| s.status()).await??;
            let live: peer::api::StatusView =
                serde_json::from_value(live).map_err(|e| failed(&e.into()))?;
            out.status(&st, Some(&live)).map_err(|e| failed(&e))?;
        }
        Command::Join { ticket, .. } => {
            let joined = api.handle(Request::Join { ticket }).await?;
            let ws = joined["workspace"].as_str().unwrap_or_default().to_owned();
            let w = ws.clone();
            let (name, channels) = node
                .call(move |s| -> Result<(String, usize), peer::StoreError> {
                    let name = s
                        .workspaces()?
                        .into_iter()
                        .find(|x| x.id == w)
                        .map(|x| x.name)
                        .unwrap_or_default();
                    Ok((name, s.channels()?.len()))
                })
                .await??;
            out.joined(&name, &ws, channels).map_err(|e| failed(&e))?;
        }
        cmd => {
            let mut remote = Remote {
                node,
                rt: tokio::runtime::Handle::current(),
            };
            let home = home.to_owned();
            tokio::task::spawn_blocking(move || {
                crate::exec(&mut remote, &home, cmd, &mut out).map_err(|e| failed(&e))
            })
            .await
            .map_err(|e| {
                ApiError::new(ErrorCode::Internal, format!("The command failed: {e}."))
            })??;
        }
    }
    Ok(String::from_utf8_lossy(&buf.take()).into_owned())
}
