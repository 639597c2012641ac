//! The sans-IO sync engine: automerge's per-document sync protocol for every (peer, document)
//! pair, multiplexed over one connection per peer.
//!
//! Requirements it meets (BRIEF.md, Sync):
//! - **Only what the peer may see**: every document is checked against [`Host::may_share`] when
//!   it is offered, requested or changed, and again on [`Event::PolicyChanged`]; a peer that
//!   may not connect is closed before it learns anything; a document id the engine may not
//!   hold never gets state allocated. A workspace or channel change from a peer is passed on only after
//!   the host applied it, so a member it removes does not get it through us either.
//! - **Newest first**: [`Host::offer`] lists documents in sync order (workspace and channel
//!   documents, then buckets newest first), and the engine opens them in that order.
//! - **Durable before acknowledged**: a received change is returned as [`Action::Changed`]
//!   *before* any [`Action::Send`] that could reveal to a peer that we hold it; the runtime
//!   persists in order.
//! - **Sync state persisted per (peer, document)**: [`Action::SaveState`] on disconnect,
//!   [`Host::saved_state`] on the next connection.
//! - **Work proportional to what changed**: a local change touches only its documents and the
//!   peers that share them.

use std::collections::{BTreeMap, HashMap};

use automerge::sync::{self, SyncDoc};
use automerge::{Automerge, ChangeHash, PatchLog};
use crdt_model::{DeviceId, DocId};

use super::protocol::{DocRef, Frame, PROTOCOL_VERSION};

/// What the engine needs from its surroundings: documents and the share policy.
pub trait Host {
    /// The document, if this node holds it.
    fn doc(&mut self, id: DocId) -> Option<&mut Automerge>;
    /// How to describe a held document to a peer.
    fn doc_ref(&mut self, id: DocId) -> Option<DocRef>;
    /// Starts holding (and registers) an empty document a peer offered, after
    /// [`Host::may_accept`] said yes.
    fn create(&mut self, r: &DocRef) -> Option<&mut Automerge>;
    /// Whether `peer` may connect at all (a device of a current member, or our relay).
    fn may_connect(&mut self, peer: &DeviceId) -> bool;
    /// Whether `peer` may receive `doc` from us and send us changes to it.
    fn may_share(&mut self, peer: &DeviceId, doc: DocId) -> bool;
    /// Whether to offer `peer` a held `doc` it has not mentioned (a `Have`): by default
    /// whenever it may share it. A host may hold back documents it may sync but has nothing to
    /// give of (a private channel whose member list has not arrived).
    fn may_offer(&mut self, peer: &DeviceId, doc: DocId) -> bool {
        self.may_share(peer, doc)
    }
    /// Whether we should start holding `r` because `peer` offers it.
    fn may_accept(&mut self, peer: &DeviceId, r: &DocRef) -> bool;
    /// The documents to offer `peer`, in sync order.
    fn offer(&mut self, peer: &DeviceId) -> Vec<DocRef>;
    /// The sync state saved for (peer, doc) by an earlier connection.
    fn saved_state(&mut self, peer: &DeviceId, doc: DocId) -> Option<Vec<u8>>;
}

/// Something that happened.
#[derive(Debug)]
pub enum Event {
    /// A connection to `peer` (authenticated by the transport) is up.
    Connected(DeviceId),
    /// A frame arrived from `peer`.
    Frame(DeviceId, Frame),
    /// These documents changed locally (or were created).
    LocalChange(Vec<DocId>),
    /// The connection to `peer` is gone.
    Disconnected(DeviceId),
    /// Membership or channel privacy changed: re-check every (peer, document). The runtime
    /// sends it right after applying an [`Action::Changed`] of a workspace document: only then
    /// does the engine pass that change on to other peers.
    PolicyChanged,
}

/// Something the runtime must do, in order.
#[derive(Debug)]
pub enum Action {
    /// Send a frame to a peer.
    Send(DeviceId, Frame),
    /// A peer's sync message changed `doc`: persist what it gained since `before` and update
    /// the projection from `patches`. Must be durable before any later `Send` goes out.
    Changed {
        /// The document.
        doc: DocId,
        /// Its heads before the change.
        before: Vec<ChangeHash>,
        /// The changes to its current state.
        patches: Vec<automerge::Patch>,
    },
    /// Persist the sync state of (peer, doc) for the next connection.
    SaveState(DeviceId, DocId, Vec<u8>),
    /// Close the connection to a peer.
    Close(DeviceId, CloseReason),
}

