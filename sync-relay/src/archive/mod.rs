//! The archive: every document the relay holds, kept in Postgres (or, without a database URL,
//! in an embedded SQLite file) together with the relay's sync states, and projected into
//! searchable tables (workspaces, members, devices, channels, messages with a full-text index).
//! Both arrive live: each committed document change as a [`Record::Chunk`], each sync state
//! the relay's store saves (when a peer's session ends, and at shutdown) as a
//! [`Record::SyncState`].
//!
//! Archiving never blocks live sync. [`Archive::submit`] puts [`Record`]s (the bytes a document
//! gained, the relay's sync states) on an unbounded channel and returns at once. One worker task
//! writes them in batches, one transaction per batch: it applies each batch's chunks to its own
//! copy of the documents (loaded from the archive on first use), maps the Automerge diff to the
//! messages it touched (`bucket::touched`), verifies and projects those with `crdt-model`'s
//! views, and writes chunks and projection together. A newer sync state replaces an older one
//! not yet written. When the database is unreachable the worker keeps everything it was given, retries with backoff, and catches up
//! when the database returns: a record leaves memory only after the transaction that wrote it
//! committed. Every write is idempotent (rows are upserts, a document chunk written twice loads
//! to the same document), so a batch retried after an ambiguous failure is harmless.
//!
//! What was queued when the relay stopped (Postgres still away at SIGTERM, a kill) is in the
//! relay's own store, not lost: at every start, [`Archive::catch_up`] compares each document's
//! heads in the relay with the heads of the archive's copy (the heads written are those of the
//! copy the worker built, so a change waiting for a lost dependency does not count) and
//! submits what differs, then the sync states the archive lacks (read and submitted on the
//! relay's store thread, so a state saved live meanwhile is never overtaken by an older one).
//!
//! A message whose signatures do not check out is archived with `verified = false`, never as
//! authentic. When a workspace's certified devices change, the messages of its buckets the
//! worker holds in memory are verified again (a certificate may arrive after the messages it
//! vouches for).

pub mod postgres;
pub mod sqlite;
#[cfg(test)]
pub(crate) mod test_pg;
#[cfg(test)]
pub(crate) mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use automerge::{Automerge, ChangeHash, ReadDoc};
use crdt_model::bucket::{self, MessageView};
use crdt_model::workspace::{self, WorkspaceView};
use crdt_model::{DeviceId, DocId, MessageId, Role};
use serde::Serialize;
use tokio::sync::{mpsc, watch};

/// The archive schema version this build writes. A database with a newer one is refused.
pub const SCHEMA_VERSION: i64 = 1;

/// At most this many document chunks are written in one transaction.
pub const MAX_BATCH_CHUNKS: usize = 2_000;

/// The longest a page of messages or search results may be.
pub const MAX_PAGE: usize = 200;

/// Everything that can go wrong in the archive.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArchiveError {
    /// The database holds an archive schema newer than this build knows.
    #[error(
        "the archive database has schema version {found}; this relay knows up to {SCHEMA_VERSION}: upgrade the relay"
    )]
    NewerSchema {
        /// The version found in the database.
        found: i64,
    },
    /// Postgres failed or is unreachable.
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// The embedded SQLite archive failed.
    #[error("sqlite archive: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The data directory could not be prepared.
    #[error("archive directory: {0}")]
    Io(#[from] std::io::Error),
    /// A search query with nothing to search for.
    #[error("the search query is empty")]
    EmptyQuery,
    /// The archive worker has stopped.
    #[error("the archive has shut down")]
    Closed,
    /// The relay could not be read while catching up (stopping, or its storage failed).
    #[error("reading the relay: {0}")]
    Relay(#[from] crate::runtime::RelayError),
}

/// Where the archive lives.
#[derive(Debug, Clone)]
pub struct ArchiveConfig {
    /// `postgres://...`; `None` for the embedded SQLite archive.
    pub database_url: Option<String>,
    /// Where the embedded SQLite archive (`archive.sqlite`) lives.
    pub data_dir: PathBuf,
}

/// What kind of document a chunk belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DocKind {
    /// A workspace document.
    Workspace,
    /// A channel document.
    Channel,
    /// A bucket document (messages of one channel in one time window).
    Bucket,
}

impl DocKind {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            DocKind::Workspace => "workspace",
            DocKind::Channel => "channel",
            DocKind::Bucket => "bucket",
        }
    }
}

/// What a document is and where it belongs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocMeta {
    /// The document.
    pub id: DocId,
    /// Its kind.
    pub kind: DocKind,
    /// Its workspace (itself for a workspace document).
    pub workspace: DocId,
    /// Its channel (itself for a channel document; `None` for a workspace).
    pub channel: Option<DocId>,
    /// The bucket key (`2026-11-22.0`) of a bucket document.
    pub bucket_key: Option<String>,
}

