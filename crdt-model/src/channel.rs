//! The channel document: which buckets hold the channel's messages.
//!
//! Root keys: `kind` = "channel", `workspace`, `channel`, and `buckets` (bucket key → true).
//! The first change is deterministic (see [`deterministic_init`]), so a DM channel whose id
//! both people derive alone converges when both open it offline.
//!
//! Channels that reach only some members carry who those are:
//! - a **DM** (or group DM) has `dm` = the sorted participant keys, written by its
//!   deterministic first change; its id is derived from the workspace and that list
//!   ([`dm_id`]), so the list cannot be changed without changing the channel;
//! - a **private channel** has `creator` = `"{person}:{nonce}"`, bound to its id
//!   ([`private_id`]), and `members`, a map of signed [`ChannelMembership`] records
//!   (`"{person}:{time}:{signer device}"`, append-only). Any member may add and remove members
//!   (the creator cannot be removed); [`view`] resolves the records the way workspace roles
//!   are resolved, so concurrent changes converge and a removed member's later records count
//!   for nothing.

use std::fmt;
use std::str::FromStr;

use automerge::transaction::Transactable;
use automerge::{ActorId, Automerge, ObjType, ROOT, ReadDoc};

use std::collections::BTreeSet;

use crate::ids::{DocId, PersonId};
use crate::signed::{ChannelMembership, Membership, Signed};
use crate::workspace::{WorkspaceView, entries_in, resolve_roles};
use crate::{Identity, ModelError, Role, commit, get_map, get_str};

/// The messages of one UTC day go to buckets `(day, 0)`, `(day, 1)`, ...; a writer moves to the
/// next part when the current one holds [`crate::bucket::SOFT_LIMIT`] messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BucketKey {
    /// Days since 1970-01-01 (UTC).
    pub day: i64,
    /// Part within the day.
    pub part: u32,
}

impl BucketKey {
    /// The first part of the day containing `ts_ms`.
    pub fn day_of(ts_ms: i64) -> Self {
        BucketKey {
            day: ts_ms.div_euclid(86_400_000),
            part: 0,
        }
    }

    /// The start of this bucket's day, ms.
    pub fn day_start_ms(&self) -> i64 {
        self.day * 86_400_000
    }
}

/// Days since the epoch to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 } as i64;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

impl fmt::Display for BucketKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (y, m, d) = civil_from_days(self.day);
        write!(f, "{y:04}-{m:02}-{d:02}.{}", self.part)
    }
}

impl FromStr for BucketKey {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ModelError::BadId(s.to_owned());
        let (date, part) = s.split_once('.').ok_or_else(bad)?;
        let mut it = date.splitn(3, '-');
        let y: i64 = it.next().and_then(|x| x.parse().ok()).ok_or_else(bad)?;
        let m: u32 = it.next().and_then(|x| x.parse().ok()).ok_or_else(bad)?;
        let d: u32 = it.next().and_then(|x| x.parse().ok()).ok_or_else(bad)?;
        if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
            return Err(bad());
        }
        let key = BucketKey {
            day: days_from_civil(y, m, d),
            part: part.parse().map_err(|_| bad())?,
        };
        // Reject dates like 02-31 that would not round-trip.
        if key.to_string() != s {
            return Err(bad());
        }
        Ok(key)
    }
}

/// Builds the first change of a document whose id every peer can compute: the same actor
/// (derived from the id), time 0 and the same operations give byte-identical changes, which
/// Automerge merges as one. `fields` are root string keys.
pub fn deterministic_init(id: DocId, fields: &[(&str, String)]) -> Result<Automerge, ModelError> {
    let actor = DocId::derive("flyt/init-actor/v1", &[&id.0]);
    let mut doc = Automerge::new().with_actor(ActorId::from(&actor.0[..]));
    commit(&mut doc, 0, |tx| {
        for (k, v) in fields {
            tx.put(ROOT, *k, v.as_str())?;
        }
        if fields.iter().any(|(k, v)| *k == "kind" && v == "channel") {
            tx.put_object(ROOT, "buckets", ObjType::Map)?;
        }
        Ok(())
    })?;
    Ok(doc)
}

