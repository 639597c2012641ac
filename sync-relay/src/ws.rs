//! `GET /sync`: the relay's sync engine in automerge-repo's WebSocket framing, so a JS
//! `@automerge/automerge-repo` client (with `@automerge/automerge-repo-network-websocket`)
//! syncs the documents it may see. Another framing of the same engine, not another engine: a
//! connection is attached to the relay's engine through [`SyncHub`] as the authenticated
//! device, exactly like an iroh connection, and the engine's share policy decides everything.
//!
//! **Authentication**: the URL carries a signed token, `/sync?device=HEX&ts=MS&sig=HEX`, where
//! `sig` is the device key's ed25519 signature over
//! [`signing_message`]`("GET", "/sync", ts)` and `ts` is within
//! [`MAX_SKEW_MS`](crate::api::MAX_SKEW_MS) of the relay's
//! clock. A missing or bad token is refused before the upgrade (401, JSON error). A device that
//! is not a current member's is closed by the engine right after the handshake, with an
//! `error` message.
//!
//! **Protocol** (automerge-repo's, version "1"; every WebSocket message one CBOR map): the
//! client sends `join`, the relay answers `peer`. Then `request` and `sync` carry an Automerge
//! sync message for one `documentId` (base58check, which is how Flyt prints a `DocId`): both
//! become the engine's `Frame::Sync`; the engine's `Sync` frames go back as `sync` and its
//! `Unavailable` as `doc-unavailable`. The relay sends only documents the client asked about
//! (a JS repo would otherwise create a handle for every document pushed to it): the first sync
//! message of a document carries no changes, so nothing is lost by holding it back.
//! `leave` ends the connection; the remote-heads messages are accepted and not relayed.
//! Malformed CBOR, text frames, a message before `join`, an unknown type or an oversized
//! message get an `error` message (where the socket still works) and a closed connection; so
//! does a flood: each connection has the relay's rate limit ([`Limits`]), one WebSocket message
//! counting as one frame, and past it the connection is ended and counted
//! (`flyt_relay_rate_limited_total`), never the relay's other sessions.
//!
//! **Typing and presence** travel as automerge-repo `ephemeral` messages, both ways, under the
//! relay's rules for Flyt's signed notes (`Frame::Ephemeral`, see [`crate::runtime`]).
//! - To the client: each note the relay passes on to this device (a current member's typing
//!   in a public channel, or presence, in a workspace they share) is an `ephemeral` message
//!   with `documentId` = the **workspace document's id**, `senderId` the relay, a `sessionId`
//!   of this connection and a rising `count` (automerge-repo drops a repeat). It goes out only
//!   once the client asked for that workspace document (a JS repo would create a handle for
//!   any document named to it, and `handle.on("ephemeral-message")` needs one): until then the
//!   latest presence of each device is held, and told when it asks (typing is dropped). A JS
//!   client reads it with `handle.on("ephemeral-message", ({ message }) => ...)` on the
//!   workspace's handle; automerge-repo CBOR-decodes `data`, so `message` is the map
//!   [`note_data`] writes: `kind` (`"typing"` or `"presence"`), `workspace` (document id),
//!   `person` and `device` (64 hex), `at_ms` (ms since the epoch), `channel` (document id,
//!   typing) or `state` (`"online"`, `"away"`, `"offline"`, presence), and `signed`, the Flyt
//!   envelope those fields come from (bytes: version 1, the 32-byte device key, the 64-byte
//!   ed25519 signature over `"flyt/v1/ephemeral\0"` + body, then the postcard body) for a
//!   client that verifies rather than trusts the relay.
//! - From the client: an `ephemeral` message whose `data` is such a map (only `signed` is
//!   read) or one CBOR byte string, the envelope itself (`handle.broadcast(envelope)`), is
//!   handed to the relay as the device's note, checked exactly like one from an iroh peer
//!   (signature, signed by this device, a current member's, recent, typing only in a listed
//!   public channel) and passed on to the other member devices connected, over iroh or
//!   WebSocket. `documentId` is not read: the envelope names the workspace. Anything else in
//!   `data` is refused by that check (counted in `flyt_relay_ephemeral_refused_total`, logged
//!   at debug); a note, good or bad, never ends the connection.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use ciborium::Value;
use crdt_model::signed::{Ephemeral, EphemeralKind, Signed};
use crdt_model::{DeviceId, DocId};
use peer::sync::protocol::Frame;
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::api::{ApiError, signing_message, verify};

