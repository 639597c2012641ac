//! The store as the sync engine's [`Host`]: documents from the `DocCache`, the share policy
//! from the verified projection, remote changes persisted and projected in the same
//! transaction, and sync state saved per (peer, document).

use automerge::Automerge;
use crdt_model::bucket;
use crdt_model::signed::{DeviceCert, Signed};
use crdt_model::workspace;
use crdt_model::{DeviceId, DocId, Role, device_actor};
use rusqlite::{OptionalExtension, params};

use crate::docs;
use crate::sync::engine::{Action, CloseReason, Engine, Event, Host};
use crate::sync::protocol::{
    DocRef, Frame, MAX_PEER_ADDRS, MAX_PEER_ENTRIES, PeerEntry, checked_peers,
};
use crate::{Store, StoreError, Writer, now_ms};

/// `flyt status`: this home's node, peers and documents.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Status {
    /// Whether a node recorded listening addresses (it clears them when it stops).
    pub node_running: bool,
    /// Where it listens.
    pub listen: Vec<String>,
    /// Known peers.
    pub peers: Vec<PeerStatus>,
    /// Workspace documents held.
    pub workspaces: i64,
    /// Channel documents held.
    pub channels: i64,
    /// Bucket documents held.
    pub buckets: i64,
    /// Messages in the projection.
    pub messages: i64,
}

/// One known peer.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PeerStatus {
    /// Its device id.
    pub device: String,
    /// Its person's display name, if known.
    pub name: Option<String>,
    /// Its last known addresses.
    pub addrs: Vec<String>,
    /// Documents with a saved sync state for it.
    pub synced_documents: i64,
    /// When a sync message last went either way with it, as of the last connection that
    /// ended (ms); the running node knows newer.
    pub last_sync_ms: Option<i64>,
}

/// What the runtime must do after the store handled a sync event: the transaction that made
/// every received change durable has committed, so these may go out.
#[derive(Debug)]
pub enum Outgoing {
    /// Send a frame to a peer.
    Send(DeviceId, Frame),
    /// Close the connection to a peer.
    Close(DeviceId, CloseReason),
    /// A peer's changes to this document are now durable and projected (for live views).
    Changed(DocId),
}

struct DocRow {
    kind: String,
    workspace: DocId,
    channel: Option<DocId>,
    bucket_key: Option<String>,
}

/// What a newly linked device receives from the device that linked it.
#[derive(Clone)]
pub struct Linked {
    /// The person's secret key.
    pub person_secret: [u8; 32],
    /// The person's display name.
    pub name: String,
    /// Workspaces that now certify the new device.
    pub workspaces: Vec<DocId>,
}

impl std::fmt::Debug for Linked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Linked")
            .field("name", &self.name)
            .field("workspaces", &self.workspaces)
            .finish_non_exhaustive()
    }
}

impl Writer<'_> {
    /// Marks the ticket with `nonce` used by `by`; refuses unknown and used tickets.
    fn use_ticket(&self, nonce: &str, by: &DeviceId) -> Result<(), StoreError> {
        let used: Option<Option<String>> = self
            .tx
            .query_row(
                "SELECT used_by FROM invites WHERE nonce = ?1",
                [nonce],
                |r| r.get(0),
            )
            .optional()?;
        match used {
            None => return Err(crdt_model::ModelError::NotAllowed("unknown ticket").into()),
            Some(Some(_)) => {
                return Err(
                    crdt_model::ModelError::NotAllowed("this ticket was already used").into(),
                );
            }
            Some(None) => {}
        }
        self.tx.execute(
            "UPDATE invites SET used_by = ?1, used_ms = ?2 WHERE nonce = ?3",
            params![by.to_string(), now_ms(), nonce],
        )?;
        Ok(())
    }

    fn doc_row(&self, id: DocId) -> Option<DocRow> {
        let row: Option<(String, String, Option<String>, Option<String>)> = self
            .tx
            .prepare_cached("SELECT kind, workspace, channel, bucket_key FROM docs WHERE id = ?1")
            .ok()?
            .query_row([id.to_string()], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .optional()
            .ok()?;
        let (kind, ws, ch, key) = row?;
        Some(DocRow {
            kind,
            workspace: ws.parse().ok()?,
            channel: ch.and_then(|c| c.parse().ok()),
            bucket_key: key,
        })
    }

    /// The person a device belongs to as a current member of `ws`.
    fn member_person(&self, ws: DocId, device: &DeviceId) -> Option<String> {
        self.tx
            .prepare_cached(
                "SELECT d.person FROM devices d JOIN members m
                   ON m.workspace = d.workspace AND m.person = d.person
                 WHERE d.workspace = ?1 AND d.device = ?2 AND m.role != 'removed'",
            )
            .ok()?
            .query_row(params![ws.to_string(), device.to_string()], |r| r.get(0))
            .optional()
            .ok()?
    }

    fn inviter_of(&self, ws: DocId) -> Option<String> {
        self.tx
            .prepare_cached("SELECT inviter FROM joining WHERE workspace = ?1")
            .ok()?
            .query_row([ws.to_string()], |r| r.get(0))
            .optional()
            .ok()?
    }

    /// Whether a channel reaches only some members (private channels and DMs). A channel doc we
    /// hold but do not see listed counts as restricted: it is shared with its members only.
    fn channel_restricted(&self, channel: DocId) -> bool {
        self.channel_flag(channel, "private").unwrap_or(true)
    }

    /// A boolean column of a channel's listing, if it is listed.
    fn channel_flag(&self, channel: DocId, column: &'static str) -> Option<bool> {
        self.tx
            .prepare_cached(&format!("SELECT {column} FROM channels WHERE id = ?1"))
            .ok()?
            .query_row([channel.to_string()], |r| r.get::<_, bool>(0))
            .optional()
            .ok()?
    }

    /// Who is in a private channel or DM, as verified from its document.
    fn channel_members(&self, channel: DocId) -> Vec<String> {
        self.tx
            .prepare_cached("SELECT person FROM channel_members WHERE channel = ?1 ORDER BY person")
            .and_then(|mut s| {
                s.query_map([channel.to_string()], |r| r.get(0))?
                    .collect::<Result<Vec<String>, _>>()
            })
            .unwrap_or_default()
    }

    /// Whether `peer` is a relay workspace `ws` lists (added by an owner or admin).
    fn is_relay(&mut self, ws: DocId, peer: &DeviceId) -> bool {
        self.view(ws).is_ok_and(|v| v.relays.contains_key(peer))
    }

    fn allowed(&mut self, peer: &DeviceId, row: &DocRow) -> bool {
        let Some(person) = self.member_person(row.workspace, peer) else {
            // A relay the workspace lists gets its documents, except private channels'.
            if self.is_relay(row.workspace, peer) {
                return row.channel.is_none_or(|ch| !self.channel_restricted(ch));
            }
            // The inviter of a workspace we are joining may send us its documents.
            return self.inviter_of(row.workspace) == Some(peer.to_string());
        };
        match row.channel {
            // Private channels and DMs reach only their members' devices. A private channel
            // document whose member list has not arrived yet holds nothing but its first change:
            // it may be synced with any workspace member, so the list can arrive.
            Some(ch) if self.channel_restricted(ch) => {
                let members = self.channel_members(ch);
                members.contains(&person) || (members.is_empty() && row.kind == "channel")
            }
            _ => true,
        }
    }
}

