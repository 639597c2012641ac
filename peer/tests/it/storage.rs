//! On-disk behaviour: bucket splitting, compaction, schema versions, damaged data.

use crdt_model::bucket::{self, SOFT_LIMIT};
use crdt_model::channel::BucketKey;
use peer::{Store, StoreError};

use crate::common::*;

#[test]
fn buckets_split_when_full() {
    let (home, mut s, ch) = setup();
    let day = "2025-03-14.0".parse::<BucketKey>().unwrap();
    let n = 2_500usize;
    // Distinct times across the day, handed over in a scrambled order.
    let mut order: Vec<usize> = (0..n).collect();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for i in (1..n).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    let items: Vec<(i64, String)> = order
        .iter()
        .map(|&i| {
            (
                day.day_start_ms() + i as i64 * 30_000,
                format!("batch message {i}"),
            )
        })
        .collect();
    let posted = s.post_batch(ch, &items).unwrap();
    assert_eq!(posted.len(), n);

    let part1 = BucketKey { part: 1, ..day };
    assert_eq!(
        s.buckets(ch).unwrap(),
        [
            ("2025-03-14.0".to_string(), bucket::bucket_id(ch, day)),
            ("2025-03-14.1".to_string(), bucket::bucket_id(ch, part1)),
        ]
    );
    let per_bucket = |s: &Store| -> Vec<i64> {
        s.buckets(ch)
            .unwrap()
            .iter()
            .map(|(_, id)| {
                raw(&home.path)
                    .query_row(
                        "SELECT count(*) FROM messages WHERE bucket = ?1",
                        [id.to_string()],
                        |r| r.get(0),
                    )
                    .unwrap()
            })
            .collect()
    };
    assert_eq!(per_bucket(&s), [SOFT_LIMIT as i64, (n - SOFT_LIMIT) as i64]);

    let all = timeline(&s, ch);
    assert_eq!(all.len(), n, "every message is readable");
    let mut by_time: Vec<(i64, String)> = items
        .iter()
        .zip(&posted)
        .map(|((ts, _), id)| (*ts, id.to_string()))
        .collect();
    by_time.sort();
    let want: Vec<String> = by_time.iter().map(|(_, id)| id.clone()).collect();
    assert_eq!(ids(&all), want);
    let newest = s.read(ch, 50, None, None).unwrap();
    assert_eq!(
        ids(&newest),
        want[n - 50..],
        "the newest 50 by time, across both buckets"
    );
    assert_eq!(
        newest.last().unwrap().text,
        format!("batch message {}", n - 1)
    );
    let page = s.read(ch, 50, Some(&newest[0].id), None).unwrap();
    assert_eq!(ids(&page), want[n - 100..n - 50]);

    // More on the same day fills the second part; no third bucket yet.
    let more: Vec<(i64, String)> = (0..10)
        .map(|i| (day.day_start_ms() + 1 + i * 30_000, format!("late {i}")))
        .collect();
    s.post_batch(ch, &more).unwrap();
    assert_eq!(
        per_bucket(&s),
        [SOFT_LIMIT as i64, (n - SOFT_LIMIT + 10) as i64]
    );
    assert_eq!(timeline(&s, ch).len(), n + 10);
    for (_, id) in s.buckets(ch).unwrap() {
        assert!(s.doc_size(id).unwrap().is_some_and(|b| b > 0));
    }
}

#[test]
fn a_node_without_idle_time_still_compacts() {
    let (home, mut s, ch) = setup();
    // No `maintain` at all: the write path compacts past 16x the idle threshold (1,024 chunks).
    for i in 0..1_100 {
        s.post(ch, &format!("busy {i}"), None, None).unwrap();
    }
    let (_, bucket) = s.buckets(ch).unwrap().pop().unwrap();
    let n: i64 = raw(&home.path)
        .query_row(
            "SELECT count(*) FROM doc_chunks WHERE doc = ?1",
            [bucket.to_string()],
            |r| r.get(0),
        )
        .unwrap();
    assert!(n <= 1_024, "{n} chunks");
    assert_eq!(timeline(&s, ch).len(), 1_100);
}

