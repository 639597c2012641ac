//! `flyt-bench`: Flyt's performance targets, measured.
//!
//! `cargo run --release --bin flyt-bench -- local` builds a 100,000-message channel in a fresh
//! home and measures the local paths: send (backend), read the newest 50 (warm, and cold in a
//! new process), full-text search, and sizes. It prints a table, then one JSON object as its
//! last line. `archive` measures the relay's archive into Postgres (throughput and lag).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use peer::Store;
use serde_json::json;
use tests::{Rng, Summary, chat_line, micros, millis, summarize};

const DAY_MS: i64 = 86_400_000;

fn usage() -> ! {
    eprintln!(
        "usage: flyt-bench local [--messages N] [--sends N] [--keep DIR]\n\
         \x20      flyt-bench p2p [--messages N] [--live N]\n\
         \x20      flyt-bench relay [--peers N] [--messages N]\n\
         \n  local   send / read / open / search on a 100k-message channel (SQLite, one process)\
         \n  p2p     live delivery between two nodes over iroh QUIC on 127.0.0.1, and a new device\
         \n          joining a workspace whose channel holds 100k messages\
         \n  relay   fan-out from one sender through a relay to N connected member devices: light\
         \n          receivers (endpoint + sync engine, in memory) in a second process, or with\
         \n          --full-nodes full member nodes (SQLite homes) in the relay's process\
         \n  archive the relay's archive at a steady N messages/s (default 1,000) into Postgres\
         \n          (default: a throwaway database on postgres://postgres@127.0.0.1:5432)"
    );
    std::process::exit(2);
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("local") => local(&args[1..]),
        Some("open-cold") => open_cold(&args[1..]),
        Some("p2p") => p2p(&args[1..]),
        Some("relay") => relay_bench(&args[1..]),
        Some("relay-clients") => relay_clients(&args[1..]),
        Some("archive") => archive_bench(&args[1..]),
        _ => usage(),
    }
}

fn flag(args: &[String], name: &str, default: usize) -> Result<usize> {
    match args.iter().position(|a| a == name) {
        Some(i) => args
            .get(i + 1)
            .context("flag needs a value")?
            .parse()
            .with_context(|| format!("{name} takes a number")),
        None => Ok(default),
    }
}

/// Posts `total` plausible messages into `channel`, 1,000 a day, ending yesterday.
fn fill_history(
    store: &mut Store,
    channel: crdt_model::DocId,
    total: usize,
    seed: u64,
) -> Result<()> {
    let mut rng = Rng::new(seed);
    let days = total.div_ceil(1_000) as i64;
    let start = (peer::now_ms() / DAY_MS - days) * DAY_MS;
    let mut left = total;
    for d in 0..days {
        let n = left.min(1_000);
        left -= n;
        let items: Vec<(i64, String)> = (0..n)
            .map(|i| (start + d * DAY_MS + i as i64 * 60_000, chat_line(&mut rng)))
            .collect();
        store.post_batch(channel, &items)?;
    }
    Ok(())
}

/// The head of the results table.
fn header() {
    println!(
        "{:<44} {:>10} {:>10} {:>10}",
        "measurement", "p50", "p99", "max"
    );
}

/// A summary as the JSON line reports it.
fn stat(s: &Summary) -> serde_json::Value {
    json!({ "p50": s.p50, "p99": s.p99, "max": s.max, "n": s.n })
}

fn row(name: &str, unit: &str, s: &Summary) {
    println!(
        "{name:<40} {:>10.3} {:>10.3} {:>10.3}  {unit}  (n={})",
        s.p50, s.p99, s.max, s.n
    );
}

