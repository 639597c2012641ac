//! The admin API over the archive: a channel's messages, paged, and full-text search in a
//! workspace, for the workspace's owners and admins only.
//!
//! - `GET /api/workspaces/{ws}/channels/{channel}/messages?before=ID&limit=N`: newest first;
//!   `next_before` is the cursor for the next (older) page.
//! - `GET /api/workspaces/{ws}/search?q=TEXT&limit=N`: newest first.
//!
//! Every request carries `Authorization: Flyt device=HEX,ts=MS,sig=HEX`: an ed25519 signature
//! by a device key over [`signing_message`] (method, path and query, timestamp). The device
//! must be certified for a person whose current role in that workspace is admin or owner
//! ([`RoleSource`]), and the timestamp within [`MAX_SKEW_MS`] of the relay's clock. Failures
//! are JSON `{"error": {"code", "message"}}`: 401 for a missing, malformed or wrong signature or
//! a stale timestamp, 403 for a device that is not an admin's (non-members included).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use crdt_model::{DeviceId, DocId, MessageId, Role};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::archive::{Archive, ArchiveError, ArchivedMessage, PageQuery};

/// How far a request's timestamp may be from the relay's clock, either way.
pub const MAX_SKEW_MS: i64 = 120_000;

/// The default page size.
pub const DEFAULT_LIMIT: usize = 50;

/// The bytes an admin's device signs for one request.
pub fn signing_message(method: &str, path_and_query: &str, ts_ms: i64) -> Vec<u8> {
    format!("flyt/v1/admin-api\0{method}\n{path_and_query}\n{ts_ms}").into_bytes()
}

/// The `Authorization` header value for a request signed by `device`.
pub fn authorization(
    device: &SigningKey,
    method: &str,
    path_and_query: &str,
    ts_ms: i64,
) -> String {
    let sig = device.sign(&signing_message(method, path_and_query, ts_ms));
    format!(
        "Flyt device={},ts={ts_ms},sig={}",
        hex::encode(device.verifying_key().as_bytes()),
        hex::encode(sig.to_bytes())
    )
}

/// Who holds which role, by device: the archive's copy of the verified workspace view, or the
/// relay's live one.
pub trait RoleSource: Send + Sync + 'static {
    /// The current role of the person `device` is certified for in `ws`, if any.
    fn device_role(
        &self,
        ws: DocId,
        device: DeviceId,
    ) -> Pin<Box<dyn Future<Output = Result<Option<Role>, ArchiveError>> + Send + '_>>;
}

impl RoleSource for Archive {
    fn device_role(
        &self,
        ws: DocId,
        device: DeviceId,
    ) -> Pin<Box<dyn Future<Output = Result<Option<Role>, ArchiveError>> + Send + '_>> {
        Box::pin(Archive::device_role(self, ws, device))
    }
}

/// What the API routes need.
#[derive(Clone)]
pub struct ApiState {
    /// The archive read from.
    pub archive: Archive,
    /// Where roles come from.
    pub roles: Arc<dyn RoleSource>,
    /// The clock, ms since the Unix epoch (a function so tests can move it).
    pub now_ms: fn() -> i64,
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState").finish_non_exhaustive()
    }
}

impl ApiState {
    /// Roles from the archive, the system clock.
    pub fn new(archive: Archive) -> Self {
        ApiState {
            roles: Arc::new(archive.clone()),
            archive,
            now_ms: system_now_ms,
        }
    }
}

/// Now, ms since the Unix epoch.
pub(crate) fn system_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The `/api` routes, ready to merge into the relay's router.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route(
            "/api/workspaces/{ws}/channels/{channel}/messages",
            get(messages),
        )
        .route("/api/workspaces/{ws}/search", get(search))
        .with_state(state)
}

/// Why an API request failed: a status, a stable code and a one-line message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ApiError {
    /// No `Authorization` header.
    MissingAuth,
    /// An `Authorization` header that is not `Flyt device=..,ts=..,sig=..`.
    MalformedAuth(&'static str),
    /// The signature does not verify for this request.
    BadSignature,
    /// The timestamp is too far from the relay's clock.
    StaleTimestamp,
    /// The device is not an admin's or owner's in this workspace.
    NotAdmin,
    /// A path or query parameter that does not parse.
    BadRequest(String),
    /// The archive could not answer.
    Unavailable,
}

