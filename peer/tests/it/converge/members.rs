//! Membership changes during the random run: Dave is invited mid-run (by Alice, or by Carol
//! while she is an admin) and joins; then, with Alice's node stopped (a partition), Alice and
//! Carol change membership concurrently (Alice offline, on her own disk): Alice demotes Carol
//! while Carol removes Bob, or both remove Bob, or Alice removes Carol while Carol removes Bob.
//! Every node keeps a connection to every other (not only to its inviter), so changes can take
//! any path, through members that have not heard of a removal yet as well.
//!
//! What must hold, besides the remaining members converging to identical snapshots with the
//! roles the records decide (a removal by someone who had been demoted before it counts only if
//! it was made before the demotion):
//! - a removed member keeps running and keeps posting. A post made while its removal was under
//!   way (some remaining member had not seen it) may legitimately reach everyone (through a
//!   member who had not), or no one; one made after every remaining member's node showed the
//!   removal must never be shown to them.
//! - the removed node hears nothing of its removal, and gets nothing a remaining member posts
//!   after the removal converged.
//!
//! Replay with `FLYT_SEED=<seed> cargo test -p peer --test it converge::members`.

use super::*;

const STEPS: usize = 60;
const ALICE: usize = 0;
const BOB: usize = 1;
const CAROL: usize = 2;

/// The concurrent membership change, made while Alice's node is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Clash {
    /// Alice demotes Carol; Carol removes Bob.
    DemoteVsRemove,
    /// Alice and Carol both remove Bob.
    BothRemove,
    /// Alice removes Carol; Carol removes Bob.
    RemoveTheRemover,
}

/// The scripted membership steps, drawn from the seed before the run.
#[derive(Debug)]
struct Plan {
    /// Dave joins at this step, invited by this person.
    dave_at: usize,
    dave_by: usize,
    /// The clash happens at this step; Alice's node is back `down_for` steps later.
    clash_at: usize,
    clash: Clash,
    /// Alice's offline change is made before Carol's (else after).
    alice_first: bool,
    down_for: usize,
    /// If Bob is still a member after the clash, Alice (online) removes him at this step.
    bob_out_at: usize,
}

impl Plan {
    fn draw(rng: &mut Rng) -> Plan {
        let [a, b, c, d, e, f, g]: [u64; 7] = std::array::from_fn(|_| rng.next());
        let clash_at = 14 + pick(c, 8);
        let down_for = 1 + pick(f, 4);
        Plan {
            dave_at: 3 + pick(a, 8),
            dave_by: if b % 2 == 0 { ALICE } else { CAROL },
            clash_at,
            clash: [
                Clash::DemoteVsRemove,
                Clash::BothRemove,
                Clash::RemoveTheRemover,
            ][pick(d, 3)],
            alice_first: e % 2 == 0,
            down_for,
            bob_out_at: clash_at + down_for + 3 + pick(g, 6),
        }
    }
}

/// A person's removal: the step it was made at (its outcome decided), and the step after which
/// every remaining member's node showed it.
#[derive(Debug, Clone, Copy)]
struct Out {
    at: usize,
    converged: Option<usize>,
}

/// What the removed members tried.
#[derive(Debug, Default)]
struct Removed {
    /// Posts that went through on the removed node while the removal was under way.
    maybe: usize,
    /// ... and after it converged.
    never: usize,
}

/// Whether the person `key` is missing from `p`'s member list.
async fn gone(p: &Peer, key: String) -> bool {
    p.call(move |s| s.members().map(|m| m.iter().all(|m| m.key != key)))
        .await
        .unwrap()
}

/// Waits until every node still a member (all running) is in sync: everything so far that must
/// be shown is, and the snapshots are equal.
async fn checkpoint(
    seed: u64,
    peers: &mut [Peer],
    out: &[Option<Out>],
    ch: DocId,
    posted: &[Posted],
) -> Snapshot {
    let who: Vec<usize> = (0..peers.len()).filter(|&i| out[i].is_none()).collect();
    let must: Vec<String> = posted
        .iter()
        .filter(|m| m.fate == Fate::Shown || m.used)
        .map(|m| m.id.clone())
        .collect();
    converged(seed, peers, &who, ch, &must).await
}