/// The largest WebSocket message accepted (the Flyt framing's frame limit).
pub const MAX_MESSAGE: usize = peer::sync::protocol::MAX_FRAME;

/// How long a client has to send `join` after the upgrade.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The automerge-repo protocol version spoken.
pub const PROTOCOL_VERSION: &str = "1";

/// One connection's link to the relay's sync engine.
pub struct Link {
    /// Hands a frame from the peer to the engine; `false` once the engine is gone. Dropping the
    /// link reports the peer gone (the engine saves its sync states).
    pub send: Box<dyn FnMut(Frame) -> bool + Send>,
    /// Frames from the engine, to the peer. Closed when the engine closes the connection.
    pub from_engine: mpsc::Receiver<Frame>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link").finish_non_exhaustive()
    }
}

/// The relay's sync engine, as a WebSocket connection sees it.
pub trait SyncHub: Send + Sync + 'static {
    /// Attaches a connection authenticated as `peer` (the engine's `Connected`); `None` when the
    /// relay is shutting down.
    fn attach(&self, peer: DeviceId) -> Option<Link>;
}

/// The relay's runtime is the hub: a WebSocket connection is a [`crate::runtime::Session`]
/// like an iroh connection.
impl SyncHub for crate::runtime::RelayHandle {
    fn attach(&self, peer: DeviceId) -> Option<Link> {
        let (session, from_engine) = self.open(peer).ok()?;
        Some(Link {
            send: Box::new(move |f| session.frame(f).is_ok()),
            from_engine,
        })
    }
}

/// What `/sync` needs.
#[derive(Clone)]
pub struct WsState {
    /// The engine.
    pub hub: Arc<dyn SyncHub>,
    /// The relay's automerge-repo peer id (its `senderId`).
    pub peer_id: String,
    /// The clock, ms since the Unix epoch.
    pub now_ms: fn() -> i64,
    /// The per-connection rate limit (the relay's, as on its iroh side), and where what it
    /// ends is counted; `None`: unlimited.
    pub limits: Option<Limits>,
}

/// What limits one `/sync` connection: the relay's frame and byte token buckets
/// (`frames_per_sec`, `frame_burst`, `bytes_per_sec`, `byte_burst`), one WebSocket message
/// counting as one frame.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The relay's configuration (its rate limit keys).
    pub config: Arc<crate::config::Config>,
    /// Where a connection ended by the limit is counted (`flyt_relay_rate_limited_total`).
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl std::fmt::Debug for WsState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsState")
            .field("peer_id", &self.peer_id)
            .finish_non_exhaustive()
    }
}

impl WsState {
    /// `/sync` on the relay's own engine, with the system clock.
    pub fn for_relay(relay: &crate::runtime::RelayHandle) -> Self {
        WsState {
            hub: Arc::new(relay.clone()),
            peer_id: format!(
                "flyt-relay-{}",
                &relay.info.id[..16.min(relay.info.id.len())]
            ),
            now_ms: crate::api::system_now_ms,
            limits: Some(Limits {
                config: relay.config.clone(),
                metrics: relay.metrics.clone(),
            }),
        }
    }
}

/// The `/sync` route, ready to merge into the relay's router.
pub fn router(state: WsState) -> Router {
    Router::new().route("/sync", get(upgrade)).with_state(state)
}

/// The signed token in the `/sync` URL.
#[derive(Debug, Deserialize)]
struct Token {
    device: Option<String>,
    ts: Option<String>,
    sig: Option<String>,
}

