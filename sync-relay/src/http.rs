//! The relay's HTTP face: `GET /info`, `/healthz`, `/readyz`, `/metrics`, `/ping`, `POST /join`, one
//! [`AppError`] for every failure, a request timeout and a span per request.
//!
//! Embedders merge more routes into [`routes`] and wrap them with [`layered`] (see the crate docs).

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use peer::sync::protocol::MAX_FRAME;
use tower_http::trace::TraceLayer;

use crate::runtime::{RelayError, RelayHandle};
use crate::store::JoinError;

/// What every route gets.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The running relay.
    pub relay: RelayHandle,
}

/// Every way a request fails. Clients get a short stable code and message; the log gets the
/// cause.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AppError {
    /// The request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// Not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// The body is too large.
    #[error("{0}")]
    TooLarge(String),
    /// Not ready (storage or archive unavailable, stopping).
    #[error("{0}")]
    Unavailable(String),
    /// The answer took longer than the request timeout.
    #[error("no answer within {0:?}: try again later")]
    Timeout(Duration),
    /// Something broke inside the relay (details only in the log).
    #[error("internal error")]
    Internal(String),
}

impl AppError {
    fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            AppError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            AppError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            AppError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            AppError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            AppError::Timeout(_) => (StatusCode::REQUEST_TIMEOUT, "timeout"),
            AppError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, code) = self.parts();
        match &self {
            AppError::Internal(cause) => tracing::error!("request failed: {cause}"),
            e => tracing::info!(code, "request refused: {e}"),
        }
        let body = serde_json::json!({ "error": code, "message": self.to_string() });
        (status, axum::Json(body)).into_response()
    }
}

impl From<RelayError> for AppError {
    fn from(e: RelayError) -> Self {
        match e {
            RelayError::Stopped => AppError::Unavailable("the relay is stopping".into()),
            e => AppError::Internal(format!("{e:#}")),
        }
    }
}

impl From<JoinError> for AppError {
    fn from(e: JoinError) -> Self {
        match e {
            JoinError::TooLarge(_) => AppError::TooLarge(e.to_string()),
            JoinError::NotAWorkspace => AppError::BadRequest(e.to_string()),
            JoinError::NotAdded(_) | JoinError::NotServed(_) => AppError::Forbidden(e.to_string()),
            e => AppError::Internal(format!("{e:#}")),
        }
    }
}

/// The relay's own routes with [`layered`]'s timeout and tracing: what the relay serves when
/// nothing is merged in.
pub fn app(state: AppState) -> Router {
    layered(routes(state.clone()), &state)
}

/// The relay's own routes, without the layers every route shares.
pub fn routes(state: AppState) -> Router {
    Router::new()
        .route("/info", get(info))
        .route("/healthz", get(healthz))
        // iroh's latency probe for `/relay` (see crate::nat): how nodes pick their home relay.
        .route("/ping", get(|| async { StatusCode::OK }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/join", post(join).layer(DefaultBodyLimit::max(MAX_FRAME)))
        .with_state(state)
}

/// What every route gets, the relay's own and those merged in: a request that takes longer than
/// `request_timeout_secs` to answer gets 408 with the usual error body (a WebSocket's timeout
/// ends at its upgrade), and a span per request.
pub fn layered(router: Router, state: &AppState) -> Router {
    let limit = Duration::from_secs(state.relay.config.request_timeout_secs);
    router
        .layer(axum::middleware::from_fn_with_state(limit, time_limit))
        .layer(TraceLayer::new_for_http())
}

async fn time_limit(
    State(limit): State<Duration>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(answer) => answer,
        Err(_) => AppError::Timeout(limit).into_response(),
    }
}

async fn info(State(s): State<AppState>) -> impl IntoResponse {
    axum::Json(s.relay.info.as_ref().clone())
}

/// Alive: the process answers.
async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready: the store thread answers within a second and the archive can take writes.
async fn readyz(State(s): State<AppState>) -> Result<&'static str, AppError> {
    let ping = tokio::time::timeout(Duration::from_secs(1), s.relay.call(|_| ()));
    match ping.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e.into()),
        Err(_) => return Err(AppError::Unavailable("storage is not answering".into())),
    }
    if let Some(a) = &s.relay.archive {
        a.ready()
            .map_err(|why| AppError::Unavailable(format!("archive: {why}")))?;
    }
    Ok("ready\n")
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    let mut text = s.relay.metrics.render();
    if let Some(a) = &s.relay.archive {
        a.metrics(&mut text);
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
}

/// `POST /join`: a member's workspace document (`Automerge::save` bytes) that lists this
/// relay. Answers `{"workspace": ID}`.
async fn join(State(s): State<AppState>, body: Bytes) -> Result<impl IntoResponse, AppError> {
    if body.is_empty() {
        return Err(AppError::BadRequest(
            "send the workspace document as the request body".into(),
        ));
    }
    let ws = s.relay.join(body.to_vec()).await??;
    Ok(axum::Json(
        serde_json::json!({ "workspace": ws.to_string() }),
    ))
}
