//! The workspace document: genesis, device certificates, members and roles, display names,
//! and the channel list.
//!
//! Root keys: `kind` = "workspace", `genesis` (a signed [`Genesis`]), and five maps whose values
//! are signed envelopes: `devices` (`"{device}:{person}"` → [`DeviceCert`]), `members`
//! (`"{person}:{time}:{signer device}"` → [`Membership`], append-only: the role history is
//! kept, and nobody's record is replaced by anyone else's), `profiles` (person hex →
//! [`Profile`]), `channels` (channel id → [`ChannelInfo`]), `relays`
//! (`"{relay device}:{time}:{signer device}"` → [`RelayRecord`], append-only; a relay's newest
//! record by a current owner or admin decides whether it is listed). Where a key can see concurrent
//! writes, Automerge keeps them all and the view picks the newest *valid* one, so a forged
//! value never wins over a genuine one.

use std::collections::{BTreeMap, BTreeSet};

use automerge::transaction::Transactable;
use automerge::{Automerge, ObjType, ROOT, ReadDoc};

use crate::identity::device_cert_valid;
use crate::ids::{DeviceId, DocId, PersonId};
use crate::signed::{
    ChannelInfo, DeviceCert, Genesis, Membership, Profile, Record, RelayRecord, Signed,
};
use crate::{Identity, ModelError, Role, commit, get_all_bytes, get_bytes, get_map, get_str};

/// The workspace id bound to an owner key and a nonce.
pub fn workspace_id(owner: &PersonId, nonce: &[u8; 16]) -> DocId {
    DocId::derive("flyt/workspace/v1", &[&owner.0, nonce])
}

/// Creates a workspace in the empty document `doc` (whose actor the caller has set): genesis,
/// the owner's device certificate, membership and profile, all in one change.
pub fn create(
    doc: &mut Automerge,
    me: &Identity,
    name: &str,
    nonce: [u8; 16],
    at_ms: i64,
) -> Result<DocId, ModelError> {
    crate::validate_name(name, false)?;
    let id = workspace_id(&me.person_id(), &nonce);
    let genesis = Signed::sign(
        &me.person,
        Genesis {
            workspace: id,
            nonce,
            name: name.to_owned(),
            at_ms,
        },
    );
    let cert = me.device_cert("first device", at_ms);
    let member = Signed::sign(
        &me.device,
        Membership {
            workspace: id,
            person: me.person_id(),
            role: Role::Owner,
            at_ms,
        },
    );
    let profile = Signed::sign(
        &me.device,
        Profile {
            workspace: id,
            name: me.name.clone(),
            at_ms,
        },
    );
    commit(doc, at_ms, |tx| {
        tx.put(ROOT, "kind", "workspace")?;
        tx.put(ROOT, "genesis", genesis.to_bytes())?;
        let devices = tx.put_object(ROOT, "devices", ObjType::Map)?;
        tx.put(&devices, device_key(&cert), cert.to_bytes())?;
        let members = tx.put_object(ROOT, "members", ObjType::Map)?;
        tx.put(&members, member_key(&member), member.to_bytes())?;
        let profiles = tx.put_object(ROOT, "profiles", ObjType::Map)?;
        tx.put(&profiles, me.person_id().to_string(), profile.to_bytes())?;
        tx.put_object(ROOT, "channels", ObjType::Map)?;
        tx.put_object(ROOT, RELAYS, ObjType::Map)?;
        Ok(())
    })?;
    Ok(id)
}

fn put_in(
    doc: &mut Automerge,
    map: &'static str,
    key: String,
    bytes: Vec<u8>,
    at_ms: i64,
) -> Result<(), ModelError> {
    let obj = get_map(doc, &ROOT, map).ok_or(ModelError::WrongDocument("workspace"))?;
    commit(doc, at_ms, |tx| {
        tx.put(&obj, key, bytes)?;
        Ok(())
    })
}

/// Lists or updates a channel (create, rename, topic). Any member's device may.
pub fn put_channel(
    doc: &mut Automerge,
    me: &Identity,
    info: ChannelInfo,
) -> Result<(), ModelError> {
    crate::validate_name(&info.name, true)?;
    let at = info.at_ms;
    let key = info.channel.to_string();
    put_in(
        doc,
        "channels",
        key,
        Signed::sign(&me.device, info).to_bytes(),
        at,
    )
}

