//! Multi-device over real nodes: a second device linked by ticket acts as the same person, and
//! receives everything that person may see, DMs included.

use crdt_model::DocId;
use peer::node::link_device;

use crate::common::Home;
use crate::node::start;
use crate::private::{Member, team};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_linked_device_is_the_same_person_everywhere() {
    let (mut t, ws, general) = team(&["alice", "bob"]).await;
    let dm = t[1].call(|s| s.open_dm(&["alice".into()])).await.unwrap();
    let hello = t[1]
        .call(move |s| s.post(dm, "hi alice", None, None))
        .await
        .unwrap()
        .id;
    t[0].sees(&hello).await;

    let addrs = t[0].addrs();
    let ticket = t[0]
        .call(move |s| s.link_ticket(60_000, addrs))
        .await
        .unwrap();
    let home = Home::new();
    let bind = "127.0.0.1:0".parse().unwrap();
    assert_eq!(link_device(&home.path, bind, &ticket).await.unwrap(), [ws]);
    // The ticket is single-use, and a home with an identity cannot be linked.
    let other = Home::new();
    let err = link_device(&other.path, bind, &ticket).await.unwrap_err();
    assert!(err.to_string().contains("already used"), "{err}");
    let err = link_device(&t[1].home.path, bind, &ticket)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("already has an identity"), "{err}");

    let node = start(&home).await;
    let events = node.subscribe();
    let mut laptop = Member {
        name: "alice",
        home,
        node,
        events,
    };
    // The second device gets the workspace and alice's DM with bob.
    laptop.sees(&hello).await;
    let (me, other_device) = t[0]
        .call(|s| {
            let me = s.identity().unwrap().person_id();
            (me, s.identity().unwrap().device_id())
        })
        .await;
    let (laptop_me, laptop_device) = laptop
        .call(|s| {
            let i = s.identity().unwrap();
            (i.person_id(), i.device_id())
        })
        .await;
    assert_eq!(laptop_me, me);
    assert_ne!(laptop_device, other_device);

    // What it sends shows on a third node as alice, verified.
    let sent = laptop
        .call(move |s| s.post(general, "from my laptop", None, None))
        .await
        .unwrap()
        .id;
    t[1].sees(&sent).await;
    let id = sent.clone();
    let m = t[1].call(move |s| s.message(&id)).await.unwrap();
    assert_eq!(m.author.name, "alice");
    assert_eq!(m.author.key, me.to_string());
    assert!(m.verified);
    let devices = laptop
        .until("both devices listed", |s| {
            let d = s.devices().ok()?;
            (d.len() == 2).then_some(d)
        })
        .await;
    assert_eq!(devices.iter().filter(|d| d.this).count(), 1);
    let _: DocId = ws;
    laptop.shutdown().await;
    for m in t {
        m.shutdown().await;
    }
}