impl Writer<'_> {
    fn channel_is_dm(&self, channel: DocId) -> bool {
        self.channel_flag(channel, "dm").unwrap_or(false)
    }

    /// A DM's participants, from its document (all of them, removed members included: they
    /// make its id).
    fn dm_participants(&mut self, ws: DocId, channel: DocId) -> Option<Vec<crdt_model::PersonId>> {
        crdt_model::channel::dm_members(Host::doc(self, channel)?, ws, channel)
    }
}

impl Host for Writer<'_> {
    fn doc(&mut self, id: DocId) -> Option<&mut Automerge> {
        let me = self.me.device_id();
        match self.cache.get(self.tx, id, &me) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(doc = %id, "not syncing a document that does not load: {e}");
                None
            }
        }
    }

    fn doc_ref(&mut self, id: DocId) -> Option<DocRef> {
        let row = self.doc_row(id)?;
        Some(match row.kind.as_str() {
            "workspace" => DocRef::Workspace { id },
            "channel" if self.channel_is_dm(id) => DocRef::Dm {
                workspace: row.workspace,
                members: self.dm_participants(row.workspace, id)?,
            },
            "channel" => DocRef::Channel {
                id,
                workspace: row.workspace,
            },
            _ => DocRef::Bucket {
                channel: row.channel?,
                key: row.bucket_key?,
            },
        })
    }

    fn create(&mut self, r: &DocRef) -> Option<&mut Automerge> {
        let id = r.id()?;
        let (meta, mut doc) = docs::offered(r, |ch| Some(self.doc_row(ch)?.workspace))?;
        doc.set_actor(device_actor(&self.me.device_id()));
        if let Err(e) = docs::insert(self.tx, self.cache, id, &meta, doc) {
            tracing::warn!(doc = %id, "could not create an offered document: {e}");
            return None;
        }
        self.changed.push(id);
        if let DocRef::Dm { workspace, .. } = r
            && let Err(e) = self.project_channel(*workspace, id)
        {
            tracing::warn!(doc = %id, "could not list an offered DM: {e}");
            return None;
        }
        Host::doc(self, id)
    }

    fn may_connect(&mut self, peer: &DeviceId) -> bool {
        if member_device(self.tx, peer).unwrap_or(false) {
            return true;
        }
        let workspaces: Vec<String> = self
            .tx
            .prepare_cached("SELECT id FROM docs WHERE kind = 'workspace'")
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .unwrap_or_default();
        for ws in workspaces.iter().filter_map(|w| w.parse::<DocId>().ok()) {
            if self.is_relay(ws, peer) {
                return true;
            }
        }
        let inviter: Option<i64> = self
            .tx
            .prepare_cached("SELECT 1 FROM joining WHERE inviter = ?1 LIMIT 1")
            .ok()
            .and_then(|mut s| {
                s.query_row([peer.to_string()], |r| r.get(0))
                    .optional()
                    .ok()
            })
            .flatten();
        inviter.is_some()
    }

    fn may_share(&mut self, peer: &DeviceId, doc: DocId) -> bool {
        match self.doc_row(doc) {
            Some(row) => self.allowed(peer, &row),
            // Not held: whether to take it is `may_accept`'s call.
            None => true,
        }
    }

    /// A private channel (or DM) document whose member list has not arrived holds nothing but
    /// its deterministic first change: it is synced with a member who offers it (so the list
    /// arrives) but never offered, so it spreads to nobody outside the list, however members'
    /// nodes are connected.
    fn may_offer(&mut self, peer: &DeviceId, doc: DocId) -> bool {
        let Some(row) = self.doc_row(doc) else {
            return self.may_share(peer, doc);
        };
        let listless = row.kind == "channel"
            && self.channel_restricted(doc)
            && self.channel_members(doc).is_empty();
        !listless && self.allowed(peer, &row)
    }

    fn may_accept(&mut self, peer: &DeviceId, r: &DocRef) -> bool {
        match r {
            DocRef::Workspace { id } => self.inviter_of(*id) == Some(peer.to_string()),
            DocRef::Channel { id, workspace } => {
                let listed: Option<i64> = self
                    .tx
                    .prepare_cached("SELECT 1 FROM channels WHERE id = ?1 AND workspace = ?2")
                    .ok()
                    .and_then(|mut s| {
                        s.query_row(params![id.to_string(), workspace.to_string()], |r| r.get(0))
                            .optional()
                            .ok()
                    })
                    .flatten();
                listed.is_some()
                    && self
                        .doc_row(*workspace)
                        .is_some_and(|row| self.allowed(peer, &row))
            }
            // A DM is taken only by its participants, from a participant's device.
            DocRef::Dm { workspace, members } => {
                let me = self.me.person_id();
                members.contains(&me)
                    && self
                        .member_person(*workspace, peer)
                        .is_some_and(|p| members.iter().any(|m| m.to_string() == p))
            }
            DocRef::Bucket { channel, key } => {
                key.parse::<crdt_model::channel::BucketKey>().is_ok()
                    && self
                        .doc_row(*channel)
                        .is_some_and(|row| row.kind == "channel" && self.allowed(peer, &row))
            }
        }
    }

    fn offer(&mut self, peer: &DeviceId) -> Vec<DocRef> {
        let ids: Vec<String> = self
            .tx
            .prepare_cached(
                "SELECT id FROM docs ORDER BY
                   CASE kind WHEN 'workspace' THEN 0 WHEN 'channel' THEN 1 ELSE 2 END,
                   bucket_key DESC, id",
            )
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .unwrap_or_default();
        let mut refs = Vec::new();
        for id in ids.into_iter().filter_map(|id| id.parse::<DocId>().ok()) {
            if self.may_offer(peer, id)
                && let Some(r) = self.doc_ref(id)
            {
                refs.push(r);
            }
        }
        refs
    }

    fn saved_state(&mut self, peer: &DeviceId, doc: DocId) -> Option<Vec<u8>> {
        docs::sync_state(self.tx, peer, doc)
    }
}

