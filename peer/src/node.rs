//! The running node: the sync engine and the store on one dedicated thread, the iroh transport
//! and one task per connection around them.
//!
//! ```text
//!  connection tasks ──Cmd──▶ store thread (Store + Engine) ──frames──▶ connection tasks
//!  Node::call / join ─Cmd──▶        │ commits before any frame leaves
//! ```
//!
//! The store thread is the only place that touches SQLite or the engine: no locks, and the async
//! runtime never blocks on the database. Every event is one SQLite transaction; the frames it
//! produces are handed to connection tasks only after it committed (durable before
//! acknowledged). When idle, the thread runs `Store::maintain`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crdt_model::signed::{EphemeralKind, Presence};
use crdt_model::{DeviceId, DocId, PersonId};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::net::{Conn, NetError, PeerAddr, Transport};
use crate::sync::engine::{Engine, Event};
use crate::sync::protocol::Frame;
use crate::{Outgoing, Store, StoreError};

/// How long a dial may take before it counts as failed.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// Two members' nodes that find each other on the LAN, or learn each other's addresses from a
/// peer: the one with the smaller device id dials at once, the other only if no connection came
/// up within this long (it may not have heard our announcement, or not learnt our address). One
/// connection, not two racing each other.
pub const LAN_GRACE: Duration = Duration::from_secs(5);

/// At most this many LAN nodes that are not our members' devices are remembered (to dial if
/// they become members); more are ignored.
const MAX_LAN_OTHERS: usize = 256;

/// Errors of the running node.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The network failed.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The peer refused us.
    #[error("refused by the peer: {0}")]
    Refused(String),
    /// The node is shutting down.
    #[error("the node has stopped")]
    Stopped,
    /// Something did not happen in time.
    #[error("timed out: {0}")]
    Timeout(&'static str),
    /// The configuration asks for something impossible.
    #[error("{0}")]
    Config(&'static str),
}

/// What the node tells observers (the CLI's `tail`, the app, tests waiting without sleeps).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeEvent {
    /// A peer's changes to a document are durable and projected.
    Changed(DocId),
    /// A local write was made (and pushed to connected peers).
    LocalWrite(Vec<DocId>),
    /// A peer connected (after any join handshake).
    PeerUp(DeviceId),
    /// A peer's connection ended.
    PeerDown(DeviceId),
    /// A member is typing in a channel (a checked ephemeral note, directly or through a relay,
    /// each note once; shown for [`TYPING_TTL`]).
    Typing {
        /// The channel.
        channel: DocId,
        /// Who.
        person: PersonId,
        /// On which device.
        device: DeviceId,
        /// When they sent it, ms.
        at_ms: i64,
    },
    /// A member device's presence changed (a heartbeat said so, directly or through a relay;
    /// its direct connection ended; or its heartbeats stopped for [`PRESENCE_TIMEOUT`]).
    Presence {
        /// Who.
        person: PersonId,
        /// Which device.
        device: DeviceId,
        /// Now.
        state: Presence,
    },
}

/// How long a typing note shows.
pub const TYPING_TTL: Duration = Duration::from_secs(5);

/// How often a node repeats its presence to connected peers.
pub const HEARTBEAT: Duration = Duration::from_secs(10);

/// A device whose presence heartbeats stop for this long is offline.
pub const PRESENCE_TIMEOUT: Duration = Duration::from_secs(30);

/// What the store thread shares with the rest of the node: who is connected now, when each
/// peer last exchanged a sync message, and the presence of peers' devices.
#[derive(Debug, Default)]
struct Shared {
    connected: Vec<DeviceId>,
    last_sync: HashMap<DeviceId, i64>,
    presence: HashMap<DeviceId, (PersonId, Presence)>,
    /// Peers whose link is cut ([`Node::cut`]): the store thread refuses their connections and
    /// the dial loops leave them alone meanwhile.
    cut: std::collections::HashSet<DeviceId>,
}

/// One peer's sync state, as `flyt status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSync {
    /// The peer.
    pub device: DeviceId,
    /// Documents in sync with it.
    pub in_sync: usize,
    /// Documents it or we are still catching up on.
    pub behind: usize,
    /// When a sync message last went either way, ms.
    pub last_sync_ms: Option<i64>,
}

type Job = Box<dyn FnOnce(&mut Store) + Send>;

enum Cmd {
    /// A connection is up: frames for `peer` go to `tx`.
    Up {
        peer: DeviceId,
        conn_id: u64,
        tx: mpsc::UnboundedSender<Frame>,
    },
    /// A frame from `peer` on connection `conn_id`.
    Frame(DeviceId, u64, Frame),
    Down {
        peer: DeviceId,
        conn_id: u64,
    },
    /// Run something against the store, then push any local changes.
    Call(Job),
    /// Redeem a joiner's ticket (inviter side).
    Redeem {
        ticket: String,
        cert: Vec<u8>,
        reply: oneshot::Sender<Result<DocId, StoreError>>,
    },
    /// Link a new device of this person (the device that issued the ticket's side).
    Link {
        ticket: String,
        device: DeviceId,
        device_sig: Vec<u8>,
        reply: oneshot::Sender<Result<crate::Linked, StoreError>>,
    },
    /// Send a typing note to the connected peers that may see the channel.
    Typing {
        channel: DocId,
        reply: oneshot::Sender<Result<usize, StoreError>>,
    },
    /// Change this node's presence and tell the connected peers.
    SetPresence(Presence),
    /// Per-peer sync summaries of the connected peers.
    SyncStatus(oneshot::Sender<Vec<PeerSync>>),
    /// A node announced itself on the LAN (`--lan`).
    Found(PeerAddr),
    /// Cut the link to a peer (`true`) or restore it (`false`): see [`Node::cut`].
    Cut(DeviceId, bool),
    /// Look for writes by other processes on this home.
    Tick,
    Stop,
}

/// How often a node looks for writes by other `flyt` processes on its home.
pub const EXTERNAL_POLL: Duration = Duration::from_millis(100);

/// Where the node keeps its data and listens.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The SQLite database.
    pub db: PathBuf,
    /// UDP address for the iroh endpoint, e.g. `127.0.0.1:0`.
    pub bind: SocketAddr,
    /// Announce this node and find peers on the local network by mDNS (`flyt serve --lan`):
    /// devices of our workspaces' members found there are dialled, nobody else.
    pub lan: bool,
    /// Reach and be reached only through the workspaces' relays (`flyt serve --relay-only`):
    /// no UDP socket of its own, so no peer ever learns this device's IP addresses, and a
    /// node behind any NAT or firewall that lets HTTPS out still syncs with everyone. `bind`
    /// is not used; with `lan` the node refuses to start (mDNS announces IP addresses).
    pub relay_only: bool,
}

/// A running node. Call [`Node::shutdown`] to stop it cleanly.
#[derive(Debug)]
pub struct Node {
    /// Bytes of sync payload received from peers since start.
    received: Arc<std::sync::atomic::AtomicU64>,
    cmd: mpsc::UnboundedSender<Cmd>,
    events: broadcast::Sender<NodeEvent>,
    transport: Arc<Transport>,
    cancel: CancellationToken,
    tasks: tokio_util::task::TaskTracker,
    store_thread: Option<std::thread::JoinHandle<()>>,
    shared: Arc<std::sync::Mutex<Shared>>,
    _accept: AbortOnDropHandle<()>,
}

