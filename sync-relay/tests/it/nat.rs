//! NAT help: the relay's `/relay` (iroh's relay protocol) carries connections between members'
//! endpoints that have no direct path at all (relay-only transports and nodes: no UDP socket
//! of their own), and refuses everyone else at its handshake.

use std::time::Duration;

use crdt_model::Role;
use peer::Store;
use peer::net::{Conn, NetError, PeerAddr, Transport};
use peer::node::{Node, NodeConfig, NodeError};
use peer::sync::protocol::{Frame, PROTOCOL_VERSION};

use crate::common::{LIMIT, config, request, start};
use crate::ephemeral::until_connected;

/// One dial attempt through the relay.
const DIAL: Duration = Duration::from_secs(3);

fn hello() -> Frame {
    Frame::Hello {
        version: PROTOCOL_VERSION,
        have: vec![],
    }
}

/// Someone with an identity in their own store.
fn person(dir: &std::path::Path, name: &str) -> (Store, [u8; 32]) {
    let mut s = Store::open(&dir.join("flyt.db")).unwrap();
    s.init(name).unwrap();
    let secret = s.identity().unwrap().device.to_bytes();
    (s, secret)
}

/// `bob` becomes a member of `alice`'s current workspace (her invite, redeemed by her store).
fn admit(alice: &mut Store, bob: &Store) {
    let ticket = alice.invite(Role::Member, 3_600_000, vec![]).unwrap();
    let cert = bob
        .identity()
        .unwrap()
        .device_cert("device", peer::now_ms())
        .to_bytes();
    alice.redeem(&ticket, &cert).unwrap();
}

/// `to` as reachable only through the relay at `url`.
fn via(url: &str, to: &Transport) -> PeerAddr {
    PeerAddr {
        id: to.id(),
        addrs: vec![],
        relays: vec![url.to_owned()],
    }
}