impl Writer<'_> {
    /// Applies the engine's actions inside the transaction; returns what may go out after the
    /// commit and whether the share policy may have changed.
    fn apply(
        &mut self,
        actions: Vec<Action>,
        out: &mut Vec<Outgoing>,
    ) -> Result<(bool, Vec<DocId>), StoreError> {
        let mut policy = false;
        let mut local = Vec::new();
        for a in actions {
            match a {
                Action::Send(p, f) => out.push(Outgoing::Send(p, f)),
                Action::Close(p, r) => out.push(Outgoing::Close(p, r)),
                Action::SaveState(peer, doc, state) => {
                    docs::save_sync_state(self.tx, &peer, doc, &state)?;
                }
                Action::Changed {
                    doc,
                    before,
                    patches,
                } => {
                    self.changed.push(doc);
                    out.push(Outgoing::Changed(doc));
                    docs::persist(self.tx, self.cache, doc, &before)?;
                    let Some(row) = self.doc_row(doc) else {
                        continue;
                    };
                    match row.kind.as_str() {
                        "workspace" => {
                            self.project_workspace(doc)?;
                            policy = true;
                        }
                        // A channel document carries its member list.
                        "channel" => {
                            self.project_channel(row.workspace, doc)?;
                            policy = true;
                        }
                        "bucket" => {
                            let channel = row.channel.ok_or_else(|| {
                                StoreError::Corrupt(format!("bucket {doc} has no channel"))
                            })?;
                            let mut touched = bucket::touched(&patches);
                            let maybe = bucket::purge_candidates(&patches);
                            let purged = match maybe.is_empty() {
                                true => Vec::new(),
                                false => {
                                    let view = self.view(row.workspace)?;
                                    let at = now_ms();
                                    self.change(doc, |d| {
                                        bucket::purge_deleted_text(d, channel, &maybe, &view, at)
                                    })?
                                }
                            };
                            if !purged.is_empty() {
                                local.push(doc);
                            }
                            touched.extend(purged);
                            self.project_bucket(row.workspace, channel, doc, Some(touched))?;
                        }
                        _ => {}
                    }
                }
            }
        }
        Ok((policy, local))
    }
}

impl Store {
    /// Runs one sync event through `engine` against this store, in one transaction: received
    /// changes are persisted and projected, sync states saved, and only after the commit are the
    /// frames returned for sending (durable before acknowledged).
    pub fn sync_event(
        &mut self,
        engine: &mut Engine,
        event: Event,
    ) -> Result<Vec<Outgoing>, StoreError> {
        // Documents changed by peers are not local changes: the engine fans those out itself.
        let local = self.local.clone();
        let result = self.write(|w| {
            let mut out = Vec::new();
            let mut next = vec![event];
            // A workspace change can change who may see what: re-check, and push out
            // documents this node changed itself (purged text). Bounded: neither produces more.
            for _ in 0..4 {
                let Some(e) = next.pop() else { break };
                let actions = engine.handle(w, e);
                let (policy, local) = w.apply(actions, &mut out)?;
                if !local.is_empty() {
                    next.push(Event::LocalChange(local));
                }
                if policy {
                    next.push(Event::PolicyChanged);
                }
            }
            Ok(out)
        });
        self.local = local;
        Ok(result?.0)
    }

    /// Admits a person's device to the current workspace with `role` (owners and admins): its
    /// certificate and a membership record, in one transaction.
    pub fn admit(&mut self, cert: &Signed<DeviceCert>, role: Role) -> Result<(), StoreError> {
        let ws = self.require_workspace()?;
        if !crdt_model::identity::device_cert_valid(cert) {
            return Err(crdt_model::ModelError::BadSignature.into());
        }
        let person = crdt_model::PersonId(cert.signer);
        self.write(|w| {
            let me = w.me;
            let at = now_ms();
            w.change(ws, |doc| workspace::put_device(doc, cert, at))?;
            w.change(ws, |doc| workspace::set_role(doc, me, ws, person, role, at))?;
            w.project_workspace(ws)
        })?;
        Ok(())
    }

    /// Changes a member's role in the current workspace (`Role::Removed` removes them). The
    /// member is named by display name or person key.
    pub fn set_role(&mut self, who: &str, role: Role) -> Result<(), StoreError> {
        let ws = self.require_workspace()?;
        let person = self.resolve_member(ws, who)?;
        self.write(|w| {
            let me = w.me;
            let at = now_ms();
            w.change(ws, |doc| workspace::set_role(doc, me, ws, person, role, at))?;
            w.project_workspace(ws)
        })?;
        Ok(())
    }

    /// Issues an invite ticket to the current workspace (owners and admins), valid for `ttl_ms`,
    /// naming `addrs` as where this node listens, and the workspace's relays (through which the
    /// joiner reaches us when no direct path does).
    pub fn invite(
        &mut self,
        role: Role,
        ttl_ms: i64,
        mut addrs: Vec<String>,
    ) -> Result<String, StoreError> {
        let ws = self.require_workspace()?;
        for (_, l) in self.read_view(ws)?.relays {
            if !addrs.contains(&l.url) {
                addrs.push(l.url);
            }
        }
        let me = self.identity()?.clone();
        let mine = self.my_role(ws)?;
        if mine < Role::Admin {
            return Err(crdt_model::ModelError::NotAllowed("only owners and admins invite").into());
        }
        if !(Role::Member..=Role::Admin).contains(&role) {
            return Err(crdt_model::ModelError::NotAllowed("invites grant member or admin").into());
        }
        if ttl_ms <= 0 {
            return Err(
                crdt_model::ModelError::Malformed("an invite must be valid for some time").into(),
            );
        }
        let name: String = self.conn.query_row(
            "SELECT name FROM workspaces WHERE id = ?1",
            [ws.to_string()],
            |r| r.get(0),
        )?;
        let invite = crdt_model::invite::Invite {
            workspace: ws,
            workspace_name: name,
            inviter: me.device_id(),
            addrs,
            role,
            expires_ms: now_ms().saturating_add(ttl_ms),
            nonce: crate::random(),
        };
        self.conn.execute(
            "INSERT INTO invites (nonce, workspace, role, expires_ms) VALUES (?1, ?2, ?3, ?4)",
            params![
                hex::encode(invite.nonce),
                ws.to_string(),
                role.as_str(),
                invite.expires_ms
            ],
        )?;
        Ok(crdt_model::invite::encode(&Signed::sign(
            &me.device, invite,
        )))
    }

    /// Redeems a ticket this node issued, for the device whose certificate is `cert`: checks it
    /// is ours, unexpired and unused, then admits the device with the ticket's role. One
    /// transaction: a ticket is used at most once even with two joiners racing.
    pub fn redeem(&mut self, ticket: &str, cert: &[u8]) -> Result<DocId, StoreError> {
        let me = self.identity()?.clone();
        let t = crdt_model::invite::decode(ticket, now_ms())?;
        if t.payload.inviter != me.device_id() {
            return Err(crdt_model::ModelError::NotAllowed(
                "this ticket was issued by another device",
            )
            .into());
        }
        let cert = Signed::<DeviceCert>::decode(cert)?;
        if !crdt_model::identity::device_cert_valid(&cert) {
            return Err(crdt_model::ModelError::BadSignature.into());
        }
        let ws = t.payload.workspace;
        let role = t.payload.role;
        let nonce = hex::encode(t.payload.nonce);
        let person = crdt_model::PersonId(cert.signer);
        self.write(|w| {
            w.use_ticket(&nonce, &cert.payload.device)?;
            let me = w.me;
            let at = now_ms();
            w.change(ws, |doc| workspace::put_device(doc, &cert, at))?;
            w.change(ws, |doc| workspace::set_role(doc, me, ws, person, role, at))?;
            w.project_workspace(ws)
        })?;
        Ok(ws)
    }

