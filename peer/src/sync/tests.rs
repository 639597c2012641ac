//! The engine between simulated nodes: per-link FIFO queues (a QUIC stream is ordered), random
//! interleaving across links, partitions, restarts, all seeded and replayable. Frames go
//! through the real encoder and [`FrameDecoder`].

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use automerge::{Automerge, ReadDoc};
use crdt_model::bucket::{self, NewPost};
use crdt_model::channel::{self, BucketKey};
use crdt_model::{DeviceId, DocId, Identity, MessageId, device_actor, workspace};
use proptest::prelude::*;

use super::engine::{Action, CloseReason, Engine, Event, Host};
use super::protocol::{DocRef, Frame, FrameDecoder};

/// An in-memory host: documents in a map, membership as a set of devices.
struct MemHost {
    me: DeviceId,
    docs: BTreeMap<DocId, (DocRef, Automerge)>,
    members: BTreeSet<DeviceId>,
    /// Documents nobody else may see (a private channel's buckets, say).
    private: BTreeSet<DocId>,
    saved: HashMap<(DeviceId, DocId), Vec<u8>>,
}

impl MemHost {
    fn new(me: DeviceId, members: BTreeSet<DeviceId>) -> Self {
        MemHost {
            me,
            docs: BTreeMap::new(),
            members,
            private: BTreeSet::new(),
            saved: HashMap::new(),
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
        let doc = Automerge::new().with_actor(device_actor(&self.me));
        Some(&mut self.docs.entry(id).or_insert((r.clone(), doc)).1)
    }
    fn may_connect(&mut self, peer: &DeviceId) -> bool {
        self.members.contains(peer)
    }
    fn may_share(&mut self, peer: &DeviceId, doc: DocId) -> bool {
        self.members.contains(peer) && !self.private.contains(&doc)
    }
    fn may_accept(&mut self, peer: &DeviceId, _r: &DocRef) -> bool {
        self.members.contains(peer)
    }
    fn offer(&mut self, _peer: &DeviceId) -> Vec<DocRef> {
        // Workspace and channel documents first, then buckets newest first.
        let mut v: Vec<DocRef> = self.docs.values().map(|(r, _)| r.clone()).collect();
        v.sort_by_key(|r| match r {
            DocRef::Workspace { .. } => (0, String::new()),
            DocRef::Channel { .. } | DocRef::Dm { .. } => (1, String::new()),
            DocRef::Bucket { key, .. } => (2, format!("{:>20}", u64::MAX - key_rank(key))),
        });
        v
    }
    fn saved_state(&mut self, peer: &DeviceId, doc: DocId) -> Option<Vec<u8>> {
        self.saved.get(&(*peer, doc)).cloned()
    }
}

fn key_rank(key: &str) -> u64 {
    let k: BucketKey = key.parse().expect("valid key");
    (k.day as u64) << 16 | u64::from(k.part)
}

struct Node {
    who: Identity,
    host: MemHost,
    engine: Engine,
    /// Documents whose changes arrived from peers, in order.
    changed: Vec<DocId>,
}

#[derive(Default)]
struct Net {
    nodes: Vec<Node>,
    /// (from, to) -> bytes in flight, in order.
    links: BTreeMap<(usize, usize), VecDeque<Vec<u8>>>,
    decoders: BTreeMap<(usize, usize), FrameDecoder>,
    up: BTreeSet<(usize, usize)>,
    bytes: usize,
    closed: Vec<(usize, CloseReason)>,
}

const WS: DocId = DocId([9; 16]);
const CH: DocId = DocId([8; 16]);

impl Net {
    /// `n` nodes, all members; node 0 holds the workspace and channel documents.
    fn new(n: usize) -> Net {
        let ids: Vec<Identity> = (0..n)
            .map(|i| {
                Identity::from_secrets([i as u8 + 1; 32], [i as u8 + 101; 32], format!("p{i}"))
            })
            .collect();
        let members: BTreeSet<DeviceId> = ids.iter().map(Identity::device_id).collect();
        let mut net = Net::default();
        for who in ids {
            let host = MemHost::new(who.device_id(), members.clone());
            net.nodes.push(Node {
                who,
                host,
                engine: Engine::new(),
                changed: Vec::new(),
            });
        }
        let owner = &net.nodes[0].who;
        let mut ws = Automerge::new().with_actor(device_actor(&owner.device_id()));
        workspace::create(&mut ws, owner, "acme", [1; 16], 1).unwrap();
        let mut ch = channel::init(WS, CH).unwrap();
        ch.set_actor(device_actor(&owner.device_id()));
        let h = &mut net.nodes[0].host;
        h.docs.insert(WS, (DocRef::Workspace { id: WS }, ws));
        h.docs.insert(
            CH,
            (
                DocRef::Channel {
                    id: CH,
                    workspace: WS,
                },
                ch,
            ),
        );
        net
    }

