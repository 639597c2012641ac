//! Two and three real stores (separate SQLite homes) syncing through their engines, with frames
//! passing through the real encoder and decoder. The transport is a queue here; the iroh tests
//! run the same engine over QUIC.

use std::collections::{BTreeMap, VecDeque};

use crdt_model::{DeviceId, DocId, Role};
use peer::Outgoing;
use peer::Store;
use peer::sync::engine::{CloseReason, Engine, Event};
use peer::sync::protocol::{Frame, FrameDecoder};

use crate::common::{Home, timeline};

struct Node {
    _home: Home,
    store: Store,
    engine: Engine,
}

impl Node {
    fn new(name: &str) -> Node {
        let home = Home::new();
        let mut store = home.open();
        store.init(name).unwrap();
        Node {
            _home: home,
            store,
            engine: Engine::new(),
        }
    }
    fn device(&self) -> DeviceId {
        self.store.identity().unwrap().device_id()
    }
}

#[derive(Default)]
struct Wire {
    queues: BTreeMap<(usize, usize), VecDeque<Vec<u8>>>,
    up: std::collections::BTreeSet<(usize, usize)>,
    closed: Vec<(usize, CloseReason)>,
    /// (from, to, document) of every sync frame a node handed out, delivered or not (a real
    /// connection still delivers what was sent before it closed).
    synced: Vec<(usize, usize, DocId)>,
}

fn index(nodes: &[Node], d: &DeviceId) -> usize {
    nodes.iter().position(|n| n.device() == *d).unwrap()
}

fn event(nodes: &mut [Node], wire: &mut Wire, i: usize, e: Event) {
    let n = &mut nodes[i];
    let out = n.store.sync_event(&mut n.engine, e).expect("sync event");
    for o in out {
        match o {
            Outgoing::Send(to, f) => {
                let j = index(nodes, &to);
                if let Frame::Sync { doc, .. } = &f {
                    wire.synced.push((i, j, *doc));
                }
                if wire.up.contains(&(i, j)) {
                    wire.queues.entry((i, j)).or_default().push_back(f.encode());
                }
            }
            Outgoing::Close(to, reason) => {
                let j = index(nodes, &to);
                wire.closed.push((i, reason));
                disconnect(nodes, wire, i, j);
            }
            Outgoing::Changed(_) => {}
        }
    }
}

fn connect(nodes: &mut [Node], wire: &mut Wire, i: usize, j: usize) {
    wire.up.insert((i, j));
    wire.up.insert((j, i));
    let (di, dj) = (nodes[i].device(), nodes[j].device());
    event(nodes, wire, i, Event::Connected(dj));
    event(nodes, wire, j, Event::Connected(di));
}

fn disconnect(nodes: &mut [Node], wire: &mut Wire, i: usize, j: usize) {
    if !wire.up.remove(&(i, j)) {
        return;
    }
    wire.up.remove(&(j, i));
    wire.queues.remove(&(i, j));
    wire.queues.remove(&(j, i));
    let (di, dj) = (nodes[i].device(), nodes[j].device());
    event(nodes, wire, i, Event::Disconnected(dj));
    event(nodes, wire, j, Event::Disconnected(di));
}

/// Whether node `i` closed a connection because the peer may not connect.
fn closed_by(wire: &Wire, i: usize) -> bool {
    wire.closed
        .iter()
        .any(|(by, r)| *by == i && *r == CloseReason::NotAllowed)
}

/// Pushes a node's local writes to its peers.
fn local(nodes: &mut [Node], wire: &mut Wire, i: usize) {
    let docs = nodes[i].store.take_local_changes();
    if !docs.is_empty() {
        event(nodes, wire, i, Event::LocalChange(docs));
    }
}