fn local(args: &[String]) -> Result<()> {
    let total = flag(args, "--messages", 100_000)?;
    let sends = flag(args, "--sends", 1_000)?;
    let dir = tempfile::tempdir()?;
    let keep = args
        .iter()
        .position(|a| a == "--keep")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from);
    let db = match &keep {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            if d.join("flyt.db").exists() {
                bail!("{} already holds a database", d.display());
            }
            d.join("flyt.db")
        }
        None => dir.path().join("flyt.db"),
    };
    let mut store = Store::open(&db)?;
    store.init("bench")?;
    store.create_workspace("bench")?;
    let channel = store.create_channel("general", "", false)?;

    // History: `total` messages, 1,000 a day, ending yesterday.
    let mut rng = Rng::new(42);
    let t = Instant::now();
    fill_history(&mut store, channel, total, 42)?;
    let fill_s = t.elapsed().as_secs_f64();
    eprintln!("filled {total} messages in {fill_s:.1} s");

    println!(
        "{:<40} {:>10} {:>10} {:>10}",
        "measurement", "p50", "p99", "max"
    );
    // Send: the backend part of send -> own screen (validate, sign, Automerge change, SQLite
    // commit with fsync, projection rows, the row read back for the screen).
    // Compaction runs in idle time (`Store::maintain`), as a node does between bursts: here
    // every 32 sends, timed on its own.
    let mut send_us = Vec::with_capacity(sends);
    let mut maintain_ms = Vec::new();
    for i in 0..sends {
        let text = format!("{} #{i}", chat_line(&mut rng));
        let t = Instant::now();
        store.post(channel, &text, None, None)?;
        send_us.push(micros(t.elapsed()));
        if i % 32 == 31 {
            let t = Instant::now();
            if store.maintain()? > 0 {
                maintain_ms.push(millis(t.elapsed()));
            }
        }
    }
    let send = summarize(&send_us);
    row("send (backend, incl. fsync)", "µs", &send);
    let maintain = summarize(&maintain_ms);
    row("  idle-time compaction of that bucket", "ms", &maintain);

    let mut read_ms = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        let rows = store.read(channel, 50, None, None)?;
        read_ms.push(millis(t.elapsed()));
        assert_eq!(rows.len(), 50);
    }
    let read = summarize(&read_ms);
    row("read newest 50, warm", "ms", &read);

    drop(store);
    let exe = std::env::current_exe()?;
    let mut cold_ms = Vec::new();
    let mut proc_ms = Vec::new();
    for _ in 0..15 {
        let t = Instant::now();
        let out = Command::new(&exe)
            .arg("open-cold")
            .arg(&db)
            .arg(channel.to_string())
            .output()?;
        proc_ms.push(millis(t.elapsed()));
        if !out.status.success() {
            bail!("open-cold failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        cold_ms.push(String::from_utf8(out.stdout)?.trim().parse::<f64>()?);
    }
    let cold = summarize(&cold_ms);
    let cold_proc = summarize(&proc_ms);
    row("open + newest 50, new process", "ms", &cold);
    row("  whole process (exec to exit)", "ms", &cold_proc);

    let store = Store::open(&db)?;
    let mut search_ms = Vec::new();
    let mut hits = Vec::new();
    for q in ["zanzibar", "rollback incident", "dash", "deploy"] {
        for _ in 0..10 {
            let t = Instant::now();
            let rows = store.search(q, None, 20)?;
            search_ms.push(millis(t.elapsed()));
            hits.push(rows.len());
        }
    }
    let search = summarize(&search_ms);
    row("search (20 newest hits) over 100k", "ms", &search);

    let buckets = store.buckets(channel)?;
    let mut store = store;
    let full_bucket = buckets
        .first()
        .map(|(_, id)| store.doc_size(*id))
        .transpose()?
        .flatten()
        .unwrap_or(0);
    let db_bytes = file_size(&db) + file_size(&db.with_extension("db-wal"));
    println!(
        "database {:.1} MB for {} messages; {} buckets; one 1,000-message bucket saves to {:.1} KB",
        db_bytes as f64 / 1e6,
        total + sends,
        buckets.len(),
        full_bucket as f64 / 1e3
    );
    println!(
        "{}",
        json!({
            "bench": "local",
            "messages": total + sends,
            "fill_seconds": fill_s,
            "send_us": stat(&send),
            "idle_compaction_ms": stat(&maintain),
            "read_newest_50_warm_ms": stat(&read),
            "open_cold_newest_50_ms": stat(&cold),
            "open_cold_process_ms": stat(&cold_proc),
            "search_ms": stat(&search),
            "db_bytes": db_bytes,
            "buckets": buckets.len(),
            "bucket_1000_msgs_bytes": full_bucket,
            "targets": { "send_p99_us": 2000, "open_cold_newest_50_ms": 50 },
        })
    );
    Ok(())
}

/// Child process: open the database and read the newest 50; print the elapsed ms.
fn open_cold(args: &[String]) -> Result<()> {
    let [db, channel] = args else { usage() };
    let t = Instant::now();
    let store = Store::open(&PathBuf::from(db))?;
    let rows = store.read(channel.parse()?, 50, None, None)?;
    let ms = millis(t.elapsed());
    if rows.len() != 50 {
        bail!("expected 50 rows, got {}", rows.len());
    }
    println!("{ms}");
    Ok(())
}

fn file_size(p: &Path) -> u64 {
    std::fs::metadata(p).map_or(0, |m| m.len())
}

fn peak_rss_mb() -> f64 {
    proc_status_mb("VmHWM:")
}

/// A memory figure of this process from `/proc/self/status` (e.g. `VmRSS:`), MB.
fn proc_status_mb(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// A home with an identity, for the p2p bench.
fn bench_home(dir: &Path, name: &str) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let db = dir.join("flyt.db");
    Store::open(&db)?.init(name)?;
    Ok(db)
}

async fn start_node(db: &Path) -> Result<peer::node::Node> {
    Ok(peer::node::Node::start(peer::node::NodeConfig {
        db: db.to_path_buf(),
        bind: "127.0.0.1:0".parse()?,
        lan: false,
        relay_only: false,
    })
    .await?)
}

fn p2p(args: &[String]) -> Result<()> {
    let total = flag(args, "--messages", 100_000)?;
    let live = flag(args, "--live", 1_000)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(p2p_run(total, live))
}

async fn p2p_run(total: usize, live: usize) -> Result<()> {
    use peer::node::NodeEvent;
    use std::time::Duration;
    let dir = tempfile::tempdir()?;
    let alice_db = bench_home(&dir.path().join("alice"), "alice")?;
    let (ws, channel) = {
        let mut s = Store::open(&alice_db)?;
        let ws = s.create_workspace("bench")?;
        let ch = s.create_channel("general", "", false)?;
        fill_history(&mut s, ch, total, 7)?;
        (ws, ch)
    };
    eprintln!("alice holds {total} messages");
    let alice = start_node(&alice_db).await?;
    let addrs: Vec<String> = alice.addr().addrs.iter().map(|a| a.to_string()).collect();
    let ticket = alice
        .call(move |s| s.invite(crdt_model::Role::Member, 600_000, addrs))
        .await??;

    // A new device joins: newest screen first, then the whole history.
    let bob_db = bench_home(&dir.path().join("bob"), "bob")?;
    let bob = start_node(&bob_db).await?;
    let mut bob_events = bob.subscribe();
    let newest = Store::open(&alice_db)?.read(channel, 50, None, None)?;
    let newest_id = newest
        .last()
        .map(|m| m.id.clone())
        .context("alice has messages")?;
    let t = Instant::now();
    bob.join(&ticket).await?;
    // A screen reads the projection through its own connection (WAL: readers never wait for
    // the writer), so the bench does too, after every event from bob's node.
    let screen = Store::open(&bob_db)?;
    let mut first_screen = None;
    let want = total as i64;
    let deadline = Instant::now() + Duration::from_secs(600);
    let full = loop {
        if first_screen.is_none() {
            let rows = screen.read(channel, 50, None, None).unwrap_or_default();
            if rows.len() == 50 && rows.last().map(|m| &m.id) == Some(&newest_id) {
                first_screen = Some(t.elapsed());
            }
        }
        if screen.status()?.messages >= want {
            break t.elapsed();
        }
        if Instant::now() > deadline {
            bail!("the new device did not get the full history in time");
        }
        let _ = tokio::time::timeout(Duration::from_millis(50), bob_events.recv()).await;
    };
    let first_screen = first_screen.unwrap_or(full);
    drop(screen);
    let _ = ws;
    let bytes = bob.bytes_received();
    let rss = peak_rss_mb();

    // Live: alice posts, bob has it on screen (durable, projected); one at a time.
    let mut lat_ms = Vec::with_capacity(live);
    let mut rng = Rng::new(11);
    for i in 0..live {
        let text = format!("{} live {i}", chat_line(&mut rng));
        while bob_events.try_recv().is_ok() {}
        let t = Instant::now();
        alice
            .call(move |s| s.post(channel, &text, None, None))
            .await??;
        loop {
            match tokio::time::timeout(Duration::from_secs(10), bob_events.recv()).await {
                Ok(Ok(NodeEvent::Changed(doc))) if doc != channel && doc != ws => break,
                Ok(Ok(_)) | Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
                Ok(Err(_)) => bail!("bob's node stopped"),
                Err(_) => bail!("message {i} did not arrive within 10 s"),
            }
        }
        lat_ms.push(millis(t.elapsed()));
    }
    let got = bob
        .call(move |s| s.status().map(|st| st.messages))
        .await??;
    if got != (total + live) as i64 {
        bail!("bob has {got} messages, expected {}", total + live);
    }
    let lat = summarize(&lat_ms);
    alice.shutdown().await;
    bob.shutdown().await;

    header();
    row("live delivery alice -> bob screen (QUIC)", "ms", &lat);
    println!(
        "new device, {total} messages: newest 50 on screen {:.2} s, full history {:.2} s, {:.1} MB received, peak RSS (both nodes, one process) {:.0} MB",
        first_screen.as_secs_f64(),
        full.as_secs_f64(),
        bytes as f64 / 1e6,
        rss
    );
    println!(
        "{}",
        json!({
            "bench": "p2p",
            "messages": total,
            "live_delivery_ms": stat(&lat),
            "join_newest_50_s": first_screen.as_secs_f64(),
            "join_full_history_s": full.as_secs_f64(),
            "join_bytes_received": bytes,
            "peak_rss_mb_both_nodes": rss,
            "targets": { "live_p50_ms": 5, "live_p99_ms": 15, "join_newest_50_s": 1, "join_full_s": 10 },
        })
    );
    Ok(())
}

fn relay_bench(args: &[String]) -> Result<()> {
    let peers = flag(args, "--peers", 100)?;
    let messages = flag(args, "--messages", 20)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    if args.iter().any(|a| a == "--full-nodes") {
        rt.block_on(relay_full_run(peers, messages))
    } else {
        rt.block_on(relay_light_run(peers, messages))
    }
}

/// A relay serving a workspace whose owner (alice, a home in `dir`) admitted `n` members and
/// posted once in its one public channel, before the relay joined it.
struct RelayFixture {
    relay: sync_relay::runtime::Relay,
    alice_db: PathBuf,
    members: Vec<crdt_model::Identity>,
    workspace: crdt_model::DocId,
    /// The workspace document as the relay joined it.
    workspace_bytes: Vec<u8>,
    channel: crdt_model::DocId,
    bucket: crdt_model::DocId,
}

async fn relay_fixture(dir: &Path, n: usize) -> Result<RelayFixture> {
    let cfg = sync_relay::config::Config {
        listen: "127.0.0.1:0".parse()?,
        iroh_bind: "127.0.0.1:0".parse()?,
        data_dir: dir.join("relay"),
        max_connections: n + 16,
        ..Default::default()
    };
    let relay =
        sync_relay::runtime::Relay::start(cfg, sync_relay::runtime::Extensions::default()).await?;
    let url = format!("http://{}", relay.http_addr());
    let relay_addrs: Vec<String> = relay
        .peer_addr()
        .addrs
        .iter()
        .map(|a| a.to_string())
        .collect();

    let alice_db = bench_home(&dir.join("alice"), "alice")?;
    let members: Vec<crdt_model::Identity> = (0..n)
        .map(|i| {
            crdt_model::Identity::from_secrets(peer::random(), peer::random(), format!("p{i}"))
        })
        .collect();
    let mut s = Store::open(&alice_db)?;
    let workspace = s.create_workspace("bench")?;
    let channel = s.create_channel("general", "", false)?;
    s.post(channel, "hello", None, None)?;
    for m in &members {
        s.admit(
            &m.device_cert("bench", peer::now_ms()),
            crdt_model::Role::Member,
        )?;
    }
    s.add_relay(&url, relay.peer_addr().id, relay_addrs)?;
    let workspace_bytes = s.workspace_save(workspace)?;
    relay
        .handle()
        .join(workspace_bytes.clone())
        .await?
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let bucket = s.buckets(channel)?.pop().context("a bucket")?.1;
    Ok(RelayFixture {
        relay,
        alice_db,
        members,
        workspace,
        workspace_bytes,
        channel,
        bucket,
    })
}

/// `flyt-bench relay --full-nodes`: fan-out through the relay: one sender, `n` members' nodes
/// connected only to the relay (no
/// direct links), `messages` posts one at a time; delivery = post until each node reports the
/// change durable and projected.
///
/// How the peers are simulated, and what they cost: each is a real `peer::node::Node` (its own
/// iroh endpoint, store thread and SQLite home, fsync per received change) in this one
/// process, on the same 2 cores as the relay. Their homes are copies of the sender's home
/// (after it admitted them), each with its own identity written in, so no join traffic is
/// measured. The figures are therefore an upper bound of the relay's own cost.
async fn relay_full_run(n: usize, messages: usize) -> Result<()> {
    use peer::node::NodeEvent;
    use std::time::Duration;
    let dir = tempfile::tempdir()?;
    let RelayFixture {
        relay,
        alice_db,
        members,
        channel,
        bucket,
        ..
    } = relay_fixture(dir.path(), n).await?;
    // Closing the last connection checkpoints the WAL: the file is the whole home.
    let mut dbs = Vec::with_capacity(n);
    for (i, m) in members.iter().enumerate() {
        let d = dir.path().join(format!("p{i}"));
        std::fs::create_dir_all(&d)?;
        let db = d.join("flyt.db");
        std::fs::copy(&alice_db, &db)?;
        let conn = rusqlite::Connection::open(&db)?;
        let me = json!({
            "person": hex::encode(m.person.to_bytes()),
            "device": hex::encode(m.device.to_bytes()),
            "name": m.name,
        });
        conn.execute(
            "UPDATE meta SET value = ?1 WHERE key = 'identity'",
            [me.to_string()],
        )?;
        dbs.push(db);
    }
    eprintln!("{n} member homes ready");

    let alice = start_node(&alice_db).await?;
    let rss_before = proc_status_mb("VmRSS:");
    let mut nodes = Vec::with_capacity(n);
    let (arrive_tx, mut arrivals) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    for db in &dbs {
        let node = start_node(db).await?;
        let mut events = node.subscribe();
        let tx = arrive_tx.clone();
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(NodeEvent::Changed(doc)) if doc == bucket => {
                        if tx.send(Instant::now()).is_err() {
                            return;
                        }
                    }
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => return,
                }
            }
        });
        nodes.push(node);
    }
    let connected = Instant::now() + Duration::from_secs(300);
    let metrics = relay.handle().metrics.clone();
    while metrics
        .connections
        .load(std::sync::atomic::Ordering::Relaxed)
        < (n + 1) as u64
    {
        if Instant::now() > connected {
            bail!("not every node connected to the relay in time");
        }
        let mut ev = relay.handle().subscribe();
        let _ = tokio::time::timeout(Duration::from_secs(1), ev.recv()).await;
    }
    // Let the connect-time sync settle (it changes nothing: the homes are identical).
    let settle = Instant::now();
    while tokio::time::timeout(Duration::from_millis(500), arrivals.recv())
        .await
        .is_ok()
    {}
    let rss_after = proc_status_mb("VmRSS:");
    eprintln!(
        "{n} nodes connected to the relay; settled in {:.1} s",
        settle.elapsed().as_secs_f64()
    );

    let mut lat_ms = Vec::with_capacity(n * messages);
    for i in 0..messages {
        let t0 = Instant::now();
        alice
            .call(move |s| s.post(channel, &format!("fan-out {i}"), None, None))
            .await??;
        for _ in 0..n {
            match tokio::time::timeout(Duration::from_secs(60), arrivals.recv()).await {
                Ok(Some(at)) => lat_ms.push(millis(at.duration_since(t0))),
                _ => bail!("message {i} did not reach every node within 60 s"),
            }
        }
    }
    let lat = summarize(&lat_ms);
    for node in nodes {
        node.shutdown().await;
    }
    alice.shutdown().await;
    relay.shutdown().await;

    header();
    row(&format!("relay fan-out to {n} nodes"), "ms", &lat);
    let per_peer_kb = (rss_after - rss_before) * 1024.0 / n as f64;
    println!(
        "resident memory per connected node (relay connection + the simulated node itself): {per_peer_kb:.0} KB"
    );
    println!(
        "{}",
        json!({
            "bench": "relay",
            "peers": n,
            "messages": messages,
            "fanout_delivery_ms": stat(&lat),
            "rss_kb_per_connected_node_upper_bound": per_peer_kb,
            "simulated_peers": "real peer::node::Node each (own iroh endpoint, store thread, SQLite home, fsync per change) in the bench process, sharing the 2 cores with the relay",
            "targets": { "fanout_p99_ms_at_1000": 100 },
        })
    );
    Ok(())
}

