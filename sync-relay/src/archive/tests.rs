//! Archive tests: the same checks against the embedded SQLite archive and a real Postgres, the
//! schema guard, and a Postgres that dies mid-stream and comes back.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use automerge::Automerge;
use crdt_model::bucket::{self, NewPost};
use crdt_model::channel::BucketKey;
use crdt_model::signed::ChannelInfo;
use crdt_model::workspace::{self, WorkspaceView};
use crdt_model::{DeviceId, DocId, Identity, MessageId, Role, device_actor};

use super::test_pg::{PgCluster, TestDb};
use super::*;

const DAY_MS: i64 = 1_795_000_000_000;

/// A workspace (alice owns it, bob is a member), one channel, one bucket, and the records that
/// archive them as the relay would produce them, change by change.
pub(crate) struct Fixture {
    pub people: Vec<Identity>,
    pub ws: DocId,
    pub ws_doc: Automerge,
    pub channel: DocId,
    pub bucket: Automerge,
    pub bucket_meta: DocMeta,
    pub view: WorkspaceView,
    pub records: Vec<Record>,
    pub ids: Vec<MessageId>,
}

impl Fixture {
    pub fn new() -> Fixture {
        let people = vec![
            Identity::from_secrets([1; 32], [101; 32], "alice"),
            Identity::from_secrets([2; 32], [102; 32], "bob"),
        ];
        let alice = &people[0];
        let mut ws_doc = Automerge::new().with_actor(device_actor(&alice.device_id()));
        let ws = workspace::create(&mut ws_doc, alice, "acme", [3; 16], DAY_MS).unwrap();
        workspace::put_device(
            &mut ws_doc,
            &people[1].device_cert("laptop", DAY_MS),
            DAY_MS,
        )
        .unwrap();
        workspace::set_role(
            &mut ws_doc,
            alice,
            ws,
            people[1].person_id(),
            Role::Member,
            DAY_MS,
        )
        .unwrap();
        let channel = DocId([7; 16]);
        workspace::put_channel(
            &mut ws_doc,
            alice,
            ChannelInfo {
                workspace: ws,
                channel,
                name: "general".into(),
                topic: String::new(),
                private: false,
                at_ms: DAY_MS,
            },
        )
        .unwrap();
        let view = workspace::view(&ws_doc, ws);
        let ws_meta = DocMeta {
            id: ws,
            kind: DocKind::Workspace,
            workspace: ws,
            channel: None,
            bucket_key: None,
        };
        let mut records = vec![Record::chunk(ws_meta, &ws_doc, &[])];
        let key = BucketKey::day_of(DAY_MS);
        let bucket_id = bucket::bucket_id(channel, key);
        let mut bucket = bucket::init(channel, key).unwrap();
        bucket.set_actor(device_actor(&alice.device_id()));
        let bucket_meta = DocMeta {
            id: bucket_id,
            kind: DocKind::Bucket,
            workspace: ws,
            channel: Some(channel),
            bucket_key: Some(key.to_string()),
        };
        records.push(Record::chunk(bucket_meta.clone(), &bucket, &[]));
        Fixture {
            people,
            ws,
            ws_doc,
            channel,
            bucket,
            bucket_meta,
            view,
            records,
            ids: Vec::new(),
        }
    }

    /// Posts as `who` (an index into `people`, or any identity) and records the change.
    pub fn post_as(&mut self, who: &Identity, n: usize, text: &str) -> MessageId {
        let before = self.bucket.get_heads();
        let ts = DAY_MS + n as i64;
        let id = MessageId::new(ts, [(n % 251) as u8; 10]);
        self.bucket.set_actor(device_actor(&who.device_id()));
        bucket::post(
            &mut self.bucket,
            who,
            NewPost {
                channel: self.channel,
                id,
                ts_ms: ts,
                text: text.into(),
                mentions: vec![],
                reply_to: None,
                thread_root: None,
            },
        )
        .unwrap();
        self.changed(&before);
        self.ids.push(id);
        id
    }

