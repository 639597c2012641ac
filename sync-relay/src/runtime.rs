//! The running relay: one store thread owning [`RelayStore`] and the sync [`Engine`], the iroh
//! endpoint with one task per connection, and the HTTP server.
//!
//! The store thread is the only place that touches SQLite or the engine. Every event is one
//! transaction; its frames reach connections only after it committed (durable before
//! acknowledged), and its document changes and saved sync states reach the [`Archive`] then
//! too. Connections talk to the store thread through a [`Session`], whichever framing they
//! use.
//!
//! Typing and presence notes (`Frame::Ephemeral`) skip the engine and storage: the store
//! thread checks each ([`RelayStore::check_ephemeral`]) and passes it on to the other member
//! devices of its workspace connected now, only into send queues more than half free (a note
//! may be dropped; sync never waits for one). Sessions of either framing send and receive
//! them alike (the WebSocket one as automerge-repo `ephemeral` messages: [`crate::ws`]).
//!
//! Shutdown, in order: stop accepting (HTTP and iroh), drain connection tasks (each session's
//! sync states are saved as it ends), close the endpoint, flush storage (the store thread
//! saves what is left and checkpoints), then the archive.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crdt_model::signed::EphemeralKind;
use crdt_model::{DeviceId, DocId};
use peer::StoreError;
use peer::net::{Conn, NetError, Transport};
use peer::sync::engine::{CloseReason, Engine, Event};
use peer::sync::protocol::Frame;
use serde::Serialize;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::{AbortOnDropHandle, TaskTracker};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::{JoinError, Outgoing, RelayStore};
use crate::{Archive, DocChange};

/// How long shutdown waits for connection tasks to end.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the store thread looks for idle time to compact and checkpoint.
const UPKEEP_EVERY: Duration = Duration::from_secs(1);

/// Why the relay did not start, or a request to it failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The iroh endpoint could not start.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The HTTP listener failed.
    #[error("HTTP listener: {0}")]
    Http(#[source] std::io::Error),
    /// The relay is stopping or stopped.
    #[error("the relay has stopped")]
    Stopped,
}

/// What the relay says about itself at `GET /info`.
#[derive(Debug, Clone, Serialize)]
pub struct Info {
    /// Its iroh endpoint id (device key), hex.
    pub id: String,
    /// Direct UDP addresses of its iroh endpoint.
    pub addrs: Vec<String>,
    /// The HTTP URL members use (what `flyt relay add` is given).
    pub url: String,
    /// Its iroh relay (NAT traversal) URL.
    pub relay_url: String,
    /// The relay's version.
    pub version: &'static str,
}

/// Something that happened, for observers (tests wait on these instead of sleeping).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RelayEvent {
    /// A document's changes from a peer (or a join) are durable.
    Changed(DocId),
    /// A device's session is up and allowed.
    PeerUp(DeviceId),
    /// A device's session ended (closed by either side, or refused).
    PeerDown(DeviceId),
}

type Job = Box<dyn FnOnce(&mut RelayStore) + Send>;

enum Cmd {
    Up {
        peer: DeviceId,
        session: u64,
        tx: mpsc::Sender<Frame>,
    },
    Frame(DeviceId, u64, Frame),
    Down {
        peer: DeviceId,
        session: u64,
    },
    Join {
        bytes: Vec<u8>,
        reply: oneshot::Sender<Result<DocId, JoinError>>,
    },
    Call(Job),
    Upkeep,
    Stop,
}

/// A cheap, cloneable handle on the running relay: its identity, metrics, the store thread.
#[derive(Clone)]
pub struct RelayHandle {
    cmd: mpsc::UnboundedSender<Cmd>,
    events: broadcast::Sender<RelayEvent>,
    /// The relay's counters.
    pub metrics: Arc<Metrics>,
    /// What `/info` reports.
    pub info: Arc<Info>,
    /// The configuration it runs with.
    pub config: Arc<Config>,
    /// The archive, if one is attached.
    pub archive: Option<Arc<dyn Archive>>,
}

impl std::fmt::Debug for RelayHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayHandle")
            .field("id", &self.info.id)
            .finish_non_exhaustive()
    }
}

static SESSIONS: AtomicU64 = AtomicU64::new(1);

