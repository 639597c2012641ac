//! Three real nodes over real iroh QUIC on 127.0.0.1, each with its own SQLite home, driven by a
//! seeded sequence of chat actions, restarts and links cut and restored (`Node::cut`); afterwards
//! all three must show the same channel,
//! message for message, and it must be the right one (nothing lost, every edit and deletion
//! kept). Waits are on node events with a timeout, never sleeps.
//!
//! The seed decides every step's choices; replay a failure with
//! `FLYT_SEED=<seed> cargo test -p peer --test it converge`. Network timing still varies, and
//! with it what can succeed (a reply to a message that has not reached the replier yet fails).
//!
//! `members` runs the same actions with membership changing underneath: a fourth person joins,
//! members are removed and demoted concurrently while a node is stopped.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crdt_model::{DeviceId, DocId, ModelError, Role};
use peer::net::PeerAddr;
use peer::node::{Node, NodeConfig, NodeEvent};
use peer::{MemberRow, MessageRow, Store, StoreError};
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::TryRecvError;

use crate::common::Home;

const STEPS: usize = 60;
const MAX_RESTARTS: usize = 4;
const SETUP_WAIT: Duration = Duration::from_secs(20);
const CONVERGE_WAIT: Duration = Duration::from_secs(60);
const DEFAULT_SEED: u64 = 0xF1A7_5EED;
const EMOJI: [&str; 3] = ["👍", "🎉", "👀"];

/// xorshift64, seeded through splitmix64 so that every seed (0 too) gives a good state.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)).max(1))
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// One of `n` (`n > 0`), from a draw.
fn pick(draw: u64, n: usize) -> usize {
    (draw % n as u64) as usize
}

/// One person's home and, while it runs, its node.
struct Peer {
    name: &'static str,
    home: Home,
    /// Where it listens, the same across restarts so that peers find it again.
    bind: SocketAddr,
    node: Option<Node>,
    events: broadcast::Receiver<NodeEvent>,
}

impl Peer {
    fn node(&self) -> &Node {
        self.node.as_ref().expect("the node is running")
    }

    /// Runs `f` on this peer's store thread, or, while its node is stopped, on its home
    /// directly (offline, as `flyt` commands do without a running node).
    async fn call<R: Send + 'static>(&self, f: impl FnOnce(&mut Store) -> R + Send + 'static) -> R {
        match &self.node {
            Some(node) => node.call(f).await.expect("the node runs"),
            None => f(&mut self.home.open()),
        }
    }

    /// Stops the node (a partition: peers cannot reach it, it keeps its home).
    async fn stop(&mut self) {
        self.node.take().expect("running").shutdown().await;
    }

    /// Starts the node again on the same address; the links it had cut stay cut (a cut lives
    /// in the running node only).
    async fn restart(&mut self, seed: u64) {
        let node = start(seed, &self.home, self.bind).await;
        assert_eq!(
            node.addr().addrs[0],
            self.bind,
            "{} keeps its address",
            self.name
        );
        self.events = node.subscribe();
        self.node = Some(node);
    }
}

/// The seed: `FLYT_SEED`, or the default.
fn seed(test: &str) -> u64 {
    let seed = std::env::var("FLYT_SEED")
        .ok()
        .map(|s| {
            s.trim()
                .parse::<u64>()
                .unwrap_or_else(|_| panic!("FLYT_SEED={s:?} is not a u64"))
        })
        .unwrap_or(DEFAULT_SEED);
    eprintln!("{test}: FLYT_SEED={seed}");
    seed
}

/// Makes `from` keep a connection to `to`, across restarts too (one side dials: two nodes
/// dialling each other would keep replacing each other's connection).
async fn link(from: &Peer, to: &Peer) {
    let to: PeerAddr = to.node().addr();
    let addrs: Vec<String> = to.addrs.iter().map(|a| a.to_string()).collect();
    let id = to.id;
    from.call(move |s| s.remember_peer(id, &addrs))
        .await
        .unwrap();
    from.node().connect(to);
}

/// Alice's workspace `acme` with its channel `general`, and her running node.
async fn founded(seed: u64) -> (DocId, DocId, Vec<Peer>) {
    let alice_home = home_with("alice");
    let (ws, ch) = {
        let mut s = alice_home.open();
        let ws = s.create_workspace("acme").unwrap();
        (ws, s.create_channel("general", "", false).unwrap())
    };
    let alice = start_peer(seed, "alice", alice_home).await;
    (ws, ch, vec![alice])
}