fn settle(nodes: &mut [Node], wire: &mut Wire) {
    for _ in 0..100_000 {
        let Some((&(i, j), _)) = wire.queues.iter().find(|(_, q)| !q.is_empty()) else {
            return;
        };
        let bytes = wire.queues.get_mut(&(i, j)).unwrap().pop_front().unwrap();
        let mut dec = FrameDecoder::default();
        dec.push(&bytes);
        let frame: Frame = dec.next_frame().unwrap().unwrap();
        let from = nodes[i].device();
        event(nodes, wire, j, Event::Frame(from, frame));
    }
    panic!("did not settle");
}

/// alice owns `acme` with #general and some history; bob is admitted and joins.
fn alice_and_bob() -> (Vec<Node>, Wire, DocId, DocId) {
    let mut alice = Node::new("alice");
    let ws = alice.store.create_workspace("acme").unwrap();
    let ch = alice
        .store
        .create_channel("general", "hello", false)
        .unwrap();
    let day = 86_400_000;
    let old: Vec<(i64, String)> = (0..30)
        .map(|i| (day * 20_000 + i * day / 10, format!("old {i}")))
        .collect();
    alice.store.post_batch(ch, &old).unwrap();
    let m = alice.store.post(ch, "welcome **bob**", None, None).unwrap();
    alice.store.react(&m.id, "🎉", true).unwrap();
    let bob = Node::new("bob");
    let cert = bob
        .store
        .identity()
        .unwrap()
        .device_cert("laptop", peer::now_ms());
    alice.store.admit(&cert, Role::Member).unwrap();
    let mut bob = bob;
    bob.store.expect_join(ws, alice.device()).unwrap();
    alice.store.take_local_changes();
    (vec![alice, bob], Wire::default(), ws, ch)
}

#[test]
fn a_joining_device_gets_the_workspace_and_history() {
    let (mut nodes, mut wire, ws, ch) = alice_and_bob();
    connect(&mut nodes, &mut wire, 0, 1);
    settle(&mut nodes, &mut wire);
    assert!(wire.closed.is_empty(), "{:?}", wire.closed);
    nodes[1].store.use_workspace(ws).unwrap();
    assert_eq!(nodes[1].store.workspaces().unwrap()[0].name, "acme");
    assert_eq!(nodes[1].store.find_channel("#general").unwrap(), ch);
    let a = timeline(&nodes[0].store, ch);
    let b = timeline(&nodes[1].store, ch);
    assert_eq!(a.len(), 31);
    assert_eq!(a, b, "bob reads exactly what alice reads");
    assert!(b.iter().all(|m| m.verified));
    assert_eq!(b.last().unwrap().reactions["🎉"], vec!["alice".to_string()]);
    // Bob's store survives a rebuild from the synced documents alone.
    nodes[1].store.rebuild_projection().unwrap();
    assert_eq!(timeline(&nodes[1].store, ch), a);
}

#[test]
fn live_messages_both_ways_then_offline_and_back() {
    let (mut nodes, mut wire, ws, ch) = alice_and_bob();
    connect(&mut nodes, &mut wire, 0, 1);
    settle(&mut nodes, &mut wire);
    nodes[1].store.use_workspace(ws).unwrap();
    nodes[1].store.set_profile(ws, "bob").unwrap();
    let hi = nodes[1].store.post(ch, "hi @alice", None, None).unwrap();
    local(&mut nodes, &mut wire, 1);
    settle(&mut nodes, &mut wire);
    let seen = nodes[0].store.message(&hi.id).unwrap();
    assert_eq!(
        (seen.author.name.as_str(), seen.text.as_str()),
        ("bob", "hi @alice")
    );
    assert!(seen.verified);
    assert_eq!(seen.mentions, vec!["alice".to_string()]);
    // Alice replies in the thread and edits; bob sees both.
    let r = nodes[0]
        .store
        .post(ch, "hey bob", None, Some(hi.id.parse().unwrap()))
        .unwrap();
    nodes[0].store.edit(&r.id, "hey bob!").unwrap();
    local(&mut nodes, &mut wire, 0);
    settle(&mut nodes, &mut wire);
    assert_eq!(nodes[1].store.message(&hi.id).unwrap().reply_count, 1);
    assert_eq!(nodes[1].store.message(&r.id).unwrap().text, "hey bob!");

    // Offline: both write, then reconnect with the saved sync states.
    disconnect(&mut nodes, &mut wire, 0, 1);
    nodes[0]
        .store
        .post(ch, "while you were away", None, None)
        .unwrap();
    nodes[1].store.post(ch, "on the train", None, None).unwrap();
    nodes[1].store.delete(&hi.id).unwrap();
    local(&mut nodes, &mut wire, 0);
    local(&mut nodes, &mut wire, 1);
    connect(&mut nodes, &mut wire, 0, 1);
    settle(&mut nodes, &mut wire);
    let a = timeline(&nodes[0].store, ch);
    assert_eq!(a, timeline(&nodes[1].store, ch));
    assert!(a.iter().any(|m| m.text == "on the train"));
    assert!(nodes[0].store.message(&hi.id).unwrap().deleted);
}