    fn device(&self, i: usize) -> DeviceId {
        self.nodes[i].who.device_id()
    }

    fn index(&self, d: &DeviceId) -> usize {
        self.nodes
            .iter()
            .position(|n| n.who.device_id() == *d)
            .expect("known device")
    }

    fn event(&mut self, i: usize, e: Event) {
        let node = &mut self.nodes[i];
        let actions = node.engine.handle(&mut node.host, e);
        self.run(i, actions);
    }

    fn run(&mut self, i: usize, actions: Vec<Action>) {
        let mut policy = false;
        for a in actions {
            match a {
                Action::Send(to, frame) => {
                    let j = self.index(&to);
                    if self.up.contains(&(i, j)) {
                        let bytes = frame.encode();
                        self.bytes += bytes.len();
                        self.links.entry((i, j)).or_default().push_back(bytes);
                    }
                }
                Action::Changed { doc, .. } => {
                    self.nodes[i].changed.push(doc);
                    // As the runtimes do: a workspace change may change who sees what.
                    policy |= doc == WS;
                }
                Action::SaveState(peer, doc, state) => {
                    self.nodes[i].host.saved.insert((peer, doc), state);
                }
                Action::Close(peer, reason) => {
                    let j = self.index(&peer);
                    self.closed.push((i, reason));
                    self.cut(i, j);
                }
            }
        }
        if policy {
            self.event(i, Event::PolicyChanged);
        }
    }

    fn connect(&mut self, i: usize, j: usize) {
        if self.up.contains(&(i, j)) {
            return;
        }
        self.up.insert((i, j));
        self.up.insert((j, i));
        let (di, dj) = (self.device(i), self.device(j));
        self.event(i, Event::Connected(dj));
        self.event(j, Event::Connected(di));
    }

    fn cut(&mut self, i: usize, j: usize) {
        if !self.up.remove(&(i, j)) {
            return;
        }
        self.up.remove(&(j, i));
        for k in [(i, j), (j, i)] {
            self.links.remove(&k);
            self.decoders.remove(&k);
        }
        let (di, dj) = (self.device(i), self.device(j));
        self.event(i, Event::Disconnected(dj));
        self.event(j, Event::Disconnected(di));
    }

    /// Delivers one queued frame on the `pick`-th busy link. False when nothing is in flight.
    fn step(&mut self, pick: usize) -> bool {
        let busy: Vec<(usize, usize)> = self
            .links
            .iter()
            .filter(|(_, q)| !q.is_empty())
            .map(|(k, _)| *k)
            .collect();
        if busy.is_empty() {
            return false;
        }
        let (i, j) = busy[pick % busy.len()];
        let bytes = self.links.get_mut(&(i, j)).unwrap().pop_front().unwrap();
        let dec = self.decoders.entry((i, j)).or_default();
        dec.push(&bytes);
        let frame = dec.next_frame().expect("valid frame").expect("whole frame");
        let from = self.device(i);
        self.event(j, Event::Frame(from, frame));
        true
    }

