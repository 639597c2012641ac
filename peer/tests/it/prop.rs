//! Random histories through two handles on one file: the projection always equals a rebuild
//! from the documents, both handles show the same thing, and it is what was done.

use std::collections::{BTreeMap, BTreeSet};

use crdt_model::ModelError;
use peer::{Store, StoreError};
use proptest::prelude::*;
use proptest::sample::Index;

use crate::common::*;

const WORDS: &[&str] = &[
    "apple",
    "banana",
    "cherry",
    "delta",
    "echo",
    "@alice",
    "@nobody",
    "ünïcode",
    "x",
];
const EMOJIS: &[&str] = &["👍", "🎉", "eyes"];

#[derive(Debug, Clone)]
enum Op {
    Post(String),
    Reply(Index, String),
    Edit(Index, String),
    Delete(Index),
    React(Index, usize, bool),
}

fn text() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(WORDS), 1..5).prop_map(|w| w.join(" "))
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => text().prop_map(Op::Post),
        2 => (any::<Index>(), text()).prop_map(|(i, t)| Op::Reply(i, t)),
        2 => (any::<Index>(), text()).prop_map(|(i, t)| Op::Edit(i, t)),
        1 => any::<Index>().prop_map(Op::Delete),
        2 => (any::<Index>(), 0..EMOJIS.len(), any::<bool>()).prop_map(|(i, e, on)| Op::React(i, e, on)),
    ]
}

/// What a message should look like.
#[derive(Debug, Clone, Default)]
struct Expect {
    text: String,
    edited: bool,
    deleted: bool,
    thread_root: Option<String>,
    reactions: BTreeSet<&'static str>,
    mentions_me: bool,
}

