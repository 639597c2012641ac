//! `flyt serve --lan`: nodes find their workspaces' members' nodes on the local network by mDNS
//! and sync with no address given, and dial nobody else.
//!
//! mDNS is multicast, which loopback does not carry by default and which would otherwise go out
//! on the machine's network. So this test runs itself again inside a network namespace of its
//! own (`unshare --net`, as a mapped root user), where loopback is switched to carry multicast:
//! nothing leaves the namespace and other tests' nodes are not in it.

use std::process::Command;
use std::time::Duration;

use crdt_model::{DeviceId, DocId};
use peer::node::{Node, NodeEvent};

use crate::node::{WAIT, home_with, member_ticket, start, start_with, until};

/// Set in the re-run inside the namespace.
const INSIDE: &str = "FLYT_TEST_IN_NETNS";

/// Runs test `name` of this binary again inside a fresh network namespace whose loopback
/// carries multicast; fails with what went wrong if it cannot.
fn rerun_in_netns(name: &str) {
    let exe = std::env::current_exe().expect("test binary path");
    let setup = "ip link set lo up && ip link set lo multicast on \
                 && ip route add 224.0.0.0/4 dev lo && exec \"$@\"";
    let status = Command::new("unshare")
        .args(["--map-root-user", "--net", "--", "sh", "-ec", setup, "sh"])
        .arg(exe)
        .args([name, "--exact", "--nocapture", "--test-threads", "1"])
        .env(INSIDE, "1")
        .status()
        .expect(
            "this test needs `unshare` (util-linux) and `ip` (iproute2) to make a network \
             namespace of its own",
        );
    assert!(
        status.success(),
        "the test inside its network namespace failed: {status}"
    );
}

pub async fn device(node: &Node) -> DeviceId {
    node.call(|s| s.identity().map(|i| i.device_id()))
        .await
        .unwrap()
        .unwrap()
}

/// `from` posts `text` in `general` of `ws`; waits until `to` shows it, verified.
pub async fn posts_and_arrives(from: &Node, to: &Node, ws: DocId, text: &'static str) {
    let mut events = to.subscribe();
    let sent = from
        .call(move |s| {
            s.use_workspace(ws)?;
            let ch = s.find_channel("general")?;
            s.post(ch, text, None, None)
        })
        .await
        .unwrap()
        .unwrap();
    let id = sent.id.clone();
    let got = until(to, &mut events, "the message at the other node", move |s| {
        s.message(&id).ok()
    })
    .await;
    assert_eq!((got.text.as_str(), got.verified), (text, true));
}

/// Waits until `node` is connected to `peer`.
pub async fn connected(node: &Node, peer: DeviceId, what: &str) {
    let mut events = node.subscribe();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !node.connected().contains(&peer) {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(_) => {}
            Err(_) => panic!("timed out waiting for: {what}"),
        }
    }
}

/// Bob and carol joined through alice and know only alice's address (what alice told them of
/// each other is forgotten). With alice gone and both on one LAN with `--lan`, they find each
/// other and chat; dave, on the same LAN with
/// `--lan` but in another workspace, is dialled by neither and gets nothing.
#[test]
fn members_find_each_other_on_the_lan_and_strangers_are_not_dialled() {
    if std::env::var_os(INSIDE).is_none() {
        rerun_in_netns("lan::members_find_each_other_on_the_lan_and_strangers_are_not_dialled");
        return;
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(scenario());
}

async fn scenario() {
    let alice_home = home_with("alice");
    let ws: DocId = {
        let mut s = alice_home.open();
        let ws = s.create_workspace("acme").unwrap();
        s.create_channel("general", "", false).unwrap();
        ws
    };
    let alice = start(&alice_home).await;
    let mut alice_events = alice.subscribe();
    let (bob_home, carol_home) = (home_with("bob"), home_with("carol"));
    let mut devices = Vec::new();
    for home in [&bob_home, &carol_home] {
        let ticket = member_ticket(&alice).await;
        let node = start(home).await;
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
        devices.push((device(&node).await, node, events));
    }
    let (carol_dev, carol, mut carol_events) = devices.pop().unwrap();
    let (bob_dev, bob, mut bob_events) = devices.pop().unwrap();
    // Each knows the other as a member (alice's admissions synced), but only alice's address.
    until(&bob, &mut bob_events, "carol a member at bob", move |s| {
        s.is_member_device(&carol_dev).unwrap().then_some(())
    })
    .await;
    until(
        &carol,
        &mut carol_events,
        "bob a member at carol",
        move |s| s.is_member_device(&bob_dev).unwrap().then_some(()),
    )
    .await;
    until(
        &alice,
        &mut alice_events,
        "both joined at alice",
        move |s| {
            (s.is_member_device(&bob_dev).unwrap() && s.is_member_device(&carol_dev).unwrap())
                .then_some(())
        },
    )
    .await;
    alice.shutdown().await;
    bob.shutdown().await;
    carol.shutdown().await;
    // Alice told each where the other listened (`Frame::Peers`); here they must find each
    // other with no address at all, as if they never had: forget what they learnt.
    for (home, other) in [(&bob_home, carol_dev), (&carol_home, bob_dev)] {
        home.raw()
            .execute("DELETE FROM peers WHERE device = ?1", [other.to_string()])
            .unwrap();
        let known = home.open().known_peers().unwrap();
        assert!(known.iter().all(|(d, _)| *d != other), "{known:?}");
    }

    // Dave: on the same LAN, announcing himself, in a workspace of his own.
    let dave_home = home_with("dave");
    dave_home.open().create_workspace("elsewhere").unwrap();
    let dave = start_with(&dave_home, true).await;
    let dave_dev = device(&dave).await;

    let bob = start_with(&bob_home, true).await;
    let carol = start_with(&carol_home, true).await;
    connected(&bob, carol_dev, "bob connected to carol over the LAN").await;
    connected(&carol, bob_dev, "carol connected to bob over the LAN").await;

    posts_and_arrives(&bob, &carol, ws, "found you on the LAN").await;

    // By now dave has announced himself to them for a while (and they to him): no connection
    // either way, and nothing of acme at dave.
    let mut dave_events = dave.subscribe();
    let quiet = tokio::time::sleep(Duration::from_secs(3));
    tokio::pin!(quiet);
    loop {
        tokio::select! {
            _ = &mut quiet => break,
            ev = dave_events.recv() => {
                assert!(!matches!(ev, Ok(NodeEvent::PeerUp(_))), "dave connected: {ev:?}");
            }
        }
    }
    assert!(dave.connected().is_empty(), "{:?}", dave.connected());
    for node in [&bob, &carol] {
        assert!(!node.connected().contains(&dave_dev));
    }
    let dave_workspaces = dave.call(|s| s.workspaces()).await.unwrap().unwrap();
    assert_eq!(dave_workspaces.len(), 1, "{dave_workspaces:?}");

    for node in [bob, carol, dave] {
        node.shutdown().await;
    }
}