/// The query string that authenticates `device` at `/sync` at time `ts_ms`.
pub fn sync_query(device: &ed25519_dalek::SigningKey, ts_ms: i64) -> String {
    use ed25519_dalek::Signer;
    let sig = device.sign(&signing_message("GET", "/sync", ts_ms));
    format!(
        "device={}&ts={ts_ms}&sig={}",
        hex::encode(device.verifying_key().as_bytes()),
        hex::encode(sig.to_bytes())
    )
}

async fn upgrade(
    State(state): State<WsState>,
    Query(token): Query<Token>,
    ws: WebSocketUpgrade,
) -> Response {
    let (Some(device), Some(ts), Some(sig)) = (token.device, token.ts, token.sig) else {
        return ApiError::MissingAuth.into_response();
    };
    let device = match verify(&device, &ts, &sig, "GET", "/sync", (state.now_ms)()) {
        Ok(d) => d,
        Err(e) => return e.into_response(),
    };
    ws.max_message_size(MAX_MESSAGE)
        .max_frame_size(MAX_MESSAGE)
        .on_upgrade(move |socket| {
            let span = tracing::info_span!("ws sync", peer = %device);
            tracing::Instrument::instrument(serve(socket, device, state), span)
        })
}

/// Why a connection ends.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// The peer left or the socket closed.
    Gone,
    /// We close, telling the peer why.
    Error(String),
}

/// Reads one field of a CBOR map.
fn field<'a>(map: &'a [(Value, Value)], key: &str) -> Option<&'a Value> {
    map.iter()
        .find(|(k, _)| k.as_text() == Some(key))
        .map(|(_, v)| v)
}

fn text<'a>(map: &'a [(Value, Value)], key: &str) -> Result<&'a str, End> {
    field(map, key)
        .and_then(Value::as_text)
        .ok_or_else(|| End::Error(format!("missing or non-text field {key:?}")))
}

/// A byte string, tagged as a typed array (CBOR tag 64) or not.
fn as_bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::Tag(64, inner) => inner.as_bytes(),
        v => v.as_bytes(),
    }
    .map(Vec::as_slice)
}

/// A byte string field ([`as_bytes`]).
fn bytes<'a>(map: &'a [(Value, Value)], key: &str) -> Result<&'a [u8], End> {
    let v = field(map, key).ok_or_else(|| End::Error(format!("missing field {key:?}")))?;
    as_bytes(v).ok_or_else(|| End::Error(format!("field {key:?} is not bytes")))
}

/// One decoded client message.
#[derive(Debug, PartialEq, Eq)]
enum ClientMsg {
    Join {
        sender: String,
        versions: Vec<String>,
    },
    Sync {
        doc: DocId,
        data: Vec<u8>,
    },
    Unavailable {
        doc: DocId,
    },
    /// An `ephemeral` message's `data` (empty when it has none).
    Ephemeral {
        data: Vec<u8>,
    },
    /// Accepted and not relayed (remote heads; leave is `Leave`).
    Ignored(String),
    Leave,
}

fn decode(message: &[u8]) -> Result<ClientMsg, End> {
    let value: Value = ciborium::from_reader(message)
        .map_err(|_| End::Error("the message is not valid CBOR".into()))?;
    let Value::Map(map) = value else {
        return Err(End::Error("the message is not a CBOR map".into()));
    };
    let doc = |map: &[(Value, Value)]| -> Result<DocId, End> {
        let id = text(map, "documentId")?;
        id.parse()
            .map_err(|_| End::Error(format!("not a document id: {id:?}")))
    };
    Ok(match text(&map, "type")? {
        "join" => ClientMsg::Join {
            sender: text(&map, "senderId")?.to_owned(),
            versions: match field(&map, "supportedProtocolVersions") {
                Some(Value::Array(vs)) => vs
                    .iter()
                    .filter_map(|v| v.as_text().map(str::to_owned))
                    .collect(),
                Some(Value::Text(v)) => vec![v.clone()],
                _ => Vec::new(),
            },
        },
        "request" | "sync" => ClientMsg::Sync {
            doc: doc(&map)?,
            data: bytes(&map, "data")?.to_vec(),
        },
        "doc-unavailable" => ClientMsg::Unavailable { doc: doc(&map)? },
        "leave" => ClientMsg::Leave,
        // A note never ends a session: without bytes, it is refused like any bad note.
        "ephemeral" => ClientMsg::Ephemeral {
            data: bytes(&map, "data").map(<[u8]>::to_vec).unwrap_or_default(),
        },
        t @ ("remote-subscription-change" | "remote-heads-changed") => {
            ClientMsg::Ignored(t.to_owned())
        }
        other => return Err(End::Error(format!("unknown message type {other:?}"))),
    })
}

