//! Document storage: Automerge documents as append-only chunks in SQLite, with an in-memory
//! cache kept fresh against other processes writing the same database.
//!
//! Every write happens inside an IMMEDIATE transaction (SQLite's write lock). Before touching a
//! document the writer loads any chunks other processes appended since it last looked, so a
//! change is always made on top of everything already durable, and its incremental save is a
//! new chunk in the same transaction as the projection rows it produces.

use std::collections::HashMap;

use automerge::{
    Automerge, AutomergeError, ChangeHash, LoadOptions, OnPartialLoad, ReadDoc, VerificationMode,
};
use crdt_model::{DocId, device_actor};
use rusqlite::{OptionalExtension, Transaction, params};

use crate::StoreError;

/// A document is due for compaction (`Store::maintain`, in idle time) after this many
/// incremental chunks...
const COMPACT_AFTER: usize = 64;
/// ...or once its incremental chunks outweigh its snapshot (and this floor): a snapshot is
/// compressed and columnar, incremental saves are not, so a bulk import would otherwise stay
/// twice its compacted size on disk.
const COMPACT_BYTES_FLOOR: usize = 32 * 1024;
/// Compaction happens on the write path only past this many times what makes it due: a bound
/// on storage and load time for a node that never gets idle time.
const INLINE_FACTOR: usize = 16;

/// What kind of document, and where it belongs (the `docs` row).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocMeta {
    /// "workspace", "channel" or "bucket".
    pub kind: &'static str,
    /// Owning workspace.
    pub workspace: DocId,
    /// Owning channel (channel and bucket documents).
    pub channel: Option<DocId>,
    /// Bucket key (bucket documents).
    pub bucket_key: Option<String>,
}

#[derive(Debug)]
pub(crate) struct Cached {
    pub doc: Automerge,
    pub last_seq: i64,
    pub chunks: usize,
    pub snapshot_bytes: usize,
    pub pending_bytes: usize,
}

/// The per-process cache of loaded documents.
#[derive(Debug, Default)]
pub(crate) struct DocCache {
    pub docs: HashMap<DocId, Cached>,
}

impl DocCache {
    /// Returns the document, loading it or the chunks appended since it was cached.
    /// `None` if the database does not hold it.
    pub fn get(
        &mut self,
        tx: &rusqlite::Connection,
        id: DocId,
        actor: &crdt_model::DeviceId,
    ) -> Result<Option<&mut Automerge>, StoreError> {
        let since = self.docs.get(&id).map_or(0, |c| c.last_seq);
        let mut stmt = tx.prepare_cached(
            "SELECT seq, snapshot, data FROM doc_chunks WHERE doc = ?1 AND seq > ?2 ORDER BY seq",
        )?;
        let rows = stmt
            .query_map(params![id.to_string(), since], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        if rows.is_empty() && !self.docs.contains_key(&id) {
            return Ok(None);
        }
        let entry = self.docs.entry(id).or_insert_with(|| Cached {
            doc: Automerge::new().with_actor(device_actor(actor)),
            last_seq: 0,
            chunks: 0,
            snapshot_bytes: 0,
            pending_bytes: 0,
        });
        let corrupt = |e: AutomergeError| StoreError::Corrupt(format!("document {id}: {e}"));
        // `load_incremental` skips what it cannot parse (it only logs a warning): writing on top
        // of a document that silently lost changes would fork its history, and a rebuilt
        // projection would lose messages. So every chunk must load completely.
        let strict = |mode| {
            LoadOptions::new()
                .on_partial_load(OnPartialLoad::Error)
                .verification_mode(mode)
        };
        for (seq, snapshot, data) in rows {
            if entry.doc.is_empty() {
                entry.doc = Automerge::load_with_options(&data, strict(VerificationMode::Check))
                    .map_err(corrupt)?
                    .with_actor(device_actor(actor));
            } else {
                // Parse alone first; its changes depend on earlier chunks, hence MissingDeps.
                // Automerge logs every failed load at ERROR level; this one is expected (and any
                // other is returned as `Corrupt`), so keep it out of the application's log.
                let parsed = tracing::dispatcher::with_default(&tracing::Dispatch::none(), || {
                    Automerge::load_with_options(&data, strict(VerificationMode::DontCheck))
                });
                match parsed {
                    Ok(_) | Err(AutomergeError::MissingDeps) => {}
                    Err(e) => return Err(corrupt(e)),
                }
                entry.doc.load_incremental(&data).map_err(corrupt)?;
            }
            entry.last_seq = seq;
            if snapshot == 1 {
                (entry.chunks, entry.snapshot_bytes, entry.pending_bytes) = (0, data.len(), 0);
            } else {
                entry.chunks += 1;
                entry.pending_bytes += data.len();
            }
        }
        // Changes waiting for a dependency mean a chunk is missing.
        let missing = entry.doc.get_missing_deps(&[]);
        if !missing.is_empty() {
            let e = format!("document {id}: {} changes are missing", missing.len());
            return Err(StoreError::Corrupt(e));
        }
        Ok(Some(&mut entry.doc))
    }

    /// Forgets a document (after a failed write left the cached copy ahead of the database).
    pub fn evict(&mut self, id: &DocId) {
        self.docs.remove(id);
    }
}

/// Whether the database holds document `id`.
pub(crate) fn exists(tx: &Transaction<'_>, id: DocId) -> Result<bool, StoreError> {
    Ok(tx
        .query_row("SELECT 1 FROM docs WHERE id = ?1", [id.to_string()], |_| {
            Ok(())
        })
        .optional()?
        .is_some())
}

/// Stores a new document (its whole state as the first chunk) and caches it.
pub(crate) fn insert(
    tx: &Transaction<'_>,
    cache: &mut DocCache,
    id: DocId,
    meta: &DocMeta,
    doc: Automerge,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO docs (id, kind, workspace, channel, bucket_key) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            id.to_string(),
            meta.kind,
            meta.workspace.to_string(),
            meta.channel.map(|c| c.to_string()),
            meta.bucket_key
        ],
    )?;
    let snapshot = doc.save();
    let seq = append(tx, id, true, &snapshot)?;
    cache.docs.insert(
        id,
        Cached {
            doc,
            last_seq: seq,
            chunks: 0,
            snapshot_bytes: snapshot.len(),
            pending_bytes: 0,
        },
    );
    Ok(())
}

