//! The app's API: one transport-free dispatcher over a running [`Node`], and the batched event
//! stream a UI renders from.
//!
//! Two transports serve it unchanged: the Tauri shell (`app`: one command `api`, events on
//! `flyt://events`) and `flyt serve --ui` (`cli`: `POST /api`, Server-Sent Events at
//! `/events`). The contract both implement, and the UI in `app/ui` is written against, is
//! `peer/src/api.md`.
//!
//! [`Api`] starts its node lazily: a home without an identity answers `whoami`, `init` and `device_join`
//! only; once `init` has run (here or from the CLI) the node starts and every other request
//! works. Each request is one closure on the node's store thread ([`Node::call`]), so the web
//! view never touches the network or the database.
//!
//! Events: the node's events and every message the store projected (local writes and peers'
//! changes alike) are gathered and sent as one [`Batch`] at most every [`BATCH_INTERVAL`]; the
//! first event after a quiet spell goes out at once.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crdt_model::{DeviceId, DocId, MessageId, ModelError, Role};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

use crate::node::{Node, NodeConfig, NodeError, NodeEvent};
use crate::relay_client::{self, RelayClientError};
use crate::{ChannelRow, MessageRow, Store, StoreError};

/// Events are sent at most this often (one frame at 60 Hz).
pub const BATCH_INTERVAL: Duration = Duration::from_millis(16);

/// More changed messages than this in one channel within one batch (a catching-up sync) are
/// sent as one `refresh` event for the channel instead of one `message` event each.
pub const MAX_MESSAGES_PER_CHANNEL: usize = 2_000;

/// How long `join` waits for the workspace document after the inviter accepted.
pub const JOIN_WAIT: Duration = Duration::from_secs(30);

/// How many batches a slow subscriber may fall behind before it misses some (it then gets a
/// `refresh` of everything, see [`lagged_batch`]).
const BATCH_BACKLOG: usize = 256;

/// One request, tagged by `cmd` (`{"cmd": "send", "channel": "general", "text": "hi"}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Request {
    /// Who this home is: `{ initialized, name?, person?, device? }`.
    Whoami,
    /// Creates this home's identity; answers like `whoami`.
    Init {
        /// Display name.
        name: String,
    },
    /// Instead of `init`: makes this fresh home another device of the person whose
    /// device-link ticket this is (the issuing device must be running), then waits for their
    /// first workspace. Answers like `whoami`.
    DeviceJoin {
        /// The `flytdev1…` ticket.
        ticket: String,
    },
    /// `[{ id, name, current, role, unread, mentions, members }]`.
    Workspaces,
    /// Creates a workspace I own and makes it current: `{ id }`.
    WorkspaceCreate {
        /// Its name.
        name: String,
    },
    /// Makes a workspace current (by id or name).
    WorkspaceUse {
        /// Workspace id or name.
        id: String,
    },
    /// Joins a workspace with an invite ticket: `{ workspace }` once its document arrived.
    Join {
        /// The `flyt1…` ticket.
        ticket: String,
    },
    /// Channels of the current workspace: `[ChannelView]`.
    Channels,
    /// Creates a channel: its [`ChannelView`].
    ChannelCreate {
        /// Name, with or without `#`.
        name: String,
        /// What it is about.
        #[serde(default)]
        topic: String,
        /// Only invited members see it.
        #[serde(default)]
        private: bool,
    },
    /// A page of messages, oldest first.
    Read {
        /// Channel id or name.
        channel: String,
        /// How many (default 50).
        limit: Option<usize>,
        /// Only messages older than this id.
        before: Option<String>,
        /// The thread of this message instead of the channel.
        thread: Option<String>,
    },
    /// Posts a message: the new message.
    Send {
        /// Channel id or name.
        channel: String,
        /// Markdown text.
        text: String,
        /// Quotes this message.
        reply_to: Option<String>,
        /// Replies in this message's thread.
        thread: Option<String>,
    },
    /// Edits my message.
    Edit {
        /// Message id.
        id: String,
        /// New text.
        text: String,
    },
    /// Deletes a message for everyone.
    Delete {
        /// Message id.
        id: String,
    },
    /// Adds (`on`) or removes my reaction.
    React {
        /// Message id.
        id: String,
        /// The emoji.
        emoji: String,
        /// Add (true, the default) or remove.
        #[serde(default = "yes")]
        on: bool,
    },
    /// Full-text search, newest first.
    Search {
        /// What was typed.
        query: String,
        /// Only this channel (id or name).
        channel: Option<String>,
        /// How many (default 20).
        limit: Option<usize>,
    },
    /// Marks a channel read up to its newest message.
    MarkRead {
        /// Channel id or name.
        channel: String,
        /// Read up to this message (the newest the reader saw), not beyond: a message that
        /// arrived meanwhile stays unread. Without it, up to the channel's newest.
        #[serde(default)]
        up_to: Option<String>,
    },
    /// Members of the current workspace: `[MemberView]`.
    Members,
    /// Changes a member's role (`admin` or `member`).
    MemberRole {
        /// Person key or display name.
        person: String,
        /// `admin` or `member`.
        role: String,
    },
    /// Removes a member.
    MemberRemove {
        /// Person key or display name.
        person: String,
    },
    /// A single-use invite ticket: `{ ticket, expires_ts }`.
    Invite {
        /// Valid for this long (default a day).
        expires_secs: Option<u64>,
        /// `member` (default) or `admin`.
        role: Option<String>,
    },
    /// Changes my display name everywhere.
    SetName {
        /// The new name.
        name: String,
    },
    /// The node and its peers: a [`StatusView`].
    Status,
    /// Tells the members who may see a channel that I am typing there (send again every few
    /// seconds while typing; each shows for about 5 s). Answers `{ sent_to }`, the number of
    /// connections told (a relay, which passes a public channel's note on, counts as one).
    Typing {
        /// Channel id or name.
        channel: String,
    },
    /// Sets my presence: `online` or `away`.
    Presence {
        /// `online` or `away`.
        state: String,
    },
    /// Opens the direct message with one person, or the group DM with several (created if
    /// it does not exist yet; both sides get the same one): its [`ChannelView`].
    Dm {
        /// Person keys (what the UI should send) or display names; not me.
        people: Vec<String>,
    },
    /// The current workspace's relays: `[RelayView]`.
    Relays,
    /// Adds a relay to the current workspace (owners and admins): asks `{url}/info` who it
    /// is, records it in the workspace document, hands it the document (`POST /join`). Its
    /// [`RelayView`].
    RelayAdd {
        /// The relay's `http://` URL.
        url: String,
    },
    /// Removes a relay (owners and admins) and tells it: `{ relay_told }`.
    RelayRemove {
        /// Its URL or id.
        url: String,
    },
    /// My devices (every device certified for me): `[DeviceView]`.
    Devices,
    /// A single-use ticket that makes a fresh home another device of mine:
    /// `{ ticket, expires_ts }`.
    DeviceLink {
        /// Valid for this long (default 10 minutes, at most a day).
        expires_secs: Option<u64>,
    },
}

