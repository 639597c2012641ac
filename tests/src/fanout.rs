//! Light receivers for `flyt-bench relay`: member devices that cost as little as possible, so
//! the relay's fan-out and memory are measured rather than the receivers'.
//!
//! Each receiver is what a member's node is on the wire, minus storage: an iroh endpoint bound
//! with the device's key by [`peer::net::Transport`] (no relay transport, no address lookup,
//! 127.0.0.1), one connection to the relay with Flyt's ALPN, and `peer`'s sync
//! [`Engine`] over [`MemHost`], an in-memory [`Host`]. A message counts as delivered when the
//! engine applied the relay's sync message and the message is a key of the receiver's bucket
//! document; the first receiver of each message also reads it with `crdt-model`'s view and
//! requires it verified (signed by a member's device).
//!
//! Receive times are wall-clock nanoseconds ([`clock_ns`], `CLOCK_REALTIME`): one clock for
//! every process of the machine, so the bench process (which posts) and the receivers' process
//! compare them directly (both read the same kernel clock; only a step of the clock during a
//! run, e.g. by an NTP client, would distort a figure, and the bench refuses negative ones).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use automerge::{Automerge, ROOT, ReadDoc};
use crdt_model::workspace::WorkspaceView;
use crdt_model::{DeviceId, DocId, MessageId};
use peer::net::{PeerAddr, Transport};
use peer::sync::engine::{Action, Engine, Event, Host};
use peer::sync::protocol::{DocRef, Frame};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

/// Nanoseconds since the Unix epoch on the machine's clock, comparable between processes of
/// one machine (unlike [`std::time::Instant`], whose value is private to its process).
pub fn clock_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Raises this process's open-file limit to its hard limit (each receiver's endpoint holds a
/// socket); returns the soft limit now in force (`None`: unlimited).
pub fn raise_nofile() -> Result<Option<u64>, rustix::io::Errno> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current < lim.maximum {
        lim.current = lim.maximum;
        setrlimit(Resource::Nofile, lim)?;
    }
    Ok(getrlimit(Resource::Nofile).current)
}

/// The documents of one receiver, in memory, and the policy of a member's node that talks to
/// one relay only: the relay may connect and share the workspace's documents; nothing else.
#[derive(Debug)]
pub struct MemHost {
    relay: DeviceId,
    workspace: DocId,
    docs: HashMap<DocId, (DocRef, Automerge)>,
    states: HashMap<DocId, Vec<u8>>,
}

impl MemHost {
    /// A host holding the workspace document (`doc`, with id `workspace`), talking to `relay`.
    pub fn new(relay: DeviceId, workspace: DocId, doc: Automerge) -> Self {
        let mut docs = HashMap::new();
        docs.insert(workspace, (DocRef::Workspace { id: workspace }, doc));
        MemHost {
            relay,
            workspace,
            docs,
            states: HashMap::new(),
        }
    }

    /// Keeps a sync state the engine saved (on disconnect), as a node's storage would.
    pub fn save_state(&mut self, doc: DocId, state: Vec<u8>) {
        self.states.insert(doc, state);
    }

    /// Whether `doc` is a bucket held here.
    pub fn is_bucket(&self, doc: DocId) -> bool {
        matches!(self.docs.get(&doc), Some((DocRef::Bucket { .. }, _)))
    }

    /// The document, read-only.
    pub fn get(&self, doc: DocId) -> Option<&Automerge> {
        self.docs.get(&doc).map(|(_, d)| d)
    }

    fn rank(r: &DocRef) -> (u8, std::cmp::Reverse<String>) {
        match r {
            DocRef::Workspace { .. } => (0, std::cmp::Reverse(String::new())),
            DocRef::Channel { .. } | DocRef::Dm { .. } => (1, std::cmp::Reverse(String::new())),
            DocRef::Bucket { key, .. } => (2, std::cmp::Reverse(key.clone())),
        }
    }
}

impl Host for MemHost {
    fn doc(&mut self, id: DocId) -> Option<&mut Automerge> {
        self.docs.get_mut(&id).map(|(_, d)| d)
    }

    fn doc_ref(&mut self, id: DocId) -> Option<DocRef> {
        self.docs.get(&id).map(|(r, _)| r.clone())
    }

    fn create(&mut self, r: &DocRef) -> Option<&mut Automerge> {
        let id = r.id()?;
        let workspace = self.workspace;
        let (_, doc) = peer::docs::offered(r, |_| Some(workspace))?;
        let (_, d) = self.docs.entry(id).or_insert((r.clone(), doc));
        Some(d)
    }

    fn may_connect(&mut self, peer: &DeviceId) -> bool {
        *peer == self.relay
    }

    fn may_share(&mut self, peer: &DeviceId, _doc: DocId) -> bool {
        *peer == self.relay
    }

    fn may_accept(&mut self, peer: &DeviceId, r: &DocRef) -> bool {
        *peer == self.relay
            && match r {
                DocRef::Workspace { id } => *id == self.workspace,
                DocRef::Channel { workspace, .. } => *workspace == self.workspace,
                DocRef::Bucket { channel, .. } => {
                    matches!(self.docs.get(channel), Some((DocRef::Channel { .. }, _)))
                }
                // Public channels only: a DM never involves these receivers.
                DocRef::Dm { .. } => false,
            }
    }

