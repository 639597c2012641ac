//! The relay as a sync peer, with real nodes over real iroh QUIC on 127.0.0.1: store-and-
//! forward, restart, and what non-members get (nothing).

use std::sync::atomic::Ordering;
use std::time::Duration;

use crdt_model::{DocId, Role};
use peer::Store;
use peer::net::{PeerAddr, Transport};
use peer::node::{Node, NodeConfig, NodeEvent};
use peer::sync::protocol::{Frame, PROTOCOL_VERSION};
use sync_relay::runtime::{Relay, RelayEvent};
use tokio::sync::broadcast;

use crate::common::{LIMIT, config, request, start};

pub(crate) const LOOPBACK: &str = "127.0.0.1:0";

pub(crate) async fn node(db: &std::path::Path) -> Node {
    Node::start(NodeConfig {
        db: db.to_owned(),
        bind: LOOPBACK.parse().unwrap(),
        lan: false,
        relay_only: false,
    })
    .await
    .unwrap()
}

/// Waits until `check` holds on the node's store, re-checking after every node event.
pub(crate) async fn until<T: Send + 'static>(
    node: &Node,
    events: &mut broadcast::Receiver<NodeEvent>,
    what: &str,
    check: impl Fn(&mut Store) -> Option<T> + Send + Sync + Clone + 'static,
) -> T {
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let c = check.clone();
        if let Some(v) = node.call(move |s| c(s)).await.unwrap() {
            return v;
        }
        if tokio::time::timeout_at(deadline, events.recv())
            .await
            .is_err()
        {
            panic!("timed out waiting for {what}");
        }
    }
}

/// Waits until `check` holds on the relay's store, re-checking after every relay event.
pub(crate) async fn relay_until(
    relay: &Relay,
    what: &str,
    check: impl Fn(&mut sync_relay::store::RelayStore) -> bool + Send + Clone + 'static,
) {
    let mut events = relay.handle().subscribe();
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let c = check.clone();
        if relay.handle().call(move |s| c(s)).await.unwrap() {
            return;
        }
        if tokio::time::timeout_at(deadline, events.recv())
            .await
            .is_err()
        {
            panic!("timed out waiting for the relay: {what}");
        }
    }
}

pub(crate) fn addrs(a: &PeerAddr) -> Vec<String> {
    a.addrs.iter().map(|a| a.to_string()).collect()
}

/// Messages in the relay's copy of a bucket.
fn relay_messages(s: &mut sync_relay::store::RelayStore, bucket: DocId) -> usize {
    s.save(bucket)
        .unwrap()
        .map(|b| crdt_model::bucket::message_ids(&automerge::Automerge::load(&b).unwrap()).len())
        .unwrap_or(0)
}

