//! Shared fixtures: a Flyt home in a temporary directory, raw views of its database.

use std::path::{Path, PathBuf};

use crdt_model::DocId;
use peer::{MessageRow, Store};
use rusqlite::Connection;
use rusqlite::types::Value;
use tempfile::TempDir;

/// The display name every test identity uses.
pub const NAME: &str = "alice";

/// A home: one database file in its own temporary directory.
pub struct Home {
    // Held so the directory lives as long as the home.
    _dir: TempDir,
    pub path: PathBuf,
}

impl Home {
    pub fn new() -> Home {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("flyt.db");
        Home { _dir: dir, path }
    }

    /// A new handle on the database.
    pub fn open(&self) -> Store {
        Store::open(&self.path).expect("open store")
    }

    /// A raw SQLite connection, for inspecting or damaging the file.
    pub fn raw(&self) -> Connection {
        raw(&self.path)
    }
}

pub fn raw(path: &Path) -> Connection {
    let conn = Connection::open(path).expect("raw connection");
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .expect("busy timeout");
    conn
}

/// A home with an identity, a workspace `acme` and a channel `general`.
pub fn setup() -> (Home, Store, DocId) {
    let home = Home::new();
    let mut store = home.open();
    store.init(NAME).expect("init");
    store.create_workspace("acme").expect("workspace");
    let ch = store
        .create_channel("general", "everything", false)
        .expect("channel");
    (home, store, ch)
}

/// Table name → rows, every value of every column (optionally leaving some out).
pub type Dump = Vec<(String, Vec<Vec<Value>>)>;

fn dump_tables(path: &Path, tables: &[&str], skip: &[&str]) -> Dump {
    let conn = raw(path);
    tables
        .iter()
        .map(|t| {
            let cols: Vec<String> = conn
                .prepare(&format!("PRAGMA table_info({t})"))
                .unwrap()
                .query_map([], |r| r.get::<_, String>(1))
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap()
                .into_iter()
                .filter(|c| !skip.contains(&format!("{t}.{c}").as_str()))
                .collect();
            assert!(!cols.is_empty(), "table {t} has columns");
            let order: Vec<String> = (1..=cols.len()).map(|i| i.to_string()).collect();
            let sql = format!(
                "SELECT {} FROM {t} ORDER BY {}",
                cols.join(", "),
                order.join(", ")
            );
            let mut stmt = conn.prepare(&sql).unwrap();
            let n = cols.len();
            let rows = stmt
                .query_map([], |r| (0..n).map(|i| r.get::<_, Value>(i)).collect())
                .unwrap()
                .collect::<Result<Vec<Vec<Value>>, _>>()
                .unwrap();
            (t.to_string(), rows)
        })
        .collect()
}

/// Every projection table, deterministically ordered; `messages.rowid` is left out (a rebuild
/// renumbers rows, and nothing shows it).
pub fn dump_projection(path: &Path) -> Dump {
    dump_tables(
        path,
        &[
            "workspaces",
            "members",
            "devices",
            "channels",
            "messages",
            "reactions",
        ],
        &["messages.rowid"],
    )
}

/// Every table of the database (documents, chunks, projection, local state), all columns.
pub fn dump_everything(path: &Path) -> Dump {
    dump_tables(
        path,
        &[
            "meta",
            "docs",
            "doc_chunks",
            "workspaces",
            "members",
            "devices",
            "channels",
            "messages",
            "reactions",
            "read_state",
        ],
        &[],
    )
}

/// Asserts two dumps are equal, naming the first table and row that differ.
#[track_caller]
pub fn assert_same(before: &Dump, after: &Dump, what: &str) {
    assert_eq!(before.len(), after.len());
    for ((t, a), (_, b)) in before.iter().zip(after) {
        for (i, (ra, rb)) in a.iter().zip(b).enumerate() {
            assert_eq!(ra, rb, "{what}: table {t} differs at row {i}");
        }
        assert_eq!(a.len(), b.len(), "{what}: table {t} row count differs");
    }
}

/// FTS5's own consistency check of the search index against the messages table.
#[track_caller]
pub fn assert_fts_consistent(path: &Path) {
    raw(path)
        .execute(
            "INSERT INTO messages_fts (messages_fts, rank) VALUES ('integrity-check', 1)",
            [],
        )
        .expect("search index matches the messages");
}

/// The whole main timeline of a channel.
pub fn timeline(store: &Store, ch: DocId) -> Vec<MessageRow> {
    store.read(ch, 10_000, None, None).expect("read")
}

pub fn ids(rows: &[MessageRow]) -> Vec<String> {
    rows.iter().map(|m| m.id.clone()).collect()
}

/// Rows in display order: by time, then id.
pub fn in_display_order(mut rows: Vec<MessageRow>) -> Vec<MessageRow> {
    rows.sort_by(|a, b| (a.ts, &a.id).cmp(&(b.ts, &b.id)));
    rows
}

pub fn count(path: &Path, sql: &str) -> i64 {
    raw(path).query_row(sql, [], |r| r.get(0)).expect("count")
}
