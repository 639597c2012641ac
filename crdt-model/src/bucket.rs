//! Bucket documents: the messages of one channel in one time window.
//!
//! Root keys: `kind` = "bucket", `channel`, `key` (written by the deterministic first change),
//! then one map per message, keyed by its [`MessageId`]:
//! - `h`: signed [`PostHeader`] (author, time, reply/thread links), never changed;
//! - `b`: signed [`Body`] (text and mentions), replaced by edits, removed by deletion;
//! - `d`: signed [`Deletion`], once deleted;
//! - `r`: map of reactions, key `"{emoji} {person hex}"` → signed [`Reaction`].
//!
//! Each key has a single rightful writer (the author, or one reacting person), so concurrent
//! writers never fight over a key except for the same person on two devices, where the newest
//! valid record wins on every replica.

use std::collections::{BTreeMap, BTreeSet};

use automerge::transaction::Transactable;
use automerge::{Automerge, ObjType, Patch, PatchAction, Prop, ROOT, ReadDoc};

use crate::channel::{BucketKey, deterministic_init};
use crate::ids::{DeviceId, DocId, MessageId, PersonId};
use crate::signed::{Body, Deletion, PostHeader, Reaction, Record, Signed, vouch};
use crate::workspace::WorkspaceView;
use crate::{Identity, ModelError, Role, commit, get_all_bytes, get_map, validate_text};

/// A writer starts a new part of the day once its bucket holds this many messages, which keeps
/// every bucket small enough that applying a change stays cheap (BRIEF.md: cost grows with the
/// document).
pub const SOFT_LIMIT: usize = 2_000;

/// The longest reaction "emoji" accepted, in bytes.
pub const MAX_EMOJI_BYTES: usize = 64;

/// The document id of bucket `key` of `channel`: every peer computes the same one.
pub fn bucket_id(channel: DocId, key: BucketKey) -> DocId {
    DocId::derive("flyt/bucket/v1", &[&channel.0, key.to_string().as_bytes()])
}

/// The initial bucket document, identical on every peer. The caller sets its actor next.
pub fn init(channel: DocId, key: BucketKey) -> Result<Automerge, ModelError> {
    deterministic_init(
        bucket_id(channel, key),
        &[
            ("kind", "bucket".into()),
            ("channel", channel.to_string()),
            ("key", key.to_string()),
        ],
    )
}

/// A new message, before signing.
#[derive(Debug, Clone)]
pub struct NewPost {
    /// Channel it goes to.
    pub channel: DocId,
    /// Its id (the caller draws the random part).
    pub id: MessageId,
    /// Post time, ms.
    pub ts_ms: i64,
    /// Markdown text.
    pub text: String,
    /// Mentioned people.
    pub mentions: Vec<PersonId>,
    /// Message replied to or quoted.
    pub reply_to: Option<MessageId>,
    /// Thread root, for a reply in a thread.
    pub thread_root: Option<MessageId>,
}

/// Writes a new message.
pub fn post(doc: &mut Automerge, me: &Identity, p: NewPost) -> Result<MessageId, ModelError> {
    validate_text(&p.text)?;
    let body = Signed::sign(
        &me.device,
        Body {
            id: p.id,
            text: p.text,
            mentions: p.mentions,
            at_ms: p.ts_ms,
            edit: false,
        },
    );
    let header = Signed::sign(
        &me.device,
        PostHeader {
            channel: p.channel,
            id: p.id,
            author: me.person_id(),
            ts_ms: p.ts_ms,
            reply_to: p.reply_to,
            thread_root: p.thread_root,
            body: Some(vouch(&body.to_bytes())),
        },
    );
    commit(doc, p.ts_ms, |tx| {
        let m = tx.put_object(ROOT, p.id.to_string(), ObjType::Map)?;
        tx.put(&m, "h", header.to_bytes())?;
        tx.put(&m, "b", body.to_bytes())?;
        tx.put_object(&m, "r", ObjType::Map)?;
        Ok(p.id)
    })
}

fn message_obj(doc: &Automerge, id: MessageId) -> Result<automerge::ObjId, ModelError> {
    get_map(doc, &ROOT, &id.to_string()).ok_or(ModelError::NoSuchMessage(id))
}

fn header_of(doc: &Automerge, obj: &automerge::ObjId) -> Option<Signed<PostHeader>> {
    best(doc, obj, "h", |h: &PostHeader| h.ts_ms, |_| true)
}

