//! Reads: everything a screen, the CLI or a search shows comes from the projection tables.

use std::collections::BTreeMap;

use crdt_model::{DocId, MessageId};
use rusqlite::{OptionalExtension, Row, params};
use serde::Serialize;

use crate::{Store, StoreError};

/// Who wrote something.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Author {
    /// Display name.
    pub name: String,
    /// Person key, hex.
    pub key: String,
}

/// A message as shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MessageRow {
    /// Message id.
    pub id: String,
    /// Channel name.
    pub channel: String,
    /// Channel id.
    pub channel_id: String,
    /// Author.
    pub author: Author,
    /// Post time, ms since the Unix epoch.
    pub ts: i64,
    /// Markdown text (empty when deleted).
    pub text: String,
    /// Whether it was edited.
    pub edited: bool,
    /// When it was last edited, ms.
    pub edited_ts: Option<i64>,
    /// Deleted for everyone.
    pub deleted: bool,
    /// Emoji → names of the people who reacted.
    pub reactions: BTreeMap<String, Vec<String>>,
    /// Message this one replies to.
    pub reply_to: Option<String>,
    /// Thread this one is in.
    pub thread_root: Option<String>,
    /// Replies in this message's thread.
    pub reply_count: i64,
    /// Names of the people mentioned.
    pub mentions: Vec<String>,
    /// Every signature checked out. False: do not trust who it claims to be from.
    pub verified: bool,
}

/// A channel in the sidebar.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChannelRow {
    /// Channel id.
    pub id: String,
    /// Name without `#`.
    pub name: String,
    /// Topic.
    pub topic: String,
    /// Private channel (DMs are private too).
    pub private: bool,
    /// A DM or group DM (named `@` and the other participants).
    pub dm: bool,
    /// Messages from others since I last read the channel.
    pub unread: i64,
    /// Of those, how many mention me.
    pub mentions: i64,
}

/// A workspace in the switcher.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkspaceRow {
    /// Workspace id.
    pub id: String,
    /// Name.
    pub name: String,
    /// My role.
    pub role: String,
    /// Member count.
    pub members: i64,
    /// Whether it is the current one.
    pub current: bool,
}

/// One of my devices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceRow {
    /// Its device key (iroh endpoint id), hex.
    pub device: String,
    /// Whether it is the device this home is.
    pub this: bool,
}

/// A member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemberRow {
    /// Person key, hex.
    pub key: String,
    /// Display name.
    pub name: String,
    /// Role.
    pub role: String,
}

const MESSAGE_COLUMNS: &str = "m.id, m.channel, coalesce(c.name, ''), m.author,
    coalesce(mb.name, substr(m.author, 1, 8)), m.ts, m.text, m.edited_ms, m.deleted, m.reply_to,
    m.thread_root, m.verified, m.mentions,
    (SELECT count(*) FROM messages r WHERE r.thread_root = m.id)";
const MESSAGE_JOINS: &str = "LEFT JOIN channels c ON c.id = m.channel
    LEFT JOIN members mb ON mb.workspace = m.workspace AND mb.person = m.author";

fn message_from_row(r: &Row<'_>) -> rusqlite::Result<(MessageRow, String)> {
    let edited: Option<i64> = r.get(7)?;
    Ok((
        MessageRow {
            id: r.get(0)?,
            channel_id: r.get(1)?,
            channel: r.get(2)?,
            author: Author {
                key: r.get(3)?,
                name: r.get(4)?,
            },
            ts: r.get(5)?,
            text: r.get(6)?,
            edited: edited.is_some(),
            edited_ts: edited,
            deleted: r.get(8)?,
            reactions: BTreeMap::new(),
            reply_to: r.get(9)?,
            thread_root: r.get(10)?,
            verified: r.get(11)?,
            mentions: Vec::new(),
            reply_count: r.get(13)?,
        },
        r.get(12)?,
    ))
}