/// A new person `name` who joins with a member ticket from `inviter`, has the workspace and
/// its channel, and has set their name in it.
async fn joined(seed: u64, inviter: &Peer, name: &'static str, ws: DocId, ch: DocId) -> Peer {
    let addrs = vec![inviter.bind.to_string()];
    let ticket = inviter
        .call(move |s| s.invite(Role::Member, 600_000, addrs))
        .await
        .unwrap_or_else(|e| panic!("seed {seed}: {} invites {name}: {e}", inviter.name));
    let mut p = start_peer(seed, name, home_with(name)).await;
    let joined = p.node().join(&ticket).await;
    assert_eq!(
        joined.unwrap_or_else(|e| panic!("seed {seed}: {name} joins: {e}")),
        ws
    );
    until(seed, &mut p, "the workspace and its channel", move |s| {
        s.use_workspace(ws).ok()?;
        (s.find_channel("general").ok()? == ch).then_some(())
    })
    .await;
    // Like `flyt join`: the others see my name.
    p.call(move |s| s.set_profile(ws, name))
        .await
        .unwrap_or_else(|e| panic!("seed {seed}: {name} sets a name: {e}"));
    p
}

/// A peer's person key.
async fn key_of(p: &Peer) -> String {
    p.call(|s| s.identity().map(|me| me.person_id().to_string()))
        .await
        .unwrap()
}

fn home_with(name: &str) -> Home {
    let home = Home::new();
    home.open().init(name).unwrap();
    home
}

async fn start(seed: u64, home: &Home, bind: SocketAddr) -> Node {
    Node::start(NodeConfig {
        db: home.path.clone(),
        bind,
        lan: false,
        relay_only: false,
    })
    .await
    .unwrap_or_else(|e| {
        let mut chain = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            let _ = write!(chain, ": {s}");
            src = s.source();
        }
        panic!("seed {seed}: a node starts on {bind}: {chain}")
    })
}

/// A started peer, with the address it got recorded for its restarts.
async fn start_peer(seed: u64, name: &'static str, home: Home) -> Peer {
    let node = start(seed, &home, "127.0.0.1:0".parse().unwrap()).await;
    let bind = node.addr().addrs[0];
    assert!(
        bind.ip().is_loopback() && bind.port() != 0,
        "{name} listens on {bind}"
    );
    Peer {
        name,
        home,
        bind,
        events: node.subscribe(),
        node: Some(node),
    }
}

/// Waits until `check` holds on one peer's store, re-checking after every event of its node.
async fn until<T: Send + 'static>(
    seed: u64,
    p: &mut Peer,
    what: &str,
    check: impl Fn(&mut Store) -> Option<T> + Send + Sync + Clone + 'static,
) -> T {
    let deadline = tokio::time::Instant::now() + SETUP_WAIT;
    loop {
        let c = check.clone();
        if let Some(v) = p.call(move |s| c(s)).await {
            return v;
        }
        if tokio::time::timeout_at(deadline, p.events.recv())
            .await
            .is_err()
        {
            panic!(
                "seed {seed}: timed out after {SETUP_WAIT:?} waiting for: {what} at {}",
                p.name
            );
        }
    }
}

/// What a person sees: the members, the channel's main timeline and every thread in it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Snapshot {
    members: Vec<MemberRow>,
    timeline: Vec<MessageRow>,
    threads: BTreeMap<String, Vec<MessageRow>>,
}

impl Snapshot {
    /// Every message shown, by id.
    fn all(&self) -> BTreeMap<&str, &MessageRow> {
        self.timeline
            .iter()
            .chain(self.threads.values().flatten())
            .map(|m| (m.id.as_str(), m))
            .collect()
    }
}

fn snapshot(s: &mut Store, ch: DocId) -> Result<Snapshot, StoreError> {
    let timeline = s.read(ch, 10_000, None, None)?;
    let mut threads = BTreeMap::new();
    for root in timeline.iter().filter(|m| m.reply_count > 0) {
        threads.insert(root.id.clone(), s.read(ch, 10_000, None, Some(&root.id))?);
    }
    Ok(Snapshot {
        members: s.members()?,
        timeline,
        threads,
    })
}