impl RelayHandle {
    /// Starts a sync session for an authenticated device (any framing). Frames for it arrive
    /// on the returned receiver, which closes when the relay ends the session (not allowed,
    /// too slow, stopping). Dropping the [`Session`] ends it.
    pub fn open(&self, peer: DeviceId) -> Result<(Session, mpsc::Receiver<Frame>), RelayError> {
        let session = SESSIONS.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(self.config.send_queue);
        self.cmd
            .send(Cmd::Up { peer, session, tx })
            .map_err(|_| RelayError::Stopped)?;
        Metrics::add(&self.metrics.connections_total, 1);
        Metrics::add(&self.metrics.connections, 1);
        Ok((
            Session {
                peer,
                id: session,
                cmd: self.cmd.clone(),
                metrics: self.metrics.clone(),
            },
            rx,
        ))
    }

    /// Runs `f` on the store thread (reads for the archive's catch-up, tests).
    pub async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut RelayStore) -> R + Send + 'static,
    ) -> Result<R, RelayError> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |s| {
            let _ = tx.send(f(s));
        });
        self.cmd
            .send(Cmd::Call(job))
            .map_err(|_| RelayError::Stopped)?;
        rx.await.map_err(|_| RelayError::Stopped)
    }

    /// Takes a workspace document (see [`RelayStore::join`]) and re-checks every session.
    pub async fn join(&self, bytes: Vec<u8>) -> Result<Result<DocId, JoinError>, RelayError> {
        let (reply, rx) = oneshot::channel();
        self.cmd
            .send(Cmd::Join { bytes, reply })
            .map_err(|_| RelayError::Stopped)?;
        rx.await.map_err(|_| RelayError::Stopped)
    }

    /// Observe what happens.
    pub fn subscribe(&self) -> broadcast::Receiver<RelayEvent> {
        self.events.subscribe()
    }
}

/// One device's sync session with the relay. Dropping it ends the session.
#[derive(Debug)]
pub struct Session {
    peer: DeviceId,
    id: u64,
    cmd: mpsc::UnboundedSender<Cmd>,
    metrics: Arc<Metrics>,
}

impl Session {
    /// The device.
    pub fn peer(&self) -> DeviceId {
        self.peer
    }

    /// Hands a frame the device sent to the engine.
    pub fn frame(&self, f: Frame) -> Result<(), RelayError> {
        Metrics::add(&self.metrics.frames_received, 1);
        self.cmd
            .send(Cmd::Frame(self.peer, self.id, f))
            .map_err(|_| RelayError::Stopped)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.metrics.connections.fetch_sub(1, Ordering::Relaxed);
        let _ = self.cmd.send(Cmd::Down {
            peer: self.peer,
            session: self.id,
        });
    }
}

/// The running relay. Call [`Relay::shutdown`] to stop it cleanly.
pub struct Relay {
    handle: RelayHandle,
    http_addr: SocketAddr,
    transport: Arc<Transport>,
    cancel: CancellationToken,
    tasks: TaskTracker,
    store_thread: Option<std::thread::JoinHandle<()>>,
    _accept: AbortOnDropHandle<()>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("id", &self.handle.info.id)
            .field("http", &self.http_addr)
            .finish_non_exhaustive()
    }
}

/// What an embedder adds to the relay: an archive and more HTTP routes.
#[derive(Default)]
pub struct Extensions {
    /// Receives every document change (see [`Archive`]).
    pub archive: Option<Arc<dyn Archive>>,
    /// Builds routes merged into the relay's router (e.g. `/api`, `/sync`).
    #[allow(clippy::type_complexity)]
    pub routes: Option<Box<dyn FnOnce(&crate::http::AppState) -> axum::Router + Send>>,
}

impl std::fmt::Debug for Extensions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Extensions")
            .field("archive", &self.archive.is_some())
            .field("routes", &self.routes.is_some())
            .finish()
    }
}