    /// Issues a device-link ticket (valid for `ttl_ms`, naming `addrs` as where this node
    /// listens): whoever redeems it becomes another device of this person.
    pub fn link_ticket(&mut self, ttl_ms: i64, addrs: Vec<String>) -> Result<String, StoreError> {
        let me = self.identity()?.clone();
        if ttl_ms <= 0 {
            return Err(
                crdt_model::ModelError::Malformed("a ticket must be valid for some time").into(),
            );
        }
        let link = crdt_model::invite::DeviceLink {
            person: me.person_id(),
            inviter: me.device_id(),
            addrs,
            expires_ms: now_ms().saturating_add(ttl_ms),
            nonce: crate::random(),
        };
        self.conn.execute(
            "INSERT INTO invites (nonce, workspace, role, expires_ms) VALUES (?1, '', 'device', ?2)",
            params![hex::encode(link.nonce), link.expires_ms],
        )?;
        Ok(crdt_model::invite::encode_link(&Signed::sign(
            &me.device, link,
        )))
    }

    /// Redeems a device-link ticket this node issued for `device` (the authenticated endpoint
    /// of the connection), which signed `device_sig` over my person key: certifies the device
    /// in every workspace I am a member of, in one transaction, and returns what the new device
    /// keeps (the person key: every device of a person holds it, see ARCHITECTURE.md).
    pub fn redeem_link(
        &mut self,
        ticket: &str,
        device: DeviceId,
        device_sig: Vec<u8>,
    ) -> Result<Linked, StoreError> {
        let me = self.identity()?.clone();
        let t = crdt_model::invite::decode_link(ticket, now_ms())?;
        if t.payload.inviter != me.device_id() || t.payload.person != me.person_id() {
            return Err(crdt_model::ModelError::NotAllowed(
                "this ticket was issued by another device",
            )
            .into());
        }
        let cert = me.certify(device, device_sig, "linked device", now_ms());
        if !crdt_model::identity::device_cert_valid(&cert) {
            return Err(crdt_model::ModelError::BadSignature.into());
        }
        let nonce = hex::encode(t.payload.nonce);
        let person = me.person_id().to_string();
        let (workspaces, _) = self.write(|w| {
            w.use_ticket(&nonce, &device)?;
            let ids: Vec<String> =
                w.tx.prepare_cached(
                    "SELECT workspace FROM members WHERE person = ?1 AND role != 'removed'
                     ORDER BY workspace",
                )?
                .query_map([&person], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            let mut out = Vec::new();
            for id in ids {
                let ws: DocId = id.parse()?;
                let at = now_ms();
                w.change(ws, |doc| workspace::put_device(doc, &cert, at))?;
                w.project_workspace(ws)?;
                out.push(ws);
            }
            Ok(out)
        })?;
        Ok(Linked {
            person_secret: me.person.to_bytes(),
            name: me.name.clone(),
            workspaces,
        })
    }

    fn my_role(&self, ws: DocId) -> Result<Role, StoreError> {
        let me = self.identity()?.person_id().to_string();
        let r: Option<String> = self
            .conn
            .query_row(
                "SELECT role FROM members WHERE workspace = ?1 AND person = ?2",
                params![ws.to_string(), me],
                |r| r.get(0),
            )
            .optional()?;
        Ok(r.and_then(|r| r.parse().ok()).unwrap_or(Role::Removed))
    }

    /// Documents other processes (another `flyt` command on this home) changed since the last
    /// call: `PRAGMA data_version` moves only when another connection commits, so this costs
    /// one pragma when nothing happened. The first call only takes the current position.
    pub fn external_changes(&mut self) -> Result<Vec<DocId>, StoreError> {
        let version: i64 = self
            .conn
            .query_row("PRAGMA data_version", [], |r| r.get(0))?;
        let max: i64 =
            self.conn
                .query_row("SELECT coalesce(max(seq), 0) FROM doc_chunks", [], |r| {
                    r.get(0)
                })?;
        let Some((seen_version, seen_seq)) = self.external else {
            self.external = Some((version, max));
            return Ok(Vec::new());
        };
        if version == seen_version {
            return Ok(Vec::new());
        }
        let docs: Vec<String> = self
            .conn
            .prepare_cached("SELECT DISTINCT doc FROM doc_chunks WHERE seq > ?1 ORDER BY doc")?
            .query_map([seen_seq], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        self.external = Some((version, max));
        docs.into_iter().map(|d| Ok(d.parse()?)).collect()
    }

    /// What this home's node is doing, from the database (works with or without a running
    /// node).
    pub fn status(&self) -> Result<Status, StoreError> {
        let listen = self.listen_addrs()?;
        let mut peers = Vec::new();
        for (device, addrs) in self.known_peers()? {
            let (name, synced, last_sync_ms) = self.conn.query_row(
                "SELECT (SELECT m.name FROM devices d JOIN members m
                           ON m.workspace = d.workspace AND m.person = d.person
                         WHERE d.device = ?1 LIMIT 1),
                        (SELECT count(*) FROM sync_state WHERE peer = ?1),
                        (SELECT at_ms FROM peer_last_sync WHERE device = ?1)",
                [device.to_string()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?;
            peers.push(PeerStatus {
                device: device.to_string(),
                name,
                addrs,
                synced_documents: synced,
                last_sync_ms,
            });
        }
        let count = |sql: &str| -> Result<i64, StoreError> {
            Ok(self.conn.query_row(sql, [], |r| r.get(0))?)
        };
        Ok(Status {
            node_running: !listen.is_empty(),
            listen,
            peers,
            workspaces: count("SELECT count(*) FROM docs WHERE kind = 'workspace'")?,
            channels: count("SELECT count(*) FROM docs WHERE kind = 'channel'")?,
            buckets: count("SELECT count(*) FROM docs WHERE kind = 'bucket'")?,
            messages: count("SELECT count(*) FROM messages")?,
        })
    }

    /// Adds a relay to the current workspace (owners and admins): a signed record every
    /// member's node learns through sync, and then keeps a connection to.
    pub fn add_relay(
        &mut self,
        url: &str,
        relay: DeviceId,
        addrs: Vec<String>,
    ) -> Result<DocId, StoreError> {
        self.set_relay(url, relay, addrs, true)
    }

    /// Removes the relay with this URL (or device id) from the current workspace.
    pub fn remove_relay(&mut self, url_or_id: &str) -> Result<DocId, StoreError> {
        let url = url_or_id.trim_end_matches('/');
        let found = self
            .relays()?
            .into_iter()
            .find(|(id, l)| l.url == url || id.to_string() == url)
            .ok_or_else(|| StoreError::UnknownRelay(url.to_owned()))?;
        self.set_relay(&found.1.url, found.0, found.1.addrs, false)
    }

    fn set_relay(
        &mut self,
        url: &str,
        relay: DeviceId,
        addrs: Vec<String>,
        active: bool,
    ) -> Result<DocId, StoreError> {
        let ws = self.require_workspace()?;
        self.write(|w| {
            let me = w.me;
            let record = crdt_model::signed::RelayRecord {
                workspace: ws,
                relay,
                url: url.trim_end_matches('/').to_owned(),
                addrs,
                active,
                at_ms: now_ms(),
            };
            w.change(ws, |doc| workspace::set_relay(doc, me, record))?;
            w.project_workspace(ws)
        })?;
        Ok(ws)
    }

    /// The relays the current workspace lists.
    pub fn relays(&mut self) -> Result<Vec<(DeviceId, workspace::RelayListing)>, StoreError> {
        let ws = self.require_workspace()?;
        Ok(self.read_view(ws)?.relays.into_iter().collect())
    }

    /// Every relay any of our workspaces lists, to keep connected to.
    pub fn relay_peers(&mut self) -> Result<Vec<crate::net::PeerAddr>, StoreError> {
        let workspaces: Vec<String> = self
            .conn
            .prepare_cached("SELECT id FROM docs WHERE kind = 'workspace'")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let mut out = Vec::new();
        for ws in workspaces {
            for (id, l) in self.read_view(ws.parse()?)?.relays {
                let mut to = crate::net::PeerAddr::parse(id, &l.addrs);
                // The relay is also where members' nodes reach each other (its `/relay`).
                to.relays.push(l.url);
                out.push(to);
            }
        }
        Ok(out)
    }

    /// The verified view of a workspace, outside a write (cached until its heads move).
    fn read_view(&mut self, ws: DocId) -> Result<workspace::WorkspaceView, StoreError> {
        let device = self.identity()?.device_id();
        let doc = self
            .cache
            .get(&self.conn, ws, &device)?
            .ok_or_else(|| StoreError::UnknownWorkspace(ws.to_string()))?;
        let heads = doc.get_heads();
        if let Some((h, v)) = self.views.get(&ws)
            && *h == heads
        {
            return Ok(v.clone());
        }
        let v = workspace::view(doc, ws);
        self.views.insert(ws, (heads, v.clone()));
        Ok(v)
    }

    /// Whether `device` is a device of a current member of one of our workspaces (what a
    /// node found on the LAN must be before this one dials it).
    pub fn is_member_device(&self, device: &DeviceId) -> Result<bool, StoreError> {
        Ok(member_device(&self.conn, device)?)
    }

    /// Records when a sync message last went either way with `device` (never moves back).
    pub fn save_last_sync(&self, device: &DeviceId, at_ms: i64) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO peer_last_sync (device, at_ms) VALUES (?1, ?2)
                 ON CONFLICT (device) DO UPDATE SET at_ms = max(at_ms, excluded.at_ms)",
            )?
            .execute(params![device.to_string(), at_ms])?;
        Ok(())
    }

    /// Remembers a peer to keep connected to and where it listens.
    pub fn remember_peer(&mut self, device: DeviceId, addrs: &[String]) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO peers (device, addrs, updated_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT (device) DO UPDATE SET addrs = excluded.addrs, updated_ms = excluded.updated_ms",
            params![device.to_string(), addrs.join(" "), now_ms()],
        )?;
        Ok(())
    }