/// A removed member's node tries to post. It never hears of its own removal (nobody passes
/// on a change to a peer it removes), so the post goes through on its own disk.
async fn removed_posts(
    a: Actor,
    p: &Peer,
    key: String,
    out: Out,
    posted: &mut Vec<Posted>,
    tally: &mut Removed,
) {
    let Actor {
        seed,
        step,
        who,
        ch,
    } = a;
    let text = format!("{} (removed) says {step}", p.name);
    let t = text.clone();
    let (saw, r) = p
        .call(move |s| {
            let saw = s.members().unwrap().iter().all(|m| m.key != key);
            (saw, s.post(ch, &t, None, None))
        })
        .await;
    assert!(
        !saw,
        "seed {seed}: step {step}: {} heard of its removal",
        p.name
    );
    match r {
        Ok(m) => {
            let fate = match out.converged {
                Some(_) => Fate::Never,
                None => Fate::Maybe,
            };
            match fate {
                Fate::Never => tally.never += 1,
                _ => tally.maybe += 1,
            }
            posted.push(Posted {
                id: m.id,
                by: who,
                step,
                text,
                deleted: false,
                fate,
                used: false,
            });
        }
        Err(e) => panic!("seed {seed}: step {step}: {} (removed) posts: {e}", p.name),
    }
}

