//! Private channels and DMs over real nodes on 127.0.0.1: only members' devices ever receive
//! their documents, membership changes are enforced mid-connection, and both sides of a DM
//! open the same channel on their own.

use crdt_model::{DocId, Role};
use peer::Store;
use peer::node::{Node, NodeEvent};
use tokio::sync::broadcast;

use crate::common::{Home, count};
use crate::node::{home_with, start, until};

pub struct Member {
    pub name: &'static str,
    pub home: Home,
    pub node: Node,
    pub events: broadcast::Receiver<NodeEvent>,
}

impl Member {
    pub async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Store) -> R + Send + 'static,
    ) -> R {
        self.node.call(f).await.expect("node runs")
    }

    /// Where this member's node listens, as ticket text.
    pub fn addrs(&self) -> Vec<String> {
        self.node
            .addr()
            .addrs
            .iter()
            .map(|a| a.to_string())
            .collect()
    }

    /// Waits until `check` holds here.
    pub async fn until<T: Send + 'static>(
        &mut self,
        what: &str,
        check: impl Fn(&mut Store) -> Option<T> + Send + Sync + Clone + 'static,
    ) -> T {
        until(&self.node, &mut self.events, what, check).await
    }

    /// Waits until the message `id` is readable here.
    pub async fn sees(&mut self, id: &str) {
        let id = id.to_owned();
        let what = format!("message {id} at {}", self.name);
        self.until(&what, move |s| s.message(&id).ok()).await;
    }

    /// How many of this home's documents belong to `channel` (its own and its buckets).
    pub fn docs_of(&self, channel: DocId) -> i64 {
        count(
            &self.home.path,
            &format!("SELECT count(*) FROM docs WHERE id = '{channel}' OR channel = '{channel}'"),
        )
    }

    pub async fn shutdown(self) {
        self.node.shutdown().await;
    }
}

/// A workspace `acme` owned by `names[0]` with a public `#general`; everyone else joins by
/// ticket over QUIC. Returns once every member knows every other member's name.
pub async fn team(names: &[&'static str]) -> (Vec<Member>, DocId, DocId) {
    let owner_home = home_with(names[0]);
    let (ws, general) = {
        let mut s = owner_home.open();
        let ws = s.create_workspace("acme").unwrap();
        (ws, s.create_channel("general", "", false).unwrap())
    };
    let node = start(&owner_home).await;
    let events = node.subscribe();
    let mut team = vec![Member {
        name: names[0],
        home: owner_home,
        node,
        events,
    }];
    for &name in &names[1..] {
        let home = home_with(name);
        let node = start(&home).await;
        let events = node.subscribe();
        let addrs = team[0].addrs();
        let ticket = team[0]
            .call(move |s| s.invite(Role::Member, 60_000, addrs))
            .await
            .unwrap();
        assert_eq!(node.join(&ticket).await.unwrap(), ws);
        let mut m = Member {
            name,
            home,
            node,
            events,
        };
        m.until("the workspace", move |s| {
            s.use_workspace(ws).ok()?;
            s.find_channel("general").ok()
        })
        .await;
        m.call(move |s| s.set_profile(ws, name)).await.unwrap();
        team.push(m);
    }
    let all: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    for m in &mut team {
        let all = all.clone();
        m.until("every member's name", move |s| {
            let mut got: Vec<String> = s.members().ok()?.into_iter().map(|m| m.name).collect();
            got.sort();
            (got == all).then_some(())
        })
        .await;
    }
    (team, ws, general)
}

async fn post(m: &Member, ch: DocId, text: &'static str) -> String {
    m.call(move |s| s.post(ch, text, None, None))
        .await
        .unwrap()
        .id
}

fn names(s: &mut Store, ch: DocId) -> Vec<String> {
    s.channel_members(ch)
        .unwrap()
        .into_iter()
        .map(|m| m.name)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_channel_reaches_only_its_members() {
    let (mut t, _ws, general) = team(&["alice", "bob", "carol"]).await;
    let secret = t[0]
        .call(|s| s.create_private_channel("secret", "", &["bob".into()]))
        .await
        .unwrap();
    let first = post(&t[0], secret, "for bob only").await;
    t[1].sees(&first).await;
    assert_eq!(t[1].call(move |s| names(s, secret)).await, ["alice", "bob"]);
    let reply = post(&t[1], secret, "thanks").await;
    t[0].sees(&reply).await;

    // A later public message reaches carol over the same connection: nothing of the private
    // channel did, not even its document.
    let later = post(&t[0], general, "public").await;
    t[2].sees(&later).await;
    assert_eq!(t[2].docs_of(secret), 0, "carol holds nothing of #secret");
    let err = t[2]
        .call(move |s| s.channel_add(secret, &["carol".into()]))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not a member"), "{err}");

    // Added, carol gets the channel and its history.
    t[0].call(move |s| s.channel_add(secret, &["carol".into()]))
        .await
        .unwrap();
    t[2].sees(&first).await;
    t[2].sees(&reply).await;

    // Removed, bob gets nothing new (the barrier: a later public message reaches him).
    t[0].call(move |s| s.channel_kick(secret, "bob"))
        .await
        .unwrap();
    let after = post(&t[0], secret, "bob is gone").await;
    t[2].sees(&after).await;
    let barrier = post(&t[0], general, "public again").await;
    t[1].sees(&barrier).await;
    let id = after.clone();
    assert!(t[1].call(move |s| s.message(&id)).await.is_err());
    assert_eq!(
        t[2].call(move |s| names(s, secret)).await,
        ["alice", "carol"]
    );
    for m in t {
        m.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dms_are_one_channel_for_their_participants_only() {
    let (mut t, _ws, general) = team(&["alice", "bob", "carol"]).await;
    // Both open the DM on their own: the same channel.
    let at_alice = t[0].call(|s| s.open_dm(&["bob".into()])).await.unwrap();
    let at_bob = t[1].call(|s| s.open_dm(&["alice".into()])).await.unwrap();
    assert_eq!(at_alice, at_bob);
    let dm = at_alice;
    let a = post(&t[0], dm, "hi bob").await;
    let b = post(&t[1], dm, "hi alice").await;
    t[0].sees(&b).await;
    t[1].sees(&a).await;
    let listed = |s: &mut Store| -> (String, bool) {
        let c = s.channels().unwrap().into_iter().find(|c| c.dm).unwrap();
        (c.name, c.private)
    };
    assert_eq!(t[0].call(listed).await, ("@bob".into(), true));
    assert_eq!(t[1].call(listed).await, ("@alice".into(), true));
    assert_eq!(t[1].call(|s| s.find_channel("@alice")).await.unwrap(), dm);

    // A group DM reaches all three.
    let group = t[0]
        .call(|s| s.open_dm(&["bob".into(), "carol".into()]))
        .await
        .unwrap();
    let g = post(&t[0], group, "all of us").await;
    t[2].sees(&g).await;
    t[1].sees(&g).await;
    assert_eq!(
        t[2].call(|s| s.find_channel("@alice,bob")).await.unwrap(),
        group
    );

    // Carol never got the DM between alice and bob.
    let later = post(&t[0], general, "public").await;
    t[2].sees(&later).await;
    assert_eq!(
        t[2].docs_of(dm),
        0,
        "carol holds nothing of the alice–bob DM"
    );
    assert!(t[2].call(|s| s.find_channel("@alice")).await.is_err());
    for m in t {
        m.shutdown().await;
    }
}