fn short(m: &MessageRow) -> String {
    format!(
        "{} by {} text {:?} edited {} deleted {} reactions {:?} replies {} verified {}",
        m.id, m.author.name, m.text, m.edited, m.deleted, m.reactions, m.reply_count, m.verified
    )
}

/// A few lines saying where two lists of messages first differ.
fn diff_rows(what: &str, a: &[MessageRow], b: &[MessageRow], out: &mut String) {
    if a == b {
        return;
    }
    let _ = writeln!(out, "  {what}: {} vs {} messages", a.len(), b.len());
    let Some(i) = (0..a.len().max(b.len())).find(|&i| a.get(i) != b.get(i)) else {
        return;
    };
    let (x, y) = (a.get(i).map(short), b.get(i).map(short));
    // Rows that differ only where `short` does not look: show them whole.
    let whole = x == y;
    for (side, rows, brief) in [("first ", a, x), ("second", b, y)] {
        let _ = match (rows.get(i), brief) {
            (Some(m), _) if whole => writeln!(out, "    {side} #{i}: {m:?}"),
            (_, Some(brief)) => writeln!(out, "    {side} #{i}: {brief}"),
            _ => writeln!(out, "    {side} #{i}: (none)"),
        };
    }
}

/// What differs between the peers' snapshots (each against the first), empty if nothing does.
fn diff(names: &[&str], snaps: &[Snapshot]) -> String {
    let mut out = String::new();
    for j in 1..snaps.len() {
        if snaps[0] == snaps[j] {
            continue;
        }
        let _ = writeln!(out, " {} vs {}:", names[0], names[j]);
        if snaps[0].members != snaps[j].members {
            let _ = writeln!(
                out,
                "  members: {:?} vs {:?}",
                snaps[0].members, snaps[j].members
            );
        }
        diff_rows("timeline", &snaps[0].timeline, &snaps[j].timeline, &mut out);
        let roots: BTreeSet<&String> = snaps[0]
            .threads
            .keys()
            .chain(snaps[j].threads.keys())
            .collect();
        for root in roots {
            let a = snaps[0].threads.get(root).map_or(&[][..], |v| &v[..]);
            let b = snaps[j].threads.get(root).map_or(&[][..], |v| &v[..]);
            diff_rows(&format!("thread {root}"), a, b, &mut out);
        }
    }
    out
}

/// Waits until the peers `who` (running) show the same snapshot, holding every message in
/// `must`, re-reading after every event of their nodes; returns it.
async fn converged(
    seed: u64,
    peers: &mut [Peer],
    who: &[usize],
    ch: DocId,
    must: &[String],
) -> Snapshot {
    let deadline = tokio::time::Instant::now() + CONVERGE_WAIT;
    loop {
        for &i in who {
            while !matches!(peers[i].events.try_recv(), Err(TryRecvError::Empty)) {}
        }
        let mut snaps = Vec::with_capacity(who.len());
        for &i in who {
            let p = &peers[i];
            let snap = p
                .call(move |s| snapshot(s, ch))
                .await
                .unwrap_or_else(|e| panic!("seed {seed}: reading at {}: {e}", p.name));
            snaps.push(snap);
        }
        let missing: Vec<String> = {
            let all = snaps[0].all();
            must.iter()
                .filter(|id| !all.contains_key(id.as_str()))
                .cloned()
                .collect()
        };
        if missing.is_empty() && snaps.iter().all(|s| *s == snaps[0]) {
            return snaps.swap_remove(0);
        }
        let waits = peers
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| who.contains(i))
            .map(|(_, p)| Box::pin(p.events.recv()));
        let timed_out = tokio::select! {
            _ = futures_util::future::select_all(waits) => false,
            _ = tokio::time::sleep_until(deadline) => true,
        };
        if timed_out {
            let names: Vec<&str> = who.iter().map(|&i| peers[i].name).collect();
            let seen: Vec<usize> = snaps.iter().map(|s| s.all().len()).collect();
            panic!(
                "seed {seed}: {names:?} did not converge within {CONVERGE_WAIT:?} \
                 (messages seen {seen:?}, {} required, missing at {}: {missing:?}):\n{}",
                must.len(),
                names[0],
                diff(&names, &snaps),
            );
        }
    }
}

fn deleted(e: &StoreError) -> bool {
    matches!(e, StoreError::Model(ModelError::Deleted(_)))
}

