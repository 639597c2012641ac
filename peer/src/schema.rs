//! The SQLite schema and its migrations.
//!
//! Two halves: the **documents** (`docs`, `doc_chunks`: Automerge bytes, the source of truth)
//! and the **projection** (everything else: what screens and searches read). The projection
//! can always be rebuilt from the documents (`Store::rebuild_projection`).

use rusqlite::Connection;

use crate::StoreError;

/// Opens (creating if needed) a Flyt database at `path`: WAL mode, full fsync on commit, a busy
/// timeout so several processes can share it, and migrations.
pub fn open(path: &std::path::Path) -> Result<Connection, StoreError> {
    let mut conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: a commit is fsync'd before it returns, so an acknowledged message survives a
    // crash of the process or of the machine.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    stable_plans(&conn)?;
    // Checkpoints copy the WAL into the database file and fsync it: milliseconds that should
    // not land on a send. They run in `maintain` (idle time); the automatic one stays as a
    // bound (10,000 pages, ~40 MB) for a writer that never gets idle time.
    conn.pragma_update(None, "wal_autocheckpoint", 10_000)?;
    migrate(&mut conn)?;
    Ok(conn)
}

/// Turns on SQLite's query planner stability guarantee (QPSG). Without it, SQLite 3.54
/// recompiles many cached statements on every new binding (a range like `seq > ?2`, a
/// parameter a join carries to another table) because the value might pick a better plan:
/// on a node that was a fifth of the store thread's time per message. Flyt never runs
/// `ANALYZE`, so there is no better plan to pick.
pub fn stable_plans(conn: &Connection) -> Result<(), StoreError> {
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    Ok(())
}

/// The schema version this build writes. A database with a newer one is refused.
pub const SCHEMA_VERSION: i64 = 4;

const V1: &str = r#"
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;

-- Every Automerge document this node holds.
CREATE TABLE docs (
    id         TEXT PRIMARY KEY,
    kind       TEXT NOT NULL CHECK (kind IN ('workspace', 'channel', 'bucket')),
    workspace  TEXT NOT NULL,
    channel    TEXT,
    bucket_key TEXT
) STRICT;
CREATE INDEX docs_channel ON docs (channel, bucket_key);

-- A document is the concatenation of its chunks in seq order: a full save (snapshot = 1)
-- followed by incremental saves. Compaction writes a new snapshot and drops older chunks.
CREATE TABLE doc_chunks (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    doc      TEXT NOT NULL,
    snapshot INTEGER NOT NULL,
    data     BLOB NOT NULL
) STRICT;
CREATE INDEX doc_chunks_doc ON doc_chunks (doc, seq);

-- Projection.
CREATE TABLE workspaces (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    owner      TEXT,
    created_ms INTEGER NOT NULL
) STRICT;

CREATE TABLE members (
    workspace TEXT NOT NULL,
    person    TEXT NOT NULL,
    name      TEXT NOT NULL,
    role      TEXT NOT NULL,
    PRIMARY KEY (workspace, person)
) STRICT;

CREATE TABLE devices (
    workspace TEXT NOT NULL,
    device    TEXT NOT NULL,
    person    TEXT NOT NULL,
    PRIMARY KEY (workspace, device)
) STRICT;

CREATE TABLE channels (
    id         TEXT PRIMARY KEY,
    workspace  TEXT NOT NULL,
    name       TEXT NOT NULL,
    topic      TEXT NOT NULL,
    private    INTEGER NOT NULL,
    created_by TEXT NOT NULL,
    updated_ms INTEGER NOT NULL
) STRICT;
CREATE INDEX channels_ws ON channels (workspace, name);

CREATE TABLE messages (
    rowid       INTEGER PRIMARY KEY,
    id          TEXT NOT NULL UNIQUE,
    channel     TEXT NOT NULL,
    workspace   TEXT NOT NULL,
    bucket      TEXT NOT NULL,
    author      TEXT NOT NULL,
    ts          INTEGER NOT NULL,
    text        TEXT NOT NULL,
    mentions    TEXT NOT NULL,
    reply_to    TEXT,
    thread_root TEXT,
    edited_ms   INTEGER,
    deleted     INTEGER NOT NULL,
    verified    INTEGER NOT NULL
) STRICT;
CREATE INDEX messages_timeline ON messages (channel, thread_root, ts, id);
CREATE INDEX messages_thread ON messages (thread_root, ts, id) WHERE thread_root IS NOT NULL;
CREATE INDEX messages_bucket ON messages (bucket);