#[test]
fn compaction_and_reopen() {
    let (home, mut s, ch) = setup();
    let chunks = |s: &Store| -> i64 {
        let (_, bucket) = s.buckets(ch).unwrap().pop().unwrap();
        raw(&home.path)
            .query_row(
                "SELECT count(*) FROM doc_chunks WHERE doc = ?1",
                [bucket.to_string()],
                |r| r.get(0),
            )
            .unwrap()
    };
    let mut posted = Vec::new();
    for i in 0..140 {
        posted.push(s.post(ch, &format!("single {i}"), None, None).unwrap());
        // Upkeep runs after each action, as `flyt` does after printing its answer.
        s.maintain().unwrap();
        assert!(
            chunks(&s) <= 64,
            "the bucket is compacted before it holds more than 64 chunks"
        );
    }
    s.edit(&posted[0].id, "single 0, edited").unwrap();
    s.react(&posted[1].id, "👍", true).unwrap();
    let before = timeline(&s, ch);
    assert_eq!(before.len(), 140);
    drop(s);

    let mut s = home.open();
    assert_eq!(timeline(&s, ch), before);
    let buckets = s.buckets(ch).unwrap();
    for (_, id) in &buckets {
        assert!(s.doc_size(*id).unwrap().is_some_and(|b| b > 0));
    }
    assert_eq!(s.doc_size(crdt_model::DocId([3; 16])).unwrap(), None);
    // The reloaded document keeps taking writes through further compactions.
    for i in 140..210 {
        s.post(ch, &format!("single {i}"), None, None).unwrap();
        s.maintain().unwrap();
        assert!(chunks(&s) <= 64);
    }
    s.edit(&posted[0].id, "single 0, edited twice").unwrap();
    drop(s);

    let mut s = home.open();
    let all = timeline(&s, ch);
    assert_eq!(all.len(), 210);
    for i in 1..210 {
        assert!(
            all.iter().any(|m| m.text == format!("single {i}")),
            "single {i}"
        );
    }
    let first = all.iter().find(|m| m.id == posted[0].id).unwrap();
    assert_eq!(first.text, "single 0, edited twice");
    assert_eq!(
        all.iter()
            .find(|m| m.id == posted[1].id)
            .unwrap()
            .reactions
            .len(),
        1
    );
    let dump = dump_projection(&home.path);
    s.rebuild_projection().unwrap();
    assert_same(
        &dump,
        &dump_projection(&home.path),
        "rebuild from compacted documents",
    );
}

#[test]
fn newer_schema_is_refused() {
    let home = Home::new();
    {
        let mut s = home.open();
        s.init(NAME).unwrap();
    }
    home.raw().pragma_update(None, "user_version", 99).unwrap();
    match Store::open(&home.path) {
        Err(e @ StoreError::NewerSchema { found: 99, known }) => {
            assert_eq!(known, peer::schema::SCHEMA_VERSION);
            assert!(e.to_string().contains("upgrade"), "{e}");
        }
        other => panic!("expected NewerSchema, got {other:?}"),
    }
    // The file is left as it was.
    let conn = home.raw();
    let v: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, 99);
    assert_eq!(
        count(
            &home.path,
            "SELECT count(*) FROM meta WHERE key = 'identity'"
        ),
        1
    );
}

/// A home with #general and #random, a few messages in each, and #general's bucket damaged by
/// `damage` (given the raw connection and the bucket id).
fn damaged(
    damage: &str,
) -> (
    Home,
    crdt_model::DocId,
    crdt_model::DocId,
    Vec<peer::MessageRow>,
) {
    let (home, mut s, ch) = setup();
    let random = s.create_channel("random", "", false).unwrap();
    let mut posted = Vec::new();
    for i in 0..5 {
        posted.push(s.post(ch, &format!("general {i}"), None, None).unwrap());
        s.post(random, &format!("random {i}"), None, None).unwrap();
    }
    let (_, bucket) = s.buckets(ch).unwrap().pop().unwrap();
    drop(s);
    let n = home.raw().execute(damage, [bucket.to_string()]).unwrap();
    assert!(n > 0, "damaged something");
    (home, ch, random, posted)
}

fn corrupt_writes_fail_cleanly(damage: &str) {
    let (home, ch, random, posted) = damaged(damage);
    let mut s = home.open();
    let before = dump_everything(&home.path);
    let shown = timeline(&s, ch);
    assert_eq!(shown.len(), 5, "what was projected stays readable");

    let e = s.post(ch, "new", None, None);
    assert!(matches!(e, Err(StoreError::Corrupt(_))), "post: {e:?}");
    let e = s.edit(&posted[0].id, "edited");
    assert!(matches!(e, Err(StoreError::Corrupt(_))), "edit: {e:?}");
    let e = s.react(&posted[1].id, "👍", true);
    assert!(matches!(e, Err(StoreError::Corrupt(_))), "react: {e:?}");
    let e = s.delete(&posted[2].id);
    assert!(matches!(e, Err(StoreError::Corrupt(_))), "delete: {e:?}");
    let e = s.rebuild_projection();
    assert!(matches!(e, Err(StoreError::Corrupt(_))), "rebuild: {e:?}");
    let (_, bucket) = s.buckets(ch).unwrap().pop().unwrap();
    assert!(matches!(s.doc_size(bucket), Err(StoreError::Corrupt(_))));
    assert_same(
        &before,
        &dump_everything(&home.path),
        "failed writes on a damaged bucket",
    );
    assert_eq!(timeline(&s, ch), shown);

    // The rest of the home works.
    let r = s.post(random, "random still works", None, None).unwrap();
    assert_eq!(timeline(&s, random).len(), 6);
    assert_eq!(timeline(&s, random).last().unwrap(), &r);
    assert_eq!(s.search("works", None, 10).unwrap().len(), 1);
    let c = s.create_channel("fresh", "", false).unwrap();
    s.post(c, "fresh channel", None, None).unwrap();
    assert_eq!(timeline(&s, c).len(), 1);
}