/// The newest valid record at `key` among Automerge's conflicting values: greatest `at`, ties
/// broken by the envelope bytes so every replica picks the same one.
fn best<T: Record>(
    doc: &Automerge,
    obj: &automerge::ObjId,
    key: &str,
    at: impl Fn(&T) -> i64,
    valid: impl Fn(&Signed<T>) -> bool,
) -> Option<Signed<T>> {
    get_all_bytes(doc, obj, key)
        .iter()
        .filter_map(|b| Signed::<T>::decode(b).ok())
        .filter(|s| valid(s))
        .max_by(|a, b| (at(&a.payload), a.to_bytes()).cmp(&(at(&b.payload), b.to_bytes())))
}

/// Replaces the text of one of my messages.
pub fn edit(
    doc: &mut Automerge,
    me: &Identity,
    id: MessageId,
    text: String,
    mentions: Vec<PersonId>,
    at_ms: i64,
) -> Result<MessageId, ModelError> {
    validate_text(&text)?;
    let obj = message_obj(doc, id)?;
    let header = header_of(doc, &obj).ok_or(ModelError::NoSuchMessage(id))?;
    if header.payload.author != me.person_id() {
        return Err(ModelError::NotAllowed("only the author can edit a message"));
    }
    if doc.get(&obj, "d")?.is_some() {
        return Err(ModelError::Deleted(id));
    }
    let body = Signed::sign(
        &me.device,
        Body {
            id,
            text,
            mentions,
            at_ms,
            edit: true,
        },
    );
    commit(doc, at_ms, |tx| {
        tx.put(&obj, "b", body.to_bytes())?;
        Ok(())
    })
    .map(|()| id)
}

/// Deletes a message for everyone: the author may, and so may admins and the owner. The text
/// leaves the current state of the document.
pub fn delete(
    doc: &mut Automerge,
    me: &Identity,
    ws: &WorkspaceView,
    id: MessageId,
    at_ms: i64,
) -> Result<MessageId, ModelError> {
    let obj = message_obj(doc, id)?;
    let header = header_of(doc, &obj).ok_or(ModelError::NoSuchMessage(id))?;
    let mine = header.payload.author == me.person_id();
    if !mine && ws.role(&me.person_id()).is_none_or(|r| r < Role::Admin) {
        return Err(ModelError::NotAllowed(
            "only the author or an admin can delete a message",
        ));
    }
    if doc.get(&obj, "d")?.is_some() {
        return Err(ModelError::Deleted(id));
    }
    let del = Signed::sign(
        &me.device,
        Deletion {
            id,
            by: me.person_id(),
            at_ms,
        },
    );
    commit(doc, at_ms, |tx| {
        tx.put(&obj, "d", del.to_bytes())?;
        tx.delete(&obj, "b")?;
        Ok(())
    })
    .map(|()| id)
}

/// Removes the text of deleted messages that a concurrent edit put back (an edit made while the
/// deletion was in flight survives it in Automerge's current state). Any node that notices
/// writes the removal; concurrent removals converge. Returns the messages it cleaned.
pub fn purge_deleted_text(
    doc: &mut Automerge,
    channel: DocId,
    ids: &BTreeSet<MessageId>,
    ws: &WorkspaceView,
    at_ms: i64,
) -> Result<Vec<MessageId>, ModelError> {
    let mut dirty = Vec::new();
    for id in ids {
        let Some(obj) = get_map(doc, &ROOT, &id.to_string()) else {
            continue;
        };
        // Cheap key checks first; signatures only when both a body and a deletion are there.
        if doc.get(&obj, "b")?.is_some()
            && doc.get(&obj, "d")?.is_some()
            && message(doc, channel, *id, ws).is_some_and(|m| m.deleted)
        {
            dirty.push((*id, obj));
        }
    }
    if dirty.is_empty() {
        return Ok(Vec::new());
    }
    commit(doc, at_ms, |tx| {
        for (_, obj) in &dirty {
            tx.delete(obj, "b")?;
        }
        Ok(())
    })?;
    Ok(dirty.into_iter().map(|(id, _)| id).collect())
}

/// Checks a reaction emoji: non-empty, short, no spaces or control characters.
pub fn validate_emoji(emoji: &str) -> Result<(), ModelError> {
    if emoji.is_empty()
        || emoji.len() > MAX_EMOJI_BYTES
        || emoji.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(ModelError::BadEmoji(emoji.to_owned()));
    }
    Ok(())
}

