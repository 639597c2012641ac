//! `/sync` over real sockets: a `tokio-tungstenite` client for the protocol and its bad input,
//! and the real JS automerge-repo client under Node.
//!
//! The hub here is `peer`'s sync engine over an in-memory [`Host`] (documents in a map, members
//! by device): the WebSocket framing is what is under test; the relay's own host and share
//! policy have their own tests.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use automerge::sync::{self as amsync, SyncDoc};
use automerge::transaction::Transactable;
use automerge::{Automerge, ROOT, ReadDoc};
use futures_util::{SinkExt, StreamExt};
use peer::sync::engine::{Action, Engine, Event, Host};
use peer::sync::protocol::DocRef;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::*;
use crate::api::MAX_SKEW_MS;
use crdt_model::Identity;

/// Documents in memory; members by device; every member may see every document.
#[derive(Default)]
struct MemHost {
    docs: HashMap<DocId, Automerge>,
    members: HashSet<DeviceId>,
}

impl Host for MemHost {
    fn doc(&mut self, id: DocId) -> Option<&mut Automerge> {
        self.docs.get_mut(&id)
    }
    fn doc_ref(&mut self, id: DocId) -> Option<DocRef> {
        self.docs
            .contains_key(&id)
            .then_some(DocRef::Workspace { id })
    }
    fn create(&mut self, _: &DocRef) -> Option<&mut Automerge> {
        None
    }
    fn may_connect(&mut self, peer: &DeviceId) -> bool {
        self.members.contains(peer)
    }
    fn may_share(&mut self, peer: &DeviceId, _: DocId) -> bool {
        self.members.contains(peer)
    }
    fn may_accept(&mut self, _: &DeviceId, _: &DocRef) -> bool {
        false
    }
    fn offer(&mut self, _: &DeviceId) -> Vec<DocRef> {
        self.docs
            .keys()
            .map(|id| DocRef::Workspace { id: *id })
            .collect()
    }
    fn saved_state(&mut self, _: &DeviceId, _: DocId) -> Option<Vec<u8>> {
        None
    }
}

struct Inner {
    engine: Engine,
    host: MemHost,
    /// peer -> (connection number, frames to it)
    conns: HashMap<DeviceId, (u64, mpsc::Sender<Frame>)>,
    next: u64,
}

/// The engine behind a mutex; each event handled inline.
#[derive(Clone)]
struct MemHub(Arc<Mutex<Inner>>);

impl MemHub {
    fn new(host: MemHost) -> Self {
        MemHub(Arc::new(Mutex::new(Inner {
            engine: Engine::new(),
            host,
            conns: HashMap::new(),
            next: 0,
        })))
    }

    fn handle(&self, event: Event) {
        let mut g = self.0.lock().unwrap();
        let Inner {
            engine,
            host,
            conns,
            ..
        } = &mut *g;
        for a in engine.handle(host, event) {
            match a {
                Action::Send(p, f) => {
                    if let Some((_, tx)) = conns.get(&p) {
                        let _ = tx.try_send(f);
                    }
                }
                Action::Close(p, _) => {
                    conns.remove(&p);
                }
                _ => {}
            }
        }
    }

    fn doc(&self, id: DocId) -> Automerge {
        self.0.lock().unwrap().host.docs[&id].clone()
    }
}