/// Sets `person`'s role. Checked here against the current view; the view re-checks on read.
pub fn set_role(
    doc: &mut Automerge,
    me: &Identity,
    workspace: DocId,
    person: PersonId,
    role: Role,
    at_ms: i64,
) -> Result<(), ModelError> {
    let view = view(doc, workspace);
    let mine = view.role(&me.person_id());
    if !may_assign(mine, view.role(&person), role) {
        return Err(ModelError::NotAllowed(
            "only owners and admins change roles, and nobody changes the owner's",
        ));
    }
    let rec = Signed::sign(
        &me.device,
        Membership {
            workspace,
            person,
            role,
            at_ms,
        },
    );
    put_in(doc, "members", member_key(&rec), rec.to_bytes(), at_ms)
}

fn member_key(rec: &Signed<Membership>) -> String {
    format!(
        "{}:{}:{}",
        rec.payload.person,
        rec.payload.at_ms,
        rec.device()
    )
}

fn device_key(cert: &Signed<DeviceCert>) -> String {
    format!("{}:{}", cert.payload.device, PersonId(cert.signer))
}

/// Adds a device certificate (used for new members and linked devices).
pub fn put_device(
    doc: &mut Automerge,
    cert: &Signed<DeviceCert>,
    at_ms: i64,
) -> Result<(), ModelError> {
    put_in(doc, "devices", device_key(cert), cert.to_bytes(), at_ms)
}

/// Sets this person's display name.
pub fn set_profile(
    doc: &mut Automerge,
    me: &Identity,
    workspace: DocId,
    name: &str,
    at_ms: i64,
) -> Result<(), ModelError> {
    crate::validate_name(name, false)?;
    let rec = Signed::sign(
        &me.device,
        Profile {
            workspace,
            name: name.to_owned(),
            at_ms,
        },
    );
    put_in(
        doc,
        "profiles",
        me.person_id().to_string(),
        rec.to_bytes(),
        at_ms,
    )
}

/// The root map of relay records.
const RELAYS: &str = "relays";

/// Adds (`active`) or removes a relay. Only owners and admins may; the view re-checks on read.
pub fn set_relay(
    doc: &mut Automerge,
    me: &Identity,
    record: RelayRecord,
) -> Result<(), ModelError> {
    let view = view(doc, record.workspace);
    if view.role(&me.person_id()) < Some(Role::Admin) {
        return Err(ModelError::NotAllowed(
            "only owners and admins add or remove relays",
        ));
    }
    if record.url.is_empty() || record.url.len() > 2048 || record.addrs.len() > 64 {
        return Err(ModelError::Malformed(
            "a relay needs a URL and at most 64 addresses",
        ));
    }
    let at = record.at_ms;
    let rec = Signed::sign(&me.device, record);
    let key = relay_key(&rec);
    // Workspaces created before relays existed lack the map. Two admins creating it at the
    // same moment would make Automerge keep one of the two maps: a race only such old
    // workspaces can have (new ones get the map at genesis).
    if get_map(doc, &ROOT, RELAYS).is_none() {
        commit(doc, at, |tx| {
            tx.put_object(ROOT, RELAYS, ObjType::Map)?;
            Ok(())
        })?;
    }
    put_in(doc, RELAYS, key, rec.to_bytes(), at)
}

fn relay_key(rec: &Signed<RelayRecord>) -> String {
    format!(
        "{}:{}:{}",
        rec.payload.relay,
        rec.payload.at_ms,
        rec.device()
    )
}

/// The workspace id a workspace document was founded as (its genesis checks out), if any.
pub fn id_of(doc: &Automerge) -> Option<DocId> {
    if get_str(doc, &ROOT, "kind").as_deref() != Some("workspace") {
        return None;
    }
    let g = Signed::<Genesis>::decode(&get_bytes(doc, &ROOT, "genesis")?).ok()?;
    let id = workspace_id(&PersonId(g.signer), &g.payload.nonce);
    (g.payload.workspace == id).then_some(id)
}