#[test]
fn a_stranger_is_refused_and_gets_nothing() {
    let (mut nodes, mut wire, _ws, ch) = alice_and_bob();
    nodes.push(Node::new("mallory"));
    connect(&mut nodes, &mut wire, 0, 2);
    settle(&mut nodes, &mut wire);
    assert!(
        wire.closed
            .iter()
            .any(|(i, r)| *i == 0 && *r == CloseReason::NotAllowed)
    );
    assert!(nodes[2].store.workspaces().unwrap().is_empty());
    // And alice still serves bob.
    connect(&mut nodes, &mut wire, 0, 1);
    settle(&mut nodes, &mut wire);
    assert_eq!(timeline(&nodes[1].store, ch).len(), 31);
}

#[test]
fn a_removed_member_gets_nothing_new() {
    let (mut nodes, mut wire, ws, ch) = alice_and_bob();
    connect(&mut nodes, &mut wire, 0, 1);
    settle(&mut nodes, &mut wire);
    nodes[1].store.use_workspace(ws).unwrap();
    nodes[1].store.set_profile(ws, "bob").unwrap();
    local(&mut nodes, &mut wire, 1);
    settle(&mut nodes, &mut wire);
    // A member cannot remove anyone.
    assert!(nodes[1].store.set_role("alice", Role::Removed).is_err());
    nodes[0].store.set_role("bob", Role::Removed).unwrap();
    // Pushing the change re-checks the policy first: bob's connection is closed.
    local(&mut nodes, &mut wire, 0);
    settle(&mut nodes, &mut wire);
    assert!(
        wire.closed
            .iter()
            .any(|(i, r)| *i == 0 && *r == CloseReason::NotAllowed)
    );
    nodes[0]
        .store
        .post(ch, "after bob left", None, None)
        .unwrap();
    local(&mut nodes, &mut wire, 0);
    connect(&mut nodes, &mut wire, 0, 1);
    settle(&mut nodes, &mut wire);
    assert!(
        !timeline(&nodes[1].store, ch)
            .iter()
            .any(|m| m.text == "after bob left")
    );
    let members: Vec<String> = nodes[0]
        .store
        .members()
        .unwrap()
        .into_iter()
        .map(|m| m.name)
        .collect();
    assert_eq!(members, vec!["alice".to_string()]);
}

/// Alice, Bob and Carol (admitted by Alice), each connected to both others and in sync.
fn alice_bob_and_carol_connected() -> (Vec<Node>, Wire, DocId) {
    let (mut nodes, mut wire, ws, _) = alice_and_bob();
    let mut carol = Node::new("carol");
    let cert = carol.store.identity().unwrap().device_cert("laptop", 1);
    nodes[0].store.admit(&cert, Role::Member).unwrap();
    nodes[0].store.take_local_changes();
    carol.store.expect_join(ws, nodes[0].device()).unwrap();
    nodes.push(carol);
    connect(&mut nodes, &mut wire, 0, 1);
    connect(&mut nodes, &mut wire, 0, 2);
    settle(&mut nodes, &mut wire);
    connect(&mut nodes, &mut wire, 1, 2);
    settle(&mut nodes, &mut wire);
    (nodes, wire, ws)
}

