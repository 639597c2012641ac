//! The Postgres archive, through `tokio-postgres`.
//!
//! Tables: `archive_schema` (the version), `archive_documents` + `archive_chunks` (every
//! document as the concatenation of its chunks), `archive_sync_states`, and the projection
//! `archive_workspaces`, `archive_members`, `archive_devices`, `archive_channels`,
//! `archive_messages` (with a generated `tsvector` column and a GIN index on it). A batch is one
//! transaction of a few array-parameter statements (`UNNEST`), so a 2,000-message batch is one
//! round trip per table, not per row.
//!
//! The connection is made again whenever it broke: a write after Postgres came back just works.

use std::collections::BTreeMap;

use tokio::sync::Mutex;
use tokio_postgres::{Client, NoTls};

use super::{ArchiveError, ArchivedMessage, Batch, DocMeta, MessageOp, PageQuery, SCHEMA_VERSION};
use crdt_model::{DeviceId, DocId, Role};

/// Migrations, in order: `MIGRATIONS[i]` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE archive_documents (
    id         TEXT PRIMARY KEY,
    kind       TEXT NOT NULL CHECK (kind IN ('workspace', 'channel', 'bucket')),
    workspace  TEXT NOT NULL,
    channel    TEXT,
    bucket_key TEXT,
    heads      TEXT NOT NULL DEFAULT '',
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX archive_documents_ws ON archive_documents (workspace);
CREATE TABLE archive_chunks (
    seq  BIGSERIAL PRIMARY KEY,
    doc  TEXT NOT NULL REFERENCES archive_documents (id),
    data BYTEA NOT NULL
);
CREATE INDEX archive_chunks_doc ON archive_chunks (doc, seq);
CREATE TABLE archive_sync_states (
    peer  TEXT NOT NULL,
    doc   TEXT NOT NULL,
    state BYTEA NOT NULL,
    PRIMARY KEY (peer, doc)
);
CREATE TABLE archive_workspaces (
    id    TEXT PRIMARY KEY,
    name  TEXT NOT NULL,
    owner TEXT
);
CREATE TABLE archive_members (
    workspace TEXT NOT NULL,
    person    TEXT NOT NULL,
    name      TEXT NOT NULL,
    role      TEXT NOT NULL,
    PRIMARY KEY (workspace, person)
);
CREATE TABLE archive_devices (
    workspace TEXT NOT NULL,
    device    TEXT NOT NULL,
    person    TEXT NOT NULL,
    PRIMARY KEY (workspace, device)
);
CREATE TABLE archive_channels (
    id        TEXT PRIMARY KEY,
    workspace TEXT NOT NULL,
    name      TEXT NOT NULL,
    private   BOOLEAN NOT NULL
);
CREATE TABLE archive_messages (
    id          TEXT PRIMARY KEY,
    workspace   TEXT NOT NULL,
    channel     TEXT NOT NULL,
    bucket      TEXT NOT NULL,
    author      TEXT NOT NULL,
    ts          BIGINT NOT NULL,
    text        TEXT NOT NULL,
    edited_ms   BIGINT,
    deleted     BOOLEAN NOT NULL,
    thread_root TEXT,
    reply_to    TEXT,
    verified    BOOLEAN NOT NULL,
    tsv         TSVECTOR GENERATED ALWAYS AS (to_tsvector('simple', text)) STORED
);
CREATE INDEX archive_messages_timeline ON archive_messages (workspace, channel, ts DESC, id DESC);
CREATE INDEX archive_messages_tsv ON archive_messages USING GIN (tsv);
"#];

/// The Postgres archive: one connection, re-made when it broke.
#[derive(Debug)]
pub struct PgArchive {
    url: String,
    client: Mutex<Option<Client>>,
}

async fn connect(url: &str) -> Result<Client, ArchiveError> {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!("archive connection ended: {e}");
        }
    });
    Ok(client)
}

