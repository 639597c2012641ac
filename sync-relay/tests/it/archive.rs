//! The archive, the admin API and `/sync` wired into a real relay (as `flyt-relay` runs them):
//! a workspace that adds the relay is archived through the change seam, its owner reads it
//! through `/api` over a real socket, its member syncs it over `/sync`, and strangers get
//! nothing.

use automerge::Automerge;
use crdt_model::signed::{ChannelInfo, RelayRecord};
use crdt_model::{DeviceId, DocId, Identity, Role, device_actor, workspace};
use futures_util::{SinkExt, StreamExt};
use sync_relay::runtime::Relay;
use tokio_tungstenite::tungstenite::Message;

use crate::common::{LIMIT, config, request, request_with};

fn now() -> i64 {
    peer::now_ms()
}

/// alice (owner) and bob (member) in a workspace with `#general` that lists `relay`.
fn workspace_listing(relay: &Relay) -> (Vec<Identity>, DocId, DocId, Automerge) {
    let people = vec![
        Identity::from_secrets([11; 32], [111; 32], "alice"),
        Identity::from_secrets([12; 32], [112; 32], "bob"),
    ];
    let alice = &people[0];
    let mut doc = Automerge::new().with_actor(device_actor(&alice.device_id()));
    let at = now();
    let ws = workspace::create(&mut doc, alice, "acme", [5; 16], at).unwrap();
    workspace::put_device(&mut doc, &people[1].device_cert("laptop", at), at).unwrap();
    workspace::set_role(&mut doc, alice, ws, people[1].person_id(), Role::Member, at).unwrap();
    let channel = DocId([21; 16]);
    workspace::put_channel(
        &mut doc,
        alice,
        ChannelInfo {
            workspace: ws,
            channel,
            name: "general".into(),
            topic: String::new(),
            private: false,
            at_ms: at,
        },
    )
    .unwrap();
    let mut id = [0u8; 32];
    hex::decode_to_slice(&relay.handle().info.id, &mut id).unwrap();
    workspace::set_relay(
        &mut doc,
        alice,
        RelayRecord {
            workspace: ws,
            relay: DeviceId(id),
            url: relay.handle().info.url.clone(),
            addrs: relay.handle().info.addrs.clone(),
            active: true,
            at_ms: at,
        },
    )
    .unwrap();
    (people, ws, channel, doc)
}

/// A relay with its archive (as `flyt-relay` runs them) on `cfg`, that [`workspace_listing`]'s
/// workspace has joined, archived.
async fn joined(
    cfg: sync_relay::config::Config,
) -> (
    sync_relay::archive::Archive,
    Relay,
    Vec<Identity>,
    DocId,
    DocId,
    Automerge,
) {
    let (archive, ext) = sync_relay::archive::extensions(&cfg).await.unwrap();
    let relay = Relay::start(cfg, ext).await.unwrap();
    let (people, ws, channel, doc) = workspace_listing(&relay);
    let (status, body) = request(relay.http_addr(), "POST", "/join", &doc.save()).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(archive.caught_up(LIMIT).await, "{:?}", archive.status());
    (archive, relay, people, ws, channel, doc)
}