/// One archived message, as stored and as the admin API returns it. Ids are their text forms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ArchivedMessage {
    /// The message id.
    pub id: String,
    /// Its workspace.
    pub workspace: String,
    /// Its channel.
    pub channel: String,
    /// The bucket document holding it.
    pub bucket: String,
    /// The author's person key (hex).
    pub author: String,
    /// Post time, ms since the Unix epoch.
    pub ts: i64,
    /// Current text (empty once deleted).
    pub text: String,
    /// Whether it was edited.
    pub edited: bool,
    /// Time of the last edit.
    pub edited_ms: Option<i64>,
    /// Deleted for everyone.
    pub deleted: bool,
    /// The thread it belongs to.
    pub thread_root: Option<String>,
    /// The message it quotes.
    pub reply_to: Option<String>,
    /// Every signature checked out when it was archived; false: not authentic.
    pub verified: bool,
}

impl ArchivedMessage {
    /// The archived form of a verified view of a message.
    pub fn from_view(workspace: DocId, bucket: DocId, m: &MessageView) -> Self {
        ArchivedMessage {
            id: m.id.to_string(),
            workspace: workspace.to_string(),
            channel: m.channel.to_string(),
            bucket: bucket.to_string(),
            author: m.author.to_string(),
            ts: m.ts_ms,
            text: m.text.clone(),
            edited: m.edited_ms.is_some(),
            edited_ms: m.edited_ms,
            deleted: m.deleted,
            thread_root: m.thread_root.map(|t| t.to_string()),
            reply_to: m.reply_to.map(|t| t.to_string()),
            verified: m.verified,
        }
    }
}

/// A workspace as archived: its verified members, devices and channels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkspaceRecord {
    /// The workspace id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// The owner's person key.
    pub owner: Option<String>,
    /// (person, display name, role) of everyone with a valid role, removed people included.
    pub members: Vec<(String, String, Role)>,
    /// (device, person) of every certified device.
    pub devices: Vec<(String, String)>,
    /// (channel id, name, private) of every listed channel.
    pub channels: Vec<(String, String, bool)>,
}

impl WorkspaceRecord {
    /// The archived form of a verified workspace view.
    pub fn from_view(id: DocId, v: &WorkspaceView) -> Self {
        WorkspaceRecord {
            id: id.to_string(),
            name: v.name.clone(),
            owner: v.owner.map(|o| o.to_string()),
            members: v
                .roles
                .iter()
                .map(|(p, r)| (p.to_string(), v.name_of(p), *r))
                .collect(),
            devices: v
                .devices
                .iter()
                .map(|(d, p)| (d.to_string(), p.to_string()))
                .collect(),
            channels: v
                .channels
                .iter()
                .map(|(c, l)| (c.to_string(), l.info.name.clone(), l.info.private))
                .collect(),
        }
    }
}

/// Something to archive.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Record {
    /// Document bytes the archive has not seen (an incremental save, or a full save): appended
    /// to the document's chunks and projected.
    Chunk {
        /// The document.
        meta: DocMeta,
        /// `Automerge::save_after` (or `save`) bytes.
        data: Vec<u8>,
        /// The document's heads after this chunk. (The archive stores its own copy's heads,
        /// which differ only if it lacks a change this chunk depends on.)
        heads: Vec<ChangeHash>,
    },
    /// The relay's sync state with a peer for a document.
    SyncState {
        /// The peer.
        peer: DeviceId,
        /// The document.
        doc: DocId,
        /// `automerge::sync::State::encode` bytes.
        state: Vec<u8>,
    },
}

impl Record {
    /// The chunk that archives what `doc` gained since `before` (all of it when `before` is
    /// empty or not all known to the document).
    pub fn chunk(meta: DocMeta, doc: &Automerge, before: &[ChangeHash]) -> Record {
        let known = before.iter().all(|h| doc.get_change_by_hash(h).is_some());
        let data = if before.is_empty() || !known {
            doc.save()
        } else {
            doc.save_after(before)
        };
        Record::Chunk {
            meta,
            data,
            heads: doc.get_heads(),
        }
    }
}

/// One chunk waiting to be written.
#[derive(Debug, Clone)]
pub(crate) struct PendingChunk {
    pub meta: DocMeta,
    pub data: Vec<u8>,
    pub heads: Vec<ChangeHash>,
}

/// A message change waiting to be written.
#[derive(Debug, Clone)]
pub(crate) enum MessageOp {
    Put(Box<ArchivedMessage>),
    Gone,
}

/// What one transaction writes. Every entry carries when it was first submitted (for lag): a
/// newer state of a key that is still waiting replaces the value and keeps that time.
#[derive(Debug, Default, Clone)]
pub(crate) struct Batch {
    pub chunks: Vec<(PendingChunk, Instant)>,
    pub workspaces: BTreeMap<String, (WorkspaceRecord, Instant)>,
    pub messages: BTreeMap<String, (MessageOp, Instant)>,
    pub states: BTreeMap<(DeviceId, DocId), (Vec<u8>, Instant)>,
}

