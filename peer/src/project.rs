//! The projection: SQLite rows derived from the documents, written in the same transaction as
//! the document change that caused them.

use std::collections::BTreeSet;

use automerge::Automerge;
use crdt_model::bucket::{self, MessageView};
use crdt_model::channel::{self, ChannelKind};
use crdt_model::workspace::WorkspaceView;
use crdt_model::{DocId, MessageId};
use rusqlite::params;

use crate::{StoreError, Writer};

impl Writer<'_> {
    /// Re-projects a workspace document: its row, members, devices and channels. When the set of
    /// certified devices changed, messages that failed verification are checked again (a
    /// certificate may have arrived after the messages it vouches for).
    pub(crate) fn project_workspace(&mut self, ws: DocId) -> Result<(), StoreError> {
        let v = self.view(ws)?;
        let tx = self.tx;
        let w = ws.to_string();
        tx.execute(
            "INSERT INTO workspaces (id, name, owner, created_ms) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (id) DO UPDATE SET name = excluded.name, owner = excluded.owner,
                 created_ms = excluded.created_ms",
            params![w, v.name, v.owner.map(|o| o.to_string()), v.created_ms],
        )?;
        tx.execute("DELETE FROM members WHERE workspace = ?1", [&w])?;
        for (person, role) in &v.roles {
            tx.execute(
                "INSERT INTO members (workspace, person, name, role) VALUES (?1, ?2, ?3, ?4)",
                params![w, person.to_string(), v.name_of(person), role.as_str()],
            )?;
        }
        // Joined: from now on the inviter is trusted as what it is in the workspace (a member,
        // or, once removed, nobody), not as our inviter.
        if v.is_member(&self.me.person_id()) {
            tx.execute("DELETE FROM joining WHERE workspace = ?1", [&w])?;
        }
        let old_devices: BTreeSet<(String, String)> = tx
            .prepare_cached("SELECT device, person FROM devices WHERE workspace = ?1")?
            .query_map([&w], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        let new_devices: BTreeSet<(String, String)> = v
            .devices
            .iter()
            .map(|(d, p)| (d.to_string(), p.to_string()))
            .collect();
        if old_devices != new_devices {
            tx.execute("DELETE FROM devices WHERE workspace = ?1", [&w])?;
            for (d, p) in &new_devices {
                tx.execute(
                    "INSERT INTO devices (workspace, device, person) VALUES (?1, ?2, ?3)",
                    params![w, d, p],
                )?;
            }
        }
        let listed: BTreeSet<String> = v.channels.keys().map(|c| c.to_string()).collect();
        let existing: Vec<String> = tx
            .prepare_cached("SELECT id FROM channels WHERE workspace = ?1 AND dm = 0")?
            .query_map([&w], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        for gone in existing.iter().filter(|c| !listed.contains(*c)) {
            tx.execute("DELETE FROM channels WHERE id = ?1", [gone])?;
        }
        for (id, l) in &v.channels {
            tx.execute(
                "INSERT INTO channels (id, workspace, name, topic, private, created_by, updated_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (id) DO UPDATE SET name = excluded.name, topic = excluded.topic,
                     private = excluded.private, updated_ms = excluded.updated_ms",
                params![
                    id.to_string(),
                    w,
                    l.info.name,
                    l.info.topic,
                    l.info.private,
                    l.by.to_string(),
                    l.info.at_ms
                ],
            )?;
        }
        // Who is in a private channel or DM depends on the workspace (members, devices, names).
        let restricted: Vec<String> = tx
            .prepare_cached(
                "SELECT c.id FROM channels c JOIN docs d ON d.id = c.id
                 WHERE c.workspace = ?1 AND c.private = 1",
            )?
            .query_map([&w], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        for c in restricted {
            self.project_channel(ws, c.parse()?)?;
        }
        if old_devices != new_devices {
            let suspect: Vec<(String, String)> = tx
                .prepare(
                    "SELECT DISTINCT bucket, channel FROM messages WHERE workspace = ?1 AND verified = 0",
                )?
                .query_map([&w], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            for (b, c) in suspect {
                self.project_bucket(ws, c.parse()?, b.parse()?, None)?;
            }
        }
        Ok(())
    }

    /// Re-projects a channel document: who is in it (private channels and DMs), and a DM's
    /// listing (DMs are not listed in the workspace document; a DM is named after the other
    /// participants).
    pub(crate) fn project_channel(&mut self, ws: DocId, id: DocId) -> Result<(), StoreError> {
        let view = self.view(ws)?;
        let me = self.me.device_id();
        let tx = self.tx;
        let doc = self
            .cache
            .get(tx, id, &me)?
            .ok_or_else(|| StoreError::Corrupt(format!("channel {id} is missing")))?;
        let cv = channel::view(doc, &view, id);
        let c = id.to_string();
        tx.execute("DELETE FROM channel_members WHERE channel = ?1", [&c])?;
        let mut add =
            tx.prepare_cached("INSERT INTO channel_members (channel, person) VALUES (?1, ?2)")?;
        for p in &cv.members {
            add.execute(params![c, p.to_string()])?;
        }
        if cv.kind == ChannelKind::Dm {
            let mine = self.me.person_id();
            let mut names: Vec<String> = cv
                .members
                .iter()
                .filter(|p| **p != mine || cv.members.len() == 1)
                .map(|p| view.name_of(p))
                .collect();
            names.sort_by_key(|n| n.to_lowercase());
            let name = format!("@{}", names.join(","));
            tx.execute(
                "INSERT INTO channels (id, workspace, name, topic, private, dm, created_by, updated_ms)
                 VALUES (?1, ?2, ?3, '', 1, 1, '', 0)
                 ON CONFLICT (id) DO UPDATE SET name = excluded.name",
                params![c, ws.to_string(), name],
            )?;
        }
        Ok(())
    }

    /// Re-projects the given messages of a bucket (all of them with `None`).
    pub(crate) fn project_bucket(
        &mut self,
        ws: DocId,
        channel: DocId,
        bucket_id: DocId,
        only: Option<BTreeSet<MessageId>>,
    ) -> Result<(), StoreError> {
        let view = self.view(ws)?;
        let me = self.me.device_id();
        let tx = self.tx;
        let doc = self
            .cache
            .get(tx, bucket_id, &me)?
            .ok_or_else(|| StoreError::Corrupt(format!("bucket {bucket_id} is missing")))?;
        let ids = match only {
            Some(ids) => ids.into_iter().collect(),
            None => bucket::message_ids(doc),
        };
        self.projected.extend(ids.iter().map(|id| (channel, *id)));
        let (w, c, b) = (ws.to_string(), channel.to_string(), bucket_id.to_string());
        // Rows are staged in a temporary table and upserted by one statement. Row by row, every
        // upsert (a statement journal, for its trigger) made FTS5 flush its pending terms to a
        // new segment and merge segments: a third of applying a synced bucket, in perf.
        tx.execute_batch(
            "CREATE TEMP TABLE IF NOT EXISTS projecting (
                 id TEXT NOT NULL, author TEXT NOT NULL, ts INTEGER NOT NULL, text TEXT NOT NULL,
                 mentions TEXT NOT NULL, reply_to TEXT, thread_root TEXT, edited_ms INTEGER,
                 deleted INTEGER NOT NULL, verified INTEGER NOT NULL);
             DELETE FROM temp.projecting;",
        )?;
        let mut stage = tx.prepare_cached(
            "INSERT INTO temp.projecting (id, author, ts, text, mentions, reply_to, thread_root,
                 edited_ms, deleted, verified)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?;
        let mut clear_reactions = tx.prepare_cached("DELETE FROM reactions WHERE message = ?1")?;
        let mut add_reaction = tx
            .prepare_cached("INSERT INTO reactions (message, emoji, person) VALUES (?1, ?2, ?3)")?;
        let mut remove = tx.prepare_cached("DELETE FROM messages WHERE id = ?1")?;
        for (id, m) in render(doc, channel, &ids, &view) {
            let key = id.to_string();
            clear_reactions.execute([&key])?;
            let Some(m) = m else {
                // Nothing readable is there (garbage under a message key): show nothing.
                remove.execute([&key])?;
                continue;
            };
            let mentions: Vec<String> = m.mentions.iter().map(|p| p.to_string()).collect();
            stage.execute(params![
                key,
                m.author.to_string(),
                m.ts_ms,
                m.text,
                serde_json::to_string(&mentions).expect("strings serialize"),
                m.reply_to.map(|r| r.to_string()),
                m.thread_root.map(|r| r.to_string()),
                m.edited_ms,
                m.deleted,
                m.verified,
            ])?;
            for (emoji, people) in &m.reactions {
                for p in people {
                    add_reaction.execute(params![key, emoji, p.to_string()])?;
                }
            }
        }
        // `WHERE true`: an upsert's SELECT needs a WHERE for SQLite to parse its ON CONFLICT.
        tx.prepare_cached(
            "INSERT INTO messages (id, channel, workspace, bucket, author, ts, text, mentions,
                 reply_to, thread_root, edited_ms, deleted, verified)
             SELECT id, ?1, ?2, ?3, author, ts, text, mentions, reply_to, thread_root, edited_ms,
                 deleted, verified
             FROM temp.projecting WHERE true ORDER BY rowid
             ON CONFLICT (id) DO UPDATE SET text = excluded.text, mentions = excluded.mentions,
                 edited_ms = excluded.edited_ms, deleted = excluded.deleted,
                 verified = excluded.verified",
        )?
        .execute(params![c, w, b])?;
        tx.prepare_cached("DELETE FROM temp.projecting")?
            .execute([])?;
        Ok(())
    }
}

/// Below this many messages a bucket is rendered on the calling thread.
const PARALLEL_FROM: usize = 64;

/// Renders messages of a bucket (checking two signatures or more each, the bulk of applying a
/// synced bucket), on every core when there are many: a new device receives whole buckets.
fn render(
    doc: &Automerge,
    channel: DocId,
    ids: &[MessageId],
    view: &WorkspaceView,
) -> Vec<(MessageId, Option<MessageView>)> {
    let one = |id: &MessageId| (*id, bucket::message(doc, channel, *id, view));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores < 2 || ids.len() < PARALLEL_FROM {
        return ids.iter().map(one).collect();
    }
    let per = ids.len().div_ceil(cores);
    std::thread::scope(|s| {
        let parts: Vec<_> = ids
            .chunks(per)
            .map(|part| s.spawn(move || part.iter().map(one).collect::<Vec<_>>()))
            .collect();
        parts
            .into_iter()
            .flat_map(|p| p.join().expect("rendering a message does not panic"))
            .collect()
    })
}