/// Why the engine closes a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The peer is not (or no longer) allowed to connect.
    NotAllowed,
    /// The peer sent something that is not a valid sync message.
    BadMessage(String),
    /// The peer broke the protocol (a second Hello, a Join mid-connection).
    Protocol(&'static str),
    /// The peer refused us, with its reason.
    Refused(String),
}

#[derive(Debug, Default)]
struct Peer {
    hello: bool,
    docs: HashMap<DocId, sync::State>,
    /// Offers we could not take yet (a channel offered before the workspace document that
    /// lists it arrived): retried on [`Event::PolicyChanged`].
    deferred: Vec<DocRef>,
}

/// Sync messages generated for one document during one event, by the state they were generated
/// from: the state it left behind, and the encoded message (if any).
type Generated = HashMap<sync::State, (sync::State, Option<Vec<u8>>)>;

/// At most this many deferred offers per peer (a Hello is bounded by the frame size anyway).
const MAX_DEFERRED: usize = 100_000;

/// The sync engine of one node. See the module docs.
#[derive(Debug, Default)]
pub struct Engine {
    peers: BTreeMap<DeviceId, Peer>,
    /// Workspace and channel documents a peer changed, not yet passed on to the other peers: who may see
    /// what is read from them, so they go out only once the host applied the change (on the
    /// next event, [`Event::PolicyChanged`] first of all). With the peer they came from, unless
    /// several sent changes.
    held: BTreeMap<DocId, Option<DeviceId>>,
}

impl Engine {
    /// A new engine with no peers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Connected peers.
    pub fn peers(&self) -> impl Iterator<Item = &DeviceId> {
        self.peers.keys()
    }

    /// How many documents have sync state with `peer` (0 if not connected).
    pub fn doc_count(&self, peer: &DeviceId) -> usize {
        self.peers.get(peer).map_or(0, |p| p.docs.len())
    }

    /// How many of the documents synced with `peer` are in sync (both sides have the same
    /// heads as far as the sync protocol knows), and how many are still behind.
    pub fn sync_summary(&self, host: &mut impl Host, peer: &DeviceId) -> (usize, usize) {
        let Some(p) = self.peers.get(peer) else {
            return (0, 0);
        };
        let (mut in_sync, mut behind) = (0, 0);
        for (doc, state) in &p.docs {
            let Some(d) = host.doc(*doc) else { continue };
            let mut heads = d.get_heads();
            heads.sort();
            let mut theirs = state.their_heads.clone().unwrap_or_default();
            theirs.sort();
            let mut shared = state.shared_heads.clone();
            shared.sort();
            if state.their_heads.is_some() && theirs == heads && shared == heads {
                in_sync += 1;
            } else {
                behind += 1;
            }
        }
        (in_sync, behind)
    }

    /// Handles one event and returns what to do.
    pub fn handle(&mut self, host: &mut impl Host, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        if !matches!(event, Event::PolicyChanged) {
            self.release(host, &mut out);
        }
        match event {
            Event::Connected(peer) => self.connected(host, peer, &mut out),
            Event::Frame(peer, frame) => self.frame(host, peer, frame, &mut out),
            Event::LocalChange(docs) => {
                for doc in docs {
                    self.local_change(host, doc, &mut out);
                }
            }
            Event::Disconnected(peer) => self.disconnected(peer, &mut out),
            Event::PolicyChanged => {
                self.policy_changed(host, &mut out);
                self.release(host, &mut out);
            }
        }
        out
    }

    /// Passes held workspace changes on, now that the host applied them.
    fn release(&mut self, host: &mut impl Host, out: &mut Vec<Action>) {
        for (doc, from) in std::mem::take(&mut self.held) {
            self.fan_out(host, doc, from, out);
        }
    }

    fn connected(&mut self, host: &mut impl Host, peer: DeviceId, out: &mut Vec<Action>) {
        if !host.may_connect(&peer) {
            out.push(Action::Close(peer, CloseReason::NotAllowed));
            return;
        }
        self.peers.insert(peer, Peer::default());
        let have: Vec<DocRef> = host
            .offer(&peer)
            .into_iter()
            .filter(|r| r.id().is_some_and(|id| host.may_share(&peer, id)))
            .collect();
        out.push(Action::Send(
            peer,
            Frame::Hello {
                version: PROTOCOL_VERSION,
                have: have.clone(),
            },
        ));
        for r in have {
            if let Some(id) = r.id() {
                self.open(host, peer, id, out);
            }
        }
    }