fn yes() -> bool {
    true
}

/// Every `cmd` [`Request`] knows (to tell an unknown request from a malformed one).
const COMMANDS: &[&str] = &[
    "whoami",
    "init",
    "device_join",
    "workspaces",
    "workspace_create",
    "workspace_use",
    "join",
    "channels",
    "channel_create",
    "read",
    "send",
    "edit",
    "delete",
    "react",
    "search",
    "mark_read",
    "members",
    "member_role",
    "member_remove",
    "invite",
    "set_name",
    "status",
    "typing",
    "presence",
    "dm",
    "relays",
    "relay_add",
    "relay_remove",
    "devices",
    "device_link",
];

/// Why a request failed: a stable code for programs and one sentence for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// What kind of failure.
    pub code: ErrorCode,
    /// One friendly sentence a UI can show as is.
    pub message: String,
}

/// The stable error codes of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// Malformed or invalid input (empty or too long text, a garbage ticket...).
    BadRequest,
    /// No such workspace, channel, member or message.
    NotFound,
    /// The action needs a role or authorship I do not have, or a peer refused.
    NotAllowed,
    /// `init` has not run yet.
    NotInitialized,
    /// A peer or relay did not answer, or the node is stopping.
    Unavailable,
    /// A bug or a broken database; the log has the cause.
    Internal,
}

impl ErrorCode {
    /// The HTTP status `flyt serve --ui` answers with.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 400,
            ErrorCode::NotAllowed => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::NotInitialized => 409,
            ErrorCode::Unavailable => 503,
            ErrorCode::Internal => 500,
        }
    }
}

impl ApiError {
    /// An error with this code and sentence.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
        }
    }

    /// A `bad_request` (for transports: a body that is not JSON, for instance).
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::BadRequest, message)
    }

    fn internal(cause: &dyn std::fmt::Display) -> ApiError {
        error!("api: internal error: {cause:#}");
        ApiError::new(
            ErrorCode::Internal,
            "Something went wrong inside Flyt; the log has the details.",
        )
    }
}

/// `"only owners and admins invite"` → `"Only owners and admins invite."`
fn sentence(s: &str) -> String {
    let mut c = s.chars();
    let mut out: String = match c.next() {
        Some(first) => first.to_uppercase().chain(c).collect(),
        None => return String::new(),
    };
    if !out.ends_with(['.', '!', '?']) {
        out.push('.');
    }
    out
}

impl From<ModelError> for ApiError {
    fn from(e: ModelError) -> ApiError {
        use ErrorCode::*;
        let (code, message) = match &e {
            ModelError::EmptyText => (BadRequest, "A message cannot be empty.".to_owned()),
            ModelError::TextTooLong(n) => (
                BadRequest,
                format!(
                    "This message is {n} characters long; the limit is {}.",
                    crdt_model::MAX_TEXT_CHARS
                ),
            ),
            ModelError::BadId(s) => (BadRequest, format!("{s:?} is not a valid id.")),
            ModelError::Malformed(what) => (BadRequest, sentence(what)),
            ModelError::UnknownVersion(_) => (
                BadRequest,
                "This was made by a newer Flyt; update Flyt to use it.".to_owned(),
            ),
            ModelError::BadSignature => (
                BadRequest,
                "Its signature does not check out, so it was not accepted.".to_owned(),
            ),
            ModelError::BadEmoji(s) => (BadRequest, format!("{s:?} is not an emoji Flyt knows.")),
            ModelError::BadName(why) => (BadRequest, format!("That name does not work: {why}.")),
            ModelError::Expired => (BadRequest, sentence(&e.to_string())),
            ModelError::Deleted(_) => (BadRequest, "That message was deleted.".to_owned()),
            ModelError::NoSuchMessage(_) => (NotFound, "That message does not exist.".to_owned()),
            ModelError::NotAllowed(why) => (NotAllowed, sentence(why)),
            _ => return ApiError::internal(&e),
        };
        ApiError { code, message }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        use ErrorCode::*;
        let (code, message) = match e {
            StoreError::Model(m) => return m.into(),
            StoreError::NoIdentity => (NotInitialized, "Choose your name first.".to_owned()),
            StoreError::AlreadyInitialized(name) => (
                BadRequest,
                format!("This Flyt is already set up for {name}."),
            ),
            StoreError::NoWorkspace => (NotFound, "Create or join a workspace first.".to_owned()),
            StoreError::UnknownWorkspace(w) => (NotFound, format!("There is no workspace {w:?}.")),
            StoreError::UnknownChannel(c) => (
                NotFound,
                format!("There is no channel {c:?} in this workspace."),
            ),
            StoreError::UnknownMember(m) => (
                NotFound,
                format!("There is no member {m:?} in this workspace."),
            ),
            StoreError::UnknownRelay(r) => {
                (NotFound, format!("This workspace has no relay {r:?}."))
            }
            StoreError::UnknownMessage(_) => (
                NotFound,
                "That message does not exist (or has not synced yet).".to_owned(),
            ),
            StoreError::ChannelExists(c) => {
                (BadRequest, format!("A channel named #{c} already exists."))
            }
            e @ StoreError::Ambiguous(..) => (BadRequest, sentence(&e.to_string())),
            e @ StoreError::NewerSchema { .. } => {
                error!("api: {e}");
                (Internal, sentence(&e.to_string()))
            }
            e => return ApiError::internal(&e),
        };
        ApiError { code, message }
    }
}

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> ApiError {
        use ErrorCode::*;
        let (code, message) = match e {
            NodeError::Store(s) => return s.into(),
            NodeError::Net(n) => {
                debug!("api: network: {n:#}");
                (
                    Unavailable,
                    "Could not reach the other device; check that it is running and reachable."
                        .to_owned(),
                )
            }
            NodeError::Refused(why) => (NotAllowed, format!("The other device said no: {why}.")),
            NodeError::Timeout(what) => (
                Unavailable,
                format!("The other device did not answer in time ({what})."),
            ),
            NodeError::Stopped => (Unavailable, "Flyt is shutting down.".to_owned()),
            NodeError::Config(why) => (BadRequest, sentence(why)),
        };
        ApiError { code, message }
    }
}