    fn settle(&mut self, rng: &mut u64) {
        for _ in 0..200_000 {
            *rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            if !self.step((*rng >> 33) as usize) {
                return;
            }
        }
        panic!("the network did not settle");
    }

    /// Node `i` posts into the bucket of `day`, creating it (deterministically) if needed.
    fn post(&mut self, i: usize, day: i64, n: u32) -> bool {
        let Some(bid) = self.write(i, day, n) else {
            return false;
        };
        self.event(i, Event::LocalChange(vec![CH, bid]));
        true
    }

    /// [`Net::post`] without telling the engine; the bucket written, if the node knows the
    /// channel.
    fn write(&mut self, i: usize, day: i64, n: u32) -> Option<DocId> {
        let node = &mut self.nodes[i];
        let key = BucketKey { day, part: 0 };
        let bid = bucket::bucket_id(CH, key);
        let Some((_, ch)) = node
            .host
            .docs
            .get_mut(&CH)
            .filter(|(_, d)| channel::is_channel(d, CH))
        else {
            return None; // does not know the channel (or its contents) yet
        };
        channel::add_bucket(ch, key, day * 86_400_000).unwrap();
        let dref = DocRef::Bucket {
            channel: CH,
            key: key.to_string(),
        };
        let (_, doc) = node.host.docs.entry(bid).or_insert_with(|| {
            let mut d = bucket::init(CH, key).unwrap();
            d.set_actor(device_actor(&node.who.device_id()));
            (dref, d)
        });
        let ts = day * 86_400_000 + i64::from(n);
        let mut random = [0u8; 10];
        random[..4].copy_from_slice(&n.to_be_bytes());
        random[4] = i as u8;
        let post = NewPost {
            channel: CH,
            id: MessageId::new(ts, random),
            ts_ms: ts,
            text: format!("m{n} from {i}"),
            mentions: vec![],
            reply_to: None,
            thread_root: None,
        };
        bucket::post(doc, &node.who, post).unwrap();
        Some(bid)
    }

