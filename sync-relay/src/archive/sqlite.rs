//! The embedded SQLite archive (`archive.sqlite` in the relay's data directory), used when no
//! database URL is configured, so the relay archives out of the box. The same tables as the
//! Postgres archive, with an FTS5 index instead of a `tsvector`. Calls run on tokio's blocking
//! pool, never on the runtime's workers.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, params};

use super::{ArchiveError, ArchivedMessage, Batch, MessageOp, PageQuery, SCHEMA_VERSION};
use crdt_model::{DeviceId, DocId, Role};

/// Migrations, in order: `MIGRATIONS[i]` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE archive_documents (
    id         TEXT PRIMARY KEY,
    kind       TEXT NOT NULL CHECK (kind IN ('workspace', 'channel', 'bucket')),
    workspace  TEXT NOT NULL,
    channel    TEXT,
    bucket_key TEXT,
    heads      TEXT NOT NULL DEFAULT ''
) STRICT;
CREATE TABLE archive_chunks (
    seq  INTEGER PRIMARY KEY AUTOINCREMENT,
    doc  TEXT NOT NULL REFERENCES archive_documents (id),
    data BLOB NOT NULL
) STRICT;
CREATE INDEX archive_chunks_doc ON archive_chunks (doc, seq);
CREATE TABLE archive_sync_states (
    peer  TEXT NOT NULL,
    doc   TEXT NOT NULL,
    state BLOB NOT NULL,
    PRIMARY KEY (peer, doc)
) STRICT;
CREATE TABLE archive_workspaces (
    id    TEXT PRIMARY KEY,
    name  TEXT NOT NULL,
    owner TEXT
) STRICT;
CREATE TABLE archive_members (
    workspace TEXT NOT NULL,
    person    TEXT NOT NULL,
    name      TEXT NOT NULL,
    role      TEXT NOT NULL,
    PRIMARY KEY (workspace, person)
) STRICT;
CREATE TABLE archive_devices (
    workspace TEXT NOT NULL,
    device    TEXT NOT NULL,
    person    TEXT NOT NULL,
    PRIMARY KEY (workspace, device)
) STRICT;
CREATE TABLE archive_channels (
    id        TEXT PRIMARY KEY,
    workspace TEXT NOT NULL,
    name      TEXT NOT NULL,
    private   INTEGER NOT NULL
) STRICT;
CREATE TABLE archive_messages (
    rowid       INTEGER PRIMARY KEY,
    id          TEXT NOT NULL UNIQUE,
    workspace   TEXT NOT NULL,
    channel     TEXT NOT NULL,
    bucket      TEXT NOT NULL,
    author      TEXT NOT NULL,
    ts          INTEGER NOT NULL,
    text        TEXT NOT NULL,
    edited_ms   INTEGER,
    deleted     INTEGER NOT NULL,
    thread_root TEXT,
    reply_to    TEXT,
    verified    INTEGER NOT NULL
) STRICT;
CREATE INDEX archive_messages_timeline ON archive_messages (workspace, channel, ts, id);
CREATE VIRTUAL TABLE archive_messages_fts USING fts5 (
    text,
    content = 'archive_messages',
    content_rowid = 'rowid',
    tokenize = 'unicode61 remove_diacritics 2'
);
CREATE TRIGGER archive_messages_ai AFTER INSERT ON archive_messages BEGIN
    INSERT INTO archive_messages_fts (rowid, text) VALUES (new.rowid, new.text);
END;
CREATE TRIGGER archive_messages_ad AFTER DELETE ON archive_messages BEGIN
    INSERT INTO archive_messages_fts (archive_messages_fts, rowid, text)
        VALUES ('delete', old.rowid, old.text);
END;
CREATE TRIGGER archive_messages_au AFTER UPDATE OF text ON archive_messages BEGIN
    INSERT INTO archive_messages_fts (archive_messages_fts, rowid, text)
        VALUES ('delete', old.rowid, old.text);
    INSERT INTO archive_messages_fts (rowid, text) VALUES (new.rowid, new.text);