struct Connections {
    /// peer -> (connection id, frames to send)
    live: HashMap<DeviceId, (u64, mpsc::UnboundedSender<Frame>)>,
    /// peer -> when a sync message last went either way, ms.
    last_sync: HashMap<DeviceId, i64>,
}

impl Connections {
    /// Keeps when `peer` last synced, for `status` after the connection (or the node) is gone.
    fn save_last_sync(&self, store: &Store, peer: &DeviceId) {
        if let Some(&at) = self.last_sync.get(peer)
            && let Err(e) = store.save_last_sync(peer, at)
        {
            warn!(%peer, "saving the last sync time failed: {e:#}");
        }
    }

    fn send(&self, peer: &DeviceId, f: Frame) {
        if let Some((_, tx)) = self.live.get(peer) {
            let _ = tx.send(f);
        }
    }
}

/// Presence bookkeeping on the store thread.
struct Presences {
    mine: Presence,
    last_beat: std::time::Instant,
    /// device -> (person, state, when last heard)
    seen: HashMap<DeviceId, (PersonId, Presence, std::time::Instant)>,
    /// Connected peers that have been told our presence since their connection came up. One
    /// that could not be yet (it connected to join, before we held a workspace in common) is
    /// told as soon as it can, not at the next heartbeat.
    told: std::collections::HashSet<DeviceId>,
}

impl Presences {
    /// Records `device`'s state; returns the event to emit if it changed.
    fn set(&mut self, device: DeviceId, person: PersonId, state: Presence) -> Option<NodeEvent> {
        let now = std::time::Instant::now();
        let old = self.seen.insert(device, (person, state, now));
        (old.map(|(_, s, _)| s) != Some(state)).then_some(NodeEvent::Presence {
            person,
            device,
            state,
        })
    }

    /// Devices not heard from for [`PRESENCE_TIMEOUT`] and not yet offline: now offline.
    fn expire(&mut self) -> Vec<NodeEvent> {
        let mut out = Vec::new();
        for (device, (person, state, at)) in self.seen.iter_mut() {
            if *state != Presence::Offline && at.elapsed() >= PRESENCE_TIMEOUT {
                *state = Presence::Offline;
                out.push(NodeEvent::Presence {
                    person: *person,
                    device: *device,
                    state: Presence::Offline,
                });
            }
        }
        out
    }

    fn gone(&mut self, device: DeviceId) -> Option<NodeEvent> {
        let (person, state, _) = self.seen.get_mut(&device)?;
        if *state == Presence::Offline {
            return None;
        }
        *state = Presence::Offline;
        Some(NodeEvent::Presence {
            person: *person,
            device,
            state: Presence::Offline,
        })
    }
}

/// What makes two ephemeral notes the same note: the workspace, the signing device, what it
/// says (the typing channel, the presence state) and when it was sent.
type NoteKey = (DocId, DeviceId, Option<DocId>, Option<Presence>, i64);

/// Ephemeral notes already shown, on the store thread. With a relay and a direct connection
/// to the same device, each of its notes arrives twice; observers see it once.
#[derive(Default)]
struct Heard(std::collections::HashSet<NoteKey>);

impl Heard {
    /// Whether `n` is heard for the first time (it is remembered).
    fn first(&mut self, n: &crate::Note) -> bool {
        let (channel, state) = match n.kind {
            EphemeralKind::Typing { channel } => (Some(channel), None),
            EphemeralKind::Presence { state } => (None, Some(state)),
        };
        self.0
            .insert((n.workspace, n.device, channel, state, n.at_ms))
    }

    /// Forgets notes that could not arrive again: they would be refused as stale.
    fn prune(&mut self, now_ms: i64) {
        self.0.retain(|k| crate::note_is_recent(k.4, now_ms));
    }
}

/// Address exchange on the store thread (issue 3): peers tell each other where their
/// workspaces' members' devices listen ([`Frame::Peers`]), and this node keeps a connection to
/// the known peers it should, so members reach each other with their inviter offline.
#[derive(Default)]
struct Mesh {
    /// Something changed that may change what peers should be told or whom to keep (a
    /// connection, a document, learnt addresses): look again on the next tick.
    dirty: bool,
    /// Known peers kept connected (through [`Dial`]), with the addresses their dial loop uses.
    kept: HashMap<DeviceId, PeerAddr>,
    /// What each connected peer was last told (devices and addresses), so it is told again only
    /// when that changes.
    told: HashMap<DeviceId, Vec<(DeviceId, Vec<String>)>>,
}

impl Mesh {
    /// Tells `peer` where the devices it may know of listen, unless it was already told that.
    fn tell(&mut self, store: &mut Store, conns: &Connections, peer: DeviceId) {
        let peers = match store.peers_for(&peer) {
            Ok(p) => p,
            Err(e) => return warn!(%peer, "listing addresses for a peer failed: {e:#}"),
        };
        let what: Vec<(DeviceId, Vec<String>)> =
            peers.iter().map(|p| (p.device, p.addrs.clone())).collect();
        if what.is_empty() || self.told.get(&peer) == Some(&what) {
            return;
        }
        debug!(%peer, entries = what.len(), "telling a peer where members listen");
        self.told.insert(peer, what);
        conns.send(&peer, Frame::Peers { peers });
    }

    /// Keeps a connection to every known peer the store says to keep and lets go of the rest
    /// (a removed member's devices). A peer whose address changed is redialled at the new one
    /// once it is not connected. Peers found on the LAN have their own dial loop.
    fn keep(
        &mut self,
        store: &mut Store,
        conns: &Connections,
        lan: &std::collections::HashSet<DeviceId>,
        dial: &mpsc::UnboundedSender<Dial>,
    ) {
        let want = match store.peers_to_keep() {
            Ok(w) => w,
            Err(e) => return warn!("reading the peers to keep failed: {e:#}"),
        };
        let ids: std::collections::HashSet<DeviceId> = want.iter().map(|(to, _)| to.id).collect();
        self.kept.retain(|id, _| {
            let stay = ids.contains(id);
            if !stay {
                debug!(peer = %id, "no longer a member's device: not dialled any more");
                let _ = dial.send(Dial::Drop(*id));
            }
            stay
        });
        for (to, ticket) in want {
            if lan.contains(&to.id) {
                continue;
            }
            match self.kept.get(&to.id) {
                Some(old) if *old == to || conns.live.contains_key(&to.id) => continue,
                Some(_) => {
                    let _ = dial.send(Dial::Drop(to.id));
                }
                None => {}
            }
            self.kept.insert(to.id, to.clone());
            let _ = dial.send(match ticket {
                true => Dial::Ticket(to),
                false => Dial::Member(to),
            });
        }
    }
}

/// Copies who is connected and their presence where [`Node`]'s getters read them: after every
/// command, and before a presence event goes out, so whoever sees the event sees it there too.
fn publish(shared: &std::sync::Mutex<Shared>, conns: &Connections, presences: &Presences) {
    let mut sh = shared.lock().expect("shared lock");
    sh.connected.clear();
    sh.connected.extend(conns.live.keys().copied());
    sh.last_sync.clone_from(&conns.last_sync);
    sh.presence.clear();
    sh.presence
        .extend(presences.seen.iter().map(|(d, (p, st, _))| (*d, (*p, *st))));
}