/// `flyt-bench relay` (the default): fan-out through the relay to `n` light receivers in a
/// second process (this binary's `relay-clients`), so the relay's figures are its own.
///
/// This process hosts the relay and the sender (alice, a full node); the receivers are
/// `tests::fanout` receivers: each a member device's iroh endpoint and `peer`'s sync engine
/// over in-memory documents, all in one child process. Delivery time = from just before
/// alice's post (which includes her fsync'd commit) until a receiver holds the message in its
/// bucket document, both read on the machine's clock (`tests::fanout::clock_ns`). Memory per idle connection = this
/// process's VmRSS after the `n` connections settled minus before the first, over `n` (alice
/// is connected in both readings).
async fn relay_light_run(n: usize, messages: usize) -> Result<()> {
    use std::io::{BufRead, Write};
    use std::process::Stdio;
    use std::time::Duration;
    use tests::fanout::clock_ns;

    let dir = tempfile::tempdir()?;
    let fx = relay_fixture(dir.path(), n).await?;
    let relay = fx.relay;
    let metrics = relay.handle().metrics.clone();
    let connections = || {
        metrics
            .connections
            .load(std::sync::atomic::Ordering::Relaxed) as usize
    };
    let mut relay_events = relay.handle().subscribe();
    let alice = start_node(&fx.alice_db).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while connections() < 1 {
        if Instant::now() > deadline {
            bail!("alice did not connect to the relay in time");
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), relay_events.recv()).await;
    }
    // Alice's connect-time sync changes nothing; wait until the relay is quiet.
    while tokio::time::timeout(Duration::from_millis(500), relay_events.recv())
        .await
        .is_ok()
    {}
    let rss_before = proc_status_mb("VmRSS:");

    let setup = dir.path().join("clients.json");
    let relay_addr = relay.peer_addr();
    std::fs::write(
        &setup,
        json!({
            "relay": relay_addr.id.to_string(),
            "relay_addrs": relay_addr.addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            "workspace": fx.workspace.to_string(),
            "workspace_doc": hex::encode(&fx.workspace_bytes),
            "devices": fx.members.iter().map(|m| hex::encode(m.device.to_bytes())).collect::<Vec<_>>(),
        })
        .to_string(),
    )?;
    let mut child = Command::new(std::env::current_exe()?)
        .arg("relay-clients")
        .arg(&setup)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the receivers' process")?;
    let stdin = child.stdin.take().context("child stdin")?;
    let stdout = child.stdout.take().context("child stdout")?;
    let (line_tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if line_tx.send(line).is_err() {
                return;
            }
        }
    });
    // The child's next line, within `secs`; a `failed` line or its exit is an error.
    let next_line = async |lines: &mut tokio::sync::mpsc::UnboundedReceiver<String>, secs| {
        match tokio::time::timeout(Duration::from_secs(secs), lines.recv()).await {
            Ok(Some(l)) if l.starts_with("failed") => bail!("receivers: {l}"),
            Ok(Some(l)) => Ok(l),
            Ok(None) => bail!("the receivers' process exited"),
            Err(_) => bail!("no word from the receivers within {secs} s"),
        }
    };

    let t = Instant::now();
    let result = async {
        let l = next_line(&mut lines, 600).await?;
        if l != format!("connected {n}") {
            bail!("unexpected line from the receivers: {l}");
        }
        let connected_s = t.elapsed().as_secs_f64();
        let l = next_line(&mut lines, 600).await?;
        let child_rss_mb: f64 = l
            .strip_prefix("settled ")
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("unexpected line from the receivers: {l}"))?;
        if connections() != n + 1 {
            bail!(
                "the relay counts {} connections, expected {}",
                connections(),
                n + 1
            );
        }
        let rss_after = proc_status_mb("VmRSS:");
        eprintln!(
            "{n} receivers connected in {connected_s:.1} s, settled in {:.1} s",
            t.elapsed().as_secs_f64()
        );

        let mut lat_ms = Vec::with_capacity(n * messages);
        let mut post_ms = Vec::with_capacity(messages);
        for i in 0..messages {
            let t0 = clock_ns();
            let text = format!("fan-out {i}");
            let row = alice
                .call(move |s| s.post(fx.channel, &text, None, None))
                .await??;
            post_ms.push(clock_ns().saturating_sub(t0) as f64 / 1e6);
            let l = next_line(&mut lines, 60).await?;
            let mut f = l.split(' ');
            if f.next() != Some("got") || f.next() != Some(row.id.as_str()) {
                bail!("expected every receiver to get {}, got: {l}", row.id);
            }
            let before = lat_ms.len();
            for at in f {
                let at: u64 = at.parse().context("a receive time")?;
                let Some(d) = at.checked_sub(t0) else {
                    bail!("a receive time before the post: the clock stepped back");
                };
                lat_ms.push(d as f64 / 1e6);
            }
            if lat_ms.len() - before != n {
                bail!(
                    "message {i}: {} receive times for {n} receivers",
                    lat_ms.len() - before
                );
            }
        }
        Ok((lat_ms, post_ms, rss_after, child_rss_mb))
    }
    .await;
    // Closing its stdin stops the receivers' process; it is killed if it lingers.
    drop(stdin);
    let stopped = Instant::now() + Duration::from_secs(30);
    while child.try_wait()?.is_none() {
        if Instant::now() > stopped {
            child.kill()?;
            child.wait()?;
            break;
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), lines.recv()).await;
    }
    let _ = std::io::stderr().flush();
    alice.shutdown().await;
    relay.shutdown().await;
    let (lat_ms, post_ms, rss_after, child_rss_mb) = result?;

    let lat = summarize(&lat_ms);
    let post = summarize(&post_ms);
    header();
    row(&format!("relay fan-out to {n} receivers"), "ms", &lat);
    row("  of which the sender's post (fsync'd)", "ms", &post);
    let per_conn_kb = (rss_after - rss_before) * 1024.0 / n as f64;
    println!(
        "relay process resident memory: {rss_before:.0} MB before, {rss_after:.0} MB with {n} idle connections: {per_conn_kb:.0} KB per connection"
    );
    println!(
        "receivers' process resident memory: {child_rss_mb:.0} MB ({:.0} KB per receiver)",
        child_rss_mb * 1024.0 / n as f64
    );
    println!(
        "{}",
        json!({
            "bench": "relay",
            "peers": n,
            "messages": messages,
            "fanout_delivery_ms": stat(&lat),
            "sender_post_ms": stat(&post),
            "relay_rss_mb_before": rss_before,
            "relay_rss_mb_after": rss_after,
            "relay_rss_kb_per_idle_connection": per_conn_kb,
            "receivers_rss_mb": child_rss_mb,
            "receivers": "light, in a second process: per member device an iroh endpoint (peer::net::Transport) and peer::sync::engine::Engine over in-memory documents; delivery = the message is in the receiver's bucket document; times on the machine's CLOCK_REALTIME, read by both processes",
            "relay_process": "relay + the sender (alice, a full node)",
            "targets": { "fanout_p99_ms_at_1000": 100 },
        })
    );
    Ok(())
}