fn may_assign(signer: Option<Role>, target_current: Option<Role>, new: Role) -> bool {
    match signer {
        Some(Role::Owner) => new != Role::Owner && target_current != Some(Role::Owner),
        Some(Role::Admin) => new != Role::Owner && target_current != Some(Role::Owner),
        _ => false,
    }
}

/// A verified member of a workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Their key.
    pub person: PersonId,
    /// Their role (never [`Role::Removed`] in [`WorkspaceView::members`]).
    pub role: Role,
    /// Their display name, or a short key if they set none.
    pub name: String,
}

/// A relay a workspace syncs through (a verified, active [`RelayRecord`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayListing {
    /// Its HTTP URL.
    pub url: String,
    /// Direct UDP addresses of its iroh endpoint.
    pub addrs: Vec<String>,
    /// Who added it.
    pub by: PersonId,
    /// When, ms.
    pub at_ms: i64,
}

/// A verified channel listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelListing {
    /// The current (newest valid) info.
    pub info: ChannelInfo,
    /// Who wrote it.
    pub by: PersonId,
}

/// What a workspace document says, after every signature and right has been checked.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WorkspaceView {
    /// The workspace id the view was computed for.
    pub id: Option<DocId>,
    /// The name from the genesis record.
    pub name: String,
    /// The owner (the genesis signer), if the genesis checks out.
    pub owner: Option<PersonId>,
    /// Creation time, ms.
    pub created_ms: i64,
    /// Roles of everyone with a valid membership record, removed people included.
    pub roles: BTreeMap<PersonId, Role>,
    /// Display names.
    pub names: BTreeMap<PersonId, String>,
    /// Certified devices and whose they are.
    pub devices: BTreeMap<DeviceId, PersonId>,
    /// Channels by id.
    pub channels: BTreeMap<DocId, ChannelListing>,
    /// Active relays by their device (endpoint) id.
    pub relays: BTreeMap<DeviceId, RelayListing>,
}

impl WorkspaceView {
    /// The role of `p`, if they ever had a valid one.
    pub fn role(&self, p: &PersonId) -> Option<Role> {
        self.roles.get(p).copied()
    }

    /// Whether `p` is a current member.
    pub fn is_member(&self, p: &PersonId) -> bool {
        self.role(p).is_some_and(|r| r >= Role::Member)
    }

    /// The person a device belongs to, if it holds a valid certificate here.
    pub fn device_person(&self, d: &DeviceId) -> Option<PersonId> {
        self.devices.get(d).copied()
    }

    /// The display name of `p` (a short key if none was set).
    pub fn name_of(&self, p: &PersonId) -> String {
        self.names
            .get(p)
            .cloned()
            .unwrap_or_else(|| p.to_string()[..8].to_owned())
    }

    /// Current members, sorted by name.
    pub fn members(&self) -> Vec<Member> {
        let mut v: Vec<Member> = self
            .roles
            .iter()
            .filter(|(_, r)| **r >= Role::Member)
            .map(|(p, r)| Member {
                person: *p,
                role: *r,
                name: self.name_of(p),
            })
            .collect();
        v.sort_by_key(|m| m.name.to_lowercase());
        v
    }

    /// Members whose display name matches `name` (case-insensitive).
    pub fn find_by_name(&self, name: &str) -> Vec<PersonId> {
        self.members()
            .into_iter()
            .filter(|m| m.name.eq_ignore_ascii_case(name))
            .map(|m| m.person)
            .collect()
    }
}

/// Every key of the map `obj` with the valid envelopes of type `T` under it (all concurrent
/// values).
pub(crate) fn entries_in<T: Record>(
    doc: &Automerge,
    obj: &automerge::ObjId,
) -> Vec<(String, Vec<Signed<T>>)> {
    doc.keys(obj)
        .map(|k| {
            let vals = get_all_bytes(doc, obj, &k)
                .iter()
                .filter_map(|b| Signed::<T>::decode(b).ok())
                .collect();
            (k, vals)
        })
        .collect()
}

fn entries<T: Record>(doc: &Automerge, map: &str) -> Vec<(String, Vec<Signed<T>>)> {
    match get_map(doc, &ROOT, map) {
        Some(obj) => entries_in(doc, &obj),
        None => Vec::new(),
    }
}