/// Brings the schema to [`SCHEMA_VERSION`], refusing a newer one. Concurrent relays on one
/// database serialise on an advisory lock.
pub(crate) async fn migrate(client: &mut Client) -> Result<(), ArchiveError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock(7262871)", &[])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS archive_schema (
             one     BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one),
             version BIGINT NOT NULL
         )",
    )
    .await?;
    let found: i64 = tx
        .query_opt("SELECT version FROM archive_schema", &[])
        .await?
        .map_or(0, |r| r.get(0));
    if found > SCHEMA_VERSION {
        return Err(ArchiveError::NewerSchema { found });
    }
    for (v, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        tx.batch_execute(sql).await?;
        tracing::info!(version = v + 1, "archive schema migrated");
    }
    tx.execute(
        "INSERT INTO archive_schema (one, version) VALUES (TRUE, $1)
         ON CONFLICT (one) DO UPDATE SET version = excluded.version",
        &[&SCHEMA_VERSION],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

fn role_from(s: &str) -> Option<Role> {
    s.parse().ok()
}

fn message_from(r: &tokio_postgres::Row) -> ArchivedMessage {
    let edited_ms: Option<i64> = r.get("edited_ms");
    ArchivedMessage {
        id: r.get("id"),
        workspace: r.get("workspace"),
        channel: r.get("channel"),
        bucket: r.get("bucket"),
        author: r.get("author"),
        ts: r.get("ts"),
        text: r.get("text"),
        edited: edited_ms.is_some(),
        edited_ms,
        deleted: r.get("deleted"),
        thread_root: r.get("thread_root"),
        reply_to: r.get("reply_to"),
        verified: r.get("verified"),
    }
}

const MESSAGE_COLUMNS: &str = "id, workspace, channel, bucket, author, ts, text, edited_ms, deleted, thread_root, reply_to, verified";

impl PgArchive {
    /// Connects and migrates. An unreachable database or a newer schema is an error here (the
    /// relay does not start on a wrong URL); later outages are retried.
    pub async fn connect(url: &str) -> Result<PgArchive, ArchiveError> {
        let mut client = connect(url).await?;
        migrate(&mut client).await?;
        Ok(PgArchive {
            url: url.to_owned(),
            client: Mutex::new(Some(client)),
        })
    }

    /// The live client, reconnecting (and re-checking the schema) if the last one broke.
    async fn client(&self) -> Result<tokio::sync::MutexGuard<'_, Option<Client>>, ArchiveError> {
        let mut guard = self.client.lock().await;
        if guard.as_ref().is_none_or(|c| c.is_closed()) {
            *guard = None;
            let mut c = connect(&self.url).await?;
            migrate(&mut c).await?;
            *guard = Some(c);
        }
        Ok(guard)
    }

    /// Runs `f` on the client; a failure drops the connection so the next call makes a new one.
    async fn with<T>(
        &self,
        f: impl AsyncFnOnce(&mut Client) -> Result<T, ArchiveError>,
    ) -> Result<T, ArchiveError> {
        let mut guard = self.client().await?;
        let client = guard.as_mut().expect("connected above");
        let out = f(client).await;
        if out.is_err() {
            *guard = None;
        }
        out
    }

    pub(crate) async fn ping(&self) -> Result<(), ArchiveError> {
        self.with(async |c| {
            c.simple_query("SELECT 1").await?;
            Ok(())
        })
        .await
    }

    pub(crate) async fn write(&self, b: &Batch) -> Result<(), ArchiveError> {
        self.with(async |c| write(c, b).await).await
    }

    pub(crate) async fn messages(
        &self,
        q: &PageQuery,
    ) -> Result<Vec<ArchivedMessage>, ArchiveError> {
        let (ws, ch) = (q.workspace.to_string(), q.channel.to_string());
        let limit = q.limit as i64;
        self.with(async |c| {
            let rows = match q.before {
                None => {
                    c.query(
                        format!(
                            "SELECT {MESSAGE_COLUMNS} FROM archive_messages
                             WHERE workspace = $1 AND channel = $2
                             ORDER BY ts DESC, id DESC LIMIT $3"
                        )
                        .as_str(),
                        &[&ws, &ch, &limit],
                    )
                    .await?
                }
                Some(before) => {
                    let ts = super::id_time_ms(&before);
                    let id = before.to_string();
                    // The cursor message's own time when archived, else the time in its id.
                    c.query(
                        format!(
                            "SELECT {MESSAGE_COLUMNS} FROM archive_messages
                             WHERE workspace = $1 AND channel = $2
                               AND (ts, id) < (COALESCE((SELECT ts FROM archive_messages WHERE id = $4), $5), $4)
                             ORDER BY ts DESC, id DESC LIMIT $3"
                        )
                        .as_str(),
                        &[&ws, &ch, &limit, &id, &ts],
                    )
                    .await?
                }
            };
            Ok(rows.iter().map(message_from).collect())
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
        let limit = limit as i64;
        self.with(async |c| {
            let rows = c
                .query(
                    format!(
                        "SELECT {MESSAGE_COLUMNS} FROM archive_messages
                         WHERE workspace = $1 AND NOT deleted
                           AND tsv @@ websearch_to_tsquery('simple', $2)
                         ORDER BY ts DESC, id DESC LIMIT $3"
                    )
                    .as_str(),
                    &[&ws, &q, &limit],
                )
                .await?;
            Ok(rows.iter().map(message_from).collect())
        })
        .await
    }

    pub(crate) async fn device_role(
        &self,
        ws: DocId,
        device: DeviceId,
    ) -> Result<Option<Role>, ArchiveError> {
        let (ws, device) = (ws.to_string(), device.to_string());
        self.with(async |c| {
            let row = c
                .query_opt(
                    "SELECT m.role FROM archive_devices d JOIN archive_members m
                       ON m.workspace = d.workspace AND m.person = d.person
                     WHERE d.workspace = $1 AND d.device = $2",
                    &[&ws, &device],
                )
                .await?;
            Ok(row.and_then(|r| role_from(r.get(0))))
        })
        .await
    }

    pub(crate) async fn document(&self, doc: DocId) -> Result<Option<Vec<u8>>, ArchiveError> {
        let doc = doc.to_string();
        self.with(async |c| {
            let rows = c
                .query(
                    "SELECT data FROM archive_chunks WHERE doc = $1 ORDER BY seq",
                    &[&doc],
                )
                .await?;
            if rows.is_empty() {
                return Ok(None);
            }
            Ok(Some(
                rows.iter().flat_map(|r| r.get::<_, Vec<u8>>(0)).collect(),
            ))
        })
        .await
    }

    /// Every archived document's id and heads (as stored: [`heads_text`]).
    pub(crate) async fn heads(&self) -> Result<Vec<(String, String)>, ArchiveError> {
        self.with(async |c| {
            let rows = c
                .query("SELECT id, heads FROM archive_documents", &[])
                .await?;
            Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        })
        .await
    }

    /// Every archived sync state: (peer, document, state).
    pub(crate) async fn sync_states(&self) -> Result<Vec<(String, String, Vec<u8>)>, ArchiveError> {
        self.with(async |c| {
            let rows = c
                .query("SELECT peer, doc, state FROM archive_sync_states", &[])
                .await?;
            Ok(rows
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2)))
                .collect())
        })
        .await
    }

    pub(crate) async fn sync_state(
        &self,
        peer: DeviceId,
        doc: DocId,
    ) -> Result<Option<Vec<u8>>, ArchiveError> {
        let (peer, doc) = (peer.to_string(), doc.to_string());
        self.with(async |c| {
            let row = c
                .query_opt(
                    "SELECT state FROM archive_sync_states WHERE peer = $1 AND doc = $2",
                    &[&peer, &doc],
                )
                .await?;
            Ok(row.map(|r| r.get(0)))
        })
        .await
    }
}

