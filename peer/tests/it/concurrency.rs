//! Several handles on one database file (the CLI and the app at once): nothing is lost.

use std::collections::{BTreeMap, BTreeSet};

use peer::{MessageRow, Store};

use crate::common::*;

fn names(r: &MessageRow) -> BTreeMap<String, Vec<String>> {
    r.reactions.clone()
}

fn me() -> Vec<String> {
    vec![NAME.to_string()]
}

#[test]
fn two_handles_same_file_lose_nothing() {
    let (home, mut a, ch) = setup();
    let mut b = home.open();
    assert_eq!(
        a.identity().unwrap().person_id(),
        b.identity().unwrap().person_id()
    );
    assert_eq!(
        a.current_workspace().unwrap(),
        b.current_workspace().unwrap()
    );
    assert_eq!(b.find_channel("general").unwrap(), ch);

    let m1 = a.post(ch, "one", None, None).unwrap();
    let m2 = b.post(ch, "two", None, None).unwrap();
    // Both handles now hold the bucket in their caches; every write below must first catch up
    // with what the other handle wrote, or its projection update would drop the other's work.
    let r = a.react(&m2.id, "👍", true).unwrap();
    assert_eq!(names(&r), BTreeMap::from([("👍".into(), me())]));
    let r = b.react(&m1.id, "🎉", true).unwrap();
    assert_eq!(names(&r), BTreeMap::from([("🎉".into(), me())]));
    let r = a.edit(&m1.id, "one v1").unwrap();
    assert_eq!(
        (r.text.as_str(), r.reactions.len()),
        ("one v1", 1),
        "a kept b's reaction"
    );
    let r = b.edit(&m1.id, "one v2").unwrap();
    assert_eq!(r.text, "one v2");
    let r = a.react(&m1.id, "❤️", true).unwrap();
    assert_eq!(
        (r.text.as_str(), r.reactions.len()),
        ("one v2", 2),
        "a saw b's edit"
    );
    let r = b.react(&m1.id, "👍", true).unwrap();
    assert_eq!(r.reactions.len(), 3, "b saw a's reaction");
    let r = b.edit(&m2.id, "two v1").unwrap();
    assert_eq!(
        names(&r),
        BTreeMap::from([("👍".into(), me())]),
        "b kept a's reaction"
    );
    let r = a.react(&m2.id, "👍", false).unwrap();
    assert!(r.reactions.is_empty());
    assert_eq!(r.text, "two v1", "a saw b's edit");

    // Threads and deletes across handles.
    let m3 = a.post(ch, "three", None, None).unwrap();
    let t1 = b
        .post(
            ch,
            "thread reply from b",
            None,
            Some(m1.id.parse().unwrap()),
        )
        .unwrap();
    let t2 = a
        .post(
            ch,
            "thread reply from a",
            None,
            Some(t1.id.parse().unwrap()),
        )
        .unwrap();
    assert_eq!(t2.thread_root.as_deref(), Some(m1.id.as_str()));
    let d = b.delete(&m3.id).unwrap();
    assert!(d.deleted);
    let r = a.edit(&t1.id, "thread reply from b, edited by a").unwrap();
    assert!(r.edited);

    // Many alternating edits and reactions on the same message: the last edit wins.
    let emojis = ["👍", "🎉", "❤️", "👀", "🚀"];
    let mut expect_reactions: BTreeSet<&str> = ["🎉", "❤️", "👍"].into();
    let mut last = String::new();
    for i in 0..30 {
        let h: &mut Store = if i % 2 == 0 { &mut a } else { &mut b };
        last = format!("one v{}", i + 3);
        let r = h.edit(&m1.id, &last).unwrap();
        assert_eq!(r.text, last);
        let e = emojis[i % emojis.len()];
        let on = i % 3 != 0;
        let r = h.react(&m1.id, e, on).unwrap();
        if on {
            expect_reactions.insert(e);
        } else {
            expect_reactions.remove(e);
        }
        let got: BTreeSet<&str> = r.reactions.keys().map(String::as_str).collect();
        assert_eq!(got, expect_reactions, "step {i}");
        assert_eq!(r.text, last);
    }

    let ra = timeline(&a, ch);
    let rb = timeline(&b, ch);
    assert_eq!(ra, rb);
    assert_eq!(ra.len(), 3);
    let one = ra.iter().find(|m| m.id == m1.id).unwrap();
    assert_eq!(one.text, last);
    assert_eq!(one.reply_count, 2);
    let got: BTreeSet<&str> = one.reactions.keys().map(String::as_str).collect();
    assert_eq!(got, expect_reactions);
    assert!(one.reactions.values().all(|v| v == &me()));
    let two = ra.iter().find(|m| m.id == m2.id).unwrap();
    assert_eq!((two.text.as_str(), two.reactions.len()), ("two v1", 0));
    assert!(ra.iter().find(|m| m.id == m3.id).unwrap().deleted);
    let thread = a.read(ch, 100, None, Some(&m1.id)).unwrap();
    assert_eq!(thread, b.read(ch, 100, None, Some(&m1.id)).unwrap());
    assert_eq!(thread.len(), 3);

    // The documents agree with the projection both handles wrote.
    let before = dump_projection(&home.path);
    let mut c = home.open();
    c.rebuild_projection().unwrap();
    assert_same(
        &before,
        &dump_projection(&home.path),
        "rebuild after two writers",
    );
    assert_eq!(timeline(&c, ch), ra);
    assert_fts_consistent(&home.path);
}

#[test]
fn two_threads_posting_at_once_lose_nothing() {
    let (home, mut s, ch) = setup();
    const EACH: usize = 200;
    let posted: Vec<Vec<String>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..2)
            .map(|t| {
                let path = home.path.clone();
                scope.spawn(move || {
                    let mut mine = Store::open(&path).unwrap();
                    (0..EACH)
                        .map(|i| {
                            let m = mine
                                .post(ch, &format!("thread {t} message {i}"), None, None)
                                .unwrap();
                            m.id
                        })
                        .collect()
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let all = timeline(&s, ch);
    assert_eq!(all.len(), 2 * EACH);
    let shown: BTreeSet<String> = ids(&all).into_iter().collect();
    let written: BTreeSet<String> = posted.into_iter().flatten().collect();
    assert_eq!(shown, written);
    for t in 0..2 {
        for i in 0..EACH {
            let text = format!("thread {t} message {i}");
            assert!(all.iter().any(|m| m.text == text), "{text} is readable");
        }
    }
    assert_eq!(s.search("message", None, 10_000).unwrap().len(), 2 * EACH);

    let before = dump_projection(&home.path);
    s.rebuild_projection().unwrap();
    assert_same(
        &before,
        &dump_projection(&home.path),
        "rebuild after two threads",
    );
    assert_eq!(timeline(&s, ch), all);
    assert_fts_consistent(&home.path);
}