impl From<RelayClientError> for ApiError {
    fn from(e: RelayClientError) -> ApiError {
        use ErrorCode::*;
        let (code, message) = match &e {
            RelayClientError::BadUrl(_) => (
                BadRequest,
                "A relay address starts with http://, like http://relay.example.com:8787."
                    .to_owned(),
            ),
            RelayClientError::Https(_) => (
                BadRequest,
                "This Flyt reaches relays over http:// only; use the relay's http:// address."
                    .to_owned(),
            ),
            RelayClientError::Unreachable { url, source } => {
                debug!("api: relay {url}: {source}");
                (
                    Unavailable,
                    format!(
                        "Nothing answered at {url}; check the address and that the relay is \
                         running."
                    ),
                )
            }
            RelayClientError::NotARelay { url, .. } => (
                BadRequest,
                format!("{url} answered, but it is not a Flyt relay."),
            ),
            RelayClientError::Refused { url, message, .. } => (
                NotAllowed,
                format!(
                    "The relay at {url} refused: {}",
                    sentence(message.trim_end_matches('.'))
                ),
            ),
        };
        ApiError { code, message }
    }
}

/// Parses a request from JSON, telling an unknown `cmd` from a malformed one.
pub fn parse_request(v: Value) -> Result<Request, ApiError> {
    let cmd = v.get("cmd").and_then(Value::as_str).map(str::to_owned);
    serde_json::from_value(v).map_err(|e| match cmd {
        None => ApiError::bad_request("A request needs a \"cmd\" field saying what to do."),
        Some(c) if !COMMANDS.contains(&c.as_str()) => {
            ApiError::bad_request(format!("This Flyt does not know the request {c:?}."))
        }
        Some(c) => ApiError::bad_request(format!("The {c:?} request is malformed: {e}.")),
    })
}

/// A workspace in the switcher.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceView {
    /// Workspace id.
    pub id: String,
    /// Name.
    pub name: String,
    /// The current one.
    pub current: bool,
    /// My role: owner, admin, member or removed.
    pub role: String,
    /// Unread messages over all its channels.
    pub unread: i64,
    /// Of those, how many mention me.
    pub mentions: i64,
    /// Member count.
    pub members: i64,
}

/// A channel in the sidebar.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelView {
    /// Channel id.
    pub id: String,
    /// Name without `#`.
    pub name: String,
    /// Topic.
    pub topic: String,
    /// Private channel.
    pub private: bool,
    /// A DM or group DM (named `@` and the other participants).
    pub dm: bool,
    /// Messages from others since I last read it.
    pub unread: i64,
    /// Of those, how many mention me.
    pub mentions: i64,
    /// When its newest message was posted (ms), if it has one.
    pub last_ts: Option<i64>,
    /// Who is in a DM or private channel, me included (empty for public channels: every
    /// member is).
    pub members: Vec<ChannelMemberView>,
}

/// Someone in a DM or private channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelMemberView {
    /// Person key.
    pub person: String,
    /// Display name (the start of the key if unknown).
    pub name: String,
}

/// A relay of the current workspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayView {
    /// Its device (iroh endpoint) id.
    pub id: String,
    /// Its HTTP URL.
    pub url: String,
    /// Direct UDP addresses of its endpoint.
    pub addrs: Vec<String>,
    /// The display name of who added it.
    pub added_by: String,
    /// When, ms.
    pub added_ts: i64,
    /// This node is connected to it right now.
    pub connected: bool,
}

/// One of my devices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceView {
    /// Its device key.
    pub device: String,
    /// The device this app runs on.
    pub this: bool,
    /// Connected to this node right now (always false for this device).
    pub connected: bool,
}

/// A member of the current workspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberView {
    /// Person key, hex.
    pub person: String,
    /// Display name.
    pub name: String,
    /// owner, admin or member.
    pub role: String,
    /// `online` or `away` while one of their devices is connected and says so (the liveliest
    /// device counts), else `offline`.
    pub online: String,
}

/// What the node is doing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusView {
    /// At least one peer is connected right now.
    pub online: bool,
    /// Peers this node knows and keeps connected to.
    pub peers: Vec<PeerView>,
    /// URLs of the relays (of any of this home's workspaces) connected right now.
    pub relays: Vec<String>,
    /// Documents in sync with the connected peers, of all those being synced with them.
    pub catching_up: CatchingUp,
}

/// How far a sync with the connected peers has come.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatchingUp {
    /// (peer, document) pairs in sync.
    pub done: usize,
    /// (peer, document) pairs being synced.
    pub total: usize,
}

/// One known peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerView {
    /// Its device id.
    pub device: String,
    /// Its person's display name, if known.
    pub name: Option<String>,
    /// Documents with a saved sync state for it.
    pub docs_synced: i64,
    /// Connected right now.
    pub connected: bool,
    /// While connected: documents in sync with it.
    pub docs_in_sync: usize,
    /// While connected: documents still catching up.
    pub docs_behind: usize,
    /// When a sync message last went either way (ms), since this node started.
    pub last_sync_ts: Option<i64>,
}

/// One event for the UI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ApiEvent {
    /// A message appeared or changed (new, edited, deleted, reacted, reply count), local or
    /// remote.
    Message {
        /// The message as `read` returns it.
        message: MessageRow,
    },
    /// Channels, unread or mention counts, or the workspace list changed: refetch them.
    Channels,
    /// Members, names or roles changed: refetch them.
    Members,
    /// Peers came or went: the new status.
    Status(StatusView),
    /// A member is typing in a channel: show it until `expires_ts` (or their message).
    Typing {
        /// Channel id.
        channel: String,
        /// Person key.
        person: String,
        /// Display name (the start of their key if unknown).
        name: String,
        /// The device they type on.
        device: String,
        /// When to stop showing it, ms.
        expires_ts: i64,
    },
    /// A member's device came online, went away or offline.
    Presence {
        /// Person key.
        person: String,
        /// Display name (the start of their key if unknown).
        name: String,
        /// The device.
        device: String,
        /// `online`, `away` or `offline`.
        state: String,
    },
    /// Too much changed to send message by message (a sync catching up, writes by another
    /// process on this home, or a subscriber that fell behind): refetch the messages shown of
    /// `channel`, or of every channel when it is absent.
    Refresh {
        /// Channel id; absent: all channels.
        #[serde(skip_serializing_if = "Option::is_none")]
        channel: Option<String>,
    },
}

/// One batch of events, as a transport sends it (a JSON array).
pub type Batch = Arc<Vec<ApiEvent>>;

/// What a transport sends a subscriber that fell behind and missed batches.
pub fn lagged_batch() -> Batch {
    Arc::new(vec![
        ApiEvent::Refresh { channel: None },
        ApiEvent::Channels,
        ApiEvent::Members,
    ])
}