/// `flyt-bench relay-clients SETUP` (started by `relay`): the light receivers. Reads the setup
/// file `relay` wrote, connects one receiver per device, and talks on stdout, one line each:
/// `connected N`; `settled RSS_MB` once no receiver got a frame for 500 ms; then per message
/// `got ID NS...` when every receiver holds it (each receiver's `clock_ns` time);
/// `failed WHY` if a receiver fails. Stops when its stdin closes, or after an hour.
fn relay_clients(args: &[String]) -> Result<()> {
    let path = args.first().context("relay-clients needs its setup file")?;
    let setup: serde_json::Value = serde_json::from_slice(&std::fs::read(path)?)?;
    let text = |k: &str| setup[k].as_str().with_context(|| format!("setup: {k}"));
    let list = |k: &str| -> Result<Vec<String>> {
        Ok(setup[k]
            .as_array()
            .with_context(|| format!("setup: {k}"))?
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect())
    };
    let relay_id: crdt_model::DeviceId = text("relay")?.parse()?;
    let relay = peer::net::PeerAddr::parse(relay_id, &list("relay_addrs")?);
    let workspace: crdt_model::DocId = text("workspace")?.parse()?;
    let workspace_bytes = hex::decode(text("workspace_doc")?)?;
    let devices = list("devices")?
        .iter()
        .map(|d| {
            let mut b = [0u8; 32];
            hex::decode_to_slice(d, &mut b).map(|()| b)
        })
        .collect::<Result<Vec<_>, _>>()?;
    tests::fanout::raise_nofile().context("raising RLIMIT_NOFILE")?;
    let view =
        crdt_model::workspace::view(&automerge::Automerge::load(&workspace_bytes)?, workspace);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let run = clients_run(relay, workspace, workspace_bytes, view, devices);
        match tokio::time::timeout(std::time::Duration::from_secs(3600), run).await {
            Ok(r) => r,
            Err(_) => bail!("the receivers ran for an hour: stopped"),
        }
    })
}