/// Dials until it works (the callee needs a moment to connect to its home relay) or `LIMIT`.
async fn dial_until_up(from: &Transport, to: &PeerAddr) -> Conn {
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        match from.dial(to, DIAL).await {
            Ok(c) => return c,
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::debug!("dial through the relay failed, retrying: {e:#}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("no connection through the relay within {LIMIT:?}: {e:#}"),
        }
    }
}

/// Dials for a while and expects every attempt to fail.
async fn never_reaches(from: &Transport, to: &PeerAddr) -> NetError {
    let mut last = None;
    for _ in 0..3 {
        match from.dial(to, DIAL).await {
            Ok(c) => panic!("{} reached {} through the relay", from.id(), c.remote),
            Err(e) => last = Some(e),
        }
    }
    last.unwrap()
}

/// Both ends exchange a frame on the connection `a` dialled to `b`.
async fn talk(a_conn: Conn, b: &Transport) {
    let (mut ra, mut wa) = a_conn.split();
    wa.send(&hello()).await.unwrap();
    let incoming = tokio::time::timeout(LIMIT, b.accept())
        .await
        .expect("b accepted in time")
        .expect("b is open")
        .expect("handshake");
    let (mut rb, mut wb) = incoming.split();
    assert_eq!(
        tokio::time::timeout(LIMIT, rb.next())
            .await
            .unwrap()
            .unwrap(),
        Some(hello())
    );
    wb.send(&hello()).await.unwrap();
    assert_eq!(
        tokio::time::timeout(LIMIT, ra.next())
            .await
            .unwrap()
            .unwrap(),
        Some(hello())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_with_no_direct_path_connect_through_the_relay_and_no_one_else_does() {
    let relay_dir = tempfile::tempdir().unwrap();
    let relay = start(config(relay_dir.path())).await;
    let url = format!("http://{}", relay.http_addr());
    let (a_dir, b_dir, c_dir, d_dir) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );

    // Alice's workspace lists the relay and has Bob as a member; the relay holds it.
    let (mut alice, a_secret) = person(a_dir.path(), "alice");
    let (bob, b_secret) = person(b_dir.path(), "bob");
    let ws = alice.create_workspace("acme").unwrap();
    let relay_addr = relay.peer_addr();
    let relay_udp: Vec<String> = relay_addr.addrs.iter().map(|a| a.to_string()).collect();
    alice.add_relay(&url, relay_addr.id, relay_udp).unwrap();
    admit(&mut alice, &bob);
    let (status, body) = request(
        relay.http_addr(),
        "POST",
        "/join",
        &alice.workspace_save(ws).unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    // The invite names the relay, so a joiner knows where to find Alice.
    let fresh = alice.invite(Role::Member, 3_600_000, vec![]).unwrap();
    let payload = crdt_model::invite::decode(&fresh, peer::now_ms())
        .unwrap()
        .payload;
    assert_eq!(
        PeerAddr::parse(payload.inviter, &payload.addrs).relays,
        vec![url.clone()]
    );

    // Two members' endpoints with no UDP socket: the relay is the only way between them.
    let a = Transport::bind_relay_only(a_secret).await.unwrap();
    let b = Transport::bind_relay_only(b_secret).await.unwrap();
    assert!(a.add_relay(&url, None).await.unwrap());
    assert!(b.add_relay(&url, None).await.unwrap());
    assert!(a.addr().addrs.is_empty() && a.addr().relays == vec![url.clone()]);
    let conn = dial_until_up(&a, &via(&url, &b)).await;
    assert_eq!(conn.remote, b.id());
    talk(conn, &b).await;

    // Someone who is no member is refused by the relay: it never reaches Bob.
    let c = Transport::bind_relay_only([7; 32]).await.unwrap();
    c.add_relay(&url, None).await.unwrap();
    never_reaches(&c, &via(&url, &b)).await;
    // Neither with a token that is no invite, nor with someone else's forged invite.
    let d = Transport::bind_relay_only([8; 32]).await.unwrap();
    d.add_relay(&url, Some("flyt1garbage".into()))
        .await
        .unwrap();
    never_reaches(&d, &via(&url, &a)).await;
    let (mallory, _) = person(d_dir.path(), "mallory");
    let m = mallory.identity().unwrap().clone();
    let forged = crdt_model::invite::encode(&crdt_model::signed::Signed::sign(
        &m.device,
        crdt_model::invite::Invite {
            workspace: ws,
            workspace_name: "acme".into(),
            inviter: m.device_id(),
            addrs: vec![url.clone()],
            role: Role::Member,
            expires_ms: peer::now_ms() + 3_600_000,
            nonce: [1; 16],
        },
    ));
    d.add_relay(&url, Some(forged)).await.unwrap();
    never_reaches(&d, &via(&url, &a)).await;

    // A joiner holding Alice's invite is admitted, so it can reach Alice to redeem it.
    let (_joiner, j_secret) = person(c_dir.path(), "joiner");
    let j = Transport::bind_relay_only(j_secret).await.unwrap();
    j.add_relay(&url, Some(fresh)).await.unwrap();
    let conn = dial_until_up(&j, &via(&url, &a)).await;
    assert_eq!(conn.remote, a.id());
    talk(conn, &a).await;

    for t in [a, b, c, d, j] {
        t.close().await;
    }
    relay.shutdown().await;
}

/// NAT help from a relay added while a node runs: alice's node starts with no relay in her
/// workspace, then she adds one through it (as `flyt relay add` does with `flyt serve`
/// running). Bob's device has no direct path at all (a relay-only endpoint) and reaches her
/// running node through the relay, where it greets him as a member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_added_while_a_node_runs_carries_a_member_with_no_direct_path() {
    let relay_dir = tempfile::tempdir().unwrap();
    let relay = start(config(relay_dir.path())).await;
    let url = format!("http://{}", relay.http_addr());
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mut alice, _) = person(a_dir.path(), "alice");
    let (bob, b_secret) = person(b_dir.path(), "bob");
    let ws = alice.create_workspace("acme").unwrap();
    admit(&mut alice, &bob);
    assert!(alice.relay_peers().unwrap().is_empty(), "no relay yet");
    drop(alice);
    let node = crate::sync::node(&a_dir.path().join("flyt.db")).await;
    let alice_id = node.addr().id;

    // The relay joins the workspace while alice's node runs.
    let relay_addr = relay.peer_addr();
    let (u, id, udp) = (url.clone(), relay_addr.id, crate::sync::addrs(&relay_addr));
    let saved = node
        .call(move |s| {
            s.add_relay(&u, id, udp)?;
            s.workspace_save(ws)
        })
        .await
        .unwrap()
        .unwrap();
    let (status, body) = request(relay.http_addr(), "POST", "/join", &saved).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));

    // Bob, with no UDP socket of his own, reaches alice's node through the relay alone.
    let b = Transport::bind_relay_only(b_secret).await.unwrap();
    assert!(b.add_relay(&url, None).await.unwrap());
    let to = PeerAddr {
        id: alice_id,
        addrs: vec![],
        relays: vec![url.clone()],
    };
    let conn = dial_until_up(&b, &to).await;
    assert_eq!(conn.remote, alice_id);
    let (mut r, mut w) = conn.split();
    w.send(&hello()).await.unwrap();
    let first = tokio::time::timeout(LIMIT, r.next())
        .await
        .expect("alice's node answered in time");
    assert!(
        matches!(first, Ok(Some(Frame::Hello { .. }))),
        "alice's node greets a member: {first:?}"
    );
    b.close().await;
    node.shutdown().await;
    relay.shutdown().await;
}