CREATE TABLE reactions (
    message TEXT NOT NULL,
    emoji   TEXT NOT NULL,
    person  TEXT NOT NULL,
    PRIMARY KEY (message, emoji, person)
) STRICT, WITHOUT ROWID;

-- Local read position per channel (this device's; not synced yet).
CREATE TABLE read_state (
    channel      TEXT PRIMARY KEY,
    last_read_ts INTEGER NOT NULL,
    last_read_id TEXT NOT NULL
) STRICT;

CREATE VIRTUAL TABLE messages_fts USING fts5 (
    text,
    content = 'messages',
    content_rowid = 'rowid',
    tokenize = 'unicode61 remove_diacritics 2'
);
CREATE TRIGGER messages_ai AFTER INSERT ON messages BEGIN
    INSERT INTO messages_fts (rowid, text) VALUES (new.rowid, new.text);
END;
CREATE TRIGGER messages_ad AFTER DELETE ON messages BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, text) VALUES ('delete', old.rowid, old.text);
END;
CREATE TRIGGER messages_au AFTER UPDATE OF text ON messages BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, text) VALUES ('delete', old.rowid, old.text);
    INSERT INTO messages_fts (rowid, text) VALUES (new.rowid, new.text);
END;
"#;

const V2: &str = r#"
-- automerge::sync::State per (peer device, document), saved when a connection ends.
CREATE TABLE sync_state (
    peer  TEXT NOT NULL,
    doc   TEXT NOT NULL,
    state BLOB NOT NULL,
    PRIMARY KEY (peer, doc)
) STRICT, WITHOUT ROWID;

-- Workspaces this node is joining: the inviter's device may connect and offer the workspace
-- document before this node holds it.
CREATE TABLE joining (
    workspace TEXT PRIMARY KEY,
    inviter   TEXT NOT NULL
) STRICT;

-- Peers to keep connected to (device -> its last known addresses), and this node's own
-- listening addresses (written by a running node, read by `flyt invite`).
CREATE TABLE peers (
    device     TEXT PRIMARY KEY,
    addrs      TEXT NOT NULL,
    updated_ms INTEGER NOT NULL
) STRICT;

-- Invites this node issued: single use, so redemption is recorded.
CREATE TABLE invites (
    nonce      TEXT PRIMARY KEY,
    workspace  TEXT NOT NULL,
    role       TEXT NOT NULL,
    expires_ms INTEGER NOT NULL,
    used_by    TEXT,
    used_ms    INTEGER
) STRICT;
"#;

const V3: &str = r#"
-- DMs are channels too, listed from their own document rather than the workspace's.
ALTER TABLE channels ADD COLUMN dm INTEGER NOT NULL DEFAULT 0;

-- Who is in each private channel and DM (from the channel document, verified).
CREATE TABLE channel_members (
    channel TEXT NOT NULL,
    person  TEXT NOT NULL,
    PRIMARY KEY (channel, person)
) STRICT, WITHOUT ROWID;
"#;

const V4: &str = r#"
-- When a sync message last went either way with a peer, kept when the connection ends (so
-- `status` can say when an offline peer was last in touch).
CREATE TABLE peer_last_sync (
    device TEXT PRIMARY KEY,
    at_ms  INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
"#;

/// Brings the database to [`SCHEMA_VERSION`], refusing one written by a newer build.
pub fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            found: version,
            known: SCHEMA_VERSION,
        });
    }
    for (target, sql) in [(1, V1), (2, V2), (3, V3), (4, V4)] {
        if version >= target {
            continue;
        }
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        // Another process may have migrated while we waited for the write lock.
        let now: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if now < target {
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", target)?;
        }
        tx.commit()?;
    }
    Ok(())
}