impl Relay {
    /// Opens the store, binds the iroh endpoint on `config.iroh_bind` and the HTTP server on
    /// `config.listen` (port 0 picks one: see [`Relay::http_addr`]), and starts serving.
    pub async fn start(mut config: Config, ext: Extensions) -> Result<Relay, RelayError> {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(RelayError::Http)?;
        let http_addr = listener.local_addr().map_err(RelayError::Http)?;
        config.listen = http_addr;
        let mut store = RelayStore::open(&config.data_dir, config.allowed_workspaces())?;
        store.archiving(ext.archive.is_some());
        // With iroh's relay transport: the endpoint also makes its own `/relay` its home relay
        // (below, once that listens), so nodes with no direct path (`--relay-only`) reach it.
        let transport =
            Arc::new(Transport::bind_relaying(store.secret(), config.iroh_bind, &[]).await?);
        let url = config.public_url();
        let info = Info {
            id: transport.id().to_string(),
            addrs: transport
                .addr()
                .addrs
                .iter()
                .map(|a| a.to_string())
                .collect(),
            relay_url: format!("{url}/relay"),
            url,
            version: crate::VERSION,
        };
        let metrics = Arc::new(Metrics::default());
        let (cmd, rx) = mpsc::unbounded_channel();
        let (events, _) = broadcast::channel(4096);
        let handle = RelayHandle {
            cmd,
            events,
            metrics,
            info: Arc::new(info),
            config: Arc::new(config),
            archive: ext.archive,
        };
        let store_thread = std::thread::Builder::new()
            .name("flyt-relay-store".into())
            .spawn({
                let handle = handle.clone();
                move || store_thread(store, rx, handle)
            })
            .map_err(|e| RelayError::Store(StoreError::Corrupt(format!("store thread: {e}"))))?;
        if let Some(a) = &handle.archive {
            a.started(&handle);
        }
        let cancel = CancellationToken::new();
        let tasks = TaskTracker::new();

        let accept = {
            let (transport, handle, cancel, tasks) = (
                transport.clone(),
                handle.clone(),
                cancel.clone(),
                tasks.clone(),
            );
            AbortOnDropHandle::new(tokio::spawn(async move {
                while let Some(Some(conn)) = cancel.run_until_cancelled(transport.accept()).await {
                    match conn {
                        Ok(conn) => {
                            let open = handle.metrics.connections.load(Ordering::Relaxed);
                            if open as usize >= handle.config.max_connections {
                                Metrics::add(&handle.metrics.over_capacity, 1);
                                let (r, _w) = conn.split();
                                r.close("the relay is at capacity");
                                continue;
                            }
                            let span = info_span!("conn", peer = %conn.remote);
                            tasks.spawn(
                                serve_conn(conn, handle.clone(), cancel.child_token())
                                    .instrument(span),
                            );
                        }
                        Err(e) => debug!("incoming connection failed: {e:#}"),
                    }
                }
            }))
        };
        {
            let (cmd, cancel) = (handle.cmd.clone(), cancel.clone());
            tasks.spawn(async move {
                let mut tick = tokio::time::interval(UPKEEP_EVERY);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                while cancel.run_until_cancelled(tick.tick()).await.is_some() {
                    if cmd.send(Cmd::Upkeep).is_err() {
                        return;
                    }
                }
            });
        }
        let state = crate::http::AppState {
            relay: handle.clone(),
        };
        let mut router = crate::http::routes(state.clone());
        if let Some(routes) = ext.routes {
            router = router.merge(routes(&state));
        }
        let router = crate::http::layered(router, &state);
        // One port for both: `/relay` connections go to iroh's relay service (crate::nat).
        let listener = crate::nat::SplitListener::new(
            listener,
            crate::nat::service(handle.clone(), transport.id()),
            cancel.clone(),
        )
        .map_err(RelayError::Http)?;
        {
            let cancel = cancel.clone();
            tasks.spawn(async move {
                let served = axum::serve(listener, router)
                    .with_graceful_shutdown(cancel.cancelled_owned())
                    .await;
                if let Err(e) = served {
                    warn!("HTTP server failed: {e}");
                }
            });
        }
        transport.add_relay(&handle.info.url, None).await?;
        info!(id = %transport.id(), http = %http_addr, iroh = ?handle.info.addrs, "relay started");
        Ok(Relay {
            handle,
            http_addr,
            transport,
            cancel,
            tasks,
            store_thread: Some(store_thread),
            _accept: accept,
        })
    }

    /// A handle for routes, sessions and observers.
    pub fn handle(&self) -> &RelayHandle {
        &self.handle
    }