    pub fn post(&mut self, who: usize, n: usize, text: &str) -> MessageId {
        let who = self.people[who].clone();
        self.post_as(&who, n, text)
    }

    /// Records what the bucket gained since `before`.
    pub fn changed(&mut self, before: &[automerge::ChangeHash]) {
        self.records.push(Record::chunk(
            self.bucket_meta.clone(),
            &self.bucket,
            before,
        ));
    }

    pub fn take_records(&mut self) -> Vec<Record> {
        std::mem::take(&mut self.records)
    }
}

/// What both backends must do: project verified messages, page, search, resolve roles, keep the
/// document and sync states.
async fn exercise(archive: &Archive) {
    let mut f = Fixture::new();
    let a = f.post(0, 1, "hello world");
    let b = f.post(1, 2, "hello from bob");
    let c = f.post(0, 3, "lunch at noon?");
    // Edit and delete, as the authors.
    let before = f.bucket.get_heads();
    f.bucket.set_actor(device_actor(&f.people[0].device_id()));
    bucket::edit(
        &mut f.bucket,
        &f.people[0],
        c,
        "lunch at one?".into(),
        vec![],
        DAY_MS + 10,
    )
    .unwrap();
    f.changed(&before);
    let before = f.bucket.get_heads();
    f.bucket.set_actor(device_actor(&f.people[1].device_id()));
    bucket::delete(&mut f.bucket, &f.people[1], &f.view, b, DAY_MS + 11).unwrap();
    f.changed(&before);
    // A device nobody certified signs a post claiming to be... itself: not authentic.
    let mallory = Identity::from_secrets([9; 32], [109; 32], "mallory");
    let m = f.post_as(&mallory, 4, "hello, I am the admin");
    let peer = DeviceId([5; 32]);
    let mut records = f.take_records();
    records.push(Record::SyncState {
        peer,
        doc: f.bucket_meta.id,
        state: vec![1, 2, 3],
    });
    records.push(Record::SyncState {
        peer,
        doc: f.bucket_meta.id,
        state: vec![4, 5, 6],
    });
    archive.submit(records);
    assert!(
        archive.caught_up(Duration::from_secs(30)).await,
        "{:?}",
        archive.status()
    );
    let st = archive.status();
    assert!(
        st.up && st.queue_depth == 0 && st.lag_seconds == 0.0,
        "{st:?}"
    );
    assert!(st.messages_archived >= 4, "{st:?}");
    assert!(st.prometheus().contains("flyt_archive_queue_depth"));

    // Newest first, paged.
    let page = |before, limit| PageQuery {
        workspace: f.ws,
        channel: f.channel,
        before,
        limit,
    };
    let first = archive.messages(&page(None, 2)).await.unwrap();
    let ids: Vec<&str> = first.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, [m.to_string(), c.to_string()]);
    assert!(
        !first[0].verified,
        "an uncertified device's post is never archived as authentic"
    );
    assert!(first[1].verified && first[1].edited && first[1].text == "lunch at one?");
    let rest = archive.messages(&page(Some(c), 10)).await.unwrap();
    let ids: Vec<&str> = rest.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, [b.to_string(), a.to_string()]);
    assert!(rest[0].deleted && rest[0].text.is_empty() && rest[0].verified);
    assert_eq!(rest[1].author, f.people[0].person_id().to_string());
    // Another channel or workspace: nothing.
    let other = PageQuery {
        channel: DocId([8; 16]),
        ..page(None, 10)
    };
    assert!(archive.messages(&other).await.unwrap().is_empty());

    // Full text: deleted messages are not found; edits are.
    let hits = archive.search(f.ws, "hello", 10).await.unwrap();
    let ids: BTreeSet<String> = hits.iter().map(|m| m.id.clone()).collect();
    assert_eq!(ids, BTreeSet::from([a.to_string(), m.to_string()]));
    assert_eq!(archive.search(f.ws, "one", 10).await.unwrap().len(), 1);
    assert!(archive.search(f.ws, "noon", 10).await.unwrap().is_empty());
    assert!(
        archive
            .search(DocId([9; 16]), "hello", 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(matches!(
        archive.search(f.ws, "  ", 10).await,
        Err(ArchiveError::EmptyQuery)
    ));
    // Query syntax is text, not an error.
    archive
        .search(f.ws, "\"' OR 1=1 -- & | !", 10)
        .await
        .unwrap();

    // Roles come from the verified workspace view.
    let role = |d| archive.device_role(f.ws, d);
    assert_eq!(
        role(f.people[0].device_id()).await.unwrap(),
        Some(Role::Owner)
    );
    assert_eq!(
        role(f.people[1].device_id()).await.unwrap(),
        Some(Role::Member)
    );
    assert_eq!(role(mallory.device_id()).await.unwrap(), None);

    // The documents themselves, and the newest sync state.
    let bytes = archive.document(f.bucket_meta.id).await.unwrap().unwrap();
    assert_eq!(
        Automerge::load(&bytes).unwrap().get_heads(),
        f.bucket.get_heads()
    );
    let bytes = archive.document(f.ws).await.unwrap().unwrap();
    assert_eq!(
        Automerge::load(&bytes).unwrap().get_heads(),
        f.ws_doc.get_heads()
    );
    assert!(archive.document(DocId([0; 16])).await.unwrap().is_none());
    assert_eq!(
        archive.sync_state(peer, f.bucket_meta.id).await.unwrap(),
        Some(vec![4, 5, 6])
    );
}

/// An embedded archive in a fresh directory (keep the directory alive).
pub(crate) async fn sqlite_archive() -> (Archive, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let archive = Archive::open(&ArchiveConfig {
        database_url: None,
        data_dir: dir.path().into(),
    })
    .await
    .unwrap();
    (archive, dir)
}

/// Opens and closes the archive twice (migrations are idempotent), then breaks its schema
/// version with `bump` and expects the refusal.
async fn refuses_a_newer_schema(config: &ArchiveConfig, bump: impl AsyncFnOnce()) -> ArchiveError {
    for _ in 0..2 {
        let a = Archive::open(config).await.unwrap();
        assert!(a.close(Duration::from_secs(1)).await);
    }
    bump().await;
    let err = Archive::open(config).await.unwrap_err();
    assert!(matches!(err, ArchiveError::NewerSchema { found } if found == SCHEMA_VERSION + 1));
    err
}

#[tokio::test]
async fn sqlite_archive_projects_pages_and_searches() {
    let (archive, _dir) = sqlite_archive().await;
    assert_eq!(archive.status().backend, "sqlite");
    archive.ready().await.unwrap();
    exercise(&archive).await;
    assert!(archive.close(Duration::from_secs(5)).await);
}

#[tokio::test]
async fn postgres_archive_projects_pages_and_searches() {
    let db = TestDb::create().await;
    let archive = Archive::open(&ArchiveConfig {
        database_url: Some(db.url()),
        data_dir: "/nonexistent".into(),
    })
    .await
    .unwrap();
    assert_eq!(archive.status().backend, "postgres");
    archive.ready().await.unwrap();
    exercise(&archive).await;
    assert!(archive.close(Duration::from_secs(5)).await);
}

#[tokio::test]
async fn a_newer_sqlite_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = ArchiveConfig {
        database_url: None,
        data_dir: dir.path().into(),
    };
    let err = refuses_a_newer_schema(&config, async || {
        rusqlite::Connection::open(dir.path().join("archive.sqlite"))
            .unwrap()
            .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
    })
    .await;
    assert!(err.to_string().contains("upgrade the relay"), "{err}");
}

