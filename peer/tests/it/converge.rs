//! Three real nodes over real iroh QUIC on 127.0.0.1, each with its own SQLite home, driven by a
//! seeded sequence of chat actions and restarts; afterwards all three must show the same channel,
//! message for message, and it must be the right one (nothing lost, every edit and deletion
//! kept). Waits are on node events with a timeout, never sleeps.
//!
//! The seed decides every step's choices; replay a failure with
//! `FLYT_SEED=<seed> cargo test -p peer --test it converge`. Network timing still varies, and
//! with it what can succeed (a reply to a message that has not reached the replier yet fails).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crdt_model::{DocId, ModelError, Role};
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

    /// Runs `f` on this peer's store thread.
    async fn call<R: Send + 'static>(&self, f: impl FnOnce(&mut Store) -> R + Send + 'static) -> R {
        self.node().call(f).await.expect("the node runs")
    }
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

/// What differs between the peers' snapshots, empty if nothing does.
fn diff(names: &[&str; 3], snaps: &[Snapshot; 3]) -> String {
    let mut out = String::new();
    for j in 1..3 {
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

fn deleted(e: &StoreError) -> bool {
    matches!(e, StoreError::Model(ModelError::Deleted(_)))
}

/// A message the test posted, and what must become of it.
#[derive(Debug)]
struct Posted {
    id: String,
    by: usize,
    /// The text it must show unless deleted: the last successful edit's, or the original.
    text: String,
    deleted: bool,
}

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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_converge_after_random_actions_and_restarts() {
    let seed = std::env::var("FLYT_SEED")
        .ok()
        .map(|s| {
            s.trim()
                .parse::<u64>()
                .unwrap_or_else(|_| panic!("FLYT_SEED={s:?} is not a u64"))
        })
        .unwrap_or(DEFAULT_SEED);
    eprintln!("converge: FLYT_SEED={seed}");
    let began = Instant::now();
    let mut rng = Rng::new(seed);

    // Alice owns the workspace and invites Bob and Carol, each with their own ticket.
    let alice_home = home_with("alice");
    let (ws, ch) = {
        let mut s = alice_home.open();
        let ws = s.create_workspace("acme").unwrap();
        (ws, s.create_channel("general", "", false).unwrap())
    };
    let alice = start_peer(seed, "alice", alice_home).await;
    let mut peers = vec![alice];
    for name in ["bob", "carol"] {
        let addrs = vec![peers[0].bind.to_string()];
        let ticket = peers[0]
            .call(move |s| s.invite(Role::Member, 600_000, addrs))
            .await
            .unwrap();
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
        peers.push(p);
    }
    // Everyone knows everyone (Carol's admission reaches Bob through Alice).
    for p in &mut peers {
        until(seed, p, "all three members", |s| {
            (s.members().ok()?.len() == 3).then_some(())
        })
        .await;
    }
    let names = [peers[0].name, peers[1].name, peers[2].name];
    let mut keys = Vec::new();
    for p in &peers {
        let key = p
            .call(|s| s.identity().map(|me| me.person_id().to_string()))
            .await
            .unwrap();
        keys.push(key);
    }
    let carol_key = keys[2].clone();
    eprintln!("converge: set up in {:?}", began.elapsed());

    let mut posted: Vec<Posted> = Vec::new();
    let mut tally = Tally::default();
    let mut carol_admin = false;
    // (message, person, emoji) -> whether the last reaction that succeeded put it on.
    let mut reacted: BTreeMap<(usize, usize, &str), bool> = BTreeMap::new();
    for step in 0..STEPS {
        // The same number of draws every step, whatever happens, so that a seed always makes
        // the same choices.
        let [who, roll, d1, d2, d3]: [u64; 5] = std::array::from_fn(|_| rng.next());
        let who = pick(who, 3);
        let p = &peers[who];
        match pick(roll, 100) {
            // Post, sometimes in a thread (of a message that may not have reached `who` yet).
            0..=34 => {
                let thread = (pick(d1, 100) < 30 && !posted.is_empty())
                    .then(|| posted[pick(d2, posted.len())].id.clone());
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
                        posted.push(Posted {
                            id: m.id,
                            by: who,
                            text,
                            deleted: false,
                        });
                    }
                    // Only a reply to a message that has not reached me yet.
                    Err(StoreError::UnknownMessage(_)) if thread.is_some() => {
                        tally.posts_failed += 1
                    }
                    Err(e) => panic!("seed {seed}: step {step}: {} posts: {e}", p.name),
                }
            }
            // Edit one of my messages: it is on my node, so only a deleted one may refuse.
            35..=49 => {
                let mine: Vec<usize> = (0..posted.len()).filter(|&i| posted[i].by == who).collect();
                if mine.is_empty() {
                    continue;
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
                    continue;
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
                    continue;
                }
                let i = pick(d1, posted.len());
                let id = posted[i].id.clone();
                let emoji = EMOJI[pick(d2, EMOJI.len())];
                let on = pick(d3, 100) < 65;
                let m = id.clone();
                match p.call(move |s| s.react(&m, emoji, on)).await {
                    Ok(_) => {
                        tally.reacts += 1;
                        reacted.insert((i, who, emoji), on);
                    }
                    // Only on a message that has not reached me yet, or is deleted.
                    Err(StoreError::UnknownMessage(_)) => tally.reacts_failed += 1,
                    Err(e) if deleted(&e) => tally.reacts_failed += 1,
                    Err(e) => panic!("seed {seed}: step {step}: {} reacts to {id}: {e}", p.name),
                }
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
            _ => {
                if tally.restarts >= MAX_RESTARTS {
                    continue;
                }
                tally.restarts += 1;
                let p = &mut peers[who];
                let t = Instant::now();
                p.node.take().expect("running").shutdown().await;
                let node = start(seed, &p.home, p.bind).await;
                assert_eq!(node.addr().addrs[0], p.bind, "{} keeps its address", p.name);
                p.events = node.subscribe();
                p.node = Some(node);
                eprintln!(
                    "converge: step {step}: restarted {} in {:?}",
                    p.name,
                    t.elapsed()
                );
            }
        }
    }
    eprintln!(
        "converge: {STEPS} steps done at {:?}: {tally:?}",
        began.elapsed()
    );
    assert!(tally.posts > 0, "seed {seed}: nothing was posted");

    // Every node is running; wait until all three show the same thing.
    let deadline = tokio::time::Instant::now() + CONVERGE_WAIT;
    let snaps = loop {
        for p in &mut peers {
            while !matches!(p.events.try_recv(), Err(TryRecvError::Empty)) {}
        }
        let mut snaps = Vec::with_capacity(3);
        for p in &peers {
            let snap = p
                .call(move |s| snapshot(s, ch))
                .await
                .unwrap_or_else(|e| panic!("seed {seed}: reading at {}: {e}", p.name));
            snaps.push(snap);
        }
        let snaps: [Snapshot; 3] = snaps.try_into().expect("three");
        let complete = posted
            .iter()
            .all(|m| snaps[0].all().contains_key(m.id.as_str()));
        if complete && snaps[0] == snaps[1] && snaps[0] == snaps[2] {
            break snaps;
        }
        let [a, b, c] = &mut peers[..] else {
            unreachable!("three peers")
        };
        tokio::select! {
            _ = a.events.recv() => {}
            _ = b.events.recv() => {}
            _ = c.events.recv() => {}
            _ = tokio::time::sleep_until(deadline) => {
                let seen = snaps.each_ref().map(|s| s.all().len());
                let missing: Vec<&str> = posted
                    .iter()
                    .filter(|m| !snaps[0].all().contains_key(m.id.as_str()))
                    .map(|m| m.id.as_str())
                    .collect();
                panic!(
                    "seed {seed}: the nodes did not converge within {CONVERGE_WAIT:?} \
                     (messages seen {seen:?}, {} posted, missing at {}: {missing:?}):\n{}",
                    posted.len(),
                    names[0],
                    diff(&names, &snaps),
                );
            }
        }
    };
    eprintln!(
        "converge: converged at {:?}: {} messages, {} threads",
        began.elapsed(),
        snaps[0].all().len(),
        snaps[0].threads.len()
    );

    // And what they agree on is right.
    let roles: Vec<(&str, &str)> = snaps[0]
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
    let all = snaps[0].all();
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
    for root in snaps[0].timeline.iter().filter(|m| m.reply_count > 0) {
        let thread = &snaps[0].threads[&root.id];
        assert_eq!(
            thread.len() as i64,
            root.reply_count + 1,
            "seed {seed}: thread {} shows its root and every reply",
            root.id
        );
    }
    let name_of = |person: usize| {
        let m = snaps[0].members.iter().find(|m| m.key == keys[person]);
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