/// Heads as stored ([`heads_text`]) read back; `None` if they do not parse.
pub(crate) fn parse_heads(text: &str) -> Option<Vec<automerge::ChangeHash>> {
    text.split(',')
        .filter(|h| !h.is_empty())
        .map(|h| h.parse().ok())
        .collect()
}

/// Heads as stored: hex hashes joined by commas.
pub(crate) fn heads_text(heads: &[automerge::ChangeHash]) -> String {
    heads
        .iter()
        .map(|h| h.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

async fn write(c: &mut Client, b: &Batch) -> Result<(), ArchiveError> {
    let tx = c.transaction().await?;
    if !b.chunks.is_empty() {
        // One statement per table, not two round trips per chunk: each document once, with
        // the heads of its last chunk here; the chunks in submission order (their `seq`).
        let mut docs: BTreeMap<String, (&DocMeta, &[automerge::ChangeHash])> = BTreeMap::new();
        for (chunk, _) in &b.chunks {
            docs.insert(chunk.meta.id.to_string(), (&chunk.meta, &chunk.heads));
        }
        let ids: Vec<&str> = docs.keys().map(String::as_str).collect();
        let kinds: Vec<&str> = docs.values().map(|(m, _)| m.kind.as_str()).collect();
        let workspaces: Vec<String> = docs
            .values()
            .map(|(m, _)| m.workspace.to_string())
            .collect();
        let channels: Vec<Option<String>> = docs
            .values()
            .map(|(m, _)| m.channel.map(|c| c.to_string()))
            .collect();
        let keys: Vec<Option<&str>> = docs
            .values()
            .map(|(m, _)| m.bucket_key.as_deref())
            .collect();
        let heads: Vec<String> = docs.values().map(|(_, h)| heads_text(h)).collect();
        tx.execute(
            "INSERT INTO archive_documents (id, kind, workspace, channel, bucket_key, heads)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                 $6::text[])
             ON CONFLICT (id) DO UPDATE SET heads = excluded.heads, updated_at = now()",
            &[&ids, &kinds, &workspaces, &channels, &keys, &heads],
        )
        .await?;
        let chunk_docs: Vec<String> = b
            .chunks
            .iter()
            .map(|(c, _)| c.meta.id.to_string())
            .collect();
        let data: Vec<&[u8]> = b.chunks.iter().map(|(c, _)| c.data.as_slice()).collect();
        tx.execute(
            "INSERT INTO archive_chunks (doc, data)
             SELECT d, x FROM UNNEST($1::text[], $2::bytea[]) WITH ORDINALITY AS u (d, x, n)
             ORDER BY n",
            &[&chunk_docs, &data],
        )
        .await?;
    }
    for (w, _) in b.workspaces.values() {
        tx.execute(
            "INSERT INTO archive_workspaces (id, name, owner) VALUES ($1, $2, $3)
             ON CONFLICT (id) DO UPDATE SET name = excluded.name, owner = excluded.owner",
            &[&w.id, &w.name, &w.owner],
        )
        .await?;
        tx.execute("DELETE FROM archive_members WHERE workspace = $1", &[&w.id])
            .await?;
        let people: Vec<&str> = w.members.iter().map(|m| m.0.as_str()).collect();
        let names: Vec<&str> = w.members.iter().map(|m| m.1.as_str()).collect();
        let roles: Vec<&str> = w.members.iter().map(|m| m.2.as_str()).collect();
        tx.execute(
            "INSERT INTO archive_members (workspace, person, name, role)
             SELECT $1::text, * FROM UNNEST($2::text[], $3::text[], $4::text[])",
            &[&w.id, &people, &names, &roles],
        )
        .await?;
        tx.execute("DELETE FROM archive_devices WHERE workspace = $1", &[&w.id])
            .await?;
        let (devices, persons): (Vec<&str>, Vec<&str>) = w
            .devices
            .iter()
            .map(|(d, p)| (d.as_str(), p.as_str()))
            .unzip();
        tx.execute(
            "INSERT INTO archive_devices (workspace, device, person)
             SELECT $1::text, * FROM UNNEST($2::text[], $3::text[])",
            &[&w.id, &devices, &persons],
        )
        .await?;
        tx.execute(
            "DELETE FROM archive_channels WHERE workspace = $1",
            &[&w.id],
        )
        .await?;
        let ids: Vec<&str> = w.channels.iter().map(|c| c.0.as_str()).collect();
        let names: Vec<&str> = w.channels.iter().map(|c| c.1.as_str()).collect();
        let private: Vec<bool> = w.channels.iter().map(|c| c.2).collect();
        tx.execute(
            "INSERT INTO archive_channels (id, workspace, name, private)
             SELECT i, $1::text, n, p FROM UNNEST($2::text[], $3::text[], $4::bool[]) AS u (i, n, p)
             ON CONFLICT (id) DO UPDATE SET workspace = excluded.workspace,
                 name = excluded.name, private = excluded.private",
            &[&w.id, &ids, &names, &private],
        )
        .await?;
    }
    let puts: Vec<&ArchivedMessage> = b
        .messages
        .values()
        .filter_map(|(op, _)| match op {
            MessageOp::Put(m) => Some(m.as_ref()),
            MessageOp::Gone => None,
        })
        .collect();
    if !puts.is_empty() {
        let col =
            |f: fn(&ArchivedMessage) -> &str| puts.iter().map(|m| f(m)).collect::<Vec<&str>>();
        let ids = col(|m| &m.id);
        let ws = col(|m| &m.workspace);
        let ch = col(|m| &m.channel);
        let bu = col(|m| &m.bucket);
        let au = col(|m| &m.author);
        let text = col(|m| &m.text);
        let ts: Vec<i64> = puts.iter().map(|m| m.ts).collect();
        let edited: Vec<Option<i64>> = puts.iter().map(|m| m.edited_ms).collect();
        let deleted: Vec<bool> = puts.iter().map(|m| m.deleted).collect();
        let verified: Vec<bool> = puts.iter().map(|m| m.verified).collect();
        let thread: Vec<Option<&str>> = puts.iter().map(|m| m.thread_root.as_deref()).collect();
        let reply: Vec<Option<&str>> = puts.iter().map(|m| m.reply_to.as_deref()).collect();
        tx.execute(
            "INSERT INTO archive_messages (id, workspace, channel, bucket, author, ts, text,
                 edited_ms, deleted, thread_root, reply_to, verified)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                 $6::bigint[], $7::text[], $8::bigint[], $9::bool[], $10::text[], $11::text[],
                 $12::bool[])
             ON CONFLICT (id) DO UPDATE SET text = excluded.text, edited_ms = excluded.edited_ms,
                 deleted = excluded.deleted, verified = excluded.verified",
            &[
                &ids, &ws, &ch, &bu, &au, &ts, &text, &edited, &deleted, &thread, &reply, &verified,
            ],
        )
        .await?;
    }
    let gone: Vec<&str> = b
        .messages
        .iter()
        .filter(|(_, (op, _))| matches!(op, MessageOp::Gone))
        .map(|(id, _)| id.as_str())
        .collect();
    if !gone.is_empty() {
        tx.execute(
            "DELETE FROM archive_messages WHERE id = ANY($1::text[])",
            &[&gone],
        )
        .await?;
    }
    if !b.states.is_empty() {
        let (peers, docs): (Vec<String>, Vec<String>) = b
            .states
            .keys()
            .map(|(p, d)| (p.to_string(), d.to_string()))
            .unzip();
        let states: Vec<&[u8]> = b.states.values().map(|(s, _)| s.as_slice()).collect();
        tx.execute(
            "INSERT INTO archive_sync_states (peer, doc, state)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::bytea[])
             ON CONFLICT (peer, doc) DO UPDATE SET state = excluded.state",
            &[&peers, &docs, &states],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}