#[tokio::test]
async fn the_relay_answers_irohs_latency_probe_and_still_serves_http() {
    let relay_dir = tempfile::tempdir().unwrap();
    let relay = start(config(relay_dir.path())).await;
    let (status, _) = request(relay.http_addr(), "GET", "/ping", b"").await;
    assert_eq!(status, 200);
    let (status, body) = request(relay.http_addr(), "GET", "/info", b"").await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    // A `/relay` request that is no WebSocket upgrade gets the relay service's refusal.
    let (status, _) = request(relay.http_addr(), "GET", "/relay", b"").await;
    assert_eq!(status, 400);
    relay.shutdown().await;
}

/// A node with no direct path at all (`flyt serve --relay-only`: no UDP socket of its own).
async fn relay_only_node(db: &std::path::Path) -> Node {
    Node::start(NodeConfig {
        db: db.to_owned(),
        bind: crate::sync::LOOPBACK.parse().unwrap(),
        lan: false,
        relay_only: true,
    })
    .await
    .unwrap()
}

/// Two full nodes, neither with a direct path (both relay-only): alice's ticket names only the
/// relay, bob joins through it, each keeps a connection to the other through it (not only to
/// the relay as a sync peer) and they chat live. Asking for `--lan` too is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relay_only_nodes_invite_join_and_chat_through_the_relay() {
    let relay_dir = tempfile::tempdir().unwrap();
    let relay = start(config(relay_dir.path())).await;
    let url = format!("http://{}", relay.http_addr());
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (db_a, db_b) = (a.path().join("flyt.db"), b.path().join("flyt.db"));
    let (ws, ch) = crate::sync::alice_adds_relay(&db_a, &relay).await;

    let both = Node::start(NodeConfig {
        db: db_a.clone(),
        bind: crate::sync::LOOPBACK.parse().unwrap(),
        lan: true,
        relay_only: true,
    })
    .await;
    assert!(
        matches!(both, Err(NodeError::Config(_))),
        "mDNS would announce the addresses --relay-only hides: {both:?}"
    );

    let alice = relay_only_node(&db_a).await;
    assert!(
        alice.addr().addrs.is_empty(),
        "alice has no address of her own"
    );
    until_connected(&alice, &mut alice.subscribe(), relay.peer_addr().id).await;
    let listen = alice.call(|s| s.listen_addrs()).await.unwrap().unwrap();
    assert_eq!(
        listen,
        vec![url.clone()],
        "peers and tickets learn the relay only"
    );
    let ticket = alice
        .call(move |s| s.invite(Role::Member, 3_600_000, listen))
        .await
        .unwrap()
        .unwrap();

    Store::open(&db_b).unwrap().init("bob").unwrap();
    let bob = relay_only_node(&db_b).await;
    assert!(bob.addr().addrs.is_empty(), "bob has no address of his own");
    let mut ev_b = bob.subscribe();
    assert_eq!(bob.join(&ticket).await.unwrap(), ws);
    crate::sync::until(&bob, &mut ev_b, "bob has #general", move |s| {
        s.use_workspace(ws).ok()?;
        let chans = s.channels().ok()?;
        chans.iter().any(|c| c.name == "general").then_some(())
    })
    .await;
    let (alice_id, bob_id) = (alice.addr().id, bob.addr().id);
    until_connected(&alice, &mut alice.subscribe(), bob_id).await;
    until_connected(&bob, &mut bob.subscribe(), alice_id).await;

    alice
        .call(move |s| {
            s.post(ch, "hello through the relay", None, None)
                .map(|_| ())
        })
        .await
        .unwrap()
        .unwrap();
    let got = crate::sync::until(&bob, &mut ev_b, "alice's message", move |s| {
        let rows = s.read(ch, 50, None, None).ok()?;
        rows.into_iter()
            .find(|m| m.text == "hello through the relay")
    })
    .await;
    assert!(got.verified && got.author.name == "alice");
    bob.call(move |s| s.set_profile(ws, "bob"))
        .await
        .unwrap()
        .unwrap();
    bob.call(move |s| s.post(ch, "and back", None, None).map(|_| ()))
        .await
        .unwrap()
        .unwrap();
    let mut ev_a = alice.subscribe();
    // (By name once bob's profile, another document, has reached alice too.)
    let got = crate::sync::until(&alice, &mut ev_a, "bob's answer", move |s| {
        let rows = s.read(ch, 50, None, None).ok()?;
        rows.into_iter()
            .find(|m| m.text == "and back" && m.author.name == "bob")
    })
    .await;
    assert!(got.verified, "{got:?}");
    bob.shutdown().await;
    alice.shutdown().await;
    relay.shutdown().await;
}