/// One CBOR map with text keys.
fn cbor_map(fields: Vec<(&str, Value)>) -> Vec<u8> {
    let map = Value::Map(
        fields
            .into_iter()
            .map(|(k, v)| (Value::Text(k.to_owned()), v))
            .collect(),
    );
    let mut out = Vec::new();
    ciborium::into_writer(&map, &mut out).expect("writing to a Vec cannot fail");
    out
}

fn encode(fields: Vec<(&str, Value)>) -> Message {
    Message::Binary(cbor_map(fields).into())
}

/// What an `ephemeral` message's `data` holds for a Flyt note (see the module docs): a CBOR map
/// of the note's fields, readable as they are, and `signed`, the envelope to verify them by.
pub fn note_data(note: &Signed<Ephemeral>) -> Vec<u8> {
    let n = &note.payload;
    let mut fields = vec![
        (
            "kind",
            Value::Text(
                match n.kind {
                    EphemeralKind::Typing { .. } => "typing",
                    EphemeralKind::Presence { .. } => "presence",
                }
                .into(),
            ),
        ),
        ("workspace", Value::Text(n.workspace.to_string())),
        ("person", Value::Text(n.person.to_string())),
        ("device", Value::Text(note.device().to_string())),
        ("at_ms", Value::Integer(n.at_ms.into())),
    ];
    fields.push(match n.kind {
        EphemeralKind::Typing { channel } => ("channel", Value::Text(channel.to_string())),
        EphemeralKind::Presence { state } => ("state", Value::Text(state.as_str().into())),
    });
    fields.push(("signed", Value::Bytes(note.to_bytes())));
    cbor_map(fields)
}

/// The Flyt envelope in a client's `ephemeral` `data`: the `signed` bytes of a map like
/// [`note_data`]'s, or `data` that is one CBOR byte string (`handle.broadcast(envelope)`).
/// Anything else is handed on as it is, for the relay's check to refuse.
fn note_envelope(data: Vec<u8>) -> Vec<u8> {
    let Ok(value) = ciborium::from_reader::<Value, _>(&data[..]) else {
        return data;
    };
    let found = match &value {
        Value::Map(m) => field(m, "signed").and_then(as_bytes),
        v => as_bytes(v),
    };
    found.map(<[u8]>::to_vec).unwrap_or(data)
}

/// Flyt's typing and presence notes as automerge-repo `ephemeral` messages, on one connection.
struct Notes {
    /// This connection's `sessionId`: automerge-repo passes on a message only if its `count`
    /// is above the last one it saw with the same `senderId` and `sessionId`.
    session: String,
    /// The last `count` sent.
    count: u64,
    /// Presence notes about workspaces the client has not asked for yet (a JS repo would
    /// create a handle for any document named to it): the latest per (workspace, device),
    /// sent when it asks. Bounded by the member devices of the client's workspaces.
    held: HashMap<(DocId, DeviceId), Signed<Ephemeral>>,
}

impl Notes {
    fn new() -> Self {
        Notes {
            session: hex::encode(peer::random::<8>()),
            count: 0,
            held: HashMap::new(),
        }
    }