fn reaction_key(emoji: &str, by: &PersonId) -> String {
    format!("{emoji} {by}")
}

/// Adds (`on`) or removes my reaction `emoji` on a message.
pub fn react(
    doc: &mut Automerge,
    me: &Identity,
    id: MessageId,
    emoji: &str,
    on: bool,
    at_ms: i64,
) -> Result<MessageId, ModelError> {
    validate_emoji(emoji)?;
    let obj = message_obj(doc, id)?;
    if doc.get(&obj, "d")?.is_some() {
        return Err(ModelError::Deleted(id));
    }
    let r = get_map(doc, &obj, "r").ok_or(ModelError::WrongDocument("bucket"))?;
    let rec = Signed::sign(
        &me.device,
        Reaction {
            id,
            emoji: emoji.to_owned(),
            by: me.person_id(),
            on,
            at_ms,
        },
    );
    commit(doc, at_ms, |tx| {
        tx.put(&r, reaction_key(emoji, &me.person_id()), rec.to_bytes())?;
        Ok(())
    })
    .map(|()| id)
}

/// A message as the projection and every screen see it, after verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageView {
    /// Its id.
    pub id: MessageId,
    /// Its channel.
    pub channel: DocId,
    /// Who the header says wrote it.
    pub author: PersonId,
    /// The device that signed the header.
    pub device: DeviceId,
    /// Post time, ms.
    pub ts_ms: i64,
    /// Current text; empty when deleted.
    pub text: String,
    /// Mentioned people.
    pub mentions: Vec<PersonId>,
    /// Quoted message.
    pub reply_to: Option<MessageId>,
    /// Thread it belongs to.
    pub thread_root: Option<MessageId>,
    /// Time of the last edit, if edited.
    pub edited_ms: Option<i64>,
    /// Deleted for everyone.
    pub deleted: bool,
    /// Emoji → who reacted.
    pub reactions: BTreeMap<String, BTreeSet<PersonId>>,
    /// Every signature checks out and every signer had the right: false means "do not present
    /// as authentic".
    pub verified: bool,
}

/// Verifies and reads one message. `None` when there is no readable header (nothing to show).
pub fn message(
    doc: &Automerge,
    channel: DocId,
    id: MessageId,
    ws: &WorkspaceView,
) -> Option<MessageView> {
    let obj = get_map(doc, &ROOT, &id.to_string())?;
    let header = header_of(doc, &obj)?;
    let h = &header.payload;
    let author = h.author;
    let by_author = |d: DeviceId| ws.device_person(&d) == Some(author);
    let mut verified = h.id == id && h.channel == channel && by_author(header.device());

    let deletion = best(
        doc,
        &obj,
        "d",
        |d: &Deletion| d.at_ms,
        |d: &Signed<Deletion>| {
            d.payload.id == id
                && ws.device_person(&d.device()) == Some(d.payload.by)
                && (d.payload.by == author
                    || ws.role(&d.payload.by).is_some_and(|r| r >= Role::Admin))
        },
    );
    let deleted = deletion.is_some();
    let mut text = String::new();
    let mut mentions = Vec::new();
    let mut edited_ms = None;
    let mut reactions: BTreeMap<String, BTreeSet<PersonId>> = BTreeMap::new();
    if !deleted {
        // The header vouches for the first body: it is not checked again (one signature per
        // message, not two, for a device catching up on history).
        let bodies: Vec<Signed<Body>> = get_all_bytes(doc, &obj, "b")
            .iter()
            .filter_map(|b| Signed::<Body>::decode_vouched(b, h.body.as_ref()).ok())
            .filter(|b| b.payload.id == id)
            .collect();
        let valid = bodies
            .iter()
            .filter(|b| by_author(b.device()))
            .max_by_key(|b| (b.payload.at_ms, b.signer));
        let shown = match valid {
            Some(b) => Some(b),
            None => {
                // Something is there but nothing valid: show it, flagged.
                verified = false;
                bodies.iter().max_by_key(|b| (b.payload.at_ms, b.signer))
            }
        };
        if let Some(b) = shown {
            text = b.payload.text.clone();
            mentions = b.payload.mentions.clone();
            edited_ms = b.payload.edit.then_some(b.payload.at_ms);
        } else if get_all_bytes(doc, &obj, "b").is_empty() {
            // A body removed without a valid deletion: flag it.
            verified = false;
        }
        if let Some(r) = get_map(doc, &obj, "r") {
            for key in doc.keys(&r) {
                let rec = best(
                    doc,
                    &r,
                    &key,
                    |x: &Reaction| x.at_ms,
                    |x: &Signed<Reaction>| {
                        x.payload.id == id
                            && reaction_key(&x.payload.emoji, &x.payload.by) == key
                            && ws.device_person(&x.device()) == Some(x.payload.by)
                    },
                );
                if let Some(x) = rec.filter(|x| x.payload.on) {
                    reactions
                        .entry(x.payload.emoji)
                        .or_default()
                        .insert(x.payload.by);
                }
            }
        }
    }
    Some(MessageView {
        id,
        channel,
        author,
        device: header.device(),
        ts_ms: h.ts_ms,
        text,
        mentions,
        reply_to: h.reply_to,
        thread_root: h.thread_root,
        edited_ms,
        deleted,
        reactions,
        verified,
    })
}