#[tokio::test]
async fn a_newer_postgres_schema_is_refused() {
    let db = TestDb::create().await;
    let config = ArchiveConfig {
        database_url: Some(db.url()),
        data_dir: "/nonexistent".into(),
    };
    refuses_a_newer_schema(&config, async || {
        db.execute("UPDATE archive_schema SET version = version + 1")
            .await;
    })
    .await;
}

#[tokio::test]
async fn an_unreachable_database_is_a_clear_error_at_start() {
    let port = super::test_pg::free_port();
    let err = Archive::open(&ArchiveConfig {
        database_url: Some(format!("postgres://postgres@127.0.0.1:{port}/x")),
        data_dir: "/nonexistent".into(),
    })
    .await
    .unwrap_err();
    assert!(matches!(err, ArchiveError::Postgres(_)), "{err}");
}

/// Postgres dies in the middle of a stream of messages and comes back: submitting never
/// blocks meanwhile, the archive reports itself down, and once Postgres is back every message
/// is archived and the document is whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_going_away_loses_nothing() {
    let mut pg = PgCluster::start();
    let archive = Archive::open(&ArchiveConfig {
        database_url: Some(pg.url()),
        data_dir: "/nonexistent".into(),
    })
    .await
    .unwrap();
    let mut f = Fixture::new();
    let mut status = archive.watch();
    let mut n = 0;
    let mut send = |f: &mut Fixture, count: usize| {
        let mut slowest = Duration::ZERO;
        for _ in 0..count {
            n += 1;
            f.post(n % 2, n, &format!("message number {n}"));
            let t = Instant::now();
            archive.submit(f.take_records());
            slowest = slowest.max(t.elapsed());
        }
        slowest
    };
    send(&mut f, 100);
    // Kill Postgres mid-stream (whatever batch is in flight fails or commits).
    pg.kill();
    let slowest = send(&mut f, 100);
    tokio::time::timeout(Duration::from_secs(30), status.wait_for(|s| !s.up))
        .await
        .expect("the archive notices Postgres is gone")
        .unwrap();
    let slowest = slowest.max(send(&mut f, 100));
    assert!(
        slowest < Duration::from_millis(50),
        "submit blocked for {slowest:?}"
    );
    let down = archive.status();
    assert!(
        !down.up && down.queue_depth > 0 && down.last_error.is_some(),
        "{down:?}"
    );
    pg.restart();
    assert!(
        archive.caught_up(Duration::from_secs(60)).await,
        "{:?}",
        archive.status()
    );
    assert!(archive.status().up);
    let all = archive
        .messages(&PageQuery {
            workspace: f.ws,
            channel: f.channel,
            before: None,
            limit: MAX_PAGE,
        })
        .await
        .unwrap();
    assert_eq!(all.len(), MAX_PAGE);
    let mut seen: BTreeSet<String> = all.iter().map(|m| m.id.clone()).collect();
    let last = all.last().unwrap().id.parse().unwrap();
    let older = archive
        .messages(&PageQuery {
            workspace: f.ws,
            channel: f.channel,
            before: Some(last),
            limit: MAX_PAGE,
        })
        .await
        .unwrap();
    seen.extend(older.iter().map(|m| m.id.clone()));
    let want: BTreeSet<String> = f.ids.iter().map(|i| i.to_string()).collect();
    assert_eq!(seen, want, "every message is archived");
    let bytes = archive.document(f.bucket_meta.id).await.unwrap().unwrap();
    assert_eq!(
        Automerge::load(&bytes).unwrap().get_heads(),
        f.bucket.get_heads()
    );
    assert!(archive.close(Duration::from_secs(5)).await);
}