fn put<K: Ord, V>(map: &mut BTreeMap<K, (V, Instant)>, k: K, v: V, at: Instant) {
    match map.entry(k) {
        std::collections::btree_map::Entry::Occupied(mut e) => e.get_mut().0 = v,
        std::collections::btree_map::Entry::Vacant(e) => {
            e.insert((v, at));
        }
    }
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn len(&self) -> usize {
        self.chunks.len() + self.workspaces.len() + self.messages.len() + self.states.len()
    }

    fn add(&mut self, r: Record, at: Instant) {
        match r {
            Record::Chunk { meta, data, heads } => {
                self.chunks.push((PendingChunk { meta, data, heads }, at))
            }
            Record::SyncState { peer, doc, state } => put(&mut self.states, (peer, doc), state, at),
        }
    }

    /// When every entry was submitted.
    fn submitted(&self) -> impl Iterator<Item = Instant> + '_ {
        let c = self.chunks.iter().map(|(_, t)| *t);
        let w = self.workspaces.values().map(|(_, t)| *t);
        let m = self.messages.values().map(|(_, t)| *t);
        let s = self.states.values().map(|(_, t)| *t);
        c.chain(w).chain(m).chain(s)
    }

    /// Takes what the next transaction writes: up to [`MAX_BATCH_CHUNKS`] chunks (in order)
    /// and everything else.
    fn take(&mut self) -> Batch {
        let rest = self
            .chunks
            .split_off(self.chunks.len().min(MAX_BATCH_CHUNKS));
        Batch {
            chunks: std::mem::replace(&mut self.chunks, rest),
            workspaces: std::mem::take(&mut self.workspaces),
            messages: std::mem::take(&mut self.messages),
            states: std::mem::take(&mut self.states),
        }
    }

    /// Puts a batch that failed to commit back in front of what arrived since; a newer state
    /// of the same key (already here) wins, and keeps the older submission time.
    fn restore(&mut self, mut failed: Batch) {
        failed.chunks.append(&mut self.chunks);
        self.chunks = failed.chunks;
        fn merge<K: Ord, V>(into: &mut BTreeMap<K, (V, Instant)>, from: BTreeMap<K, (V, Instant)>) {
            for (k, (v, at)) in from {
                match into.entry(k) {
                    std::collections::btree_map::Entry::Occupied(mut e) => e.get_mut().1 = at,
                    std::collections::btree_map::Entry::Vacant(e) => {
                        e.insert((v, at));
                    }
                }
            }
        }
        merge(&mut self.workspaces, failed.workspaces);
        merge(&mut self.messages, failed.messages);
        merge(&mut self.states, failed.states);
    }
}

/// How many documents the worker keeps in memory to project from.
const CACHED_DOCS: usize = 256;

/// The worker's copies of documents and workspace views, to turn chunks into projection rows.
#[derive(Debug, Default)]
struct Projector {
    docs: HashMap<DocId, Automerge>,
    /// Least recently used first.
    order: VecDeque<DocId>,
    views: HashMap<DocId, WorkspaceView>,
}

impl Projector {
    /// The document, from memory or the archive (empty if the archive has none).
    async fn doc(&mut self, backend: &Backend, id: DocId) -> Result<&mut Automerge, ArchiveError> {
        if !self.docs.contains_key(&id) {
            let doc = match backend.document(id).await? {
                Some(bytes) => Automerge::load_with_options(
                    &bytes,
                    automerge::LoadOptions::new()
                        .on_partial_load(automerge::OnPartialLoad::Ignore),
                )
                .unwrap_or_else(|e| {
                    tracing::warn!(doc = %id, "archived document does not load, starting over: {e}");
                    Automerge::new()
                }),
                None => Automerge::new(),
            };
            if self.docs.len() >= CACHED_DOCS
                && let Some(old) = self.order.pop_front()
            {
                self.docs.remove(&old);
            }
            self.docs.insert(id, doc);
        } else {
            self.order.retain(|d| *d != id);
        }
        self.order.push_back(id);
        Ok(self.docs.get_mut(&id).expect("inserted above"))
    }

    async fn view(&mut self, backend: &Backend, ws: DocId) -> Result<WorkspaceView, ArchiveError> {
        if let Some(v) = self.views.get(&ws) {
            return Ok(v.clone());
        }
        let v = workspace::view(self.doc(backend, ws).await?, ws);
        self.views.insert(ws, v.clone());
        Ok(v)
    }

