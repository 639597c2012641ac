//! Property tests for convergence: replicas that end up with the same changes, received in any
//! order, grouping and number of copies (and through any mix of `apply_changes`, `save` and
//! `save_after`), end in the same document and the same verified views, and lose nothing.
//!
//! Every run is replayable: proptest prints the failing operation list and records its seed in
//! `proptest-regressions/`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;

use automerge::{Automerge, Change, ReadDoc};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestCaseError;

use crate::bucket::{self, MessageView, NewPost};
use crate::channel::BucketKey;
use crate::signed::ChannelInfo;
use crate::workspace::{self, WorkspaceView};
use crate::{DocId, Identity, MessageId, PersonId, Role, device_actor};

/// The channel every bucket here belongs to.
const CH: DocId = DocId([0x42; 16]);
/// 2026-11-22T00:00:00Z: all test times fall on this day.
const T0: i64 = 1_795_305_600_000;
const NONCE: [u8; 16] = [0x5a; 16];
const EMOJI: [&str; 4] = ["👍", "🎉", "❤️", "ok"];
const CASES: u32 = 48;

/// Owner, admin and member of one workspace, with its document and its verified view.
struct Fixture {
    people: [Identity; 3],
    ws: DocId,
    /// The saved workspace document after setup (owner's actor).
    ws_doc: Vec<u8>,
    /// Computed once; every bucket replica uses it as its trust context.
    view: WorkspaceView,
}

const OWNER: usize = 0;
const ADMIN: usize = 1;
const MEMBER: usize = 2;

static FX: LazyLock<Fixture> = LazyLock::new(|| {
    let people = [
        Identity::from_secrets([0x11; 32], [0x21; 32], "olga"),
        Identity::from_secrets([0x12; 32], [0x22; 32], "adam"),
        Identity::from_secrets([0x13; 32], [0x23; 32], "mia"),
    ];
    let mut doc = Automerge::new().with_actor(device_actor(&people[OWNER].device_id()));
    let ws = workspace::create(&mut doc, &people[OWNER], "acme", NONCE, T0).unwrap();
    for (i, role) in [(ADMIN, Role::Admin), (MEMBER, Role::Member)] {
        let p = &people[i];
        workspace::put_device(&mut doc, &p.device_cert("laptop", T0 + 1), T0 + 1).unwrap();
        workspace::set_role(&mut doc, &people[OWNER], ws, p.person_id(), role, T0 + 1).unwrap();
    }
    let view = workspace::view(&doc, ws);
    assert_eq!(view.role(&people[OWNER].person_id()), Some(Role::Owner));
    assert_eq!(view.role(&people[ADMIN].person_id()), Some(Role::Admin));
    assert_eq!(view.role(&people[MEMBER].person_id()), Some(Role::Member));
    Fixture {
        ws_doc: doc.save(),
        people,
        ws,
        view,
    }
});

// ---------------------------------------------------------------------------------------------
// Delivery between replicas

/// A small deterministic PRNG (splitmix64) seeded by proptest, for shuffles and subsets.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i + 1));
        }
    }
}

/// How one replica's changes reach another.
#[derive(Debug, Clone, Copy)]
enum Mode {
    /// Every change, shuffled, in one `apply_changes`.
    All,
    /// A random half of the changes, shuffled: the rest arrive later, so some wait in
    /// Automerge's queue for missing dependencies.
    Subset,
    /// Every change plus random repeats, shuffled, split over several `apply_changes` calls.
    Duplicated,
    /// What the receiver lacks, as `save_after(receiver heads)` through `load_incremental`.
    SaveAfter,
    /// The sender's whole document, `save()` through `load_incremental`.
    Save,
}

#[derive(Debug, Clone)]
struct Delivery {
    from: usize,
    /// Offset from `from` (1 or 2), so a replica never delivers to itself.
    to_offset: usize,
    mode: Mode,
    seed: u64,
}