fn store_thread(
    mut store: Store,
    mut rx: mpsc::UnboundedReceiver<Cmd>,
    events: broadcast::Sender<NodeEvent>,
    received: Arc<std::sync::atomic::AtomicU64>,
    dial: mpsc::UnboundedSender<Dial>,
    shared: Arc<std::sync::Mutex<Shared>>,
) {
    let mut engine = Engine::new();
    let mut presences = Presences {
        mine: Presence::Online,
        last_beat: std::time::Instant::now(),
        seen: HashMap::new(),
        told: std::collections::HashSet::new(),
    };
    let mut heard = Heard::default();
    // Relays of our workspaces already being kept connected.
    let mut relays: std::collections::HashSet<DeviceId> = std::collections::HashSet::new();
    // Members' devices found on the LAN and being kept connected; nodes found there that are
    // not (yet: a join may still be syncing), looked at again on every tick.
    let mut lan: std::collections::HashSet<DeviceId> = std::collections::HashSet::new();
    let mut lan_others: HashMap<DeviceId, PeerAddr> = HashMap::new();
    // Dial a LAN node only if it is a member's device, and not one we already keep a connection
    // to by its stored address (that dial now also finds it by mDNS).
    let known_ids = |store: &Store| -> Vec<DeviceId> {
        let known = store.known_peers().unwrap_or_default();
        known.into_iter().map(|(d, _)| d).collect()
    };
    let lan_wanted = |store: &Store, known: &[DeviceId], to: &PeerAddr| {
        !known.contains(&to.id) && store.is_member_device(&to.id).unwrap_or(false)
    };
    let mut mesh = Mesh {
        dirty: true,
        ..Mesh::default()
    };
    let mut busy = false;
    let mut conns = Connections {
        live: HashMap::new(),
        last_sync: HashMap::new(),
    };
    // Returns whether a peer's change was applied (membership, and so the mesh, may change).
    let run = |store: &mut Store, engine: &mut Engine, conns: &mut Connections, ev: Event| {
        let mut changed = false;
        match store.sync_event(engine, ev) {
            Ok(out) => {
                for o in out {
                    match o {
                        Outgoing::Send(peer, f) => {
                            if matches!(f, Frame::Sync { .. }) {
                                conns.last_sync.insert(peer, crate::now_ms());
                            }
                            conns.send(&peer, f);
                        }
                        Outgoing::Close(peer, reason) => {
                            debug!(%peer, ?reason, "closing");
                            // Dropping the sender ends the writer task, which closes the link.
                            conns.live.remove(&peer);
                        }
                        Outgoing::Changed(doc) => {
                            changed = true;
                            let _ = events.send(NodeEvent::Changed(doc));
                        }
                    }
                }
            }
            Err(e) => warn!("sync event failed: {e:#}"),
        }
        changed
    };
    // Local writes (ours, or another process's on this home) go to every peer that shares them.
    let push =
        |store: &mut Store, engine: &mut Engine, conns: &mut Connections, docs: Vec<DocId>| {
            if !docs.is_empty() {
                let _ = events.send(NodeEvent::LocalWrite(docs.clone()));
                run(store, engine, conns, Event::LocalChange(docs));
            }
        };
    loop {
        let cmd = match rx.try_recv() {
            Ok(c) => c,
            Err(mpsc::error::TryRecvError::Empty) => match rx.blocking_recv() {
                Some(c) => c,
                None => break,
            },
            Err(mpsc::error::TryRecvError::Disconnected) => break,
        };
        // Notes (typing, presence heartbeats) cost no storage work: with many members they
        // would otherwise leave no tick idle for upkeep.
        if !matches!(cmd, Cmd::Tick | Cmd::Frame(_, _, Frame::Ephemeral { .. })) {
            busy = true;
        }
        match cmd {
            // A cut link (`Node::cut`): its connections are refused.
            Cmd::Up { peer, conn_id, tx }
                if shared.lock().expect("shared lock").cut.contains(&peer) =>
            {
                // Dropping `tx` ends the new connection's writer, which closes it.
                debug!(%peer, conn_id, "refused a connection over a cut link");
                drop(tx);
            }
            Cmd::Up { peer, conn_id, tx } => {
                // A new connection is told afresh; what it may change is looked at next tick.
                mesh.told.remove(&peer);
                mesh.dirty = true;
                if let Some((_, old)) = conns.live.insert(peer, (conn_id, tx)) {
                    // A newer connection replaces an older one: end the old cleanly first.
                    drop(old);
                    run(
                        &mut store,
                        &mut engine,
                        &mut conns,
                        Event::Disconnected(peer),
                    );
                }
                run(&mut store, &mut engine, &mut conns, Event::Connected(peer));
                if conns.live.contains_key(&peer) {
                    publish(&shared, &conns, &presences);
                    let _ = events.send(NodeEvent::PeerUp(peer));
                    presences.told.remove(&peer);
                    match store.presence_frames(presences.mine, &[peer]) {
                        Ok(frames) => frames.into_iter().for_each(|(p, f)| {
                            presences.told.insert(p);
                            conns.send(&p, f)
                        }),
                        Err(e) => warn!("presence for a new peer failed: {e:#}"),
                    }
                    mesh.tell(&mut store, &conns, peer);
                }
            }
            // A replaced connection's frames belong to a session the engine has ended: the peer
            // starts over on the new connection, so they must not reach the new session.
            Cmd::Frame(peer, conn_id, _)
                if conns.live.get(&peer).is_none_or(|(id, _)| *id != conn_id) =>
            {
                debug!(%peer, "dropped a frame from a replaced connection");
            }
            Cmd::Frame(peer, _, Frame::Ephemeral { signed }) => {
                match store.check_ephemeral(peer, &signed) {
                    Ok(Some(note)) if heard.first(&note) => {
                        let ev = match note.kind {
                            EphemeralKind::Typing { channel } => Some(NodeEvent::Typing {
                                channel,
                                person: note.person,
                                device: note.device,
                                at_ms: note.at_ms,
                            }),
                            EphemeralKind::Presence { state } => {
                                presences.set(note.device, note.person, state)
                            }
                        };
                        if let Some(ev) = ev {
                            publish(&shared, &conns, &presences);
                            let _ = events.send(ev);
                        }
                    }
                    // Our own note echoed by a relay, or one heard already (directly and
                    // through a relay).
                    Ok(_) => {}
                    Err(e) => debug!(%peer, "dropped an ephemeral note: {e}"),
                }
            }
            Cmd::Frame(peer, _, Frame::Peers { peers }) => match store.learn_peers(&peer, peers) {
                Ok(0) => {}
                Ok(_) => mesh.dirty = true,
                Err(e) => warn!(%peer, "keeping a peer's addresses failed: {e:#}"),
            },
            Cmd::Frame(peer, _, f) => {
                if let Frame::Sync { data, .. } = &f {
                    received.fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    conns.last_sync.insert(peer, crate::now_ms());
                }
                if run(&mut store, &mut engine, &mut conns, Event::Frame(peer, f)) {
                    mesh.dirty = true;
                }
            }
            Cmd::Down { peer, conn_id } => {
                if conns.live.get(&peer).is_some_and(|(id, _)| *id == conn_id) {
                    conns.live.remove(&peer);
                    mesh.told.remove(&peer);
                    presences.told.remove(&peer);
                    mesh.dirty = true;
                }
                conns.save_last_sync(&store, &peer);
                if engine.peers().any(|p| *p == peer) && !conns.live.contains_key(&peer) {
                    run(
                        &mut store,
                        &mut engine,
                        &mut conns,
                        Event::Disconnected(peer),
                    );
                }
                let gone = if conns.live.contains_key(&peer) {
                    None
                } else {
                    presences.gone(peer)
                };
                publish(&shared, &conns, &presences);
                let _ = events.send(NodeEvent::PeerDown(peer));
                if let Some(ev) = gone {
                    let _ = events.send(ev);
                }
            }
            Cmd::Typing { channel, reply } => {
                let connected: Vec<DeviceId> = conns.live.keys().copied().collect();
                let r = store.typing_frame(channel, &connected).map(|(f, to)| {
                    for p in &to {
                        conns.send(p, f.clone());
                    }
                    to.len()
                });
                let _ = reply.send(r);
            }
            Cmd::SetPresence(state) => {
                presences.mine = state;
                let connected: Vec<DeviceId> = conns.live.keys().copied().collect();
                match store.presence_frames(state, &connected) {
                    Ok(frames) => frames.into_iter().for_each(|(p, f)| conns.send(&p, f)),
                    Err(e) => warn!("sending presence failed: {e:#}"),
                }
            }
            Cmd::Cut(peer, true) => {
                shared.lock().expect("shared lock").cut.insert(peer);
                if conns.live.remove(&peer).is_some() {
                    // Its connection task ends and reports `Down`, which ends the sync session.
                    debug!(%peer, "cut the link");
                    mesh.told.remove(&peer);
                    presences.told.remove(&peer);
                    mesh.dirty = true;
                }
            }
            Cmd::Cut(peer, false) => {
                shared.lock().expect("shared lock").cut.remove(&peer);
                mesh.dirty = true;
            }
            Cmd::SyncStatus(reply) => {
                let mut peers: Vec<DeviceId> = conns.live.keys().copied().collect();
                peers.sort();
                let out = peers
                    .into_iter()
                    .map(|p| {
                        let (in_sync, behind) = store.sync_summary(&engine, &p);
                        PeerSync {
                            device: p,
                            in_sync,
                            behind,
                            last_sync_ms: conns.last_sync.get(&p).copied(),
                        }
                    })
                    .collect();
                let _ = reply.send(out);
            }
            Cmd::Call(job) => {
                // It may have remembered a peer or changed who is a member.
                mesh.dirty = true;
                job(&mut store);
                let docs = store.take_local_changes();
                push(&mut store, &mut engine, &mut conns, docs);
            }
            Cmd::Redeem {
                ticket,
                cert,
                reply,
            } => {
                let _ = reply.send(store.redeem(&ticket, &cert));
                mesh.dirty = true;
                // The admission changed the workspace document: peers already connected must
                // learn of the new member (its device certificate verifies its messages).
                let docs = store.take_local_changes();
                push(&mut store, &mut engine, &mut conns, docs);
            }
            Cmd::Link {
                ticket,
                device,
                device_sig,
                reply,
            } => {
                let _ = reply.send(store.redeem_link(&ticket, device, device_sig));
                mesh.dirty = true;
                // The new device's certificate is in every workspace document: peers must
                // learn of it before the new device connects to them.
                let docs = store.take_local_changes();
                push(&mut store, &mut engine, &mut conns, docs);
            }
            Cmd::Tick => {
                if presences.last_beat.elapsed() >= HEARTBEAT {
                    presences.last_beat = std::time::Instant::now();
                    heard.prune(crate::now_ms());
                    let connected: Vec<DeviceId> = conns.live.keys().copied().collect();
                    match store.presence_frames(presences.mine, &connected) {
                        Ok(frames) => frames.into_iter().for_each(|(p, f)| conns.send(&p, f)),
                        Err(e) => warn!("presence heartbeat failed: {e:#}"),
                    }
                }
                let expired = presences.expire();
                if !expired.is_empty() {
                    publish(&shared, &conns, &presences);
                }
                for ev in expired {
                    let _ = events.send(ev);
                }
                // A whole tick without other work is idle time: upkeep, one document at a time
                // (a compaction takes ~10 ms), so a message arriving meanwhile waits at most that.
                if !std::mem::take(&mut busy)
                    && let Err(e) = store.maintain()
                {
                    warn!("storage upkeep failed: {e:#}");
                }
                match store.external_changes() {
                    Ok(docs) => {
                        mesh.dirty |= !docs.is_empty();
                        push(&mut store, &mut engine, &mut conns, docs);
                    }
                    Err(e) => warn!("looking for other processes' writes failed: {e:#}"),
                }
                // Known peers to keep (or let go), and peers to tell of addresses they lack.
                if std::mem::take(&mut mesh.dirty) {
                    mesh.keep(&mut store, &conns, &lan, &dial);
                    let connected: Vec<DeviceId> = conns.live.keys().copied().collect();
                    for peer in &connected {
                        mesh.tell(&mut store, &conns, *peer);
                    }
                    // Peers that could not be told our presence when they connected (relays
                    // included: they pass it on to members connected to them).
                    let untold: Vec<DeviceId> = connected
                        .into_iter()
                        .filter(|p| !presences.told.contains(p))
                        .collect();
                    match store.presence_frames(presences.mine, &untold) {
                        Ok(frames) => frames.into_iter().for_each(|(p, f)| {
                            presences.told.insert(p);
                            conns.send(&p, f)
                        }),
                        Err(e) => warn!("presence for a newly joined peer failed: {e:#}"),
                    }
                }
                // LAN nodes that have become members' devices since they were found.
                let known = match lan_others.is_empty() {
                    true => Vec::new(),
                    false => known_ids(&store),
                };
                let now_wanted: Vec<DeviceId> = lan_others
                    .values()
                    .filter(|to| lan_wanted(&store, &known, to))
                    .map(|to| to.id)
                    .collect();
                for id in now_wanted {
                    if let Some(to) = lan_others.remove(&id) {
                        lan.insert(id);
                        let _ = dial.send(Dial::Lan(to));
                    }
                }
                // A workspace that lists a relay (ours, another process's, or a peer's change):
                // keep a connection to it.
                // One no longer listed (removed from every workspace of ours): let it go.
                match store.relay_peers() {
                    Ok(listed) => {
                        let now: std::collections::HashSet<DeviceId> =
                            listed.iter().map(|to| to.id).collect();
                        for gone in relays.iter().filter(|r| !now.contains(r)) {
                            let _ = dial.send(Dial::Drop(*gone));
                        }
                        relays.retain(|r| now.contains(r));
                        for to in listed {
                            if relays.insert(to.id) {
                                let _ = dial.send(Dial::Keep(to));
                            }
                        }
                    }
                    Err(e) => warn!("reading the relays failed: {e:#}"),
                }
            }
            Cmd::Found(to) if !lan.contains(&to.id) => {
                if lan_wanted(&store, &known_ids(&store), &to) {
                    debug!(peer = %to.id, addrs = ?to.addrs, "a member's device is on the LAN");
                    lan_others.remove(&to.id);
                    lan.insert(to.id);
                    let _ = dial.send(Dial::Lan(to));
                } else if lan_others.len() < MAX_LAN_OTHERS || lan_others.contains_key(&to.id) {
                    lan_others.insert(to.id, to);
                }
            }
            Cmd::Found(_) => {}
            Cmd::Stop => break,
        }
        publish(&shared, &conns, &presences);
    }
    // Save every sync state for the next start.
    let peers: Vec<DeviceId> = engine.peers().copied().collect();
    for p in peers {
        run(&mut store, &mut engine, &mut conns, Event::Disconnected(p));
    }
    let synced: Vec<DeviceId> = conns.last_sync.keys().copied().collect();
    for p in synced {
        conns.save_last_sync(&store, &p);
    }
    if let Err(e) = store.maintain() {
        warn!("storage upkeep at shutdown failed: {e:#}");
    }
}