END;
"#];

/// The embedded archive: one connection, used from the blocking pool.
#[derive(Debug, Clone)]
pub struct SqliteArchive {
    conn: Arc<Mutex<Connection>>,
}

/// Brings the schema to [`SCHEMA_VERSION`] (`PRAGMA user_version`), refusing a newer one.
pub(crate) fn migrate(conn: &mut Connection) -> Result<(), ArchiveError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let found: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found > SCHEMA_VERSION {
        return Err(ArchiveError::NewerSchema { found });
    }
    for sql in MIGRATIONS.iter().skip(found as usize) {
        tx.execute_batch(sql)?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    Ok(())
}

const MESSAGE_COLUMNS: &str = "m.id, m.workspace, m.channel, m.bucket, m.author, m.ts, m.text, \
     m.edited_ms, m.deleted, m.thread_root, m.reply_to, m.verified";

fn message_from(r: &rusqlite::Row<'_>) -> rusqlite::Result<ArchivedMessage> {
    let edited_ms: Option<i64> = r.get(7)?;
    Ok(ArchivedMessage {
        id: r.get(0)?,
        workspace: r.get(1)?,
        channel: r.get(2)?,
        bucket: r.get(3)?,
        author: r.get(4)?,
        ts: r.get(5)?,
        text: r.get(6)?,
        edited: edited_ms.is_some(),
        edited_ms,
        deleted: r.get(8)?,
        thread_root: r.get(9)?,
        reply_to: r.get(10)?,
        verified: r.get(11)?,
    })
}

/// An FTS5 query matching every word of `q` (each quoted, so no query syntax gets through),
/// the last one as a prefix, like `flyt search`.
fn fts_query(q: &str) -> String {
    let words: Vec<String> = q
        .split_whitespace()
        .map(|w| format!("\"{}\"", w.replace('"', "\"\"")))
        .collect();
    let mut s = words.join(" ");
    if !s.is_empty() {
        s.push('*');
    }
    s
}