#[test]
fn a_failed_batch_goes_back_in_front_and_newer_states_win() {
    let mut pending = Batch::default();
    let (doc, peer) = (DocId([1; 16]), DeviceId([2; 32]));
    let t0 = Instant::now();
    let f = Fixture::new();
    let meta = f.bucket_meta.clone();
    let chunk = |n: u8| Record::Chunk {
        meta: meta.clone(),
        data: vec![n],
        heads: vec![],
    };
    pending.add(chunk(1), t0);
    pending.add(
        Record::SyncState {
            peer,
            doc,
            state: vec![1],
        },
        t0,
    );
    let taken = pending.take();
    assert!(pending.is_empty());
    // While it was being written, newer state arrived.
    let t1 = Instant::now();
    pending.add(chunk(2), t1);
    pending.add(
        Record::SyncState {
            peer,
            doc,
            state: vec![2],
        },
        t1,
    );
    pending.restore(taken);
    let (state, at) = &pending.states[&(peer, doc)];
    assert_eq!(
        (state.as_slice(), *at),
        (&[2u8][..], t0),
        "newest state, oldest time"
    );
    let data: Vec<u8> = pending.chunks.iter().map(|(c, _)| c.data[0]).collect();
    assert_eq!(
        data,
        [1, 2],
        "chunks keep their order, the failed ones first"
    );
    assert_eq!(pending.submitted().min(), Some(t0));
}