/// The initial channel document for `channel` in `workspace`. The caller sets its own actor
/// before writing.
pub fn init(workspace: DocId, channel: DocId) -> Result<Automerge, ModelError> {
    deterministic_init(
        channel,
        &[
            ("kind", "channel".into()),
            ("workspace", workspace.to_string()),
            ("channel", channel.to_string()),
        ],
    )
}

/// The id of a private channel created by `creator` with `nonce`.
pub fn private_id(workspace: DocId, creator: &PersonId, nonce: &[u8; 16]) -> DocId {
    DocId::derive(
        "flyt/private-channel/v1",
        &[&workspace.0, &creator.0, nonce],
    )
}

/// The participants of a DM as stored: sorted, without repeats.
pub fn dm_participants(people: &[PersonId]) -> Vec<PersonId> {
    let set: BTreeSet<PersonId> = people.iter().copied().collect();
    set.into_iter().collect()
}

/// The id of the DM between `people` (in any order, repeats ignored) in `workspace`: every
/// participant computes the same one, offline.
pub fn dm_id(workspace: DocId, people: &[PersonId]) -> DocId {
    let parts = dm_participants(people);
    let keys: Vec<&[u8]> = parts.iter().map(|p| &p.0[..]).collect();
    let mut all: Vec<&[u8]> = vec![&workspace.0];
    all.extend(keys);
    DocId::derive("flyt/dm/v1", &all)
}

fn dm_list(people: &[PersonId]) -> String {
    dm_participants(people)
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// The initial document of the DM between `people`, identical on every participant's device.
pub fn init_dm(workspace: DocId, people: &[PersonId]) -> Result<Automerge, ModelError> {
    let id = dm_id(workspace, people);
    deterministic_init(
        id,
        &[
            ("kind", "channel".into()),
            ("workspace", workspace.to_string()),
            ("channel", id.to_string()),
            ("dm", dm_list(people)),
        ],
    )
}

fn membership_key(rec: &Signed<ChannelMembership>) -> String {
    format!(
        "{}:{}:{}",
        rec.payload.person,
        rec.payload.at_ms,
        rec.device()
    )
}

fn put_membership(
    doc: &mut Automerge,
    me: &Identity,
    channel: DocId,
    person: PersonId,
    member: bool,
    at_ms: i64,
) -> Result<(), ModelError> {
    let obj = get_map(doc, &ROOT, "members").ok_or(ModelError::WrongDocument("private channel"))?;
    let rec = Signed::sign(
        &me.device,
        ChannelMembership {
            channel,
            person,
            member,
            at_ms,
        },
    );
    commit(doc, at_ms, |tx| {
        tx.put(&obj, membership_key(&rec), rec.to_bytes())?;
        Ok(())
    })
}

/// Makes the channel document `doc` (of `channel = private_id(workspace, me, nonce)`) a private
/// channel with me and `members` in it.
pub fn make_private(
    doc: &mut Automerge,
    me: &Identity,
    channel: DocId,
    nonce: [u8; 16],
    members: &[PersonId],
    at_ms: i64,
) -> Result<(), ModelError> {
    commit(doc, at_ms, |tx| {
        tx.put(
            ROOT,
            "creator",
            format!("{}:{}", me.person_id(), hex_nonce(&nonce)),
        )?;
        tx.put_object(ROOT, "members", ObjType::Map)?;
        Ok(())
    })?;
    let mut all = vec![me.person_id()];
    all.extend(members.iter().copied());
    for p in dm_participants(&all) {
        put_membership(doc, me, channel, p, true, at_ms)?;
    }
    Ok(())
}

fn hex_nonce(n: &[u8; 16]) -> String {
    n.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_nonce(s: &str) -> Option<[u8; 16]> {
    if s.len() != 32 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Adds `person` to, or removes them from, a private channel. I must be a member, the person
/// a workspace member, and the creator cannot be removed.
pub fn set_member(
    doc: &mut Automerge,
    me: &Identity,
    ws: &WorkspaceView,
    channel: DocId,
    person: PersonId,
    member: bool,
    at_ms: i64,
) -> Result<(), ModelError> {
    let v = view(doc, ws, channel);
    if v.kind != ChannelKind::Private {
        return Err(ModelError::NotAllowed(
            "only private channels have a member list to change",
        ));
    }
    if !v.members.contains(&me.person_id()) {
        return Err(ModelError::NotAllowed(
            "only members of a private channel change who is in it",
        ));
    }
    if member && !ws.is_member(&person) {
        return Err(ModelError::NotAllowed(
            "only members of the workspace can join its channels",
        ));
    }
    if !member && v.creator == Some(person) {
        return Err(ModelError::NotAllowed(
            "the creator of a private channel cannot be removed from it",
        ));
    }
    put_membership(doc, me, channel, person, member, at_ms)
}

/// Who a channel reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelKind {
    /// Every member of the workspace.
    Public,
    /// The members in its member list.
    Private,
    /// Its participants, fixed by its id.
    Dm,
}

/// What a channel document says about who may see the channel, after every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelView {
    /// Public, private or a DM.
    pub kind: ChannelKind,
    /// A private channel's creator (bound to the channel id).
    pub creator: Option<PersonId>,
    /// Who is in a private channel or DM (current workspace members only); empty for public
    /// channels.
    pub members: BTreeSet<PersonId>,
}

fn get_all_str(doc: &Automerge, key: &str) -> Vec<String> {
    doc.get_all(ROOT, key)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(v, _)| v.into_string().ok())
        .collect()
}