    /// Peers this node keeps connected to, with their last known addresses.
    pub fn known_peers(&self) -> Result<Vec<(DeviceId, Vec<String>)>, StoreError> {
        let rows: Vec<(String, String)> = self
            .conn
            .prepare_cached("SELECT device, addrs FROM peers ORDER BY device")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        rows.into_iter()
            .map(|(d, a)| {
                Ok((
                    d.parse()?,
                    a.split_whitespace().map(str::to_owned).collect(),
                ))
            })
            .collect()
    }

    /// Devices of current members of every workspace where both `a` and `b` are current
    /// members' devices (with `a == b`: of every workspace where `a` is). Relays are never
    /// among them: they are listed in workspace documents, not certified as members' devices.
    fn shared_member_devices(
        &self,
        a: &DeviceId,
        b: &DeviceId,
    ) -> Result<std::collections::HashSet<DeviceId>, StoreError> {
        let rows: Vec<String> = self
            .conn
            .prepare_cached(
                "WITH current (workspace, device) AS (
                   SELECT d.workspace, d.device FROM devices d JOIN members m
                     ON m.workspace = d.workspace AND m.person = d.person
                   WHERE m.role != 'removed'),
                 shared (workspace) AS (
                   SELECT workspace FROM current WHERE device = ?1
                   INTERSECT SELECT workspace FROM current WHERE device = ?2)
                 SELECT DISTINCT device FROM current
                 WHERE workspace IN (SELECT workspace FROM shared)",
            )?
            .query_map(params![a.to_string(), b.to_string()], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        rows.into_iter().map(|d| Ok(d.parse()?)).collect()
    }