/// A free UDP port on loopback (so a restarted relay keeps the address members know).
fn free_udp() -> std::net::SocketAddr {
    std::net::UdpSocket::bind(LOOPBACK)
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Makes alice's home at `db` (workspace "acme" with #general), lists `relay` in the workspace
/// and hands it the workspace (what `flyt relay add` does): (workspace, #general).
pub(crate) async fn alice_adds_relay(db: &std::path::Path, relay: &Relay) -> (DocId, DocId) {
    let url = format!("http://{}", relay.http_addr());
    let mut s = Store::open(db).unwrap();
    s.init("alice").unwrap();
    let ws = s.create_workspace("acme").unwrap();
    let ch = s.create_channel("general", "", false).unwrap();
    s.add_relay(&url, relay.peer_addr().id, addrs(&relay.peer_addr()))
        .unwrap();
    hand_over(relay, &mut s, ws).await;
    (ws, ch)
}

/// Hands `relay` the workspace document as `s` holds it (`POST /join`, what `flyt relay add`
/// does); it must take it.
pub(crate) async fn hand_over(relay: &Relay, s: &mut Store, ws: DocId) {
    let (status, body) = request(
        relay.http_addr(),
        "POST",
        "/join",
        &s.workspace_save(ws).unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
}

/// Bob's new home at `db` joins workspace `ws` by a ticket from `alice`'s running node (a
/// direct connection to it) and waits until it has #general: bob's node and its events.
pub(crate) async fn bob_joins(
    alice: &Node,
    db: &std::path::Path,
    ws: DocId,
) -> (Node, broadcast::Receiver<NodeEvent>) {
    let ticket = {
        let listen = addrs(&alice.addr());
        alice
            .call(move |s| s.invite(Role::Member, 3_600_000, listen))
            .await
            .unwrap()
            .unwrap()
    };
    Store::open(db).unwrap().init("bob").unwrap();
    let bob = node(db).await;
    let mut events = bob.subscribe();
    bob.join(&ticket).await.unwrap();
    until(&bob, &mut events, "bob has #general", move |s| {
        s.use_workspace(ws).ok()?;
        s.channels()
            .ok()?
            .iter()
            .any(|c| c.name == "general")
            .then_some(())
    })
    .await;
    (bob, events)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_and_forward_and_restart() {
    let relay_dir = tempfile::tempdir().unwrap();
    let mut cfg = config(relay_dir.path());
    cfg.iroh_bind = free_udp();
    let relay = start(cfg.clone()).await;
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (db_a, db_b) = (a.path().join("flyt.db"), b.path().join("flyt.db"));

    // Alice makes a workspace, adds the relay, and serves.
    let (ws, ch) = alice_adds_relay(&db_a, &relay).await;
    let alice = node(&db_a).await;
    let mut ev_a = alice.subscribe();

    // Bob joins by ticket while Alice is online, then goes offline.
    let (bob, _) = bob_joins(&alice, &db_b, ws).await;
    bob.shutdown().await;

    // Alice posts while Bob is offline; the relay gets it all; Alice goes offline too.
    let texts = ["one", "two", "three"];
    for t in texts {
        alice
            .call(move |s| s.post(ch, t, None, None).map(|_| ()))
            .await
            .unwrap()
            .unwrap();
    }
    let bucket = alice
        .call(move |s| s.buckets(ch).unwrap().pop().unwrap().1)
        .await
        .unwrap();
    relay_until(&relay, "alice's three messages", move |s| {
        relay_messages(s, bucket) == 3
    })
    .await;
    let _ = ev_a.try_recv();
    alice.shutdown().await;

    // The relay restarts on its data (same key, same address); its sync states were saved.
    relay.shutdown().await;
    let relay = start(cfg.clone()).await;
    relay_until(&relay, "the relay still holds the messages", move |s| {
        relay_messages(s, bucket) == 3
    })
    .await;

    // Bob comes back: his node knows the relay from the workspace document and gets Alice's
    // messages from it, verified, with Alice offline.
    let bob = node(&db_b).await;
    let mut ev_b = bob.subscribe();
    let got = until(
        &bob,
        &mut ev_b,
        "alice's messages via the relay",
        move |s| {
            let rows = s.read(ch, 50, None, None).ok()?;
            (rows.len() == 3).then_some(rows)
        },
    )
    .await;
    assert_eq!(
        got.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(),
        texts
    );
    assert!(got.iter().all(|m| m.verified && m.author.name == "alice"));
    assert!(relay.handle().metrics.bytes_sent.load(Ordering::Relaxed) > 0);

    // And the other way: Bob posts, the relay has it, after a restart with saved sync state.
    bob.call(move |s| s.post(ch, "back", None, None).map(|_| ()))
        .await
        .unwrap()
        .unwrap();
    relay_until(&relay, "bob's message", move |s| {
        relay_messages(s, bucket) == 4
    })
    .await;
    bob.shutdown().await;
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_members_get_nothing_over_iroh() {
    let relay_dir = tempfile::tempdir().unwrap();
    let relay = start(config(relay_dir.path())).await;
    let a = tempfile::tempdir().unwrap();
    let (ws, _) = alice_adds_relay(&a.path().join("flyt.db"), &relay).await;

    // A device that is no member dials the relay and asks for everything it can name.
    let t = Transport::bind([42; 32], LOOPBACK.parse().unwrap())
        .await
        .unwrap();
    let conn = t
        .dial(&relay.peer_addr(), Duration::from_secs(5))
        .await
        .unwrap();
    let (mut r, mut w) = conn.split();
    let mut events = relay.handle().subscribe();
    w.send(&Frame::Hello {
        version: PROTOCOL_VERSION,
        have: vec![peer::sync::protocol::DocRef::Workspace { id: ws }],
    })
    .await
    .unwrap();
    let _ = w
        .send(&Frame::Sync {
            doc: ws,
            data: automerge::sync::Message::decode(&[])
                .map(|m| m.encode())
                .unwrap_or_default(),
        })
        .await;
    // Not one frame comes back: the connection ends.
    let next = tokio::time::timeout(LIMIT, r.next())
        .await
        .expect("closed in time");
    assert!(
        !matches!(next, Ok(Some(_))),
        "a non-member got a frame: {next:?}"
    );
    tokio::time::timeout(LIMIT, async {
        while !matches!(events.recv().await, Ok(RelayEvent::PeerDown(_))) {}
    })
    .await
    .unwrap();
    assert_eq!(
        relay.handle().metrics.refused_peers.load(Ordering::Relaxed),
        1
    );
    t.close().await;
    relay.shutdown().await;
}

/// The member [`relay_with_member`] admits: a person whose device secret is `member`.
pub(crate) fn member_identity(member: [u8; 32]) -> crdt_model::Identity {
    crdt_model::Identity::from_secrets([7; 32], member, "mallory")
}

/// A relay serving a workspace with one member device whose secret is `member`; returns the
/// relay and the workspace. The owner's home (alice) is `home/flyt.db`.
pub(crate) async fn relay_with_member(
    dir: &std::path::Path,
    home: &std::path::Path,
    member: [u8; 32],
    tune: impl FnOnce(&mut sync_relay::config::Config),
) -> (Relay, DocId) {
    let mut cfg = config(dir);
    tune(&mut cfg);
    let relay = start(cfg).await;
    let db = home.join("flyt.db");
    let (ws, _) = alice_adds_relay(&db, &relay).await;
    let mut s = Store::open(&db).unwrap();
    let mallory = member_identity(member);
    s.admit(&mallory.device_cert("laptop", peer::now_ms()), Role::Member)
        .unwrap();
    hand_over(&relay, &mut s, ws).await;
    (relay, ws)
}

/// Dials the relay from `t`, sends `frames`, and returns what the relay sends until it closes.
async fn session(relay: &Relay, t: &Transport, frames: Vec<Frame>) -> Vec<Frame> {
    let conn = t
        .dial(&relay.peer_addr(), Duration::from_secs(5))
        .await
        .unwrap();
    let (mut r, mut w) = conn.split();
    let send = async move {
        for f in frames {
            if w.send(&f).await.is_err() {
                break;
            }
        }
        w
    };
    let read = async {
        let mut got = Vec::new();
        while let Ok(Some(f)) = r.next().await {
            got.push(f);
        }
        got
    };
    let (_w, got) = tokio::time::timeout(LIMIT, async { tokio::join!(send, read) })
        .await
        .expect("the relay closes the connection in time");
    got
}

/// Dials the relay from `t` and says hello; returns the connection and the first answer.
pub(crate) async fn greet(
    relay: &Relay,
    t: &Transport,
) -> (
    peer::net::FrameReader,
    peer::net::FrameWriter,
    Result<Option<Frame>, peer::net::NetError>,
) {
    let conn = t
        .dial(&relay.peer_addr(), Duration::from_secs(5))
        .await
        .unwrap();
    let (mut r, mut w) = conn.split();
    w.send(&hello()).await.unwrap();
    let first = tokio::time::timeout(LIMIT, r.next()).await.unwrap();
    (r, w, first)
}

pub(crate) fn hello() -> Frame {
    Frame::Hello {
        version: PROTOCOL_VERSION,
        have: vec![],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_floods_and_unknown_versions_close_the_connection_only() {
    let (dir, home) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let secret = [9; 32];
    let (relay, ws) = relay_with_member(dir.path(), home.path(), secret, |c| {
        c.frames_per_sec = 5;
        c.frame_burst = 20;
    })
    .await;
    let m = relay.handle().metrics.clone();
    let stored = |relay: &Relay| {
        let h = relay.handle().clone();
        async move { h.call(move |s| s.save(ws).unwrap().unwrap()).await.unwrap() }
    };
    let before = stored(&relay).await;
    let t = Transport::bind(secret, LOOPBACK.parse().unwrap())
        .await
        .unwrap();

    // An unknown protocol version: refused at the framing, before the engine sees it.
    let got = session(
        &relay,
        &t,
        vec![Frame::Hello {
            version: 99,
            have: vec![],
        }],
    )
    .await;
    assert!(got.is_empty(), "{got:?}");
    assert_eq!(m.frames_refused.load(Ordering::Relaxed), 1);

    // A member whose sync message is garbage: closed, the document untouched.
    let garbage = Frame::Sync {
        doc: ws,
        data: vec![0x42, 0xff, 0x00, 0x13],
    };
    let got = session(&relay, &t, vec![hello(), garbage]).await;
    assert!(
        matches!(got.first(), Some(Frame::Hello { .. })),
        "a member is greeted: {got:?}"
    );

    // A flood from one connection: closed once past the burst.
    let flood: Vec<Frame> = std::iter::once(hello())
        .chain((0..200).map(|_| Frame::Have { docs: vec![] }))
        .collect();
    session(&relay, &t, flood).await;
    assert_eq!(m.rate_limited.load(Ordering::Relaxed), 1);

    // Nothing was lost or corrupted, and the relay still serves.
    assert_eq!(stored(&relay).await, before);
    assert_eq!(
        request(relay.http_addr(), "GET", "/readyz", b"").await.0,
        200
    );
    let (_r, _w, first) = greet(&relay, &t).await;
    assert!(matches!(first, Ok(Some(Frame::Hello { .. }))), "{first:?}");
    t.close().await;
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_device_is_offered_the_newest_buckets_first() {
    let (dir, home) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let secret = [11; 32];
    let (relay, _ws) = relay_with_member(dir.path(), home.path(), secret, |_| {}).await;
    // Alice has three days of history; her node syncs it to the relay.
    let db = home.path().join("flyt.db");
    let day = 86_400_000;
    let ch = {
        let mut s = Store::open(&db).unwrap();
        let ch = s.channels().unwrap()[0].id.parse().unwrap();
        let now = peer::now_ms();
        let items: Vec<(i64, String)> = (0..3)
            .map(|d| (now - d * day, format!("day -{d}")))
            .collect();
        s.post_batch(ch, &items).unwrap();
        ch
    };
    let alice = node(&db).await;
    let keys: Vec<(String, DocId)> = alice.call(move |s| s.buckets(ch).unwrap()).await.unwrap();
    assert_eq!(keys.len(), 3);
    let want = keys.clone();
    relay_until(&relay, "alice's three buckets", move |s| {
        want.iter().all(|(_, b)| relay_messages(s, *b) == 1)
    })
    .await;
    alice.shutdown().await;

    // A member device that holds nothing says hello: the relay's Hello lists the workspace,
    // the channel, then the buckets newest first, and syncs them in that order.
    let t = Transport::bind(secret, LOOPBACK.parse().unwrap())
        .await
        .unwrap();
    let (_r, _w, first) = greet(&relay, &t).await;
    let first = first.unwrap();
    let Some(Frame::Hello { have, .. }) = first else {
        panic!("expected Hello, got {first:?}")
    };
    let kinds: Vec<&str> = have
        .iter()
        .map(|r| match r {
            peer::sync::protocol::DocRef::Workspace { .. } => "workspace",
            peer::sync::protocol::DocRef::Channel { .. } => "channel",
            _ => "bucket",
        })
        .collect();
    assert_eq!(
        kinds,
        ["workspace", "channel", "bucket", "bucket", "bucket"]
    );
    let offered: Vec<String> = have
        .iter()
        .filter_map(|r| match r {
            peer::sync::protocol::DocRef::Bucket { key, .. } => Some(key.clone()),
            _ => None,
        })
        .collect();
    let mut newest_first: Vec<String> = keys.into_iter().map(|(k, _)| k).collect();
    newest_first.sort();
    newest_first.reverse();
    assert_eq!(offered, newest_first);
    t.close().await;
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_relay_stops_serving_at_once() {
    let (dir, home) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let secret = [13; 32];
    let (relay, ws) = relay_with_member(dir.path(), home.path(), secret, |_| {}).await;
    let t = Transport::bind(secret, LOOPBACK.parse().unwrap())
        .await
        .unwrap();
    let (mut r, _w, first) = greet(&relay, &t).await;
    assert!(matches!(first, Ok(Some(Frame::Hello { .. }))), "{first:?}");

    // The owner removes the relay and hands it the workspace (what `flyt relay remove` does).
    let bytes = {
        let mut s = Store::open(&home.path().join("flyt.db")).unwrap();
        s.remove_relay(&format!("http://{}", relay.http_addr()))
            .unwrap();
        assert!(s.relays().unwrap().is_empty());
        s.workspace_save(ws).unwrap()
    };
    let (status, _) = request(relay.http_addr(), "POST", "/join", &bytes).await;
    assert_eq!(status, 200);
    // The member's session ends, and a new one gets nothing.
    let rest =
        tokio::time::timeout(LIMIT, async { while let Ok(Some(_)) = r.next().await {} }).await;
    assert!(rest.is_ok(), "the session was not ended");
    assert!(session(&relay, &t, vec![hello()]).await.is_empty());
    assert_eq!(relay.handle().metrics.workspaces.load(Ordering::Relaxed), 0);
    t.close().await;
    relay.shutdown().await;
}