/// Where peers reach this node, as tickets and peer lists carry it: its direct addresses, then
/// the relays it is reachable through (a relay-only node has only those).
fn listen_addrs(transport: &Transport) -> Vec<String> {
    let at = transport.addr();
    let direct = at.addrs.iter().map(|a| a.to_string());
    direct.chain(at.relays).collect()
}

impl Node {
    /// Opens the store, binds the endpoint with this device's key and starts accepting.
    pub async fn start(cfg: NodeConfig) -> Result<Node, NodeError> {
        if cfg.relay_only && cfg.lan {
            return Err(NodeError::Config(
                "--lan announces this device's IP addresses; it cannot go with --relay-only",
            ));
        }
        let mut store = Store::open(&cfg.db)?;
        let secret = store.identity()?.device.to_bytes();
        let received = Arc::new(std::sync::atomic::AtomicU64::new(0));
        // With relays in our workspaces (or in a known peer's addresses, as a ticket gave
        // them), the endpoint also uses their `/relay`.
        let mut relays: Vec<String> = store
            .relay_peers()?
            .into_iter()
            .flat_map(|p| p.relays)
            .collect();
        for (id, addrs) in store.known_peers()? {
            relays.extend(PeerAddr::parse(id, &addrs).relays);
        }
        relays.sort();
        relays.dedup();
        // Port 0 asks for any port: the one this home's node listened on last, while it is
        // free. Peers keep dialling the address they learnt, and two nodes that both restart
        // would otherwise know only each other's old ports.
        // Always with iroh's relay transport, even with no relay yet: a relay a workspace lists
        // later is added while the node runs (`Dial::Keep`), so NAT help needs no restart.
        let bind = |at| Box::pin(Transport::bind_relaying(secret, at, &relays));
        let last = store.last_port()?.filter(|_| cfg.bind.port() == 0);
        let transport = if cfg.relay_only {
            let t = Transport::bind_relay_only(secret).await?;
            for r in &relays {
                t.add_relay(r, None).await?;
            }
            t
        } else {
            match last.map(|port| SocketAddr::new(cfg.bind.ip(), port)) {
                Some(at) => match bind(at).await {
                    Ok(t) => t,
                    Err(e) => {
                        debug!(%at, "the last port is not free, taking another: {e}");
                        bind(cfg.bind).await?
                    }
                },
                None => bind(cfg.bind).await?,
            }
        };
        let transport = Arc::new(transport);
        let found = match cfg.lan {
            true => Some(transport.enable_lan().await?),
            false => None,
        };
        let (cmd, rx) = mpsc::unbounded_channel();
        let (events, _) = broadcast::channel(4096);
        let ev = events.clone();
        let (dial, mut to_dial) = mpsc::unbounded_channel();
        let shared = Arc::new(std::sync::Mutex::new(Shared::default()));
        let store_thread = std::thread::Builder::new()
            .name("flyt-store".into())
            .spawn({
                let (received, shared) = (received.clone(), shared.clone());
                move || store_thread(store, rx, ev, received, dial, shared)
            })
            .expect("spawn the store thread");
        let cancel = CancellationToken::new();
        let tasks = tokio_util::task::TaskTracker::new();
        let accept = {
            let (transport, cmd, cancel, tasks) = (
                transport.clone(),
                cmd.clone(),
                cancel.clone(),
                tasks.clone(),
            );
            AbortOnDropHandle::new(tokio::spawn(async move {
                while let Some(Some(conn)) = cancel.run_until_cancelled(transport.accept()).await {
                    match conn {
                        Ok(conn) => {
                            let span = info_span!("conn", peer = %conn.remote, side = "accept");
                            tasks.spawn(
                                serve_conn(conn, cmd.clone(), Side::Accept, cancel.child_token())
                                    .instrument(span),
                            );
                        }
                        Err(e) => debug!("incoming connection failed: {e:#}"),
                    }
                }
            }))
        };
        {
            let (cmd, cancel) = (cmd.clone(), cancel.clone());
            tasks.spawn(async move {
                let mut tick = tokio::time::interval(EXTERNAL_POLL);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                while cancel.run_until_cancelled(tick.tick()).await.is_some() {
                    if cmd.send(Cmd::Tick).is_err() {
                        return;
                    }
                }
            });
        }
        if let Some(mut found) = found {
            let (cmd, cancel) = (cmd.clone(), cancel.clone());
            tasks.spawn(async move {
                use futures_util::StreamExt;
                while let Some(Some(to)) = cancel.run_until_cancelled(found.next()).await {
                    if cmd.send(Cmd::Found(to)).is_err() {
                        return;
                    }
                }
            });
        }
        {
            let dialer = Dialer {
                transport: transport.clone(),
                cmd: cmd.clone(),
                cancel: cancel.clone(),
                tasks: tasks.clone(),
                shared: shared.clone(),
            };
            let cancel = cancel.clone();
            tasks.spawn(async move {
                let mut kept: HashMap<DeviceId, CancellationToken> = HashMap::new();
                while let Some(Some(d)) = cancel.run_until_cancelled(to_dial.recv()).await {
                    match d {
                        Dial::Keep(to) => {
                            // A relay listed since the start: the endpoint uses its `/relay`
                            // from now on (reachable through it, and reaching through it).
                            let mut added = false;
                            for url in &to.relays {
                                match dialer.transport.add_relay(url, None).await {
                                    Ok(new) => added |= new,
                                    Err(e) => {
                                        warn!(%url, "using a relay for NAT help failed: {e:#}")
                                    }
                                }
                            }
                            // Tickets and peers learn that we are reachable there too.
                            if added {
                                let listen = listen_addrs(&dialer.transport);
                                let _ = dialer.cmd.send(Cmd::Call(Box::new(move |s| {
                                    if let Err(e) = s.set_listen_addrs(&listen) {
                                        warn!("recording where we listen failed: {e:#}");
                                    }
                                })));
                            }
                            let stop = cancel.child_token();
                            kept.insert(to.id, stop.clone());
                            dialer.connect_until(to, stop);
                        }
                        Dial::Drop(id) => {
                            if let Some(stop) = kept.remove(&id) {
                                stop.cancel();
                            }
                        }
                        Dial::Ticket(to) => {
                            let stop = cancel.child_token();
                            kept.insert(to.id, stop.clone());
                            dialer.connect_ticket(to, stop);
                        }
                        Dial::Member(to) => {
                            let stop = cancel.child_token();
                            kept.insert(to.id, stop.clone());
                            dialer.connect_member(to, stop, "peer");
                        }
                        Dial::Lan(to) => {
                            let stop = cancel.child_token();
                            kept.insert(to.id, stop.clone());
                            dialer.connect_member(to, stop, "lan");
                        }
                    }
                }
            });
        }
        info!(id = %transport.id(), "node started");
        let node = Node {
            received,
            cmd,
            events,
            transport,
            cancel,
            tasks,
            store_thread: Some(store_thread),
            shared,
            _accept: accept,
        };
        // Record where we listen (for invite tickets and peers); the store thread's first tick
        // reconnects to the peers we know (`Mesh::keep`).
        let port = node.addr().addrs.first().map(|a| a.port());
        let listen = node.reachable_at();
        node.call(move |s| {
            s.set_listen_addrs(&listen)?;
            port.map_or(Ok(()), |p| s.set_last_port(p))
        })
        .await??;
        Ok(node)
    }