#[test]
fn a_removal_does_not_reach_the_removed_member_through_another() {
    let (mut nodes, mut wire, ws) = alice_bob_and_carol_connected();
    for (i, n) in nodes.iter_mut().enumerate().skip(1) {
        n.store.use_workspace(ws).unwrap();
        assert_eq!(n.store.members().unwrap().len(), 3, "node {i}");
    }
    // Carol hears of Bob's removal from Alice while connected to Bob: she closes his
    // connection and passes nothing of it on.
    let bob = nodes[1].store.identity().unwrap().person_id().to_string();
    let before = wire.synced.len();
    nodes[0].store.set_role(&bob, Role::Removed).unwrap();
    local(&mut nodes, &mut wire, 0);
    settle(&mut nodes, &mut wire);
    assert_eq!(nodes[2].store.members().unwrap().len(), 2);
    let to_bob: Vec<_> = wire.synced[before..]
        .iter()
        .filter(|(_, to, _)| *to == 1)
        .collect();
    assert!(to_bob.is_empty(), "sent to bob: {to_bob:?}");
    assert!(closed_by(&wire, 2), "{:?}", wire.closed);
    assert_eq!(
        nodes[1].store.members().unwrap().len(),
        3,
        "bob got nothing"
    );
}

#[test]
fn a_removal_from_a_private_channel_does_not_reach_the_removed_member_through_another() {
    let (mut nodes, mut wire, ws) = alice_bob_and_carol_connected();
    let keys: Vec<String> = nodes[1..]
        .iter()
        .map(|n| n.store.identity().unwrap().person_id().to_string())
        .collect();
    let secret = nodes[0]
        .store
        .create_private_channel("secret", "", &keys)
        .unwrap();
    nodes[0]
        .store
        .post(secret, "for the three of us", None, None)
        .unwrap();
    local(&mut nodes, &mut wire, 0);
    settle(&mut nodes, &mut wire);
    for (i, n) in nodes.iter_mut().enumerate().skip(1) {
        n.store.use_workspace(ws).unwrap();
        assert_eq!(
            n.store.read(secret, 10, None, None).unwrap().len(),
            1,
            "node {i}"
        );
    }
    // Carol hears of Bob's removal from #secret from Alice while connected to Bob: she passes
    // nothing of that channel on to him.
    let before = wire.synced.len();
    nodes[0].store.channel_kick(secret, &keys[0]).unwrap();
    local(&mut nodes, &mut wire, 0);
    settle(&mut nodes, &mut wire);
    assert_eq!(nodes[2].store.channel_members(secret).unwrap().len(), 2);
    let to_bob: Vec<_> = wire.synced[before..]
        .iter()
        .filter(|(_, to, _)| *to == 1)
        .collect();
    assert!(to_bob.is_empty(), "sent to bob: {to_bob:?}");
    assert_eq!(
        nodes[1].store.channel_members(secret).unwrap().len(),
        3,
        "bob got nothing of it"
    );
}