fn delivery() -> impl Strategy<Value = Delivery> {
    let mode = prop_oneof![
        Just(Mode::All),
        Just(Mode::Subset),
        Just(Mode::Duplicated),
        Just(Mode::SaveAfter),
        Just(Mode::Save),
    ];
    (0usize..3, 1usize..3, mode, any::<u64>()).prop_map(|(from, to_offset, mode, seed)| Delivery {
        from,
        to_offset,
        mode,
        seed,
    })
}

/// Applies `changes` in 1 to 3 shuffled batches.
fn apply_in_batches(
    doc: &mut Automerge,
    mut changes: Vec<Change>,
    rng: &mut Rng,
) -> Result<(), TestCaseError> {
    rng.shuffle(&mut changes);
    let batches = 1 + rng.below(3);
    let size = changes.len().div_ceil(batches).max(1);
    for batch in changes.chunks(size) {
        doc.apply_changes(batch.to_vec())
            .map_err(|e| TestCaseError::fail(format!("apply_changes failed: {e}")))?;
    }
    Ok(())
}

/// Performs one delivery among `docs` (replica indices taken modulo `docs.len()`).
fn deliver(docs: &mut [Automerge], d: &Delivery) -> Result<(), TestCaseError> {
    let n = docs.len();
    let from = d.from % n;
    let to = (from + 1 + (d.to_offset - 1) % (n - 1)) % n;
    let mut rng = Rng(d.seed);
    match d.mode {
        Mode::All => {
            let mut changes = docs[from].get_changes(&[]);
            rng.shuffle(&mut changes);
            docs[to]
                .apply_changes(changes)
                .map_err(|e| TestCaseError::fail(format!("apply_changes failed: {e}")))?;
        }
        Mode::Subset => {
            let changes: Vec<Change> = docs[from]
                .get_changes(&[])
                .into_iter()
                .filter(|_| rng.next() & 1 == 0)
                .collect();
            apply_in_batches(&mut docs[to], changes, &mut rng)?;
        }
        Mode::Duplicated => {
            let mut changes = docs[from].get_changes(&[]);
            let repeats: Vec<Change> = changes
                .iter()
                .filter(|_| !rng.next().is_multiple_of(3))
                .cloned()
                .collect();
            changes.extend(repeats);
            apply_in_batches(&mut docs[to], changes, &mut rng)?;
        }
        Mode::SaveAfter => {
            let bytes = docs[from].save_after(&docs[to].get_heads());
            docs[to]
                .load_incremental(&bytes)
                .map_err(|e| TestCaseError::fail(format!("load_incremental failed: {e}")))?;
        }
        Mode::Save => {
            let bytes = docs[from].save();
            docs[to]
                .load_incremental(&bytes)
                .map_err(|e| TestCaseError::fail(format!("load_incremental failed: {e}")))?;
        }
    }
    Ok(())
}

/// Delivers every change of every replica to every replica, in random order, with duplicates
/// (changes known to several replicas appear several times).
fn deliver_everything(docs: &mut [Automerge], seed: u64) -> Result<(), TestCaseError> {
    let mut rng = Rng(seed);
    let all: Vec<Change> = docs.iter().flat_map(|d| d.get_changes(&[])).collect();
    for doc in docs.iter_mut() {
        apply_in_batches(doc, all.clone(), &mut rng)?;
    }
    Ok(())
}