fn append(tx: &Transaction<'_>, id: DocId, snapshot: bool, data: &[u8]) -> Result<i64, StoreError> {
    tx.prepare_cached("INSERT INTO doc_chunks (doc, snapshot, data) VALUES (?1, ?2, ?3)")?
        .execute(params![id.to_string(), snapshot as i64, data])?;
    Ok(tx.last_insert_rowid())
}

impl Cached {
    fn due(&self, factor: usize) -> bool {
        self.chunks >= COMPACT_AFTER * factor
            || self.pending_bytes > self.snapshot_bytes.max(COMPACT_BYTES_FLOOR) * factor
    }
}

/// Whether a cached document should be compacted.
pub(crate) fn due(cache: &DocCache, id: &DocId) -> bool {
    cache.docs.get(id).is_some_and(|c| c.due(1))
}

/// Replaces a document's chunks with one snapshot. The caller has refreshed it in `tx`.
pub(crate) fn compact(
    tx: &Transaction<'_>,
    cache: &mut DocCache,
    id: DocId,
) -> Result<(), StoreError> {
    let c = cache.docs.get_mut(&id).expect("compact follows get");
    let snapshot = c.doc.save();
    let seq = append(tx, id, true, &snapshot)?;
    tx.prepare_cached("DELETE FROM doc_chunks WHERE doc = ?1 AND seq < ?2")?
        .execute(params![id.to_string(), seq])?;
    c.last_seq = seq;
    (c.chunks, c.snapshot_bytes, c.pending_bytes) = (0, snapshot.len(), 0);
    Ok(())
}

/// Records what `doc` gained since `before` as a new chunk.
pub(crate) fn persist(
    tx: &Transaction<'_>,
    cache: &mut DocCache,
    id: DocId,
    before: &[ChangeHash],
) -> Result<(), StoreError> {
    let c = cache.docs.get_mut(&id).expect("persist follows get");
    if c.doc.get_heads() == before {
        return Ok(());
    }
    let chunk = c.doc.save_after(before);
    c.last_seq = append(tx, id, false, &chunk)?;
    c.chunks += 1;
    c.pending_bytes += chunk.len();
    if c.due(INLINE_FACTOR) {
        compact(tx, cache, id)?;
    }
    Ok(())
}