    /// Where the HTTP server listens.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The iroh endpoint's id and direct addresses.
    pub fn peer_addr(&self) -> peer::net::PeerAddr {
        self.transport.addr()
    }

    /// Stops in order: stop accepting, drain, close the endpoint, flush storage, flush the
    /// archive.
    pub async fn shutdown(mut self) {
        info!("relay stopping");
        self.cancel.cancel();
        self.tasks.close();
        if tokio::time::timeout(DRAIN_TIMEOUT, self.tasks.wait())
            .await
            .is_err()
        {
            warn!("connections did not drain in {DRAIN_TIMEOUT:?}");
        }
        self.transport.close().await;
        let _ = self.handle.cmd.send(Cmd::Stop);
        if let Some(t) = self.store_thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        if let Some(a) = &self.handle.archive {
            a.shutdown().await;
        }
        info!("relay stopped");
    }
}

/// A token bucket: `rate` per second, up to `burst` at once.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: f64, burst: f64) -> Self {
        Bucket {
            rate,
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    fn take(&mut self, n: f64) -> bool {
        let now = Instant::now();
        let dt = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        if self.tokens < n {
            return false;
        }
        self.tokens -= n;
        true
    }
}

/// The per-connection rate limit: frames and bytes, each a token bucket.
#[derive(Debug)]
pub(crate) struct RateLimit {
    frames: Bucket,
    bytes: Bucket,
}

impl RateLimit {
    pub(crate) fn new(c: &Config) -> Self {
        RateLimit {
            frames: Bucket::new(c.frames_per_sec as f64, c.frame_burst as f64),
            bytes: Bucket::new(c.bytes_per_sec as f64, c.byte_burst as f64),
        }
    }

    /// Whether one more frame of about `size` bytes is within the limit.
    pub(crate) fn allow(&mut self, size: usize) -> bool {
        self.frames.take(1.0) && self.bytes.take(size as f64)
    }
}

/// About how many bytes a frame occupies on the wire (for the byte rate limit).
pub(crate) fn frame_size(f: &Frame) -> usize {
    match f {
        Frame::Sync { data, .. } => 24 + data.len(),
        Frame::Hello { have, .. } => 8 + 48 * have.len(),
        Frame::Have { docs } => 8 + 48 * docs.len(),
        Frame::Join { ticket, cert } => 8 + ticket.len() + cert.len(),
        Frame::Refused { reason } => 8 + reason.len(),
        Frame::Ephemeral { signed } => 8 + signed.len(),
        Frame::Peers { peers } => {
            8 + peers
                .iter()
                .map(|p| 48 + p.addrs.iter().map(String::len).sum::<usize>())
                .sum::<usize>()
        }
        _ => 24,
    }
}

async fn serve_conn(conn: Conn, handle: RelayHandle, cancel: CancellationToken) {
    let peer = conn.remote;
    let (mut reader, mut writer) = conn.split();
    let Ok((session, mut outgoing)) = handle.open(peer) else {
        reader.close("the relay is stopping");
        return;
    };
    let mut writer_task = tokio::spawn(async move {
        while let Some(f) = outgoing.recv().await {
            if writer.send(&f).await.is_err() {
                return;
            }
        }
        // The relay ended the session (not allowed, too slow, stopping): end our stream so the
        // peer reads everything sent before the connection closes.
        writer.finish().await;
    });
    let mut limit = RateLimit::new(&handle.config);
    let reason = loop {
        let next = tokio::select! {
            biased;
            _ = cancel.cancelled() => break "the relay is stopping",
            _ = &mut writer_task => break "closed by the relay",
            next = reader.next() => next,
        };
        match next {
            Ok(Some(f)) => {
                if !limit.allow(frame_size(&f)) {
                    Metrics::add(&handle.metrics.rate_limited, 1);
                    warn!("rate limit exceeded: closing");
                    break "rate limit exceeded";
                }
                if session.frame(f).is_err() {
                    break "the relay is stopping";
                }
            }
            Ok(None) => break "bye",
            Err(e @ NetError::Frame { .. }) => {
                Metrics::add(&handle.metrics.frames_refused, 1);
                warn!("refused a frame: {e}");
                break "bad frame";
            }
            Err(e) => {
                debug!("connection ended: {e}");
                break "bye";
            }
        }
    };
    drop(session);
    writer_task.abort();
    reader.close(reason);
}