#[test]
fn batches_hold_at_most_the_chunk_limit() {
    let f = Fixture::new();
    let mut pending = Batch::default();
    let now = Instant::now();
    for n in 0..MAX_BATCH_CHUNKS + 10 {
        pending.add(
            Record::Chunk {
                meta: f.bucket_meta.clone(),
                data: vec![n as u8],
                heads: vec![],
            },
            now,
        );
    }
    let first = pending.take();
    assert_eq!(first.chunks.len(), MAX_BATCH_CHUNKS);
    assert_eq!(pending.chunks.len(), 10);
    assert_eq!(pending.chunks[0].0.data, [MAX_BATCH_CHUNKS as u8]);
}

/// A post whose author's device certificate arrives after it: archived as not authentic first,
/// verified once the workspace document with the certificate is archived.
#[tokio::test]
async fn a_certificate_arriving_later_verifies_archived_messages() {
    let (archive, _dir) = sqlite_archive().await;
    let mut f = Fixture::new();
    let carol = Identity::from_secrets([3; 32], [103; 32], "carol");
    let id = f.post_as(&carol, 1, "I was invited");
    archive.submit(f.take_records());
    assert!(archive.caught_up(Duration::from_secs(30)).await);
    let page = PageQuery {
        workspace: f.ws,
        channel: f.channel,
        before: None,
        limit: 10,
    };
    let got = archive.messages(&page).await.unwrap();
    assert_eq!(got[0].id, id.to_string());
    assert!(!got[0].verified);
    // Alice admits carol: her certificate and membership reach the relay after her post.
    let before = f.ws_doc.get_heads();
    workspace::put_device(&mut f.ws_doc, &carol.device_cert("phone", DAY_MS), DAY_MS).unwrap();
    workspace::set_role(
        &mut f.ws_doc,
        &f.people[0],
        f.ws,
        carol.person_id(),
        Role::Member,
        DAY_MS,
    )
    .unwrap();
    let meta = DocMeta {
        id: f.ws,
        kind: DocKind::Workspace,
        workspace: f.ws,
        channel: None,
        bucket_key: None,
    };
    archive.submit([Record::chunk(meta, &f.ws_doc, &before)]);
    assert!(archive.caught_up(Duration::from_secs(30)).await);
    let got = archive.messages(&page).await.unwrap();
    assert!(got[0].verified, "{got:?}");
    assert_eq!(
        archive.device_role(f.ws, carol.device_id()).await.unwrap(),
        Some(Role::Member)
    );
}