    /// The peers connected right now (their sessions accepted by the engine).
    pub fn connected(&self) -> Vec<DeviceId> {
        self.shared.lock().expect("shared lock").connected.clone()
    }

    /// The presence of every peer device heard from since start (offline once it
    /// disconnected or fell silent).
    pub fn presence(&self) -> HashMap<DeviceId, (PersonId, Presence)> {
        self.shared.lock().expect("shared lock").presence.clone()
    }

    /// Tells the connected members' devices that may see `channel` that I am typing there, and
    /// (public channels) the connected relays, which pass it on; returns to how many
    /// connections it went. Nothing is stored.
    pub async fn typing(&self, channel: DocId) -> Result<usize, NodeError> {
        let (reply, rx) = oneshot::channel();
        self.cmd
            .send(Cmd::Typing { channel, reply })
            .map_err(|_| NodeError::Stopped)?;
        Ok(rx.await.map_err(|_| NodeError::Stopped)??)
    }

    /// Cuts this node's link to `peer` until [`Node::heal`]: the connection closes if one is
    /// up, and meanwhile neither side's dial nor the peer's connection gets through (it is
    /// closed as it comes up). Only this link: the two still sync through other peers and
    /// relays. This is how a partition is made for a test, and how a user stops syncing with
    /// one device for a while without removing anyone.
    pub fn cut(&self, peer: DeviceId) -> Result<(), NodeError> {
        self.cmd
            .send(Cmd::Cut(peer, true))
            .map_err(|_| NodeError::Stopped)
    }