impl SyncHub for MemHub {
    fn attach(&self, peer: DeviceId) -> Option<Link> {
        let (to_engine, mut rx) = mpsc::unbounded_channel::<Frame>();
        let (tx, from_engine) = mpsc::channel(1024);
        let id = {
            let mut g = self.0.lock().unwrap();
            g.next += 1;
            let id = g.next;
            if g.conns.insert(peer, (id, tx)).is_some() {
                drop(g);
                self.handle(Event::Disconnected(peer));
            }
            id
        };
        self.handle(Event::Connected(peer));
        let hub = self.clone();
        tokio::spawn(async move {
            let current =
                |hub: &MemHub| hub.0.lock().unwrap().conns.get(&peer).map(|c| c.0) == Some(id);
            while let Some(f) = rx.recv().await {
                if current(&hub) {
                    hub.handle(Event::Frame(peer, f));
                }
            }
            // A replaced connection's end is not the peer's end.
            if current(&hub) {
                hub.0.lock().unwrap().conns.remove(&peer);
                hub.handle(Event::Disconnected(peer));
            }
        });
        Some(Link {
            send: Box::new(move |f| to_engine.send(f).is_ok()),
            from_engine,
        })
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

struct Server {
    addr: std::net::SocketAddr,
    hub: MemHub,
    doc: DocId,
    member: Identity,
    _task: tokio::task::JoinHandle<()>,
}

/// A relay-like server on 127.0.0.1 with one document (`{"title": "hello from flyt"}`) and one
/// member device.
async fn server() -> Server {
    let member = Identity::from_secrets([1; 32], [2; 32], "alice");
    let doc_id = DocId([42; 16]);
    let mut doc = Automerge::new();
    let mut tx = doc.transaction();
    tx.put(ROOT, "title", "hello from flyt").unwrap();
    tx.commit();
    let mut host = MemHost::default();
    host.docs.insert(doc_id, doc);
    host.members.insert(member.device_id());
    let hub = MemHub::new(host);
    let app = router(WsState {
        hub: Arc::new(hub.clone()),
        peer_id: "flyt-relay-test".into(),
        now_ms: now,
        limits: None,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    Server {
        addr,
        hub,
        doc: doc_id,
        member,
        _task: task,
    }
}

type Client =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

impl Server {
    fn url(&self, who: &Identity) -> String {
        format!("ws://{}/sync?{}", self.addr, sync_query(&who.device, now()))
    }

    async fn connect(&self, who: &Identity) -> Client {
        tokio_tungstenite::connect_async(self.url(who))
            .await
            .unwrap()
            .0
    }
}

fn cbor(fields: Vec<(&str, Value)>) -> WsMessage {
    match encode(fields) {
        Message::Binary(b) => WsMessage::Binary(b.to_vec().into()),
        _ => unreachable!(),
    }
}

fn join() -> WsMessage {
    cbor(vec![
        ("type", Value::Text("join".into())),
        ("senderId", Value::Text("js-client".into())),
        (
            "supportedProtocolVersions",
            Value::Array(vec![Value::Text("1".into())]),
        ),
    ])
}

/// The next CBOR map from the server (`None` once it closed), within 10 s.
async fn recv(c: &mut Client) -> Option<Vec<(Value, Value)>> {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), c.next())
            .await
            .expect("the server answers in time");
        match m {
            None | Some(Err(_)) | Some(Ok(WsMessage::Close(_))) => return None,
            Some(Ok(WsMessage::Binary(b))) => {
                let Value::Map(m) = ciborium::from_reader(&b[..]).unwrap() else {
                    panic!("not a map")
                };
                return Some(m);
            }
            Some(Ok(_)) => {}
        }
    }
}

fn kind(m: &[(Value, Value)]) -> String {
    field(m, "type")
        .and_then(Value::as_text)
        .unwrap()
        .to_owned()
}

/// Expects an `error` message, then the socket closing.
async fn expect_error(c: &mut Client, containing: &str) {
    let m = recv(c).await.expect("an error message before the close");
    assert_eq!(kind(&m), "error");
    let text = field(&m, "message").and_then(Value::as_text).unwrap();
    assert!(
        text.contains(containing),
        "{text:?} should mention {containing:?}"
    );
    assert!(recv(c).await.is_none(), "then the socket closes");
}

/// A `request` or `sync` message from the test client about `doc`.
fn doc_message(kind: &str, doc: DocId, data: Vec<u8>) -> WsMessage {
    cbor(vec![
        ("type", Value::Text(kind.into())),
        ("senderId", Value::Text("js-client".into())),
        ("targetId", Value::Text("flyt-relay-test".into())),
        ("documentId", Value::Text(doc.to_string())),
        ("data", Value::Bytes(data)),
    ])
}

/// Plays the client's side of automerge's sync protocol until `done(mine)`.
async fn sync_until(
    c: &mut Client,
    doc: DocId,
    mine: &mut Automerge,
    state: &mut amsync::State,
    done: impl Fn(&Automerge) -> bool,
) {
    while !done(mine) {
        let m = recv(c).await.expect("sync messages");
        assert_eq!(kind(&m), "sync", "{m:?}");
        assert_eq!(
            field(&m, "documentId").and_then(Value::as_text),
            Some(&*doc.to_string())
        );
        let data = field(&m, "data").and_then(Value::as_bytes).unwrap();
        mine.receive_sync_message(state, amsync::Message::decode(data).unwrap())
            .unwrap();
        if let Some(reply) = mine.generate_sync_message(state) {
            c.send(doc_message("sync", doc, reply.encode()))
                .await
                .unwrap();
        }
    }
}

#[tokio::test]
async fn a_member_syncs_a_document_and_gets_changes_live() {
    let s = server().await;
    let mut c = s.connect(&s.member).await;
    c.send(join()).await.unwrap();
    let peer = recv(&mut c).await.unwrap();
    assert_eq!(kind(&peer), "peer");
    assert_eq!(
        field(&peer, "targetId").and_then(Value::as_text),
        Some("js-client")
    );
    assert_eq!(
        field(&peer, "selectedProtocolVersion").and_then(Value::as_text),
        Some("1")
    );
    // Request the document with a first sync message from an empty one, as automerge-repo does.
    let mut mine = Automerge::new();
    let mut state = amsync::State::new();
    let first = mine.generate_sync_message(&mut state).unwrap();
    c.send(doc_message("request", s.doc, first.encode()))
        .await
        .unwrap();
    let title = |d: &Automerge| {
        d.get(ROOT, "title")
            .unwrap()
            .and_then(|(v, _)| v.as_str().map(str::to_owned))
    };
    sync_until(&mut c, s.doc, &mut mine, &mut state, |d| title(d).is_some()).await;
    assert_eq!(title(&mine).as_deref(), Some("hello from flyt"));
    // A change the relay's engine learns of reaches this client (fan-out).
    {
        let mut g = s.hub.0.lock().unwrap();
        let d = g.host.docs.get_mut(&s.doc).unwrap();
        let mut tx = d.transaction();
        tx.put(ROOT, "title", "changed on the relay").unwrap();
        tx.commit();
    }
    s.hub.handle(Event::LocalChange(vec![s.doc]));
    sync_until(&mut c, s.doc, &mut mine, &mut state, |d| {
        title(d).as_deref() == Some("changed on the relay")
    })
    .await;
    assert_eq!(s.hub.doc(s.doc).get_heads(), mine.get_heads());
}

#[tokio::test]
async fn an_unknown_document_is_unavailable_and_costs_nothing() {
    let s = server().await;
    let mut c = s.connect(&s.member).await;
    c.send(join()).await.unwrap();
    assert_eq!(kind(&recv(&mut c).await.unwrap()), "peer");
    let unknown = DocId([9; 16]);
    let first = Automerge::new()
        .generate_sync_message(&mut amsync::State::new())
        .unwrap();
    c.send(doc_message("request", unknown, first.encode()))
        .await
        .unwrap();
    let m = recv(&mut c).await.unwrap();
    assert_eq!(kind(&m), "doc-unavailable");
    assert_eq!(
        field(&m, "documentId").and_then(Value::as_text),
        Some(&*unknown.to_string())
    );
    // Sync state exists only for the one document the relay holds, none for the unknown id.
    let g = s.hub.0.lock().unwrap();
    assert_eq!(g.engine.doc_count(&s.member.device_id()), g.host.docs.len());
}

#[tokio::test]
async fn bad_input_gets_an_error_and_a_closed_socket() {
    let s = server().await;
    let sync_for = |doc: &str| {
        cbor(vec![
            ("type", Value::Text("sync".into())),
            ("senderId", Value::Text("js-client".into())),
            ("targetId", Value::Text("flyt-relay-test".into())),
            ("documentId", Value::Text(doc.into())),
            ("data", Value::Bytes(vec![1, 2, 3])),
        ])
    };
    let cases: Vec<(bool, WsMessage, &str)> = vec![
        (
            false,
            WsMessage::Binary(vec![0xff, 0x00, 0x13].into()),
            "not valid CBOR",
        ),
        (
            false,
            WsMessage::Binary(vec![0x01].into()),
            "not a CBOR map",
        ),
        (
            false,
            WsMessage::Text("{\"type\":\"join\"}".into()),
            "text messages",
        ),
        (false, sync_for(&s.doc.to_string()), "must be join"),
        (
            false,
            cbor(vec![
                ("type", Value::Text("join".into())),
                ("senderId", Value::Text("x".into())),
                (
                    "supportedProtocolVersions",
                    Value::Array(vec![Value::Text("9".into())]),
                ),
            ]),
            "unsupported protocol",
        ),
        (
            true,
            cbor(vec![("type", Value::Text("gossip".into()))]),
            "unknown message type",
        ),
        (
            true,
            cbor(vec![("nope", Value::Integer(1.into()))]),
            "\"type\"",
        ),
        (true, sync_for("not-a-doc-id"), "not a document id"),
        (true, join(), "second join"),
        // Not an Automerge sync message: the engine closes the connection.
        (
            true,
            sync_for(&s.doc.to_string()),
            "relay closed this connection",
        ),
    ];
    for (after_join, msg, want) in cases {
        let mut c = s.connect(&s.member).await;
        if after_join {
            c.send(join()).await.unwrap();
            assert_eq!(kind(&recv(&mut c).await.unwrap()), "peer");
        }
        c.send(msg).await.unwrap();
        expect_error(&mut c, want).await;
    }
    // The server still serves after all that.
    let mut c = s.connect(&s.member).await;
    c.send(join()).await.unwrap();
    assert_eq!(kind(&recv(&mut c).await.unwrap()), "peer");
}

#[tokio::test]
async fn an_oversized_message_closes_the_socket() {
    let s = server().await;
    let mut c = s.connect(&s.member).await;
    c.send(join()).await.unwrap();
    assert_eq!(kind(&recv(&mut c).await.unwrap()), "peer");
    let _ = c
        .send(WsMessage::Binary(vec![0u8; MAX_MESSAGE + 1].into()))
        .await;
    assert!(recv(&mut c).await.is_none(), "closed");
    let mut c = s.connect(&s.member).await;
    c.send(join()).await.unwrap();
    assert_eq!(
        kind(&recv(&mut c).await.unwrap()),
        "peer",
        "the server lives on"
    );
}

#[tokio::test]
async fn non_members_and_bad_tokens_get_nothing() {
    let s = server().await;
    // A valid token of a device that is no member's: closed right after the handshake.
    let stranger = Identity::from_secrets([7; 32], [8; 32], "eve");
    let mut c = s.connect(&stranger).await;
    c.send(join()).await.unwrap();
    assert_eq!(kind(&recv(&mut c).await.unwrap()), "peer");
    expect_error(&mut c, "not a member").await;
    // Bad or missing tokens: refused before the upgrade, with a JSON reason.
    let base = format!("ws://{}/sync", s.addr);
    let q = sync_query(&s.member.device, now());
    let stale = sync_query(&s.member.device, now() - MAX_SKEW_MS - 10_000);
    let forged = q.replace(
        &hex::encode(s.member.device_id().0),
        &hex::encode(stranger.device_id().0),
    );
    for (url, status) in [
        (base.clone(), 401),
        (format!("{base}?device=00&ts=1&sig=00"), 401),
        (format!("{base}?{stale}"), 401),
        (format!("{base}?{forged}"), 401),
    ] {
        match tokio_tungstenite::connect_async(&url).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status().as_u16(), status, "{url}");
                let body = resp.body().as_deref().unwrap_or_default();
                let v: serde_json::Value = serde_json::from_slice(body).unwrap();
                assert!(v["error"]["code"].is_string(), "{v}");
            }
            other => panic!("{url}: expected a refusal, got {:?}", other.map(|_| ())),
        }
    }
}