fn mentions_me(text: &str) -> bool {
    text.split(' ').any(|w| w == "@alice")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn random_histories_through_two_handles(steps in prop::collection::vec((any::<bool>(), op()), 1..40)) {
        let (home, a, ch) = setup();
        let b = home.open();
        let mut handles = [a, b];
        let mut model: BTreeMap<String, Expect> = BTreeMap::new();
        let mut order: Vec<String> = Vec::new();

        for (which, op) in steps {
            let s: &mut Store = &mut handles[which as usize];
            let target = |i: &Index| (!order.is_empty()).then(|| order[i.index(order.len())].clone());
            match op {
                Op::Post(t) => {
                    let r = s.post(ch, &t, None, None).unwrap();
                    prop_assert_eq!(&r.text, &t);
                    model.insert(r.id.clone(), Expect { text: t.clone(), mentions_me: mentions_me(&t), ..Default::default() });
                    order.push(r.id);
                }
                Op::Reply(i, t) => {
                    let Some(id) = target(&i) else { continue };
                    let root = model[&id].thread_root.clone().unwrap_or(id.clone());
                    let r = s.post(ch, &t, None, Some(id.parse().unwrap())).unwrap();
                    prop_assert_eq!(r.thread_root.as_ref(), Some(&root));
                    model.insert(r.id.clone(), Expect {
                        text: t.clone(),
                        mentions_me: mentions_me(&t),
                        thread_root: Some(root),
                        ..Default::default()
                    });
                    order.push(r.id);
                }
                Op::Edit(i, t) => {
                    let Some(id) = target(&i) else { continue };
                    let e = model.get_mut(&id).unwrap();
                    match s.edit(&id, &t) {
                        Ok(r) => {
                            prop_assert!(!e.deleted);
                            prop_assert_eq!(&r.text, &t);
                            prop_assert!(r.edited);
                            e.text = t.clone();
                            e.edited = true;
                            e.mentions_me = mentions_me(&t);
                        }
                        Err(StoreError::Model(ModelError::Deleted(_))) => prop_assert!(e.deleted),
                        Err(err) => prop_assert!(false, "edit: {err}"),
                    }
                }
                Op::Delete(i) => {
                    let Some(id) = target(&i) else { continue };
                    let e = model.get_mut(&id).unwrap();
                    match s.delete(&id) {
                        Ok(r) => {
                            prop_assert!(!e.deleted);
                            prop_assert!(r.deleted && r.text.is_empty());
                            e.deleted = true;
                            e.text.clear();
                            e.reactions.clear();
                            e.mentions_me = false;
                        }
                        Err(StoreError::Model(ModelError::Deleted(_))) => prop_assert!(e.deleted),
                        Err(err) => prop_assert!(false, "delete: {err}"),
                    }
                }
                Op::React(i, emoji, on) => {
                    let Some(id) = target(&i) else { continue };
                    let e = model.get_mut(&id).unwrap();
                    match s.react(&id, EMOJIS[emoji], on) {
                        Ok(r) => {
                            prop_assert!(!e.deleted);
                            if on {
                                e.reactions.insert(EMOJIS[emoji]);
                            } else {
                                e.reactions.remove(EMOJIS[emoji]);
                            }
                            let got: BTreeSet<&str> = r.reactions.keys().map(String::as_str).collect();
                            prop_assert_eq!(&got, &e.reactions);
                        }
                        Err(StoreError::Model(ModelError::Deleted(_))) => prop_assert!(e.deleted),
                        Err(err) => prop_assert!(false, "react: {err}"),
                    }
                }
            }
        }

        // Both handles show the same timeline and threads.
        let [a, b] = &mut handles;
        let main = timeline(a, ch);
        prop_assert_eq!(&main, &timeline(b, ch));
        let roots: BTreeSet<String> = model.iter().filter(|(_, e)| e.thread_root.is_none()).map(|(k, _)| k.clone()).collect();
        prop_assert_eq!(ids(&main).into_iter().collect::<BTreeSet<_>>(), roots);
        prop_assert!(main.windows(2).all(|w| (w[0].ts, &w[0].id) < (w[1].ts, &w[1].id)));

        // Every message is as the history left it.
        for (id, e) in &model {
            let m = a.message(id).unwrap();
            prop_assert_eq!(&m.text, &e.text, "text of {}", id);
            prop_assert_eq!(m.edited, e.edited && !e.deleted, "edited flag of {}", id);
            prop_assert_eq!(m.deleted, e.deleted);
            prop_assert_eq!(&m.thread_root, &e.thread_root);
            let got: BTreeSet<&str> = m.reactions.keys().map(String::as_str).collect();
            prop_assert_eq!(&got, &e.reactions);
            prop_assert!(m.reactions.values().all(|who| who == &[NAME.to_string()]));
            prop_assert_eq!(m.mentions.clone(), if e.mentions_me { vec![NAME.to_string()] } else { vec![] });
            prop_assert!(m.verified);
            let replies = model.values().filter(|r| r.thread_root.as_ref() == Some(id)).count() as i64;
            prop_assert_eq!(m.reply_count, replies);
            if replies > 0 {
                let t = a.read(ch, 10_000, None, Some(id)).unwrap();
                prop_assert_eq!(t.len() as i64, replies + 1);
                prop_assert_eq!(&t[0].id, id);
                prop_assert_eq!(&t, &b.read(ch, 10_000, None, Some(id)).unwrap());
            }
        }

        // The projection is exactly what the documents say.
        let before = dump_projection(&home.path);
        let search = a.search("apple", None, 10_000).unwrap();
        let live_apples = model.values().filter(|e| !e.deleted && e.text.split(' ').any(|w| w == "apple")).count();
        prop_assert_eq!(search.len(), live_apples);
        a.rebuild_projection().unwrap();
        assert_same(&before, &dump_projection(&home.path), "rebuild after a random history");
        prop_assert_eq!(&search, &b.search("apple", None, 10_000).unwrap());
        prop_assert_eq!(&main, &timeline(b, ch));
        assert_fts_consistent(&home.path);
    }
}