    fn offer(&mut self, peer: &DeviceId) -> Vec<DocRef> {
        if *peer != self.relay {
            return Vec::new();
        }
        let mut refs: Vec<DocRef> = self.docs.values().map(|(r, _)| r.clone()).collect();
        refs.sort_by_key(Self::rank);
        refs
    }

    fn saved_state(&mut self, _peer: &DeviceId, doc: DocId) -> Option<Vec<u8>> {
        self.states.get(&doc).cloned()
    }
}

/// What the receivers tell their supervisor.
#[derive(Debug)]
pub enum Report {
    /// A receiver's connection to the relay is up.
    Connected,
    /// A receiver holds message `id` in its bucket document since `at_ns` ([`clock_ns`]).
    Got(MessageId, u64),
    /// A receiver stopped before it was told to (its connection ended, or a check failed).
    Failed(String),
}

/// What every receiver of one run shares.
#[derive(Debug)]
pub struct Shared {
    /// The relay to dial.
    pub relay: PeerAddr,
    /// The workspace document's id.
    pub workspace: DocId,
    /// Its bytes (each receiver loads its own copy).
    pub workspace_bytes: Vec<u8>,
    /// The verified view of the workspace, to check the messages received.
    pub view: WorkspaceView,
    /// Messages already read and verified by one receiver.
    pub verified: Mutex<HashSet<MessageId>>,
    /// Signalled on every frame any receiver gets (to tell when connect-time sync settled).
    pub activity: Notify,
    /// Where receivers report.
    pub reports: mpsc::UnboundedSender<Report>,
    /// Stops every receiver.
    pub cancel: CancellationToken,
}

/// Dials the relay as the device with secret `secret` and syncs until cancelled. Reports
/// through `shared.reports`; returns after closing its endpoint.
pub async fn receiver(secret: [u8; 32], shared: Arc<Shared>) {
    let transport = match Transport::bind(secret, SocketAddr::from(([127, 0, 0, 1], 0))).await {
        Ok(t) => t,
        Err(e) => {
            let _ = shared.reports.send(Report::Failed(format!("bind: {e:#}")));
            return;
        }
    };
    if let Err(e) = run_receiver(&transport, &shared).await
        && !shared.cancel.is_cancelled()
    {
        let _ = shared.reports.send(Report::Failed(e));
    }
    transport.close().await;
}

async fn run_receiver(transport: &Transport, shared: &Shared) -> Result<(), String> {
    let doc = Automerge::load(&shared.workspace_bytes).map_err(|e| e.to_string())?;
    let mut host = MemHost::new(shared.relay.id, shared.workspace, doc);
    let mut engine = Engine::new();
    let conn = transport
        .dial(&shared.relay, Duration::from_secs(30))
        .await
        .map_err(|e| format!("dial: {e:#}"))?;
    let relay = conn.remote;
    let (mut reader, mut writer) = conn.split();
    let _ = shared.reports.send(Report::Connected);
    let mut pending = Some(Event::Connected(relay));
    loop {
        for action in pending
            .take()
            .map(|event| engine.handle(&mut host, event))
            .unwrap_or_default()
        {
            match action {
                Action::Send(_, f) => writer.send(&f).await.map_err(|e| format!("send: {e:#}"))?,
                Action::Changed { doc, patches, .. } if host.is_bucket(doc) => {
                    let at = clock_ns();
                    for id in crdt_model::bucket::touched(&patches) {
                        check(&host, doc, id, shared)?;
                        let _ = shared.reports.send(Report::Got(id, at));
                    }
                }
                Action::Changed { .. } => {}
                Action::SaveState(_, doc, state) => host.save_state(doc, state),
                Action::Close(_, reason) => {
                    writer.close("closed by the engine");
                    return Err(format!("the engine closed the connection: {reason:?}"));
                }
            }
        }
        let next = tokio::select! {
            _ = shared.cancel.cancelled() => return Ok(()),
            next = reader.next() => next,
        };
        shared.activity.notify_one();
        match next {
            // Presence and typing: nothing to sync.
            Ok(Some(Frame::Ephemeral { .. })) => {}
            Ok(Some(f)) => pending = Some(Event::Frame(relay, f)),
            Ok(None) => return Err("the relay ended the connection".into()),
            Err(e) => return Err(format!("read: {e:#}")),
        }
    }
}

/// The message is a key of the bucket document; the first receiver to hold it also reads it
/// through `crdt-model`'s view and requires it signed by a member's device.
fn check(host: &MemHost, doc: DocId, id: MessageId, shared: &Shared) -> Result<(), String> {
    let d = host.get(doc).ok_or("bucket gone")?;
    if d.get(ROOT, id.to_string()).ok().flatten().is_none() {
        return Err(format!("message {id} touched but not held"));
    }
    let first = shared.verified.lock().map_err(|_| "poisoned")?.insert(id);
    if first {
        let channel = match host.docs.get(&doc) {
            Some((DocRef::Bucket { channel, .. }, _)) => *channel,
            _ => return Err("not a bucket".into()),
        };
        let m = crdt_model::bucket::message(d, channel, id, &shared.view)
            .ok_or_else(|| format!("message {id} has no readable header"))?;
        if !m.verified {
            return Err(format!("message {id} does not verify"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_reads_nanoseconds_since_the_epoch() {
        let a = clock_ns();
        let b = clock_ns();
        // After 2020-01-01, and not going back between two reads (no clock step expected).
        assert!(a > 1_577_836_800_000_000_000 && b >= a);
    }
}