    /// The `ephemeral` message carrying `note`, to the client `them`.
    fn message(&mut self, me: &Value, them: &Value, note: &Signed<Ephemeral>) -> Message {
        self.count += 1;
        encode(vec![
            ("type", Value::Text("ephemeral".into())),
            ("senderId", me.clone()),
            ("targetId", them.clone()),
            (
                "documentId",
                Value::Text(note.payload.workspace.to_string()),
            ),
            ("sessionId", Value::Text(self.session.clone())),
            ("count", Value::Integer(self.count.into())),
            ("data", Value::Bytes(note_data(note))),
        ])
    }

    /// Holds a presence note about a workspace the client has not asked for (a newer one
    /// replaces it); typing is dropped.
    fn hold(&mut self, note: Signed<Ephemeral>) {
        if !matches!(note.payload.kind, EphemeralKind::Presence { .. }) {
            return;
        }
        let key = (note.payload.workspace, note.device());
        if self
            .held
            .get(&key)
            .is_none_or(|old| old.payload.at_ms < note.payload.at_ms)
        {
            self.held.insert(key, note);
        }
    }

    /// The held notes about `ws` still recent at `now_ms`, taken out.
    fn release(&mut self, ws: DocId, now_ms: i64) -> Vec<Signed<Ephemeral>> {
        let keys: Vec<(DocId, DeviceId)> = self
            .held
            .keys()
            .filter(|(w, _)| *w == ws)
            .copied()
            .collect();
        keys.into_iter()
            .filter_map(|k| self.held.remove(&k))
            .filter(|n| peer::note_is_recent(n.payload.at_ms, now_ms))
            .collect()
    }
}

fn error_message(message: &str) -> Message {
    encode(vec![
        ("type", Value::Text("error".into())),
        ("message", Value::Text(message.to_owned())),
    ])
}

/// The handshake and the sync loop of one connection.
async fn serve(mut socket: WebSocket, device: DeviceId, state: WsState) {
    let end = run(&mut socket, device, &state).await;
    match end {
        End::Gone => tracing::debug!("ws peer left"),
        End::Error(why) => {
            tracing::info!("closing ws sync connection: {why}");
            let _ = socket.send(error_message(&why)).await;
            let _ = socket
                .send(Message::Close(Some(CloseFrame {
                    code: axum::extract::ws::close_code::POLICY,
                    reason: "protocol error".into(),
                })))
                .await;
        }
    }
}