#[tokio::test]
async fn a_joined_workspace_is_archived_and_served_to_its_admins_only() {
    let dir = tempfile::tempdir().unwrap();
    let (archive, relay, people, ws, channel, doc) = joined(config(dir.path())).await;
    let addr = relay.http_addr();
    let bytes = archive.document(ws).await.unwrap().expect("archived");
    assert_eq!(
        Automerge::load(&bytes).unwrap().get_heads(),
        doc.get_heads()
    );

    // The admin API, over a real socket, with roles from the archived workspace.
    let path = format!("/api/workspaces/{ws}/channels/{channel}/messages?limit=10");
    let call = async |who: &Identity| {
        let auth = sync_relay::api::authorization(&who.device, "GET", &path, now());
        request_with(addr, "GET", &path, &[("Authorization", &auth)], b"").await
    };
    let (status, body) = call(&people[0]).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let page: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(page["messages"], serde_json::json!([]));
    let (status, body) = call(&people[1]).await;
    assert_eq!(status, 403, "{}", String::from_utf8_lossy(&body));
    assert_eq!(request(addr, "GET", &path, b"").await.0, 401);

    // /metrics and /readyz carry the archive.
    let (_, metrics) = request(addr, "GET", "/metrics", b"").await;
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(
        metrics.contains("flyt_archive_up{backend=\"sqlite\"} 1"),
        "{metrics}"
    );
    assert_eq!(request(addr, "GET", "/readyz", b"").await.0, 200);

    // /sync on the relay's own engine: the member gets the workspace document...
    let url = |who: &Identity| {
        format!(
            "ws://{addr}/sync?{}",
            sync_relay::ws::sync_query(&who.device, now())
        )
    };
    let (mut c, _) = tokio_tungstenite::connect_async(url(&people[1]))
        .await
        .unwrap();
    let cbor = |v: ciborium::Value| {
        let mut out = Vec::new();
        ciborium::into_writer(&v, &mut out).unwrap();
        Message::Binary(out.into())
    };
    let text = |s: &str| ciborium::Value::Text(s.into());
    c.send(cbor(ciborium::Value::Map(vec![
        (text("type"), text("join")),
        (text("senderId"), text("bob-tab")),
        (
            text("supportedProtocolVersions"),
            ciborium::Value::Array(vec![text("1")]),
        ),
    ])))
    .await
    .unwrap();
    let first = automerge::sync::SyncDoc::generate_sync_message(
        &Automerge::new(),
        &mut automerge::sync::State::new(),
    )
    .unwrap();
    c.send(cbor(ciborium::Value::Map(vec![
        (text("type"), text("request")),
        (text("senderId"), text("bob-tab")),
        (text("targetId"), text("relay")),
        (text("documentId"), text(&ws.to_string())),
        (text("data"), ciborium::Value::Bytes(first.encode())),
    ])))
    .await
    .unwrap();
    let mut kinds = Vec::new();
    while kinds.len() < 2 {
        match tokio::time::timeout(LIMIT, c.next()).await.unwrap() {
            Some(Ok(Message::Binary(b))) => {
                let v: ciborium::Value = ciborium::from_reader(&b[..]).unwrap();
                let map = v.into_map().unwrap();
                let kind = map
                    .iter()
                    .find(|(k, _)| k.as_text() == Some("type"))
                    .and_then(|(_, v)| v.as_text().map(str::to_owned))
                    .unwrap();
                kinds.push(kind);
            }
            Some(Ok(_)) => {}
            other => panic!("the member's socket ended: {other:?}"),
        }
    }
    assert_eq!(kinds, ["peer", "sync"]);
    // ...a stranger is closed after the handshake.
    let stranger = Identity::from_secrets([13; 32], [113; 32], "eve");
    let (mut c, _) = tokio_tungstenite::connect_async(url(&stranger))
        .await
        .unwrap();
    c.send(cbor(ciborium::Value::Map(vec![
        (text("type"), text("join")),
        (text("senderId"), text("eve-tab")),
        (
            text("supportedProtocolVersions"),
            ciborium::Value::Array(vec![text("1")]),
        ),
    ])))
    .await
    .unwrap();
    let mut got_sync = false;
    while let Some(Ok(m)) = tokio::time::timeout(LIMIT, c.next()).await.unwrap() {
        if let Message::Binary(b) = m {
            got_sync |= String::from_utf8_lossy(&b).contains("sync");
        }
    }
    assert!(!got_sync, "a stranger gets no document");
    relay.shutdown().await;
}

/// A fresh database on the machine's Postgres (`FLYT_TEST_POSTGRES` overrides the server),
/// dropped on drop.
struct Database {
    server: String,
    name: String,
}

impl Database {
    fn create() -> Database {
        let server = std::env::var("FLYT_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned());
        let name = format!("flyt_test_api_{}_{}", std::process::id(), now());
        let db = Database { server, name };
        assert!(
            db.admin(&format!("CREATE DATABASE {}", db.name)),
            "this test needs Postgres at {} and psql",
            db.server
        );
        db
    }

    /// Runs `sql` on the server's `postgres` database with psql; whether it worked.
    fn admin(&self, sql: &str) -> bool {
        std::process::Command::new("psql")
            .args([&format!("{}/postgres", self.server), "-qXc", sql])
            .status()
            .is_ok_and(|s| s.success())
    }

    fn url(&self) -> String {
        format!("{}/{}", self.server, self.name)
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        self.admin(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ));
    }
}

/// The archive's Postgres stops answering (a lock held elsewhere): `/api` answers 408 within
/// the request timeout instead of hanging, the rest of the relay keeps answering, and once the
/// lock goes the same request works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_archive_query_times_out_and_the_relay_keeps_answering() {
    let db = Database::create();
    let dir = tempfile::tempdir().unwrap();
    let cfg = sync_relay::config::Config {
        database_url: Some(db.url()),
        request_timeout_secs: 2,
        ..config(dir.path())
    };
    let (_archive, relay, people, ws, channel, _) = joined(cfg).await;
    let addr = relay.http_addr();
    let path = format!("/api/workspaces/{ws}/channels/{channel}/messages?limit=10");
    let call = async || {
        let auth = sync_relay::api::authorization(&people[0].device, "GET", &path, now());
        request_with(addr, "GET", &path, &[("Authorization", &auth)], b"").await
    };
    assert_eq!(call().await.0, 200);

    let (mut locker, conn) = tokio_postgres::connect(&db.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let lock = locker.transaction().await.unwrap();
    lock.batch_execute("LOCK TABLE archive_messages IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let asked = std::time::Instant::now();
    let (status, body) = call().await;
    assert_eq!(status, 408, "a query that cannot finish times out");
    assert!(String::from_utf8_lossy(&body).contains("timeout"));
    assert!(asked.elapsed() < LIMIT);
    assert_eq!(request(addr, "GET", "/healthz", b"").await.0, 200);
    lock.rollback().await.unwrap();

    let (status, body) = call().await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    relay.shutdown().await;
}