    /// What to tell `peer` in a [`Frame::Peers`]: where this node listens and where the known
    /// peers it may learn of listen (devices of current members of a workspace both it and
    /// this device are current members of; never `peer` itself, never a relay). At most
    /// [`MAX_PEER_ENTRIES`] entries, this node first.
    pub fn peers_for(&mut self, peer: &DeviceId) -> Result<Vec<PeerEntry>, StoreError> {
        let me = self.identity()?.device_id();
        let may = self.shared_member_devices(&me, peer)?;
        if !may.contains(peer) {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        let listen = self.listen_addrs()?;
        if !listen.is_empty() {
            out.push(PeerEntry {
                device: me,
                addrs: listen.into_iter().take(MAX_PEER_ADDRS).collect(),
                updated_ms: now_ms(),
            });
        }
        let rows: Vec<(String, String, i64)> = self
            .conn
            .prepare_cached("SELECT device, addrs, updated_ms FROM peers ORDER BY device")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<_, _>>()?;
        for (device, addrs, updated_ms) in rows {
            let device: DeviceId = device.parse()?;
            if device == *peer || device == me || !may.contains(&device) {
                continue;
            }
            if out.len() == MAX_PEER_ENTRIES {
                break;
            }
            out.push(PeerEntry {
                device,
                addrs: addrs
                    .split_whitespace()
                    .take(MAX_PEER_ADDRS)
                    .map(str::to_owned)
                    .collect(),
                updated_ms,
            });
        }
        Ok(out)
    }

    /// Keeps what a connected peer `from` told us in a [`Frame::Peers`]: entries that pass
    /// [`checked_peers`], about devices of current members of a workspace both it and this
    /// device are current members of, not this device. A relay URL is kept only if one of our
    /// workspaces lists that relay (a member cannot send us to a server of its choosing).
    /// What `from` says of itself is stored as new; what it says of others replaces what we
    /// know only if it is newer (its time capped at now) and different. Returns how many
    /// devices' addresses changed.
    pub fn learn_peers(
        &mut self,
        from: &DeviceId,
        peers: Vec<PeerEntry>,
    ) -> Result<usize, StoreError> {
        let peers = checked_peers(peers);
        if peers.is_empty() {
            return Ok(0);
        }
        let me = self.identity()?.device_id();
        let may = self.shared_member_devices(&me, from)?;
        if !may.contains(from) {
            tracing::debug!(%from, "ignoring addresses from a device we share no workspace with");
            return Ok(0);
        }
        let relays: std::collections::HashSet<String> = self
            .relay_peers()?
            .into_iter()
            .flat_map(|p| p.relays)
            .map(|u| u.trim_end_matches('/').to_owned())
            .collect();
        let now = now_ms();
        let tx = self.conn.transaction()?;
        let mut changed = 0;
        for mut e in peers {
            if e.device == me || !may.contains(&e.device) {
                tracing::debug!(%from, device = %e.device, "ignoring addresses of a device it may not tell us of");
                continue;
            }
            e.addrs.retain(|a| {
                a.parse::<std::net::SocketAddr>().is_ok()
                    || relays.contains(a.trim_end_matches('/'))
            });
            if e.addrs.is_empty() {
                continue;
            }
            let addrs = e.addrs.join(" ");
            let at = match e.device == *from {
                true => now,
                false => e.updated_ms.min(now),
            };
            let old: Option<(String, i64)> = tx
                .prepare_cached("SELECT addrs, updated_ms FROM peers WHERE device = ?1")?
                .query_row([e.device.to_string()], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            match old {
                Some((_, old_at)) if old_at >= at => {}
                Some((old_addrs, _)) if old_addrs == addrs => {
                    tx.execute(
                        "UPDATE peers SET updated_ms = ?2 WHERE device = ?1",
                        params![e.device.to_string(), at],
                    )?;
                }
                _ => {
                    tx.execute(
                        "INSERT INTO peers (device, addrs, updated_ms) VALUES (?1, ?2, ?3)
                         ON CONFLICT (device) DO UPDATE
                         SET addrs = excluded.addrs, updated_ms = excluded.updated_ms",
                        params![e.device.to_string(), addrs, at],
                    )?;
                    tracing::debug!(%from, device = %e.device, %addrs, "learnt where a member's device listens");
                    changed += 1;
                }
            }
        }
        tx.commit()?;
        Ok(changed)
    }

    /// The known peers to keep a connection to, each with whether it came from a ticket (an
    /// inviter or the device that linked this one: dial it whatever it does) or was learnt
    /// from a peer (both ends keep the connection: see `node`). A learnt peer is kept while
    /// it is a current member's device in a workspace this device is a current member of; a
    /// ticket's peer too, or while we do not know it yet (joining). So a removed member's
    /// devices are let go.
    pub fn peers_to_keep(&mut self) -> Result<Vec<(crate::net::PeerAddr, bool)>, StoreError> {
        let me = self.identity()?.device_id();
        let members = self.shared_member_devices(&me, &me)?;
        let mut out = Vec::new();
        for (device, addrs) in self.known_peers()? {
            let ticket = self
                .conn
                .prepare_cached("SELECT 1 FROM joining WHERE inviter = ?1 LIMIT 1")?
                .query_row([device.to_string()], |_| Ok(()))
                .optional()?
                .is_some();
            let keep = members.contains(&device)
                || (ticket
                    && self
                        .conn
                        .prepare_cached("SELECT 1 FROM devices WHERE device = ?1 LIMIT 1")?
                        .query_row([device.to_string()], |_| Ok(()))
                        .optional()?
                        .is_none());
            if keep && device != me {
                out.push((crate::net::PeerAddr::parse(device, &addrs), ticket));
            }
        }
        Ok(out)
    }

    /// Records where this home's running node listens (for invite tickets); empty when it stops.
    pub fn set_listen_addrs(&mut self, addrs: &[String]) -> Result<(), StoreError> {
        self.set_meta("listen", &addrs.join(" "))
    }

    /// Records the UDP port this home's node listens on; kept after it stops, so the next start
    /// asks for the same one ([`Store::last_port`]).
    pub fn set_last_port(&mut self, port: u16) -> Result<(), StoreError> {
        self.set_meta("port", &port.to_string())
    }

    /// The UDP port this home's node listened on last, if it ever ran.
    pub fn last_port(&self) -> Result<Option<u16>, StoreError> {
        Ok(self
            .meta("port")?
            .and_then(|p| p.parse().ok())
            .filter(|p| *p != 0))
    }

    /// Where this home's node listens, if one is running (or ran and did not clear it).
    pub fn listen_addrs(&self) -> Result<Vec<String>, StoreError> {
        Ok(self
            .meta("listen")?
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned)
            .collect())
    }

    /// Records that this node is joining `ws` through `inviter`'s device, which may then connect
    /// and offer the workspace's documents.
    pub fn expect_join(&mut self, ws: DocId, inviter: DeviceId) -> Result<(), StoreError> {
        self.identity()?;
        self.conn.execute(
            "INSERT INTO joining (workspace, inviter) VALUES (?1, ?2)
             ON CONFLICT (workspace) DO UPDATE SET inviter = excluded.inviter",
            params![ws.to_string(), inviter.to_string()],
        )?;
        Ok(())
    }

    /// Sets my display name in a workspace (after joining, so others see who I am).
    pub fn set_profile(&mut self, ws: DocId, name: &str) -> Result<(), StoreError> {
        self.write(|w| {
            let me = w.me;
            let at = now_ms();
            w.change(ws, |doc| workspace::set_profile(doc, me, ws, name, at))?;
            w.project_workspace(ws)
        })?;
        Ok(())
    }

    /// Changes my display name: in this home's identity and in every workspace I belong to.
    pub fn set_name(&mut self, name: &str) -> Result<(), StoreError> {
        crdt_model::validate_name(name, false)?;
        let mut me = self.identity()?.clone();
        me.name = name.to_owned();
        self.conn.execute(
            "UPDATE meta SET value = ?1 WHERE key = 'identity'",
            [crate::identity_record(&me)],
        )?;
        self.identity = Some(me);
        for ws in self.workspaces()? {
            if ws.role != Role::Removed.as_str() {
                self.set_profile(ws.id.parse()?, name)?;
            }
        }
        Ok(())
    }

    /// Documents written by the last local writes, for [`Event::LocalChange`]. Taken once.
    pub fn take_local_changes(&mut self) -> Vec<DocId> {
        std::mem::take(&mut self.local).into_iter().collect()
    }
}

/// An ephemeral note older (or further in the future) than this is dropped as stale.
pub const EPHEMERAL_MAX_AGE_MS: i64 = 30_000;

/// Whether an ephemeral note sent at `at_ms` is recent at `now_ms`: within
/// [`EPHEMERAL_MAX_AGE_MS`] either way. Nodes and relays drop the others as stale.
pub fn note_is_recent(at_ms: i64, now_ms: i64) -> bool {
    now_ms.abs_diff(at_ms) <= EPHEMERAL_MAX_AGE_MS.unsigned_abs()
}

/// An ephemeral note from a peer that checked out: signed by `device`, a current member device
/// of `person` in `workspace`, recent, and (typing) about a channel that person may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// The workspace.
    pub workspace: DocId,
    /// Who.
    pub person: crdt_model::PersonId,
    /// From which device.
    pub device: DeviceId,
    /// What.
    pub kind: crdt_model::signed::EphemeralKind,
    /// When it was sent, ms.
    pub at_ms: i64,
}