/// Reads the next binary message (`None`: the socket is gone).
async fn next(socket: &mut WebSocket) -> Result<Option<Vec<u8>>, End> {
    loop {
        match socket.recv().await {
            None | Some(Ok(Message::Close(_))) => return Ok(None),
            Some(Err(e)) => {
                tracing::info!("ws read failed: {e}");
                return Ok(None);
            }
            Some(Ok(Message::Binary(b))) => return Ok(Some(b.to_vec())),
            Some(Ok(Message::Text(_))) => {
                return Err(End::Error(
                    "text messages are not part of the protocol".into(),
                ));
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
        }
    }
}

async fn run(socket: &mut WebSocket, device: DeviceId, state: &WsState) -> End {
    // Handshake: `join` first, within the timeout.
    let first = match tokio::time::timeout(JOIN_TIMEOUT, next(socket)).await {
        Err(_) => return End::Error("no join message in time".into()),
        Ok(Err(e)) => return e,
        Ok(Ok(None)) => return End::Gone,
        Ok(Ok(Some(b))) => b,
    };
    let client = match decode(&first) {
        Ok(ClientMsg::Join { sender, versions }) => {
            if !versions.iter().any(|v| v == PROTOCOL_VERSION) {
                return End::Error(format!(
                    "unsupported protocol versions {versions:?}; this relay speaks {PROTOCOL_VERSION:?}"
                ));
            }
            sender
        }
        Ok(_) => return End::Error("the first message must be join".into()),
        Err(e) => return e,
    };
    let me = Value::Text(state.peer_id.clone());
    let them = Value::Text(client.clone());
    let peer_msg = encode(vec![
        ("type", Value::Text("peer".into())),
        ("senderId", me.clone()),
        ("targetId", them.clone()),
        (
            "selectedProtocolVersion",
            Value::Text(PROTOCOL_VERSION.into()),
        ),
        (
            "peerMetadata",
            Value::Map(vec![(
                Value::Text("isEphemeral".into()),
                Value::Bool(false),
            )]),
        ),
    ]);
    if socket.send(peer_msg).await.is_err() {
        return End::Gone;
    }
    let Some(Link {
        mut send,
        mut from_engine,
    }) = state.hub.attach(device)
    else {
        return End::Error("the relay is shutting down".into());
    };
    let mut limit = state
        .limits
        .as_ref()
        .map(|l| crate::runtime::RateLimit::new(&l.config));
    // Documents the client asked about: only those are sent to it.
    let mut asked: HashSet<DocId> = HashSet::new();
    let mut notes = Notes::new();
    loop {
        tokio::select! {
            incoming = next(socket) => {
                let bytes = match incoming {
                    Ok(Some(b)) => b,
                    Ok(None) => return End::Gone,
                    Err(e) => return e,
                };
                // A flood ends this connection only, as on the iroh side.
                if let (Some(limit), Some(l)) = (&mut limit, &state.limits)
                    && !limit.allow(bytes.len())
                {
                    crate::metrics::Metrics::add(&l.metrics.rate_limited, 1);
                    tracing::warn!("rate limit exceeded on /sync: closing");
                    return End::Error("rate limit exceeded".into());
                }
                let frame = match decode(&bytes) {
                    Ok(ClientMsg::Sync { doc, data }) => {
                        if asked.insert(doc) {
                            // Who is around, told as soon as the client has the workspace open.
                            for n in notes.release(doc, (state.now_ms)()) {
                                if socket.send(notes.message(&me, &them, &n)).await.is_err() {
                                    return End::Gone;
                                }
                            }
                        }
                        Frame::Sync { doc, data }
                    }
                    // Checked by the relay like a note from an iroh peer; refused or passed on
                    // there, never a reason to end this connection.
                    Ok(ClientMsg::Ephemeral { data }) => Frame::Ephemeral {
                        signed: note_envelope(data),
                    },
                    Ok(ClientMsg::Unavailable { doc }) => {
                        asked.remove(&doc);
                        Frame::Unavailable { doc }
                    }
                    Ok(ClientMsg::Ignored(kind)) => {
                        tracing::trace!(kind, "ws message not relayed");
                        continue;
                    }
                    Ok(ClientMsg::Leave) => return End::Gone,
                    Ok(ClientMsg::Join { .. }) => return End::Error("a second join".into()),
                    Err(e) => return e,
                };
                if !send(frame) {
                    return End::Error("the relay closed this connection".into());
                }
            }
            outgoing = from_engine.recv() => {
                let msg = match outgoing {
                    None => {
                        return End::Error(
                            "the relay closed this connection (not a member's device, or no longer allowed)"
                                .into(),
                        );
                    }
                    Some(Frame::Sync { doc, data }) if asked.contains(&doc) => encode(vec![
                        ("type", Value::Text("sync".into())),
                        ("senderId", me.clone()),
                        ("targetId", them.clone()),
                        ("documentId", Value::Text(doc.to_string())),
                        ("data", Value::Bytes(data)),
                    ]),
                    Some(Frame::Unavailable { doc }) if asked.remove(&doc) => encode(vec![
                        ("type", Value::Text("doc-unavailable".into())),
                        ("senderId", me.clone()),
                        ("targetId", them.clone()),
                        ("documentId", Value::Text(doc.to_string())),
                    ]),
                    // A member's typing or presence, already checked by the relay.
                    Some(Frame::Ephemeral { signed }) => {
                        let Ok(note) = Signed::<Ephemeral>::decode(&signed) else {
                            continue;
                        };
                        if !asked.contains(&note.payload.workspace) {
                            notes.hold(note);
                            continue;
                        }
                        notes.message(&me, &them, &note)
                    }
                    // Offers, and documents the client did not ask about.
                    Some(_) => continue,
                };
                if socket.send(msg).await.is_err() {
                    return End::Gone;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