/// The next batch for a transport to send: a subscriber that fell behind gets
/// [`lagged_batch`] instead of what it missed; `None` once the API has stopped.
pub async fn next_batch(rx: &mut broadcast::Receiver<Batch>) -> Option<Batch> {
    match rx.recv().await {
        Ok(b) => Some(b),
        Err(broadcast::error::RecvError::Lagged(_)) => Some(lagged_batch()),
        Err(broadcast::error::RecvError::Closed) => None,
    }
}

/// Messages the store projected since the batcher last looked, by channel.
#[derive(Debug, Default)]
pub(crate) struct Touched {
    by_channel: BTreeMap<DocId, BTreeSet<MessageId>>,
    /// Channels with more than [`MAX_MESSAGES_PER_CHANNEL`]: refreshed as a whole.
    overflow: BTreeSet<DocId>,
}

impl Touched {
    pub(crate) fn add(&mut self, projected: Vec<(DocId, MessageId)>) {
        for (channel, id) in projected {
            if self.overflow.contains(&channel) {
                continue;
            }
            let ids = self.by_channel.entry(channel).or_default();
            ids.insert(id);
            if ids.len() > MAX_MESSAGES_PER_CHANNEL {
                self.by_channel.remove(&channel);
                self.overflow.insert(channel);
            }
        }
    }
}

impl Store {
    /// Starts recording which messages are projected, for [`Store::take_touched`].
    fn watch_messages(&mut self) {
        self.watch.get_or_insert_with(Touched::default);
    }

    /// The messages projected since the last call (keeps recording).
    fn take_touched(&mut self) -> Touched {
        self.watch.as_mut().map(std::mem::take).unwrap_or_default()
    }
}