/// The relay with its archive (as `flyt-relay` runs them) on loopback, its data in `dir`, archiving to `database_url` (or
/// SQLite in `dir`).
async fn relay_on(
    dir: &std::path::Path,
    database_url: Option<String>,
) -> (Archive, crate::runtime::Relay) {
    let cfg = crate::config::Config {
        listen: ([127, 0, 0, 1], 0).into(),
        iroh_bind: ([127, 0, 0, 1], 0).into(),
        data_dir: dir.to_owned(),
        database_url,
        ..Default::default()
    };
    let (archive, ext) = extensions(&cfg).await.unwrap();
    (
        archive,
        crate::runtime::Relay::start(cfg, ext).await.unwrap(),
    )
}

const LIMIT: Duration = Duration::from_secs(60);

/// Alice's home in `dir`: a workspace with `#general` that lists `relay` (joined there, as
/// `flyt relay add` does), and her node serving it. Returns the node, workspace and channel.
async fn alice_on(
    dir: &std::path::Path,
    relay: &crate::runtime::Relay,
) -> (peer::node::Node, DocId, DocId) {
    let db = dir.join("flyt.db");
    let mut s = peer::Store::open(&db).unwrap();
    s.init("alice").unwrap();
    let ws = s.create_workspace("acme").unwrap();
    let ch = s.create_channel("general", "", false).unwrap();
    let at = relay.peer_addr();
    let addrs = at.addrs.iter().map(|a| a.to_string()).collect();
    s.add_relay(&format!("http://{}", relay.http_addr()), at.id, addrs)
        .unwrap();
    relay
        .handle()
        .join(s.workspace_save(ws).unwrap())
        .await
        .unwrap()
        .unwrap();
    drop(s);
    let node = peer::node::Node::start(peer::node::NodeConfig {
        db,
        bind: ([127, 0, 0, 1], 0).into(),
        lan: false,
        relay_only: false,
    })
    .await
    .unwrap();
    (node, ws, ch)
}

/// Alice posts `n` messages to `ch`; returns the bucket once the relay holds `total` messages
/// there (them all, with those it held before).
async fn post_through(
    relay: &crate::runtime::Relay,
    alice: &peer::node::Node,
    ch: DocId,
    n: usize,
    total: usize,
) -> DocId {
    let mut events = relay.handle().subscribe();
    // One send after another, then the day's bucket they went to.
    let bucket = alice
        .call(move |s| {
            (0..n).for_each(|i| {
                s.post(ch, &format!("queued message {i}"), None, None)
                    .unwrap();
            });
            s.buckets(ch).unwrap().pop().unwrap().1
        })
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let held = relay
            .handle()
            .call(move |s| {
                s.document(bucket)
                    .unwrap()
                    .map_or(0, |(_, d)| bucket::message_ids(d).len())
            })
            .await
            .unwrap();
        if held == total {
            return bucket;
        }
        tokio::time::timeout_at(deadline, events.recv())
            .await
            .expect("the relay gets alice's messages")
            .unwrap();
    }
}

/// Waits for the archive's catch-up at start, then for it to write what it submitted.
async fn caught_up_at_start(archive: &Archive) -> ArchiveStatus {
    tokio::time::timeout(LIMIT, archive.watch().wait_for(|s| s.catch_up_done))
        .await
        .expect("the archive catches up")
        .unwrap();
    assert!(archive.caught_up(LIMIT).await, "{:?}", archive.status());
    archive.status()
}

/// Every archived message of a channel (at most two pages).
async fn archived(archive: &Archive, ch: DocId, ws: DocId) -> Vec<ArchivedMessage> {
    archive
        .messages(&PageQuery {
            workspace: ws,
            channel: ch,
            before: None,
            limit: MAX_PAGE,
        })
        .await
        .unwrap()
}