    fn assert_converged(&self) {
        let first = &self.nodes[0].host.docs;
        for (k, node) in self.nodes.iter().enumerate() {
            let docs = &node.host.docs;
            assert_eq!(
                docs.keys().collect::<Vec<_>>(),
                first.keys().collect::<Vec<_>>(),
                "node {k} holds other documents"
            );
            for (id, (_, d)) in docs {
                let mut a = d.get_heads();
                let mut b = first[id].1.get_heads();
                a.sort();
                b.sort();
                assert_eq!(a, b, "node {k} differs on {id}");
            }
        }
    }
}

fn total_messages(net: &Net, i: usize) -> usize {
    net.nodes[i]
        .host
        .docs
        .values()
        .filter(|(r, _)| matches!(r, DocRef::Bucket { .. }))
        .map(|(_, d)| {
            d.keys(automerge::ROOT)
                .filter(|k| k.parse::<MessageId>().is_ok())
                .count()
        })
        .sum()
}

#[test]
fn a_new_device_gets_everything_newest_bucket_first() {
    let mut net = Net::new(2);
    for day in 0..5 {
        for n in 0..20 {
            net.post(0, day, n);
        }
    }
    net.connect(0, 1);
    net.settle(&mut 7);
    net.assert_converged();
    assert_eq!(total_messages(&net, 1), 100);
    // The first bucket whose changes arrived is the newest one.
    let newest = bucket::bucket_id(CH, BucketKey { day: 4, part: 0 });
    let first_bucket = net.nodes[1]
        .changed
        .iter()
        .find(|d| **d != WS && **d != CH)
        .copied();
    assert_eq!(first_bucket, Some(newest));
    // Workspace and channel documents came before any bucket.
    assert_eq!(&net.nodes[1].changed[..2], &[WS, CH]);
}

#[test]
fn live_changes_flow_both_ways_and_through_a_middle_node() {
    let mut net = Net::new(3);
    // A line: 0 - 1 - 2. Node 2 never talks to 0 directly.
    net.connect(0, 1);
    net.connect(1, 2);
    net.settle(&mut 1);
    assert!(
        net.post(2, 1, 1),
        "node 2 learned the channel through node 1"
    );
    net.post(0, 1, 2);
    net.settle(&mut 2);
    net.assert_converged();
    assert_eq!(total_messages(&net, 0), 2);
}

#[test]
fn a_hub_fans_out_to_peers_in_different_states() {
    // A star, as with a relay: node 0 in the middle, 1 to 5 only talk to it.
    let mut net = Net::new(6);
    for k in 1..6 {
        net.connect(0, k);
    }
    net.settle(&mut 11);
    net.post(1, 0, 1);
    net.settle(&mut 12);
    // In step: every peer gets the same bytes for the hub's next change.
    let bid = net.write(0, 0, 2).expect("the hub knows the channel");
    let node = &mut net.nodes[0];
    let actions = node
        .engine
        .handle(&mut node.host, Event::LocalChange(vec![bid]));
    let sent: Vec<&Vec<u8>> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(_, Frame::Sync { doc, data }) if *doc == bid => Some(data),
            _ => None,
        })
        .collect();
    assert_eq!(sent.len(), 5);
    assert!(sent.iter().all(|d| *d == sent[0]));
    net.run(0, actions);
    // Out of step: one peer was away, others have messages in flight, one is mid-reply.
    net.cut(0, 5);
    net.post(2, 0, 3);
    net.post(0, 0, 4);
    net.step(0);
    net.step(3);
    net.connect(0, 5);
    net.post(3, 0, 5);
    net.step(1);
    net.post(0, 0, 6);
    net.settle(&mut 13);
    net.assert_converged();
    for k in 0..6 {
        assert_eq!(total_messages(&net, k), 6, "node {k}");
    }
}

#[test]
fn a_non_member_is_closed_and_learns_nothing() {
    let mut net = Net::new(2);
    net.post(0, 0, 1);
    let stranger = net.device(1);
    net.nodes[0].host.members.remove(&stranger);
    net.connect(0, 1);
    net.settle(&mut 3);
    assert!(
        net.closed
            .iter()
            .any(|(i, r)| *i == 0 && *r == CloseReason::NotAllowed)
    );
    assert_eq!(net.nodes[1].host.docs.len(), 0);
    assert_eq!(net.nodes[0].engine.doc_count(&stranger), 0);
}

#[test]
fn unknown_and_forbidden_documents_allocate_nothing() {
    let mut net = Net::new(2);
    net.post(0, 0, 1);
    net.connect(0, 1);
    net.settle(&mut 4);
    let peer = net.device(1);
    let before = net.nodes[0].engine.doc_count(&peer);
    // A sync message for a document node 0 does not hold.
    let other = Automerge::new();
    let mut st = automerge::sync::State::new();
    use automerge::sync::SyncDoc;
    let data = other.generate_sync_message(&mut st).unwrap().encode();
    let unknown = DocId([0xAA; 16]);
    let node = &mut net.nodes[0];
    let actions = node.engine.handle(
        &mut node.host,
        Event::Frame(peer, Frame::Sync { doc: unknown, data }),
    );
    assert!(
        matches!(&actions[..], [Action::Send(_, Frame::Unavailable { doc })] if *doc == unknown)
    );
    assert_eq!(node.engine.doc_count(&peer), before);
    // Garbage where a sync message should be closes that connection only.
    let actions = node.engine.handle(
        &mut node.host,
        Event::Frame(
            peer,
            Frame::Sync {
                doc: CH,
                data: vec![0x42, 1, 2, 3],
            },
        ),
    );
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, Action::Close(_, CloseReason::BadMessage(_))))
    );
    assert_eq!(node.engine.doc_count(&peer), 0);
    let _ = other.get_heads();
}