async fn clients_run(
    relay: peer::net::PeerAddr,
    workspace: crdt_model::DocId,
    workspace_bytes: Vec<u8>,
    view: crdt_model::workspace::WorkspaceView,
    devices: Vec<[u8; 32]>,
) -> Result<()> {
    use std::collections::HashMap;
    use std::io::Write;
    use std::sync::Arc;
    use std::time::Duration;
    use tests::fanout::{Report, Shared, receiver};

    let say = |line: String| -> Result<()> {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")?;
        out.flush()?;
        Ok(())
    };
    let n = devices.len();
    let (reports, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        relay,
        workspace,
        workspace_bytes,
        view,
        verified: Default::default(),
        activity: tokio::sync::Notify::new(),
        reports,
        cancel: tokio_util::sync::CancellationToken::new(),
    });
    // The bench closes our stdin to stop us (or dies, which closes it too).
    std::thread::spawn({
        let cancel = shared.cancel.clone();
        move || {
            let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
            cancel.cancel();
        }
    });
    let mut tasks = tokio::task::JoinSet::new();
    let result = async {
        // Dial in waves: at most 64 handshakes at a time (the relay refuses beyond 256).
        let (mut connected, mut started) = (0, 0);
        let mut devices = devices.into_iter();
        while connected < n {
            while started - connected < 64
                && let Some(d) = devices.next()
            {
                tasks.spawn(receiver(d, shared.clone()));
                started += 1;
            }
            match tokio::time::timeout(Duration::from_secs(120), rx.recv()).await {
                Ok(Some(Report::Connected)) => connected += 1,
                Ok(Some(Report::Failed(e))) => bail!("{e}"),
                Ok(Some(Report::Got(..))) => {}
                Ok(None) | Err(_) => bail!("{connected} of {n} receivers connected, then silence"),
            }
        }
        say(format!("connected {n}"))?;
        let settle = Instant::now() + Duration::from_secs(300);
        while tokio::time::timeout(Duration::from_millis(500), shared.activity.notified())
            .await
            .is_ok()
        {
            if Instant::now() > settle {
                bail!("the receivers' connect-time sync did not settle in 300 s");
            }
        }
        if let Ok(Report::Failed(e)) = rx.try_recv() {
            bail!("{e}");
        }
        say(format!("settled {:.1}", proc_status_mb("VmRSS:")))?;
        let mut got: HashMap<crdt_model::MessageId, Vec<u64>> = HashMap::new();
        loop {
            let report = tokio::select! {
                _ = shared.cancel.cancelled() => return Ok(()),
                r = rx.recv() => r,
            };
            match report {
                Some(Report::Got(id, at)) => {
                    let times = got.entry(id).or_default();
                    times.push(at);
                    if times.len() == n {
                        let times: Vec<String> = times.iter().map(u64::to_string).collect();
                        say(format!("got {id} {}", times.join(" ")))?;
                        got.remove(&id);
                    }
                }
                Some(Report::Failed(e)) => bail!("{e}"),
                Some(Report::Connected) => {}
                None => bail!("every receiver stopped"),
            }
        }
    }
    .await;
    if let Err(e) = &result {
        // The bench reads this line; our exit status says the same.
        let _ = say(format!("failed {e:#}"));
    }
    shared.cancel.cancel();
    while tasks.join_next().await.is_some() {}
    result
}