/// Issue 4: the relay stops gracefully while Postgres is away and records are queued; they are
/// not lost: at its next start (Postgres back) the archive catches up from the relay's store,
/// documents and sync states. A start with nothing missing submits nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_stopped_with_records_queued_catches_the_archive_up_at_its_next_start() {
    const N: usize = 40;
    let mut pg = PgCluster::start();
    let (relay_dir, home) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (archive, relay) = relay_on(relay_dir.path(), Some(pg.url())).await;
    let (alice, ws, ch) = alice_on(home.path(), &relay).await;
    let me = alice
        .call(|s| s.identity().unwrap().device_id())
        .await
        .unwrap();
    assert!(archive.caught_up(LIMIT).await, "{:?}", archive.status());

    pg.kill();
    let bucket = post_through(&relay, &alice, ch, N, N).await;
    assert!(
        archive.shared.oldest.lock().unwrap().is_some(),
        "records wait for Postgres"
    );
    alice.shutdown().await;
    relay.shutdown().await;
    drop(archive);

    pg.restart();
    let (archive, relay) = relay_on(relay_dir.path(), Some(pg.url())).await;
    let status = caught_up_at_start(&archive).await;
    assert!(status.catch_up_documents >= 1, "{status:?}");
    assert!(status.catch_up_states >= 1, "{status:?}");
    let messages = archived(&archive, ch, ws).await;
    assert_eq!(messages.len(), N, "every queued message is archived");
    assert!(messages.iter().all(|m| m.verified));
    let held = relay
        .handle()
        .call(move |s| s.document(bucket).unwrap().unwrap().1.get_heads())
        .await
        .unwrap();
    let bytes = archive.document(bucket).await.unwrap().unwrap();
    assert_eq!(Automerge::load(&bytes).unwrap().get_heads(), held);
    let state = relay
        .handle()
        .call(move |s| s.sync_states().unwrap())
        .await
        .unwrap()
        .into_iter()
        .find(|(p, d, _)| *p == me && *d == bucket)
        .expect("the relay saved its sync state with alice")
        .2;
    assert_eq!(archive.sync_state(me, bucket).await.unwrap(), Some(state));
    relay.shutdown().await;
    drop(archive);

    // Nothing differs now: the next start reads heads and states and submits nothing.
    let (archive, relay) = relay_on(relay_dir.path(), Some(pg.url())).await;
    let status = caught_up_at_start(&archive).await;
    assert_eq!(
        (status.catch_up_documents, status.catch_up_states),
        (0, 0),
        "{status:?}"
    );
    assert_eq!(status.batches, 0, "nothing written");
    relay.shutdown().await;
}

/// The SQLite flavour: a relay that ran without an archive (or lost its archive file) fills a
/// fresh one at its next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_sqlite_archive_catches_up_with_what_the_relay_holds() {
    const N: usize = 25;
    let (relay_dir, home) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let cfg = crate::config::Config {
        listen: ([127, 0, 0, 1], 0).into(),
        iroh_bind: ([127, 0, 0, 1], 0).into(),
        data_dir: relay_dir.path().to_owned(),
        ..Default::default()
    };
    let relay = crate::runtime::Relay::start(cfg, Default::default())
        .await
        .unwrap();
    let (alice, ws, ch) = alice_on(home.path(), &relay).await;
    post_through(&relay, &alice, ch, N, N).await;
    alice.shutdown().await;
    relay.shutdown().await;
    assert!(!relay_dir.path().join("archive.sqlite").exists());

    let (archive, relay) = relay_on(relay_dir.path(), None).await;
    let status = caught_up_at_start(&archive).await;
    assert!(
        status.catch_up_documents >= 3,
        "workspace, channel, bucket: {status:?}"
    );
    assert_eq!(archived(&archive, ch, ws).await.len(), N);
    relay.shutdown().await;
}

/// A document, the relay's sync state for it, and the archive's.
type HeldAndArchived = (DocId, Vec<u8>, Option<Vec<u8>>);