/// The real thing: `@automerge/automerge-repo` with its WebSocket adapter, under Node, finds
/// the document through `/sync` (npm packages in `sync-relay/tests/js`, installed by
/// `npm ci` there; `.ci/run` does it).
#[tokio::test]
async fn a_js_automerge_repo_client_syncs_a_document() {
    let s = server().await;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js");
    assert!(
        dir.join("node_modules/@automerge/automerge-repo").exists(),
        "run `npm ci` in {} first (.ci/run does)",
        dir.display()
    );
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("node")
            .arg(dir.join("sync.mjs"))
            .arg(s.url(&s.member))
            .arg(s.doc.to_string())
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
    assert_eq!(v["title"], "hello from flyt");
    // And a stranger's JS client gets nothing.
    let stranger = Identity::from_secrets([7; 32], [8; 32], "eve");
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("node")
            .arg(dir.join("sync.mjs"))
            .arg(s.url(&stranger))
            .arg(s.doc.to_string())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the JS client gives up in time")
    .expect("node runs");
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("hello from flyt"));
}

/// A client's `ephemeral` `data`: the envelope is found in a map's `signed`, or as the one
/// byte string `handle.broadcast(envelope)` encodes (tagged as a typed array or not); anything
/// else is handed on whole, for the relay's check to refuse.
#[test]
fn a_clients_note_envelope_is_found_in_its_data() {
    let envelope = vec![1u8, 2, 3, 4];
    let encoded = |v: Value| {
        let mut out = Vec::new();
        ciborium::into_writer(&v, &mut out).unwrap();
        out
    };
    let map = cbor_map(vec![
        ("kind", Value::Text("typing".into())),
        ("signed", Value::Bytes(envelope.clone())),
    ]);
    assert_eq!(note_envelope(map), envelope);
    assert_eq!(
        note_envelope(encoded(Value::Bytes(envelope.clone()))),
        envelope
    );
    let tagged = encoded(Value::Tag(64, Box::new(Value::Bytes(envelope.clone()))));
    assert_eq!(note_envelope(tagged), envelope);
    for other in [
        vec![0xff, 0x00],
        encoded(Value::Text("hi".into())),
        cbor_map(vec![("kind", Value::Text("typing".into()))]),
    ] {
        assert_eq!(note_envelope(other.clone()), other);
    }
}