/// All replicas have the same heads and nothing waiting for dependencies.
fn same_heads(docs: &[Automerge]) -> Result<(), TestCaseError> {
    let mut first = docs[0].get_heads();
    first.sort();
    for (i, d) in docs.iter().enumerate() {
        let mut h = d.get_heads();
        h.sort();
        prop_assert_eq!(&h, &first, "heads of replica {} differ from replica 0", i);
        prop_assert!(
            d.get_missing_deps(&[]).is_empty(),
            "replica {} still misses dependencies",
            i
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Bucket operations

#[derive(Debug, Clone)]
enum BucketOp {
    Post {
        r: usize,
        text: String,
        random: [u8; 10],
        mentions: u8,
        reply_to: Option<Index>,
        thread_root: Option<Index>,
    },
    Edit {
        r: usize,
        /// Pick among the replica's own messages (likely to succeed) or among all it knows.
        own: bool,
        msg: Index,
        text: String,
        mentions: u8,
    },
    Delete {
        r: usize,
        msg: Index,
    },
    React {
        r: usize,
        msg: Index,
        emoji: usize,
        on: bool,
    },
    Deliver(Delivery),
}

fn text() -> impl Strategy<Value = String> {
    // Blank texts are refused by the model: those operations fail and are ignored.
    prop_oneof![4 => "[a-z]{1,6}( [a-z]{1,6}){0,2}", 1 => "\\PC{0,5}", 1 => " {0,2}"]
}

fn bucket_op() -> impl Strategy<Value = BucketOp> {
    let post = (
        0usize..3,
        text(),
        any::<[u8; 10]>(),
        0u8..8,
        proptest::option::of(any::<Index>()),
        proptest::option::of(any::<Index>()),
    )
        .prop_map(
            |(r, text, random, mentions, reply_to, thread_root)| BucketOp::Post {
                r,
                text,
                random,
                mentions,
                reply_to,
                thread_root,
            },
        );
    let edit = (0usize..3, any::<bool>(), any::<Index>(), text(), 0u8..8).prop_map(
        |(r, own, msg, text, mentions)| BucketOp::Edit {
            r,
            own,
            msg,
            text,
            mentions,
        },
    );
    let delete = (0usize..3, any::<Index>()).prop_map(|(r, msg)| BucketOp::Delete { r, msg });
    let react = (0usize..3, any::<Index>(), 0..EMOJI.len(), any::<bool>())
        .prop_map(|(r, msg, emoji, on)| BucketOp::React { r, msg, emoji, on });
    prop_oneof![
        4 => post,
        2 => edit,
        1 => delete,
        3 => react,
        4 => delivery().prop_map(BucketOp::Deliver),
    ]
}

/// What a message must look like once everybody has everything, derived from the operations
/// that succeeded locally. Each person writes from one device, so their writes are sequential
/// and the last successful one is the truth.
#[derive(Debug, Clone)]
struct Expected {
    author: usize,
    ts_ms: i64,
    text: String,
    mentions: Vec<PersonId>,
    edited_ms: Option<i64>,
    reply_to: Option<MessageId>,
    thread_root: Option<MessageId>,
    deleted: bool,
    /// (emoji, person index) → on.
    reactions: BTreeMap<(usize, usize), bool>,
}

/// Three replicas of one bucket, one per person, and what they should converge to.
struct BucketSim {
    docs: Vec<Automerge>,
    clock: i64,
    expected: BTreeMap<MessageId, Expected>,
    /// Messages each person posted.
    own: [Vec<MessageId>; 3],
}

fn people_of(bits: u8) -> Vec<PersonId> {
    (0..3)
        .filter(|i| bits & (1 << i) != 0)
        .map(|i| FX.people[i].person_id())
        .collect()
}

fn pick<T: Copy>(v: &[T], i: &Index) -> Option<T> {
    (!v.is_empty()).then(|| v[i.index(v.len())])
}

impl BucketSim {
    fn new() -> Self {
        // Each replica creates the bucket on its own: the deterministic first change makes them
        // one document.
        let docs = FX
            .people
            .iter()
            .map(|p| {
                let mut d = bucket::init(CH, BucketKey::day_of(T0)).unwrap();
                d.set_actor(device_actor(&p.device_id()));
                d
            })
            .collect();
        BucketSim {
            docs,
            clock: T0 + 1_000,
            expected: BTreeMap::new(),
            own: Default::default(),
        }
    }

    fn tick(&mut self) -> i64 {
        self.clock += 7;
        self.clock
    }

    fn run(&mut self, op: &BucketOp) -> Result<(), TestCaseError> {
        let fx = &*FX;
        let at = self.tick();
        match op {
            BucketOp::Post {
                r,
                text,
                random,
                mentions,
                reply_to,
                thread_root,
            } => {
                let known = bucket::message_ids(&self.docs[*r]);
                let reply_to = reply_to.as_ref().and_then(|i| pick(&known, i));
                let thread_root = thread_root.as_ref().and_then(|i| pick(&known, i));
                let id = MessageId::new(at, *random);
                let p = NewPost {
                    channel: CH,
                    id,
                    ts_ms: at,
                    text: text.clone(),
                    mentions: people_of(*mentions),
                    reply_to,
                    thread_root,
                };
                if bucket::post(&mut self.docs[*r], &fx.people[*r], p).is_ok() {
                    prop_assert!(!self.expected.contains_key(&id), "id {} reused", id);
                    self.own[*r].push(id);
                    self.expected.insert(
                        id,
                        Expected {
                            author: *r,
                            ts_ms: at,
                            text: text.clone(),
                            mentions: people_of(*mentions),
                            edited_ms: None,
                            reply_to,
                            thread_root,
                            deleted: false,
                            reactions: BTreeMap::new(),
                        },
                    );
                }
            }
            BucketOp::Edit {
                r,
                own,
                msg,
                text,
                mentions,
            } => {
                let candidates = if *own {
                    self.own[*r].clone()
                } else {
                    bucket::message_ids(&self.docs[*r])
                };
                let Some(id) = pick(&candidates, msg) else {
                    return Ok(());
                };
                let m = people_of(*mentions);
                let res = bucket::edit(
                    &mut self.docs[*r],
                    &fx.people[*r],
                    id,
                    text.clone(),
                    m.clone(),
                    at,
                );
                if res.is_ok() {
                    let e = self.expected.get_mut(&id).expect("known message");
                    prop_assert_eq!(e.author, *r, "a non-author edit succeeded");
                    e.text = text.clone();
                    e.mentions = m;
                    e.edited_ms = Some(at);
                }
            }
            BucketOp::Delete { r, msg } => {
                let Some(id) = pick(&bucket::message_ids(&self.docs[*r]), msg) else {
                    return Ok(());
                };
                if bucket::delete(&mut self.docs[*r], &fx.people[*r], &fx.view, id, at).is_ok() {
                    let e = self.expected.get_mut(&id).expect("known message");
                    prop_assert!(
                        e.author == *r || *r != MEMBER,
                        "a member deleted someone else's message"
                    );
                    e.deleted = true;
                }
            }
            BucketOp::React { r, msg, emoji, on } => {
                let Some(id) = pick(&bucket::message_ids(&self.docs[*r]), msg) else {
                    return Ok(());
                };
                let res = bucket::react(
                    &mut self.docs[*r],
                    &fx.people[*r],
                    id,
                    EMOJI[*emoji],
                    *on,
                    at,
                );
                if res.is_ok() {
                    let e = self.expected.get_mut(&id).expect("known message");
                    e.reactions.insert((*emoji, *r), *on);
                }
            }
            BucketOp::Deliver(d) => deliver(&mut self.docs, d)?,
        }
        Ok(())
    }

    fn view(&self, i: usize) -> Vec<MessageView> {
        bucket::messages(&self.docs[i], CH, &FX.view)
    }

    /// After everything was delivered everywhere: one document, one view, the expected one.
    fn check_converged(&self) -> Result<(), TestCaseError> {
        same_heads(&self.docs)?;
        let view = self.view(0);
        for i in 1..self.docs.len() {
            prop_assert_eq!(&self.view(i), &view, "view of replica {} differs", i);
        }
        let ids: BTreeSet<MessageId> = view.iter().map(|m| m.id).collect();
        let want: BTreeSet<MessageId> = self.expected.keys().copied().collect();
        prop_assert_eq!(&ids, &want, "messages lost or invented");
        for m in &view {
            let e = &self.expected[&m.id];
            prop_assert!(m.verified, "honest message {} not verified", m.id);
            prop_assert_eq!(m.channel, CH);
            prop_assert_eq!(m.author, FX.people[e.author].person_id());
            prop_assert_eq!(m.device, FX.people[e.author].device_id());
            prop_assert_eq!(m.ts_ms, e.ts_ms);
            prop_assert_eq!(m.reply_to, e.reply_to);
            prop_assert_eq!(m.thread_root, e.thread_root);
            prop_assert_eq!(m.deleted, e.deleted, "message {}", m.id);
            if m.deleted {
                prop_assert!(m.text.is_empty(), "deleted message {} has text", m.id);
                prop_assert!(m.mentions.is_empty() && m.reactions.is_empty());
            } else {
                prop_assert_eq!(&m.text, &e.text, "message {}", m.id);
                prop_assert_eq!(&m.mentions, &e.mentions);
                prop_assert_eq!(m.edited_ms, e.edited_ms);
                let mut reactions: BTreeMap<String, BTreeSet<PersonId>> = BTreeMap::new();
                for (&(emoji, who), &on) in &e.reactions {
                    if on {
                        reactions
                            .entry(EMOJI[emoji].to_owned())
                            .or_default()
                            .insert(FX.people[who].person_id());
                    }
                }
                prop_assert_eq!(&m.reactions, &reactions, "reactions of {}", m.id);
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Persistence: a replica's storage journal (a base `save()` then `save_after` chunks).

struct Journal {
    /// The replica as it was when the base was saved.
    old: Automerge,
    base: Vec<u8>,
    chunks: Vec<Vec<u8>>,
    saved_heads: Vec<automerge::ChangeHash>,
}

impl Journal {
    fn start(doc: &Automerge) -> Self {
        Journal {
            old: doc.clone(),
            base: doc.save(),
            chunks: Vec::new(),
            saved_heads: doc.get_heads(),
        }
    }

    fn flush(&mut self, doc: &Automerge) {
        let chunk = doc.save_after(&self.saved_heads);
        if !chunk.is_empty() {
            self.chunks.push(chunk);
        }
        self.saved_heads = doc.get_heads();
    }
}

fn load(bytes: &[u8]) -> Result<Automerge, TestCaseError> {
    Automerge::load(bytes).map_err(|e| TestCaseError::fail(format!("load failed: {e}")))
}

fn load_incremental(doc: &mut Automerge, bytes: &[u8]) -> Result<(), TestCaseError> {
    doc.load_incremental(bytes)
        .map(|_| ())
        .map_err(|e| TestCaseError::fail(format!("load_incremental failed: {e}")))
}

/// `restored` is the same document as `doc`, with the same messages.
fn same_doc(restored: &Automerge, doc: &Automerge, what: &str) -> Result<(), TestCaseError> {
    prop_assert_eq!(
        restored.get_heads(),
        doc.get_heads(),
        "{}: heads differ",
        what
    );
    prop_assert!(
        restored.get_missing_deps(&[]).is_empty(),
        "{}: missing deps",
        what
    );
    prop_assert_eq!(
        bucket::messages(restored, CH, &FX.view),
        bucket::messages(doc, CH, &FX.view),
        "{}: messages differ",
        what
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Workspace operations

#[derive(Debug, Clone)]
enum WsOp {
    SetRole {
        r: usize,
        target: usize,
        role: Role,
        at: i64,
    },
    SetProfile {
        r: usize,
        name: String,
        at: i64,
    },
    PutChannel {
        r: usize,
        channel: u8,
        name: String,
        topic: String,
        private: bool,
        at: i64,
    },
    Deliver(Delivery),
}

fn ws_op() -> impl Strategy<Value = WsOp> {
    // Times come from a small range so concurrent records often tie, and later writes
    // sometimes carry earlier times.
    let at = 0i64..12;
    let role = prop_oneof![
        Just(Role::Removed),
        Just(Role::Member),
        Just(Role::Admin),
        Just(Role::Owner)
    ];
    let set_role =
        (0usize..3, 0usize..3, role, at.clone()).prop_map(|(r, target, role, at)| WsOp::SetRole {
            r,
            target,
            role,
            at,
        });
    let set_profile = (0usize..3, "[A-Za-z][a-z ]{0,6}|", at.clone())
        .prop_map(|(r, name, at)| WsOp::SetProfile { r, name, at });
    let put_channel = (
        0usize..3,
        0u8..3,
        "[a-z][a-z0-9-]{0,6}|#x|a b",
        "[a-z ]{0,8}",
        any::<bool>(),
        at,
    )
        .prop_map(|(r, channel, name, topic, private, at)| WsOp::PutChannel {
            r,
            channel,
            name,
            topic,
            private,
            at,
        });
    prop_oneof![
        3 => set_role,
        2 => set_profile,
        2 => put_channel,
        4 => delivery().prop_map(WsOp::Deliver),
    ]
}

fn run_ws_op(docs: &mut [Automerge], op: &WsOp) -> Result<(), TestCaseError> {
    let fx = &*FX;
    let n = docs.len();
    let base = T0 + 10_000;
    // Refused operations (no right, invalid name) are expected and ignored.
    match op {
        WsOp::SetRole {
            r,
            target,
            role,
            at,
        } => {
            let r = r % n;
            let target = fx.people[*target].person_id();
            let _ =
                workspace::set_role(&mut docs[r], &fx.people[r], fx.ws, target, *role, base + at);
        }
        WsOp::SetProfile { r, name, at } => {
            let r = r % n;
            let _ = workspace::set_profile(&mut docs[r], &fx.people[r], fx.ws, name, base + at);
        }
        WsOp::PutChannel {
            r,
            channel,
            name,
            topic,
            private,
            at,
        } => {
            let r = r % n;
            let info = ChannelInfo {
                workspace: fx.ws,
                channel: DocId([*channel; 16]),
                name: name.clone(),
                topic: topic.clone(),
                private: *private,
                at_ms: base + at,
            };
            let _ = workspace::put_channel(&mut docs[r], &fx.people[r], info);
        }
        WsOp::Deliver(d) => deliver(docs, d)?,
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The properties

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// Three replicas of one bucket (each created independently), random posts, edits,
    /// deletions and reactions interleaved with partial, shuffled and duplicated deliveries:
    /// once everybody has everything, one set of heads, one verified view, and that view is
    /// exactly what the successful operations say (nothing lost, deleted text gone).
    #[test]
    fn bucket_replicas_converge(
        ops in proptest::collection::vec(bucket_op(), 1..40),
        final_seed in any::<u64>(),
    ) {
        let mut sim = BucketSim::new();
        for op in &ops {
            sim.run(op)?;
        }
        deliver_everything(&mut sim.docs, final_seed)?;
        sim.check_converged()?;
    }

    /// Storage round trips: `save` then `load`; a base `save` plus `save_after` chunks through
    /// `load_incremental`, in order and shuffled; the concatenation through one `load`; and
    /// one `save_after(old heads)` catching up an older copy. All reach the same document, and
    /// a loaded document keeps writing as the same actor without clashing.
    #[test]
    fn bucket_storage_round_trips(
        ops in proptest::collection::vec(bucket_op(), 1..30),
        base_at in any::<Index>(),
        seed in any::<u64>(),
    ) {
        let mut sim = BucketSim::new();
        let base_at = base_at.index(ops.len());
        let mut journals: Vec<Journal> = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            if i == base_at {
                journals = sim.docs.iter().map(Journal::start).collect();
            }
            sim.run(op)?;
            for (j, doc) in journals.iter_mut().zip(&sim.docs) {
                j.flush(doc);
            }
        }
        deliver_everything(&mut sim.docs, seed)?;
        for (j, doc) in journals.iter_mut().zip(&sim.docs) {
            j.flush(doc);
        }
        sim.check_converged()?;

        let mut rng = Rng(seed ^ 0x5eed);
        for (i, (j, doc)) in journals.iter().zip(&sim.docs).enumerate() {
            same_doc(&load(&doc.save())?, doc, &format!("replica {i} save/load"))?;

            let mut restored = load(&j.base)?;
            for c in &j.chunks {
                load_incremental(&mut restored, c)?;
            }
            same_doc(&restored, doc, &format!("replica {i} base + chunks"))?;

            let mut shuffled = j.chunks.clone();
            rng.shuffle(&mut shuffled);
            let mut restored = load(&j.base)?;
            for c in &shuffled {
                load_incremental(&mut restored, c)?;
            }
            same_doc(&restored, doc, &format!("replica {i} base + shuffled chunks"))?;

            let concatenated: Vec<u8> =
                std::iter::once(&j.base).chain(&j.chunks).flatten().copied().collect();
            same_doc(&load(&concatenated)?, doc, &format!("replica {i} one load of the journal"))?;

            let mut old = j.old.clone();
            load_incremental(&mut old, &doc.save_after(&j.old.get_heads()))?;
            same_doc(&old, doc, &format!("replica {i} old copy caught up"))?;
        }

        // A replica restarted from storage goes on writing as the same actor; the others
        // accept its new change.
        let me = &FX.people[MEMBER];
        let mut restarted = load(&sim.docs[MEMBER].save())?;
        restarted.set_actor(device_actor(&me.device_id()));
        let id = MessageId::new(sim.tick(), [0xee; 10]);
        let post = NewPost {
            channel: CH,
            id,
            ts_ms: sim.clock,
            text: "after restart".into(),
            mentions: vec![],
            reply_to: None,
            thread_root: None,
        };
        prop_assert!(bucket::post(&mut restarted, me, post).is_ok());
        let change = restarted.get_last_local_change().expect("a local change");
        for doc in &mut sim.docs {
            doc.apply_changes([change.clone()])
                .map_err(|e| TestCaseError::fail(format!("apply_changes failed: {e}")))?;
            same_doc(doc, &restarted, "after the restarted replica wrote")?;
        }
    }

    /// Two or three replicas of the workspace document change roles, profiles and channels
    /// concurrently (times often tie); after full delivery they share heads and the same
    /// verified view, and the owner is still the owner.
    #[test]
    fn workspace_replicas_converge(
        replicas in 2usize..=3,
        ops in proptest::collection::vec(ws_op(), 1..40),
        final_seed in any::<u64>(),
    ) {
        let fx = &*FX;
        let base = load(&fx.ws_doc)?;
        let mut docs: Vec<Automerge> = fx.people[..replicas]
            .iter()
            .map(|p| base.fork().with_actor(device_actor(&p.device_id())))
            .collect();
        for op in &ops {
            run_ws_op(&mut docs, op)?;
        }
        deliver_everything(&mut docs, final_seed)?;
        same_heads(&docs)?;
        let view = workspace::view(&docs[0], fx.ws);
        for (i, d) in docs.iter().enumerate().skip(1) {
            prop_assert_eq!(&workspace::view(d, fx.ws), &view, "view of replica {} differs", i);
        }
        prop_assert_eq!(view.owner, Some(fx.people[OWNER].person_id()));
        prop_assert_eq!(view.role(&fx.people[OWNER].person_id()), Some(Role::Owner));
        for p in &fx.people {
            prop_assert_eq!(view.device_person(&p.device_id()), Some(p.person_id()));
        }
        for listing in view.channels.values() {
            prop_assert!(fx.people.iter().any(|p| p.person_id() == listing.by));
            prop_assert!(crate::validate_name(&listing.info.name, true).is_ok());
        }
    }
}