    /// Restores a link [`Node::cut`] cut: the dial loops reconnect as they would after a drop.
    pub fn heal(&self, peer: DeviceId) -> Result<(), NodeError> {
        self.cmd
            .send(Cmd::Cut(peer, false))
            .map_err(|_| NodeError::Stopped)
    }

    /// Sets this node's presence (online or away) and tells the connected peers.
    pub fn set_presence(&self, state: Presence) -> Result<(), NodeError> {
        self.cmd
            .send(Cmd::SetPresence(state))
            .map_err(|_| NodeError::Stopped)
    }

    /// Per connected peer: documents in sync and behind, and when sync last went either way.
    pub async fn sync_status(&self) -> Result<Vec<PeerSync>, NodeError> {
        let (reply, rx) = oneshot::channel();
        self.cmd
            .send(Cmd::SyncStatus(reply))
            .map_err(|_| NodeError::Stopped)?;
        rx.await.map_err(|_| NodeError::Stopped)
    }

    /// Bytes of sync payload (Automerge sync messages) received from peers since start.
    pub fn bytes_received(&self) -> u64 {
        self.received.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// This node's device id and listening addresses.
    pub fn addr(&self) -> PeerAddr {
        self.transport.addr()
    }

    /// Where peers reach this node, as tickets carry it: direct addresses, then relays.
    pub fn reachable_at(&self) -> Vec<String> {
        listen_addrs(&self.transport)
    }

    /// Observe what happens (changes from peers, local writes, peers coming and going).
    pub fn subscribe(&self) -> broadcast::Receiver<NodeEvent> {
        self.events.subscribe()
    }

    /// Runs `f` on the store thread and pushes whatever it wrote to connected peers.
    pub async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Store) -> R + Send + 'static,
    ) -> Result<R, NodeError> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |s| {
            let _ = tx.send(f(s));
        });
        self.cmd
            .send(Cmd::Call(job))
            .map_err(|_| NodeError::Stopped)?;
        rx.await.map_err(|_| NodeError::Stopped)
    }

    /// Keeps a connection to `to`: dials now and redials with backoff whenever it drops, until
    /// the node stops or the peer refuses us.
    pub fn connect(&self, to: PeerAddr) {
        self.dialer().connect(to);
    }

    fn dialer(&self) -> Dialer {
        Dialer {
            transport: self.transport.clone(),
            cmd: self.cmd.clone(),
            cancel: self.cancel.clone(),
            tasks: self.tasks.clone(),
            shared: self.shared.clone(),
        }
    }

    /// Joins a workspace with an invite ticket: checks it, dials the inviter, presents it with
    /// this device's certificate, and keeps the connection. Returns the workspace id once the
    /// inviter accepted; the workspace arrives through sync (watch [`Node::subscribe`]).
    pub async fn join(&self, ticket: &str) -> Result<DocId, NodeError> {
        let t = crdt_model::invite::decode(ticket, crate::now_ms())
            .map_err(|e| NodeError::Store(e.into()))?;
        let inv = t.payload.clone();
        let cert = self
            .call(move |s| {
                s.expect_join(inv.workspace, inv.inviter)?;
                Ok::<_, StoreError>(
                    s.identity()?
                        .device_cert("device", crate::now_ms())
                        .to_bytes(),
                )
            })
            .await??;
        let to_dial = peer_addr(t.payload.inviter, &t.payload.addrs);
        // The workspace's relays admit a device that is not a member yet when it shows them
        // the invite (they check its signature and expiry).
        for r in &to_dial.relays {
            self.transport
                .add_relay(r, Some(ticket.trim().to_owned()))
                .await?;
        }
        let conn = self.transport.dial(&to_dial, DIAL_TIMEOUT).await?;
        let (up_tx, up_rx) = oneshot::channel();
        let join = Frame::Join {
            ticket: ticket.trim().to_owned(),
            cert,
        };
        let span = info_span!("conn", peer = %to_dial.id, side = "join");
        let (cmd, cancel) = (self.cmd.clone(), self.cancel.child_token());
        self.tasks.spawn(
            async move {
                let r = serve_conn(conn, cmd, Side::Join(join, up_tx), cancel).await;
                debug!("join connection ended: {r:?}");
            }
            .instrument(span),
        );
        match tokio::time::timeout(DIAL_TIMEOUT * 2, up_rx).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(why))) => return Err(NodeError::Refused(why)),
            Ok(Err(_)) => {
                return Err(NodeError::Refused(
                    "the inviter closed the connection".into(),
                ));
            }
            Err(_) => return Err(NodeError::Timeout("waiting for the inviter to accept")),
        }
        // Keep the link to the inviter from the next tick on (`Mesh::keep`; while this join's
        // connection is up, it is the one). Only now: a dial racing the join would reach the
        // inviter before it admitted us, and be refused.
        let (inviter, addrs) = (t.payload.inviter, t.payload.addrs.clone());
        self.call(move |s| s.remember_peer(inviter, &addrs))
            .await??;
        Ok(t.payload.workspace)
    }

    /// Stops: no new connections, connections closed, sync states saved, endpoint closed,
    /// storage flushed, in that order.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        self.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.tasks.wait()).await;
        let _ = self.call(|s| s.set_listen_addrs(&[])).await;
        let _ = self.cmd.send(Cmd::Stop);
        self.transport.close().await;
        if let Some(t) = self.store_thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