    /// Applies the batch's chunks to the documents and adds the projection rows they imply.
    /// Idempotent: a retried batch applies its chunks again (no change) and keeps the rows it
    /// computed the first time.
    async fn expand(&mut self, backend: &Backend, batch: &mut Batch) -> Result<(), ArchiveError> {
        // Per document, in order: (meta, submitted, chunks).
        let mut per_doc: Vec<(DocMeta, Instant, Vec<&[u8]>)> = Vec::new();
        for (c, at) in &batch.chunks {
            match per_doc.iter_mut().find(|(m, _, _)| m.id == c.meta.id) {
                Some((_, _, v)) => v.push(&c.data),
                None => per_doc.push((c.meta.clone(), *at, vec![&c.data])),
            }
        }
        // Workspaces first: buckets are verified against their views.
        per_doc.sort_by_key(|(m, _, _)| m.kind != DocKind::Workspace);
        let mut messages = Vec::new();
        let mut heads = HashMap::new();
        for (meta, at, chunks) in per_doc {
            let doc = self.doc(backend, meta.id).await?;
            let before = doc.get_heads();
            for c in chunks {
                if let Err(e) = doc.load_incremental(c) {
                    tracing::warn!(doc = %meta.id, "a chunk does not load; archived as is: {e}");
                }
            }
            let after = doc.get_heads();
            heads.insert(meta.id, after.clone());
            match meta.kind {
                DocKind::Workspace => {
                    let v = workspace::view(doc, meta.id);
                    let devices_changed = self
                        .views
                        .get(&meta.id)
                        .is_none_or(|old| old.devices != v.devices);
                    put(
                        &mut batch.workspaces,
                        meta.id.to_string(),
                        WorkspaceRecord::from_view(meta.id, &v),
                        at,
                    );
                    self.views.insert(meta.id, v.clone());
                    if devices_changed {
                        // Verify again what the documents in memory hold of this workspace.
                        for (id, d) in &self.docs {
                            if let Some(channel) = bucket_channel(d) {
                                let m = DocMeta {
                                    id: *id,
                                    kind: DocKind::Bucket,
                                    workspace: meta.workspace,
                                    channel: Some(channel),
                                    bucket_key: None,
                                };
                                if v.channels.contains_key(&channel) {
                                    messages.extend(project(d, &m, None, &v, at));
                                }
                            }
                        }
                    }
                }
                DocKind::Bucket if after != before => {
                    let touched = bucket::touched(&doc.diff(&before, &after));
                    let v = self.view(backend, meta.workspace).await?;
                    let doc = self.doc(backend, meta.id).await?;
                    messages.extend(project(doc, &meta, Some(&touched), &v, at));
                }
                _ => {}
            }
        }
        for (id, op, at) in messages {
            put(&mut batch.messages, id, op, at);
        }
        // The heads written are those of the archive's own copy, not the ones the chunk
        // claims: a change waiting for a dependency the archive never got (a chunk lost with
        // an earlier run's queue) is not counted, so catching up sees the gap.
        for (c, _) in &mut batch.chunks {
            if let Some(h) = heads.get(&c.meta.id) {
                c.heads.clone_from(h);
            }
        }
        Ok(())
    }
}

/// The channel a bucket document belongs to, from its deterministic first change.
fn bucket_channel(doc: &Automerge) -> Option<DocId> {
    let kind = doc.get(automerge::ROOT, "kind").ok()??;
    if kind.0.as_str() != Some("bucket") {
        return None;
    }
    doc.get(automerge::ROOT, "channel")
        .ok()??
        .0
        .as_str()?
        .parse()
        .ok()
}

/// The projection rows of a bucket's messages (`touched`, or all).
fn project(
    doc: &Automerge,
    meta: &DocMeta,
    touched: Option<&BTreeSet<MessageId>>,
    ws: &WorkspaceView,
    at: Instant,
) -> Vec<(String, MessageOp, Instant)> {
    let Some(channel) = meta.channel else {
        return Vec::new();
    };
    let ids: Vec<MessageId> = match touched {
        Some(t) => t.iter().copied().collect(),
        None => bucket::message_ids(doc),
    };
    ids.into_iter()
        .map(|id| {
            let op = match bucket::message(doc, channel, id, ws) {
                Some(m) => MessageOp::Put(Box::new(ArchivedMessage::from_view(
                    meta.workspace,
                    meta.id,
                    &m,
                ))),
                None => MessageOp::Gone,
            };
            (id.to_string(), op, at)
        })
        .collect()
}

/// A page of a channel's archived messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageQuery {
    /// The workspace.
    pub workspace: DocId,
    /// The channel.
    pub channel: DocId,
    /// Only messages older than this one (by time, then id).
    pub before: Option<MessageId>,
    /// At most this many (capped at [`MAX_PAGE`]).
    pub limit: usize,
}

/// The time embedded in a message id (its first 48 bits, ms): a page cursor for a message the
/// archive does not hold.
pub(crate) fn id_time_ms(id: &MessageId) -> i64 {
    let mut b = [0u8; 8];
    b[2..].copy_from_slice(&id.0[..6]);
    i64::from_be_bytes(b)
}

/// The archive's health and progress, for `/metrics` and `/readyz`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ArchiveStatus {
    /// `postgres` or `sqlite`.
    pub backend: &'static str,
    /// Messages written since the relay started (a rewrite of the same message counts again).
    pub messages_archived: u64,
    /// Records waiting to be written (after coalescing).
    pub queue_depth: usize,
    /// Seconds since the oldest record still waiting was submitted (0 when caught up).
    pub lag_seconds: f64,
    /// Whether the last write attempt succeeded.
    pub up: bool,
    /// The last write error, while the archive is down.
    pub last_error: Option<String>,
    /// Transactions committed.
    pub batches: u64,
    /// Whether catching up on the relay's documents and sync states since this start is done
    /// (see [`Archive::catch_up`]); what it found missing is then submitted, maybe not yet
    /// written.
    pub catch_up_done: bool,
    /// Documents the archive lacked changes of at start, submitted again.
    pub catch_up_documents: u64,
    /// Sync states the archive lacked or held older at start, submitted again.
    pub catch_up_states: u64,
}