impl Writer<'_> {
    /// Whether ephemeral notes about `channel` (or, without one, about workspace `ws`) may go to
    /// `peer`: a current member's device that may see the channel, or a relay `ws` lists, which
    /// passes presence and typing in public channels on to the members connected to it (never
    /// private channels' or DMs': those do not go through relays).
    fn may_hear(&mut self, peer: &DeviceId, ws: DocId, channel: Option<DocId>) -> bool {
        if self.member_person(ws, peer).is_none() {
            return self.is_relay(ws, peer)
                && channel.is_none_or(|ch| {
                    self.doc_row(ch).is_some_and(|row| row.workspace == ws)
                        && !self.channel_restricted(ch)
                });
        }
        match channel {
            None => true,
            Some(ch) => self
                .doc_row(ch)
                .is_some_and(|row| row.workspace == ws && self.allowed(peer, &row)),
        }
    }
}

impl Store {
    fn ephemeral(
        &self,
        ws: DocId,
        kind: crdt_model::signed::EphemeralKind,
    ) -> Result<Frame, StoreError> {
        let me = self.identity()?;
        let note = crdt_model::signed::Ephemeral {
            workspace: ws,
            person: me.person_id(),
            kind,
            at_ms: now_ms(),
        };
        Ok(Frame::Ephemeral {
            signed: Signed::sign(&me.device, note).to_bytes(),
        })
    }

    /// A signed "typing" note for `channel`, and which of the `connected` peers may see it
    /// (members' devices that may see the channel: in private channels and DMs, only theirs).
    pub fn typing_frame(
        &mut self,
        channel: DocId,
        connected: &[DeviceId],
    ) -> Result<(Frame, Vec<DeviceId>), StoreError> {
        let ws = self.channel_workspace(channel)?;
        let frame = self.ephemeral(ws, crdt_model::signed::EphemeralKind::Typing { channel })?;
        let to = self.peek(|w| {
            Ok(connected
                .iter()
                .filter(|p| w.may_hear(p, ws, Some(channel)))
                .copied()
                .collect())
        })?;
        Ok((frame, to))
    }

    /// Signed presence notes for each of the `peers` in each workspace we share with it.
    pub fn presence_frames(
        &mut self,
        state: crdt_model::signed::Presence,
        peers: &[DeviceId],
    ) -> Result<Vec<(DeviceId, Frame)>, StoreError> {
        if peers.is_empty() {
            return Ok(Vec::new());
        }
        let workspaces: Vec<DocId> = self
            .workspaces()?
            .into_iter()
            .filter(|w| w.role != Role::Removed.as_str())
            .filter_map(|w| w.id.parse().ok())
            .collect();
        let mut out = Vec::new();
        for ws in workspaces {
            let to: Vec<DeviceId> = self.peek(|w| {
                Ok(peers
                    .iter()
                    .filter(|p| w.may_hear(p, ws, None))
                    .copied()
                    .collect())
            })?;
            if to.is_empty() {
                continue;
            }
            let f = self.ephemeral(ws, crdt_model::signed::EphemeralKind::Presence { state })?;
            out.extend(to.into_iter().map(|p| (p, f.clone())));
        }
        Ok(out)
    }

    /// Checks an ephemeral note `from` a connected peer: the signature, that the signer is that
    /// peer (or, `from` being a relay of the note's workspace, any device: a relay passes its
    /// members' notes on) and a current member device of the person it names, that it is
    /// recent, and for typing that the person may see the channel (and, through a relay, that
    /// the relay may hear of it: a public channel). Whatever fails is refused with the reason;
    /// `Ok(None)` is our own note, which a relay may echo back: ignore it.
    pub fn check_ephemeral(
        &mut self,
        from: DeviceId,
        signed: &[u8],
    ) -> Result<Option<Note>, StoreError> {
        use crdt_model::ModelError;
        let s = Signed::<crdt_model::signed::Ephemeral>::decode(signed)?;
        let signer = s.device();
        let n = s.payload;
        let channel = match n.kind {
            crdt_model::signed::EphemeralKind::Typing { channel } => Some(channel),
            crdt_model::signed::EphemeralKind::Presence { .. } => None,
        };
        // Another device's note comes only through a relay of its workspace that may hear it.
        if signer != from
            && !self.peek(|w| {
                Ok(w.is_relay(n.workspace, &from) && w.may_hear(&from, n.workspace, channel))
            })?
        {
            return Err(ModelError::NotAllowed(
                "an ephemeral note signed by another device, not passed on by a relay of its workspace",
            )
            .into());
        }
        if signer == self.identity()?.device_id() {
            return Ok(None);
        }
        if !note_is_recent(n.at_ms, now_ms()) {
            return Err(ModelError::Malformed("a stale ephemeral note").into());
        }
        let person = n.person.to_string();
        let ok = self.peek(|w| {
            Ok(w.member_person(n.workspace, &signer) == Some(person)
                && w.may_hear(&signer, n.workspace, channel))
        })?;
        if !ok {
            return Err(ModelError::NotAllowed(
                "an ephemeral note from a device that is not a member who may see it",
            )
            .into());
        }
        Ok(Some(Note {
            workspace: n.workspace,
            person: n.person,
            device: signer,
            kind: n.kind,
            at_ms: n.at_ms,
        }))
    }

    /// How many documents synced with `peer` in `engine` are in sync, and how many behind.
    pub fn sync_summary(&mut self, engine: &Engine, peer: &DeviceId) -> (usize, usize) {
        self.peek(|w| Ok(engine.sync_summary(w, peer)))
            .unwrap_or((0, 0))
    }

    /// The display name of the person a device belongs to, if we know them.
    pub fn device_name(&self, device: &DeviceId) -> Option<String> {
        self.conn
            .query_row(
                "SELECT m.name FROM devices d JOIN members m
                   ON m.workspace = d.workspace AND m.person = d.person
                 WHERE d.device = ?1 LIMIT 1",
                [device.to_string()],
                |r| r.get(0),
            )
            .optional()
            .ok()
            .flatten()
    }

    /// A person's display name in any workspace we share with them.
    pub fn person_name(&self, person: &crdt_model::PersonId) -> Option<String> {
        self.conn
            .query_row(
                "SELECT name FROM members WHERE person = ?1 ORDER BY role = 'removed' LIMIT 1",
                [person.to_string()],
                |r| r.get(0),
            )
            .optional()
            .ok()
            .flatten()
    }
}

/// Whether `device` is certified for a current member of some workspace we hold.
fn member_device(conn: &rusqlite::Connection, device: &DeviceId) -> rusqlite::Result<bool> {
    conn.prepare_cached(
        "SELECT 1 FROM devices d JOIN members m
           ON m.workspace = d.workspace AND m.person = d.person
         WHERE d.device = ?1 AND m.role != 'removed' LIMIT 1",
    )?
    .query_row([device.to_string()], |_| Ok(()))
    .optional()
    .map(|r| r.is_some())
}

#[cfg(test)]
mod tests {
    use crdt_model::channel::{self, BucketKey};

    use super::*;