/// Verifies and reads a workspace document. Invalid records are left out.
pub fn view(doc: &Automerge, id: DocId) -> WorkspaceView {
    let mut v = WorkspaceView {
        id: Some(id),
        ..Default::default()
    };
    if get_str(doc, &ROOT, "kind").as_deref() != Some("workspace") {
        return v;
    }
    let Some(genesis) = get_bytes(doc, &ROOT, "genesis")
        .and_then(|b| Signed::<Genesis>::decode(&b).ok())
        .filter(|g| {
            g.payload.workspace == id && workspace_id(&PersonId(g.signer), &g.payload.nonce) == id
        })
    else {
        return v;
    };
    let owner = PersonId(genesis.signer);
    v.owner = Some(owner);
    v.name = genesis.payload.name.clone();
    v.created_ms = genesis.payload.at_ms;

    // A device key is certified for one person only: the device signed over that person key,
    // so no other person can hold a valid certificate for it.
    for (key, certs) in entries::<DeviceCert>(doc, "devices") {
        for c in certs
            .into_iter()
            .filter(|c| device_key(c) == key && device_cert_valid(c))
        {
            v.devices.insert(c.payload.device, PersonId(c.signer));
        }
    }

    v.roles = resolve_roles(owner, &candidates_for(doc, id, &v));

    for (key, profiles) in entries::<Profile>(doc, "profiles") {
        let Ok(person) = key.parse::<PersonId>() else {
            continue;
        };
        if let Some(p) = profiles
            .into_iter()
            .filter(|p| p.payload.workspace == id && v.device_person(&p.device()) == Some(person))
            .max_by_key(|p| (p.payload.at_ms, p.signer))
        {
            v.names.insert(person, p.payload.name);
        }
    }

    for (key, infos) in entries::<ChannelInfo>(doc, "channels") {
        if let Some((by, info)) = infos
            .into_iter()
            .filter(|c| c.payload.workspace == id && c.payload.channel.to_string() == key)
            .filter_map(|c| Some((v.device_person(&c.device())?, c.payload)))
            .max_by_key(|(by, c)| (c.at_ms, *by))
        {
            v.channels.insert(info.channel, ChannelListing { info, by });
        }
    }

    // A relay's newest record by someone who is an owner or admin now decides.
    let mut relays: BTreeMap<DeviceId, (PersonId, RelayRecord)> = BTreeMap::new();
    for (key, recs) in entries::<RelayRecord>(doc, RELAYS) {
        for r in recs {
            if relay_key(&r) != key || r.payload.workspace != id {
                continue;
            }
            let Some(by) = v.device_person(&r.device()) else {
                continue;
            };
            if v.role(&by) < Some(Role::Admin) {
                continue;
            }
            let newer = relays
                .get(&r.payload.relay)
                .is_none_or(|(b, old)| (old.at_ms, *b) < (r.payload.at_ms, by));
            if newer {
                relays.insert(r.payload.relay, (by, r.payload));
            }
        }
    }
    v.relays = relays
        .into_iter()
        .filter(|(_, (_, r))| r.active)
        .map(|(d, (by, r))| {
            let l = RelayListing {
                url: r.url,
                addrs: r.addrs,
                by,
                at_ms: r.at_ms,
            };
            (d, l)
        })
        .collect();
    v
}

/// Membership records per person, with the person each signing device belongs to. Records
/// from uncertified devices are dropped here.
fn candidates_for(
    doc: &Automerge,
    id: DocId,
    v: &WorkspaceView,
) -> Vec<(PersonId, Vec<(PersonId, Membership)>)> {
    let mut by_person: BTreeMap<PersonId, Vec<(PersonId, Membership)>> = BTreeMap::new();
    for (key, recs) in entries::<Membership>(doc, "members") {
        for r in recs {
            if member_key(&r) != key || r.payload.workspace != id {
                continue;
            }
            if let Some(signer) = v.device_person(&r.device()) {
                by_person
                    .entry(r.payload.person)
                    .or_default()
                    .push((signer, r.payload));
            }
        }
    }
    by_person.into_iter().collect()
}