#[test]
fn corrupt_chunk_is_a_clear_error() {
    // Every chunk of the bucket replaced by garbage.
    corrupt_writes_fail_cleanly(
        "UPDATE doc_chunks SET data = x'deadbeef00112233445566778899' WHERE doc = ?1",
    );
}

#[test]
fn corrupt_latest_chunk_is_a_clear_error() {
    // Only the newest incremental chunk damaged: the rest of the document loads, but writing on
    // top of a document that silently lost a change would fork history.
    corrupt_writes_fail_cleanly(
        "UPDATE doc_chunks SET data = CAST(x'00' || substr(data, 2) AS BLOB)
         WHERE seq = (SELECT max(seq) FROM doc_chunks WHERE doc = ?1)",
    );
}

#[test]
fn corrupt_checksum_is_a_clear_error() {
    // One flipped byte at the end of the newest chunk (its checksum no longer matches).
    corrupt_writes_fail_cleanly(
        "UPDATE doc_chunks SET data = CAST(substr(data, 1, length(data) - 1)
             || CASE WHEN substr(data, -1) = x'00' THEN x'01' ELSE x'00' END AS BLOB)
         WHERE seq = (SELECT max(seq) FROM doc_chunks WHERE doc = ?1)",
    );
}

#[test]
fn missing_chunk_is_a_clear_error() {
    // A chunk in the middle gone: the later chunks' changes cannot apply without it.
    corrupt_writes_fail_cleanly(
        "DELETE FROM doc_chunks
         WHERE seq = (SELECT seq FROM doc_chunks WHERE doc = ?1 ORDER BY seq LIMIT 1 OFFSET 2)",
    );
}

/// A post into a bucket the channel already lists changes the bucket only: the channel
/// document is neither rewritten nor reported as changed (a channel change makes a node
/// re-check every peer against every document before it sends).
#[test]
fn a_post_into_a_listed_bucket_changes_only_the_bucket() {
    let (home, mut s, ch) = setup();
    s.post(ch, "first", None, None).expect("post");
    let first = s.take_local_changes();
    assert!(
        first.contains(&ch),
        "the first post lists its bucket: {first:?}"
    );
    let chunks = |ch: crdt_model::DocId| {
        home.raw()
            .query_row(
                "SELECT count(*) FROM doc_chunks WHERE doc = ?1",
                [ch.to_string()],
                |r| r.get::<_, i64>(0),
            )
            .expect("count")
    };
    let before = chunks(ch);
    s.post(ch, "second", None, None).expect("post");
    let second = s.take_local_changes();
    assert_eq!(second.len(), 1, "only the bucket changed: {second:?}");
    assert!(!second.contains(&ch));
    assert_eq!(
        chunks(ch),
        before,
        "nothing was appended to the channel document"
    );
    assert_eq!(s.read(ch, 10, None, None).expect("read").len(), 2);
}

/// Cached statements keep their plan across bindings: SQLite would otherwise recompile a
/// range query (and joins that carry a parameter) on every new value, on every message.
#[test]
fn cached_statements_are_not_recompiled_for_new_values() {
    let dir = tempfile::tempdir().expect("temp dir");
    let conn = peer::schema::open(&dir.path().join("flyt.db")).expect("open");
    let queries = [
        "SELECT seq, snapshot, data FROM doc_chunks WHERE doc = ?1 AND seq > ?2 ORDER BY seq",
        "SELECT d.person FROM devices d JOIN members m
           ON m.workspace = d.workspace AND m.person = d.person
         WHERE d.workspace = ?1 AND d.device = ?2 AND m.role != 'removed'",
    ];
    for sql in queries {
        for i in 0..5i64 {
            let mut stmt = conn.prepare_cached(sql).expect("prepare");
            let rows = stmt
                .query_map(rusqlite::params![format!("doc {i}"), i], |_| Ok(()))
                .expect("query")
                .count();
            assert_eq!(rows, 0);
            assert_eq!(
                stmt.get_status(rusqlite::StatementStatus::RePrepare),
                0,
                "recompiled: {sql}"
            );
        }
    }
}