/// Ids of every message in the bucket.
pub fn message_ids(doc: &Automerge) -> Vec<MessageId> {
    doc.keys(&ROOT).filter_map(|k| k.parse().ok()).collect()
}

/// Every readable message, in (time, id) order.
pub fn messages(doc: &Automerge, channel: DocId, ws: &WorkspaceView) -> Vec<MessageView> {
    let mut v: Vec<MessageView> = message_ids(doc)
        .into_iter()
        .filter_map(|id| message(doc, channel, id, ws))
        .collect();
    v.sort_by_key(|m| (m.ts_ms, m.id));
    v
}

/// The messages a set of patches touched (from a remote change applied with a patch log, or
/// `Automerge::diff`): the projection re-reads only these.
pub fn touched(patches: &[Patch]) -> BTreeSet<MessageId> {
    let mut out = BTreeSet::new();
    for p in patches {
        let key = match (p.path.first(), &p.action) {
            (Some((_, Prop::Map(k))), _) => Some(k.as_str()),
            (None, PatchAction::PutMap { key, .. } | PatchAction::DeleteMap { key }) => {
                Some(key.as_str())
            }
            _ => None,
        };
        if let Some(id) = key.and_then(|k| k.parse().ok()) {
            out.insert(id);
        }
    }
    out
}

