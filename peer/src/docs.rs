//! Document storage: Automerge documents as append-only chunks in SQLite, with an in-memory
//! cache kept fresh against other processes writing the same database.
//!
//! Every write happens inside an IMMEDIATE transaction (SQLite's write lock). Before touching a
//! document the writer loads any chunks other processes appended since it last looked, so a
//! change is always made on top of everything already durable, and its incremental save is a
//! new chunk in the same transaction as the projection rows it produces.

use std::collections::HashMap;

use automerge::{
    Automerge, AutomergeError, ChangeHash, LoadOptions, OnPartialLoad, ReadDoc, SaveOptions,
    VerificationMode,
};
use crdt_model::{DocId, device_actor};
use rusqlite::{OptionalExtension, Transaction, params};

use crate::StoreError;
use crate::sync::protocol::DocRef;

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
pub struct DocCache {
    pub(crate) docs: HashMap<DocId, Cached>,
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
        if rows.is_empty() {
            return Ok(self.docs.get_mut(&id).map(|c| &mut c.doc));
        }
        let entry = self.docs.entry(id).or_insert_with(|| Cached {
            doc: Automerge::new().with_actor(device_actor(actor)),
            last_seq: 0,
            chunks: 0,
            snapshot_bytes: 0,
            pending_bytes: 0,
        });
        if let Err(e) = load_chunks(entry, id, actor, rows) {
            // Keep nothing of a document that did not load completely: the next call fails too.
            self.docs.remove(&id);
            return Err(e);
        }
        Ok(self.docs.get_mut(&id).map(|c| &mut c.doc))
    }

    /// Forgets a document (after a failed write left the cached copy ahead of the database).
    pub fn evict(&mut self, id: &DocId) {
        self.docs.remove(id);
    }
}

/// Applies chunks read from the database to a cached document, strictly.
fn load_chunks(
    entry: &mut Cached,
    id: DocId,
    actor: &crdt_model::DeviceId,
    rows: Vec<(i64, i64, Vec<u8>)>,
) -> Result<(), StoreError> {
    // Changes a peer sent ahead of their dependencies wait in the document until those arrive
    // (the sync protocol asks for them next): they are not damage, and are never stored.
    let waiting = entry.doc.get_missing_deps(&[]);
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
    // Stored changes waiting for a dependency mean a chunk is missing.
    let missing = entry
        .doc
        .get_missing_deps(&[])
        .into_iter()
        .filter(|h| !waiting.contains(h))
        .count();
    if missing > 0 {
        let e = format!("document {id}: {missing} changes are missing");
        return Err(StoreError::Corrupt(e));
    }
    Ok(())
}

/// How a document a peer offered begins here: its `docs` row and its first state.
/// `channel_workspace` names the workspace a held channel belongs to (a bucket's row needs it).
/// Channel and bucket documents begin with the same deterministic change on every peer, so the
/// document is valid (and can be written to) before the peer's copy arrives. `None` for a
/// reference that names nothing valid.
pub fn offered(
    r: &DocRef,
    channel_workspace: impl FnOnce(DocId) -> Option<DocId>,
) -> Option<(DocMeta, Automerge)> {
    let (meta, first) = match r {
        DocRef::Workspace { id } => (
            DocMeta {
                kind: "workspace",
                workspace: *id,
                channel: None,
                bucket_key: None,
            },
            Ok(Automerge::new()),
        ),
        DocRef::Channel { id, workspace } => (
            DocMeta {
                kind: "channel",
                workspace: *workspace,
                channel: Some(*id),
                bucket_key: None,
            },
            crdt_model::channel::init(*workspace, *id),
        ),
        DocRef::Dm { workspace, members } => (
            DocMeta {
                kind: "channel",
                workspace: *workspace,
                channel: Some(r.id()?),
                bucket_key: None,
            },
            crdt_model::channel::init_dm(*workspace, members),
        ),
        DocRef::Bucket { channel, key } => (
            DocMeta {
                kind: "bucket",
                workspace: channel_workspace(*channel)?,
                channel: Some(*channel),
                bucket_key: Some(key.clone()),
            },
            crdt_model::bucket::init(*channel, key.parse().ok()?),
        ),
    };
    Some((meta, first.ok()?))
}

/// The sync state saved for (peer, doc) by an earlier connection.
pub fn sync_state(
    conn: &rusqlite::Connection,
    peer: &crdt_model::DeviceId,
    doc: DocId,
) -> Option<Vec<u8>> {
    conn.prepare_cached("SELECT state FROM sync_state WHERE peer = ?1 AND doc = ?2")
        .ok()?
        .query_row(params![peer.to_string(), doc.to_string()], |r| r.get(0))
        .optional()
        .ok()?
}

/// Saves the sync state of (peer, doc) for the next connection.
pub fn save_sync_state(
    conn: &rusqlite::Connection,
    peer: &crdt_model::DeviceId,
    doc: DocId,
    state: &[u8],
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO sync_state (peer, doc, state) VALUES (?1, ?2, ?3)
         ON CONFLICT (peer, doc) DO UPDATE SET state = excluded.state",
    )?
    .execute(params![peer.to_string(), doc.to_string(), state])?;
    Ok(())
}