/// Builds an FTS5 query from what a person typed: every word must match, the last one as a
/// prefix (search-as-you-type). Quoting each word means no input is an FTS syntax error.
fn fts_query(q: &str) -> Option<String> {
    let words: Vec<String> = q
        .split_whitespace()
        .map(|w| format!("\"{}\"", w.replace('"', "\"\"")))
        .collect();
    let last = words.len().checked_sub(1)?;
    Some(
        words
            .iter()
            .enumerate()
            .map(|(i, w)| {
                if i == last {
                    format!("{w}*")
                } else {
                    w.clone()
                }
            })
            .collect::<Vec<_>>()
            .join(" "),
    )
}

impl Store {
    /// Workspaces this home belongs to.
    pub fn workspaces(&self) -> Result<Vec<WorkspaceRow>, StoreError> {
        let me = self.identity()?.person_id().to_string();
        let current = self.current_workspace()?.map(|w| w.to_string());
        let mut stmt = self.conn.prepare_cached(
            "SELECT w.id, w.name, coalesce(mb.role, 'removed'),
                 (SELECT count(*) FROM members x WHERE x.workspace = w.id AND x.role != 'removed')
             FROM workspaces w LEFT JOIN members mb ON mb.workspace = w.id AND mb.person = ?1
             ORDER BY w.name COLLATE NOCASE",
        )?;
        let rows = stmt
            .query_map([me], |r| {
                let id: String = r.get(0)?;
                Ok(WorkspaceRow {
                    current: current.as_deref() == Some(id.as_str()),
                    id,
                    name: r.get(1)?,
                    role: r.get(2)?,
                    members: r.get(3)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Finds a workspace by exact id or (case-insensitive) name.
    pub fn find_workspace(&self, name_or_id: &str) -> Result<DocId, StoreError> {
        let ids: Vec<String> = self
            .conn
            .prepare_cached(
                "SELECT id FROM workspaces WHERE id = ?1 OR name = ?1 COLLATE NOCASE ORDER BY id",
            )?
            .query_map([name_or_id], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        match ids.as_slice() {
            [] => Err(StoreError::UnknownWorkspace(name_or_id.to_owned())),
            [one] => Ok(one.parse()?),
            many => Err(StoreError::Ambiguous(
                name_or_id.to_owned(),
                many.join(", "),
            )),
        }
    }

    pub(crate) fn find_channels(&self, ws: DocId, name: &str) -> Result<Vec<String>, StoreError> {
        let ids = self
            .conn
            .prepare_cached(
                "SELECT id FROM channels WHERE workspace = ?1 AND (id = ?2 OR name = ?2 COLLATE NOCASE)
                 ORDER BY id",
            )?
            .query_map(params![ws.to_string(), name], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(ids)
    }

    /// Finds a channel of the current workspace: `general`, `#general` or its id, or a DM:
    /// `@bob`, `@bob,carol` (the other participants).
    pub fn find_channel(&self, name: &str) -> Result<DocId, StoreError> {
        let ws = self.require_workspace()?;
        if let Some(names) = name.strip_prefix('@') {
            let mut people = vec![self.identity()?.person_id()];
            for n in names.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                people.push(self.resolve_member(ws, n)?);
            }
            let id = crdt_model::channel::dm_id(ws, &people);
            return match self.channel_workspace(id) {
                Ok(_) => Ok(id),
                Err(_) => Err(StoreError::UnknownChannel(name.to_owned())),
            };
        }
        let bare = name.strip_prefix('#').unwrap_or(name);
        match self.find_channels(ws, bare)?.as_slice() {
            [] => Err(StoreError::UnknownChannel(name.to_owned())),
            [one] => Ok(one.parse()?),
            many => Err(StoreError::Ambiguous(name.to_owned(), many.join(", "))),
        }
    }

    pub(crate) fn channel_workspace(&self, channel: DocId) -> Result<DocId, StoreError> {
        let ws: Option<String> = self
            .conn
            .prepare_cached("SELECT workspace FROM channels WHERE id = ?1")?
            .query_row([channel.to_string()], |r| r.get(0))
            .optional()?;
        ws.ok_or_else(|| StoreError::UnknownChannel(channel.to_string()))?
            .parse()
            .map_err(Into::into)
    }

    /// Channels of the current workspace, with unread and mention counts.
    pub fn channels(&self) -> Result<Vec<ChannelRow>, StoreError> {
        self.channels_in(self.require_workspace()?)
    }

    /// Channels of workspace `ws`, with unread and mention counts.
    pub fn channels_in(&self, ws: DocId) -> Result<Vec<ChannelRow>, StoreError> {
        let me = self.identity()?.person_id().to_string();
        let mut stmt = self.conn.prepare_cached(
            "SELECT c.id, c.name, c.topic, c.private, c.dm,
                 coalesce(rs.last_read_ts, 0), coalesce(rs.last_read_id, '')
             FROM channels c LEFT JOIN read_state rs ON rs.channel = c.id
             WHERE c.workspace = ?1 ORDER BY c.dm, c.name COLLATE NOCASE, c.id",
        )?;
        let rows: Vec<(ChannelRow, i64, String)> = stmt
            .query_map([ws.to_string()], |r| {
                Ok((
                    ChannelRow {
                        id: r.get(0)?,
                        name: r.get(1)?,
                        topic: r.get(2)?,
                        private: r.get(3)?,
                        dm: r.get(4)?,
                        unread: 0,
                        mentions: 0,
                    },
                    r.get(5)?,
                    r.get(6)?,
                ))
            })?
            .collect::<Result<_, _>>()?;
        let mut count = self.conn.prepare_cached(
            "SELECT count(*), coalesce(sum(instr(mentions, ?4) > 0), 0) FROM messages
             WHERE channel = ?1 AND thread_root IS NULL AND author != ?5 AND deleted = 0
               AND (ts > ?2 OR (ts = ?2 AND id > ?3))",
        )?;
        rows.into_iter()
            .map(|(mut c, ts, id)| {
                let (unread, mentions) = count
                    .query_row(params![c.id, ts, id, format!("\"{me}\""), me], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })?;
                c.unread = unread;
                c.mentions = mentions;
                Ok(c)
            })
            .collect()
    }

    /// When the newest message of a channel's main timeline was posted, ms.
    pub fn last_message_ts(&self, channel: DocId) -> Result<Option<i64>, StoreError> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT max(ts) FROM messages WHERE channel = ?1 AND thread_root IS NULL",
            )?
            .query_row([channel.to_string()], |r| r.get(0))?)
    }

    /// What kind of document `id` is (`workspace`, `channel`, `bucket`) and its channel.
    pub(crate) fn doc_kind(
        &self,
        id: DocId,
    ) -> Result<Option<(String, Option<DocId>)>, StoreError> {
        let row: Option<(String, Option<String>)> = self
            .conn
            .prepare_cached("SELECT kind, channel FROM docs WHERE id = ?1")?
            .query_row([id.to_string()], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        Ok(match row {
            Some((kind, channel)) => Some((kind, channel.map(|c| c.parse()).transpose()?)),
            None => None,
        })
    }

    /// Members of the current workspace.
    pub fn members(&self) -> Result<Vec<MemberRow>, StoreError> {
        let ws = self.require_workspace()?;
        self.member_rows(
            "SELECT person, name, role FROM members WHERE workspace = ?1 AND role != 'removed'
             ORDER BY name COLLATE NOCASE",
            ws,
        )
    }

    /// Runs a query of (key, name, role) rows with one id parameter.
    fn member_rows(&self, sql: &str, id: DocId) -> Result<Vec<MemberRow>, StoreError> {
        let rows = self
            .conn
            .prepare_cached(sql)?
            .query_map([id.to_string()], |r| {
                Ok(MemberRow {
                    key: r.get(0)?,
                    name: r.get(1)?,
                    role: r.get(2)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// My devices: every device certified for me in any of my workspaces.
    pub fn devices(&self) -> Result<Vec<DeviceRow>, StoreError> {
        let me = self.identity()?;
        let this = me.device_id().to_string();
        let rows = self
            .conn
            .prepare_cached(
                "SELECT DISTINCT device FROM devices WHERE person = ?1 ORDER BY device",
            )?
            .query_map([me.person_id().to_string()], |r| r.get::<_, String>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        let mut out: Vec<DeviceRow> = rows
            .into_iter()
            .map(|device| DeviceRow {
                this: device == this,
                device,
            })
            .collect();
        if !out.iter().any(|d| d.this) {
            out.push(DeviceRow {
                device: this,
                this: true,
            });
        }
        Ok(out)
    }

    /// Who is in a private channel or DM (empty for public channels: everyone is).
    pub fn channel_members(&self, channel: DocId) -> Result<Vec<MemberRow>, StoreError> {
        self.member_rows(
            "SELECT cm.person, coalesce(m.name, substr(cm.person, 1, 8)), coalesce(m.role, 'member')
             FROM channel_members cm JOIN channels c ON c.id = cm.channel
             LEFT JOIN members m ON m.workspace = c.workspace AND m.person = cm.person
             WHERE cm.channel = ?1 ORDER BY 2 COLLATE NOCASE",
            channel,
        )
    }

    /// Fills in reactions and mention names, which live in other tables.
    fn finish(&self, rows: Vec<(MessageRow, String)>) -> Result<Vec<MessageRow>, StoreError> {
        let mut reactions = self.conn.prepare_cached(
            "SELECT r.emoji, coalesce(mb.name, substr(r.person, 1, 8))
             FROM reactions r JOIN messages m ON m.id = r.message
             LEFT JOIN members mb ON mb.workspace = m.workspace AND mb.person = r.person
             WHERE r.message = ?1 ORDER BY r.emoji, 2",
        )?;
        let mut name = self.conn.prepare_cached(
            "SELECT mb.name FROM members mb JOIN messages m ON m.workspace = mb.workspace
             WHERE m.id = ?1 AND mb.person = ?2",
        )?;
        rows.into_iter()
            .map(|(mut m, mentions)| {
                for row in reactions.query_map([&m.id], |r| Ok((r.get(0)?, r.get(1)?)))? {
                    let (emoji, who): (String, String) = row?;
                    m.reactions.entry(emoji).or_default().push(who);
                }
                let keys: Vec<String> = serde_json::from_str(&mentions).unwrap_or_default();
                for k in keys {
                    let n: Option<String> =
                        name.query_row(params![m.id, k], |r| r.get(0)).optional()?;
                    m.mentions
                        .push(n.unwrap_or_else(|| k[..8.min(k.len())].to_owned()));
                }
                Ok(m)
            })
            .collect()
    }

    /// The newest `limit` messages of a channel's main timeline (thread replies excluded),
    /// oldest first; with `before`, the page older than that message; with `thread`, the root
    /// and the newest replies of that thread.
    pub fn read(
        &self,
        channel: DocId,
        limit: usize,
        before: Option<&str>,
        thread: Option<&str>,
    ) -> Result<Vec<MessageRow>, StoreError> {
        let (bts, bid) = match before {
            Some(b) => {
                let id = self.resolve_message(b)?;
                let ts: i64 = self
                    .conn
                    .query_row(
                        "SELECT ts FROM messages WHERE id = ?1",
                        [id.to_string()],
                        |r| r.get(0),
                    )
                    .optional()?
                    .ok_or_else(|| StoreError::UnknownMessage(id.to_string()))?;
                (ts, id.to_string())
            }
            None => (i64::MAX, String::new()),
        };
        let limit = limit.min(10_000) as i64;
        let mut rows = match thread {
            None => {
                let sql = format!(
                    "SELECT {MESSAGE_COLUMNS} FROM messages m {MESSAGE_JOINS}
                     WHERE m.channel = ?1 AND m.thread_root IS NULL
                       AND (m.ts < ?2 OR (m.ts = ?2 AND m.id < ?3))
                     ORDER BY m.ts DESC, m.id DESC LIMIT ?4"
                );
                let before_id = if before.is_some() {
                    bid
                } else {
                    "\u{10ffff}".into()
                };
                self.conn
                    .prepare_cached(&sql)?
                    .query_map(
                        params![channel.to_string(), bts, before_id, limit],
                        message_from_row,
                    )?
                    .collect::<Result<Vec<_>, _>>()?
            }
            Some(t) => {
                let root = self.thread_root_of(channel, self.resolve_message(t)?)?;
                let sql = format!(
                    "SELECT {MESSAGE_COLUMNS} FROM messages m {MESSAGE_JOINS}
                     WHERE m.thread_root = ?1 AND (m.ts < ?2 OR (m.ts = ?2 AND m.id < ?3))
                     ORDER BY m.ts DESC, m.id DESC LIMIT ?4"
                );
                let before_id = if before.is_some() {
                    bid
                } else {
                    "\u{10ffff}".into()
                };
                let mut v = self
                    .conn
                    .prepare_cached(&sql)?
                    .query_map(
                        params![root.to_string(), bts, before_id, limit],
                        message_from_row,
                    )?
                    .collect::<Result<Vec<_>, _>>()?;
                if before.is_none() || (v.len() as i64) < limit {
                    v.push(self.message_raw(&root.to_string())?);
                }
                v
            }
        };
        rows.reverse();
        self.finish(rows)
    }

    fn message_raw(&self, id: &str) -> Result<(MessageRow, String), StoreError> {
        let sql =
            format!("SELECT {MESSAGE_COLUMNS} FROM messages m {MESSAGE_JOINS} WHERE m.id = ?1");
        self.conn
            .prepare_cached(&sql)?
            .query_row([id], message_from_row)
            .optional()?
            .ok_or_else(|| StoreError::UnknownMessage(id.to_owned()))
    }

    /// One message by id (or unique id prefix).
    pub fn message(&self, id: &str) -> Result<MessageRow, StoreError> {
        let id = self.resolve_message(id)?;
        let row = self.message_raw(&id.to_string())?;
        Ok(self.finish(vec![row])?.remove(0))
    }

    /// Full-text search over the current workspace (optionally one channel), newest first.
    pub fn search(
        &self,
        query: &str,
        channel: Option<DocId>,
        limit: usize,
    ) -> Result<Vec<MessageRow>, StoreError> {
        let ws = self.require_workspace()?;
        let Some(q) = fts_query(query) else {
            return Ok(Vec::new());
        };
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages_fts f JOIN messages m ON m.rowid = f.rowid
             {MESSAGE_JOINS}
             WHERE messages_fts MATCH ?1 AND m.workspace = ?2 AND (?3 IS NULL OR m.channel = ?3)
               AND m.deleted = 0
             ORDER BY m.ts DESC, m.id DESC LIMIT ?4"
        );
        let rows = self
            .conn
            .prepare_cached(&sql)?
            .query_map(
                params![
                    q,
                    ws.to_string(),
                    channel.map(|c| c.to_string()),
                    limit.min(10_000) as i64
                ],
                message_from_row,
            )?
            .collect::<Result<Vec<_>, _>>()?;
        self.finish(rows)
    }

    /// SQLite's `data_version`: changes whenever another connection commits (for live views
    /// that watch the database).
    pub fn data_version(&self) -> Result<i64, StoreError> {
        Ok(self
            .conn
            .query_row("PRAGMA data_version", [], |r| r.get(0))?)
    }

    /// Marks a channel read up to its newest message.
    pub fn mark_read(&mut self, channel: DocId) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO read_state (channel, last_read_ts, last_read_id)
             SELECT channel, ts, id FROM messages WHERE channel = ?1 AND thread_root IS NULL
             ORDER BY ts DESC, id DESC LIMIT 1
             ON CONFLICT (channel) DO UPDATE SET last_read_ts = excluded.last_read_ts,
                 last_read_id = excluded.last_read_id",
            [channel.to_string()],
        )?;
        Ok(())
    }

    /// Marks a channel read up to message `upto` (a main-timeline message of it), never moving
    /// the mark back: what arrived after it stays unread.
    pub fn mark_read_up_to(&mut self, channel: DocId, upto: MessageId) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO read_state (channel, last_read_ts, last_read_id)
             SELECT channel, ts, id FROM messages
              WHERE channel = ?1 AND id = ?2 AND thread_root IS NULL
             ON CONFLICT (channel) DO UPDATE SET last_read_ts = excluded.last_read_ts,
                 last_read_id = excluded.last_read_id
              WHERE (excluded.last_read_ts, excluded.last_read_id)
                  > (read_state.last_read_ts, read_state.last_read_id)",
            params![channel.to_string(), upto.to_string()],
        )?;
        Ok(())
    }

    /// Resolves a full message id or a unique prefix of at least 4 characters.
    pub fn resolve_message(&self, s: &str) -> Result<MessageId, StoreError> {
        let s = s.trim().to_ascii_lowercase();
        if let Ok(id) = s.parse::<MessageId>() {
            return Ok(id);
        }
        let valid = s.len() >= 4
            && s.len() < 26
            && s.bytes()
                .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase());
        if !valid {
            return Err(crdt_model::ModelError::BadId(s).into());
        }
        let ids: Vec<String> = self
            .conn
            .prepare_cached("SELECT id FROM messages WHERE id >= ?1 AND id < ?1 || '~' LIMIT 2")?
            .query_map([&s], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        match ids.as_slice() {
            [one] => Ok(one.parse()?),
            [] => Err(StoreError::UnknownMessage(s)),
            _ => Err(StoreError::Ambiguous(s, "a longer prefix".into())),
        }
    }

    /// Where a message lives: (id, channel, workspace, bucket).
    pub(crate) fn message_location(
        &self,
        id: MessageId,
    ) -> Result<(MessageId, DocId, DocId, DocId), StoreError> {
        let row: Option<(String, String, String)> = self
            .conn
            .prepare_cached("SELECT channel, workspace, bucket FROM messages WHERE id = ?1")?
            .query_row([id.to_string()], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?;
        let (c, w, b) = row.ok_or_else(|| StoreError::UnknownMessage(id.to_string()))?;
        Ok((id, c.parse()?, w.parse()?, b.parse()?))
    }

    pub(crate) fn message_location_str(
        &self,
        s: &str,
    ) -> Result<(MessageId, DocId, DocId, DocId), StoreError> {
        self.message_location(self.resolve_message(s)?)
    }

    /// The root of the thread `id` is in (itself if it is not a reply), checked to be in
    /// `channel`.
    pub(crate) fn thread_root_of(
        &self,
        channel: DocId,
        id: MessageId,
    ) -> Result<MessageId, StoreError> {
        let row: Option<(String, Option<String>)> = self
            .conn
            .prepare_cached("SELECT channel, thread_root FROM messages WHERE id = ?1")?
            .query_row([id.to_string()], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        match row {
            Some((c, root)) if c == channel.to_string() => match root {
                Some(r) => Ok(r.parse()?),
                None => Ok(id),
            },
            _ => Err(StoreError::UnknownMessage(id.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fts_query;

    #[test]
    fn fts_queries_are_always_valid() {
        assert_eq!(fts_query("  ").as_deref(), None);
        assert_eq!(
            fts_query("hello wor").as_deref(),
            Some("\"hello\" \"wor\"*")
        );
        assert_eq!(fts_query("a\"b OR").as_deref(), Some("\"a\"\"b\" \"OR\"*"));
    }
}