/// The participants of the DM `channel` of `workspace`, if `doc` is that DM's document.
pub fn dm_members(doc: &Automerge, workspace: DocId, channel: DocId) -> Option<Vec<PersonId>> {
    get_all_str(doc, "dm").into_iter().find_map(|list| {
        let people: Vec<PersonId> = list
            .split(',')
            .map(|p| p.parse().ok())
            .collect::<Option<_>>()?;
        (dm_id(workspace, &people) == channel).then_some(people)
    })
}

/// Verifies and reads who may see `channel` from its document. A DM's participant list must
/// hash to its id; a private channel's creator must be bound to its id, and its membership
/// records must be signed by devices of people who were members when they signed.
pub fn view(doc: &Automerge, ws: &WorkspaceView, channel: DocId) -> ChannelView {
    let Some(workspace) = ws.id else {
        return ChannelView {
            kind: ChannelKind::Public,
            creator: None,
            members: BTreeSet::new(),
        };
    };
    if let Some(people) = dm_members(doc, workspace, channel) {
        return ChannelView {
            kind: ChannelKind::Dm,
            creator: None,
            members: people.into_iter().filter(|p| ws.is_member(p)).collect(),
        };
    }
    let creator = get_all_str(doc, "creator").into_iter().find_map(|c| {
        let (p, n) = c.split_once(':')?;
        let p: PersonId = p.parse().ok()?;
        (private_id(workspace, &p, &parse_nonce(n)?) == channel).then_some(p)
    });
    let Some(creator) = creator else {
        return ChannelView {
            kind: ChannelKind::Public,
            creator: None,
            members: BTreeSet::new(),
        };
    };
    let mut by_person: std::collections::BTreeMap<PersonId, Vec<(PersonId, Membership)>> =
        Default::default();
    if let Some(obj) = get_map(doc, &ROOT, "members") {
        for (key, recs) in entries_in::<ChannelMembership>(doc, &obj) {
            for r in recs {
                if membership_key(&r) != key || r.payload.channel != channel {
                    continue;
                }
                if let Some(signer) = ws.device_person(&r.device()) {
                    // Resolved like roles: a member may add and remove (an "admin" of the
                    // channel); a removal is the "removed" role.
                    by_person.entry(r.payload.person).or_default().push((
                        signer,
                        Membership {
                            workspace: channel,
                            person: r.payload.person,
                            role: if r.payload.member {
                                Role::Admin
                            } else {
                                Role::Removed
                            },
                            at_ms: r.payload.at_ms,
                        },
                    ));
                }
            }
        }
    }
    let candidates: Vec<_> = by_person.into_iter().collect();
    let members = resolve_roles(creator, &candidates)
        .into_iter()
        .filter(|(p, r)| *r >= Role::Admin && ws.is_member(p))
        .map(|(p, _)| p)
        .collect();
    ChannelView {
        kind: ChannelKind::Private,
        creator: Some(creator),
        members,
    }
}