/// Signed posts as a relay would receive them: one document chunk per message, 1,000 messages
/// to a bucket (one day each), in one workspace with one channel.
fn archive_records(total: usize) -> Result<Vec<sync_relay::archive::Record>> {
    use automerge::Automerge;
    use crdt_model::bucket::{self, NewPost};
    use crdt_model::channel::BucketKey;
    use crdt_model::{Identity, MessageId, device_actor, workspace};
    use sync_relay::archive::{DocKind, DocMeta, Record};

    let me = Identity::from_secrets([1; 32], [2; 32], "bench");
    let mut ws_doc = Automerge::new().with_actor(device_actor(&me.device_id()));
    let start = (peer::now_ms() / DAY_MS - total.div_ceil(1_000) as i64) * DAY_MS;
    let ws = workspace::create(&mut ws_doc, &me, "bench", [0; 16], start)?;
    let channel = crdt_model::DocId([7; 16]);
    workspace::put_channel(
        &mut ws_doc,
        &me,
        crdt_model::signed::ChannelInfo {
            workspace: ws,
            channel,
            name: "general".into(),
            topic: String::new(),
            private: false,
            at_ms: start,
        },
    )?;
    let ws_meta = DocMeta {
        id: ws,
        kind: DocKind::Workspace,
        workspace: ws,
        channel: None,
        bucket_key: None,
    };
    let mut out = vec![Record::chunk(ws_meta, &ws_doc, &[])];
    let mut rng = Rng::new(7);
    let mut bucket_doc = Automerge::new();
    let mut meta = None;
    for i in 0..total {
        if i % 1_000 == 0 {
            let key = BucketKey::day_of(start + (i / 1_000) as i64 * DAY_MS);
            bucket_doc = bucket::init(channel, key)?;
            bucket_doc.set_actor(device_actor(&me.device_id()));
            let m = DocMeta {
                id: bucket::bucket_id(channel, key),
                kind: DocKind::Bucket,
                workspace: ws,
                channel: Some(channel),
                bucket_key: Some(key.to_string()),
            };
            out.push(Record::chunk(m.clone(), &bucket_doc, &[]));
            meta = Some(m);
        }
        let before = bucket_doc.get_heads();
        let ts = start + (i / 1_000) as i64 * DAY_MS + (i % 1_000) as i64 * 60_000;
        let mut random = [0u8; 10];
        random[..8].copy_from_slice(&rng.next_u64().to_be_bytes());
        bucket::post(
            &mut bucket_doc,
            &me,
            NewPost {
                channel,
                id: MessageId::new(ts, random),
                ts_ms: ts,
                text: chat_line(&mut rng),
                mentions: vec![],
                reply_to: None,
                thread_root: None,
            },
        )?;
        out.push(Record::chunk(
            meta.clone().expect("set at i = 0"),
            &bucket_doc,
            &before,
        ));
    }
    Ok(out)
}