#[test]
fn revoked_documents_stop_flowing_mid_connection() {
    let mut net = Net::new(2);
    net.post(0, 0, 1);
    net.connect(0, 1);
    net.settle(&mut 5);
    let bid = bucket::bucket_id(CH, BucketKey { day: 0, part: 0 });
    net.nodes[0].host.private.insert(bid);
    net.event(0, Event::PolicyChanged);
    net.post(0, 0, 2);
    net.settle(&mut 6);
    assert_eq!(
        total_messages(&net, 1),
        1,
        "the post after the revocation did not reach node 1"
    );
    assert_eq!(total_messages(&net, 0), 2);
}

#[test]
fn saved_sync_state_makes_reconnecting_cheap() {
    let mut net = Net::new(2);
    for n in 0..300 {
        net.post(0, 0, n);
    }
    net.connect(0, 1);
    net.settle(&mut 8);
    let first = net.bytes;
    net.cut(0, 1);
    net.post(0, 0, 1_000);
    net.bytes = 0;
    net.connect(0, 1);
    net.settle(&mut 9);
    net.assert_converged();
    let with_state = net.bytes;
    // Forget the saved states: a fresh start costs more.
    net.cut(0, 1);
    for n in &mut net.nodes {
        n.host.saved.clear();
    }
    net.post(0, 0, 1_001);
    net.bytes = 0;
    net.connect(0, 1);
    net.settle(&mut 10);
    net.assert_converged();
    let without = net.bytes;
    assert!(
        with_state < without,
        "saved state {with_state} B, fresh {without} B (first sync {first} B)"
    );
}

#[derive(Debug, Clone)]
enum Op {
    Post { node: usize, day: i64 },
    Link { a: usize, b: usize, up: bool },
    Restart { node: usize },
    Deliver { steps: usize, pick: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..3usize, 0..3i64).prop_map(|(node, day)| Op::Post { node, day }),
        2 => (0..3usize, 0..3usize, any::<bool>()).prop_map(|(a, b, up)| Op::Link { a, b, up }),
        1 => (0..3usize).prop_map(|node| Op::Restart { node }),
        4 => (1..40usize, any::<usize>()).prop_map(|(steps, pick)| Op::Deliver { steps, pick }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    /// Random posts, partitions, restarts (engine state lost, saved sync states kept) and
    /// random interleavings: once every link is up and the network settles, every node holds
    /// the same documents with the same heads and no post is lost.
    #[test]
    fn three_nodes_converge_after_anything(ops in proptest::collection::vec(op(), 1..60), seed in any::<u64>()) {
        let mut net = Net::new(3);
        let mut posted = 0usize;
        let mut n = 0u32;
        for op in ops {
            match op {
                Op::Post { node, day } => {
                    n += 1;
                    if net.post(node, day, n) {
                        posted += 1;
                    }
                }
                Op::Link { a, b, up } if a != b => {
                    if up { net.connect(a, b) } else { net.cut(a, b) }
                }
                Op::Link { .. } => {}
                Op::Restart { node } => {
                    for other in 0..3 {
                        if other != node {
                            net.cut(node, other);
                        }
                    }
                    net.nodes[node].engine = Engine::new();
                }
                Op::Deliver { steps, pick } => {
                    for s in 0..steps {
                        if !net.step(pick.wrapping_add(s * 7)) {
                            break;
                        }
                    }
                }
            }
        }
        net.connect(0, 1);
        net.connect(1, 2);
        net.connect(0, 2);
        let mut rng = seed;
        net.settle(&mut rng);
        net.assert_converged();
        prop_assert_eq!(total_messages(&net, 0), posted);
        prop_assert!(net.closed.is_empty(), "no connection was closed: {:?}", net.closed);
    }
}
