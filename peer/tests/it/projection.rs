//! The projection is a pure function of the documents: rebuilding it changes nothing visible.

use crdt_model::MessageId;
use crdt_model::channel::BucketKey;
use peer::{MessageRow, Store};

use crate::common::*;

const DAY: i64 = 86_400_000;

/// Everything a person can see: every channel's timeline, every thread, searches.
fn visible(s: &Store, channels: &[crdt_model::DocId]) -> Vec<Vec<MessageRow>> {
    let mut out = Vec::new();
    for ch in channels {
        let main = timeline(s, *ch);
        for m in main.iter().filter(|m| m.reply_count > 0) {
            out.push(s.read(*ch, 10_000, None, Some(&m.id)).unwrap());
        }
        out.push(main);
    }
    for q in ["day", "item 1", "edited", "reply", "zebra", "hello"] {
        out.push(s.search(q, None, 10_000).unwrap());
    }
    out
}

#[test]
fn projection_rebuild_is_identical() {
    let (home, mut s, ch) = setup();
    let ws = s.current_workspace().unwrap().unwrap();
    let random = s.create_channel("random", "off topic", true).unwrap();

    // Five days of history, imported with explicit times, interleaved across days.
    let t0 = "2025-03-10.0".parse::<BucketKey>().unwrap().day_start_ms() + 3_600_000;
    let mut items = Vec::new();
    for i in 0..40 {
        for d in 0..5 {
            let word = ["zebra", "hello", "world", "flyt"][(i + d) as usize % 4];
            items.push((
                t0 + d * DAY + i * 60_000,
                format!("day {d} item {i} {word}"),
            ));
        }
    }
    let ids: Vec<String> = s
        .post_batch(ch, &items)
        .unwrap()
        .iter()
        .map(|i| i.to_string())
        .collect();
    assert_eq!(ids.len(), 200);
    let keys: Vec<String> = s.buckets(ch).unwrap().into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        keys,
        [
            "2025-03-10.0",
            "2025-03-11.0",
            "2025-03-12.0",
            "2025-03-13.0",
            "2025-03-14.0"
        ]
    );
    let other: Vec<(i64, String)> = (0..20)
        .map(|i| (t0 + i * 7_200_000, format!("random {i} hello")))
        .collect();
    s.post_batch(random, &other).unwrap();

    // Edits, deletes, reactions, threads, quotes, mentions, today's posts.
    for (n, id) in ids.iter().enumerate() {
        if n % 7 == 0 {
            s.edit(id, &format!("edited {n}")).unwrap();
        }
        if n % 5 == 0 {
            s.react(id, "👍", true).unwrap();
        }
        if n % 3 == 0 {
            s.react(id, "🎉", true).unwrap();
        }
        if n % 6 == 0 {
            s.react(id, "🎉", false).unwrap();
        }
        if n % 11 == 0 {
            s.delete(id).unwrap();
        }
    }
    let root: MessageId = ids[1].parse().unwrap();
    let r1 = s.post(ch, "reply one", None, Some(root)).unwrap();
    let r2 = s
        .post(
            ch,
            &format!("reply two @{NAME}"),
            None,
            Some(r1.id.parse().unwrap()),
        )
        .unwrap();
    s.react(&r2.id, "👀", true).unwrap();
    s.edit(&r1.id, "reply one, edited").unwrap();
    s.post(
        ch,
        "reply in an old thread",
        None,
        Some(ids[150].parse().unwrap()),
    )
    .unwrap();
    let dead = s
        .post(ch, "reply that goes away", None, Some(root))
        .unwrap();
    s.delete(&dead.id).unwrap();
    s.post(ch, "quote", Some(ids[2].parse().unwrap()), None)
        .unwrap();
    s.post(random, &format!("hello @{NAME}"), None, None)
        .unwrap();
    s.mark_read(ch).unwrap();

    // A second workspace, then back to the first.
    let ws2 = s.create_workspace("beta").unwrap();
    let beta = s.create_channel("general", "", false).unwrap();
    s.post(beta, "hello from beta", None, None).unwrap();
    s.use_workspace(ws).unwrap();
    assert_ne!(ws, ws2);

    let channels = [ch, random, beta];
    let before = dump_projection(&home.path);
    let seen = visible(&s, &channels);
    assert_eq!(
        before
            .iter()
            .find(|(t, _)| t == "workspaces")
            .unwrap()
            .1
            .len(),
        2
    );
    assert!(seen.iter().any(|v| v.iter().any(|m| m.deleted)));
    assert!(
        seen.iter()
            .any(|v| v.iter().any(|m| m.edited && m.thread_root.is_some()))
    );
    assert!(!s.search("zebra", None, 10).unwrap().is_empty());

    s.rebuild_projection().unwrap();
    assert_same(
        &before,
        &dump_projection(&home.path),
        "rebuild on the writing handle",
    );
    assert_eq!(seen, visible(&s, &channels));
    assert_fts_consistent(&home.path);

    // A fresh handle loads every document from disk and rebuilds the same thing.
    let mut fresh = home.open();
    fresh.rebuild_projection().unwrap();
    assert_same(
        &before,
        &dump_projection(&home.path),
        "rebuild on a fresh handle",
    );
    assert_eq!(seen, visible(&fresh, &channels));
    assert_eq!(seen, visible(&s, &channels));
    assert_fts_consistent(&home.path);

    // And writing after a rebuild still works.
    let m = s.post(ch, "after the rebuild", None, None).unwrap();
    assert_eq!(timeline(&fresh, ch).last().unwrap(), &m);
}