/// `flyt-bench archive`: messages submitted to the archive at a steady rate (as the relay's
/// sync engine hands them over), written to Postgres in batches. Lag is the time from a
/// message's submission to the commit of the transaction that archived it.
fn archive_bench(args: &[String]) -> Result<()> {
    use sync_relay::archive::{Archive, ArchiveConfig};
    let total = flag(args, "--messages", 10_000)?;
    let rate = flag(args, "--rate", 1_000)?.max(1);
    let url = args
        .iter()
        .position(|a| a == "--database-url")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let t = Instant::now();
    let records = archive_records(total)?;
    eprintln!(
        "prepared {total} signed messages in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let (url, throwaway) = match url {
            Some(u) => (u, None),
            None => {
                let name = format!("flyt_bench_{}", std::process::id());
                let base = "postgres://postgres@127.0.0.1:5432";
                let (c, conn) = tokio_postgres::connect(&format!("{base}/postgres"), tokio_postgres::NoTls)
                    .await
                    .context("connecting to Postgres at 127.0.0.1:5432 (or pass --database-url)")?;
                tokio::spawn(conn);
                c.batch_execute(&format!("CREATE DATABASE {name}")).await?;
                (format!("{base}/{name}"), Some((c, name)))
            }
        };
        let dir = tempfile::tempdir()?;
        let archive = Archive::open(&ArchiveConfig {
            database_url: Some(url),
            data_dir: dir.path().into(),
        })
        .await?;
        let mut commits = archive.commits();
        let collector = tokio::spawn(async move {
            let mut lags = Vec::new();
            let mut batches = 0usize;
            while let Ok(c) = commits.recv().await {
                batches += 1;
                lags.extend(c.submitted.iter().map(|s| millis(c.at - *s)));
            }
            (lags, batches)
        });
        let interval = std::time::Duration::from_secs_f64(1.0 / rate as f64);
        let start = tokio::time::Instant::now();
        let mut max_depth = 0;
        for (i, r) in records.into_iter().enumerate() {
            tokio::time::sleep_until(start + interval * i as u32).await;
            archive.submit([r]);
            if i % 100 == 0 {
                max_depth = max_depth.max(archive.status().queue_depth);
            }
        }
        let submitted_s = start.elapsed().as_secs_f64();
        if !archive.caught_up(std::time::Duration::from_secs(120)).await {
            bail!("the archive did not catch up within 120 s: {:?}", archive.status());
        }
        let elapsed_s = start.elapsed().as_secs_f64();
        let status = archive.status();
        archive.close(std::time::Duration::from_secs(5)).await;
        // The commits channel ends (and so the collector) only when the last handle is gone.
        drop(archive);
        let (lags, batches) = collector.await?;
        if let Some((c, name)) = throwaway {
            c.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .await?;
        }
        let lag = summarize(&lags);
        println!(
            "{:<40} {:>10} {:>10} {:>10}",
            "measurement", "p50", "p99", "max"
        );
        row("archive lag (submit -> commit)", "ms", &lag);
        let throughput = status.messages_archived as f64 / elapsed_s;
        println!(
            "archived {} messages in {elapsed_s:.2} s ({throughput:.0}/s, offered {rate}/s for {submitted_s:.2} s) in {batches} transactions; deepest queue {max_depth}",
            status.messages_archived
        );
        println!(
            "{}",
            json!({
                "bench": "archive",
                "messages": total,
                "offered_rate": rate,
                "archived": status.messages_archived,
                "throughput_per_s": throughput.round(),
                "transactions": batches,
                "lag_ms": { "p50": lag.p50, "p99": lag.p99, "max": lag.max },
                "max_queue_depth": max_depth,
                "target_lag_ms": 1000,
            })
        );
        Ok(())
    })
}