#[test]
fn an_inviter_removed_after_the_join_gets_nothing_from_the_joiner() {
    // Alice owns acme and makes Carol an admin; Carol admits Dave, who joins through her.
    let mut alice = Node::new("alice");
    let ws = alice.store.create_workspace("acme").unwrap();
    let ch = alice.store.create_channel("general", "", false).unwrap();
    let mut carol = Node::new("carol");
    let carol_key = carol.store.identity().unwrap().person_id().to_string();
    let cert = carol.store.identity().unwrap().device_cert("laptop", 1);
    alice.store.admit(&cert, Role::Admin).unwrap();
    alice.store.take_local_changes();
    carol.store.expect_join(ws, alice.device()).unwrap();
    let mut dave = Node::new("dave");
    dave.store.expect_join(ws, carol.device()).unwrap();
    let dave_cert = dave.store.identity().unwrap().device_cert("laptop", 1);
    let mut nodes = vec![alice, carol, dave];
    let mut wire = Wire::default();
    connect(&mut nodes, &mut wire, 0, 1);
    settle(&mut nodes, &mut wire);
    nodes[1].store.use_workspace(ws).unwrap();
    nodes[1].store.admit(&dave_cert, Role::Member).unwrap();
    local(&mut nodes, &mut wire, 1);
    settle(&mut nodes, &mut wire);
    connect(&mut nodes, &mut wire, 1, 2);
    settle(&mut nodes, &mut wire);
    connect(&mut nodes, &mut wire, 0, 2);
    settle(&mut nodes, &mut wire);
    nodes[2].store.use_workspace(ws).unwrap();
    assert_eq!(nodes[2].store.members().unwrap().len(), 3);

    // Carol is offline when Alice removes her; Dave hears of it from Alice.
    disconnect(&mut nodes, &mut wire, 1, 2);
    disconnect(&mut nodes, &mut wire, 0, 1);
    nodes[0].store.set_role(&carol_key, Role::Removed).unwrap();
    local(&mut nodes, &mut wire, 0);
    settle(&mut nodes, &mut wire);
    assert_eq!(nodes[2].store.members().unwrap().len(), 2);

    // Carol, unaware, posts and reaches Dave again: having invited him gives her nothing now.
    nodes[1]
        .store
        .post(ch, "after carol left", None, None)
        .unwrap();
    connect(&mut nodes, &mut wire, 1, 2);
    settle(&mut nodes, &mut wire);
    assert!(closed_by(&wire, 2), "{:?}", wire.closed);
    nodes[0].store.post(ch, "alice after", None, None).unwrap();
    local(&mut nodes, &mut wire, 0);
    settle(&mut nodes, &mut wire);
    for i in [0, 2] {
        let texts: Vec<String> = timeline(&nodes[i].store, ch)
            .into_iter()
            .map(|m| m.text)
            .collect();
        assert_eq!(texts, ["alice after"], "node {i}");
    }
    assert!(
        !timeline(&nodes[1].store, ch)
            .iter()
            .any(|m| m.text == "alice after")
    );
}

#[test]
fn invites_are_signed_single_use_and_expire() {
    let mut alice = Node::new("alice");
    let ws = alice.store.create_workspace("acme").unwrap();
    let mut bob = Node::new("bob");
    let mut carol = Node::new("carol");
    let ticket = alice
        .store
        .invite(Role::Member, 60_000, vec!["127.0.0.1:1".into()])
        .unwrap();
    let bob_cert = bob
        .store
        .identity()
        .unwrap()
        .device_cert("laptop", 1)
        .to_bytes();
    let carol_cert = carol
        .store
        .identity()
        .unwrap()
        .device_cert("laptop", 1)
        .to_bytes();
    // A ticket is only good at the node that issued it.
    let err = carol
        .store
        .create_workspace("other")
        .and_then(|_| carol.store.redeem(&ticket, &bob_cert));
    assert!(err.unwrap_err().to_string().contains("another device"));
    assert_eq!(alice.store.redeem(&ticket, &bob_cert).unwrap(), ws);
    let again = alice
        .store
        .redeem(&ticket, &carol_cert)
        .unwrap_err()
        .to_string();
    assert!(again.contains("already used"), "{again}");
    // A forged certificate is refused and the ticket stays unused.
    let t2 = alice.store.invite(Role::Admin, 60_000, vec![]).unwrap();
    let mut forged = carol_cert.clone();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    assert!(alice.store.redeem(&t2, &forged).is_err());
    alice.store.redeem(&t2, &carol_cert).unwrap();
    let roles: Vec<(String, String)> = alice
        .store
        .members()
        .unwrap()
        .into_iter()
        .map(|m| (m.name.chars().take(8).collect(), m.role))
        .collect();
    assert!(roles.iter().any(|(_, r)| r == "admin"));
    assert_eq!(roles.len(), 3);
    // Expired.
    let t3 = alice.store.invite(Role::Member, 1, vec![]).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(5)); // let the 1 ms validity pass (the clock is the input here)
    let expired = alice.store.redeem(&t3, &bob_cert).unwrap_err().to_string();
    assert!(expired.contains("expired"), "{expired}");
    // Members do not invite; nobody invites owners.
    bob.store.expect_join(ws, alice.device()).unwrap();
    assert!(alice.store.invite(Role::Owner, 60_000, vec![]).is_err());
    assert!(alice.store.invite(Role::Member, 0, vec![]).is_err());
}