/// Decides everyone's role from the membership records, the same way on every replica and
/// without oscillating:
/// 1. who was *ever* an admin: the owner's grants, and grants by anyone already in the set,
///    grown to a fixpoint (monotone, so it ends);
/// 2. a first answer counting records by anyone ever an admin;
/// 3. the final answer, where a person who ended up below admin in (2) keeps the authority of
///    the records they wrote before the record that demoted them, and loses it after.
///
/// So removing an admin does not undo what they did while they were one, and two admins who
/// remove each other at the same time both stay (neither removal was signed by someone who
/// still held the right).
pub(crate) fn resolve_roles(
    owner: PersonId,
    candidates: &[(PersonId, Vec<(PersonId, Membership)>)],
) -> BTreeMap<PersonId, Role> {
    let grants = |m: &Membership| m.role != Role::Owner;
    let mut ever = BTreeSet::from([owner]);
    loop {
        let before = ever.len();
        for (person, recs) in candidates {
            if recs
                .iter()
                .any(|(s, m)| ever.contains(s) && m.role == Role::Admin && grants(m))
            {
                ever.insert(*person);
            }
        }
        if ever.len() == before {
            break;
        }
    }
    let pick = |valid: &dyn Fn(&PersonId, &Membership) -> bool| {
        let mut roles = BTreeMap::from([(owner, (Role::Owner, i64::MAX))]);
        for (person, recs) in candidates {
            if *person == owner {
                continue;
            }
            if let Some((_, m)) = recs
                .iter()
                .filter(|(s, m)| grants(m) && valid(s, m))
                .max_by_key(|(s, m)| (m.at_ms, *s))
            {
                roles.insert(*person, (m.role, m.at_ms));
            }
        }
        roles
    };
    let first = pick(&|s, _| ever.contains(s));
    let cutoff = |s: &PersonId| -> i64 {
        match first.get(s) {
            Some((r, _)) if *r >= Role::Admin => i64::MAX,
            Some((_, at)) => *at,
            None => i64::MIN,
        }
    };
    pick(&|s, m| ever.contains(s) && m.at_ms < cutoff(s))
        .into_iter()
        .map(|(p, (r, _))| (p, r))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device_actor;

    pub(crate) fn ident(n: u8, name: &str) -> Identity {
        Identity::from_secrets([n; 32], [n + 100; 32], name)
    }

    fn new_ws(owner: &Identity) -> (Automerge, DocId) {
        let mut doc = Automerge::new().with_actor(device_actor(&owner.device_id()));
        let id = create(&mut doc, owner, "acme", [9; 16], 1_000).unwrap();
        (doc, id)
    }

    fn fork(doc: &Automerge, who: &Identity) -> Automerge {
        doc.fork().with_actor(device_actor(&who.device_id()))
    }

    fn join(doc: &mut Automerge, owner: &Identity, ws: DocId, who: &Identity, role: Role, t: i64) {
        put_device(doc, &who.device_cert("laptop", t), t).unwrap();
        set_role(doc, owner, ws, who.person_id(), role, t).unwrap();
        set_profile(doc, who, ws, &who.name, t).unwrap();
    }

    fn relay(ws: DocId, n: u8, active: bool, at_ms: i64) -> RelayRecord {
        RelayRecord {
            workspace: ws,
            relay: DeviceId([n; 32]),
            url: format!("http://127.0.0.1:{n}"),
            addrs: vec!["127.0.0.1:8788".into()],
            active,
            at_ms,
        }
    }

    #[test]
    fn relays_are_listed_by_admins_only_and_removed_by_a_newer_record() {
        let (alice, bob, mallory) = (ident(1, "alice"), ident(2, "bob"), ident(3, "mallory"));
        let (mut doc, ws) = new_ws(&alice);
        assert_eq!(id_of(&doc), Some(ws));
        join(&mut doc, &alice, ws, &bob, Role::Admin, 2_000);
        join(&mut doc, &alice, ws, &mallory, Role::Member, 2_000);
        set_relay(&mut doc, &bob, relay(ws, 7, true, 3_000)).unwrap();
        let v = view(&doc, ws);
        assert_eq!(v.relays.len(), 1);
        assert_eq!(v.relays[&DeviceId([7; 32])].by, bob.person_id());

        // A member may not add one, and a record it writes by hand is ignored.
        assert!(set_relay(&mut doc, &mallory, relay(ws, 8, true, 4_000)).is_err());
        let forged = Signed::sign(&mallory.device, relay(ws, 8, true, 4_000));
        put_in(
            &mut doc,
            RELAYS,
            relay_key(&forged),
            forged.to_bytes(),
            4_000,
        )
        .unwrap();
        // Nor may it remove one.
        let removal = Signed::sign(&mallory.device, relay(ws, 7, false, 5_000));
        put_in(
            &mut doc,
            RELAYS,
            relay_key(&removal),
            removal.to_bytes(),
            5_000,
        )
        .unwrap();
        let v = view(&doc, ws);
        assert_eq!(
            v.relays.keys().collect::<Vec<_>>(),
            vec![&DeviceId([7; 32])]
        );

        // An admin's newer record removes it; another workspace's record never counts.
        set_relay(&mut doc, &alice, relay(ws, 7, false, 6_000)).unwrap();
        let other = Signed::sign(&alice.device, relay(DocId([5; 16]), 9, true, 6_000));
        put_in(&mut doc, RELAYS, relay_key(&other), other.to_bytes(), 6_000).unwrap();
        assert!(view(&doc, ws).relays.is_empty());
    }

    #[test]
    fn owner_and_members() {
        let (alice, bob) = (ident(1, "alice"), ident(2, "bob"));
        let (mut doc, ws) = new_ws(&alice);
        join(&mut doc, &alice, ws, &bob, Role::Member, 2_000);
        let v = view(&doc, ws);
        assert_eq!(v.owner, Some(alice.person_id()));
        assert_eq!(v.name, "acme");
        assert_eq!(v.role(&bob.person_id()), Some(Role::Member));
        assert_eq!(v.name_of(&bob.person_id()), "bob");
        assert_eq!(v.members().len(), 2);
    }

    #[test]
    fn a_member_cannot_make_itself_admin() {
        let (alice, mallory) = (ident(1, "alice"), ident(3, "mallory"));
        let (mut doc, ws) = new_ws(&alice);
        join(&mut doc, &alice, ws, &mallory, Role::Member, 2_000);
        // The API refuses...
        assert!(
            set_role(
                &mut doc,
                &mallory,
                ws,
                mallory.person_id(),
                Role::Admin,
                3_000
            )
            .is_err()
        );
        // ...and a hand-written record, signed by mallory's real device, is ignored by the view.
        let forged = Signed::sign(
            &mallory.device,
            Membership {
                workspace: ws,
                person: mallory.person_id(),
                role: Role::Admin,
                at_ms: 9_000,
            },
        );
        put_in(
            &mut doc,
            "members",
            mallory.person_id().to_string(),
            forged.to_bytes(),
            9_000,
        )
        .unwrap();
        // (The overwrite erased alice's record for mallory from the current state; rejecting such
        // changes before they are applied is the sync engine's job. The forgery never grants.)
        assert_ne!(view(&doc, ws).role(&mallory.person_id()), Some(Role::Admin));
        // A forged owner demotion is ignored too.
        let forged = Signed::sign(
            &mallory.device,
            Membership {
                workspace: ws,
                person: alice.person_id(),
                role: Role::Removed,
                at_ms: 9_000,
            },
        );
        put_in(
            &mut doc,
            "members",
            alice.person_id().to_string(),
            forged.to_bytes(),
            9_000,
        )
        .unwrap();
        assert_eq!(view(&doc, ws).role(&alice.person_id()), Some(Role::Owner));
    }

    #[test]
    fn a_forged_genesis_is_not_an_owner() {
        let (alice, mallory) = (ident(1, "alice"), ident(3, "mallory"));
        let (mut doc, ws) = new_ws(&alice);
        let forged = Signed::sign(
            &mallory.person,
            Genesis {
                workspace: ws,
                nonce: [9; 16],
                name: "mine".into(),
                at_ms: 5,
            },
        );
        commit(&mut doc, 5, |tx| {
            Ok(tx.put(ROOT, "genesis", forged.to_bytes())?)
        })
        .unwrap();
        let v = view(&doc, ws);
        assert_eq!(v.owner, None);
        assert!(v.roles.is_empty());
    }

    #[test]
    fn nobody_can_claim_another_persons_device() {
        let (alice, mallory) = (ident(1, "alice"), ident(3, "mallory"));
        let (mut doc, ws) = new_ws(&alice);
        let mut cert = mallory.device_cert("x", 5).payload;
        cert.device = alice.device_id();
        let forged = Signed::sign(&mallory.person, cert);
        // Written over the genuine certificate, the forgery is never attributed to mallory.
        put_device(&mut doc, &forged, 9_999).unwrap();
        assert_ne!(
            view(&doc, ws).device_person(&alice.device_id()),
            Some(mallory.person_id())
        );
    }

    #[test]
    fn removing_an_admin_keeps_what_they_did_as_admin() {
        let (alice, bob, carol) = (ident(1, "alice"), ident(2, "bob"), ident(4, "carol"));
        let (mut doc, ws) = new_ws(&alice);
        join(&mut doc, &alice, ws, &bob, Role::Admin, 2_000);
        join(&mut doc, &alice, ws, &carol, Role::Member, 2_000);
        // bob re-confirms carol (replacing alice's record), then alice removes bob.
        set_role(&mut doc, &bob, ws, carol.person_id(), Role::Member, 3_000).unwrap();
        set_role(&mut doc, &alice, ws, bob.person_id(), Role::Removed, 4_000).unwrap();
        let v = view(&doc, ws);
        assert_eq!(v.role(&carol.person_id()), Some(Role::Member));
        assert_eq!(v.role(&bob.person_id()), Some(Role::Removed));
        // What bob signs after his removal counts for nothing.
        let late = Signed::sign(
            &bob.device,
            Membership {
                workspace: ws,
                person: carol.person_id(),
                role: Role::Admin,
                at_ms: 5_000,
            },
        );
        put_in(
            &mut doc,
            "members",
            carol.person_id().to_string(),
            late.to_bytes(),
            5_000,
        )
        .unwrap();
        assert_ne!(view(&doc, ws).role(&carol.person_id()), Some(Role::Admin));
    }

    #[test]
    fn admins_removing_each_other_concurrently_both_stay() {
        let (alice, bob, carol) = (ident(1, "alice"), ident(2, "bob"), ident(4, "carol"));
        let (mut a, ws) = new_ws(&alice);
        join(&mut a, &alice, ws, &bob, Role::Admin, 2_000);
        join(&mut a, &alice, ws, &carol, Role::Admin, 2_000);
        let (mut b, mut c) = (fork(&a, &bob), fork(&a, &carol));
        set_role(&mut a, &alice, ws, bob.person_id(), Role::Admin, 5_000).unwrap();
        set_role(&mut a, &alice, ws, carol.person_id(), Role::Admin, 5_000).unwrap();
        set_role(&mut b, &bob, ws, carol.person_id(), Role::Removed, 6_000).unwrap();
        set_role(&mut c, &carol, ws, bob.person_id(), Role::Removed, 6_000).unwrap();
        a.merge(&mut b).unwrap();
        a.merge(&mut c).unwrap();
        let v = view(&a, ws);
        assert_eq!(v.role(&bob.person_id()), Some(Role::Admin));
        assert_eq!(v.role(&carol.person_id()), Some(Role::Admin));
    }

    #[test]
    fn concurrent_role_changes_converge() {
        let (alice, bob, carol) = (ident(1, "alice"), ident(2, "bob"), ident(4, "carol"));
        let (mut a, ws) = new_ws(&alice);
        join(&mut a, &alice, ws, &bob, Role::Admin, 2_000);
        join(&mut a, &alice, ws, &carol, Role::Member, 2_000);
        let mut b = fork(&a, &bob);
        set_role(&mut a, &alice, ws, carol.person_id(), Role::Admin, 3_000).unwrap();
        set_role(&mut b, &bob, ws, carol.person_id(), Role::Removed, 3_000).unwrap();
        let mut a2 = a.clone();
        a2.merge(&mut b.clone()).unwrap();
        b.merge(&mut a).unwrap();
        assert_eq!(view(&a2, ws), view(&b, ws));
        assert_eq!(a2.get_heads(), b.get_heads());
    }
}
