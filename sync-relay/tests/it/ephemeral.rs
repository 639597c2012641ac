//! Typing and presence through the relay, with real nodes and a real relay on 127.0.0.1:
//! members whose nodes reach only the relay still see each other; private channels' typing
//! never goes through it; bad notes are refused and counted without ending the session; a note
//! that arrives both directly and through the relay is shown once.

use std::sync::atomic::Ordering;
use std::time::Duration;

use ciborium::Value;
use crdt_model::signed::{Ephemeral, EphemeralKind, Presence, Signed};
use crdt_model::{DeviceId, DocId, Identity, PersonId, Role};
use futures_util::{SinkExt, StreamExt};
use peer::Store;
use peer::net::{FrameReader, FrameWriter, Transport};
use peer::node::{Node, NodeEvent};
use peer::sync::protocol::Frame;
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::Message as WsMessage;

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

/// A note by `by`, sent at `at_ms`, as envelope bytes.
fn signed(by: &Identity, ws: DocId, kind: EphemeralKind, at_ms: i64) -> Vec<u8> {
    let n = Ephemeral {
        workspace: ws,
        person: by.person_id(),
        kind,
        at_ms,
    };
    Signed::sign(&by.device, n).to_bytes()
}

/// A signed note by `by`, sent at `at_ms`.
fn note(by: &Identity, ws: DocId, kind: EphemeralKind, at_ms: i64) -> Frame {
    Frame::Ephemeral {
        signed: signed(by, ws, kind, at_ms),
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
pub(crate) async fn until_connected(
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
/// the relay (greeted: the relay's Hello is read); wendy, another member whose key the test
/// holds, for WebSocket clients.
struct Fixture {
    relay: sync_relay::runtime::Relay,
    alice: Node,
    /// Alice's node's events, from before it connected to the relay.
    ev_a: broadcast::Receiver<NodeEvent>,
    alice_id: Identity,
    mallory: Identity,
    wendy: Identity,
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

/// The member [`Fixture`] admits for WebSocket clients.
fn wendy() -> Identity {
    Identity::from_secrets([31; 32], [131; 32], "wendy")
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
        s.admit(
            &wendy().device_cert("browser", peer::now_ms()),
            Role::Member,
        )
        .unwrap();
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
        wendy: wendy(),
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
        ..
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

type WsClient =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;
type CborMap = Vec<(Value, Value)>;

/// One CBOR map with text keys, as bytes.
fn cbor(fields: Vec<(&str, Value)>) -> Vec<u8> {
    let map = Value::Map(
        fields
            .into_iter()
            .map(|(k, v)| (Value::Text(k.into()), v))
            .collect(),
    );
    let mut out = Vec::new();
    ciborium::into_writer(&map, &mut out).unwrap();
    out
}

fn get<'a>(m: &'a CborMap, key: &str) -> Option<&'a Value> {
    m.iter()
        .find(|(k, _)| k.as_text() == Some(key))
        .map(|(_, v)| v)
}

fn text<'a>(m: &'a CborMap, key: &str) -> Option<&'a str> {
    get(m, key).and_then(Value::as_text)
}

fn int(m: &CborMap, key: &str) -> Option<i128> {
    get(m, key).and_then(Value::as_integer).map(i128::from)
}

/// A `request` for `doc` from a client holding nothing (what automerge-repo's `find` sends).
fn ws_request(doc: DocId) -> WsMessage {
    let first = automerge::sync::SyncDoc::generate_sync_message(
        &automerge::Automerge::new(),
        &mut automerge::sync::State::new(),
    )
    .unwrap();
    WsMessage::Binary(
        cbor(vec![
            ("type", Value::Text("request".into())),
            ("senderId", Value::Text("wendy-tab".into())),
            ("targetId", Value::Text("relay".into())),
            ("documentId", Value::Text(doc.to_string())),
            ("data", Value::Bytes(first.encode())),
        ])
        .into(),
    )
}

/// An `ephemeral` message from the client, as automerge-repo sends one (`data` left out when
/// `None`).
fn ws_ephemeral(ws: DocId, count: u64, data: Option<Vec<u8>>) -> WsMessage {
    let mut fields = vec![
        ("type", Value::Text("ephemeral".into())),
        ("senderId", Value::Text("wendy-tab".into())),
        ("targetId", Value::Text("relay".into())),
        ("documentId", Value::Text(ws.to_string())),
        ("sessionId", Value::Text("tab-session".into())),
        ("count", Value::Integer(count.into())),
    ];
    if let Some(d) = data {
        fields.push(("data", Value::Bytes(d)));
    }
    WsMessage::Binary(cbor(fields).into())
}

/// `data` as the relay sends it: a map with the envelope in `signed`.
fn note_map(envelope: Vec<u8>) -> Vec<u8> {
    cbor(vec![("signed", Value::Bytes(envelope))])
}

/// `/sync` as `who`: joined, and the workspace document asked for.
async fn ws_member(relay: &sync_relay::runtime::Relay, who: &Identity, ws: DocId) -> WsClient {
    let url = format!(
        "ws://{}/sync?{}",
        relay.http_addr(),
        sync_relay::ws::sync_query(&who.device, peer::now_ms())
    );
    let (mut c, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    c.send(WsMessage::Binary(
        cbor(vec![
            ("type", Value::Text("join".into())),
            ("senderId", Value::Text("wendy-tab".into())),
            (
                "supportedProtocolVersions",
                Value::Array(vec![Value::Text("1".into())]),
            ),
        ])
        .into(),
    ))
    .await
    .unwrap();
    let peer = ws_next(&mut c, "the relay's peer message", |m| {
        text(m, "type") == Some("peer")
    })
    .await;
    assert_eq!(text(&peer, "targetId"), Some("wendy-tab"));
    c.send(ws_request(ws)).await.unwrap();
    c
}

/// The next message from the relay that `found` accepts (others are skipped).
async fn ws_next(c: &mut WsClient, what: &str, found: impl Fn(&CborMap) -> bool) -> CborMap {
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let m = tokio::time::timeout_at(deadline, c.next())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
        match m {
            Some(Ok(WsMessage::Binary(b))) => {
                let Value::Map(m) = ciborium::from_reader(&b[..]).unwrap() else {
                    panic!("not a CBOR map")
                };
                if found(&m) {
                    return m;
                }
            }
            Some(Ok(_)) => {}
            other => panic!("the socket ended waiting for {what}: {other:?}"),
        }
    }
}

/// The next `ephemeral` message whose note (`data`, decoded) `found` accepts: (message, note).
async fn ws_note(
    c: &mut WsClient,
    what: &str,
    found: impl Fn(&CborMap) -> bool,
) -> (CborMap, CborMap) {
    let data = |m: &CborMap| -> Option<CborMap> {
        let b = get(m, "data")?.as_bytes()?;
        ciborium::from_reader::<Value, _>(&b[..])
            .ok()?
            .into_map()
            .ok()
    };
    let m = ws_next(c, what, |m| {
        text(m, "type") == Some("ephemeral") && data(m).is_some_and(|d| found(&d))
    })
    .await;
    let d = data(&m).unwrap();
    (m, d)
}

/// What a WebSocket client makes of a note: its readable fields agree with the signed
/// envelope it carries.
fn check_note_data(d: &CborMap, ws: DocId, by: &Identity) -> Signed<Ephemeral> {
    let envelope = get(d, "signed").and_then(Value::as_bytes).unwrap();
    let n = Signed::<Ephemeral>::decode(envelope).expect("a valid envelope");
    assert_eq!(n.device(), by.device_id());
    assert_eq!(n.payload.workspace, ws);
    assert_eq!(text(d, "workspace"), Some(&*ws.to_string()));
    assert_eq!(text(d, "person"), Some(&*by.person_id().to_string()));
    assert_eq!(text(d, "device"), Some(&*by.device_id().to_string()));
    assert_eq!(int(d, "at_ms"), Some(i128::from(n.payload.at_ms)));
    n
}

/// `GET /sync` carries typing and presence both ways: a WebSocket client of a member device
/// hears alice's presence (told as soon as it asks for the workspace) and typing as
/// automerge-repo `ephemeral` messages; its bad notes are refused and counted while its socket
/// keeps syncing; its good notes reach alice's node (typing, presence) and mallory's iroh
/// session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_member_hears_notes_and_its_own_reach_the_members() {
    let Fixture {
        relay,
        alice,
        mut ev_a,
        alice_id,
        wendy,
        raw,
        from_relay: mut r,
        // Mallory's session lasts while its writer does.
        to_relay: _w,
        ws,
        general,
        private,
        _dirs,
        ..
    } = relay_alice_and_mallory([27; 32]).await;
    let mut c = ws_member(&relay, &wendy, ws).await;
    let relay_peer = format!("flyt-relay-{}", &relay.handle().info.id[..16]);

    // Alice's presence, then her typing in #general.
    let alice_hex = alice_id.device_id().to_string();
    let (m, d) = ws_note(&mut c, "alice's presence", |d| {
        text(d, "kind") == Some("presence") && text(d, "device") == Some(&alice_hex)
    })
    .await;
    assert_eq!(text(&m, "senderId"), Some(&*relay_peer));
    assert_eq!(text(&m, "targetId"), Some("wendy-tab"));
    assert_eq!(text(&m, "documentId"), Some(&*ws.to_string()));
    assert_eq!(text(&d, "state"), Some("online"));
    let n = check_note_data(&d, ws, &alice_id);
    assert_eq!(
        n.payload.kind,
        EphemeralKind::Presence {
            state: Presence::Online
        }
    );
    let (session, count) = (text(&m, "sessionId").unwrap().to_owned(), int(&m, "count"));
    assert_eq!(alice.typing(general).await.unwrap(), 1);
    let (m, d) = ws_note(&mut c, "alice typing in #general", |d| {
        text(d, "kind") == Some("typing") && text(d, "device") == Some(&alice_hex)
    })
    .await;
    assert_eq!(text(&d, "channel"), Some(&*general.to_string()));
    check_note_data(&d, ws, &alice_id);
    assert_eq!(text(&m, "sessionId"), Some(&*session));
    assert!(
        int(&m, "count") > count,
        "counts rise: automerge-repo drops repeats"
    );

    // Bad notes from the socket.
    let now = peer::now_ms();
    let typing = EphemeralKind::Typing { channel: general };
    let mut forged = signed(&wendy, ws, typing, now);
    *forged.last_mut().unwrap() ^= 1;
    let bad = vec![
        // A broken signature.
        Some(note_map(forged)),
        // Alice's genuine note, sent over wendy's socket.
        Some(note_map(signed(&alice_id, ws, typing, now))),
        // A replay from a minute ago.
        Some(note_map(signed(&wendy, ws, typing, now - 60_000))),
        // Typing in a private channel.
        Some(note_map(signed(
            &wendy,
            ws,
            EphemeralKind::Typing { channel: private },
            now,
        ))),
        // Not a note: CBOR that is no envelope, a map without one, nothing at all.
        Some(vec![1, 2, 3]),
        Some(cbor(vec![("kind", Value::Text("typing".into()))])),
        None,
    ];
    let refused = bad.len() as u64;
    for (i, data) in bad.into_iter().enumerate() {
        c.send(ws_ephemeral(ws, i as u64 + 1, data)).await.unwrap();
    }
    // Then good ones: typing (data a map, as the relay sends), and presence (data the envelope
    // itself, as `handle.broadcast(envelope)` sends it). The relay handles one session's
    // frames in order: every bad note was refused before it passed these on.
    let good = signed(&wendy, ws, typing, now);
    c.send(ws_ephemeral(ws, 20, Some(note_map(good.clone()))))
        .await
        .unwrap();
    let online = signed(
        &wendy,
        ws,
        EphemeralKind::Presence {
            state: Presence::Online,
        },
        now,
    );
    let mut as_bytes = Vec::new();
    ciborium::into_writer(&Value::Bytes(online), &mut as_bytes).unwrap();
    c.send(ws_ephemeral(ws, 21, Some(as_bytes))).await.unwrap();
    let (_, before) = until_event(&mut ev_a, "wendy typing in #general at alice", |e| {
        typing_in(e, general, wendy.person_id())
    })
    .await;
    assert!(
        !before.iter().any(
            |e| matches!(e, NodeEvent::Typing { person, .. } if *person != alice_id.person_id())
        ),
        "a bad note was passed on: {before:?}"
    );
    until_presence(&alice, &mut ev_a, wendy.device_id(), Presence::Online).await;
    // Mallory's iroh session gets wendy's typing as the envelope she signed.
    tokio::time::timeout(LIMIT, async {
        loop {
            match r.next().await {
                Ok(Some(Frame::Ephemeral { signed })) if signed == good => return,
                Ok(Some(_)) => {}
                other => panic!("mallory's session ended: {other:?}"),
            }
        }
    })
    .await
    .expect("wendy's note reaches mallory's iroh session");
    let metrics = relay.handle().metrics.clone();
    assert_eq!(metrics.ephemeral_refused.load(Ordering::Relaxed), refused);
    let (_, body) = request(relay.http_addr(), "GET", "/metrics", b"").await;
    let body = String::from_utf8(body).unwrap();
    assert!(
        body.contains(&format!("flyt_relay_ephemeral_refused_total {refused}\n")),
        "{body}"
    );

    // The socket is still up and syncing: asking for #general's document gets its sync.
    c.send(ws_request(general)).await.unwrap();
    let general_text = general.to_string();
    ws_next(&mut c, "a sync of #general", |m| {
        text(m, "type") == Some("sync") && text(m, "documentId") == Some(&general_text)
    })
    .await;
    assert_eq!(metrics.connections.load(Ordering::Relaxed), 3);
    drop(c);
    raw.close().await;
    alice.shutdown().await;
    relay.shutdown().await;
}