/// The API over one home. Cheap to share behind an `Arc`; call [`Api::shutdown`] at the end.
#[derive(Debug)]
pub struct Api {
    cfg: NodeConfig,
    node: Mutex<Option<Arc<Node>>>,
    /// Serialises starting the node.
    starting: tokio::sync::Mutex<()>,
    batches: broadcast::Sender<Batch>,
    cancel: CancellationToken,
    batcher: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Api {
    /// The API for the home whose database is `cfg.db`; starts its node now if the home has an
    /// identity (so it syncs before the first request), else on `init`.
    pub async fn open(cfg: NodeConfig) -> Result<Api, ApiError> {
        let (batches, _) = broadcast::channel(BATCH_BACKLOG);
        let api = Api {
            cfg,
            node: Mutex::new(None),
            starting: tokio::sync::Mutex::new(()),
            batches,
            cancel: CancellationToken::new(),
            batcher: Mutex::new(None),
        };
        match api.node().await {
            Ok(_) => Ok(api),
            Err(e) if e.code == ErrorCode::NotInitialized => Ok(api),
            Err(e) => Err(e),
        }
    }

    /// The API over the home folder `home` (created, owner-only, if it is new) with its node
    /// on `bind` (with LAN discovery if `lan`, see [`NodeConfig::lan`]; through relays alone if
    /// `relay_only`, see [`NodeConfig::relay_only`]): how both transports
    /// (the desktop app, `flyt serve --ui`) start.
    pub async fn open_home(
        home: &Path,
        bind: SocketAddr,
        lan: bool,
        relay_only: bool,
    ) -> Result<Api, ApiError> {
        crate::home::create(home).map_err(|e| {
            error!("api: creating {}: {e}", home.display());
            ApiError::new(
                ErrorCode::Internal,
                format!("Flyt cannot create its folder {}: {e}.", home.display()),
            )
        })?;
        Api::open(NodeConfig {
            db: crate::home::db_path(home),
            bind,
            lan,
            relay_only,
        })
        .await
    }

    /// Event batches from now on; read them with [`next_batch`].
    pub fn subscribe(&self) -> broadcast::Receiver<Batch> {
        self.batches.subscribe()
    }

    /// The running node, started on first need once the home has an identity.
    pub async fn node(&self) -> Result<Arc<Node>, ApiError> {
        if let Some(n) = self.node.lock().expect("node lock").clone() {
            return Ok(n);
        }
        let _starting = self.starting.lock().await;
        if let Some(n) = self.node.lock().expect("node lock").clone() {
            return Ok(n);
        }
        if self.cancel.is_cancelled() {
            return Err(NodeError::Stopped.into());
        }
        let db = self.cfg.db.clone();
        let initialized =
            tokio::task::spawn_blocking(move || Store::open(&db).map(|s| s.identity().is_ok()))
                .await
                .map_err(|e| ApiError::internal(&e))??;
        if !initialized {
            return Err(StoreError::NoIdentity.into());
        }
        let node = Arc::new(Node::start(self.cfg.clone()).await?);
        let events = node.subscribe();
        node.call(Store::watch_messages).await?;
        let batcher = tokio::spawn(batcher(
            node.clone(),
            events,
            self.batches.clone(),
            self.cancel.clone(),
        ));
        *self.batcher.lock().expect("batcher lock") = Some(batcher);
        *self.node.lock().expect("node lock") = Some(node.clone());
        Ok(node)
    }

    /// Runs `f` on the store thread; its result becomes the response.
    async fn call<R: Serialize + Send + 'static>(
        &self,
        f: impl FnOnce(&mut Store) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<Value, ApiError> {
        let r = self.node().await?.call(f).await??;
        serde_json::to_value(r).map_err(|e| ApiError::internal(&e))
    }

    /// Parses and answers one JSON request.
    pub async fn handle_json(&self, req: Value) -> Result<Value, ApiError> {
        self.handle(parse_request(req)?).await
    }

    /// Answers one request.
    pub async fn handle(&self, req: Request) -> Result<Value, ApiError> {
        match req {
            Request::Whoami => match self.node().await {
                Ok(_) => self.call(|s| Ok(whoami(s))).await,
                Err(e) if e.code == ErrorCode::NotInitialized => Ok(json!({"initialized": false})),
                Err(e) => Err(e),
            },
            Request::Init { name } => {
                let db = self.cfg.db.clone();
                tokio::task::spawn_blocking(move || {
                    Store::open(&db)?.init(&name)?;
                    Ok::<_, StoreError>(())
                })
                .await
                .map_err(|e| ApiError::internal(&e))??;
                self.call(|s| Ok(whoami(s))).await
            }
            Request::DeviceJoin { ticket } => self.device_join(ticket).await,
            Request::Workspaces => self.call(workspaces).await,
            Request::WorkspaceCreate { name } => {
                self.call(move |s| {
                    s.identity()?;
                    Ok(json!({ "id": s.create_workspace(&name)?.to_string() }))
                })
                .await
            }
            Request::WorkspaceUse { id } => {
                self.call(move |s| {
                    s.identity()?;
                    let ws = s.find_workspace(&id)?;
                    s.use_workspace(ws)
                })
                .await
            }
            Request::Join { ticket } => self.join(ticket).await,
            Request::Channels => {
                self.call(|s| {
                    s.channels()?
                        .into_iter()
                        .map(|c| channel_view(s, c))
                        .collect::<Result<Vec<_>, _>>()
                })
                .await
            }
            Request::ChannelCreate {
                name,
                topic,
                private,
            } => {
                self.call(move |s| {
                    let id = s.create_channel(&name, &topic, private)?.to_string();
                    let row = s.channels()?.into_iter().find(|c| c.id == id);
                    let row = row.ok_or(StoreError::UnknownChannel(id))?;
                    channel_view(s, row)
                })
                .await
            }
            Request::Read {
                channel,
                limit,
                before,
                thread,
            } => {
                self.call(move |s| {
                    let ch = s.find_channel(&channel)?;
                    s.read(
                        ch,
                        limit.unwrap_or(50),
                        before.as_deref(),
                        thread.as_deref(),
                    )
                })
                .await
            }
            Request::Send {
                channel,
                text,
                reply_to,
                thread,
            } => {
                self.call(move |s| {
                    let ch = s.find_channel(&channel)?;
                    let reply_to = reply_to.map(|r| s.resolve_message(&r)).transpose()?;
                    let thread = thread.map(|t| s.resolve_message(&t)).transpose()?;
                    s.post(ch, &text, reply_to, thread)
                })
                .await
            }
            Request::Edit { id, text } => self.call(move |s| s.edit(&id, &text)).await,
            Request::Delete { id } => self.call(move |s| s.delete(&id)).await,
            Request::React { id, emoji, on } => self.call(move |s| s.react(&id, &emoji, on)).await,
            Request::Search {
                query,
                channel,
                limit,
            } => {
                self.call(move |s| {
                    let ch = channel.map(|c| s.find_channel(&c)).transpose()?;
                    s.search(&query, ch, limit.unwrap_or(20))
                })
                .await
            }
            Request::MarkRead { channel, up_to } => {
                self.call(move |s| {
                    let ch = s.find_channel(&channel)?;
                    match up_to {
                        Some(id) => s.mark_read_up_to(ch, s.resolve_message(&id)?),
                        None => s.mark_read(ch),
                    }
                })
                .await
            }
            Request::Members => {
                let presence = self.node().await?.presence();
                self.call(move |s| members(s, &presence)).await
            }
            Request::MemberRole { person, role } => {
                let role = match role.as_str() {
                    "admin" => Role::Admin,
                    "member" => Role::Member,
                    _ => {
                        return Err(ApiError::bad_request(format!(
                            "A role is \"admin\" or \"member\", not {role:?}."
                        )));
                    }
                };
                self.call(move |s| s.set_role(&person, role)).await
            }
            Request::MemberRemove { person } => {
                self.call(move |s| s.set_role(&person, Role::Removed)).await
            }
            Request::Invite { expires_secs, role } => self.invite(expires_secs, role).await,
            Request::SetName { name } => self.call(move |s| s.set_name(&name)).await,
            Request::Status => {
                let node = self.node().await?;
                let live = live(&node).await?;
                self.call(move |s| status(s, &live)).await
            }
            Request::Typing { channel } => {
                let node = self.node().await?;
                let ch = node.call(move |s| s.find_channel(&channel)).await??;
                let sent = node.typing(ch).await?;
                Ok(json!({ "sent_to": sent }))
            }
            Request::Presence { state } => {
                let state = match state.as_str() {
                    "online" => crdt_model::signed::Presence::Online,
                    "away" => crdt_model::signed::Presence::Away,
                    _ => {
                        return Err(ApiError::bad_request(format!(
                            "A presence is \"online\" or \"away\", not {state:?}."
                        )));
                    }
                };
                self.node().await?.set_presence(state)?;
                Ok(Value::Null)
            }
            Request::Dm { people } => {
                if people.iter().all(|p| p.trim().is_empty()) {
                    return Err(ApiError::bad_request(
                        "Pick at least one person to message.",
                    ));
                }
                self.call(move |s| {
                    let id = s.open_dm(&people)?.to_string();
                    let row = s.channels()?.into_iter().find(|c| c.id == id);
                    channel_view(s, row.ok_or(StoreError::UnknownChannel(id))?)
                })
                .await
            }
            Request::Relays => {
                let connected = self.node().await?.connected();
                self.call(move |s| relays(s, &connected)).await
            }
            Request::RelayAdd { url } => self.relay_add(url).await,
            Request::RelayRemove { url } => self.relay_remove(url).await,
            Request::Devices => {
                let connected = self.node().await?.connected();
                self.call(move |s| devices(s, &connected)).await
            }
            Request::DeviceLink { expires_secs } => {
                let secs = expires_secs.unwrap_or(600);
                if secs == 0 || secs > 86_400 {
                    return Err(ApiError::bad_request(
                        "A device-link ticket is valid for between 1 second and a day.",
                    ));
                }
                let node = self.node().await?;
                let addrs = node.reachable_at();
                self.call(move |s| {
                    let ticket = s.link_ticket(secs as i64 * 1000, addrs)?;
                    let expires = crdt_model::invite::decode_link(&ticket, crate::now_ms())?
                        .payload
                        .expires_ms;
                    Ok(json!({ "ticket": ticket, "expires_ts": expires }))
                })
                .await
            }
        }
    }

    /// `relay_add`: nothing is recorded unless the relay answered as a Flyt relay and took
    /// the workspace.
    async fn relay_add(&self, url: String) -> Result<Value, ApiError> {
        let url = relay_client::normalize(&url)?;
        let node = self.node().await?;
        // Refuse before asking the network: adding needs a role (the model checks it again).
        let listed = node
            .call(|s| -> Result<Vec<DeviceId>, StoreError> {
                s.identity()?;
                let ws = s.workspaces()?.into_iter().find(|w| w.current);
                let ws = ws.ok_or(StoreError::NoWorkspace)?;
                if ws.role != "owner" && ws.role != "admin" {
                    return Err(ModelError::NotAllowed(
                        "only owners and admins add or remove relays",
                    )
                    .into());
                }
                Ok(s.relays()?.into_iter().map(|(id, _)| id).collect())
            })
            .await??;
        let info = blocking({
            let url = url.clone();
            move || relay_client::info(&url)
        })
        .await?;
        let id = info.id;
        let saved = node
            .call({
                let url = url.clone();
                move |s| {
                    let ws = s.add_relay(&url, info.id, info.addrs)?;
                    s.workspace_save(ws)
                }
            })
            .await??;
        let joined = blocking({
            let url = url.clone();
            move || relay_client::join(&url, &saved)
        })
        .await;
        if let Err(e) = joined {
            // The relay would not serve the workspace: take the record back (unless it was
            // listed before), so members do not try a relay that refuses them.
            if !listed.contains(&id) {
                let u = url.clone();
                if let Err(undo) = node.call(move |s| s.remove_relay(&u)).await? {
                    warn!("api: taking back relay {url} failed: {undo:#}");
                }
            }
            return Err(e);
        }
        let connected = node.connected();
        self.call(move |s| {
            relays(s, &connected)?
                .into_iter()
                .find(|r| r.id == id.to_string())
                .ok_or(StoreError::UnknownRelay(url))
        })
        .await
    }

    /// `relay_remove`: the removal is recorded first; the relay is then told, so it stops
    /// serving the workspace (`relay_told: false` if it did not answer).
    async fn relay_remove(&self, url: String) -> Result<Value, ApiError> {
        let node = self.node().await?;
        let (removed, saved) = node
            .call(move |s| -> Result<_, StoreError> {
                s.identity()?;
                let key = url.trim().trim_end_matches('/');
                let removed = s
                    .relays()?
                    .into_iter()
                    .find(|(id, l)| l.url == key || id.to_string() == key)
                    .map(|(_, l)| l.url);
                let ws = s.remove_relay(key)?;
                Ok((removed, s.workspace_save(ws)?))
            })
            .await??;
        let told = match removed {
            Some(url) => match blocking(move || relay_client::join(&url, &saved)).await {
                Ok(()) => true,
                Err(e) => {
                    debug!("api: the removed relay was not told: {e}");
                    false
                }
            },
            None => false,
        };
        Ok(json!({ "relay_told": told }))
    }

    async fn join(&self, ticket: String) -> Result<Value, ApiError> {
        let node = self.node().await?;
        let mut events = node.subscribe();
        let ws = node.join(&ticket).await?;
        arrival(&node, &mut events, ws).await.map_err(|e| match e {
            Some(e) => e,
            None => ApiError::new(
                ErrorCode::Unavailable,
                "The invite was accepted, but the workspace did not arrive within 30 seconds; it \
                 keeps syncing in the background.",
            ),
        })?;
        self.call(move |s| {
            s.use_workspace(ws)?;
            let name = s.identity()?.name.clone();
            s.set_profile(ws, &name)?;
            Ok(json!({ "workspace": ws.to_string() }))
        })
        .await
    }

    async fn device_join(&self, ticket: String) -> Result<Value, ApiError> {
        let workspaces = {
            // No node starts (nor another link) while this home gets its identity.
            let _starting = self.starting.lock().await;
            if self.cancel.is_cancelled() {
                return Err(NodeError::Stopped.into());
            }
            crate::node::link_device(&self.cfg.db, self.cfg.bind, &ticket).await?
        };
        let node = self.node().await?;
        let mut events = node.subscribe();
        if let Some(ws) = workspaces.first() {
            arrival(&node, &mut events, *ws)
                .await
                .map_err(|e| match e {
                    Some(e) => e,
                    None => ApiError::new(
                        ErrorCode::Unavailable,
                        "This device is linked, but your workspaces did not arrive within 30 \
                     seconds; they keep syncing in the background.",
                    ),
                })?;
        }
        self.call(|s| Ok(whoami(s))).await
    }

    async fn invite(
        &self,
        expires_secs: Option<u64>,
        role: Option<String>,
    ) -> Result<Value, ApiError> {
        let role = match role.as_deref().unwrap_or("member") {
            "member" => Role::Member,
            "admin" => Role::Admin,
            other => {
                return Err(ApiError::bad_request(format!(
                    "An invite grants \"member\" or \"admin\", not {other:?}."
                )));
            }
        };
        // A year at most: a ticket is a secret that should not live forever.
        let secs = expires_secs.unwrap_or(86_400);
        if secs == 0 || secs > 365 * 86_400 {
            return Err(ApiError::bad_request(
                "An invite is valid for between 1 second and a year.",
            ));
        }
        let node = self.node().await?;
        let addrs = node.reachable_at();
        self.call(move |s| {
            let ticket = s.invite(role, secs as i64 * 1000, addrs)?;
            let expires = crdt_model::invite::decode(&ticket, crate::now_ms())?
                .payload
                .expires_ms;
            Ok(json!({ "ticket": ticket, "expires_ts": expires }))
        })
        .await
    }

    /// Stops the event batcher and the node (sync states saved, storage flushed). Requests
    /// after this answer `unavailable`.
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        let _starting = self.starting.lock().await;
        let batcher = self.batcher.lock().expect("batcher lock").take();
        if let Some(b) = batcher {
            let _ = b.await;
        }
        let node = self.node.lock().expect("node lock").take();
        if let Some(node) = node {
            match Arc::into_inner(node) {
                Some(node) => node.shutdown().await,
                None => warn!("api: a request still holds the node at shutdown"),
            }
        }
    }
}