/// Whether a message the test posted must reach the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// It must be shown everywhere.
    Shown,
    /// Its author's removal was under way: it may be shown (everywhere) or not (anywhere).
    Maybe,
    /// Its author's removal had converged: it must never be shown to the remaining members.
    Never,
}

/// A message the test posted, and what must become of it.
#[derive(Debug)]
struct Posted {
    id: String,
    by: usize,
    /// The step it was posted at.
    step: usize,
    /// The text it must show unless deleted: the last successful edit's, or the original.
    text: String,
    deleted: bool,
    fate: Fate,
    /// A member's reply or reaction to it succeeded: it reached that member, so it must reach
    /// everyone, whatever its fate.
    used: bool,
}

/// (message, person, emoji) -> whether the last reaction that succeeded put it on.
type Reacted = BTreeMap<(usize, usize, &'static str), bool>;

#[derive(Debug, Default)]
struct Tally {
    posts: usize,
    replies: usize,
    posts_failed: usize,
    edits: usize,
    edits_failed: usize,
    deletes: usize,
    deletes_failed: usize,
    reacts: usize,
    reacts_failed: usize,
    roles: usize,
    restarts: usize,
    cuts: usize,
    heals: usize,
}

/// Who acts at a step, where.
#[derive(Clone, Copy)]
struct Actor {
    seed: u64,
    step: usize,
    who: usize,
    ch: DocId,
}

/// One chat action by `p` (person `a.who`), chosen by `roll` (0..=81) and `draws`: post (maybe
/// in a thread), edit or delete one of mine, react or take a reaction back. What succeeded is
/// recorded in `posted` and `reacted`; only what timing explains may fail.
async fn act(
    a: Actor,
    p: &Peer,
    roll: usize,
    [d1, d2, d3]: [u64; 3],
    posted: &mut Vec<Posted>,
    reacted: &mut Reacted,
    tally: &mut Tally,
) {
    let Actor {
        seed,
        step,
        who,
        ch,
    } = a;
    match roll {
        // Post, sometimes in a thread (of a message that may not have reached `who` yet).
        0..=34 => {
            let to = (pick(d1, 100) < 30 && !posted.is_empty()).then(|| pick(d2, posted.len()));
            let thread = to.map(|j| posted[j].id.clone());
            let mention = if pick(d3, 100) < 20 { " @alice" } else { "" };
            let text = format!("{} says {step}{mention}", p.name);
            let t = text.clone();
            let th = thread.clone();
            let r = p
                .call(move |s| {
                    let th = th.map(|id| s.resolve_message(&id)).transpose()?;
                    s.post(ch, &t, None, th)
                })
                .await;
            match r {
                Ok(m) => {
                    tally.posts += 1;
                    tally.replies += usize::from(thread.is_some());
                    if let Some(j) = to {
                        posted[j].used = true;
                    }
                    posted.push(Posted {
                        id: m.id,
                        by: who,
                        step,
                        text,
                        deleted: false,
                        fate: Fate::Shown,
                        used: false,
                    });
                }
                // Only a reply to a message that has not reached me yet.
                Err(StoreError::UnknownMessage(_)) if thread.is_some() => tally.posts_failed += 1,
                Err(e) => panic!("seed {seed}: step {step}: {} posts: {e}", p.name),
            }
        }
        // Edit one of my messages: it is on my node, so only a deleted one may refuse.
        35..=49 => {
            let mine: Vec<usize> = (0..posted.len()).filter(|&i| posted[i].by == who).collect();
            if mine.is_empty() {
                return;
            }
            let i = mine[pick(d1, mine.len())];
            let (id, text) = (posted[i].id.clone(), format!("edited at {step}"));
            let (m, t) = (id.clone(), text.clone());
            match p.call(move |s| s.edit(&m, &t)).await {
                Ok(_) => {
                    tally.edits += 1;
                    posted[i].text = text;
                }
                Err(e) if posted[i].deleted && deleted(&e) => tally.edits_failed += 1,
                Err(e) => panic!("seed {seed}: step {step}: {} edits {id}: {e}", p.name),
            }
        }
        // Delete one of my messages (again, perhaps: that one refuses).
        50..=59 => {
            let mine: Vec<usize> = (0..posted.len()).filter(|&i| posted[i].by == who).collect();
            if mine.is_empty() {
                return;
            }
            let i = mine[pick(d1, mine.len())];
            let id = posted[i].id.clone();
            let m = id.clone();
            match p.call(move |s| s.delete(&m)).await {
                Ok(_) => {
                    tally.deletes += 1;
                    posted[i].deleted = true;
                }
                Err(e) if posted[i].deleted && deleted(&e) => tally.deletes_failed += 1,
                Err(e) => panic!("seed {seed}: step {step}: {} deletes {id}: {e}", p.name),
            }
        }
        // React or take a reaction back, on anyone's message.
        60..=81 => {
            if posted.is_empty() {
                return;
            }
            let i = pick(d1, posted.len());
            let id = posted[i].id.clone();
            let emoji = EMOJI[pick(d2, EMOJI.len())];
            let on = pick(d3, 100) < 65;
            let m = id.clone();
            match p.call(move |s| s.react(&m, emoji, on)).await {
                Ok(_) => {
                    tally.reacts += 1;
                    posted[i].used = true;
                    reacted.insert((i, who, emoji), on);
                }
                // Only on a message that has not reached me yet, or is deleted.
                Err(StoreError::UnknownMessage(_)) => tally.reacts_failed += 1,
                Err(e) if deleted(&e) => tally.reacts_failed += 1,
                Err(e) => panic!("seed {seed}: step {step}: {} reacts to {id}: {e}", p.name),
            }
        }
        _ => unreachable!("chat actions are 0..=81"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_converge_after_random_actions_restarts_and_cut_links() {
    let seed = seed("converge");
    let began = Instant::now();
    let mut rng = Rng::new(seed);

    // Alice owns the workspace and invites Bob and Carol, each with their own ticket.
    let (ws, ch, mut peers) = founded(seed).await;
    for name in ["bob", "carol"] {
        let p = joined(seed, &peers[0], name, ws, ch).await;
        peers.push(p);
    }
    // Everyone knows everyone (Carol's admission reaches Bob through Alice).
    for p in &mut peers {
        until(seed, p, "all three members", |s| {
            (s.members().ok()?.len() == 3).then_some(())
        })
        .await;
    }
    let mut keys = Vec::new();
    for p in &peers {
        keys.push(key_of(p).await);
    }
    let carol_key = keys[2].clone();
    let devices: Vec<DeviceId> = peers.iter().map(|p| p.node().addr().id).collect();
    // Links cut now, as (smaller, larger) person index: both ends cut each.
    let mut cut: BTreeSet<(usize, usize)> = BTreeSet::new();
    eprintln!("converge: set up in {:?}", began.elapsed());

    let mut posted: Vec<Posted> = Vec::new();
    let mut tally = Tally::default();
    let mut carol_admin = false;
    let mut reacted = Reacted::new();
    for step in 0..STEPS {
        // The same number of draws every step, whatever happens, so that a seed always makes
        // the same choices.
        let [who, roll, d1, d2, d3]: [u64; 5] = std::array::from_fn(|_| rng.next());
        let who = pick(who, 3);
        let p = &peers[who];
        match pick(roll, 100) {
            chat @ 0..=81 => {
                let draws = [d1, d2, d3];
                let a = Actor {
                    seed,
                    step,
                    who,
                    ch,
                };
                act(a, p, chat, draws, &mut posted, &mut reacted, &mut tally).await
            }
            // Alice makes Carol an admin, or a member again.
            82..=89 => {
                carol_admin = !carol_admin;
                let role = if carol_admin {
                    Role::Admin
                } else {
                    Role::Member
                };
                let key = carol_key.clone();
                peers[0]
                    .call(move |s| s.set_role(&key, role))
                    .await
                    .unwrap_or_else(|e| panic!("seed {seed}: alice sets carol's role: {e}"));
                tally.roles += 1;
            }
            // Restart someone on the same address.
            90..=94 => {
                if tally.restarts >= MAX_RESTARTS {
                    continue;
                }
                tally.restarts += 1;
                let p = &mut peers[who];
                let t = Instant::now();
                p.stop().await;
                p.restart(seed).await;
                for &(a, b) in cut.iter().filter(|(a, b)| *a == who || *b == who) {
                    let other = if a == who { b } else { a };
                    p.node().cut(devices[other]).expect("running");
                }
                eprintln!(
                    "converge: step {step}: restarted {} in {:?}",
                    p.name,
                    t.elapsed()
                );
            }
            // Cut the link between `who` and another, or restore it if it is cut. The two
            // still reach each other through the third unless its links are cut too.
            _ => {
                let other = (who + 1 + pick(d1, 2)) % 3;
                let link = (who.min(other), who.max(other));
                let (a, b) = link;
                let heal = cut.remove(&link);
                for (x, y) in [(a, b), (b, a)] {
                    let node = peers[x].node();
                    match heal {
                        true => node.heal(devices[y]),
                        false => node.cut(devices[y]),
                    }
                    .expect("running");
                }
                if heal {
                    tally.heals += 1;
                } else {
                    cut.insert(link);
                    tally.cuts += 1;
                }
                let (na, nb) = (peers[a].name, peers[b].name);
                let what = if heal { "restored" } else { "cut" };
                eprintln!("converge: step {step}: {what} the link {na}-{nb}");
            }
        }
    }
    // Every link back: the replicas can only converge once a path joins them all.
    for (a, b) in std::mem::take(&mut cut) {
        peers[a].node().heal(devices[b]).expect("running");
        peers[b].node().heal(devices[a]).expect("running");
    }
    eprintln!(
        "converge: {STEPS} steps done at {:?}: {tally:?}",
        began.elapsed()
    );
    assert!(tally.posts > 0, "seed {seed}: nothing was posted");

    // Every node is running; wait until all three show the same thing.
    let must: Vec<String> = posted.iter().map(|m| m.id.clone()).collect();
    let snap = converged(seed, &mut peers, &[0, 1, 2], ch, &must).await;
    eprintln!(
        "converge: converged at {:?}: {} messages, {} threads",
        began.elapsed(),
        snap.all().len(),
        snap.threads.len()
    );

    // And what they agree on is right.
    let roles: Vec<(&str, &str)> = snap
        .members
        .iter()
        .map(|m| (m.key.as_str(), m.role.as_str()))
        .collect();
    let carol_role = if carol_admin {
        Role::Admin
    } else {
        Role::Member
    };
    for (key, role) in [
        (&keys[0], Role::Owner),
        (&keys[1], Role::Member),
        (&keys[2], carol_role),
    ] {
        assert!(
            roles.contains(&(key.as_str(), role.as_str())),
            "seed {seed}: {key} is {} in {roles:?}",
            role.as_str()
        );
    }
    let all = snap.all();
    for m in all.values() {
        assert!(m.verified, "seed {seed}: unverified: {}", short(m));
        if m.deleted {
            assert!(
                m.text.is_empty(),
                "seed {seed}: deleted with text: {}",
                short(m)
            );
            assert!(m.reactions.is_empty(), "seed {seed}: deleted: {}", short(m));
        }
    }
    for root in snap.timeline.iter().filter(|m| m.reply_count > 0) {
        let thread = &snap.threads[&root.id];
        assert_eq!(
            thread.len() as i64,
            root.reply_count + 1,
            "seed {seed}: thread {} shows its root and every reply",
            root.id
        );
    }
    let name_of = |person: usize| {
        let m = snap.members.iter().find(|m| m.key == keys[person]);
        m.expect("a member").name.clone()
    };
    for (i, p) in posted.iter().enumerate() {
        let m = all[p.id.as_str()];
        assert_eq!(m.author.key, keys[p.by], "seed {seed}: {}", short(m));
        assert_eq!(m.deleted, p.deleted, "seed {seed}: {}", short(m));
        if p.deleted {
            continue;
        }
        assert_eq!(m.text, p.text, "seed {seed}: the last edit wins");
        let mut reactions: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (&(_, person, emoji), _) in reacted.range((i, 0, "")..(i + 1, 0, "")).filter(|r| *r.1) {
            reactions
                .entry(emoji.to_owned())
                .or_default()
                .push(name_of(person));
        }
        let mut shown = m.reactions.clone();
        shown.values_mut().for_each(|v| v.sort());
        reactions.values_mut().for_each(|v| v.sort());
        assert_eq!(
            shown,
            reactions,
            "seed {seed}: the last reaction wins: {}",
            short(m)
        );
    }
    assert_eq!(
        all.len(),
        posted.len(),
        "seed {seed}: only what was posted is shown"
    );

    for p in peers {
        p.node.expect("running").shutdown().await;
    }
    eprintln!("converge: done in {:?}", began.elapsed());
}

mod members;