#[test]
fn joining_by_ticket_then_syncing() {
    let (mut nodes, mut wire, ws, ch) = {
        let mut alice = Node::new("alice");
        let ws = alice.store.create_workspace("acme").unwrap();
        let ch = alice.store.create_channel("general", "", false).unwrap();
        alice.store.post(ch, "first", None, None).unwrap();
        alice.store.take_local_changes();
        (vec![alice, Node::new("bob")], Wire::default(), ws, ch)
    };
    let ticket = nodes[0].store.invite(Role::Member, 60_000, vec![]).unwrap();
    let decoded = crdt_model::invite::decode(&ticket, peer::now_ms()).unwrap();
    nodes[1]
        .store
        .expect_join(decoded.payload.workspace, decoded.payload.inviter)
        .unwrap();
    let cert = nodes[1]
        .store
        .identity()
        .unwrap()
        .device_cert("laptop", 1)
        .to_bytes();
    nodes[0].store.redeem(&ticket, &cert).unwrap();
    connect(&mut nodes, &mut wire, 0, 1);
    settle(&mut nodes, &mut wire);
    nodes[1].store.use_workspace(ws).unwrap();
    assert_eq!(timeline(&nodes[1].store, ch).len(), 1);
    let _ = ws;
}

#[test]
fn reading_up_to_a_message_leaves_what_came_after_unread() {
    let (mut nodes, mut wire, ws, ch) = alice_and_bob();
    let other = nodes[0].store.create_channel("random", "", false).unwrap();
    let elsewhere = nodes[0].store.post(other, "over here", None, None).unwrap();
    local(&mut nodes, &mut wire, 0);
    connect(&mut nodes, &mut wire, 0, 1);
    settle(&mut nodes, &mut wire);
    let bob = &mut nodes[1].store;
    bob.use_workspace(ws).unwrap();
    let unread = |s: &Store| {
        s.channels()
            .unwrap()
            .into_iter()
            .find(|c| c.id == ch.to_string())
            .unwrap()
            .unread
    };
    let rows = timeline(bob, ch);
    assert_eq!(unread(bob), 31, "everything alice wrote is new to bob");

    // Up to the tenth message: the 21 after it stay unread.
    let tenth: crdt_model::MessageId = rows[9].id.parse().unwrap();
    bob.mark_read_up_to(ch, tenth).unwrap();
    assert_eq!(unread(bob), 21);
    // An older one never moves the mark back, nor does a message of another channel.
    let fifth: crdt_model::MessageId = rows[4].id.parse().unwrap();
    bob.mark_read_up_to(ch, fifth).unwrap();
    let elsewhere: crdt_model::MessageId = elsewhere.id.parse().unwrap();
    bob.mark_read_up_to(ch, elsewhere).unwrap();
    assert_eq!(unread(bob), 21);
    // All of it, then one more from alice.
    bob.mark_read(ch).unwrap();
    assert_eq!(unread(bob), 0);
    nodes[0].store.post(ch, "one more", None, None).unwrap();
    local(&mut nodes, &mut wire, 0);
    settle(&mut nodes, &mut wire);
    assert_eq!(unread(&nodes[1].store), 1);
}