#[derive(Serialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Serialize)]
struct ErrorDetail {
    code: &'static str,
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message) = match self {
            ApiError::MissingAuth => (
                StatusCode::UNAUTHORIZED,
                "missing_auth",
                "this API needs an `Authorization: Flyt device=..,ts=..,sig=..` header".into(),
            ),
            ApiError::MalformedAuth(why) => (
                StatusCode::UNAUTHORIZED,
                "malformed_auth",
                format!("malformed Authorization header: {why}"),
            ),
            ApiError::BadSignature => (
                StatusCode::UNAUTHORIZED,
                "bad_signature",
                "the signature does not verify for this method, path and timestamp".into(),
            ),
            ApiError::StaleTimestamp => (
                StatusCode::UNAUTHORIZED,
                "stale_timestamp",
                format!(
                    "the request timestamp is more than {} s from the relay's clock",
                    MAX_SKEW_MS / 1000
                ),
            ),
            ApiError::NotAdmin => (
                StatusCode::FORBIDDEN,
                "not_admin",
                "this device is not an owner's or admin's in this workspace".into(),
            ),
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, "bad_request", m),
            ApiError::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "archive_unavailable",
                "the archive is not reachable right now; try again".into(),
            ),
        };
        (
            status,
            Json(ErrorBody {
                error: ErrorDetail { code, message },
            }),
        )
            .into_response()
    }
}

impl From<ArchiveError> for ApiError {
    fn from(e: ArchiveError) -> Self {
        match e {
            ArchiveError::EmptyQuery => ApiError::BadRequest(e.to_string()),
            e => {
                tracing::warn!("admin API: archive error: {e}");
                ApiError::Unavailable
            }
        }
    }
}

/// The parts of an `Authorization: Flyt device=..,ts=..,sig=..` header, as text.
#[derive(Debug, PartialEq, Eq)]
struct Auth<'a> {
    device: &'a str,
    ts: &'a str,
    sig: &'a str,
}

fn parse_auth(headers: &HeaderMap) -> Result<Auth<'_>, ApiError> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or(ApiError::MissingAuth)?
        .to_str()
        .map_err(|_| ApiError::MalformedAuth("not text"))?;
    let rest = value
        .strip_prefix("Flyt ")
        .ok_or(ApiError::MalformedAuth("the scheme must be `Flyt`"))?;
    let (mut device, mut ts, mut sig) = (None, None, None);
    for part in rest.split(',') {
        let (k, v) = part
            .trim()
            .split_once('=')
            .ok_or(ApiError::MalformedAuth("expected key=value pairs"))?;
        match k {
            "device" => device = Some(v),
            "ts" => ts = Some(v),
            "sig" => sig = Some(v),
            _ => return Err(ApiError::MalformedAuth("unknown key")),
        }
    }
    match (device, ts, sig) {
        (Some(device), Some(ts), Some(sig)) => Ok(Auth { device, ts, sig }),
        _ => Err(ApiError::MalformedAuth("device, ts and sig are all needed")),
    }
}

/// Checks a device key's signature over (method, path and query, timestamp) and that the
/// timestamp is within [`MAX_SKEW_MS`] of `now_ms`; returns the device. Shared by the admin
/// API (header) and `/sync` (URL token).
pub(crate) fn verify(
    device: &str,
    ts: &str,
    sig: &str,
    method: &str,
    path_and_query: &str,
    now_ms: i64,
) -> Result<DeviceId, ApiError> {
    let hex_n = |v: &str, what: &'static str, n: usize| -> Result<Vec<u8>, ApiError> {
        hex::decode(v)
            .ok()
            .filter(|b| b.len() == n)
            .ok_or(ApiError::MalformedAuth(what))
    };
    let device: [u8; 32] = hex_n(device, "device must be 64 hex digits", 32)?
        .try_into()
        .expect("length checked");
    let sig: [u8; 64] = hex_n(sig, "sig must be 128 hex digits", 64)?
        .try_into()
        .expect("length checked");
    let ts_ms: i64 = ts
        .parse()
        .map_err(|_| ApiError::MalformedAuth("ts must be milliseconds since the epoch"))?;
    let key = VerifyingKey::from_bytes(&device).map_err(|_| ApiError::BadSignature)?;
    key.verify_strict(
        &signing_message(method, path_and_query, ts_ms),
        &Signature::from_bytes(&sig),
    )
    .map_err(|_| ApiError::BadSignature)?;
    if (now_ms - ts_ms).abs() > MAX_SKEW_MS {
        return Err(ApiError::StaleTimestamp);
    }
    Ok(DeviceId(device))
}