/// The real thing: `@automerge/automerge-repo` under Node, as a member device, finds the
/// workspace document through `/sync` and hears alice's presence through `ephemeral-message`
/// (npm packages in `sync-relay/tests/js`, installed by `npm ci` there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_js_automerge_repo_client_hears_presence_through_ephemeral_message() {
    let Fixture {
        relay,
        alice,
        alice_id,
        wendy,
        raw,
        ws,
        _dirs,
        ..
    } = relay_alice_and_mallory([29; 32]).await;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js");
    assert!(
        dir.join("node_modules/@automerge/automerge-repo").exists(),
        "run `npm ci` in {} first (.ci/run does)",
        dir.display()
    );
    let url = format!(
        "ws://{}/sync?{}",
        relay.http_addr(),
        sync_relay::ws::sync_query(&wendy.device, peer::now_ms())
    );
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("node")
            .arg(dir.join("sync.mjs"))
            .arg(url)
            .arg(ws.to_string())
            .arg("--ephemeral")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the JS client finishes in time")
    .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "node failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim().lines().last().unwrap()).unwrap();
    assert!(
        v["keys"].as_array().is_some_and(|k| !k.is_empty()),
        "the workspace document synced: {v}"
    );
    let m = &v["message"];
    assert_eq!(m["kind"], "presence", "{v}");
    assert_eq!(m["state"], "online", "{v}");
    assert_eq!(m["workspace"], ws.to_string());
    assert_eq!(m["device"], alice_id.device_id().to_string());
    assert_eq!(m["person"], alice_id.person_id().to_string());
    let envelope = hex::decode(m["signed"].as_str().unwrap()).unwrap();
    let n = Signed::<Ephemeral>::decode(&envelope).expect("the envelope verifies");
    assert_eq!(n.device(), alice_id.device_id());
    assert_eq!(m["at_ms"], n.payload.at_ms);
    assert_eq!(
        v["senderId"],
        format!("flyt-relay-{}", &relay.handle().info.id[..16])
    );
    raw.close().await;
    alice.shutdown().await;
    relay.shutdown().await;
}