impl ArchiveStatus {
    /// Prometheus text lines for these figures.
    pub fn prometheus(&self) -> String {
        format!(
            "# HELP flyt_archive_messages_total Messages written to the archive.\n\
             # TYPE flyt_archive_messages_total counter\n\
             flyt_archive_messages_total{{backend=\"{b}\"}} {}\n\
             # HELP flyt_archive_queue_depth Records waiting to be archived.\n\
             # TYPE flyt_archive_queue_depth gauge\n\
             flyt_archive_queue_depth{{backend=\"{b}\"}} {}\n\
             # HELP flyt_archive_lag_seconds Age of the oldest record waiting to be archived.\n\
             # TYPE flyt_archive_lag_seconds gauge\n\
             flyt_archive_lag_seconds{{backend=\"{b}\"}} {:.3}\n\
             # HELP flyt_archive_up Whether the last archive write succeeded.\n\
             # TYPE flyt_archive_up gauge\n\
             flyt_archive_up{{backend=\"{b}\"}} {}\n\
             # HELP flyt_archive_catch_up_done Whether the archive caught up with the relay's store since it started.\n\
             # TYPE flyt_archive_catch_up_done gauge\n\
             flyt_archive_catch_up_done{{backend=\"{b}\"}} {}\n\
             # HELP flyt_archive_catch_up_documents_total Documents found behind in the archive at start and submitted again.\n\
             # TYPE flyt_archive_catch_up_documents_total counter\n\
             flyt_archive_catch_up_documents_total{{backend=\"{b}\"}} {}\n\
             # HELP flyt_archive_catch_up_sync_states_total Sync states found missing or older in the archive at start and submitted again.\n\
             # TYPE flyt_archive_catch_up_sync_states_total counter\n\
             flyt_archive_catch_up_sync_states_total{{backend=\"{b}\"}} {}\n",
            self.messages_archived,
            self.queue_depth,
            self.lag_seconds,
            u8::from(self.up),
            u8::from(self.catch_up_done),
            self.catch_up_documents,
            self.catch_up_states,
            b = self.backend,
        )
    }
}

/// A committed batch, for benchmarks: when it committed and when each of its records was
/// submitted.
#[derive(Debug, Clone)]
pub struct Committed {
    /// Commit time.
    pub at: Instant,
    /// Submission time of every document chunk it wrote.
    pub submitted: Vec<Instant>,
    /// Messages it wrote.
    pub messages: usize,
}

/// A storage backend: Postgres or the embedded SQLite file.
#[derive(Debug)]
pub(crate) enum Backend {
    Postgres(Box<postgres::PgArchive>),
    Sqlite(sqlite::SqliteArchive),
}

impl Backend {
    async fn open(config: &ArchiveConfig) -> Result<Backend, ArchiveError> {
        Ok(match &config.database_url {
            Some(url) => Backend::Postgres(Box::new(postgres::PgArchive::connect(url).await?)),
            None => Backend::Sqlite(sqlite::SqliteArchive::open(&config.data_dir).await?),
        })
    }

    fn name(&self) -> &'static str {
        match self {
            Backend::Postgres(_) => "postgres",
            Backend::Sqlite(_) => "sqlite",
        }
    }

    async fn write(&self, batch: &Batch) -> Result<(), ArchiveError> {
        match self {
            Backend::Postgres(p) => p.write(batch).await,
            Backend::Sqlite(s) => s.write(batch).await,
        }
    }

    async fn messages(&self, q: &PageQuery) -> Result<Vec<ArchivedMessage>, ArchiveError> {
        match self {
            Backend::Postgres(p) => p.messages(q).await,
            Backend::Sqlite(s) => s.messages(q).await,
        }
    }

    async fn search(
        &self,
        ws: DocId,
        q: &str,
        limit: usize,
    ) -> Result<Vec<ArchivedMessage>, ArchiveError> {
        match self {
            Backend::Postgres(p) => p.search(ws, q, limit).await,
            Backend::Sqlite(s) => s.search(ws, q, limit).await,
        }
    }

    async fn device_role(&self, ws: DocId, device: DeviceId) -> Result<Option<Role>, ArchiveError> {
        match self {
            Backend::Postgres(p) => p.device_role(ws, device).await,
            Backend::Sqlite(s) => s.device_role(ws, device).await,
        }
    }

    async fn document(&self, doc: DocId) -> Result<Option<Vec<u8>>, ArchiveError> {
        match self {
            Backend::Postgres(p) => p.document(doc).await,
            Backend::Sqlite(s) => s.document(doc).await,
        }
    }

    async fn sync_state(
        &self,
        peer: DeviceId,
        doc: DocId,
    ) -> Result<Option<Vec<u8>>, ArchiveError> {
        match self {
            Backend::Postgres(p) => p.sync_state(peer, doc).await,
            Backend::Sqlite(s) => s.sync_state(peer, doc).await,
        }
    }

    /// Every archived document's id and heads, parsed. A row that does not parse is left out
    /// (its document counts as not archived: catching up sends it whole).
    async fn heads(&self) -> Result<HashMap<DocId, Vec<ChangeHash>>, ArchiveError> {
        let rows = match self {
            Backend::Postgres(p) => p.heads().await?,
            Backend::Sqlite(s) => s.heads().await?,
        };
        Ok(rows
            .into_iter()
            .filter_map(|(id, heads)| Some((id.parse().ok()?, postgres::parse_heads(&heads)?)))
            .collect())
    }

    /// Every archived sync state, parsed (a row that does not parse is left out).
    async fn sync_states(&self) -> Result<HashMap<(DeviceId, DocId), Vec<u8>>, ArchiveError> {
        let rows = match self {
            Backend::Postgres(p) => p.sync_states().await?,
            Backend::Sqlite(s) => s.sync_states().await?,
        };
        Ok(rows
            .into_iter()
            .filter_map(|(peer, doc, state)| Some(((peer.parse().ok()?, doc.parse().ok()?), state)))
            .collect())
    }

    async fn ping(&self) -> Result<(), ArchiveError> {
        match self {
            Backend::Postgres(p) => p.ping().await,
            Backend::Sqlite(_) => Ok(()),
        }
    }
}

