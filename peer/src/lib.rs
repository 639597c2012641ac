//! The Flyt node a person runs: SQLite storage for the Automerge documents, the projection every
//! screen and search reads, and (next: issue 3) sync over iroh. Embedded by `cli` and `app`.
//!
//! [`Store`] is the whole local state: open it on a database file, then every chat action is
//! one SQLite transaction that appends the Automerge change *and* updates the projection from
//! that change's patches, so what is on screen is never ahead of or behind what is on disk, and
//! a message is acknowledged only once the transaction commits.
#![deny(missing_docs)]

pub mod api;
pub mod docs;
pub mod home;
pub mod net;
pub mod node;
mod project;
mod query;
pub mod relay_client;
mod replica;
pub mod schema;
pub mod sync;

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use automerge::Automerge;
use crdt_model::bucket::{self, NewPost};
use crdt_model::channel::{self, BucketKey};
use crdt_model::signed::ChannelInfo;
use crdt_model::workspace::{self, WorkspaceView};
use crdt_model::{DocId, Identity, MessageId, ModelError, device_actor};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

pub use docs::DocMeta;
pub use query::{Author, ChannelRow, DeviceRow, MemberRow, MessageRow, WorkspaceRow};
pub use replica::{
    EPHEMERAL_MAX_AGE_MS, Linked, Note, Outgoing, PeerStatus, Status, note_is_recent,
};

use docs::DocCache;

/// Errors from the store. Each names what the user got wrong or what broke.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// SQLite failed.
    #[error("database error")]
    Sqlite(#[from] rusqlite::Error),
    /// The model refused the operation (bad text, not allowed, ...).
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The database was written by a newer Flyt.
    #[error(
        "database schema version {found} is newer than this build knows ({known}); upgrade Flyt"
    )]
    NewerSchema {
        /// Version in the file.
        found: i64,
        /// Version this build knows.
        known: i64,
    },
    /// A stored document does not load.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// `init` has not been run.
    #[error("no identity yet: run `flyt init --name NAME` first")]
    NoIdentity,
    /// `init` was already run.
    #[error("this home already has an identity ({0})")]
    AlreadyInitialized(String),
    /// No current workspace.
    #[error(
        "no workspace selected: create one with `flyt workspace create NAME` or pick one with `flyt workspace use NAME`"
    )]
    NoWorkspace,
    /// No workspace by that name or id.
    #[error("no workspace named {0:?}")]
    UnknownWorkspace(String),
    /// No channel by that name or id.
    #[error("no channel named {0:?} in this workspace")]
    UnknownChannel(String),
    /// Several channels share the name.
    #[error("{0:?} names several channels; use one of these ids: {1}")]
    Ambiguous(String, String),
    /// A channel with that name exists.
    #[error("a channel named #{0} already exists")]
    ChannelExists(String),
    /// No member by that name.
    #[error("no member named {0:?} in this workspace")]
    UnknownMember(String),
    /// No relay with that URL or id in this workspace.
    #[error("no relay {0:?} in this workspace (see `flyt relay list`)")]
    UnknownRelay(String),
    /// No message with that id.
    #[error("no message with id {0:?}")]
    UnknownMessage(String),
}

/// How many documents one [`Store::maintain`] call compacts at most.
const MAINTAIN_SLICE: usize = 1;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Cryptographically random bytes from the OS.
pub fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).expect("the OS random source works");
    b
}

/// The local state of one Flyt home.
pub struct Store {
    conn: Connection,
    identity: Option<Identity>,
    cache: DocCache,
    views: HashMap<DocId, (Vec<automerge::ChangeHash>, WorkspaceView)>,
    /// Documents written since the last [`Store::maintain`].
    dirty: BTreeSet<DocId>,
    /// Documents written locally since the last [`Store::take_local_changes`].
    local: BTreeSet<DocId>,
    /// (data_version, max chunk seq) at the last [`Store::external_changes`].
    external: Option<(i64, i64)>,
    /// Messages (re)projected since live views last looked (`api`); `None` until one watches.
    watch: Option<api::Touched>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

/// What a write produced besides its result: the documents it changed (the node's sync engine
/// announces these to peers).
type Changed = Vec<DocId>;

impl Store {
    /// Opens (creating if needed) the database at `path`: WAL mode, full fsync on commit, a busy
    /// timeout so several processes can share it, and migrations.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let conn = schema::open(path)?;
        let identity = load_identity(&conn)?;
        Ok(Store {
            conn,
            identity,
            cache: DocCache::default(),
            views: HashMap::new(),
            dirty: BTreeSet::new(),
            local: BTreeSet::new(),
            external: None,
            watch: None,
        })
    }