/// Whether the database holds document `id`.
pub fn exists(tx: &Transaction<'_>, id: DocId) -> Result<bool, StoreError> {
    Ok(tx
        .query_row("SELECT 1 FROM docs WHERE id = ?1", [id.to_string()], |_| {
            Ok(())
        })
        .optional()?
        .is_some())
}

/// Stores a new document (its whole state as the first chunk) and caches it.
pub fn insert(
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
pub fn due(cache: &DocCache, id: &DocId) -> bool {
    cache.docs.get(id).is_some_and(|c| c.due(1))
}

/// Replaces a document's chunks with one snapshot. The caller has refreshed it in `tx`.
pub fn compact(tx: &Transaction<'_>, cache: &mut DocCache, id: DocId) -> Result<(), StoreError> {
    let c = cache.docs.get_mut(&id).expect("compact follows get");
    // Without changes still waiting for their dependencies: those are not durable yet.
    let snapshot = c.doc.save_with_options(SaveOptions {
        retain_orphans: false,
        ..SaveOptions::default()
    });
    let seq = append(tx, id, true, &snapshot)?;
    tx.prepare_cached("DELETE FROM doc_chunks WHERE doc = ?1 AND seq < ?2")?
        .execute(params![id.to_string(), seq])?;
    c.last_seq = seq;
    (c.chunks, c.snapshot_bytes, c.pending_bytes) = (0, snapshot.len(), 0);
    Ok(())
}

/// Records what `doc` gained since `before` as a new chunk.
pub fn persist(
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

#[cfg(test)]
mod tests {
    use automerge::transaction::Transactable;
    use automerge::{ROOT, ReadDoc};
    use crdt_model::DeviceId;

    use super::*;

    fn change(doc: &mut Automerge, key: &str) {
        let mut tx = doc.transaction();
        tx.put(ROOT, key, 1).unwrap();
        tx.commit();
    }

    #[test]
    fn a_change_waiting_for_its_dependency_is_not_damage_and_is_not_stored() {
        let mut conn = rusqlite::Connection::open_in_memory().unwrap();
        crate::schema::migrate(&mut conn).unwrap();
        let (id, me) = (DocId([1; 16]), DeviceId([2; 32]));
        let meta = DocMeta {
            kind: "workspace",
            workspace: id,
            channel: None,
            bucket_key: None,
        };
        let mut original = Automerge::new();
        change(&mut original, "a");
        let mut cache = DocCache::default();
        let tx = conn.transaction().unwrap();
        insert(&tx, &mut cache, id, &meta, original.clone()).unwrap();

        // A peer's two changes arrive out of order: the second waits for the first.
        let mut peer = original.fork();
        change(&mut peer, "b");
        let first = peer.get_last_local_change().unwrap().clone();
        change(&mut peer, "c");
        let second = peer.get_last_local_change().unwrap().clone();
        let doc = cache.get(&tx, id, &me).unwrap().unwrap();
        doc.apply_changes([second.clone()]).unwrap();
        assert_eq!(doc.get_missing_deps(&[]), vec![first.hash()]);
        assert!(cache.get(&tx, id, &me).unwrap().is_some(), "still usable");

        // Compacted meanwhile: the stored snapshot holds only what applied, and loads cleanly.
        compact(&tx, &mut cache, id).unwrap();
        let mut fresh = DocCache::default();
        let stored = fresh.get(&tx, id, &me).unwrap().unwrap();
        assert!(stored.get(ROOT, "b").unwrap().is_none());
        assert!(stored.get_missing_deps(&[]).is_empty());

        // The first change arrives: both apply.
        let doc = cache.get(&tx, id, &me).unwrap().unwrap();
        doc.apply_changes([first]).unwrap();
        assert!(doc.get_missing_deps(&[]).is_empty());
        assert_eq!(doc.get_heads(), vec![second.hash()]);
    }

    #[test]
    fn a_stored_change_missing_its_dependency_is_an_error_every_time() {
        let mut conn = rusqlite::Connection::open_in_memory().unwrap();
        crate::schema::migrate(&mut conn).unwrap();
        let (id, me) = (DocId([1; 16]), DeviceId([2; 32]));
        let meta = DocMeta {
            kind: "workspace",
            workspace: id,
            channel: None,
            bucket_key: None,
        };
        let mut doc = Automerge::new();
        change(&mut doc, "a");
        let mut cache = DocCache::default();
        let tx = conn.transaction().unwrap();
        insert(&tx, &mut cache, id, &meta, doc.clone()).unwrap();
        change(&mut doc, "b");
        let middle = doc.get_heads();
        change(&mut doc, "c");
        // The chunk with "b" is lost; the one with "c" depends on it.
        append(&tx, id, false, &doc.save_after(&middle)).unwrap();
        let mut cache = DocCache::default();
        assert!(matches!(
            cache.get(&tx, id, &me),
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(
            cache.get(&tx, id, &me),
            Err(StoreError::Corrupt(_))
        ));
    }
}