    #[test]
    fn a_refused_write_keeps_changes_waiting_for_their_dependencies() {
        use automerge::ReadDoc;
        use automerge::transaction::Transactable;

        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("flyt.db")).unwrap();
        s.init("t").unwrap();
        s.create_workspace("w").unwrap();
        let ch = s.create_channel("general", "", false).unwrap();
        let m = s.post(ch, "hi", None, None).unwrap();
        s.delete(&m.id).unwrap();
        let (_, bucket) = s.buckets(ch).unwrap().pop().unwrap();
        // A peer's two changes; the second arrived first and waits for the first.
        let me = s.identity().unwrap().device_id();
        let doc = s.cache.get(&s.conn, bucket, &me).unwrap().unwrap();
        let mut peer = doc.fork();
        for key in ["x", "y"] {
            let mut tx = peer.transaction();
            tx.put(automerge::ROOT, key, 1).unwrap();
            tx.commit();
        }
        let second = peer.get_last_local_change().unwrap().clone();
        doc.apply_changes([second]).unwrap();
        assert_eq!(doc.get_missing_deps(&[]).len(), 1);

        // Editing the deleted message is refused without touching the document.
        assert!(s.edit(&m.id, "again").is_err());
        let doc = s.cache.get(&s.conn, bucket, &me).unwrap().unwrap();
        assert_eq!(
            doc.get_missing_deps(&[]).len(),
            1,
            "still waiting, not dropped"
        );
    }

    #[test]
    fn an_offered_channel_or_bucket_starts_as_its_creator_started_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("flyt.db")).unwrap();
        s.init("t").unwrap();
        let ws = s.create_workspace("w").unwrap();
        let ch = s.create_channel("general", "", false).unwrap();
        let key = BucketKey::day_of(86_400_000 * 20_000);
        let other = DocId([9; 16]);
        s.write(|w| {
            // A channel listed in the workspace whose document has not arrived yet.
            let doc = Host::create(
                w,
                &DocRef::Channel {
                    id: other,
                    workspace: ws,
                },
            )
            .unwrap();
            assert!(channel::is_channel(doc, other));
            assert_eq!(
                doc.get_heads(),
                channel::init(ws, other).unwrap().get_heads()
            );
            assert!(
                channel::add_bucket(doc, key, 1).unwrap(),
                "writable at once"
            );
            let r = DocRef::Bucket {
                channel: ch,
                key: key.to_string(),
            };
            let doc = Host::create(w, &r).unwrap();
            assert_eq!(doc.get_heads(), bucket::init(ch, key).unwrap().get_heads());
            Ok(())
        })
        .unwrap();
    }

    /// A workspace owned by this store, with #general, a private #secret, a listed relay and a
    /// member (bob) whose keys the test holds: (store, workspace, #general, #secret, relay, bob).
    fn with_relay_and_bob(
        dir: &std::path::Path,
    ) -> (Store, DocId, DocId, DocId, DeviceId, crdt_model::Identity) {
        let mut s = Store::open(&dir.join("flyt.db")).unwrap();
        s.init("alice").unwrap();
        let ws = s.create_workspace("w").unwrap();
        let general = s.create_channel("general", "", false).unwrap();
        let secret = s.create_private_channel("secret", "", &[]).unwrap();
        let relay = crdt_model::Identity::from_secrets([1; 32], [2; 32], "relay").device_id();
        s.add_relay("http://127.0.0.1:9", relay, vec![]).unwrap();
        let bob = crdt_model::Identity::from_secrets([3; 32], [4; 32], "bob");
        s.admit(&bob.device_cert("laptop", now_ms()), Role::Member)
            .unwrap();
        (s, ws, general, secret, relay, bob)
    }

    fn note(
        by: &crdt_model::Identity,
        ws: DocId,
        kind: crdt_model::signed::EphemeralKind,
    ) -> Vec<u8> {
        let n = crdt_model::signed::Ephemeral {
            workspace: ws,
            person: by.person_id(),
            kind,
            at_ms: now_ms(),
        };
        Signed::sign(&by.device, n).to_bytes()
    }

    #[test]
    fn a_relay_hears_presence_and_public_typing_only() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _ws, general, secret, relay, _bob) = with_relay_and_bob(dir.path());
        assert_eq!(s.typing_frame(general, &[relay]).unwrap().1, vec![relay]);
        assert!(s.typing_frame(secret, &[relay]).unwrap().1.is_empty());
        let presence = s
            .presence_frames(crdt_model::signed::Presence::Online, &[relay])
            .unwrap();
        assert_eq!(presence.len(), 1);
        // A device that is neither a member's nor a listed relay hears nothing.
        let stranger = crdt_model::Identity::from_secrets([5; 32], [6; 32], "x").device_id();
        assert!(s.typing_frame(general, &[stranger]).unwrap().1.is_empty());
        assert!(
            s.presence_frames(crdt_model::signed::Presence::Online, &[stranger])
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn a_relay_passes_members_notes_on_and_nothing_else() {
        use crdt_model::signed::{EphemeralKind, Presence};
        let dir = tempfile::tempdir().unwrap();
        let (mut s, ws, general, secret, relay, bob) = with_relay_and_bob(dir.path());
        let typing = |ch| EphemeralKind::Typing { channel: ch };
        let online = EphemeralKind::Presence {
            state: Presence::Online,
        };

        // Bob's notes, passed on by the relay: accepted as bob's.
        let got = s
            .check_ephemeral(relay, &note(&bob, ws, typing(general)))
            .unwrap()
            .expect("a note from bob");
        assert_eq!(got.device, bob.device_id());
        assert_eq!(got.person, bob.person_id());
        assert!(
            s.check_ephemeral(relay, &note(&bob, ws, online))
                .unwrap()
                .is_some()
        );

        // Typing in a private channel never comes through a relay.
        assert!(
            s.check_ephemeral(relay, &note(&bob, ws, typing(secret)))
                .is_err()
        );
        // A signer who is no member's device.
        let stranger = crdt_model::Identity::from_secrets([5; 32], [6; 32], "x");
        assert!(
            s.check_ephemeral(relay, &note(&stranger, ws, online))
                .is_err()
        );
        // Bob's genuine note passed on by a device that is not a relay.
        assert!(
            s.check_ephemeral(stranger.device_id(), &note(&bob, ws, online))
                .is_err()
        );
        // A stale note, even through the relay.
        let stale = Signed::sign(
            &bob.device,
            crdt_model::signed::Ephemeral {
                workspace: ws,
                person: bob.person_id(),
                kind: online,
                at_ms: now_ms() - EPHEMERAL_MAX_AGE_MS - 1_000,
            },
        )
        .to_bytes();
        assert!(s.check_ephemeral(relay, &stale).is_err());

        // Our own note, echoed back by the relay: nothing to show, no error.
        let me = s.identity().unwrap().clone();
        assert_eq!(
            s.check_ephemeral(relay, &note(&me, ws, online)).unwrap(),
            None
        );
    }

    #[test]
    fn a_note_is_recent_within_the_max_age_either_way() {
        let now = 1_000_000;
        assert!(note_is_recent(now, now));
        assert!(note_is_recent(now - EPHEMERAL_MAX_AGE_MS, now));
        assert!(note_is_recent(now + EPHEMERAL_MAX_AGE_MS, now));
        assert!(!note_is_recent(now - EPHEMERAL_MAX_AGE_MS - 1, now));
        assert!(!note_is_recent(now + EPHEMERAL_MAX_AGE_MS + 1, now));
        assert!(!note_is_recent(i64::MIN, now));
    }
}
