//! Members' nodes tell each other where their workspaces' members' devices listen
//! (`Frame::Peers`), so members invited by one person still reach each other with that person's
//! node offline: no star around inviters. Real nodes on 127.0.0.1, no relay, no LAN discovery.

use std::time::Duration;

use crdt_model::signed::{Ephemeral, EphemeralKind, Presence, Signed};
use crdt_model::{DeviceId, DocId, Role};
use peer::net::Transport;
use peer::node::{Node, NodeEvent};
use peer::sync::protocol::{Frame, MAX_PEER_ENTRIES, PROTOCOL_VERSION, PeerEntry};

use crate::lan::{connected, device, posts_and_arrives};
use crate::node::{WAIT, home_with, member_ticket, start, until};

async fn known(node: &Node) -> Vec<(DeviceId, Vec<String>)> {
    node.call(|s| s.known_peers()).await.unwrap().unwrap()
}

/// Alice's workspace `acme` with channel `general`; bob and carol join it with tickets that
/// name only alice's node.
async fn acme() -> (Vec<(crate::common::Home, Node, DeviceId)>, DocId) {
    let alice_home = home_with("alice");
    let ws = {
        let mut s = alice_home.open();
        let ws = s.create_workspace("acme").unwrap();
        s.create_channel("general", "", false).unwrap();
        ws
    };
    let alice = start(&alice_home).await;
    let alice_dev = device(&alice).await;
    let mut team = vec![(alice_home, alice, alice_dev)];
    for name in ["bob", "carol"] {
        let ticket = member_ticket(&team[0].1).await;
        let home = home_with(name);
        let node = start(&home).await;
        let mut events = node.subscribe();
        assert_eq!(node.join(&ticket).await.unwrap(), ws);
        until(
            &node,
            &mut events,
            "the workspace after joining",
            move |s| {
                s.use_workspace(ws).ok()?;
                s.find_channel("general").ok()
            },
        )
        .await;
        let dev = device(&node).await;
        team.push((home, node, dev));
    }
    (team, ws)
}

/// Bob and carol learn each other's address from alice and connect; with alice's node gone,
/// bob's message still reaches carol, verified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_reach_each_other_with_their_inviter_offline() {
    let (mut team, ws) = acme().await;
    let (_carol_home, carol, carol_dev) = team.pop().unwrap();
    let (_bob_home, bob, bob_dev) = team.pop().unwrap();
    let (_alice_home, alice, alice_dev) = team.pop().unwrap();
    for node in [&bob, &carol] {
        let relays = node.call(|s| s.relay_peers()).await.unwrap().unwrap();
        assert!(relays.is_empty(), "no relay in this test: {relays:?}");
    }

    connected(&bob, carol_dev, "bob connected to carol").await;
    connected(&carol, bob_dev, "carol connected to bob").await;
    // What they learnt is where the other listens.
    let carol_addrs: Vec<String> = carol.addr().addrs.iter().map(|a| a.to_string()).collect();
    let at_bob = known(&bob).await;
    assert!(
        at_bob.contains(&(carol_dev, carol_addrs)),
        "bob knows where carol listens: {at_bob:?}"
    );

    alice.shutdown().await;
    posts_and_arrives(&bob, &carol, ws, "alice is away, carol").await;
    assert!(!carol.connected().contains(&alice_dev));
    bob.shutdown().await;
    carol.shutdown().await;
}