struct Live {
    /// peer -> (session id, frames to send)
    sessions: HashMap<DeviceId, (u64, mpsc::Sender<Frame>)>,
    /// (workspace, device) -> the last presence note that connected device sent (when, bytes),
    /// told to members' sessions as they come up so they need not wait for its next heartbeat.
    presence: HashMap<(DocId, DeviceId), (i64, Vec<u8>)>,
}

impl Live {
    /// Hands an ephemeral note to `to`'s session if its queue is more than half free. Notes are
    /// droppable and sync is not: a note never blocks, never takes the room sync needs, and a
    /// full queue drops the note rather than ending the session.
    fn offer_note(&self, to: &DeviceId, signed: &[u8]) -> bool {
        let Some((_, tx)) = self.sessions.get(to) else {
            return false;
        };
        tx.capacity() * 2 > tx.max_capacity()
            && tx
                .try_send(Frame::Ephemeral {
                    signed: signed.to_vec(),
                })
                .is_ok()
    }
}

fn store_thread(mut store: RelayStore, mut rx: mpsc::UnboundedReceiver<Cmd>, h: RelayHandle) {
    let mut engine = Engine::new();
    let mut live = Live {
        sessions: HashMap::new(),
        presence: HashMap::new(),
    };
    let (mut busy, mut dirty) = (false, false);
    let m = h.metrics.clone();
    m.documents
        .store(store.documents() as u64, Ordering::Relaxed);
    m.workspaces
        .store(store.served().len() as u64, Ordering::Relaxed);
    let report = |changes: Vec<DocChange>| {
        for c in changes {
            Metrics::add(&m.doc_changes, 1);
            let _ = h.events.send(RelayEvent::Changed(c.doc));
            if let Some(a) = &h.archive {
                a.changed(c);
            }
        }
    };
    // Runs one event; sessions that cannot keep up are ended and their states saved.
    let run = |store: &mut RelayStore, engine: &mut Engine, live: &mut Live, ev: Event| {
        let mut queue = vec![ev];
        while let Some(ev) = queue.pop() {
            let handled = match store.handle(engine, ev) {
                Ok(h) => h,
                Err(e) => {
                    Metrics::add(&m.store_errors, 1);
                    warn!("sync event failed: {e:#}");
                    continue;
                }
            };
            for o in handled.out {
                match o {
                    Outgoing::Send(peer, f) => {
                        let Some((_, tx)) = live.sessions.get(&peer) else {
                            continue;
                        };
                        let size = match &f {
                            Frame::Sync { data, .. } => data.len() as u64,
                            _ => 0,
                        };
                        match tx.try_send(f) {
                            Ok(()) => Metrics::add(&m.bytes_sent, size),
                            Err(mpsc::error::TrySendError::Full(_)) => {
                                Metrics::add(&m.slow_peers, 1);
                                warn!(%peer, "peer does not keep up: ending its session");
                                live.sessions.remove(&peer);
                                queue.push(Event::Disconnected(peer));
                            }
                            Err(mpsc::error::TrySendError::Closed(_)) => {}
                        }
                    }
                    Outgoing::Close(peer, reason) => {
                        if reason == CloseReason::NotAllowed {
                            Metrics::add(&m.refused_peers, 1);
                        }
                        debug!(%peer, ?reason, "closing");
                        // Dropping the sender ends the session's writer, which closes the link.
                        live.sessions.remove(&peer);
                    }
                }
            }
            report(handled.changes);
            if let Some(a) = &h.archive {
                for (peer, doc, state) in handled.states {
                    a.sync_state_saved(peer, doc, state);
                }
            }
        }
        m.documents
            .store(store.documents() as u64, Ordering::Relaxed);
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
        // would otherwise leave no interval idle for upkeep.
        if !matches!(cmd, Cmd::Upkeep | Cmd::Frame(_, _, Frame::Ephemeral { .. })) {
            busy = true;
        }
        match cmd {
            Cmd::Up { peer, session, tx } => {
                dirty = true;
                if live.sessions.insert(peer, (session, tx)).is_some() {
                    // A newer session replaces an older one: end the old cleanly first.
                    run(
                        &mut store,
                        &mut engine,
                        &mut live,
                        Event::Disconnected(peer),
                    );
                }
                run(&mut store, &mut engine, &mut live, Event::Connected(peer));
                if live.sessions.contains_key(&peer) {
                    let _ = h.events.send(RelayEvent::PeerUp(peer));
                    // Who else is around: the last presence of the members' devices connected.
                    let now = peer::now_ms();
                    let mut told = 0;
                    for ((ws, from), (at, signed)) in &live.presence {
                        if *from != peer
                            && peer::note_is_recent(*at, now)
                            && store.is_member(*ws, &peer)
                            && store.is_member(*ws, from)
                            && live.offer_note(&peer, signed)
                        {
                            told += 1;
                        }
                    }
                    Metrics::add(&m.ephemeral_forwarded, told);
                }
            }
            // A replaced session's frames belong to a session the engine has ended.
            Cmd::Frame(peer, session, _)
                if live
                    .sessions
                    .get(&peer)
                    .is_none_or(|(id, _)| *id != session) => {}
            // Typing and presence: checked, passed on to the other members' devices connected,
            // never stored and never seen by the engine.
            Cmd::Frame(peer, _, Frame::Ephemeral { signed }) => {
                match store.check_ephemeral(&peer, &signed, peer::now_ms()) {
                    Ok(note) => {
                        let sent = store
                            .member_devices(note.workspace)
                            .iter()
                            .filter(|to| **to != peer && live.offer_note(to, &signed))
                            .count();
                        Metrics::add(&m.ephemeral_forwarded, sent as u64);
                        if let EphemeralKind::Presence { .. } = note.kind {
                            live.presence
                                .insert((note.workspace, peer), (note.at_ms, signed));
                        }
                    }
                    Err(e) => {
                        Metrics::add(&m.ephemeral_refused, 1);
                        debug!(%peer, "refused an ephemeral note: {e}");
                    }
                }
            }
            Cmd::Frame(peer, _, f) => {
                dirty = true;
                if let Frame::Sync { data, .. } = &f {
                    Metrics::add(&m.bytes_received, data.len() as u64);
                }
                run(&mut store, &mut engine, &mut live, Event::Frame(peer, f));
            }
            Cmd::Down { peer, session } => {
                if live
                    .sessions
                    .get(&peer)
                    .is_some_and(|(id, _)| *id == session)
                {
                    live.sessions.remove(&peer);
                }
                if engine.peers().any(|p| *p == peer) && !live.sessions.contains_key(&peer) {
                    dirty = true;
                    run(
                        &mut store,
                        &mut engine,
                        &mut live,
                        Event::Disconnected(peer),
                    );
                }
                if !live.sessions.contains_key(&peer) {
                    live.presence.retain(|(_, d), _| *d != peer);
                }
                let _ = h.events.send(RelayEvent::PeerDown(peer));
            }
            Cmd::Join { bytes, reply } => {
                dirty = true;
                let result = store.join(&bytes);
                let ok = result.as_ref().ok().map(|(ws, _)| *ws);
                let _ = reply.send(result.map(|(ws, change)| {
                    report(change.into_iter().collect());
                    ws
                }));
                if let Some(ws) = ok {
                    Metrics::add(&m.joins, 1);
                    info!(%ws, "workspace joined");
                    run(&mut store, &mut engine, &mut live, Event::PolicyChanged);
                }
                m.workspaces
                    .store(store.served().len() as u64, Ordering::Relaxed);
            }
            Cmd::Call(job) => job(&mut store),
            Cmd::Upkeep => {
                m.workspaces
                    .store(store.served().len() as u64, Ordering::Relaxed);
                let now = peer::now_ms();
                live.presence
                    .retain(|_, (at, _)| peer::note_is_recent(*at, now));
                // A whole interval without work is idle time.
                if !std::mem::take(&mut busy)
                    && std::mem::take(&mut dirty)
                    && let Err(e) = store.maintain()
                {
                    warn!("storage upkeep failed: {e:#}");
                }
            }
            Cmd::Stop => break,
        }
    }
    // Save every sync state for the next start, then flush.
    let peers: Vec<DeviceId> = engine.peers().copied().collect();
    for p in peers {
        run(&mut store, &mut engine, &mut live, Event::Disconnected(p));
    }
    if let Err(e) = store.maintain() {
        warn!("storage upkeep at shutdown failed: {e:#}");
    }
}