/// Records that bucket `key` exists. Returns false (and writes nothing) if it was known.
pub fn add_bucket(doc: &mut Automerge, key: BucketKey, at_ms: i64) -> Result<bool, ModelError> {
    let obj = get_map(doc, &ROOT, "buckets").ok_or(ModelError::WrongDocument("channel"))?;
    let k = key.to_string();
    if doc.get(&obj, &k)?.is_some() {
        return Ok(false);
    }
    commit(doc, at_ms, |tx| {
        tx.put(&obj, k, true)?;
        Ok(true)
    })
}

/// The buckets of a channel, oldest first.
pub fn buckets(doc: &Automerge) -> Vec<BucketKey> {
    let Some(obj) = get_map(doc, &ROOT, "buckets") else {
        return Vec::new();
    };
    let mut v: Vec<BucketKey> = doc.keys(&obj).filter_map(|k| k.parse().ok()).collect();
    v.sort();
    v
}

/// Whether `doc` is a channel document for `channel`.
pub fn is_channel(doc: &Automerge, channel: DocId) -> bool {
    get_str(doc, &ROOT, "kind").as_deref() == Some("channel")
        && get_str(doc, &ROOT, "channel") == Some(channel.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn dates() {
        assert_eq!(BucketKey::day_of(0).to_string(), "1970-01-01.0");
        let k = BucketKey::day_of(1_795_305_600_000);
        assert_eq!(k.to_string(), "2026-11-22.0");
        assert!("2026-02-31.0".parse::<BucketKey>().is_err());
        assert!("nonsense".parse::<BucketKey>().is_err());
    }

    proptest! {
        #[test]
        fn bucket_keys_round_trip(day in -100_000i64..1_000_000, part in 0u32..1000) {
            let k = BucketKey { day, part };
            prop_assert_eq!(k.to_string().parse::<BucketKey>().unwrap(), k);
        }
    }

    use crate::Identity;
    use crate::workspace;

    fn ident(n: u8, name: &str) -> Identity {
        Identity::from_secrets([n; 32], [n + 100; 32], name)
    }

    /// A workspace with alice (owner), bob, carol and mallory as members.
    fn team() -> (Vec<Identity>, WorkspaceView) {
        let people: Vec<Identity> = ["alice", "bob", "carol", "mallory"]
            .iter()
            .enumerate()
            .map(|(i, n)| ident(i as u8 + 1, n))
            .collect();
        let mut doc = Automerge::new().with_actor(ActorId::from(&[1u8; 16][..]));
        let ws = workspace::create(&mut doc, &people[0], "acme", [7; 16], 1).unwrap();
        for p in &people[1..] {
            workspace::put_device(&mut doc, &p.device_cert("x", 2), 2).unwrap();
            workspace::set_role(&mut doc, &people[0], ws, p.person_id(), Role::Member, 2).unwrap();
        }
        let v = workspace::view(&doc, ws);
        (people, v)
    }

    fn private_channel(people: &[Identity], v: &WorkspaceView) -> (Automerge, DocId) {
        let ws = v.id.unwrap();
        let nonce = [5; 16];
        let id = private_id(ws, &people[0].person_id(), &nonce);
        let mut doc = init(ws, id).unwrap();
        make_private(
            &mut doc,
            &people[0],
            id,
            nonce,
            &[people[1].person_id()],
            10,
        )
        .unwrap();
        (doc, id)
    }

    #[test]
    fn private_channel_members_add_and_remove() {
        let (p, v) = team();
        let (mut doc, id) = private_channel(&p, &v);
        let cv = view(&doc, &v, id);
        assert_eq!(cv.kind, ChannelKind::Private);
        assert_eq!(cv.creator, Some(p[0].person_id()));
        assert_eq!(
            cv.members,
            BTreeSet::from([p[0].person_id(), p[1].person_id()])
        );
        // bob (a member) adds carol; alice removes bob.
        set_member(&mut doc, &p[1], &v, id, p[2].person_id(), true, 20).unwrap();
        set_member(&mut doc, &p[0], &v, id, p[1].person_id(), false, 30).unwrap();
        let cv = view(&doc, &v, id);
        assert_eq!(
            cv.members,
            BTreeSet::from([p[0].person_id(), p[2].person_id()])
        );
        // Nobody removes the creator; bob, removed, can no longer change anything.
        assert!(set_member(&mut doc, &p[2], &v, id, p[0].person_id(), false, 40).is_err());
        assert!(set_member(&mut doc, &p[1], &v, id, p[1].person_id(), true, 40).is_err());
    }

    #[test]
    fn forged_channel_memberships_count_for_nothing() {
        let (p, v) = team();
        let (mut doc, id) = private_channel(&p, &v);
        // mallory, not a member, writes herself in by hand (the API would refuse).
        let rec = Signed::sign(
            &p[3].device,
            ChannelMembership {
                channel: id,
                person: p[3].person_id(),
                member: true,
                at_ms: 50,
            },
        );
        let obj = get_map(&doc, &ROOT, "members").unwrap();
        commit(&mut doc, 50, |tx| {
            tx.put(&obj, membership_key(&rec), rec.to_bytes())?;
            Ok(())
        })
        .unwrap();
        // ...and claims to be the creator of the channel.
        commit(&mut doc, 51, |tx| {
            tx.put(
                ROOT,
                "creator",
                format!("{}:{}", p[3].person_id(), hex_nonce(&[5; 16])),
            )?;
            Ok(())
        })
        .unwrap();
        let cv = view(&doc, &v, id);
        assert!(!cv.members.contains(&p[3].person_id()));
        assert_ne!(cv.creator, Some(p[3].person_id()));
    }

    #[test]
    fn a_dm_is_the_same_channel_for_every_participant() {
        let (p, v) = team();
        let ws = v.id.unwrap();
        let (a, b) = (p[0].person_id(), p[1].person_id());
        assert_eq!(dm_id(ws, &[a, b]), dm_id(ws, &[b, a, b]));
        assert_ne!(dm_id(ws, &[a, b]), dm_id(ws, &[a, b, p[2].person_id()]));
        let x = init_dm(ws, &[a, b]).unwrap();
        let y = init_dm(ws, &[b, a]).unwrap();
        assert_eq!(x.get_heads(), y.get_heads());
        let id = dm_id(ws, &[a, b]);
        let cv = view(&x, &v, id);
        assert_eq!(
            (cv.kind, cv.members),
            (ChannelKind::Dm, BTreeSet::from([a, b]))
        );
        // A participant list that does not hash to the id is not this DM's.
        let mut forged = x.fork();
        commit(&mut forged, 5, |tx| {
            tx.put(ROOT, "dm", dm_list(&[a, b, p[3].person_id()]))?;
            Ok(())
        })
        .unwrap();
        assert!(!view(&forged, &v, id).members.contains(&p[3].person_id()));
    }

    #[test]
    fn two_creators_converge_on_one_document() {
        let (ws, ch) = (DocId([1; 16]), DocId([2; 16]));
        let mut a = init(ws, ch)
            .unwrap()
            .with_actor(ActorId::from(&[1u8; 16][..]));
        let mut b = init(ws, ch)
            .unwrap()
            .with_actor(ActorId::from(&[2u8; 16][..]));
        assert_eq!(a.get_heads(), b.get_heads());
        add_bucket(&mut a, BucketKey { day: 5, part: 0 }, 1).unwrap();
        add_bucket(&mut b, BucketKey { day: 6, part: 0 }, 1).unwrap();
        a.merge(&mut b).unwrap();
        assert_eq!(buckets(&a).len(), 2);
        assert!(is_channel(&a, ch));
    }
}