/// The store thread's word to the dialler: keep a connection to a listed relay, or to a
/// ticket's peer (see [`Dialer::connect_ticket`]), or stop (a relay no longer listed in any of
/// our workspaces, a removed member's device); keep one to a member's device learnt from a
/// peer or found on the LAN (both ends keep it: see [`Dialer::connect_member`]).
enum Dial {
    Keep(PeerAddr),
    Ticket(PeerAddr),
    Drop(DeviceId),
    Member(PeerAddr),
    Lan(PeerAddr),
}

/// What keeping a connection needs (cloneable, so the relay watcher can dial too).
struct Dialer {
    transport: Arc<Transport>,
    cmd: mpsc::UnboundedSender<Cmd>,
    cancel: CancellationToken,
    tasks: tokio_util::task::TaskTracker,
    shared: Arc<std::sync::Mutex<Shared>>,
}

impl Dialer {
    /// Keeps a connection to a member's device found on the LAN (`via` "lan") or learnt from a
    /// peer (`via` "peer"), whichever side dialled it: both ends run this loop. While a
    /// connection is up (the peer dialled us, say) it waits; when none is, it dials, the
    /// smaller device id at once and the other after [`LAN_GRACE`] (see there), with backoff.
    fn connect_member(&self, to: PeerAddr, cancel: CancellationToken, via: &'static str) {
        let first = if self.transport.id().0 < to.id.0 {
            Duration::ZERO
        } else {
            LAN_GRACE
        };
        let policy = Redial {
            first,
            min: LAN_GRACE,
            max: Duration::from_secs(30),
            after_connection: Duration::from_millis(500),
            unless_connected: true,
        };
        self.keep(to, cancel, policy, via);
    }

    /// Keeps a connection to the peer a ticket named (our inviter, or the device that linked
    /// this one), which may not know where we listen: dials at once whenever no connection is
    /// up, and otherwise leaves the one that is (the join's own, or one the peer dialled).
    fn connect_ticket(&self, to: PeerAddr, cancel: CancellationToken) {
        let policy = Redial {
            first: Duration::ZERO,
            min: Duration::from_millis(100),
            max: Duration::from_secs(1),
            after_connection: Duration::from_millis(100),
            unless_connected: true,
        };
        self.keep(to, cancel, policy, "ticket");
    }

    /// Keeps a connection to `to`: dials now and redials with backoff whenever it drops, until
    /// the node stops or the peer refuses us.
    fn connect(&self, to: PeerAddr) {
        self.connect_until(to, self.cancel.clone());
    }

    /// [`Dialer::connect`], until `cancel` too (a child of the node's token): the connection
    /// closes and no redial follows.
    fn connect_until(&self, to: PeerAddr, cancel: CancellationToken) {
        let policy = Redial {
            first: Duration::ZERO,
            min: Duration::from_millis(100),
            max: Duration::from_secs(5),
            after_connection: Duration::from_millis(100),
            unless_connected: false,
        };
        self.keep(to, cancel, policy, "address");
    }

    /// The one dial loop: waits, dials `to`, serves the connection, and again, as `policy`
    /// says, until `cancel` or the peer refuses us.
    fn keep(&self, to: PeerAddr, cancel: CancellationToken, policy: Redial, via: &'static str) {
        let (transport, cmd, shared) = (
            self.transport.clone(),
            self.cmd.clone(),
            self.shared.clone(),
        );
        let span = info_span!("dial", peer = %to.id, via);
        self.tasks.spawn(
            async move {
                let connected = || {
                    let sh = shared.lock().expect("shared lock");
                    sh.connected.contains(&to.id)
                };
                let is_cut = || shared.lock().expect("shared lock").cut.contains(&to.id);
                let mut pause = policy.first;
                let mut was_cut = false;
                loop {
                    if !pause.is_zero()
                        && cancel
                            .run_until_cancelled(tokio::time::sleep(pause))
                            .await
                            .is_none()
                    {
                        return;
                    }
                    // A cut link is not dialled; once restored, the loop starts over as if new
                    // (the smaller device id first, see `LAN_GRACE`), without the backoff.
                    if is_cut() {
                        (pause, was_cut) = (CUT_POLL, true);
                        continue;
                    }
                    if std::mem::take(&mut was_cut) && !policy.first.is_zero() {
                        pause = policy.first;
                        continue;
                    }
                    let next = (pause * 2).clamp(policy.min, policy.max);
                    if policy.unless_connected && connected() {
                        pause = next;
                        continue;
                    }
                    match cancel
                        .run_until_cancelled(transport.dial(&to, DIAL_TIMEOUT))
                        .await
                    {
                        None => return,
                        Some(Ok(conn)) => {
                            let side = Side::Dial;
                            let began = tokio::time::Instant::now();
                            match serve_conn(conn, cmd.clone(), side, cancel.child_token()).await {
                                Err(NodeError::Refused(why)) => {
                                    warn!("peer refused us: {why}");
                                    return;
                                }
                                _ => debug!("connection ended"),
                            }
                            // A connection closed as soon as it came up (the peer's policy
                            // refuses us: we were removed, or it was) backs off like a failed
                            // dial, rather than redialling ten times a second.
                            pause = if began.elapsed() < SHORT_LIVED {
                                next.max(policy.after_connection)
                            } else {
                                policy.after_connection
                            };
                        }
                        Some(Err(e)) => {
                            debug!("dial failed: {e:#}");
                            pause = next;
                        }
                    }
                }
            }
            .instrument(span),
        );
    }
}

/// How often a dial loop looks whether its cut link ([`Node::cut`]) was restored.
const CUT_POLL: Duration = Duration::from_millis(50);

/// A kept connection that ends sooner than this after it came up counts as a failed dial.
const SHORT_LIVED: Duration = Duration::from_secs(2);

/// How [`Dialer::keep`] redials.
struct Redial {
    /// Wait before the first dial.
    first: Duration,
    /// Waits between dials double, from at least `min` up to `max`.
    min: Duration,
    max: Duration,
    /// Wait after a connection that came up has ended.
    after_connection: Duration,
    /// Dial only while no connection to the peer is up (it may have dialled us).
    unless_connected: bool,
}

/// Makes a fresh home (no identity yet) another device of the person who issued the
/// device-link `ticket`: draws this device's key, proves it to the issuing device over QUIC,
/// receives the person's identity and the workspaces now certifying this device, and stores
/// them. Start a [`Node`] next: it connects to the issuing device and syncs every workspace.
pub async fn link_device(
    db: &std::path::Path,
    bind: SocketAddr,
    ticket: &str,
) -> Result<Vec<DocId>, NodeError> {
    let t = crdt_model::invite::decode_link(ticket, crate::now_ms())
        .map_err(|e| NodeError::Store(e.into()))?;
    let mut store = Store::open(db)?;
    if let Ok(me) = store.identity() {
        return Err(StoreError::AlreadyInitialized(me.name.clone()).into());
    }
    let device: [u8; 32] = crate::random();
    let device_sig = crdt_model::identity::device_sig(&device, &t.payload.person);
    let to = peer_addr(t.payload.inviter, &t.payload.addrs);
    let transport = Transport::bind(device, bind).await?;
    let answer = async {
        let conn = transport.dial(&to, DIAL_TIMEOUT).await?;
        let (mut reader, mut writer) = conn.split();
        writer
            .send(&Frame::Link {
                ticket: ticket.trim().to_owned(),
                device_sig,
            })
            .await?;
        let answer = tokio::time::timeout(DIAL_TIMEOUT * 2, reader.next()).await;
        writer.finish().await;
        reader.close("linked");
        match answer {
            Err(_) => Err(NodeError::Timeout("waiting for the other device to answer")),
            Ok(r) => Ok(r?),
        }
    }
    .await;
    transport.close().await;
    let (person_secret, name, workspaces) = match answer? {
        Some(Frame::Linked {
            person_secret,
            name,
            workspaces,
        }) => (person_secret, name, workspaces),
        Some(Frame::Refused { reason }) => return Err(NodeError::Refused(reason)),
        _ => {
            return Err(NodeError::Refused(
                "the other device closed the connection".into(),
            ));
        }
    };
    if crdt_model::Identity::from_secrets(person_secret.0, device, &name).person_id()
        != t.payload.person
    {
        return Err(NodeError::Refused(
            "the other device sent an identity that is not the ticket's".into(),
        ));
    }
    store.init_linked(person_secret.0, device, &name)?;
    for ws in &workspaces {
        store.expect_join(*ws, t.payload.inviter)?;
    }
    store.remember_peer(t.payload.inviter, &t.payload.addrs)?;
    if let Some(first) = workspaces.first() {
        store.use_workspace(*first)?;
    }
    Ok(workspaces)
}

