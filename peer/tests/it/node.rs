//! Real nodes over real iroh QUIC on 127.0.0.1 (relay disabled, no discovery), each with its
//! own SQLite home. Waits are on node events with a timeout, never sleeps.

use std::time::Duration;

use crdt_model::{DocId, Role};
use peer::Store;
use peer::node::{Node, NodeConfig, NodeEvent};
use tokio::sync::broadcast;

use crate::common::Home;

pub const WAIT: Duration = Duration::from_secs(20);

pub async fn start(home: &Home) -> Node {
    start_with(home, false).await
}

/// A node on 127.0.0.1, with LAN discovery (mDNS) if `lan`.
pub async fn start_with(home: &Home, lan: bool) -> Node {
    Node::start(NodeConfig {
        db: home.path.clone(),
        bind: "127.0.0.1:0".parse().unwrap(),
        lan,
        relay_only: false,
    })
    .await
    .expect("node starts")
}

/// A fresh single-use member invite from `node`, reaching it on its addresses.
pub async fn member_ticket(node: &Node) -> String {
    let addrs: Vec<String> = node.addr().addrs.iter().map(|a| a.to_string()).collect();
    node.call(move |s| s.invite(Role::Member, 60_000, addrs))
        .await
        .unwrap()
        .unwrap()
}

/// Waits until `check` holds on the node's store, re-checking after every node event.
pub async fn until<T: Send + 'static>(
    node: &Node,
    events: &mut broadcast::Receiver<NodeEvent>,
    what: &str,
    check: impl Fn(&mut Store) -> Option<T> + Send + Sync + Clone + 'static,
) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let c = check.clone();
        if let Some(v) = node.call(move |s| c(s)).await.unwrap() {
            return v;
        }
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(_) => {}
            Err(_) => {
                let state = node
                    .call(|s| {
                        let w = s.workspaces().map(|w| w.len()).unwrap_or(99);
                        let c = s.channels().unwrap_or_default();
                        let (b, m) = c
                            .first()
                            .map(|c| {
                                let id = c.id.parse().unwrap();
                                (
                                    s.buckets(id).map(|b| b.len()).unwrap_or(99),
                                    s.read(id, 10_000, None, None)
                                        .map(|r| r.len())
                                        .unwrap_or(99),
                                )
                            })
                            .unwrap_or((0, 0));
                        format!(
                            "workspaces {w}, channels {}, buckets {b}, messages {m}",
                            c.len()
                        )
                    })
                    .await
                    .unwrap();
                panic!("timed out waiting for: {what} ({state})")
            }
        }
    }
}

pub fn home_with(name: &str) -> Home {
    let home = Home::new();
    home.open().init(name).unwrap();
    home
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invite_join_and_chat_over_quic() {
    let alice_home = home_with("alice");
    let (ws, ch) = {
        let mut s = alice_home.open();
        let ws = s.create_workspace("acme").unwrap();
        let ch = s.create_channel("general", "", false).unwrap();
        let day = 86_400_000;
        let old: Vec<(i64, String)> = (0..500)
            .map(|i| (day * 20_000 + i * day / 100, format!("old {i}")))
            .collect();
        s.post_batch(ch, &old).unwrap();
        (ws, ch)
    };
    let alice = start(&alice_home).await;
    let ticket = member_ticket(&alice).await;

    let bob_home = home_with("bob");
    let bob = start(&bob_home).await;
    let mut bob_events = bob.subscribe();
    let mut alice_events = alice.subscribe();
    assert_eq!(bob.join(&ticket).await.unwrap(), ws);

    // Bob gets the workspace, the channel and the whole history.
    let n = until(&bob, &mut bob_events, "history at bob", move |s| {
        s.use_workspace(ws).ok()?;
        let ch = s.find_channel("general").ok()?;
        let rows = s.read(ch, 1_000, None, None).ok()?;
        (rows.len() == 500).then_some(rows.len())
    })
    .await;
    assert_eq!(n, 500);

    // Live, both ways.
    let hi = bob
        .call(move |s| {
            s.set_profile(ws, "bob")?;
            s.post(ch, "hi alice", None, None)
        })
        .await
        .unwrap()
        .unwrap();
    // The message and bob's profile are different documents and may arrive in either order.
    let seen = until(&alice, &mut alice_events, "bob's named message at alice", {
        let id = hi.id.clone();
        move |s| s.message(&id).ok().filter(|m| m.author.name == "bob")
    })
    .await;
    assert_eq!((seen.author.name.as_str(), seen.verified), ("bob", true));
    let id = hi.id.clone();
    alice
        .call(move |s| s.react(&id, "👍", true))
        .await
        .unwrap()
        .unwrap();
    let id = hi.id.clone();
    until(&bob, &mut bob_events, "alice's reaction at bob", move |s| {
        let m = s.message(&id).ok()?;
        m.reactions.contains_key("👍").then_some(())
    })
    .await;

    // The ticket is single-use: a third home cannot reuse it, and learns nothing.
    let carol_home = home_with("carol");
    let carol = start(&carol_home).await;
    let err = carol.join(&ticket).await.unwrap_err().to_string();
    assert!(err.contains("already used"), "{err}");
    let empty = carol
        .call(|s| s.workspaces().map(|w| w.len()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(empty, 0);

    carol.shutdown().await;
    bob.shutdown().await;
    alice.shutdown().await;
    // Sync states were saved for the next connection.
    let saved = crate::common::count(&bob_home.path, "SELECT count(*) FROM sync_state");
    assert!(saved >= 3, "{saved} sync states saved");
    // And when bob last synced with alice, for `status` while neither runs.
    let status = bob_home.open().status().unwrap();
    let with_alice = &status.peers[0];
    let last = with_alice.last_sync_ms.expect("a last sync time kept");
    assert!(
        (peer::now_ms() - 60_000..=peer::now_ms()).contains(&last),
        "{last}"
    );
    let _: DocId = ch;
}