/// Every sync state the relay's store holds for `peer`, and what the archive holds of each.
async fn states_of(
    archive: &Archive,
    relay: &crate::runtime::Relay,
    peer: DeviceId,
) -> Vec<HeldAndArchived> {
    let held = relay
        .handle()
        .call(|s| s.sync_states().unwrap())
        .await
        .unwrap();
    let mut out = Vec::new();
    for (p, doc, state) in held.into_iter().filter(|(p, _, _)| *p == peer) {
        out.push((doc, state, archive.sync_state(p, doc).await.unwrap()));
    }
    out.sort();
    out
}

/// Ends alice's node and waits until the relay ended her session (saving its sync states) and
/// the archive wrote what it was given.
async fn alice_leaves(
    archive: &Archive,
    relay: &crate::runtime::Relay,
    alice: peer::node::Node,
    me: DeviceId,
) {
    let mut events = relay.handle().subscribe();
    alice.shutdown().await;
    tokio::time::timeout(LIMIT, async {
        while events.recv().await.unwrap() != crate::runtime::RelayEvent::PeerDown(me) {}
    })
    .await
    .expect("the relay ends alice's session");
    assert!(archive.caught_up(LIMIT).await, "{:?}", archive.status());
}

/// The sync states the relay saves reach the archive live, not only at the next start: after
/// alice's node synced with the running relay and left, the archive holds the relay's state
/// for each of her documents, equal to the relay store's; after she comes back and syncs more,
/// the archived state of her bucket follows the relay's newer one.
async fn sync_states_are_archived_live(database_url: Option<String>) {
    let (relay_dir, home) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (archive, relay) = relay_on(relay_dir.path(), database_url).await;
    // Catching up at start is done (with nothing to do): what the archive gets from now on
    // comes through the live seam.
    let status = caught_up_at_start(&archive).await;
    assert_eq!(status.catch_up_states, 0, "{status:?}");
    let (alice, _ws, ch) = alice_on(home.path(), &relay).await;
    let me = alice
        .call(|s| s.identity().unwrap().device_id())
        .await
        .unwrap();
    let bucket = post_through(&relay, &alice, ch, 3, 3).await;
    alice_leaves(&archive, &relay, alice, me).await;
    let first = states_of(&archive, &relay, me).await;
    assert!(
        first.iter().any(|(d, _, _)| *d == bucket),
        "the relay saved its state with alice for her bucket: {first:?}"
    );
    for (doc, held, archived) in &first {
        assert_eq!(
            archived.as_ref(),
            Some(held),
            "the archive holds the relay's sync state with alice for {doc}"
        );
    }

    // She comes back and syncs more: the archived state follows, still without a restart.
    let alice = peer::node::Node::start(peer::node::NodeConfig {
        db: home.path().join("flyt.db"),
        bind: ([127, 0, 0, 1], 0).into(),
        lan: false,
        relay_only: false,
    })
    .await
    .unwrap();
    let again = post_through(&relay, &alice, ch, 5, 8).await;
    assert_eq!(again, bucket, "the same day's bucket");
    alice_leaves(&archive, &relay, alice, me).await;
    let second = states_of(&archive, &relay, me).await;
    let state = |v: &[HeldAndArchived]| {
        v.iter()
            .find(|(d, _, _)| *d == bucket)
            .map(|(_, held, archived)| (held.clone(), archived.clone()))
            .unwrap()
    };
    let (before, _) = state(&first);
    let (held, archived) = state(&second);
    assert_ne!(
        held, before,
        "the relay's state moved on with the new messages"
    );
    assert_eq!(archived, Some(held), "and the archive's with it");
    for (doc, held, archived) in &second {
        assert_eq!(archived.as_ref(), Some(held), "{doc}");
    }
    assert_eq!(
        archive.status().catch_up_states,
        0,
        "none came from catching up"
    );
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_archives_the_relays_sync_states_live() {
    let db = TestDb::create().await;
    sync_states_are_archived_live(Some(db.url())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_archives_the_relays_sync_states_live() {
    sync_states_are_archived_live(None).await;
}
