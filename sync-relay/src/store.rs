//! The relay's storage and share policy: `peer`'s document storage (Automerge documents as
//! chunks in SQLite, the same schema and the same [`DocCache`]) under a [`Host`] whose policy is
//! the relay's.
//!
//! The policy, from each workspace's verified [`WorkspaceView`]:
//! - a workspace is **served** only while its document lists this relay (a [`RelayRecord`]
//!   signed by a current owner or admin) and the configuration allows it;
//! - a device may connect only if it belongs to a current member of a served workspace;
//! - it receives, and may send changes to, only that workspace's documents, and only of
//!   channels that are not private (private channels never reach the relay: members' nodes do
//!   not offer them to it);
//! - a workspace document is never taken from a sync connection: it arrives through
//!   [`RelayStore::join`] (`POST /join`), which checks it lists this relay first. Channel and
//!   bucket documents are taken only when the workspace lists them.
//!
//! Typing and presence notes are never stored: [`RelayStore::check_ephemeral`] checks one
//! (signed by the sending device, a current member's of a served workspace, recent, typing only
//! in a public channel) and [`RelayStore::member_devices`] says where it may go.
//!
//! Every policy input is re-read when a workspace document changes, and the engine re-checks
//! every (peer, document) then ([`Event::PolicyChanged`]). The relay never authors a change:
//! it only merges what peers send (and the deterministic first change every peer starts a
//! channel or bucket document with).
//!
//! [`RelayRecord`]: crdt_model::signed::RelayRecord

use std::collections::HashMap;
use std::path::Path;

use automerge::{Automerge, LoadOptions, OnPartialLoad};
use crdt_model::workspace::{self, WorkspaceView};
use crdt_model::{DeviceId, DocId, device_actor};
use peer::docs::{self, DocCache, DocMeta};
use peer::sync::engine::{Action, CloseReason, Engine, Event, Host};
use peer::sync::protocol::{DocRef, Frame, MAX_FRAME};
use peer::{StoreError, random};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior};

use crate::DocChange;

/// Why a workspace document was not taken by [`RelayStore::join`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JoinError {
    /// Bigger than a sync frame may be.
    #[error("the workspace document is {0} bytes; at most {MAX_FRAME} are accepted")]
    TooLarge(usize),
    /// Not Automerge bytes, or not a workspace document with a valid genesis.
    #[error("not a workspace document")]
    NotAWorkspace,
    /// The workspace does not list this relay (or an owner or admin did not sign the record).
    #[error(
        "workspace {0} has not added this relay (run `flyt relay add URL` as its owner or an admin)"
    )]
    NotAdded(DocId),
    /// The relay's configuration does not serve this workspace.
    #[error("this relay does not serve workspace {0}")]
    NotServed(DocId),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why the relay refused an ephemeral note (typing, presence) instead of passing it on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NoteError {
    /// Not a signed note, or its signature does not verify.
    #[error("not a validly signed note: {0}")]
    Malformed(#[from] crdt_model::ModelError),
    /// Signed by another device than the one whose session sent it: the relay passes on only
    /// notes from their own author.
    #[error("signed by another device than the sender")]
    NotTheSender,
    /// The signer is not a current member's device of the person and served workspace it names.
    #[error("not from a current member's device of a workspace this relay serves")]
    NotAMember,
    /// Older (or further in the future) than `peer::EPHEMERAL_MAX_AGE_MS`.
    #[error("a stale note")]
    Stale,
    /// Typing in a channel that is not a listed public channel (private channels and DMs never
    /// go through the relay).
    #[error("typing in a channel that is not public")]
    NotPublic,
}

/// What one sync event produced, after its transaction committed.
#[derive(Debug, Default)]
pub struct Handled {
    /// Frames to send and connections to close, in order.
    pub out: Vec<Outgoing>,
    /// Documents that changed (for the archive and observers).
    pub changes: Vec<DocChange>,
    /// Sync states saved, in order: (peer, document, `automerge::sync::State::encode` bytes).
    /// Empty unless an archive listens ([`RelayStore::archiving`]).
    pub states: Vec<(DeviceId, DocId, Vec<u8>)>,
}

/// Something the runtime must do after an event committed.
#[derive(Debug)]
pub enum Outgoing {
    /// Send a frame to a peer.
    Send(DeviceId, Frame),
    /// Close the connection to a peer.
    Close(DeviceId, CloseReason),
}

/// The relay's documents, sync states and key, in one SQLite database.
pub struct RelayStore {
    conn: Connection,
    cache: DocCache,
    secret: [u8; 32],
    me: DeviceId,
    metas: HashMap<DocId, DocMeta>,
    views: HashMap<DocId, WorkspaceView>,
    allowed: Vec<DocId>,
    /// Whether an archive listens: [`DocChange::chunk`] and [`Handled::states`] are filled.
    archiving: bool,
}

impl std::fmt::Debug for RelayStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayStore")
            .field("me", &self.me)
            .field("documents", &self.metas.len())
            .finish_non_exhaustive()
    }
}