    /// This node's identity, if `init` was run.
    pub fn identity(&self) -> Result<&Identity, StoreError> {
        self.identity.as_ref().ok_or(StoreError::NoIdentity)
    }

    /// Creates this home's identity: a new person key and device key.
    pub fn init(&mut self, name: &str) -> Result<&Identity, StoreError> {
        self.init_with(random(), random(), name)
    }

    /// Creates this home's identity as another device of an existing person (device linking):
    /// the person's key, a device key already certified for it, and the person's name.
    pub fn init_linked(
        &mut self,
        person: [u8; 32],
        device: [u8; 32],
        name: &str,
    ) -> Result<&Identity, StoreError> {
        self.init_with(person, device, name)
    }

    fn init_with(
        &mut self,
        person: [u8; 32],
        device: [u8; 32],
        name: &str,
    ) -> Result<&Identity, StoreError> {
        crdt_model::validate_name(name, false)?;
        if let Some(me) = &self.identity {
            return Err(StoreError::AlreadyInitialized(me.name.clone()));
        }
        let me = Identity::from_secrets(person, device, name);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        if load_identity(&tx)?.is_some() {
            return Err(StoreError::AlreadyInitialized(name.to_owned()));
        }
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('identity', ?1)",
            [identity_record(&me)],
        )?;
        tx.commit()?;
        self.identity = Some(me);
        self.identity()
    }

    /// The current workspace, if one is selected.
    pub fn current_workspace(&self) -> Result<Option<DocId>, StoreError> {
        Ok(self.meta("workspace")?.and_then(|s| s.parse().ok()))
    }

    /// A value of this home's settings (`meta`), if set.
    pub(crate) fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
            .query_row([key], |r| r.get(0))
            .optional()?)
    }

    /// Sets a value of this home's settings (`meta`).
    pub(crate) fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )?
            .execute([key, value])?;
        Ok(())
    }

    fn require_workspace(&self) -> Result<DocId, StoreError> {
        self.current_workspace()?.ok_or(StoreError::NoWorkspace)
    }

    /// Makes `ws` the current workspace.
    pub fn use_workspace(&mut self, ws: DocId) -> Result<(), StoreError> {
        self.set_meta("workspace", &ws.to_string())
    }

    /// Runs `f` as one write transaction. On any error the transaction rolls back and every
    /// cached document it touched is dropped (the cache may be ahead of the database).
    fn write<R>(
        &mut self,
        f: impl FnOnce(&mut Writer<'_>) -> Result<R, StoreError>,
    ) -> Result<(R, Changed), StoreError> {
        let me = self.identity.clone().ok_or(StoreError::NoIdentity)?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut w = Writer {
            tx: &tx,
            cache: &mut self.cache,
            views: &mut self.views,
            me: &me,
            changed: Vec::new(),
            projected: Vec::new(),
        };
        let result = f(&mut w);
        let changed = std::mem::take(&mut w.changed);
        let projected = std::mem::take(&mut w.projected);
        let outcome = result.and_then(|r| {
            tx.commit()?;
            Ok(r)
        });
        match outcome {
            Ok(r) => {
                self.dirty.extend(changed.iter().copied());
                self.local.extend(changed.iter().copied());
                if let Some(watch) = &mut self.watch {
                    watch.add(projected);
                }
                Ok((r, changed))
            }
            Err(e) => {
                for id in &changed {
                    self.cache.evict(id);
                    self.views.remove(id);
                }
                Err(e)
            }
        }
    }

    /// Runs `f` in a read transaction that is never committed: a policy check that writes
    /// nothing and takes no write lock.
    fn peek<R>(
        &mut self,
        f: impl FnOnce(&mut Writer<'_>) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let me = self.identity.clone().ok_or(StoreError::NoIdentity)?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Deferred)?;
        let mut w = Writer {
            tx: &tx,
            cache: &mut self.cache,
            views: &mut self.views,
            me: &me,
            changed: Vec::new(),
            projected: Vec::new(),
        };
        f(&mut w)
    }

    /// A workspace document's full state (`Automerge::save`), e.g. to hand it to a relay.
    pub fn workspace_save(&mut self, ws: DocId) -> Result<Vec<u8>, StoreError> {
        let device = self.identity()?.device_id();
        let doc = self
            .cache
            .get(&self.conn, ws, &device)?
            .ok_or_else(|| StoreError::UnknownWorkspace(ws.to_string()))?;
        Ok(doc.save())
    }

    /// Creates a workspace owned by this identity and makes it current.
    pub fn create_workspace(&mut self, name: &str) -> Result<DocId, StoreError> {
        let (ws, _) = self.write(|w| {
            let mut doc = Automerge::new().with_actor(device_actor(&w.me.device_id()));
            let ws = workspace::create(&mut doc, w.me, name, random(), now_ms())?;
            let meta = DocMeta {
                kind: "workspace",
                workspace: ws,
                channel: None,
                bucket_key: None,
            };
            docs::insert(w.tx, w.cache, ws, &meta, doc)?;
            w.changed.push(ws);
            w.project_workspace(ws)?;
            Ok(ws)
        })?;
        self.use_workspace(ws)?;
        Ok(ws)
    }

    /// Creates a channel in the current workspace. A private one holds only me; add members
    /// with [`Store::create_private_channel`] or [`Store::channel_add`].
    pub fn create_channel(
        &mut self,
        name: &str,
        topic: &str,
        private: bool,
    ) -> Result<DocId, StoreError> {
        if private {
            return self.create_private_channel(name, topic, &[]);
        }
        self.new_channel(name, topic, None)
    }

    /// Creates a private channel in the current workspace with me and `members` (display
    /// names or person keys of workspace members) in it.
    pub fn create_private_channel(
        &mut self,
        name: &str,
        topic: &str,
        members: &[String],
    ) -> Result<DocId, StoreError> {
        let ws = self.require_workspace()?;
        let people = members
            .iter()
            .map(|m| self.resolve_member(ws, m))
            .collect::<Result<Vec<_>, _>>()?;
        self.new_channel(name, topic, Some(people))
    }

    fn new_channel(
        &mut self,
        name: &str,
        topic: &str,
        private_members: Option<Vec<crdt_model::PersonId>>,
    ) -> Result<DocId, StoreError> {
        let name = name.strip_prefix('#').unwrap_or(name);
        crdt_model::validate_name(name, true)?;
        let ws = self.require_workspace()?;
        if !self.find_channels(ws, name)?.is_empty() {
            return Err(StoreError::ChannelExists(name.to_owned()));
        }
        let (id, _) = self.write(|w| {
            let nonce: [u8; 16] = random();
            let channel = match private_members {
                Some(_) => channel::private_id(ws, &w.me.person_id(), &nonce),
                None => DocId(random()),
            };
            let mut doc = channel::init(ws, channel)?;
            doc.set_actor(device_actor(&w.me.device_id()));
            let at = now_ms();
            if let Some(members) = &private_members {
                channel::make_private(&mut doc, w.me, channel, nonce, members, at)?;
            }
            let meta = DocMeta {
                kind: "channel",
                workspace: ws,
                channel: Some(channel),
                bucket_key: None,
            };
            docs::insert(w.tx, w.cache, channel, &meta, doc)?;
            w.changed.push(channel);
            let info = ChannelInfo {
                workspace: ws,
                channel,
                name: name.to_owned(),
                topic: topic.to_owned(),
                private: private_members.is_some(),
                at_ms: at,
            };
            let me = w.me;
            w.change(ws, |doc| workspace::put_channel(doc, me, info))?;
            w.project_workspace(ws)?;
            w.project_channel(ws, channel)?;
            Ok(channel)
        })?;
        Ok(id)
    }

    /// Adds members (display names or person keys) to a private channel I am in.
    pub fn channel_add(&mut self, channel: DocId, who: &[String]) -> Result<(), StoreError> {
        self.channel_membership(channel, who, true)
    }

    /// Removes a member from a private channel I am in: their devices get nothing new of it.
    pub fn channel_kick(&mut self, channel: DocId, who: &str) -> Result<(), StoreError> {
        self.channel_membership(channel, &[who.to_owned()], false)
    }

    fn channel_membership(
        &mut self,
        channel: DocId,
        who: &[String],
        member: bool,
    ) -> Result<(), StoreError> {
        let ws = self.channel_workspace(channel)?;
        self.require_channel_member(channel)?;
        let people = who
            .iter()
            .map(|m| self.resolve_member(ws, m))
            .collect::<Result<Vec<_>, _>>()?;
        self.write(|w| {
            let me = w.me;
            let view = w.view(ws)?;
            let at = now_ms();
            for p in people {
                w.change(channel, |doc| {
                    channel::set_member(doc, me, &view, channel, p, member, at)
                })?;
            }
            w.project_channel(ws, channel)
        })?;
        Ok(())
    }

    /// The DM (or group DM) between me and `who` (display names or person keys) in the
    /// current workspace, created if this device has none yet. Its id depends only on the
    /// workspace and the participants, so every participant opens the same DM, even offline.
    pub fn open_dm(&mut self, who: &[String]) -> Result<DocId, StoreError> {
        let ws = self.require_workspace()?;
        let mut people = vec![self.identity()?.person_id()];
        for m in who {
            people.push(self.resolve_member(ws, m)?);
        }
        let people = channel::dm_participants(&people);
        let id = channel::dm_id(ws, &people);
        self.write(|w| {
            if docs::exists(w.tx, id)? {
                return Ok(());
            }
            let mut doc = channel::init_dm(ws, &people)?;
            doc.set_actor(device_actor(&w.me.device_id()));
            let meta = DocMeta {
                kind: "channel",
                workspace: ws,
                channel: Some(id),
                bucket_key: None,
            };
            docs::insert(w.tx, w.cache, id, &meta, doc)?;
            w.changed.push(id);
            w.project_channel(ws, id)
        })?;
        Ok(id)
    }

    /// Refuses to act in a private channel or DM I am not (or no longer) in.
    fn require_channel_member(&self, channel: DocId) -> Result<(), StoreError> {
        let me = self.identity()?.person_id().to_string();
        let (private, member, held): (bool, bool, bool) = self.conn.query_row(
            "SELECT c.private,
                    EXISTS (SELECT 1 FROM channel_members WHERE channel = c.id AND person = ?2),
                    EXISTS (SELECT 1 FROM docs WHERE id = c.id)
             FROM channels c WHERE c.id = ?1",
            params![channel.to_string(), me],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        if !held || (private && !member) {
            return Err(
                ModelError::NotAllowed("you are not a member of this private channel").into(),
            );
        }
        Ok(())
    }

    /// A current member of `ws` by display name (case-insensitive) or person key.
    fn resolve_member(&self, ws: DocId, who: &str) -> Result<crdt_model::PersonId, StoreError> {
        let who = who.strip_prefix('@').unwrap_or(who);
        let found: Vec<String> = self
            .conn
            .prepare_cached(
                "SELECT person FROM members WHERE workspace = ?1
                   AND (person = ?2 OR name = ?2 COLLATE NOCASE) AND role != 'removed'",
            )?
            .query_map(params![ws.to_string(), who], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        match found.as_slice() {
            [one] => Ok(one.parse()?),
            [] => Err(StoreError::UnknownMember(who.to_owned())),
            many => Err(StoreError::Ambiguous(who.to_owned(), many.join(", "))),
        }
    }

    /// Posts a message to a channel and returns it as the screen will show it.
    pub fn post(
        &mut self,
        channel: DocId,
        text: &str,
        reply_to: Option<MessageId>,
        thread: Option<MessageId>,
    ) -> Result<MessageRow, StoreError> {
        crdt_model::validate_text(text)?;
        let ws = self.channel_workspace(channel)?;
        self.require_channel_member(channel)?;
        // A reply in a thread always hangs off the thread's root, like Slack.
        let thread_root = match thread {
            Some(t) => Some(self.thread_root_of(channel, t)?),
            None => None,
        };
        if let Some(r) = reply_to {
            self.message_location(r)?;
        }
        let mentions = self.resolve_mentions(ws, text)?;
        let ts = now_ms();
        let id = MessageId::new(ts, random());
        let key = self.bucket_for(channel, ts)?;
        self.write(|w| {
            let bucket_id = w.ensure_bucket(ws, channel, key)?;
            let me = w.me;
            let post = NewPost {
                channel,
                id,
                ts_ms: ts,
                text: text.to_owned(),
                mentions,
                reply_to,
                thread_root,
            };
            w.change_bucket(ws, channel, bucket_id, |doc| {
                bucket::post(doc, me, post).map(|id| vec![id])
            })
        })?;
        self.message(&id.to_string())
    }

    /// Edits one of my messages.
    pub fn edit(&mut self, id: &str, text: &str) -> Result<MessageRow, StoreError> {
        crdt_model::validate_text(text)?;
        let (id, channel, ws, bucket_id) = self.message_location_str(id)?;
        let mentions = self.resolve_mentions(ws, text)?;
        self.write(|w| {
            let me = w.me;
            let text = text.to_owned();
            w.change_bucket(ws, channel, bucket_id, |doc| {
                bucket::edit(doc, me, id, text, mentions, now_ms()).map(|id| vec![id])
            })
        })?;
        self.message(&id.to_string())
    }

    /// Deletes a message for everyone (mine, or anyone's if I am an admin).
    pub fn delete(&mut self, id: &str) -> Result<MessageRow, StoreError> {
        let (id, channel, ws, bucket_id) = self.message_location_str(id)?;
        self.write(|w| {
            let me = w.me;
            let view = w.view(ws)?;
            w.change_bucket(ws, channel, bucket_id, |doc| {
                bucket::delete(doc, me, &view, id, now_ms()).map(|id| vec![id])
            })
        })?;
        self.message(&id.to_string())
    }

    /// Adds or removes my reaction.
    pub fn react(&mut self, id: &str, emoji: &str, on: bool) -> Result<MessageRow, StoreError> {
        let (id, channel, ws, bucket_id) = self.message_location_str(id)?;
        self.write(|w| {
            let me = w.me;
            w.change_bucket(ws, channel, bucket_id, |doc| {
                bucket::react(doc, me, id, emoji, on, now_ms()).map(|id| vec![id])
            })
        })?;
        self.message(&id.to_string())
    }

    /// Posts many messages at once (importers, benchmarks): one Automerge change per message,
    /// one stored chunk per bucket, and one SQLite transaction for all. `ts_ms` of each item decides its bucket.
    pub fn post_batch(
        &mut self,
        channel: DocId,
        items: &[(i64, String)],
    ) -> Result<Vec<MessageId>, StoreError> {
        let ws = self.channel_workspace(channel)?;
        let mut by_bucket: Vec<(BucketKey, Vec<NewPost>)> = Vec::new();
        let mut ids = Vec::with_capacity(items.len());
        let mut counts: HashMap<i64, (u32, usize)> = HashMap::new();
        for (ts, text) in items {
            crdt_model::validate_text(text)?;
            let day = BucketKey::day_of(*ts).day;
            let slot = match counts.get_mut(&day) {
                Some(s) => s,
                None => {
                    let k = self.bucket_for(channel, *ts)?;
                    let n = self.bucket_len(bucket::bucket_id(channel, k))?;
                    counts.entry(day).or_insert((k.part, n))
                }
            };
            if slot.1 >= bucket::SOFT_LIMIT {
                *slot = (slot.0 + 1, 0);
            }
            slot.1 += 1;
            let key = BucketKey { day, part: slot.0 };
            let id = MessageId::new(*ts, random());
            ids.push(id);
            let post = NewPost {
                channel,
                id,
                ts_ms: *ts,
                text: text.clone(),
                mentions: Vec::new(),
                reply_to: None,
                thread_root: None,
            };
            match by_bucket.last_mut() {
                Some((k, v)) if *k == key => v.push(post),
                _ => by_bucket.push((key, vec![post])),
            }
        }
        self.write(|w| {
            for (key, posts) in by_bucket {
                let bucket_id = w.ensure_bucket(ws, channel, key)?;
                let me = w.me;
                w.change_bucket(ws, channel, bucket_id, |doc| {
                    posts
                        .into_iter()
                        .map(|p| bucket::post(doc, me, p))
                        .collect()
                })?;
            }
            Ok(())
        })?;
        // A bulk import has no idle time to wait for: compact everything it made due now.
        while self.maintain()? > 0 {}
        Ok(ids)
    }

    /// Idle-time upkeep: compacts the documents written since the last call that are due
    /// (many small chunks, or chunks outweighing the snapshot). Kept off the send path so a
    /// send never pays for a full save; a node calls this when idle, the CLI after its output.
    /// Returns how many documents it compacted.
    pub fn maintain(&mut self) -> Result<usize, StoreError> {
        if self.dirty.is_empty() {
            return Ok(0);
        }
        // A slice at a time: a node calls this between events, so one call must stay short
        // (after a big sync every bucket is due, and compacting a 1,000-message bucket takes
        // ~10 ms). What is left stays dirty for the next call.
        let dirty = std::mem::take(&mut self.dirty);
        let mut due: Vec<DocId> = dirty
            .into_iter()
            .filter(|id| docs::due(&self.cache, id))
            .collect();
        if due.len() > MAINTAIN_SLICE {
            self.dirty.extend(due.split_off(MAINTAIN_SLICE));
        }
        if self.dirty.is_empty() {
            // The last slice: copy the WAL into the database file too. PASSIVE: it takes what
            // it can without waiting for readers or writers.
            self.conn
                .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
        }
        if due.is_empty() {
            return Ok(0);
        }
        let me = self.identity()?.device_id();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let cache = &mut self.cache;
        let compacted = due.iter().try_fold(0, |n, id| {
            // Refresh first: another process may have appended or compacted meanwhile.
            if cache.get(&tx, *id, &me)?.is_some() && docs::due(cache, id) {
                docs::compact(&tx, cache, *id)?;
                return Ok::<_, StoreError>(n + 1);
            }
            Ok(n)
        });
        let outcome = compacted.and_then(|n| {
            tx.commit()?;
            Ok(n)
        });
        if outcome.is_err() {
            for id in &due {
                self.cache.evict(id);
            }
        }
        outcome
    }

    /// Throws the projection away and rebuilds it from the documents.
    pub fn rebuild_projection(&mut self) -> Result<(), StoreError> {
        self.views.clear();
        self.write(|w| {
            w.tx.execute_batch(
                "DELETE FROM workspaces; DELETE FROM members; DELETE FROM devices;
                 DELETE FROM channels; DELETE FROM channel_members; DELETE FROM messages;
                 DELETE FROM reactions;
                 INSERT INTO messages_fts (messages_fts) VALUES ('rebuild');",
            )?;
            let docs: Vec<(String, String, String, Option<String>)> =
                w.tx.prepare("SELECT id, kind, workspace, channel FROM docs ORDER BY kind DESC")?
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                    .collect::<Result<_, _>>()?;
            for (id, kind, ws, channel) in docs {
                let id: DocId = id.parse()?;
                let ws: DocId = ws.parse()?;
                match kind.as_str() {
                    "workspace" => w.project_workspace(id)?,
                    "channel" => w.project_channel(ws, id)?,
                    "bucket" => {
                        let channel: DocId = channel
                            .ok_or_else(|| {
                                StoreError::Corrupt(format!("bucket {id} has no channel"))
                            })?
                            .parse()?;
                        w.project_bucket(ws, channel, id, None)?;
                    }
                    _ => {}
                }
            }
            Ok(())
        })?;
        Ok(())
    }

    /// The saved size in bytes of a document (compacted), for benchmarks and diagnostics.
    pub fn doc_size(&mut self, id: DocId) -> Result<Option<usize>, StoreError> {
        let me = self.identity()?.device_id();
        Ok(self.cache.get(&self.conn, id, &me)?.map(|d| d.save().len()))
    }

    /// The bucket documents of a channel, oldest first.
    pub fn buckets(&self, channel: DocId) -> Result<Vec<(String, DocId)>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT bucket_key, id FROM docs WHERE channel = ?1 AND kind = 'bucket' ORDER BY bucket_key",
        )?;
        let rows = stmt
            .query_map([channel.to_string()], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter()
            .map(|(k, id)| Ok((k, id.parse()?)))
            .collect()
    }

    /// The bucket a new message at `ts` goes to: the day's newest part, or the next part once
    /// that one is full.
    fn bucket_for(&self, channel: DocId, ts: i64) -> Result<BucketKey, StoreError> {
        let day = BucketKey::day_of(ts);
        let prefix = format!("{}", day).trim_end_matches(".0").to_owned();
        let parts: Vec<String> = self
            .conn
            .prepare_cached(
                "SELECT bucket_key FROM docs WHERE channel = ?1 AND kind = 'bucket' AND bucket_key LIKE ?2",
            )?
            .query_map(params![channel.to_string(), format!("{prefix}.%")], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let Some(last) = parts
            .iter()
            .filter_map(|k| k.parse::<BucketKey>().ok())
            .max()
        else {
            return Ok(day);
        };
        if self.bucket_len(bucket::bucket_id(channel, last))? >= bucket::SOFT_LIMIT {
            Ok(BucketKey {
                part: last.part + 1,
                ..last
            })
        } else {
            Ok(last)
        }
    }

    fn bucket_len(&self, bucket_id: DocId) -> Result<usize, StoreError> {
        let n: i64 = self
            .conn
            .prepare_cached("SELECT count(*) FROM messages WHERE bucket = ?1")?
            .query_row([bucket_id.to_string()], |r| r.get(0))?;
        Ok(n as usize)
    }

    fn resolve_mentions(
        &self,
        ws: DocId,
        text: &str,
    ) -> Result<Vec<crdt_model::PersonId>, StoreError> {
        let mut out = Vec::new();
        for name in crdt_model::mentions::parse(text) {
            let found: Vec<String> = self
                .conn
                .prepare_cached(
                    "SELECT person FROM members WHERE workspace = ?1 AND name = ?2 COLLATE NOCASE AND role != 'removed'",
                )?
                .query_map(params![ws.to_string(), name], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            for p in found {
                out.push(p.parse()?);
            }
        }
        Ok(out)
    }
}

/// How an identity is kept in `meta` (read back by [`load_identity`]).
fn identity_record(me: &Identity) -> String {
    serde_json::json!({
        "person": hex::encode(me.person.to_bytes()),
        "device": hex::encode(me.device.to_bytes()),
        "name": me.name,
    })
    .to_string()
}

fn load_identity(conn: &Connection) -> Result<Option<Identity>, StoreError> {
    let v: Option<String> = conn
        .query_row("SELECT value FROM meta WHERE key = 'identity'", [], |r| {
            r.get(0)
        })
        .optional()?;
    let Some(v) = v else { return Ok(None) };
    let bad = || StoreError::Corrupt("identity record".into());
    let j: serde_json::Value = serde_json::from_str(&v).map_err(|_| bad())?;
    let key = |k: &str| -> Result<[u8; 32], StoreError> {
        let mut b = [0u8; 32];
        hex::decode_to_slice(j[k].as_str().ok_or_else(bad)?, &mut b).map_err(|_| bad())?;
        Ok(b)
    };
    let name = j["name"].as_str().ok_or_else(bad)?;
    Ok(Some(Identity::from_secrets(
        key("person")?,
        key("device")?,
        name,
    )))
}

/// One write transaction's view of the store.
pub(crate) struct Writer<'a> {
    tx: &'a rusqlite::Transaction<'a>,
    cache: &'a mut DocCache,
    views: &'a mut HashMap<DocId, (Vec<automerge::ChangeHash>, WorkspaceView)>,
    me: &'a Identity,
    changed: Changed,
    /// (channel, message) of every message this transaction projected.
    projected: Vec<(DocId, MessageId)>,
}

impl Writer<'_> {
    fn doc(&mut self, id: DocId) -> Result<&mut Automerge, StoreError> {
        let me = self.me.device_id();
        self.cache
            .get(self.tx, id, &me)?
            .ok_or_else(|| StoreError::Corrupt(format!("document {id} is missing")))
    }

    /// Applies `f` to document `id` and records the change as a new chunk.
    fn change<R>(
        &mut self,
        id: DocId,
        f: impl FnOnce(&mut Automerge) -> Result<R, ModelError>,
    ) -> Result<R, StoreError> {
        let doc = self.doc(id)?;
        let before = doc.get_heads();
        let r = match f(doc) {
            Ok(r) => r,
            // A refused operation that left the document as it was must not get it evicted: the
            // cached copy may hold changes a peer sent ahead of their dependencies, which exist
            // nowhere else (that peer will not send them again).
            Err(e) if doc.get_heads() == before => return Err(e.into()),
            Err(e) => {
                self.changed.push(id);
                return Err(e.into());
            }
        };
        // Nothing new (a bucket already listed, no text to purge): nothing to store, project
        // or tell peers. A channel or workspace document marked changed costs every peer a
        // policy re-check over every document.
        if doc.get_heads() == before {
            return Ok(r);
        }
        self.changed.push(id);
        docs::persist(self.tx, self.cache, id, &before)?;
        Ok(r)
    }

    /// Applies a bucket operation and re-projects the messages it touched.
    fn change_bucket(
        &mut self,
        ws: DocId,
        channel: DocId,
        bucket_id: DocId,
        f: impl FnOnce(&mut Automerge) -> Result<Vec<MessageId>, ModelError>,
    ) -> Result<(), StoreError> {
        let mut touched: BTreeSet<MessageId> = self.change(bucket_id, f)?.into_iter().collect();
        // A deletion that met a concurrent edit: take the text out of the document too.
        let view = self.view(ws)?;
        let at = now_ms();
        let purged = self.change(bucket_id, |doc| {
            bucket::purge_deleted_text(doc, channel, &touched, &view, at)
        })?;
        touched.extend(purged);
        self.project_bucket(ws, channel, bucket_id, Some(touched))
    }

    /// The bucket document for `key`, created (deterministically) if this node lacks it, and
    /// listed in the channel document.
    fn ensure_bucket(
        &mut self,
        ws: DocId,
        channel: DocId,
        key: BucketKey,
    ) -> Result<DocId, StoreError> {
        let id = bucket::bucket_id(channel, key);
        if !docs::exists(self.tx, id)? {
            let mut doc = bucket::init(channel, key)?;
            doc.set_actor(device_actor(&self.me.device_id()));
            let meta = DocMeta {
                kind: "bucket",
                workspace: ws,
                channel: Some(channel),
                bucket_key: Some(key.to_string()),
            };
            docs::insert(self.tx, self.cache, id, &meta, doc)?;
            self.changed.push(id);
        }
        let at = now_ms();
        self.change(channel, |doc| channel::add_bucket(doc, key, at))?;
        Ok(id)
    }

    /// The verified view of workspace `ws`, recomputed only when the document's heads moved
    /// (here or in another process).
    fn view(&mut self, ws: DocId) -> Result<WorkspaceView, StoreError> {
        let heads = self.doc(ws)?.get_heads();
        if let Some((h, v)) = self.views.get(&ws)
            && *h == heads
        {
            return Ok(v.clone());
        }
        let v = workspace::view(self.doc(ws)?, ws);
        self.views.insert(ws, (heads, v.clone()));
        Ok(v)
    }
}