/// A node asked for any port (`127.0.0.1:0`) takes the one its home listened on last: bob and
/// carol, both restarted with alice's node gone, know only the addresses they learnt before,
/// and still find each other and chat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_find_each_other_after_both_restart() {
    let (mut team, ws) = acme().await;
    let (carol_home, carol, carol_dev) = team.pop().unwrap();
    let (bob_home, bob, bob_dev) = team.pop().unwrap();
    let (_alice_home, alice, _) = team.pop().unwrap();
    connected(&bob, carol_dev, "bob connected to carol").await;
    let (bob_at, carol_at) = (bob.addr().addrs, carol.addr().addrs);
    for node in [alice, bob, carol] {
        node.shutdown().await;
    }

    let bob = start(&bob_home).await;
    let carol = start(&carol_home).await;
    assert_eq!(bob.addr().addrs, bob_at, "bob listens where he did");
    assert_eq!(carol.addr().addrs, carol_at, "carol listens where she did");
    connected(&bob, carol_dev, "bob reconnected to carol").await;
    connected(&carol, bob_dev, "carol reconnected to bob").await;
    posts_and_arrives(&carol, &bob, ws, "both restarted, bob").await;

    // A port taken meanwhile: the node takes another, and says where it is.
    carol.shutdown().await;
    // iroh lets go of the socket a moment after the endpoint closed (see `REBIND_GRACE`).
    let deadline = std::time::Instant::now() + peer::net::REBIND_GRACE * 2;
    let squatter = loop {
        match std::net::UdpSocket::bind(carol_at[0]) {
            Ok(s) => break s,
            Err(e) if std::time::Instant::now() < deadline => {
                tracing::debug!("carol's port is not free yet: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("carol's old port stays taken: {e}"),
        }
    };
    let carol = start(&carol_home).await;
    assert_ne!(carol.addr().addrs, carol_at, "carol moved");
    let moved: Vec<String> = carol.addr().addrs.iter().map(|a| a.to_string()).collect();
    let listen = carol.call(|s| s.listen_addrs()).await.unwrap().unwrap();
    assert_eq!(listen, moved);
    drop(squatter);
    for node in [bob, carol] {
        node.shutdown().await;
    }
}

/// Waits until `node` has no connection to `peer`.
async fn disconnected(node: &Node, peer: DeviceId, what: &str) {
    let mut events = node.subscribe();
    let deadline = tokio::time::Instant::now() + WAIT;
    while node.connected().contains(&peer) {
        if tokio::time::timeout_at(deadline, events.recv())
            .await
            .is_err()
        {
            panic!("timed out waiting for: {what}");
        }
    }
}

/// `node` posts `text` in `general` of `ws`; the message's id.
async fn post(node: &Node, ws: DocId, text: &'static str) -> String {
    node.call(move |s| {
        s.use_workspace(ws)?;
        let ch = s.find_channel("general")?;
        s.post(ch, text, None, None).map(|m| m.id)
    })
    .await
    .unwrap()
    .unwrap()
}

/// Longer than any redial pause after a dropped connection with the other side online
/// (`Redial::after_connection`, and `LAN_GRACE` for the device that dials second), so a link
/// still down after it stays down.
const REDIAL_WINDOW: Duration = Duration::from_secs(7);

/// `Node::cut` cuts one link: bob and carol stay apart while both dial loops run, bob's
/// message still reaches carol through alice, a node cut off from both holds its own writes,
/// and `Node::heal` brings every link back and everything across.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_link_stays_down_chat_goes_around_it_and_heals() {
    let (mut team, ws) = acme().await;
    let (_carol_home, carol, carol_dev) = team.pop().unwrap();
    let (_bob_home, bob, bob_dev) = team.pop().unwrap();
    let (_alice_home, alice, alice_dev) = team.pop().unwrap();
    connected(&bob, carol_dev, "bob connected to carol").await;
    connected(&carol, alice_dev, "carol connected to alice").await;

    bob.cut(carol_dev).unwrap();
    carol.cut(bob_dev).unwrap();
    disconnected(&bob, carol_dev, "bob's link to carol is down").await;
    disconnected(&carol, bob_dev, "carol's link to bob is down").await;
    let mut events = carol.subscribe();
    let quiet = tokio::time::Instant::now() + REDIAL_WINDOW;
    while let Ok(ev) = tokio::time::timeout_at(quiet, events.recv()).await {
        assert_ne!(
            ev.ok(),
            Some(NodeEvent::PeerUp(bob_dev)),
            "the cut link came back up"
        );
    }
    assert!(!bob.connected().contains(&carol_dev));
    assert!(
        carol.connected().contains(&alice_dev),
        "only that link is cut"
    );
    posts_and_arrives(&bob, &carol, ws, "around the cut, through alice").await;

    // Carol cut off from both: what each side writes stays on its side.
    carol.cut(alice_dev).unwrap();
    alice.cut(carol_dev).unwrap();
    disconnected(&carol, alice_dev, "carol's link to alice is down").await;
    let from_bob = post(&bob, ws, "carol is cut off").await;
    let from_carol = post(&carol, ws, "on my own").await;
    let id = from_bob.clone();
    let mut alice_events = alice.subscribe();
    until(
        &alice,
        &mut alice_events,
        "bob's message at alice",
        move |s| s.message(&id).ok(),
    )
    .await;
    assert!(carol.connected().is_empty(), "carol has no link");
    let id = from_bob.clone();
    assert!(carol.call(move |s| s.message(&id).is_err()).await.unwrap());
    let id = from_carol.clone();
    assert!(bob.call(move |s| s.message(&id).is_err()).await.unwrap());

    // Every link restored.
    bob.heal(carol_dev).unwrap();
    carol.heal(bob_dev).unwrap();
    carol.heal(alice_dev).unwrap();
    alice.heal(carol_dev).unwrap();
    connected(&carol, bob_dev, "carol reconnected to bob").await;
    connected(&carol, alice_dev, "carol reconnected to alice").await;
    for (node, id) in [
        (&carol, from_bob),
        (&bob, from_carol.clone()),
        (&alice, from_carol),
    ] {
        let mut events = node.subscribe();
        let got = until(node, &mut events, "the message written apart", move |s| {
            s.message(&id).ok()
        })
        .await;
        assert!(got.verified);
    }
    for node in [alice, bob, carol] {
        node.shutdown().await;
    }
}

