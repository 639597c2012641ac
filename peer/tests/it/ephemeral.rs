//! Typing and presence over real nodes on 127.0.0.1: signed ephemeral notes, never stored,
//! that reach only the members' devices that may see the channel, and presence that goes
//! offline when a node stops.

use crdt_model::signed::{Ephemeral, EphemeralKind, Presence, Signed};
use crdt_model::{DocId, PersonId};
use peer::net::Transport;
use peer::node::NodeEvent;
use peer::sync::protocol::{Frame, PROTOCOL_VERSION};
use tokio::sync::broadcast;

use crate::node::WAIT;
use crate::private::team;

/// Waits for the first event `found` accepts; returns it and every event before it.
async fn until_event(
    events: &mut broadcast::Receiver<NodeEvent>,
    what: &str,
    found: impl Fn(&NodeEvent) -> bool,
) -> (NodeEvent, Vec<NodeEvent>) {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut before = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Ok(ev)) if found(&ev) => return (ev, before),
            Ok(Ok(ev)) => before.push(ev),
            Ok(Err(broadcast::error::RecvError::Lagged(_))) => {}
            Ok(Err(e)) => panic!("waiting for {what}: {e}"),
            Err(_) => panic!("timed out waiting for {what}; saw {before:?}"),
        }
    }
}

fn typing_in(ev: &NodeEvent, ch: DocId, who: PersonId) -> bool {
    matches!(ev, NodeEvent::Typing { channel, person, .. } if *channel == ch && *person == who)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_reaches_the_channels_members_and_nobody_else() {
    let (mut t, _ws, general) = team(&["alice", "bob", "carol"]).await;
    let alice = t[0].call(|s| s.identity().unwrap().person_id()).await;
    let secret = t[0]
        .call(|s| s.create_private_channel("secret", "", &["bob".into()]))
        .await
        .unwrap();
    let first = t[0]
        .call(move |s| s.post(secret, "for bob only", None, None))
        .await
        .unwrap()
        .id;
    t[1].sees(&first).await;

    // Only bob's device may see #secret: the note goes to one device.
    assert_eq!(t[0].node.typing(secret).await.unwrap(), 1);
    let (ev, _) = until_event(&mut t[1].events, "alice typing in #secret at bob", |e| {
        typing_in(e, secret, alice)
    })
    .await;
    let NodeEvent::Typing { device, at_ms, .. } = ev else {
        unreachable!()
    };
    assert_eq!(device, t[0].node.addr().id);
    assert!((peer::now_ms() - at_ms).abs() < 10_000);

    // Carol gets the next note, in #general, over the same connection: the #secret one, sent
    // before it, never came.
    assert!(t[0].node.typing(general).await.unwrap() >= 2);
    let (_, before) = until_event(&mut t[2].events, "alice typing in #general at carol", |e| {
        typing_in(e, general, alice)
    })
    .await;
    assert!(
        !before
            .iter()
            .any(|e| matches!(e, NodeEvent::Typing { channel, .. } if *channel == secret)),
        "carol heard of typing in #secret: {before:?}"
    );
    // Nothing of it was stored.
    assert_eq!(t[2].docs_of(secret), 0);
    for m in t {
        m.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_misattributed_notes_are_dropped() {
    let (mut t, ws, general) = team(&["alice", "bob", "carol"]).await;
    let (bob_key, bob) = t[1]
        .call(|s| {
            let me = s.identity().unwrap();
            (me.device.clone(), me.person_id())
        })
        .await;
    let carol = t[2].call(|s| s.identity().unwrap().person_id()).await;
    // Bob's node stops; his device key now speaks raw frames to alice.
    let b = t.remove(1);
    b.shutdown().await;
    let raw = Transport::bind(bob_key.to_bytes(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let conn = raw
        .dial(&t[0].node.addr(), std::time::Duration::from_secs(5))
        .await
        .unwrap();
    let (_reader, mut writer) = conn.split();
    writer
        .send(&Frame::Hello {
            version: PROTOCOL_VERSION,
            have: vec![],
        })
        .await
        .unwrap();
    let note = |person: PersonId, at_ms: i64| Ephemeral {
        workspace: ws,
        person,
        kind: EphemeralKind::Typing { channel: general },
        at_ms,
    };
    // A broken signature.
    let mut forged = Signed::sign(&bob_key, note(bob, peer::now_ms())).to_bytes();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    writer
        .send(&Frame::Ephemeral { signed: forged })
        .await
        .unwrap();
    // Signed by bob's device, claiming to be carol.
    let claims_carol = Signed::sign(&bob_key, note(carol, peer::now_ms())).to_bytes();
    writer
        .send(&Frame::Ephemeral {
            signed: claims_carol,
        })
        .await
        .unwrap();
    // Stale (a replay from a minute ago).
    let stale = Signed::sign(&bob_key, note(bob, peer::now_ms() - 60_000)).to_bytes();
    writer
        .send(&Frame::Ephemeral { signed: stale })
        .await
        .unwrap();
    // Garbage.
    writer
        .send(&Frame::Ephemeral {
            signed: vec![1, 2, 3],
        })
        .await
        .unwrap();
    // Then a genuine one: the only typing alice shows.
    let genuine = Signed::sign(&bob_key, note(bob, peer::now_ms())).to_bytes();
    writer
        .send(&Frame::Ephemeral { signed: genuine })
        .await
        .unwrap();
    let (_, before) = until_event(&mut t[0].events, "bob's genuine typing note", |e| {
        typing_in(e, general, bob)
    })
    .await;
    assert!(
        !before.iter().any(|e| matches!(e, NodeEvent::Typing { .. })),
        "a forged note was shown: {before:?}"
    );
    // The connection survived all of it, and alice's node still works.
    assert!(t[0].node.connected().contains(&raw.id()));
    drop(writer);
    raw.close().await;
    for m in t {
        m.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_online_while_connected_and_offline_when_a_node_stops() {
    let (mut t, _ws, _general) = team(&["alice", "bob"]).await;
    let bob = t[1].call(|s| s.identity().unwrap().person_id()).await;
    let bob_device = t[1].node.addr().id;
    until_event(&mut t[0].events, "bob online at alice", |e| {
        matches!(e, NodeEvent::Presence { person, state: Presence::Online, .. } if *person == bob)
    })
    .await;
    assert_eq!(t[0].node.connected(), vec![bob_device]);
    assert_eq!(
        t[0].node.presence().get(&bob_device),
        Some(&(bob, Presence::Online))
    );

    // Away travels too.
    t[1].node.set_presence(Presence::Away).unwrap();
    until_event(&mut t[0].events, "bob away at alice", |e| {
        matches!(e, NodeEvent::Presence { person, state: Presence::Away, .. } if *person == bob)
    })
    .await;

    let b = t.remove(1);
    b.shutdown().await;
    until_event(&mut t[0].events, "bob offline at alice", |e| {
        matches!(e, NodeEvent::Presence { person, state: Presence::Offline, .. } if *person == bob)
    })
    .await;
    assert!(t[0].node.connected().is_empty());
    assert_eq!(
        t[0].node.presence().get(&bob_device),
        Some(&(bob, Presence::Offline))
    );
    for m in t {
        m.shutdown().await;
    }
}