    /// Starts (or continues) syncing `doc` with `peer`: makes sure there is state and sends
    /// whatever the sync protocol wants to send next.
    fn open(&mut self, host: &mut impl Host, peer: DeviceId, doc: DocId, out: &mut Vec<Action>) {
        self.open_memo(host, peer, doc, &mut Generated::default(), out);
    }

    /// [`Engine::open`], reusing what was generated for an earlier peer in the same state.
    fn open_memo(
        &mut self,
        host: &mut impl Host,
        peer: DeviceId,
        doc: DocId,
        memo: &mut Generated,
        out: &mut Vec<Action>,
    ) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        let state = p.docs.entry(doc).or_insert_with(|| {
            host.saved_state(&peer, doc)
                .and_then(|b| sync::State::decode(&b).ok())
                .unwrap_or_default()
        });
        let data = match memo.get(state) {
            Some((after, data)) => {
                state.clone_from(after);
                data.clone()
            }
            None => {
                let Some(d) = host.doc(doc) else { return };
                let before = state.clone();
                let data = d.generate_sync_message(state).map(|m| m.encode());
                memo.insert(before, (state.clone(), data.clone()));
                data
            }
        };
        if let Some(data) = data {
            out.push(Action::Send(peer, Frame::Sync { doc, data }));
        }
    }

    fn offered(
        &mut self,
        host: &mut impl Host,
        peer: DeviceId,
        refs: Vec<DocRef>,
        out: &mut Vec<Action>,
    ) {
        for r in refs {
            let Some(id) = r.id() else { continue };
            if !host.may_share(&peer, id) {
                continue;
            }
            if host.doc(id).is_none() && (!host.may_accept(&peer, &r) || host.create(&r).is_none())
            {
                if let Some(p) = self.peers.get_mut(&peer)
                    && p.deferred.len() < MAX_DEFERRED
                    && !p.deferred.contains(&r)
                {
                    p.deferred.push(r);
                }
                continue;
            }
            self.open(host, peer, id, out);
        }
    }

    fn frame(&mut self, host: &mut impl Host, peer: DeviceId, frame: Frame, out: &mut Vec<Action>) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        match frame {
            Frame::Hello { version, have } => {
                if p.hello {
                    self.close(peer, CloseReason::Protocol("second Hello"), out);
                    return;
                }
                if version != PROTOCOL_VERSION {
                    self.close(peer, CloseReason::Protocol("unsupported version"), out);
                    return;
                }
                p.hello = true;
                self.offered(host, peer, have, out);
            }
            Frame::Have { docs } => self.offered(host, peer, docs, out),
            Frame::Unavailable { doc } => {
                p.docs.remove(&doc);
            }
            Frame::Sync { doc, data } => self.sync(host, peer, doc, &data, out),
            // Joining happens before the engine sees a connection (the runtime redeems the
            // ticket, then reports `Connected`); here it is out of place.
            Frame::Join { .. } | Frame::Link { .. } | Frame::Linked { .. } => self.close(
                peer,
                CloseReason::Protocol("Join or Link mid-connection"),
                out,
            ),
            Frame::Refused { reason } => self.close(peer, CloseReason::Refused(reason), out),
            // Ephemeral notes and peers' addresses are the runtime's (checked, never synced).
            Frame::Ephemeral { .. } | Frame::Peers { .. } => {}
        }
    }

    fn sync(
        &mut self,
        host: &mut impl Host,
        peer: DeviceId,
        doc: DocId,
        data: &[u8],
        out: &mut Vec<Action>,
    ) {
        // Policy first, and no state for documents we do not hold: an unknown id costs nothing.
        if !host.may_share(&peer, doc) || host.doc(doc).is_none() {
            if let Some(p) = self.peers.get_mut(&peer) {
                p.docs.remove(&doc);
            }
            out.push(Action::Send(peer, Frame::Unavailable { doc }));
            return;
        }
        let msg = match sync::Message::decode(data) {
            Ok(m) => m,
            Err(e) => {
                self.close(peer, CloseReason::BadMessage(e.to_string()), out);
                return;
            }
        };
        let p = self.peers.get_mut(&peer).expect("checked by caller");
        let state = p.docs.entry(doc).or_insert_with(|| {
            host.saved_state(&peer, doc)
                .and_then(|b| sync::State::decode(&b).ok())
                .unwrap_or_default()
        });
        let d = host.doc(doc).expect("checked above");
        let before = d.get_heads();
        let mut log = PatchLog::active();
        if let Err(e) = d.receive_sync_message_log_patches(state, msg, &mut log) {
            self.close(peer, CloseReason::BadMessage(e.to_string()), out);
            return;
        }
        let changed = d.get_heads() != before;
        if changed {
            let patches = d.make_patches(&mut log);
            out.push(Action::Changed {
                doc,
                before,
                patches,
            });
        }
        if let Some(reply) = d.generate_sync_message(state) {
            out.push(Action::Send(
                peer,
                Frame::Sync {
                    doc,
                    data: reply.encode(),
                },
            ));
        }
        if !changed {
            return;
        }
        // A workspace change may remove a member, a channel change (a private channel's or
        // DM's member list) someone from that channel: tell nobody before the host applied it
        // (`Action::Changed`), so a removed member gets nothing of it either.
        if matches!(
            host.doc_ref(doc),
            Some(DocRef::Workspace { .. } | DocRef::Channel { .. } | DocRef::Dm { .. })
        ) {
            self.held
                .entry(doc)
                .and_modify(|from| {
                    if *from != Some(peer) {
                        *from = None;
                    }
                })
                .or_insert(Some(peer));
        } else {
            self.fan_out(host, doc, Some(peer), out);
        }
    }

    /// Tells every other peer that shares `doc` about its new state.
    fn fan_out(
        &mut self,
        host: &mut impl Host,
        doc: DocId,
        except: Option<DeviceId>,
        out: &mut Vec<Action>,
    ) {
        let peers: Vec<DeviceId> = self
            .peers
            .keys()
            .copied()
            .filter(|id| Some(*id) != except)
            .collect();
        // Peers that are in step with us are in the same sync state, and a sync message is a
        // function of the document and the state: generate it once per distinct state, not once
        // per peer (a relay fans one message out to every member's device).
        let mut memo = Generated::default();
        for peer in peers {
            if !host.may_share(&peer, doc) {
                continue;
            }
            let known = self.peers[&peer].docs.contains_key(&doc);
            if !known {
                if !host.may_offer(&peer, doc) {
                    continue;
                }
                if let Some(r) = host.doc_ref(doc) {
                    out.push(Action::Send(peer, Frame::Have { docs: vec![r] }));
                }
            }
            self.open_memo(host, peer, doc, &mut memo, out);
        }
    }

    fn local_change(&mut self, host: &mut impl Host, doc: DocId, out: &mut Vec<Action>) {
        if host.doc(doc).is_none() {
            return;
        }
        // Workspace and channel documents carry membership: who may see what can have changed.
        // Re-check first, so a removed member gets nothing of this change either.
        if !matches!(host.doc_ref(doc), Some(DocRef::Bucket { .. }) | None) {
            self.policy_changed(host, out);
        }
        self.fan_out(host, doc, None, out);
    }

    fn disconnected(&mut self, peer: DeviceId, out: &mut Vec<Action>) {
        if let Some(p) = self.peers.remove(&peer) {
            let mut docs: Vec<(DocId, sync::State)> = p.docs.into_iter().collect();
            docs.sort_by_key(|(d, _)| *d);
            for (doc, state) in docs {
                out.push(Action::SaveState(peer, doc, state.encode()));
            }
        }
    }

    fn close(&mut self, peer: DeviceId, reason: CloseReason, out: &mut Vec<Action>) {
        self.disconnected(peer, out);
        out.push(Action::Close(peer, reason));
    }

    fn policy_changed(&mut self, host: &mut impl Host, out: &mut Vec<Action>) {
        let peers: Vec<DeviceId> = self.peers.keys().copied().collect();
        for peer in peers {
            if !host.may_connect(&peer) {
                self.close(peer, CloseReason::NotAllowed, out);
                continue;
            }
            let p = self.peers.get_mut(&peer).expect("listed");
            let mut revoked: Vec<DocId> = p
                .docs
                .keys()
                .copied()
                .filter(|d| !host.may_share(&peer, *d))
                .collect();
            revoked.sort();
            for doc in revoked {
                p.docs.remove(&doc);
                out.push(Action::Send(peer, Frame::Unavailable { doc }));
            }
            let retry = std::mem::take(&mut p.deferred);
            self.offered(host, peer, retry, out);
            // Documents the peer may now see (added to a private channel, a new DM).
            let known = &self.peers[&peer].docs;
            let new: Vec<DocRef> = host
                .offer(&peer)
                .into_iter()
                .filter(|r| r.id().is_some_and(|id| !known.contains_key(&id)))
                .collect();
            if !new.is_empty() {
                out.push(Action::Send(peer, Frame::Have { docs: new.clone() }));
                for id in new.iter().filter_map(DocRef::id) {
                    self.open(host, peer, id, out);
                }
            }
        }
    }
}