/// A bare endpoint with this device key that dials `to` and says Hello, offering nothing.
async fn raw_hello(
    key: [u8; 32],
    to: &Node,
) -> (Transport, peer::net::FrameReader, peer::net::FrameWriter) {
    let raw = Transport::bind(key, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let conn = raw.dial(&to.addr(), Duration::from_secs(5)).await.unwrap();
    let (reader, mut writer) = conn.split();
    writer
        .send(&Frame::Hello {
            version: PROTOCOL_VERSION,
            have: vec![],
        })
        .await
        .unwrap();
    (raw, reader, writer)
}

/// Reads frames until the stream ends or nothing more comes for `quiet`.
async fn frames_until_end(reader: &mut peer::net::FrameReader, quiet: Duration) -> Vec<Frame> {
    let mut out = Vec::new();
    while let Ok(Ok(Some(f))) = tokio::time::timeout(quiet, reader.next()).await {
        out.push(f);
    }
    out
}

/// A stranger's device gets no addresses (alice closes it before any frame); a member of
/// another of alice's workspaces gets only what that workspace shares (alice's own address,
/// not bob's or carol's). What it sends back is bounded and checked: an oversized Peers frame
/// is ignored whole, entries about devices it may not tell of and malformed addresses are
/// dropped, and the connection stays up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn addresses_reach_only_members_of_a_shared_workspace_and_bad_ones_are_dropped() {
    let (mut team, acme) = acme().await;
    let (_carol_home, carol, carol_dev) = team.pop().unwrap();
    let (_bob_home, bob, bob_dev) = team.pop().unwrap();
    let (_alice_home, alice, alice_dev) = team.pop().unwrap();
    // Alice knows where both listen (each told her of itself).
    let mut alice_events = alice.subscribe();
    until(
        &alice,
        &mut alice_events,
        "bob's and carol's addresses at alice",
        {
            move |s| {
                let k = s.known_peers().ok()?;
                (k.iter().any(|(d, _)| *d == bob_dev) && k.iter().any(|(d, _)| *d == carol_dev))
                    .then_some(())
            }
        },
    )
    .await;

    // Erin is a member of alice's other workspace only.
    let other = alice
        .call(|s| s.create_workspace("other"))
        .await
        .unwrap()
        .unwrap();
    let ticket = member_ticket(&alice).await;
    let erin_home = home_with("erin");
    let erin = start(&erin_home).await;
    let mut erin_events = erin.subscribe();
    assert_eq!(erin.join(&ticket).await.unwrap(), other);
    until(
        &erin,
        &mut erin_events,
        "alice's other workspace at erin",
        move |s| s.use_workspace(other).ok(),
    )
    .await;
    let erin_key = erin
        .call(|s| s.identity().unwrap().device.clone())
        .await
        .unwrap();
    let erin_person = erin
        .call(|s| s.identity().unwrap().person_id())
        .await
        .unwrap();
    erin.shutdown().await;
    let learnt = erin_home.open().known_peers().unwrap();
    assert_eq!(
        learnt.iter().map(|(d, _)| *d).collect::<Vec<_>>(),
        vec![alice_dev],
        "erin learnt nobody of acme"
    );

    // Dave is nobody's member: alice closes his connection and tells him nothing.
    let (dave, mut reader, _writer) = raw_hello(peer::random(), &alice).await;
    let to_dave = frames_until_end(&mut reader, WAIT).await;
    assert!(
        !to_dave.iter().any(|f| matches!(f, Frame::Peers { .. })),
        "{to_dave:?}"
    );
    dave.close().await;

    // Erin's device, speaking raw frames: alice tells it of herself only.
    let (raw, mut reader, mut writer) = raw_hello(erin_key.to_bytes(), &alice).await;
    let told = loop {
        match tokio::time::timeout(WAIT, reader.next()).await {
            Ok(Ok(Some(Frame::Peers { peers }))) => break peers,
            Ok(Ok(Some(_))) => {}
            other => panic!("no Peers frame for erin: {other:?}"),
        }
    };
    assert_eq!(
        told.iter().map(|e| e.device).collect::<Vec<_>>(),
        vec![alice_dev],
        "{told:?}"
    );
    let bob_at_alice = known(&alice)
        .await
        .into_iter()
        .find(|(d, _)| *d == bob_dev)
        .unwrap();

    let entry = |device: DeviceId, addrs: &[&str]| PeerEntry {
        device,
        addrs: addrs.iter().map(|a| a.to_string()).collect(),
        updated_ms: peer::now_ms() + 3_600_000,
    };
    let erin_dev = raw.id();
    // Bob is not in a workspace alice shares with erin, the other device is nobody's, and
    // erin's own entry keeps only its well-formed address.
    writer
        .send(&Frame::Peers {
            peers: vec![
                entry(bob_dev, &["127.0.0.1:4"]),
                entry(DeviceId([7; 32]), &["127.0.0.1:5"]),
                entry(erin_dev, &["not an address", "127.0.0.1:6", "ftp://x:1"]),
            ],
        })
        .await
        .unwrap();
    // Over the bound: ignored whole, though every entry is well formed (erin's would move
    // her address).
    let mut over: Vec<PeerEntry> = (0..MAX_PEER_ENTRIES)
        .map(|i| entry(DeviceId([i as u8; 32]), &["127.0.0.1:2"]))
        .collect();
    over.push(entry(erin_dev, &["127.0.0.1:3"]));
    writer.send(&Frame::Peers { peers: over }).await.unwrap();
    // A presence note after them: once alice shows it, she has handled the frames before it.
    let note = Ephemeral {
        workspace: other,
        person: erin_person,
        kind: EphemeralKind::Presence {
            state: Presence::Away,
        },
        at_ms: peer::now_ms(),
    };
    writer
        .send(&Frame::Ephemeral {
            signed: Signed::sign(&erin_key, note).to_bytes(),
        })
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, alice_events.recv()).await {
            Ok(Ok(NodeEvent::Presence {
                device,
                state: Presence::Away,
                ..
            })) if device == erin_dev => break,
            Ok(_) => {}
            Err(_) => panic!("timed out waiting for erin's presence at alice"),
        }
    }
    let after = known(&alice).await;
    assert!(after.contains(&bob_at_alice), "{after:?}");
    assert!(
        after.contains(&(erin_dev, vec!["127.0.0.1:6".to_owned()])),
        "{after:?}"
    );
    assert!(after.iter().all(|(d, _)| *d != DeviceId([7; 32])));
    assert_eq!(after.len(), 3, "bob, carol, erin: {after:?}");
    assert!(
        alice.connected().contains(&erin_dev),
        "the connection stays up"
    );

    drop(writer);
    raw.close().await;

    // Carol removed from acme: bob stops keeping her (no dial loop) and is not connected to her.
    connected(&bob, carol_dev, "bob connected to carol").await;
    let carol_person = carol
        .call(|s| s.identity().unwrap().person_id().to_string())
        .await
        .unwrap();
    let mut bob_events = bob.subscribe();
    alice
        .call(move |s| {
            s.use_workspace(acme)?;
            s.set_role(&carol_person, Role::Removed)
        })
        .await
        .unwrap()
        .unwrap();
    until(&bob, &mut bob_events, "carol let go at bob", move |s| {
        let kept = s.peers_to_keep().ok()?;
        (!s.is_member_device(&carol_dev).ok()? && kept.iter().all(|(to, _)| to.id != carol_dev))
            .then_some(())
    })
    .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while bob.connected().contains(&carol_dev) {
        assert!(
            tokio::time::timeout_at(deadline, bob_events.recv())
                .await
                .is_ok(),
            "bob still connected to removed carol"
        );
    }
    for node in [alice, bob, carol] {
        node.shutdown().await;
    }
}