/// A WebSocket client that floods the relay (more messages than the frame burst, at once) gets
/// an `error` and a closed connection, counted as rate limited; the relay still serves, and the
/// same member connects again and hears alice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_flood_closes_that_connection_only() {
    let Fixture {
        relay,
        alice,
        alice_id,
        wendy,
        to_relay: _w,
        ws,
        _dirs,
        ..
    } = relay_alice_and_mallory([28; 32]).await;
    let burst = relay.handle().config.frame_burst as u64;
    let mut c = ws_member(&relay, &wendy, ws).await;
    let heads = || {
        WsMessage::Binary(
            cbor(vec![
                ("type", Value::Text("remote-heads-changed".into())),
                ("senderId", Value::Text("wendy-tab".into())),
                ("targetId", Value::Text("relay".into())),
                ("documentId", Value::Text(ws.to_string())),
            ])
            .into(),
        )
    };
    for _ in 0..burst + 100 {
        if c.feed(heads()).await.is_err() {
            break;
        }
    }
    let _ = c.flush().await;
    let err = ws_next(&mut c, "the relay's error", |m| {
        text(m, "type") == Some("error")
    })
    .await;
    let why = text(&err, "message").unwrap_or_default();
    assert!(why.contains("rate limit"), "{why}");
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        match tokio::time::timeout_at(deadline, c.next()).await {
            Ok(None | Some(Err(_)) | Some(Ok(WsMessage::Close(_)))) => break,
            Ok(Some(Ok(_))) => {}
            Err(_) => panic!("the flooding connection stayed open"),
        }
    }
    let m = &relay.handle().metrics;
    assert_eq!(m.rate_limited.load(Ordering::Relaxed), 1);
    assert_eq!(
        request(relay.http_addr(), "GET", "/readyz", b"").await.0,
        200
    );

    // The relay goes on: wendy again, hearing alice's presence.
    let mut c = ws_member(&relay, &wendy, ws).await;
    let alice_hex = alice_id.device_id().to_string();
    ws_note(&mut c, "alice's presence", |d| {
        text(d, "kind") == Some("presence") && text(d, "device") == Some(&alice_hex)
    })
    .await;
    alice.shutdown().await;
    relay.shutdown().await;
}