/// The first retry after a failed write waits this long; each further one twice as long, up to
/// [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

#[derive(Debug)]
struct Shared {
    status: watch::Sender<ArchiveStatus>,
    commits: tokio::sync::broadcast::Sender<Arc<Committed>>,
    /// Submission time of the oldest record not yet committed.
    oldest: Mutex<Option<Instant>>,
}

/// The archive: a handle to submit records to and to read from. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Archive {
    tx: mpsc::UnboundedSender<(Record, Instant)>,
    reader: Arc<Backend>,
    shared: Arc<Shared>,
    worker: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl Archive {
    /// Opens the archive (Postgres with a database URL, else SQLite in the data directory), runs
    /// its migrations (refusing a newer schema), and starts the writer task. Needs a tokio
    /// runtime.
    pub async fn open(config: &ArchiveConfig) -> Result<Archive, ArchiveError> {
        let writer = Backend::open(config).await?;
        let reader = Backend::open(config).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let (status, _) = watch::channel(ArchiveStatus {
            backend: writer.name(),
            up: true,
            ..Default::default()
        });
        let shared = Arc::new(Shared {
            status,
            commits: tokio::sync::broadcast::channel(4096).0,
            oldest: Mutex::new(None),
        });
        let worker = tokio::spawn(run(writer, rx, shared.clone()));
        Ok(Archive {
            tx,
            reader: Arc::new(reader),
            shared,
            worker: Arc::new(Mutex::new(Some(worker))),
        })
    }

    /// Queues records for archiving. Never blocks and never fails while the relay runs: what
    /// cannot be written yet waits in memory until the database is back.
    pub fn submit(&self, records: impl IntoIterator<Item = Record>) {
        let now = Instant::now();
        // Under the lock the worker takes to recompute the oldest waiting time, so a record is
        // never in the channel while that time says nothing waits.
        let mut oldest = self.shared.oldest.lock().expect("not poisoned");
        for r in records {
            if self.tx.send((r, now)).is_err() {
                tracing::warn!("archive worker stopped; a record was not archived");
                return;
            }
            oldest.get_or_insert(now);
        }
    }

    /// The current figures (lag computed now).
    pub fn status(&self) -> ArchiveStatus {
        let mut s = self.shared.status.borrow().clone();
        s.lag_seconds = self.lag().as_secs_f64();
        s
    }

    fn lag(&self) -> Duration {
        self.shared
            .oldest
            .lock()
            .expect("not poisoned")
            .map_or(Duration::ZERO, |t| t.elapsed())
    }

    /// A receiver of status changes (each committed or failed batch).
    pub fn watch(&self) -> watch::Receiver<ArchiveStatus> {
        self.shared.status.subscribe()
    }

    /// A receiver of committed batches (for lag measurements).
    pub fn commits(&self) -> tokio::sync::broadcast::Receiver<Arc<Committed>> {
        self.shared.commits.subscribe()
    }

    /// Waits until every record submitted so far is committed, at most `timeout`. Returns
    /// whether it caught up.
    pub async fn caught_up(&self, timeout: Duration) -> bool {
        let mut rx = self.watch();
        tokio::time::timeout(timeout, async {
            loop {
                if self.shared.oldest.lock().expect("not poisoned").is_none() {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await
        .is_ok()
            && self.shared.oldest.lock().expect("not poisoned").is_none()
    }

    /// Whether the database answers now (for `/readyz`).
    pub async fn ready(&self) -> Result<(), ArchiveError> {
        self.reader.ping().await
    }

    /// A page of a channel's messages, newest first.
    pub async fn messages(&self, q: &PageQuery) -> Result<Vec<ArchivedMessage>, ArchiveError> {
        let q = PageQuery {
            limit: q.limit.clamp(1, MAX_PAGE),
            ..q.clone()
        };
        self.reader.messages(&q).await
    }

    /// Full-text search in a workspace, newest first.
    pub async fn search(
        &self,
        ws: DocId,
        q: &str,
        limit: usize,
    ) -> Result<Vec<ArchivedMessage>, ArchiveError> {
        if q.split_whitespace().next().is_none() {
            return Err(ArchiveError::EmptyQuery);
        }
        self.reader.search(ws, q, limit.clamp(1, MAX_PAGE)).await
    }

    /// The archived role of the person a device is certified for, in a workspace.
    pub async fn device_role(
        &self,
        ws: DocId,
        device: DeviceId,
    ) -> Result<Option<Role>, ArchiveError> {
        self.reader.device_role(ws, device).await
    }

    /// A document's archived bytes (its chunks concatenated: `Automerge::load` reads them).
    pub async fn document(&self, doc: DocId) -> Result<Option<Vec<u8>>, ArchiveError> {
        self.reader.document(doc).await
    }

    /// The archived sync state of (peer, document).
    pub async fn sync_state(
        &self,
        peer: DeviceId,
        doc: DocId,
    ) -> Result<Option<Vec<u8>>, ArchiveError> {
        self.reader.sync_state(peer, doc).await
    }

    /// Catches up with what `relay` holds: every document whose heads differ from the
    /// archived ones is submitted again from the archived heads on (whole when the archive has
    /// none, or heads the relay does not know), and every sync state the archive lacks or holds
    /// differently is submitted. This is how changes queued by an earlier run that stopped
    /// before writing them (Postgres away at shutdown, a kill) reach the archive. The work is
    /// one store-thread job per document, so the relay keeps serving meanwhile; its cost is
    /// reading the archived heads and states once, the relay's documents' heads, and writing
    /// only what differs. Overlaps with live changes are harmless (writes are idempotent).
    /// Returns (documents, sync states) submitted.
    pub async fn catch_up(
        &self,
        relay: &crate::runtime::RelayHandle,
    ) -> Result<(u64, u64), ArchiveError> {
        let archived = self.reader.heads().await?;
        let archived_states = self.reader.sync_states().await?;
        let docs = relay.call(|s| s.list()).await?;
        let mut documents = 0;
        for (id, _) in docs {
            let since = archived.get(&id).cloned();
            let archive = self.clone();
            if relay
                .call(move |s| archive.catch_up_document(s, id, since))
                .await?
            {
                documents += 1;
            }
        }
        // Submitted on the store thread, like the live states (`sync_state_saved`): a state
        // the relay saves after this read is submitted after it, so the newer one wins.
        let archive = self.clone();
        let states = relay
            .call(move |s| {
                let behind: Vec<Record> = s
                    .sync_states()?
                    .into_iter()
                    .filter(|(peer, doc, state)| archived_states.get(&(*peer, *doc)) != Some(state))
                    .map(|(peer, doc, state)| Record::SyncState { peer, doc, state })
                    .collect();
                let n = behind.len() as u64;
                archive.submit(behind);
                Ok::<_, peer::StoreError>(n)
            })
            .await?
            .map_err(crate::runtime::RelayError::from)?;
        self.shared.status.send_modify(|s| {
            s.catch_up_done = true;
            s.catch_up_documents += documents;
            s.catch_up_states += states;
        });
        Ok((documents, states))
    }

    /// On the relay's store thread: submits what the relay holds of `id` beyond `archived`
    /// (the archive's heads), unless those are its heads. Whether it submitted.
    fn catch_up_document(
        &self,
        store: &mut crate::store::RelayStore,
        id: DocId,
        archived: Option<Vec<ChangeHash>>,
    ) -> bool {
        let (meta, doc) = match store.document(id) {
            Ok(Some(d)) => d,
            Ok(None) => return false,
            Err(e) => {
                tracing::warn!(doc = %id, "not catching up a document that does not load: {e}");
                return false;
            }
        };
        let mut heads = doc.get_heads();
        heads.sort();
        if let Some(mut a) = archived.clone() {
            a.sort();
            if a == heads {
                return false;
            }
        }
        let Some(meta) = archive_meta(id, &meta) else {
            return false;
        };
        self.submit([Record::chunk(meta, doc, archived.as_deref().unwrap_or(&[]))]);
        true
    }

    /// [`Archive::catch_up`] until it succeeds (the database may be away), or the relay stops.
    async fn keep_catching_up(self, relay: crate::runtime::RelayHandle) {
        let mut backoff = FIRST_BACKOFF;
        loop {
            match self.catch_up(&relay).await {
                Ok((documents, states)) => {
                    tracing::info!(
                        documents,
                        states,
                        "archive caught up with the relay's store"
                    );
                    return;
                }
                Err(ArchiveError::Relay(crate::runtime::RelayError::Stopped)) => return,
                Err(e) => {
                    tracing::warn!("archive catch-up failed, will retry: {e}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Stops accepting records and gives the worker up to `timeout` to write what is waiting.
    /// Returns whether everything was written.
    pub async fn close(&self, timeout: Duration) -> bool {
        let done = self.caught_up(timeout).await;
        let handle = self.worker.lock().expect("not poisoned").take();
        if let Some(h) = handle {
            h.abort();
        }
        if !done {
            tracing::warn!(
                waiting = self.status().queue_depth,
                "archive closed before catching up; the relay re-archives on its next start"
            );
        }
        done
    }
}

/// The relay's seam ([`crate::Archive`]): every committed document change becomes a
/// [`Record::Chunk`] and every sync state the relay saves a [`Record::SyncState`], `/readyz`
/// follows the last write, `/metrics` gets [`ArchiveStatus`], and shutdown waits (bounded)
/// for the queue to drain.
impl crate::Archive for Archive {
    fn changed(&self, change: crate::DocChange) {
        let Some(meta) = archive_meta(change.doc, &change.meta) else {
            return;
        };
        self.submit([Record::Chunk {
            meta,
            data: change.chunk,
            heads: change.heads,
        }]);
    }

    fn sync_state_saved(&self, peer: DeviceId, doc: DocId, state: Vec<u8>) {
        self.submit([Record::SyncState { peer, doc, state }]);
    }

    fn started(&self, relay: &crate::runtime::RelayHandle) {
        tokio::spawn(self.clone().keep_catching_up(relay.clone()));
    }

    fn ready(&self) -> Result<(), String> {
        let s = self.status();
        match (s.up, s.last_error) {
            (true, _) => Ok(()),
            (false, e) => Err(format!(
                "archive unreachable ({} records waiting): {}",
                s.queue_depth,
                e.unwrap_or_default()
            )),
        }
    }

    fn metrics(&self, out: &mut String) {
        out.push_str(&self.status().prometheus());
    }

    fn shutdown(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            self.close(SHUTDOWN_FLUSH).await;
        })
    }
}

/// The archive's description of a document the relay holds (`None`, logged, for a kind it
/// does not know).
fn archive_meta(id: DocId, meta: &peer::docs::DocMeta) -> Option<DocMeta> {
    let kind = match meta.kind {
        "workspace" => DocKind::Workspace,
        "channel" => DocKind::Channel,
        "bucket" => DocKind::Bucket,
        other => {
            tracing::warn!(doc = %id, "not archiving a document of kind {other:?}");
            return None;
        }
    };
    Some(DocMeta {
        id,
        kind,
        workspace: meta.workspace,
        channel: meta.channel,
        bucket_key: meta.bucket_key.clone(),
    })
}

/// What `flyt-relay` adds to the relay's runtime: the archive its configuration names (Postgres
/// with a database URL, else SQLite in the data directory) as the change seam, and the routes
/// `/api/...` (over that archive) and `/sync` (over the relay's engine). Returns the archive too.
pub async fn extensions(
    config: &crate::config::Config,
) -> Result<(Archive, crate::runtime::Extensions), ArchiveError> {
    let archive = Archive::open(&ArchiveConfig {
        database_url: config.database_url.clone(),
        data_dir: config.data_dir.clone(),
    })
    .await?;
    let api = crate::api::ApiState::new(archive.clone());
    let ext = crate::runtime::Extensions {
        archive: Some(Arc::new(archive.clone())),
        routes: Some(Box::new(move |state| {
            crate::api::router(api).merge(crate::ws::router(crate::ws::WsState::for_relay(
                &state.relay,
            )))
        })),
    };
    Ok((archive, ext))
}

/// How long shutdown waits for the archive to write what is queued.
pub const SHUTDOWN_FLUSH: Duration = Duration::from_secs(10);

/// The writer task: coalesce, write in batches, retry with backoff while the database is away.
async fn run(
    backend: Backend,
    mut rx: mpsc::UnboundedReceiver<(Record, Instant)>,
    shared: Arc<Shared>,
) {
    let mut pending = Batch::default();
    let mut projector = Projector::default();
    let mut backoff = FIRST_BACKOFF;
    let mut retry_at: Option<tokio::time::Instant> = None;
    loop {
        if pending.is_empty() {
            match rx.recv().await {
                Some((r, at)) => pending.add(r, at),
                None => return,
            }
        } else if let Some(at) = retry_at {
            // The database is away: keep taking records in (coalescing them) until the retry.
            loop {
                tokio::select! {
                    r = rx.recv() => match r {
                        Some((r, at)) => pending.add(r, at),
                        None => {
                            tokio::time::sleep_until(at).await;
                            break;
                        }
                    },
                    _ = tokio::time::sleep_until(at) => break,
                }
            }
        }
        while let Ok((r, at)) = rx.try_recv() {
            pending.add(r, at);
        }
        let mut batch = pending.take();
        let written = match projector.expand(&backend, &mut batch).await {
            Ok(()) => backend.write(&batch).await,
            Err(e) => Err(e),
        };
        match written {
            Ok(()) => {
                backoff = FIRST_BACKOFF;
                retry_at = None;
                let messages = batch.messages.len();
                {
                    let mut oldest = shared.oldest.lock().expect("not poisoned");
                    // Take in what arrived meanwhile, so the oldest waiting time stays true.
                    while let Ok((r, at)) = rx.try_recv() {
                        pending.add(r, at);
                    }
                    *oldest = pending.submitted().min();
                }
                shared.status.send_modify(|s| {
                    s.messages_archived += messages as u64;
                    s.batches += 1;
                    s.queue_depth = pending.len();
                    s.up = true;
                    s.last_error = None;
                });
                let _ = shared.commits.send(Arc::new(Committed {
                    at: Instant::now(),
                    submitted: batch.chunks.iter().map(|(_, t)| *t).collect(),
                    messages,
                }));
            }
            Err(e) => {
                tracing::warn!(
                    waiting = pending.len() + batch.len(),
                    "archive write failed, will retry: {e}"
                );
                pending.restore(batch);
                shared.status.send_modify(|s| {
                    s.queue_depth = pending.len();
                    s.up = false;
                    s.last_error = Some(e.to_string());
                });
                retry_at = Some(tokio::time::Instant::now() + backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}