fn whoami(s: &Store) -> Value {
    match s.identity() {
        Ok(me) => json!({
            "initialized": true,
            "name": me.name,
            "person": me.person_id().to_string(),
            "device": me.device_id().to_string(),
        }),
        Err(_) => json!({ "initialized": false }),
    }
}

fn workspaces(s: &mut Store) -> Result<Vec<WorkspaceView>, StoreError> {
    s.workspaces()?
        .into_iter()
        .map(|w| {
            let (unread, mentions) = s
                .channels_in(w.id.parse()?)?
                .iter()
                .fold((0, 0), |(u, m), c| (u + c.unread, m + c.mentions));
            Ok(WorkspaceView {
                id: w.id,
                name: w.name,
                current: w.current,
                role: w.role,
                unread,
                mentions,
                members: w.members,
            })
        })
        .collect()
}

fn channel_view(s: &Store, c: ChannelRow) -> Result<ChannelView, StoreError> {
    let id = c.id.parse()?;
    let members = if c.private || c.dm {
        s.channel_members(id)?
            .into_iter()
            .map(|m| ChannelMemberView {
                person: m.key,
                name: m.name,
            })
            .collect()
    } else {
        Vec::new()
    };
    Ok(ChannelView {
        last_ts: s.last_message_ts(id)?,
        members,
        id: c.id,
        name: c.name,
        topic: c.topic,
        private: c.private,
        dm: c.dm,
        unread: c.unread,
        mentions: c.mentions,
    })
}

/// A person's display name, or the start of their key.
fn display_name(s: &Store, person: &crdt_model::PersonId) -> String {
    s.person_name(person).unwrap_or_else(|| {
        let k = person.to_string();
        k[..8.min(k.len())].to_owned()
    })
}

/// Presence of devices, as [`Node::presence`] reports it.
type PresenceMap = HashMap<DeviceId, (crdt_model::PersonId, crdt_model::signed::Presence)>;

