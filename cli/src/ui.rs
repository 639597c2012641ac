//! `flyt serve --ui 127.0.0.1:PORT`: the desktop app's UI in a browser, against this home's
//! node. The same `peer::api::Api` the Tauri shell embeds, over HTTP: `POST /api` (Bearer
//! token), `GET /events?token=` (Server-Sent Events, one JSON array of events per message),
//! and the built UI (`app/ui/dist`) as static files. The contract is `peer/src/api.md`.
//!
//! Loopback only, and guarded by a random token printed once in the URL's fragment (which a
//! browser never sends to a server, so it stays out of logs and `Referer`s).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::Stream;
use peer::api::{Api, ApiError, Batch, ErrorCode, next_batch};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// Where the built UI is when none is given: the checkout this binary was built from.
const DEFAULT_UI_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../app/ui/dist");

/// How long one API request may take (a `join` waits up to 30 s for the workspace).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

struct Shared {
    api: Arc<Api>,
    token: String,
    stop: CancellationToken,
}

/// The UI directory to serve: `--ui-dir`/`FLYT_UI_DIR`, else the checkout's `app/ui/dist`.
/// `None` (with the reason) when it holds no built UI.
pub fn ui_dir(given: Option<PathBuf>) -> Result<PathBuf, String> {
    let dir = given.unwrap_or_else(|| PathBuf::from(DEFAULT_UI_DIR));
    if dir.join("index.html").is_file() {
        Ok(dir)
    } else {
        Err(format!(
            "the Flyt UI is not built (no index.html in {}): run `npm ci && npm run build` in \
             app/ui, or pass --ui-dir DIR",
            dir.display()
        ))
    }
}

/// Refuses anything but a loopback address: the API is everything this home can do.
pub fn check_loopback(addr: SocketAddr) -> Result<()> {
    if !addr.ip().is_loopback() {
        bail!(
            "--ui serves your chats to whoever can reach {addr}: it only listens on loopback \
             (127.0.0.1 or [::1])"
        );
    }
    Ok(())
}

/// A random token for this run: 32 bytes, hex.
pub fn new_token() -> String {
    hex::encode(peer::random::<32>())
}

/// Binds `addr` and returns the listener and the URL to open.
pub async fn listen(addr: SocketAddr, token: &str) -> Result<(tokio::net::TcpListener, String)> {
    check_loopback(addr)?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))?;
    let local = listener.local_addr()?;
    Ok((listener, format!("http://{local}/#token={token}")))
}

/// Serves until `stop` is cancelled; then ends every event stream and returns once requests
/// in flight are answered.
pub async fn serve(
    listener: tokio::net::TcpListener,
    api: Arc<Api>,
    token: String,
    ui: Result<PathBuf, String>,
    stop: CancellationToken,
) -> Result<()> {
    let app = router(api, token, ui, stop.clone());
    axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
        .context("serving the UI")
}

fn router(
    api: Arc<Api>,
    token: String,
    ui: Result<PathBuf, String>,
    stop: CancellationToken,
) -> Router {
    let shared = Arc::new(Shared { api, token, stop });
    let app = Router::new()
        .route("/api", post(handle_api))
        .route("/events", get(events))
        .with_state(shared)
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ));
    match ui {
        Ok(dir) => app.fallback_service(tower_http::services::ServeDir::new(dir)),
        Err(why) => app.fallback(move || not_built(why.clone())),
    }
}

async fn not_built(why: String) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("Flyt's API is running, but {why}.\n"),
    )
        .into_response()
}

fn error(status: StatusCode, e: &ApiError) -> Response {
    (status, axum::Json(json!({ "error": e }))).into_response()
}

fn unauthorized() -> Response {
    error(
        StatusCode::UNAUTHORIZED,
        &ApiError::new(
            ErrorCode::NotAllowed,
            "This page needs the link `flyt serve --ui` printed (its token is missing or wrong).",
        ),
    )
}

/// Compares in time independent of where the strings differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0, |d, (x, y)| d | (x ^ y)) == 0
}

async fn handle_api(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if !given.is_some_and(|t| same(t, &s.token)) {
        return unauthorized();
    }
    let req = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => {
            let e = ApiError::bad_request("The request body is not JSON.");
            return error(StatusCode::BAD_REQUEST, &e);
        }
    };
    match s.api.handle_json(req).await {
        Ok(v) => axum::Json(json!({ "ok": v })).into_response(),
        Err(e) => {
            let status = StatusCode::from_u16(e.code.http_status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            error(status, &e)
        }
    }
}

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

async fn events(State(s): State<Arc<Shared>>, Query(q): Query<TokenQuery>) -> Response {
    if !q.token.as_deref().is_some_and(|t| same(t, &s.token)) {
        return unauthorized();
    }
    Sse::new(batches(s.api.subscribe(), s.stop.clone()))
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// Each batch as one SSE message; a subscriber that fell behind gets a refresh of everything.
fn batches(
    rx: broadcast::Receiver<Batch>,
    stop: CancellationToken,
) -> impl Stream<Item = Result<Event, Infallible>> {
    futures_util::stream::unfold((rx, stop), |(mut rx, stop)| async move {
        let batch = tokio::select! {
            _ = stop.cancelled() => return None,
            next = next_batch(&mut rx) => next?,
        };
        let data = serde_json::to_string(&*batch).expect("events serialize");
        Some((Ok(Event::default().data(data)), (rx, stop)))
    })
}

/// `flyt serve --ui`: the node through the API, the HTTP face, until Ctrl-C or SIGTERM.
pub async fn run(
    home: &Path,
    bind: SocketAddr,
    ui_addr: SocketAddr,
    ui: Result<PathBuf, String>,
    out: &mut crate::output::Out,
    stop_signal: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let token = new_token();
    let (listener, url) = listen(ui_addr, &token).await?;
    if let Err(why) = &ui {
        tracing::warn!("{why}");
        out.note(&format!("note: {why}; the API works, the page does not"))?;
    }
    let api = Arc::new(
        Api::open_home(home, bind)
            .await
            .map_err(|e| anyhow::anyhow!("{}", e.message))
            .context("starting the node")?,
    );
    out.ui_url(&url)?;
    let stop = CancellationToken::new();
    let server = tokio::spawn(serve(listener, api.clone(), token, ui, stop.clone()));
    stop_signal.await;
    out.note("stopping: saving sync state…")?;
    stop.cancel();
    server.await.context("the UI server task")??;
    api.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_is_served() {
        assert!(check_loopback("127.0.0.1:0".parse().unwrap()).is_ok());
        assert!(check_loopback("[::1]:8080".parse().unwrap()).is_ok());
        let e = check_loopback("0.0.0.0:8080".parse().unwrap()).unwrap_err();
        assert!(e.to_string().contains("only listens on loopback"), "{e}");
        assert!(check_loopback("192.168.1.2:80".parse().unwrap()).is_err());
    }

    #[test]
    fn tokens_are_random_and_compared_whole() {
        let (a, b) = (new_token(), new_token());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert!(same(&a, &a.clone()));
        assert!(!same(&a, &b));
        assert!(!same(&a, &a[..63]));
    }

    #[test]
    fn a_missing_ui_says_how_to_build_it() {
        let dir = tempfile::tempdir().unwrap();
        let e = ui_dir(Some(dir.path().to_owned())).unwrap_err();
        assert!(e.contains("npm run build"), "{e}");
        std::fs::write(dir.path().join("index.html"), "<!doctype html>").unwrap();
        assert_eq!(ui_dir(Some(dir.path().to_owned())).unwrap(), dir.path());
    }
}