/// A ticket's device and addresses (as text; unparsable ones are skipped).
fn peer_addr(id: DeviceId, addrs: &[String]) -> PeerAddr {
    PeerAddr::parse(id, addrs)
}

static CONN_IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Runs one connection until it ends. With `join`, sends the Join frame first and reports
/// whether the inviter accepted. On the accepting side, a first Join frame is redeemed before
/// the engine hears of the connection.
/// Which end of a connection we are. The dialler speaks first (QUIC announces a stream to the
/// acceptor only once data is written on it): a Join, or its Hello.
enum Side {
    Accept,
    Dial,
    Join(Frame, oneshot::Sender<Result<(), String>>),
}

async fn serve_conn(
    conn: Conn,
    cmd: mpsc::UnboundedSender<Cmd>,
    side: Side,
    cancel: CancellationToken,
) -> Result<(), NodeError> {
    let peer = conn.remote;
    let conn_id = CONN_IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (mut reader, mut writer) = conn.split();
    let mut first: Option<Frame> = None;
    let mut joined = None;
    if let Side::Join(frame, up) = side {
        writer.send(&frame).await?;
        joined = Some(up);
    } else if let Side::Accept = side {
        // The acceptor's first frame decides: a Join is redeemed here.
        match cancel.run_until_cancelled(reader.next()).await {
            None => return Ok(()),
            Some(Ok(Some(Frame::Join { ticket, cert }))) => {
                let (reply, rx) = oneshot::channel();
                cmd.send(Cmd::Redeem {
                    ticket,
                    cert,
                    reply,
                })
                .map_err(|_| NodeError::Stopped)?;
                match rx.await.map_err(|_| NodeError::Stopped)? {
                    Ok(ws) => info!(%ws, "admitted a new device by ticket"),
                    Err(e) => {
                        let reason = e.to_string();
                        writer
                            .send(&Frame::Refused {
                                reason: reason.clone(),
                            })
                            .await?;
                        writer.finish().await;
                        return Err(NodeError::Refused(reason));
                    }
                }
            }
            Some(Ok(Some(Frame::Link { ticket, device_sig }))) => {
                let (reply, rx) = oneshot::channel();
                cmd.send(Cmd::Link {
                    ticket,
                    device: peer,
                    device_sig,
                    reply,
                })
                .map_err(|_| NodeError::Stopped)?;
                let answer = match rx.await.map_err(|_| NodeError::Stopped)? {
                    Ok(linked) => {
                        info!("linked a new device of this person");
                        Frame::Linked {
                            person_secret: crate::sync::protocol::Secret(linked.person_secret),
                            name: linked.name,
                            workspaces: linked.workspaces,
                        }
                    }
                    Err(e) => Frame::Refused {
                        reason: e.to_string(),
                    },
                };
                writer.send(&answer).await?;
                writer.finish().await;
                return Ok(());
            }
            Some(Ok(Some(f))) => first = Some(f),
            Some(Ok(None)) => return Ok(()),
            Some(Err(e)) => return Err(e.into()),
        }
    }
    let (tx, mut rx) = mpsc::unbounded_channel::<Frame>();
    cmd.send(Cmd::Up { peer, conn_id, tx })
        .map_err(|_| NodeError::Stopped)?;
    if let Some(f) = first {
        let _ = cmd.send(Cmd::Frame(peer, conn_id, f));
    }
    let writer_task = tokio::spawn(async move {
        while let Some(f) = rx.recv().await {
            if writer.send(&f).await.is_err() {
                return;
            }
        }
        // The store thread dropped us (closed by policy, replaced, or shutting down): end our
        // stream; the peer sees it end, stops, and the connection goes.
        writer.finish().await;
    });
    let _writer_task = AbortOnDropHandle::new(writer_task);
    let mut outcome = Ok(());
    loop {
        match cancel.run_until_cancelled(reader.next()).await {
            None => break,
            Some(Ok(Some(Frame::Refused { reason }))) => {
                if let Some(up) = joined.take() {
                    let _ = up.send(Err(reason.clone()));
                }
                outcome = Err(NodeError::Refused(reason));
                break;
            }
            Some(Ok(Some(f))) => {
                if let Some(up) = joined.take() {
                    let _ = up.send(Ok(()));
                }
                if cmd.send(Cmd::Frame(peer, conn_id, f)).is_err() {
                    break;
                }
            }
            Some(Ok(None)) => break,
            Some(Err(e)) => {
                outcome = Err(e.into());
                break;
            }
        }
    }
    let _ = cmd.send(Cmd::Down { peer, conn_id });
    reader.close("bye");
    outcome
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    fn quiet_for(p: &mut Presences, device: DeviceId, d: Duration) {
        let at = Instant::now()
            .checked_sub(d)
            .expect("the clock is far enough along");
        p.seen.get_mut(&device).expect("seen").2 = at;
    }

    #[test]
    fn silent_devices_go_offline_after_the_timeout_once() {
        let mut p = Presences {
            mine: Presence::Online,
            last_beat: Instant::now(),
            seen: HashMap::new(),
            told: std::collections::HashSet::new(),
        };
        let (quiet, chatty, left) = (DeviceId([1; 32]), DeviceId([2; 32]), DeviceId([3; 32]));
        let person = PersonId([9; 32]);
        for d in [quiet, chatty, left] {
            assert!(
                p.set(d, person, Presence::Online).is_some(),
                "new: an event"
            );
        }
        assert!(
            p.set(chatty, person, Presence::Online).is_none(),
            "same: none"
        );
        assert!(p.gone(left).is_some());
        quiet_for(&mut p, quiet, PRESENCE_TIMEOUT);
        quiet_for(&mut p, chatty, PRESENCE_TIMEOUT - Duration::from_secs(1));
        quiet_for(&mut p, left, PRESENCE_TIMEOUT * 2);

        let events = p.expire();
        assert_eq!(events.len(), 1, "{events:?}");
        assert!(matches!(
            events[0],
            NodeEvent::Presence { device, state: Presence::Offline, .. } if device == quiet
        ));
        assert!(p.expire().is_empty(), "offline once, not on every tick");
        // A heartbeat brings it back.
        assert!(p.set(quiet, person, Presence::Online).is_some());
        assert!(p.gone(chatty).is_some());
    }
}