/// Of the messages a set of patches touched, those [`purge_deleted_text`] must look at: a
/// deletion arrived for them, or a body arrived for a message that was there before (an edit
/// that raced a deletion). A message new in these patches with no deletion among them has
/// none, which is every message of a join without deletions: no lookups for those.
pub fn purge_candidates(patches: &[Patch]) -> BTreeSet<MessageId> {
    let (mut new, mut deleted, mut bodied) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    for p in patches {
        let PatchAction::PutMap { key, .. } = &p.action else {
            continue;
        };
        match p.path.as_slice() {
            [] => {
                if let Ok(id) = key.parse::<MessageId>() {
                    new.insert(id);
                }
            }
            [(_, Prop::Map(m))] => {
                let Ok(id) = m.parse::<MessageId>() else {
                    continue;
                };
                match key.as_str() {
                    "d" => deleted.insert(id),
                    "b" => bodied.insert(id),
                    _ => false,
                };
            }
            _ => {}
        }
    }
    deleted.extend(bodied.difference(&new));
    deleted
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workspace;
    use crate::{device_actor, workspace::workspace_id};

    fn ident(n: u8, name: &str) -> Identity {
        Identity::from_secrets([n; 32], [n + 100; 32], name)
    }

    /// A workspace with alice (owner), bob (member) and carol (admin), and its view.
    fn setup() -> (Vec<Identity>, WorkspaceView) {
        let people = vec![ident(1, "alice"), ident(2, "bob"), ident(3, "carol")];
        let mut doc = Automerge::new().with_actor(device_actor(&people[0].device_id()));
        let ws = workspace::create(&mut doc, &people[0], "acme", [0; 16], 1).unwrap();
        assert_eq!(ws, workspace_id(&people[0].person_id(), &[0; 16]));
        for (p, role) in [(&people[1], Role::Member), (&people[2], Role::Admin)] {
            workspace::put_device(&mut doc, &p.device_cert("d", 2), 2).unwrap();
            workspace::set_role(&mut doc, &people[0], ws, p.person_id(), role, 2).unwrap();
        }
        (people, workspace::view(&doc, ws))
    }

    const CH: DocId = DocId([7; 16]);

    fn new_bucket(who: &Identity) -> Automerge {
        let mut d = init(CH, BucketKey::day_of(0)).unwrap();
        d.set_actor(device_actor(&who.device_id()));
        d
    }

    fn say(doc: &mut Automerge, who: &Identity, n: u8, text: &str) -> MessageId {
        let id = MessageId::new(n as i64, [n; 10]);
        post(
            doc,
            who,
            NewPost {
                channel: CH,
                id,
                ts_ms: n as i64,
                text: text.into(),
                mentions: vec![],
                reply_to: None,
                thread_root: None,
            },
        )
        .unwrap();
        id
    }

    #[test]
    fn post_edit_react_delete() {
        let (p, ws) = setup();
        let mut d = new_bucket(&p[0]);
        let id = say(&mut d, &p[0], 1, "hello");
        let m = message(&d, CH, id, &ws).unwrap();
        assert!(m.verified);
        assert_eq!(m.text, "hello");
        edit(&mut d, &p[0], id, "hello!".into(), vec![], 5).unwrap();
        react(&mut d, &p[1], id, "👍", true, 6).unwrap();
        react(&mut d, &p[2], id, "👍", true, 6).unwrap();
        react(&mut d, &p[2], id, "👍", false, 7).unwrap();
        let m = message(&d, CH, id, &ws).unwrap();
        assert_eq!((m.text.as_str(), m.edited_ms), ("hello!", Some(5)));
        assert_eq!(m.reactions["👍"], BTreeSet::from([p[1].person_id()]));
        assert!(m.verified);
        // bob may not edit or delete alice's message; carol (admin) may delete it.
        assert!(matches!(
            edit(&mut d, &p[1], id, "mine now".into(), vec![], 8),
            Err(ModelError::NotAllowed(_))
        ));
        assert!(delete(&mut d, &p[1], &ws, id, 8).is_err());
        delete(&mut d, &p[2], &ws, id, 9).unwrap();
        let m = message(&d, CH, id, &ws).unwrap();
        assert!(m.deleted && m.text.is_empty() && m.reactions.is_empty() && m.verified);
        // The text is gone from the current state of the document.
        let obj = get_map(&d, &ROOT, &id.to_string()).unwrap();
        assert!(d.get(&obj, "b").unwrap().is_none());
        assert!(matches!(
            react(&mut d, &p[1], id, "👍", true, 10),
            Err(ModelError::Deleted(_))
        ));
    }

    #[test]
    fn forgeries_are_flagged() {
        let (p, ws) = setup();
        let mut d = new_bucket(&p[0]);
        let id = say(&mut d, &p[0], 1, "genuine");
        let obj = get_map(&d, &ROOT, &id.to_string()).unwrap();
        // bob's device signs a body for alice's message: flagged, not authentic.
        let forged = Signed::sign(
            &p[1].device,
            Body {
                id,
                text: "I owe bob $100".into(),
                mentions: vec![],
                at_ms: 99,
                edit: true,
            },
        );
        commit(&mut d, 99, |tx| Ok(tx.put(&obj, "b", forged.to_bytes())?)).unwrap();
        let m = message(&d, CH, id, &ws).unwrap();
        assert!(!m.verified);
        // A message whose header claims alice but is signed by bob's device: flagged.
        let mut d2 = new_bucket(&p[1]);
        let fid = MessageId::new(3, [3; 10]);
        let header = Signed::sign(
            &p[1].device,
            PostHeader {
                channel: CH,
                id: fid,
                author: p[0].person_id(),
                ts_ms: 3,
                reply_to: None,
                thread_root: None,
                body: None,
            },
        );
        let body = Signed::sign(
            &p[1].device,
            Body {
                id: fid,
                text: "alice says hi".into(),
                mentions: vec![],
                at_ms: 3,
                edit: false,
            },
        );
        commit(&mut d2, 3, |tx| {
            let m = tx.put_object(ROOT, fid.to_string(), ObjType::Map)?;
            tx.put(&m, "h", header.to_bytes())?;
            tx.put(&m, "b", body.to_bytes())?;
            Ok(())
        })
        .unwrap();
        assert!(!message(&d2, CH, fid, &ws).unwrap().verified);
        // A deletion by a non-admin who is not the author is ignored.
        let id2 = say(&mut d, &p[0], 4, "keep me");
        let obj2 = get_map(&d, &ROOT, &id2.to_string()).unwrap();
        let del = Signed::sign(
            &p[1].device,
            Deletion {
                id: id2,
                by: p[1].person_id(),
                at_ms: 5,
            },
        );
        commit(&mut d, 5, |tx| Ok(tx.put(&obj2, "d", del.to_bytes())?)).unwrap();
        let m = message(&d, CH, id2, &ws).unwrap();
        assert!(!m.deleted && m.verified && m.text == "keep me");
        // Garbage in a message slot is skipped, never a panic.
        commit(&mut d, 6, |tx| {
            let m = tx.put_object(ROOT, MessageId::new(6, [6; 10]).to_string(), ObjType::Map)?;
            tx.put(&m, "h", vec![1u8, 2, 3])?;
            Ok(())
        })
        .unwrap();
        assert_eq!(messages(&d, CH, &ws).len(), 2);
    }

    /// A header vouches for its message's first body (one signature checked per message). A
    /// message from before that (no vouch) still verifies on both signatures; a first body
    /// swapped for another is checked on its own and flagged.
    #[test]
    fn the_header_vouches_for_the_first_body_only() {
        let (p, ws) = setup();
        let mut d = new_bucket(&p[0]);
        let id = say(&mut d, &p[0], 1, "hello");
        let obj = get_map(&d, &ROOT, &id.to_string()).unwrap();
        let h = header_of(&d, &obj).unwrap();
        let first = get_all_bytes(&d, &obj, "b").pop().unwrap();
        assert_eq!(h.payload.body, Some(vouch(&first)));
        assert!(message(&d, CH, id, &ws).unwrap().verified);

        // Written before headers vouched: both signatures checked, still verified.
        let old = MessageId::new(2, [2; 10]);
        let body = |at_ms, device: &Identity, text: &str| {
            let b = Body {
                id: old,
                text: text.into(),
                mentions: vec![],
                at_ms,
                edit: false,
            };
            Signed::sign(&device.device, b).to_bytes()
        };
        let header = Signed::sign(
            &p[0].device,
            PostHeader {
                channel: CH,
                id: old,
                author: p[0].person_id(),
                ts_ms: 2,
                reply_to: None,
                thread_root: None,
                body: None,
            },
        );
        let genuine = body(2, &p[0], "from an older build");
        commit(&mut d, 2, |tx| {
            let m = tx.put_object(ROOT, old.to_string(), ObjType::Map)?;
            tx.put(&m, "h", header.to_bytes())?;
            tx.put(&m, "b", genuine.clone())?;
            Ok(())
        })
        .unwrap();
        let m = message(&d, CH, old, &ws).unwrap();
        assert!(m.verified && m.text == "from an older build");

        // The vouched first body replaced by one with a broken signature: refused, flagged.
        let mut broken = first.clone();
        let at = broken.len() - 1;
        broken[at] ^= 1;
        commit(&mut d, 3, |tx| Ok(tx.put(&obj, "b", broken)?)).unwrap();
        let m = message(&d, CH, id, &ws).unwrap();
        assert!(!m.verified && m.text.is_empty());
        // ...or by another member's genuine body: checked on its own signature, flagged.
        let other = Signed::sign(
            &p[1].device,
            Body {
                id,
                text: "hello from bob".into(),
                mentions: vec![],
                at_ms: 1,
                edit: false,
            },
        );
        commit(&mut d, 4, |tx| Ok(tx.put(&obj, "b", other.to_bytes())?)).unwrap();
        let m = message(&d, CH, id, &ws).unwrap();
        assert!(!m.verified && m.text == "hello from bob");
    }

    #[test]
    fn a_concurrent_edit_does_not_keep_deleted_text() {
        let (p, ws) = setup();
        let mut a = new_bucket(&p[1]);
        let id = say(&mut a, &p[1], 1, "secret v1");
        let mut admin = a.fork().with_actor(device_actor(&p[2].device_id()));
        edit(&mut a, &p[1], id, "secret v2".into(), vec![], 2).unwrap();
        delete(&mut admin, &p[2], &ws, id, 3).unwrap();
        a.merge(&mut admin).unwrap();
        let obj = get_map(&a, &ROOT, &id.to_string()).unwrap();
        assert!(
            a.get(&obj, "b").unwrap().is_some(),
            "the edit survived in the current state"
        );
        assert!(
            !purge_deleted_text(&mut a, CH, &BTreeSet::from([id]), &ws, 4)
                .unwrap()
                .is_empty()
        );
        assert!(a.get(&obj, "b").unwrap().is_none());
        assert!(message(&a, CH, id, &ws).unwrap().deleted);
        assert!(
            purge_deleted_text(&mut a, CH, &BTreeSet::from([id]), &ws, 5)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn purge_candidates_are_deletions_and_late_bodies_only() {
        let (p, ws) = setup();
        let mut a = new_bucket(&p[1]);
        let kept = say(&mut a, &p[1], 1, "kept");
        let gone = say(&mut a, &p[1], 2, "gone");
        let raced = say(&mut a, &p[1], 3, "raced");
        let start = a.get_heads();
        delete(&mut a, &p[1], &ws, gone, 4).unwrap();
        let deleted = a.get_heads();
        // A join: every message is new; only the deleted one is a candidate.
        assert_eq!(
            purge_candidates(&a.diff(&[], &deleted)),
            BTreeSet::from([gone])
        );
        // A deletion arriving live.
        assert_eq!(
            purge_candidates(&a.diff(&start, &deleted)),
            BTreeSet::from([gone])
        );
        // New messages arriving live: none.
        let fresh = say(&mut a, &p[1], 5, "fresh");
        assert!(purge_candidates(&a.diff(&deleted, &a.get_heads())).is_empty());
        assert_ne!(fresh, kept);
        // An edit that raced a deletion arrives after it: its body is a candidate.
        let mut admin = a.fork().with_actor(device_actor(&p[2].device_id()));
        let before = admin.get_heads();
        delete(&mut admin, &p[2], &ws, raced, 6).unwrap();
        edit(&mut a, &p[1], raced, "raced v2".into(), vec![], 7).unwrap();
        let deleted_only = admin.get_heads();
        admin.merge(&mut a).unwrap();
        let candidates = purge_candidates(&admin.diff(&deleted_only, &admin.get_heads()));
        assert!(candidates.contains(&raced), "{candidates:?}");
        assert!(
            !purge_deleted_text(&mut admin, CH, &candidates, &ws, 8)
                .unwrap()
                .is_empty()
        );
        assert!(purge_candidates(&admin.diff(&before, &deleted_only)).contains(&raced));
    }

    #[test]
    fn the_newest_reaction_of_two_devices_wins() {
        let (p, _) = setup();
        // bob gets a second device whose key sorts either way against the first.
        for seed in [0x01u8, 0x99] {
            let mut doc = Automerge::new().with_actor(device_actor(&p[0].device_id()));
            let wsid = workspace::create(&mut doc, &p[0], "acme", [0; 16], 1).unwrap();
            let phone = Identity::from_secrets([2; 32], [seed; 32], "bob");
            for d in [&p[1], &phone] {
                workspace::put_device(&mut doc, &d.device_cert("d", 2), 2).unwrap();
            }
            workspace::set_role(&mut doc, &p[0], wsid, p[1].person_id(), Role::Member, 2).unwrap();
            let ws = workspace::view(&doc, wsid);
            let mut laptop = new_bucket(&p[1]);
            let id = say(&mut laptop, &p[0], 1, "hi");
            let mut ph = laptop.fork().with_actor(device_actor(&phone.device_id()));
            react(&mut laptop, &p[1], id, "👍", true, 10).unwrap();
            react(&mut ph, &phone, id, "👍", false, 20).unwrap();
            laptop.merge(&mut ph).unwrap();
            let m = message(&laptop, CH, id, &ws).unwrap();
            assert!(
                m.reactions.is_empty(),
                "seed {seed}: the newer 'off' must win"
            );
        }
    }

    #[test]
    fn two_creators_of_one_bucket_lose_nothing() {
        let (p, ws) = setup();
        let mut a = new_bucket(&p[0]);
        let mut b = new_bucket(&p[1]);
        say(&mut a, &p[0], 1, "from alice");
        say(&mut b, &p[1], 2, "from bob");
        let before = a.get_heads();
        a.merge(&mut b).unwrap();
        b.merge(&mut a.clone()).unwrap();
        assert_eq!(messages(&a, CH, &ws).len(), 2);
        assert_eq!(a.get_heads(), b.get_heads());
        let after = a.get_heads();
        let touched = touched(&a.diff(&before, &after));
        assert_eq!(touched, BTreeSet::from([MessageId::new(2, [2; 10])]));
    }
}