/// One transaction's view of the store: what the engine's [`Host`] calls see.
struct Tx<'a> {
    tx: &'a rusqlite::Transaction<'a>,
    cache: &'a mut DocCache,
    me: DeviceId,
    metas: &'a mut HashMap<DocId, DocMeta>,
    views: &'a mut HashMap<DocId, WorkspaceView>,
    allowed: &'a [DocId],
    /// Documents created or changed in this transaction (evicted if it fails).
    touched: Vec<DocId>,
}

fn kind_of(kind: &str) -> Option<&'static str> {
    ["workspace", "channel", "bucket"]
        .into_iter()
        .find(|k| *k == kind)
}

impl RelayStore {
    /// Opens (creating if needed) `relay.db` in `dir`, creating the relay's key on first start.
    /// `allowed`: workspaces to serve (empty: any that lists this relay).
    pub fn open(dir: &Path, allowed: Vec<DocId>) -> Result<RelayStore, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Corrupt(format!("data dir {}: {e}", dir.display())))?;
        let conn = peer::schema::open(&dir.join("relay.db"))?;
        let stored: Option<String> = conn
            .query_row("SELECT value FROM meta WHERE key = 'relay_key'", [], |r| {
                r.get(0)
            })
            .optional()?;
        let secret = match stored {
            Some(hex_key) => {
                let mut b = [0u8; 32];
                hex::decode_to_slice(hex_key.trim(), &mut b)
                    .map_err(|_| StoreError::Corrupt("the relay key".into()))?;
                b
            }
            None => {
                let b: [u8; 32] = random();
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('relay_key', ?1)",
                    [hex::encode(b)],
                )?;
                b
            }
        };
        let me = crdt_model::Identity::from_secrets([0; 32], secret, "relay").device_id();
        let mut store = RelayStore {
            conn,
            cache: DocCache::default(),
            secret,
            me,
            metas: HashMap::new(),
            views: HashMap::new(),
            allowed,
            archiving: false,
        };
        store.load_index()?;
        Ok(store)
    }

    fn load_index(&mut self) -> Result<(), StoreError> {
        type Row = (String, String, String, Option<String>, Option<String>);
        let rows: Vec<Row> = self
            .conn
            .prepare("SELECT id, kind, workspace, channel, bucket_key FROM docs")?
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })?
            .collect::<Result<_, _>>()?;
        for (id, kind, ws, ch, key) in rows {
            let bad = || StoreError::Corrupt(format!("document row {id}"));
            let meta = DocMeta {
                kind: kind_of(&kind).ok_or_else(bad)?,
                workspace: ws.parse().map_err(|_| bad())?,
                channel: ch.map(|c| c.parse()).transpose().map_err(|_| bad())?,
                bucket_key: key,
            };
            let id: DocId = id.parse().map_err(|_| bad())?;
            if meta.kind == "workspace" {
                let doc = self
                    .cache
                    .get(&self.conn, id, &self.me)?
                    .ok_or_else(|| StoreError::Corrupt(format!("document {id} is missing")))?;
                self.views.insert(id, workspace::view(doc, id));
            }
            self.metas.insert(id, meta);
        }
        Ok(())
    }

    /// The relay's iroh secret key (its endpoint id is [`RelayStore::device`]).
    pub fn secret(&self) -> [u8; 32] {
        self.secret
    }

    /// The relay's device (endpoint) id.
    pub fn device(&self) -> DeviceId {
        self.me
    }

    /// Whether an archive listens: from now on, fill [`DocChange::chunk`] and report every
    /// saved sync state in [`Handled::states`].
    pub fn archiving(&mut self, on: bool) {
        self.archiving = on;
    }

    /// How many documents the relay holds.
    pub fn documents(&self) -> usize {
        self.metas.len()
    }

    /// The workspaces the relay serves now.
    pub fn served(&self) -> Vec<DocId> {
        let mut v: Vec<DocId> = self
            .views
            .iter()
            .filter(|(id, v)| serves(self.me, self.allowed.as_slice(), id, v))
            .map(|(id, _)| *id)
            .collect();
        v.sort();
        v
    }

    /// Whether `device` may use the relay's `/relay` (iroh's relay protocol): it belongs to a
    /// current member of a served workspace, or `invite` is a valid, unexpired invite ticket to
    /// a served workspace, issued by a current owner's or admin's device (a joiner on its way in).
    pub fn admits(&self, device: &DeviceId, invite: Option<&str>) -> bool {
        let served = || {
            self.views
                .iter()
                .filter(|(id, v)| serves(self.me, self.allowed.as_slice(), id, v))
        };
        let member_of =
            |v: &WorkspaceView, d: &DeviceId| v.device_person(d).is_some_and(|p| v.is_member(&p));
        if served().any(|(_, v)| member_of(v, device)) {
            return true;
        }
        let Some(ticket) = invite else { return false };
        let Ok(t) = crdt_model::invite::decode(ticket, peer::now_ms()) else {
            return false;
        };
        served().any(|(id, v)| {
            *id == t.payload.workspace
                && v.device_person(&t.payload.inviter)
                    .is_some_and(|p| v.role(&p).is_some_and(|r| r >= crdt_model::Role::Admin))
        })
    }

    /// Whether `device` belongs to a current member of `ws`, a workspace the relay serves.
    pub fn is_member(&self, ws: DocId, device: &DeviceId) -> bool {
        self.views
            .get(&ws)
            .filter(|v| serves(self.me, &self.allowed, &ws, v))
            .is_some_and(|v| v.device_person(device).is_some_and(|p| v.is_member(&p)))
    }

    /// The devices of the current members of `ws` (none if the relay does not serve it): where
    /// an ephemeral note about `ws` may go.
    pub fn member_devices(&self, ws: DocId) -> Vec<DeviceId> {
        let Some(v) = self
            .views
            .get(&ws)
            .filter(|v| serves(self.me, &self.allowed, &ws, v))
        else {
            return Vec::new();
        };
        v.devices
            .iter()
            .filter(|(_, p)| v.is_member(p))
            .map(|(d, _)| *d)
            .collect()
    }

    /// Checks an ephemeral note (`Signed<Ephemeral>` bytes) that `from`'s session sent, at
    /// `now_ms`, before the relay passes it on: the signature, that `from` signed it, that it
    /// is a current member's device of the person it names in a workspace the relay serves,
    /// that it is recent, and for typing that the channel is a listed public channel of that
    /// workspace. Returns the note.
    pub fn check_ephemeral(
        &self,
        from: &DeviceId,
        signed: &[u8],
        now_ms: i64,
    ) -> Result<crdt_model::signed::Ephemeral, NoteError> {
        use crdt_model::signed::{Ephemeral, EphemeralKind, Signed};
        let s = Signed::<Ephemeral>::decode(signed)?;
        if s.device() != *from {
            return Err(NoteError::NotTheSender);
        }
        let n = s.payload;
        let v = self
            .views
            .get(&n.workspace)
            .filter(|v| serves(self.me, &self.allowed, &n.workspace, v))
            .ok_or(NoteError::NotAMember)?;
        if v.device_person(from) != Some(n.person) || !v.is_member(&n.person) {
            return Err(NoteError::NotAMember);
        }
        if !peer::note_is_recent(n.at_ms, now_ms) {
            return Err(NoteError::Stale);
        }
        if let EphemeralKind::Typing { channel } = n.kind
            && v.channels.get(&channel).is_none_or(|l| l.info.private)
        {
            return Err(NoteError::NotPublic);
        }
        Ok(n)
    }

    /// Every document held, with its kind and place.
    pub fn list(&self) -> Vec<(DocId, DocMeta)> {
        let mut v: Vec<(DocId, DocMeta)> =
            self.metas.iter().map(|(id, m)| (*id, m.clone())).collect();
        v.sort_by_key(|(id, _)| *id);
        v
    }

    /// A document's full state (`Automerge::save`), if held.
    pub fn save(&mut self, id: DocId) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.cache.get(&self.conn, id, &self.me)?.map(|d| d.save()))
    }

    /// A document held, with what it is (for an archive catching up: its heads tell whether
    /// the archive lacks anything, `save_after` gives what).
    pub fn document(&mut self, id: DocId) -> Result<Option<(DocMeta, &Automerge)>, StoreError> {
        let Some(meta) = self.metas.get(&id).cloned() else {
            return Ok(None);
        };
        Ok(self
            .cache
            .get(&self.conn, id, &self.me)?
            .map(|d| (meta, &*d)))
    }

    /// Every saved sync state: (peer, document, `automerge::sync::State::encode` bytes).
    pub fn sync_states(&self) -> Result<Vec<(DeviceId, DocId, Vec<u8>)>, StoreError> {
        let rows: Vec<(String, String, Vec<u8>)> = self
            .conn
            .prepare("SELECT peer, doc, state FROM sync_state")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<_, _>>()?;
        rows.into_iter()
            .map(|(peer, doc, state)| {
                let bad = || StoreError::Corrupt(format!("sync state row ({peer}, {doc})"));
                Ok((
                    peer.parse().map_err(|_| bad())?,
                    doc.parse().map_err(|_| bad())?,
                    state,
                ))
            })
            .collect()
    }

    /// Runs one sync event through `engine` in one transaction: received changes are persisted,
    /// sync states saved, and only after the commit are the frames returned (durable before
    /// acknowledged).
    pub fn handle(&mut self, engine: &mut Engine, event: Event) -> Result<Handled, StoreError> {
        let archiving = self.archiving;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut t = Tx {
            tx: &tx,
            cache: &mut self.cache,
            me: self.me,
            metas: &mut self.metas,
            views: &mut self.views,
            allowed: &self.allowed,
            touched: Vec::new(),
        };
        let mut handled = Handled::default();
        let mut result = Ok(());
        let mut next = Some(event);
        // A workspace change can change who may see what: re-check once. Bounded: a
        // re-check changes no document.
        for _ in 0..2 {
            let Some(e) = next.take() else { break };
            let actions = engine.handle(&mut t, e);
            match t.apply(actions, &mut handled, archiving) {
                Ok(true) => next = Some(Event::PolicyChanged),
                Ok(false) => {}
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        let touched = std::mem::take(&mut t.touched);
        match result.and_then(|()| Ok(tx.commit()?)) {
            Ok(()) => Ok(handled),
            Err(e) => {
                // The cache may be ahead of the database: reload these from disk next time.
                for id in touched {
                    self.cache.evict(&id);
                    if !self.exists(id) {
                        self.metas.remove(&id);
                        self.views.remove(&id);
                    }
                }
                Err(e)
            }
        }
    }

    fn exists(&self, id: DocId) -> bool {
        self.conn
            .query_row("SELECT 1 FROM docs WHERE id = ?1", [id.to_string()], |_| {
                Ok(())
            })
            .optional()
            .ok()
            .flatten()
            .is_some()
    }

    /// Takes a workspace document (a member's `Automerge::save`): new to the relay, it is
    /// stored if it lists this relay; one the relay holds is merged (a removal arrives so). Returns the workspace id and
    /// what changed; run [`Event::PolicyChanged`] next so connected members see it.
    pub fn join(&mut self, bytes: &[u8]) -> Result<(DocId, Option<DocChange>), JoinError> {
        if bytes.len() > MAX_FRAME {
            return Err(JoinError::TooLarge(bytes.len()));
        }
        let strict = LoadOptions::new().on_partial_load(OnPartialLoad::Error);
        let mut offered = tracing::dispatcher::with_default(&tracing::Dispatch::none(), || {
            Automerge::load_with_options(bytes, strict)
        })
        .map_err(|_| JoinError::NotAWorkspace)?;
        let ws = workspace::id_of(&offered).ok_or(JoinError::NotAWorkspace)?;
        // A workspace the relay holds is merged whatever the offered copy says: that is how a
        // removal (`flyt relay remove`) reaches it. A new one must list this relay.
        let view = workspace::view(&offered, ws);
        if !self.metas.contains_key(&ws) && !view.relays.contains_key(&self.me) {
            return Err(JoinError::NotAdded(ws));
        }
        if !self.allowed.is_empty() && !self.allowed.contains(&ws) {
            return Err(JoinError::NotServed(ws));
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(StoreError::from)?;
        let result = (|| -> Result<Option<DocChange>, StoreError> {
            let me = self.me;
            let (before, doc) = match self.cache.get(&tx, ws, &me)? {
                Some(doc) => {
                    let before = doc.get_heads();
                    doc.merge(&mut offered)
                        .map_err(|e| StoreError::Corrupt(format!("merging {ws}: {e}")))?;
                    docs::persist(&tx, &mut self.cache, ws, &before)?;
                    (before, self.cache.get(&tx, ws, &me)?.expect("just merged"))
                }
                None => {
                    let meta = DocMeta {
                        kind: "workspace",
                        workspace: ws,
                        channel: None,
                        bucket_key: None,
                    };
                    offered.set_actor(device_actor(&me));
                    docs::insert(&tx, &mut self.cache, ws, &meta, offered)?;
                    self.metas.insert(ws, meta);
                    (
                        Vec::new(),
                        self.cache.get(&tx, ws, &me)?.expect("just stored"),
                    )
                }
            };
            let change = (doc.get_heads() != before).then(|| DocChange {
                doc: ws,
                meta: self.metas[&ws].clone(),
                chunk: if self.archiving {
                    doc.save_after(&before)
                } else {
                    Vec::new()
                },
                heads: doc.get_heads(),
            });
            self.views.insert(ws, workspace::view(doc, ws));
            Ok(change)
        })();
        match result.and_then(|c| Ok((tx.commit().map_err(StoreError::from)?, c))) {
            Ok(((), change)) => Ok((ws, change)),
            Err(e) => {
                self.cache.evict(&ws);
                if !self.exists(ws) {
                    self.metas.remove(&ws);
                    self.views.remove(&ws);
                }
                Err(e.into())
            }
        }
    }

    /// Idle-time upkeep: compacts documents with many chunks and checkpoints the WAL.
    pub fn maintain(&mut self) -> Result<(), StoreError> {
        let due: Vec<DocId> = self
            .metas
            .keys()
            .copied()
            .filter(|id| docs::due(&self.cache, id))
            .collect();
        for id in due {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            if self.cache.get(&tx, id, &self.me)?.is_some() {
                docs::compact(&tx, &mut self.cache, id)?;
            }
            tx.commit()?;
        }
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }
}

/// Whether the relay serves workspace `id` according to its verified view.
fn serves(me: DeviceId, allowed: &[DocId], id: &DocId, v: &WorkspaceView) -> bool {
    v.relays.contains_key(&me) && (allowed.is_empty() || allowed.contains(id))
}

impl Tx<'_> {
    fn served(&self, ws: DocId) -> Option<&WorkspaceView> {
        self.views
            .get(&ws)
            .filter(|v| serves(self.me, self.allowed, &ws, v))
    }

    /// Whether `peer` is a device of a current member of served workspace `ws`.
    fn member(&self, ws: DocId, peer: &DeviceId) -> bool {
        self.served(ws).is_some_and(|v| {
            v.device_person(peer)
                .is_some_and(|person| v.is_member(&person))
        })
    }

    /// Whether channel `ch` of served workspace `ws` is listed and public.
    fn public_channel(&self, ws: DocId, ch: DocId) -> bool {
        self.served(ws)
            .and_then(|v| v.channels.get(&ch))
            .is_some_and(|l| !l.info.private)
    }

    fn allowed(&self, peer: &DeviceId, meta: &DocMeta) -> bool {
        self.member(meta.workspace, peer)
            && meta
                .channel
                .is_none_or(|ch| self.public_channel(meta.workspace, ch))
    }

    /// Applies the engine's actions; returns whether the share policy may have changed.
    fn apply(
        &mut self,
        actions: Vec<Action>,
        handled: &mut Handled,
        archiving: bool,
    ) -> Result<bool, StoreError> {
        let mut policy = false;
        for a in actions {
            match a {
                Action::Send(p, f) => handled.out.push(Outgoing::Send(p, f)),
                Action::Close(p, r) => handled.out.push(Outgoing::Close(p, r)),
                Action::SaveState(peer, doc, state) => {
                    docs::save_sync_state(self.tx, &peer, doc, &state)?;
                    if archiving {
                        handled.states.push((peer, doc, state));
                    }
                }
                Action::Changed { doc, before, .. } => {
                    self.touched.push(doc);
                    docs::persist(self.tx, self.cache, doc, &before)?;
                    let Some(meta) = self.metas.get(&doc).cloned() else {
                        continue;
                    };
                    let d = self
                        .cache
                        .get(self.tx, doc, &self.me)?
                        .ok_or_else(|| StoreError::Corrupt(format!("document {doc} vanished")))?;
                    if meta.kind == "workspace" {
                        self.views.insert(doc, workspace::view(d, doc));
                        policy = true;
                    }
                    // The engine passes a peer's workspace or channel change on only after
                    // this re-check (it may remove someone).
                    if meta.kind == "channel" {
                        policy = true;
                    }
                    handled.changes.push(DocChange {
                        doc,
                        chunk: if archiving {
                            d.save_after(&before)
                        } else {
                            Vec::new()
                        },
                        heads: d.get_heads(),
                        meta,
                    });
                }
            }
        }
        Ok(policy)
    }
}

impl Host for Tx<'_> {
    fn doc(&mut self, id: DocId) -> Option<&mut Automerge> {
        match self.cache.get(self.tx, id, &self.me) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(doc = %id, "not syncing a document that does not load: {e}");
                None
            }
        }
    }

    fn doc_ref(&mut self, id: DocId) -> Option<DocRef> {
        let m = self.metas.get(&id)?;
        Some(match m.kind {
            "workspace" => DocRef::Workspace { id },
            "channel" => DocRef::Channel {
                id,
                workspace: m.workspace,
            },
            _ => DocRef::Bucket {
                channel: m.channel?,
                key: m.bucket_key.clone()?,
            },
        })
    }

    fn create(&mut self, r: &DocRef) -> Option<&mut Automerge> {
        let id = r.id()?;
        let metas = &*self.metas;
        let (meta, mut doc) = docs::offered(r, |ch| Some(metas.get(&ch)?.workspace))?;
        doc.set_actor(device_actor(&self.me));
        if let Err(e) = docs::insert(self.tx, self.cache, id, &meta, doc) {
            tracing::warn!(doc = %id, "could not store an offered document: {e}");
            return None;
        }
        self.metas.insert(id, meta);
        self.touched.push(id);
        Host::doc(self, id)
    }

    fn may_connect(&mut self, peer: &DeviceId) -> bool {
        self.views.keys().any(|ws| self.member(*ws, peer))
    }

    fn may_share(&mut self, peer: &DeviceId, doc: DocId) -> bool {
        match self.metas.get(&doc) {
            Some(meta) => self.allowed(peer, meta),
            // Not held: whether to take it is `may_accept`'s call.
            None => true,
        }
    }

    fn may_accept(&mut self, peer: &DeviceId, r: &DocRef) -> bool {
        match r {
            // Workspace documents come only through `RelayStore::join`, which checks them.
            DocRef::Workspace { .. } => false,
            // DMs reach only their participants' devices (the relay carries public channels).
            DocRef::Dm { .. } => false,
            DocRef::Channel { id, workspace } => {
                self.member(*workspace, peer) && self.public_channel(*workspace, *id)
            }
            DocRef::Bucket { channel, key } => {
                key.parse::<crdt_model::channel::BucketKey>().is_ok()
                    && self.metas.get(channel).is_some_and(|m| {
                        m.kind == "channel"
                            && self.member(m.workspace, peer)
                            && self.public_channel(m.workspace, *channel)
                    })
            }
        }
    }

    fn offer(&mut self, peer: &DeviceId) -> Vec<DocRef> {
        let mut ids: Vec<(u8, std::cmp::Reverse<Option<String>>, DocId)> = self
            .metas
            .iter()
            .filter(|(_, m)| self.allowed(peer, m))
            .map(|(id, m)| {
                let rank = match m.kind {
                    "workspace" => 0,
                    "channel" => 1,
                    _ => 2,
                };
                (rank, std::cmp::Reverse(m.bucket_key.clone()), *id)
            })
            .collect();
        ids.sort();
        ids.into_iter()
            .filter_map(|(_, _, id)| self.doc_ref(id))
            .collect()
    }

    fn saved_state(&mut self, peer: &DeviceId, doc: DocId) -> Option<Vec<u8>> {
        docs::sync_state(self.tx, peer, doc)
    }
}
