//! Typing and presence through the relay, with real nodes and a real relay on 127.0.0.1:
//! members whose nodes reach only the relay still see each other; private channels' typing
//! never goes through it; bad notes are refused and counted without ending the session; a note
//! that arrives both directly and through the relay is shown once.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crdt_model::signed::{Ephemeral, EphemeralKind, Presence, Signed};
use crdt_model::{DeviceId, DocId, Identity, PersonId};
use peer::Store;
use peer::net::{FrameReader, FrameWriter, Transport};
use peer::node::{Node, NodeEvent};
use peer::sync::protocol::Frame;
use tokio::sync::broadcast;

use crate::common::{LIMIT, config, request, start};
use crate::sync::{
    LOOPBACK, alice_adds_relay, bob_joins, greet, hand_over, hello, member_identity, node,
    relay_with_member, until,
};

/// Waits for the first event `found` accepts; returns it and every event before it. (The same
/// helper as `peer`'s `tests/it/ephemeral.rs`, which another crate's tests cannot import.)
async fn until_event(
    events: &mut broadcast::Receiver<NodeEvent>,
    what: &str,
    found: impl Fn(&NodeEvent) -> bool,
) -> (NodeEvent, Vec<NodeEvent>) {
    let deadline = tokio::time::Instant::now() + LIMIT;
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

/// Waits until `node` shows `device`'s presence as `state`, re-checking after every event.
async fn until_presence(
    node: &Node,
    events: &mut broadcast::Receiver<NodeEvent>,
    device: DeviceId,
    state: Presence,
) {
    let deadline = tokio::time::Instant::now() + LIMIT;
    while node.presence().get(&device).map(|(_, s)| *s) != Some(state) {
        if tokio::time::timeout_at(deadline, events.recv())
            .await
            .is_err()
        {
            panic!("timed out waiting for {device} to be {state:?}");
        }
    }
}

fn typing_in(ev: &NodeEvent, ch: DocId, who: PersonId) -> bool {
    matches!(ev, NodeEvent::Typing { channel, person, .. } if *channel == ch && *person == who)
}

/// A signed note by `by`, sent at `at_ms`.
fn note(by: &Identity, ws: DocId, kind: EphemeralKind, at_ms: i64) -> Frame {
    let n = Ephemeral {
        workspace: ws,
        person: by.person_id(),
        kind,
        at_ms,
    };
    Frame::Ephemeral {
        signed: Signed::sign(&by.device, n).to_bytes(),
    }
}

/// Deletes every address a home learnt (from its ticket or from peers), so its node dials
/// nothing but its workspaces' relays when it starts.
fn forget_peers(db: &std::path::Path) {
    rusqlite::Connection::open(db)
        .unwrap()
        .execute("DELETE FROM peers", [])
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_and_public_typing_reach_members_connected_only_to_the_relay() {
    let relay_dir = tempfile::tempdir().unwrap();
    let relay = start(config(relay_dir.path())).await;
    let relay_id = relay.peer_addr().id;
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (db_a, db_b) = (a.path().join("flyt.db"), b.path().join("flyt.db"));

    // Bob joins alice's workspace by ticket (a direct connection to her), and both get a
    // private #secret.
    let (ws, general) = alice_adds_relay(&db_a, &relay).await;
    let alice = node(&db_a).await;
    let mut ev_a = alice.subscribe();
    let (bob, mut ev_b) = bob_joins(&alice, &db_b, ws).await;
    bob.call(move |s| s.set_profile(ws, "bob"))
        .await
        .unwrap()
        .unwrap();
    until(&alice, &mut ev_a, "alice knows bob's name", |s| {
        s.members()
            .ok()?
            .iter()
            .any(|m| m.name == "bob")
            .then_some(())
    })
    .await;
    let secret = alice
        .call(|s| s.create_private_channel("secret", "", &["bob".into()]))
        .await
        .unwrap()
        .unwrap();
    until(&bob, &mut ev_b, "bob has #secret", |s| {
        s.find_channel("secret").ok()
    })
    .await;
    let (alice_person, alice_device) = (
        alice
            .call(|s| s.identity().unwrap().person_id())
            .await
            .unwrap(),
        alice.addr().id,
    );
    alice.shutdown().await;
    bob.shutdown().await;

    // Both start again knowing no address but the relay's: they reach each other only
    // through it.
    forget_peers(&db_a);
    forget_peers(&db_b);
    let alice = node(&db_a).await;
    let bob = node(&db_b).await;
    let mut ev_b = bob.subscribe();
    until_presence(&bob, &mut ev_b, alice_device, Presence::Online).await;
    assert_eq!(
        bob.connected(),
        vec![relay_id],
        "bob reaches only the relay"
    );
    assert_eq!(
        alice.connected(),
        vec![relay_id],
        "alice reaches only the relay"
    );

    // Typing in #secret goes to nobody (the relay may not hear it); in #general, to the relay,
    // which passes it on to bob. The #secret note, sent first, never arrives.
    assert_eq!(alice.typing(secret).await.unwrap(), 0);
    assert_eq!(alice.typing(general).await.unwrap(), 1);
    let (ev, before) = until_event(&mut ev_b, "alice typing in #general at bob", |e| {
        typing_in(e, general, alice_person)
    })
    .await;
    assert!(
        matches!(ev, NodeEvent::Typing { device, .. } if device == alice_device),
        "{ev:?}"
    );
    assert!(
        !before
            .iter()
            .any(|e| matches!(e, NodeEvent::Typing { channel, .. } if *channel == secret)),
        "bob heard of typing in #secret: {before:?}"
    );

    // Away travels through the relay too.
    alice.set_presence(Presence::Away).unwrap();
    until_presence(&bob, &mut ev_b, alice_device, Presence::Away).await;
    assert_eq!(bob.connected(), vec![relay_id]);
    let m = &relay.handle().metrics;
    assert!(m.ephemeral_forwarded.load(Ordering::Relaxed) >= 3);
    assert_eq!(m.ephemeral_refused.load(Ordering::Relaxed), 0);
    alice.shutdown().await;
    bob.shutdown().await;
    relay.shutdown().await;
}

/// Waits until `node` is connected to `device`, re-checking after every event.
async fn until_connected(
    node: &Node,
    events: &mut broadcast::Receiver<NodeEvent>,
    device: DeviceId,
) {
    let deadline = tokio::time::Instant::now() + LIMIT;
    while !node.connected().contains(&device) {
        if tokio::time::timeout_at(deadline, events.recv())
            .await
            .is_err()
        {
            panic!("timed out waiting for a connection to {device}");
        }
    }
}

/// A relay serving alice's workspace with #general and a private #secret, alice's node
/// connected to it, and mallory, a member whose device key the test holds, in a session with
/// the relay (greeted: the relay's Hello is read).
struct Fixture {
    relay: sync_relay::runtime::Relay,
    alice: Node,
    /// Alice's node's events, from before it connected to the relay.
    ev_a: broadcast::Receiver<NodeEvent>,
    alice_id: Identity,
    mallory: Identity,
    /// Mallory's endpoint and its session with the relay.
    raw: Transport,
    from_relay: FrameReader,
    to_relay: FrameWriter,
    ws: DocId,
    general: DocId,
    private: DocId,
    /// The relay's data and alice's home: they must outlive both.
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

async fn relay_alice_and_mallory(mallory_key: [u8; 32]) -> Fixture {
    let (dir, home) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (relay, ws) = relay_with_member(dir.path(), home.path(), mallory_key, |_| {}).await;
    // The owner adds a private channel and hands the relay the workspace again.
    let db = home.path().join("flyt.db");
    let (alice_id, general, private) = {
        let mut s = Store::open(&db).unwrap();
        let general = s.find_channel("general").unwrap();
        let private = s.create_private_channel("secret", "", &[]).unwrap();
        hand_over(&relay, &mut s, ws).await;
        (s.identity().unwrap().clone(), general, private)
    };
    let alice = node(&db).await;
    let mut ev_a = alice.subscribe();
    until_connected(&alice, &mut ev_a, relay.peer_addr().id).await;
    let raw = Transport::bind(mallory_key, LOOPBACK.parse().unwrap())
        .await
        .unwrap();
    let (from_relay, to_relay, first) = greet(&relay, &raw).await;
    assert!(matches!(first, Ok(Some(Frame::Hello { .. }))), "{first:?}");
    Fixture {
        relay,
        alice,
        ev_a,
        alice_id,
        mallory: member_identity(mallory_key),
        raw,
        from_relay,
        to_relay,
        ws,
        general,
        private,
        _dirs: (dir, home),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_notes_are_refused_and_counted_and_the_session_goes_on() {
    let Fixture {
        relay,
        alice,
        mut ev_a,
        alice_id,
        mallory,
        raw,
        from_relay: mut r,
        to_relay: mut w,
        ws,
        general,
        private,
        _dirs,
    } = relay_alice_and_mallory([21; 32]).await;

    let now = peer::now_ms();
    let typing = EphemeralKind::Typing { channel: general };
    let mut forged = note(&mallory, ws, typing, now);
    if let Frame::Ephemeral { signed } = &mut forged {
        let last = signed.len() - 1;
        signed[last] ^= 1;
    }
    let claims_alice = {
        let n = Ephemeral {
            workspace: ws,
            person: alice_id.person_id(),
            kind: typing,
            at_ms: now,
        };
        Frame::Ephemeral {
            signed: Signed::sign(&mallory.device, n).to_bytes(),
        }
    };
    let bad = vec![
        // A broken signature.
        forged,
        // Alice's genuine note, sent over mallory's session: a relay passes on only notes
        // from their own author.
        note(&alice_id, ws, typing, now),
        // Signed by mallory's device, claiming to be alice.
        claims_alice,
        // About a workspace the relay does not serve (mallory is no member there).
        note(&mallory, DocId([5; 16]), typing, now),
        // A replay from a minute ago.
        note(&mallory, ws, typing, now - 60_000),
        // Typing in a private channel.
        note(
            &mallory,
            ws,
            EphemeralKind::Typing { channel: private },
            now,
        ),
        // Not a signed note at all.
        Frame::Ephemeral {
            signed: vec![1, 2, 3],
        },
    ];
    let refused = bad.len() as u64;
    for f in bad {
        w.send(&f).await.unwrap();
    }
    // Then a genuine note: the only typing alice shows. The relay handles one session's frames
    // in order, so every bad one was refused before it passed this one on.
    w.send(&note(&mallory, ws, typing, now)).await.unwrap();
    let (_, before) = until_event(&mut ev_a, "mallory's genuine note at alice", |e| {
        typing_in(e, general, mallory.person_id())
    })
    .await;
    assert!(
        !before.iter().any(|e| matches!(e, NodeEvent::Typing { .. })),
        "a bad note was passed on: {before:?}"
    );
    let m = relay.handle().metrics.clone();
    assert_eq!(m.ephemeral_refused.load(Ordering::Relaxed), refused);
    let (status, body) = request(relay.http_addr(), "GET", "/metrics", b"").await;
    assert_eq!(status, 200);
    let text = String::from_utf8(body).unwrap();
    assert!(
        text.contains(&format!("flyt_relay_ephemeral_refused_total {refused}\n")),
        "{text}"
    );
    assert!(
        text.contains("flyt_relay_ephemeral_forwarded_total "),
        "{text}"
    );
    assert!(m.ephemeral_forwarded.load(Ordering::Relaxed) >= 1);

    // Mallory's session is still up and syncing: alice's next message reaches it.
    assert_eq!(m.connections.load(Ordering::Relaxed), 2);
    alice
        .call(move |s| s.post(general, "still here", None, None).map(|_| ()))
        .await
        .unwrap()
        .unwrap();
    let bucket = alice
        .call(move |s| s.buckets(general).unwrap().pop().unwrap().1)
        .await
        .unwrap();
    tokio::time::timeout(LIMIT, async {
        loop {
            match r.next().await {
                Ok(Some(Frame::Sync { doc, .. })) if doc == bucket => return,
                Ok(Some(_)) => {}
                other => panic!("mallory's session ended: {other:?}"),
            }
        }
    })
    .await
    .expect("the new message reaches mallory's session in time");
    assert_eq!(m.rate_limited.load(Ordering::Relaxed), 0);
    drop(w);
    raw.close().await;
    alice.shutdown().await;
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_note_heard_directly_and_through_the_relay_shows_once() {
    let Fixture {
        relay,
        alice,
        mut ev_a,
        mallory,
        raw,
        from_relay: _from_relay,
        to_relay: mut via_relay,
        ws,
        general,
        _dirs,
        ..
    } = relay_alice_and_mallory([23; 32]).await;
    // Mallory's device also talks to alice's node directly.
    let (_r_direct, mut direct) = raw
        .dial(&alice.addr(), Duration::from_secs(5))
        .await
        .unwrap()
        .split();
    direct.send(&hello()).await.unwrap();

    // One note both ways; then on each path a later note of its own. Each connection is
    // handled in order (the relay's too), so once both later notes showed, both copies of the
    // first one have been handled.
    let now = peer::now_ms();
    let typing = EphemeralKind::Typing { channel: general };
    let twice = note(&mallory, ws, typing, now);
    via_relay.send(&twice).await.unwrap();
    direct.send(&twice).await.unwrap();
    direct
        .send(&note(&mallory, ws, typing, now + 1))
        .await
        .unwrap();
    via_relay
        .send(&note(&mallory, ws, typing, now + 2))
        .await
        .unwrap();
    let mut seen = Vec::new();
    while !(seen.contains(&(now + 1)) && seen.contains(&(now + 2))) {
        let (ev, _) = until_event(&mut ev_a, "mallory's typing at alice", |e| {
            typing_in(e, general, mallory.person_id())
        })
        .await;
        if let NodeEvent::Typing { at_ms, .. } = ev {
            seen.push(at_ms);
        }
    }
    seen.sort();
    assert_eq!(seen, vec![now, now + 1, now + 2], "each note once");
    assert!(alice.connected().contains(&mallory.device_id()));
    assert!(alice.connected().contains(&relay.peer_addr().id));
    drop((via_relay, direct));
    raw.close().await;
    alice.shutdown().await;
    relay.shutdown().await;
}