/// Presence about a workspace the client has not asked for is held, the latest per device, and
/// released when it asks (stale ones dropped); typing is not held.
#[test]
fn presence_waits_for_the_workspace_and_typing_does_not() {
    use crdt_model::signed::Presence;
    let (alice, bob) = (
        Identity::from_secrets([1; 32], [2; 32], "alice"),
        Identity::from_secrets([3; 32], [4; 32], "bob"),
    );
    let (ws, other) = (DocId([5; 16]), DocId([6; 16]));
    let t = now();
    let note = |by: &Identity, ws, kind, at_ms| {
        Signed::sign(
            &by.device,
            Ephemeral {
                workspace: ws,
                person: by.person_id(),
                kind,
                at_ms,
            },
        )
    };
    let presence = |state| EphemeralKind::Presence { state };
    let mut notes = Notes::new();
    notes.hold(note(&alice, ws, presence(Presence::Online), t - 2));
    notes.hold(note(&alice, ws, presence(Presence::Away), t - 1));
    notes.hold(note(&alice, ws, presence(Presence::Online), t - 3));
    notes.hold(note(&bob, ws, presence(Presence::Online), t - 120_000));
    notes.hold(note(&bob, other, presence(Presence::Online), t));
    notes.hold(note(
        &bob,
        ws,
        EphemeralKind::Typing {
            channel: DocId([7; 16]),
        },
        t,
    ));
    let told = notes.release(ws, t);
    assert_eq!(told.len(), 1, "{told:?}");
    assert_eq!(told[0].payload.kind, presence(Presence::Away));
    assert!(notes.release(ws, t).is_empty(), "told once");
    assert_eq!(notes.release(other, t).len(), 1);
}