/// The parts of a request its signature covers.
#[derive(Debug)]
struct Signed {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Signed {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Signed {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            headers: parts.headers.clone(),
        })
    }
}

/// Checks the request's signature, timestamp and the signer's role; returns the device.
async fn authorize(state: &ApiState, ws: DocId, req: &Signed) -> Result<DeviceId, ApiError> {
    let device = {
        let auth = parse_auth(&req.headers)?;
        let path_and_query = req
            .uri
            .path_and_query()
            .map_or(req.uri.path(), |pq| pq.as_str());
        verify(
            auth.device,
            auth.ts,
            auth.sig,
            req.method.as_str(),
            path_and_query,
            (state.now_ms)(),
        )?
    };
    match state.roles.device_role(ws, device).await? {
        Some(r) if r >= Role::Admin => Ok(device),
        _ => Err(ApiError::NotAdmin),
    }
}

fn parse_id<T: std::str::FromStr>(s: &str, what: &str) -> Result<T, ApiError> {
    s.parse()
        .map_err(|_| ApiError::BadRequest(format!("not a valid {what} id: {s:?}")))
}

/// `?before=&limit=`
#[derive(Debug, Deserialize)]
struct PageParams {
    before: Option<String>,
    limit: Option<usize>,
}

/// `?q=&limit=`
#[derive(Debug, Deserialize)]
struct SearchParams {
    q: Option<String>,
    limit: Option<usize>,
}

/// A page of messages.
#[derive(Debug, Serialize, Deserialize)]
pub struct Page {
    /// Newest first.
    pub messages: Vec<ArchivedMessage>,
    /// Pass as `before` for the next, older page; `null` when this page was the last.
    pub next_before: Option<String>,
}

fn limit(l: Option<usize>) -> Result<usize, ApiError> {
    match l.unwrap_or(DEFAULT_LIMIT) {
        0 => Err(ApiError::BadRequest("limit must be at least 1".into())),
        n if n > crate::archive::MAX_PAGE => Err(ApiError::BadRequest(format!(
            "limit must be at most {}",
            crate::archive::MAX_PAGE
        ))),
        n => Ok(n),
    }
}

fn query<T: serde::de::DeserializeOwned>(req: &Signed) -> Result<T, ApiError> {
    Query::<T>::try_from_uri(&req.uri)
        .map(|q| q.0)
        .map_err(|e| ApiError::BadRequest(format!("bad query: {e}")))
}

async fn messages(
    State(state): State<ApiState>,
    Path((ws, channel)): Path<(String, String)>,
    req: Signed,
) -> Result<Json<Page>, ApiError> {
    let ws: DocId = parse_id(&ws, "workspace")?;
    authorize(&state, ws, &req).await?;
    let channel: DocId = parse_id(&channel, "channel")?;
    let p: PageParams = query(&req)?;
    let before: Option<MessageId> = p
        .before
        .as_deref()
        .map(|b| parse_id(b, "message"))
        .transpose()?;
    let limit = limit(p.limit)?;
    let messages = state
        .archive
        .messages(&PageQuery {
            workspace: ws,
            channel,
            before,
            limit,
        })
        .await?;
    let next_before = (messages.len() == limit)
        .then(|| messages.last().map(|m| m.id.clone()))
        .flatten();
    Ok(Json(Page {
        messages,
        next_before,
    }))
}

async fn search(
    State(state): State<ApiState>,
    Path(ws): Path<String>,
    req: Signed,
) -> Result<Json<Page>, ApiError> {
    let ws: DocId = parse_id(&ws, "workspace")?;
    authorize(&state, ws, &req).await?;
    let p: SearchParams = query(&req)?;
    let q =
        p.q.ok_or_else(|| ApiError::BadRequest("missing q (the search text)".into()))?;
    let messages = state.archive.search(ws, &q, limit(p.limit)?).await?;
    Ok(Json(Page {
        messages,
        next_before: None,
    }))
}

#[cfg(test)]
mod tests;