/// A person's presence: the liveliest of their devices'.
fn person_presence(presence: &PresenceMap, person: &str) -> crdt_model::signed::Presence {
    use crdt_model::signed::Presence::*;
    let mut best = Offline;
    for (p, st) in presence.values() {
        if p.to_string() == person {
            best = match (best, *st) {
                (Online, _) | (_, Online) => Online,
                (Away, _) | (_, Away) => Away,
                _ => Offline,
            };
        }
    }
    best
}

fn members(s: &Store, presence: &PresenceMap) -> Result<Vec<MemberView>, StoreError> {
    Ok(s.members()?
        .into_iter()
        .map(|m| {
            let p = person_presence(presence, &m.key);
            MemberView {
                online: p.as_str().to_owned(),
                person: m.key,
                name: m.name,
                role: m.role,
            }
        })
        .collect())
}

fn relays(s: &mut Store, connected: &[DeviceId]) -> Result<Vec<RelayView>, StoreError> {
    s.identity()?;
    Ok(s.relays()?
        .into_iter()
        .map(|(id, l)| RelayView {
            id: id.to_string(),
            url: l.url,
            addrs: l.addrs,
            added_by: display_name(s, &l.by),
            added_ts: l.at_ms,
            connected: connected.contains(&id),
        })
        .collect())
}

fn devices(s: &Store, connected: &[DeviceId]) -> Result<Vec<DeviceView>, StoreError> {
    Ok(s.devices()?
        .into_iter()
        .map(|d| DeviceView {
            connected: connected.iter().any(|c| c.to_string() == d.device),
            device: d.device,
            this: d.this,
        })
        .collect())
}

/// Runs a blocking relay request off the runtime.
async fn blocking<R: Send + 'static>(
    f: impl FnOnce() -> Result<R, RelayClientError> + Send + 'static,
) -> Result<R, ApiError> {
    Ok(tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(&e))??)
}

/// Waits until the workspace document `ws` is here (re-checking after each node event), for
/// at most [`JOIN_WAIT`]: `Err(None)` when it did not arrive in time.
async fn arrival(
    node: &Node,
    events: &mut broadcast::Receiver<NodeEvent>,
    ws: DocId,
) -> Result<(), Option<ApiError>> {
    let deadline = Instant::now() + JOIN_WAIT;
    loop {
        let have = node
            .call(move |s| -> Result<bool, StoreError> {
                Ok(s.workspaces()?.iter().any(|w| w.id == ws.to_string()))
            })
            .await
            .map_err(|e| Some(ApiError::from(e)))?
            .map_err(|e| Some(ApiError::from(e)))?;
        if have {
            return Ok(());
        }
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Ok(_) | Err(broadcast::error::RecvError::Lagged(_))) => {}
            Ok(Err(broadcast::error::RecvError::Closed)) => {
                return Err(Some(NodeError::Stopped.into()));
            }
            Err(_) => return Err(None),
        }
    }
}

/// What only the running node knows for `status`.
#[derive(Debug, Clone, Default)]
struct LiveStatus {
    connected: Vec<DeviceId>,
    sync: Vec<crate::node::PeerSync>,
}

async fn live(node: &Node) -> Result<LiveStatus, ApiError> {
    Ok(LiveStatus {
        connected: node.connected(),
        sync: node.sync_status().await?,
    })
}

fn status(s: &mut Store, live: &LiveStatus) -> Result<StatusView, StoreError> {
    let connected: Vec<String> = live.connected.iter().map(|d| d.to_string()).collect();
    let mut catching_up = CatchingUp::default();
    for p in &live.sync {
        catching_up.done += p.in_sync;
        catching_up.total += p.in_sync + p.behind;
    }
    let mut peers: Vec<PeerView> = s
        .status()?
        .peers
        .into_iter()
        .map(|p| {
            let sync = live.sync.iter().find(|x| x.device.to_string() == p.device);
            PeerView {
                connected: connected.contains(&p.device),
                docs_in_sync: sync.map_or(0, |x| x.in_sync),
                docs_behind: sync.map_or(0, |x| x.behind),
                last_sync_ts: sync.and_then(|x| x.last_sync_ms).or(p.last_sync_ms),
                device: p.device,
                name: p.name,
                docs_synced: p.synced_documents,
            }
        })
        .collect();
    // Connected peers this home does not list (a relay, a device that dialled us).
    for x in &live.sync {
        let d = x.device.to_string();
        if !peers.iter().any(|p| p.device == d) {
            peers.push(PeerView {
                device: d,
                name: s.device_name(&x.device),
                docs_synced: 0,
                connected: true,
                docs_in_sync: x.in_sync,
                docs_behind: x.behind,
                last_sync_ts: x.last_sync_ms,
            });
        }
    }
    let mut relays: Vec<String> = s
        .relay_peers()?
        .into_iter()
        .filter(|r| live.connected.contains(&r.id))
        .flat_map(|r| r.relays)
        .collect();
    relays.sort();
    relays.dedup();
    Ok(StatusView {
        online: !connected.is_empty(),
        peers,
        relays,
        catching_up,
    })
}

/// What happened since the last batch.
#[derive(Debug, Default)]
struct Pending {
    docs: BTreeSet<DocId>,
    status: bool,
    lagged: bool,
    /// Typing and presence, in order.
    ephemeral: Vec<NodeEvent>,
}

impl Pending {
    /// Notes one node event; false once the node's event stream ended.
    fn note(&mut self, ev: Result<NodeEvent, broadcast::error::RecvError>) -> bool {
        match ev {
            Ok(NodeEvent::Changed(d)) => {
                self.docs.insert(d);
            }
            Ok(NodeEvent::LocalWrite(ds)) => self.docs.extend(ds),
            Ok(NodeEvent::PeerUp(_) | NodeEvent::PeerDown(_)) => self.status = true,
            Ok(ev @ (NodeEvent::Typing { .. } | NodeEvent::Presence { .. })) => {
                self.ephemeral.push(ev)
            }
            Err(broadcast::error::RecvError::Lagged(_)) => self.lagged = true,
            Err(broadcast::error::RecvError::Closed) => return false,
        }
        true
    }

