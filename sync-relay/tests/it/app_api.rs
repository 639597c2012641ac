//! The app's API (`peer::api`) adding and removing a real relay: what Settings does. Real
//! nodes, a real relay, real sockets on 127.0.0.1.

use std::sync::atomic::Ordering;
use std::time::Duration;

use peer::api::{Api, ErrorCode};
use peer::node::NodeConfig;
use serde_json::{Value, json};
use sync_relay::runtime::Relay;

use crate::common::{LIMIT, config, start};

async fn open(db: &std::path::Path) -> Api {
    Api::open(NodeConfig {
        db: db.to_owned(),
        bind: "127.0.0.1:0".parse().unwrap(),
        lan: false,
        relay_only: false,
    })
    .await
    .unwrap()
}

async fn ok(api: &Api, req: Value) -> Value {
    match api.handle_json(req.clone()).await {
        Ok(v) => v,
        Err(e) => panic!("{req} failed: {e:?}"),
    }
}

/// Polls `req` on `api` (after each event batch, or every 100 ms) until `check` holds.
async fn until(api: &Api, what: &str, req: Value, check: impl Fn(&Value) -> bool) -> Value {
    let mut events = api.subscribe();
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let v = ok(api, req.clone()).await;
        if check(&v) {
            return v;
        }
        // Connections are not all announced as events (a relay's is), so look again soon.
        let next = (tokio::time::Instant::now() + Duration::from_millis(100)).min(deadline);
        let _ = tokio::time::timeout_at(next, events.recv()).await;
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}: {v}"
        );
    }
}

/// Waits until the relay serves `n` workspaces: it answers `/join` before its metrics are
/// updated.
async fn served(relay: &Relay, n: u64, what: &str) {
    let deadline = tokio::time::Instant::now() + LIMIT;
    while relay.handle().metrics.workspaces.load(Ordering::Relaxed) != n {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_add_a_relay_that_running_nodes_use_then_remove_it() {
    let relay_dir = tempfile::tempdir().unwrap();
    let relay = start(config(relay_dir.path())).await;
    let url = format!("http://{}", relay.http_addr());
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());

    // Alice (owner) and bob (member), both running, no relay yet.
    let alice = open(&a.path().join("flyt.db")).await;
    ok(&alice, json!({"cmd": "init", "name": "alice"})).await;
    ok(&alice, json!({"cmd": "workspace_create", "name": "acme"})).await;
    let t = ok(&alice, json!({"cmd": "invite"})).await;
    let bob = open(&b.path().join("flyt.db")).await;
    ok(&bob, json!({"cmd": "init", "name": "bob"})).await;
    ok(&bob, json!({"cmd": "join", "ticket": t["ticket"]})).await;

    // Alice adds the relay from Settings (with a trailing slash, as people paste URLs).
    let added = ok(
        &alice,
        json!({"cmd": "relay_add", "url": format!("{url}/")}),
    )
    .await;
    assert_eq!(added["url"], json!(url));
    assert_eq!(added["id"], json!(relay.peer_addr().id.to_string()));
    assert_eq!(added["added_by"], "alice");
    served(&relay, 1, "it serves the workspace").await;

    // Both running nodes start syncing through it without a restart: bob learns of it from
    // the workspace document alice changed.
    for (who, api) in [("alice", &alice), ("bob", &bob)] {
        let listed = until(
            api,
            &format!("{who} connected to the relay"),
            json!({"cmd": "relays"}),
            |v| {
                v.as_array()
                    .is_some_and(|l| l.len() == 1 && l[0]["connected"] == true)
            },
        )
        .await;
        assert_eq!(listed[0]["url"], json!(url));
        let st = ok(api, json!({"cmd": "status"})).await;
        assert_eq!(st["relays"], json!([url]), "{who}: {st}");
    }

    // A member may not remove it; alice may, and the relay is told.
    let e = bob
        .handle_json(json!({"cmd": "relay_remove", "url": url}))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::NotAllowed, "{e:?}");
    let removed = ok(&alice, json!({"cmd": "relay_remove", "url": url})).await;
    assert_eq!(removed, json!({"relay_told": true}));
    assert_eq!(ok(&alice, json!({"cmd": "relays"})).await, json!([]));
    served(&relay, 0, "it stopped serving").await;
    until(
        &bob,
        "bob to see it removed",
        json!({"cmd": "relays"}),
        |v| *v == json!([]),
    )
    .await;
    // Neither node keeps dialling it: its connections close and none follows for longer than
    // the longest redial backoff (5 s).
    let m = &relay.handle().metrics;
    let deadline = tokio::time::Instant::now() + LIMIT;
    while m.connections.load(Ordering::Relaxed) != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "connections stay open"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dialled = m.connections_total.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(
        m.connections_total.load(Ordering::Relaxed),
        dialled,
        "a removed relay is dialled again"
    );

    alice.shutdown().await;
    bob.shutdown().await;
    relay.shutdown().await;
}