/// Makes one of `peers` change `whose` role, waiting for the clock to pass the time it was
/// made at, so that the next change is strictly later (roles are decided by these times).
async fn change_role(seed: u64, p: &Peer, whose: String, role: Role) {
    let by = p.name;
    p.call(move |s| s.set_role(&whose, role))
        .await
        .unwrap_or_else(|e| panic!("seed {seed}: {by} sets a role: {e}"));
    let made = peer::now_ms();
    while peer::now_ms() <= made {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_join_and_leave_while_nodes_stop_and_converge() {
    let seed = seed("converge::members");
    let began = Instant::now();
    let mut rng = Rng::new(seed);
    let plan = Plan::draw(&mut rng);
    eprintln!("converge::members: {plan:?}");

    // Alice owns the workspace; Bob and Carol join with her tickets, Carol becomes an admin,
    // and Carol keeps a connection to Bob as well.
    let (ws, ch, mut peers) = founded(seed).await;
    for name in ["bob", "carol"] {
        let p = joined(seed, &peers[ALICE], name, ws, ch).await;
        peers.push(p);
    }
    let mut keys = Vec::new();
    for p in &peers {
        keys.push(key_of(p).await);
    }
    let carol = keys[CAROL].clone();
    change_role(seed, &peers[ALICE], carol.clone(), Role::Admin).await;
    link(&peers[CAROL], &peers[BOB]).await;
    for p in &mut peers {
        let carol = carol.clone();
        until(seed, p, "three members, Carol an admin", move |s| {
            let m = s.members().ok()?;
            let admin = m.iter().any(|m| m.key == carol && m.role == "admin");
            (m.len() == 3 && admin).then_some(())
        })
        .await;
    }
    eprintln!("converge::members: set up in {:?}", began.elapsed());

    let mut posted: Vec<Posted> = Vec::new();
    let mut tally = Tally::default();
    let mut removed = Removed::default();
    let mut reacted = Reacted::new();
    let mut out: Vec<Option<Out>> = vec![None; 3];
    let mut carol_role = Role::Admin;
    for step in 0..STEPS {
        // The same number of draws every step, whatever happens.
        let [who, roll, d1, d2, d3]: [u64; 5] = std::array::from_fn(|_| rng.next());

        if step == plan.dave_at {
            let by = plan.dave_by;
            let dave = joined(seed, &peers[by], "dave", ws, ch).await;
            for (i, p) in peers.iter().enumerate().filter(|(i, _)| *i != by) {
                assert!(p.node.is_some(), "{} runs while Dave joins ({i})", p.name);
                link(&dave, p).await;
            }
            keys.push(key_of(&dave).await);
            peers.push(dave);
            out.push(None);
            eprintln!(
                "converge::members: step {step}: dave joined, invited by {}",
                peers[by].name
            );
        }

        if step == plan.clash_at {
            // Everyone in sync first: what the members did so far is certain to be shown.
            checkpoint(seed, &mut peers, &out, ch, &posted).await;
            peers[ALICE].stop().await;
            let alice_does = match plan.clash {
                Clash::DemoteVsRemove => (carol.clone(), Role::Member),
                Clash::BothRemove => (keys[BOB].clone(), Role::Removed),
                Clash::RemoveTheRemover => (carol.clone(), Role::Removed),
            };
            let bob = keys[BOB].clone();
            if plan.alice_first {
                change_role(seed, &peers[ALICE], alice_does.0, alice_does.1).await;
                change_role(seed, &peers[CAROL], bob, Role::Removed).await;
            } else {
                change_role(seed, &peers[CAROL], bob, Role::Removed).await;
                change_role(seed, &peers[ALICE], alice_does.0, alice_does.1).await;
            }
            // Carol's removal of Bob counts unless Alice took Carol's rights away before it.
            let bob_out = plan.clash == Clash::BothRemove || !plan.alice_first;
            let removal = Some(Out {
                at: step,
                converged: None,
            });
            if bob_out {
                out[BOB] = removal;
            }
            match plan.clash {
                Clash::DemoteVsRemove => carol_role = Role::Member,
                Clash::BothRemove => {}
                Clash::RemoveTheRemover => out[CAROL] = removal,
            }
            eprintln!(
                "converge::members: step {step}: {:?}, alice first: {}; out: {:?}",
                plan.clash,
                plan.alice_first,
                out.iter().map(Option::is_some).collect::<Vec<_>>()
            );
        }

        if step == plan.clash_at + plan.down_for {
            peers[ALICE].restart(seed).await;
            eprintln!("converge::members: step {step}: alice is back");
        }

        if step == plan.bob_out_at && out[BOB].is_none() && plan.clash == Clash::DemoteVsRemove {
            checkpoint(seed, &mut peers, &out, ch, &posted).await;
            change_role(seed, &peers[ALICE], keys[BOB].clone(), Role::Removed).await;
            out[BOB] = Some(Out {
                at: step,
                converged: None,
            });
            eprintln!("converge::members: step {step}: alice removes bob");
        }

        let who = pick(who, peers.len());
        let a = Actor {
            seed,
            step,
            who,
            ch,
        };
        if let Some(o) = out[who] {
            let key = keys[who].clone();
            removed_posts(a, &peers[who], key, o, &mut posted, &mut removed).await;
        } else {
            match pick(roll, 100) {
                chat @ 0..=81 => {
                    let p = &peers[who];
                    act(
                        a,
                        p,
                        chat,
                        [d1, d2, d3],
                        &mut posted,
                        &mut reacted,
                        &mut tally,
                    )
                    .await
                }
                // Restart someone running (not Alice while she is partitioned).
                _ if tally.restarts < MAX_RESTARTS && peers[who].node.is_some() => {
                    tally.restarts += 1;
                    peers[who].stop().await;
                    peers[who].restart(seed).await;
                    eprintln!(
                        "converge::members: step {step}: restarted {}",
                        peers[who].name
                    );
                }
                _ => {}
            }
        }

        // Has a removal converged: does every remaining member's node show it?
        let rest: Vec<usize> = (0..peers.len()).filter(|&i| out[i].is_none()).collect();
        if rest.iter().all(|&i| peers[i].node.is_some()) {
            for v in 0..peers.len() {
                let Some(o) = out[v].filter(|o| o.converged.is_none()) else {
                    continue;
                };
                let mut everywhere = true;
                for &i in &rest {
                    everywhere &= gone(&peers[i], keys[v].clone()).await;
                }
                if everywhere {
                    out[v] = Some(Out {
                        converged: Some(step),
                        ..o
                    });
                    eprintln!(
                        "converge::members: step {step}: {}'s removal (at {}) converged",
                        peers[v].name, o.at
                    );
                }
            }
        }
    }
    eprintln!(
        "converge::members: {STEPS} steps done at {:?}: {tally:?} {removed:?}",
        began.elapsed()
    );

    // The remaining members converge; then the removed ones post once more, each remaining
    // member posts after that, and they converge again.
    let rest: Vec<usize> = (0..peers.len()).filter(|&i| out[i].is_none()).collect();
    let snap = checkpoint(seed, &mut peers, &out, ch, &posted).await;
    for v in 0..peers.len() {
        if let Some(o) = out[v] {
            assert!(
                snap.members.iter().all(|m| m.key != keys[v]),
                "seed {seed}: {} is still listed: {:?}",
                peers[v].name,
                snap.members
            );
            let o = Out {
                converged: o.converged.or(Some(STEPS)),
                ..o
            };
            out[v] = Some(o);
            let a = Actor {
                seed,
                step: STEPS,
                who: v,
                ch,
            };
            let key = keys[v].clone();
            removed_posts(a, &peers[v], key, o, &mut posted, &mut removed).await;
        }
    }
    for &i in &rest {
        let a = Actor {
            seed,
            step: STEPS + 1,
            who: i,
            ch,
        };
        act(
            a,
            &peers[i],
            0,
            [99, 0, 99],
            &mut posted,
            &mut reacted,
            &mut tally,
        )
        .await;
    }
    let snap = checkpoint(seed, &mut peers, &out, ch, &posted).await;
    eprintln!(
        "converge::members: converged at {:?}: {} messages; {removed:?}",
        began.elapsed(),
        snap.all().len()
    );

    // The members and their roles.
    let mut expected: Vec<(String, &str)> = rest
        .iter()
        .map(|&i| {
            let role = match i {
                ALICE => Role::Owner,
                CAROL => carol_role,
                _ => Role::Member,
            };
            (keys[i].clone(), role.as_str())
        })
        .collect();
    expected.sort();
    let mut roles: Vec<(String, &str)> = snap
        .members
        .iter()
        .map(|m| (m.key.clone(), m.role.as_str()))
        .collect();
    roles.sort();
    assert_eq!(roles, expected, "seed {seed}: the members and their roles");

    // Every message is where its fate says, and right.
    let all = snap.all();
    for m in all.values() {
        assert!(m.verified, "seed {seed}: unverified: {}", short(m));
    }
    for (i, p) in posted.iter().enumerate() {
        let shown = all.get(p.id.as_str());
        match (p.fate, shown) {
            (Fate::Never, Some(m)) => panic!(
                "seed {seed}: {} posted this after its removal converged (step {}), and it is shown: {}",
                peers[p.by].name,
                out[p.by].and_then(|o| o.converged).unwrap_or(STEPS),
                short(m)
            ),
            (Fate::Shown, None) => panic!("seed {seed}: lost: {p:?}"),
            (_, None) if p.used => panic!("seed {seed}: a member used it, then lost: {p:?}"),
            (_, None) => continue,
            (_, Some(m)) => {
                assert_eq!(m.author.key, keys[p.by], "seed {seed}: {}", short(m));
                assert_eq!(m.deleted, p.deleted, "seed {seed}: {}", short(m));
                if p.deleted {
                    assert!(m.text.is_empty(), "seed {seed}: {}", short(m));
                    continue;
                }
                assert_eq!(m.text, p.text, "seed {seed}: the last edit wins");
                let mut want: BTreeMap<String, Vec<String>> = BTreeMap::new();
                let range = reacted.range((i, 0, "")..(i + 1, 0, ""));
                for (&(_, person, emoji), _) in range.filter(|r| *r.1) {
                    want.entry(emoji.to_owned())
                        .or_default()
                        .push(peers[person].name.to_owned());
                }
                let mut got = m.reactions.clone();
                got.values_mut().for_each(|v| v.sort());
                want.values_mut().for_each(|v| v.sort());
                assert_eq!(
                    got,
                    want,
                    "seed {seed}: the last reaction wins: {}",
                    short(m)
                );
            }
        }
    }
    let ours: BTreeSet<&str> = posted.iter().map(|p| p.id.as_str()).collect();
    for id in all.keys() {
        assert!(ours.contains(id), "seed {seed}: shown, never posted: {id}");
    }
    for root in snap.timeline.iter().filter(|m| m.reply_count > 0) {
        assert_eq!(
            snap.threads[&root.id].len() as i64,
            root.reply_count + 1,
            "seed {seed}: thread {} shows its root and every reply",
            root.id
        );
    }

    // A removed node got nothing the others posted after its removal converged.
    for v in 0..peers.len() {
        let Some(converged) = out[v].and_then(|o| o.converged) else {
            continue;
        };
        let theirs = peers[v]
            .call(move |s| snapshot(s, ch))
            .await
            .unwrap_or_else(|e| panic!("seed {seed}: reading at {}: {e}", peers[v].name));
        let theirs = theirs.all();
        for p in posted
            .iter()
            .filter(|p| out[p.by].is_none() && p.step > converged)
        {
            assert!(
                !theirs.contains_key(p.id.as_str()),
                "seed {seed}: {} (removed, converged at step {converged}) got {p:?}",
                peers[v].name
            );
        }
    }

    for p in peers {
        p.node.expect("running").shutdown().await;
    }
    eprintln!("converge::members: done in {:?}", began.elapsed());
}