    /// The batch, rendered on the store thread from the projection.
    fn render(self, s: &mut Store, live: &LiveStatus) -> Vec<ApiEvent> {
        let touched = s.take_touched();
        let mut out = Vec::new();
        let (mut channels, mut members) = (self.lagged, self.lagged);
        for ev in self.ephemeral {
            match ev {
                NodeEvent::Typing {
                    channel,
                    person,
                    device,
                    at_ms,
                } => out.push(ApiEvent::Typing {
                    channel: channel.to_string(),
                    name: display_name(s, &person),
                    person: person.to_string(),
                    device: device.to_string(),
                    expires_ts: at_ms + crate::node::TYPING_TTL.as_millis() as i64,
                }),
                NodeEvent::Presence {
                    person,
                    device,
                    state,
                } => {
                    members = true;
                    out.push(ApiEvent::Presence {
                        name: display_name(s, &person),
                        person: person.to_string(),
                        device: device.to_string(),
                        state: state.as_str().to_owned(),
                    });
                }
                _ => {}
            }
        }
        // A message projected here changes its channel's unread and mention counts, whichever
        // node event announced it.
        channels |= !touched.by_channel.is_empty();
        let mut refresh = touched.overflow;
        for d in self.docs {
            match s.doc_kind(d) {
                Ok(Some((kind, channel))) => match kind.as_str() {
                    "workspace" => (channels, members) = (true, true),
                    "channel" => channels = true,
                    _ => {
                        channels = true;
                        // A bucket changed but this process projected nothing of it: another
                        // process on this home wrote it.
                        if let Some(c) = channel
                            && !touched.by_channel.contains_key(&c)
                        {
                            refresh.insert(c);
                        }
                    }
                },
                Ok(None) => {}
                Err(e) => warn!("api: looking up document {d}: {e:#}"),
            }
        }
        if self.lagged {
            out.push(ApiEvent::Refresh { channel: None });
        }
        for id in touched.by_channel.into_values().flatten() {
            match s.message(&id.to_string()) {
                Ok(message) => out.push(ApiEvent::Message { message }),
                // Nothing readable under that key: not shown, so nothing to update.
                Err(StoreError::UnknownMessage(_)) => {}
                Err(e) => warn!("api: rendering message {id}: {e:#}"),
            }
        }
        out.extend(refresh.into_iter().map(|c| ApiEvent::Refresh {
            channel: Some(c.to_string()),
        }));
        if channels {
            out.push(ApiEvent::Channels);
        }
        if members {
            out.push(ApiEvent::Members);
        }
        if self.status {
            match status(s, live) {
                Ok(st) => out.push(ApiEvent::Status(st)),
                Err(e) => warn!("api: status: {e:#}"),
            }
        }
        out
    }
}

/// Turns node events into batches: waits for an event, gathers what follows until
/// [`BATCH_INTERVAL`] after the previous batch, renders once on the store thread, sends.
async fn batcher(
    node: Arc<Node>,
    mut events: broadcast::Receiver<NodeEvent>,
    out: broadcast::Sender<Batch>,
    cancel: CancellationToken,
) {
    let mut next = Instant::now();
    loop {
        let Some(first) = cancel.run_until_cancelled(events.recv()).await else {
            return;
        };
        let mut pending = Pending::default();
        let mut open = pending.note(first);
        let deadline = next.max(Instant::now());
        while open {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(ev) => open = pending.note(ev),
                Err(_) => break,
            }
        }
        let live = if pending.status {
            match live(&node).await {
                Ok(l) => l,
                Err(_) => return,
            }
        } else {
            LiveStatus::default()
        };
        match node.call(move |s| pending.render(s, &live)).await {
            Ok(batch) if !batch.is_empty() => {
                let _ = out.send(Arc::new(batch));
            }
            Ok(_) => {}
            Err(_) => return,
        }
        if !open {
            return;
        }
        next = Instant::now() + BATCH_INTERVAL;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_from_the_contracts_json() {
        let r = parse_request(json!({"cmd": "send", "channel": "general", "text": "hi"})).unwrap();
        assert_eq!(
            r,
            Request::Send {
                channel: "general".into(),
                text: "hi".into(),
                reply_to: None,
                thread: None
            }
        );
        let r = parse_request(json!({"cmd": "react", "id": "abcd", "emoji": "👍"})).unwrap();
        assert!(matches!(r, Request::React { on: true, .. }));
        let r = parse_request(json!({"cmd": "channel_create", "name": "x"})).unwrap();
        assert!(matches!(r, Request::ChannelCreate { private: false, .. }));
    }

    #[test]
    fn every_known_command_is_a_request() {
        for cmd in COMMANDS {
            let e = parse_request(json!({ "cmd": cmd }));
            if let Err(e) = e {
                assert!(!e.message.contains("does not know"), "{cmd}: {}", e.message);
            }
        }
    }

    #[test]
    fn malformed_requests_say_what_is_wrong() {
        let e = parse_request(json!({"text": "hi"})).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert!(e.message.contains("\"cmd\""), "{}", e.message);
        let e = parse_request(json!({"cmd": "teleport"})).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert_eq!(
            e.message,
            "This Flyt does not know the request \"teleport\"."
        );
        let e = parse_request(json!({"cmd": "send", "channel": "general"})).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert!(e.message.contains("missing field `text`"), "{}", e.message);
        let e = parse_request(json!("send")).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
    }

    #[test]
    fn errors_and_events_serialize_as_the_contract_says() {
        let e = ApiError::from(StoreError::Model(ModelError::TextTooLong(40_001)));
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            json!({"code": "bad_request",
                   "message": "This message is 40001 characters long; the limit is 40000."})
        );
        assert_eq!(
            serde_json::to_value(ApiEvent::Channels).unwrap(),
            json!({"type": "channels"})
        );
        assert_eq!(
            serde_json::to_value(ApiEvent::Refresh { channel: None }).unwrap(),
            json!({"type": "refresh"})
        );
        let st = ApiEvent::Status(StatusView {
            online: false,
            peers: vec![],
            relays: vec![],
            catching_up: CatchingUp::default(),
        });
        assert_eq!(
            serde_json::to_value(st).unwrap(),
            json!({"type": "status", "online": false, "peers": [], "relays": [],
                   "catching_up": {"done": 0, "total": 0}})
        );
    }

    #[test]
    fn sentences_start_big_and_end_with_a_stop() {
        assert_eq!(
            sentence("only owners and admins invite"),
            "Only owners and admins invite."
        );
        assert_eq!(sentence("done."), "Done.");
        assert_eq!(sentence(""), "");
    }

    #[test]
    fn a_channel_with_too_many_changes_is_refreshed_whole() {
        let mut t = Touched::default();
        let (a, b) = (DocId([1; 16]), DocId([2; 16]));
        let ids: Vec<(DocId, MessageId)> = (0..=MAX_MESSAGES_PER_CHANNEL as i64)
            .map(|i| (a, MessageId::new(i, [0; 10])))
            .chain([(b, MessageId::new(1, [0; 10]))])
            .collect();
        t.add(ids);
        assert_eq!(t.overflow, BTreeSet::from([a]));
        assert_eq!(t.by_channel.keys().collect::<Vec<_>>(), vec![&b]);
    }
}
