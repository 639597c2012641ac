//! `flyt-bench`: Flyt's performance targets, measured.
//!
//! `cargo run --release --bin flyt-bench -- local` builds a 100,000-message channel in a fresh
//! home and measures the local paths: send (backend), read the newest 50 (warm, and cold in a
//! new process), full-text search, and sizes. It prints a table, then one JSON object as its
//! last line.

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
         \n  local   send / read / open / search on a 100k-message channel (SQLite, one process)"
    );
    std::process::exit(2);
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("local") => local(&args[1..]),
        Some("open-cold") => open_cold(&args[1..]),
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
    let days = total.div_ceil(1_000) as i64;
    let start = (peer::now_ms() / DAY_MS - days) * DAY_MS;
    let t = Instant::now();
    let mut left = total;
    for d in 0..days {
        let n = left.min(1_000);
        left -= n;
        let items: Vec<(i64, String)> = (0..n)
            .map(|i| (start + d * DAY_MS + i as i64 * 60_000, chat_line(&mut rng)))
            .collect();
        store.post_batch(channel, &items)?;
    }
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
    let stat = |s: &Summary| json!({ "p50": s.p50, "p99": s.p99, "max": s.max, "n": s.n });
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