impl SqliteArchive {
    /// Opens (creating) `archive.sqlite` in `dir` and migrates it.
    pub async fn open(dir: &Path) -> Result<SqliteArchive, ArchiveError> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("archive.sqlite");
        let conn = tokio::task::spawn_blocking(move || -> Result<Connection, ArchiveError> {
            let mut conn = Connection::open(path)?;
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.pragma_update(None, "synchronous", "FULL")?;
            conn.busy_timeout(std::time::Duration::from_secs(5))?;
            // Stable query plans: see `peer::schema::stable_plans`.
            conn.set_db_config(
                rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
                true,
            )?;
            migrate(&mut conn)?;
            Ok(conn)
        })
        .await
        .map_err(|_| ArchiveError::Closed)??;
        Ok(SqliteArchive {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, ArchiveError> + Send + 'static,
    ) -> Result<T, ArchiveError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut c = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut c)
        })
        .await
        .map_err(|_| ArchiveError::Closed)?
    }

    pub(crate) async fn write(&self, b: &Batch) -> Result<(), ArchiveError> {
        // The batch is small next to a transaction's cost; cloning it lets the blocking pool
        // own it.
        let b = b.clone();
        self.call(move |c| write(c, &b)).await
    }

    pub(crate) async fn messages(
        &self,
        q: &PageQuery,
    ) -> Result<Vec<ArchivedMessage>, ArchiveError> {
        let (ws, ch) = (q.workspace.to_string(), q.channel.to_string());
        let limit = q.limit as i64;
        let before = q.before.map(|b| (b.to_string(), super::id_time_ms(&b)));
        self.call(move |c| {
            let rows = match before {
                None => c
                    .prepare_cached(&format!(
                        "SELECT {MESSAGE_COLUMNS} FROM archive_messages m
                         WHERE m.workspace = ?1 AND m.channel = ?2
                         ORDER BY m.ts DESC, m.id DESC LIMIT ?3"
                    ))?
                    .query_map(params![ws, ch, limit], message_from)?
                    .collect::<Result<Vec<_>, _>>()?,
                Some((id, ts)) => c
                    .prepare_cached(&format!(
                        "SELECT {MESSAGE_COLUMNS} FROM archive_messages m
                         WHERE m.workspace = ?1 AND m.channel = ?2
                           AND (m.ts, m.id) < (COALESCE((SELECT ts FROM archive_messages
                                                         WHERE id = ?4), ?5), ?4)
                         ORDER BY m.ts DESC, m.id DESC LIMIT ?3"
                    ))?
                    .query_map(params![ws, ch, limit, id, ts], message_from)?
                    .collect::<Result<Vec<_>, _>>()?,
            };
            Ok(rows)
        })
        .await
    }

    pub(crate) async fn search(
        &self,
        ws: DocId,
        q: &str,
        limit: usize,
    ) -> Result<Vec<ArchivedMessage>, ArchiveError> {
        let ws = ws.to_string();
        let q = fts_query(q);
        let limit = limit as i64;
        self.call(move |c| {
            Ok(c.prepare_cached(&format!(
                "SELECT {MESSAGE_COLUMNS} FROM archive_messages_fts f
                 JOIN archive_messages m ON m.rowid = f.rowid
                 WHERE archive_messages_fts MATCH ?2 AND m.workspace = ?1 AND NOT m.deleted
                 ORDER BY m.ts DESC, m.id DESC LIMIT ?3"
            ))?
            .query_map(params![ws, q, limit], message_from)?
            .collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    pub(crate) async fn device_role(
        &self,
        ws: DocId,
        device: DeviceId,
    ) -> Result<Option<Role>, ArchiveError> {
        let (ws, device) = (ws.to_string(), device.to_string());
        self.call(move |c| {
            let role: Option<String> = c
                .prepare_cached(
                    "SELECT m.role FROM archive_devices d JOIN archive_members m
                       ON m.workspace = d.workspace AND m.person = d.person
                     WHERE d.workspace = ?1 AND d.device = ?2",
                )?
                .query_row(params![ws, device], |r| r.get(0))
                .optional()?;
            Ok(role.and_then(|r| r.parse().ok()))
        })
        .await
    }

    pub(crate) async fn document(&self, doc: DocId) -> Result<Option<Vec<u8>>, ArchiveError> {
        let doc = doc.to_string();
        self.call(move |c| {
            let chunks: Vec<Vec<u8>> = c
                .prepare_cached("SELECT data FROM archive_chunks WHERE doc = ?1 ORDER BY seq")?
                .query_map([doc], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            Ok((!chunks.is_empty()).then(|| chunks.concat()))
        })
        .await
    }

    /// Every archived document's id and heads (as stored: `postgres::heads_text`).
    pub(crate) async fn heads(&self) -> Result<Vec<(String, String)>, ArchiveError> {
        self.call(|c| {
            Ok(c.prepare_cached("SELECT id, heads FROM archive_documents")?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?)
        })
        .await
    }

    /// Every archived sync state: (peer, document, state).
    pub(crate) async fn sync_states(&self) -> Result<Vec<(String, String, Vec<u8>)>, ArchiveError> {
        self.call(|c| {
            Ok(
                c.prepare_cached("SELECT peer, doc, state FROM archive_sync_states")?
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                    .collect::<Result<_, _>>()?,
            )
        })
        .await
    }

    pub(crate) async fn sync_state(
        &self,
        peer: DeviceId,
        doc: DocId,
    ) -> Result<Option<Vec<u8>>, ArchiveError> {
        let (peer, doc) = (peer.to_string(), doc.to_string());
        self.call(move |c| {
            Ok(c.prepare_cached(
                "SELECT state FROM archive_sync_states WHERE peer = ?1 AND doc = ?2",
            )?
            .query_row(params![peer, doc], |r| r.get(0))
            .optional()?)
        })
        .await
    }
}

fn write(c: &mut Connection, b: &Batch) -> Result<(), ArchiveError> {
    let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    for (chunk, _) in &b.chunks {
        let m = &chunk.meta;
        let id = m.id.to_string();
        tx.prepare_cached(
            "INSERT INTO archive_documents (id, kind, workspace, channel, bucket_key, heads)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (id) DO UPDATE SET heads = excluded.heads",
        )?
        .execute(params![
            id,
            m.kind.as_str(),
            m.workspace.to_string(),
            m.channel.map(|c| c.to_string()),
            m.bucket_key,
            super::postgres::heads_text(&chunk.heads),
        ])?;
        tx.prepare_cached("INSERT INTO archive_chunks (doc, data) VALUES (?1, ?2)")?
            .execute(params![id, chunk.data])?;
    }
    for (w, _) in b.workspaces.values() {
        tx.execute(
            "INSERT INTO archive_workspaces (id, name, owner) VALUES (?1, ?2, ?3)
             ON CONFLICT (id) DO UPDATE SET name = excluded.name, owner = excluded.owner",
            params![w.id, w.name, w.owner],
        )?;
        tx.execute("DELETE FROM archive_members WHERE workspace = ?1", [&w.id])?;
        for (p, n, r) in &w.members {
            tx.execute(
                "INSERT INTO archive_members (workspace, person, name, role) VALUES (?1, ?2, ?3, ?4)",
                params![w.id, p, n, r.as_str()],
            )?;
        }
        tx.execute("DELETE FROM archive_devices WHERE workspace = ?1", [&w.id])?;
        for (d, p) in &w.devices {
            tx.execute(
                "INSERT INTO archive_devices (workspace, device, person) VALUES (?1, ?2, ?3)",
                params![w.id, d, p],
            )?;
        }
        tx.execute("DELETE FROM archive_channels WHERE workspace = ?1", [&w.id])?;
        for (id, n, private) in &w.channels {
            tx.execute(
                "INSERT INTO archive_channels (id, workspace, name, private) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (id) DO UPDATE SET workspace = excluded.workspace,
                     name = excluded.name, private = excluded.private",
                params![id, w.id, n, private],
            )?;
        }
    }
    {
        let mut upsert = tx.prepare_cached(
            "INSERT INTO archive_messages (id, workspace, channel, bucket, author, ts, text,
                 edited_ms, deleted, thread_root, reply_to, verified)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
             ON CONFLICT (id) DO UPDATE SET text = excluded.text, edited_ms = excluded.edited_ms,
                 deleted = excluded.deleted, verified = excluded.verified",
        )?;
        let mut remove = tx.prepare_cached("DELETE FROM archive_messages WHERE id = ?1")?;
        for (id, (op, _)) in &b.messages {
            match op {
                MessageOp::Put(m) => {
                    upsert.execute(params![
                        m.id,
                        m.workspace,
                        m.channel,
                        m.bucket,
                        m.author,
                        m.ts,
                        m.text,
                        m.edited_ms,
                        m.deleted,
                        m.thread_root,
                        m.reply_to,
                        m.verified
                    ])?;
                }
                MessageOp::Gone => {
                    remove.execute([id])?;
                }
            }
        }
        let mut state = tx.prepare_cached(
            "INSERT INTO archive_sync_states (peer, doc, state) VALUES (?1, ?2, ?3)
             ON CONFLICT (peer, doc) DO UPDATE SET state = excluded.state",
        )?;
        for ((peer, doc), (s, _)) in &b.states {
            state.execute(params![peer.to_string(), doc.to_string(), s])?;
        }
    }
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn search_words_are_quoted_and_the_last_is_a_prefix() {
        assert_eq!(super::fts_query("hello wor"), "\"hello\" \"wor\"*");
        assert_eq!(super::fts_query("a\"b OR"), "\"a\"\"b\" \"OR\"*");
        assert_eq!(super::fts_query("  "), "");
    }
}
