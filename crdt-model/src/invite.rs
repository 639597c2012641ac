//! Invite tickets: a signed, expiring, single-use permission to join a workspace, with how to
//! reach the inviter. Text form: `flyt1` followed by base58 of the signed envelope.
//!
//! The inviter's node checks everything at redemption (signature by its own device, not
//! expired, not used before, role); the joiner checks signature and expiry up front to give a
//! clear message before dialling anyone.

use serde::{Deserialize, Serialize};

use crate::ids::{DeviceId, DocId, PersonId};
use crate::signed::{Record, Signed};
use crate::{ModelError, Role};

const PREFIX: &str = "flyt1";
/// The longest ticket text accepted.
pub const MAX_TICKET_CHARS: usize = 4096;

/// What a ticket grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invite {
    /// The workspace to join.
    pub workspace: DocId,
    /// The workspace's name, to show the joiner.
    pub workspace_name: String,
    /// The inviter's device (its iroh endpoint id).
    pub inviter: DeviceId,
    /// Where the inviter listens (socket addresses as text).
    pub addrs: Vec<String>,
    /// The role the joiner gets.
    pub role: Role,
    /// Expiry, ms since the epoch.
    pub expires_ms: i64,
    /// Makes the ticket single-use: the inviter records redeemed nonces.
    pub nonce: [u8; 16],
}

impl Record for Invite {
    const KIND: &'static str = "invite";
}

/// Encodes a signed invite as ticket text.
pub fn encode(ticket: &Signed<Invite>) -> String {
    encode_with(PREFIX, ticket)
}

fn encode_with<T: Record>(prefix: &str, ticket: &Signed<T>) -> String {
    format!("{prefix}{}", bs58::encode(ticket.to_bytes()).into_string())
}

/// Decodes ticket text of the kind `prefix` names and checks its signature (not who signed).
fn decode_with<T: Record>(
    prefix: &str,
    text: &str,
    what: &'static str,
) -> Result<Signed<T>, ModelError> {
    let text = text.trim();
    if text.len() > MAX_TICKET_CHARS {
        return Err(ModelError::Malformed("ticket too long"));
    }
    let body = text
        .strip_prefix(prefix)
        .ok_or(ModelError::Malformed(what))?;
    let bytes = bs58::decode(body)
        .into_vec()
        .map_err(|_| ModelError::Malformed("ticket is damaged (not base58)"))?;
    Signed::<T>::decode(&bytes)
}

/// Decodes ticket text and checks its signature (by the inviter device it names) and, given the
/// current time, its expiry. Whitespace around the ticket is ignored.
pub fn decode(text: &str, now_ms: i64) -> Result<Signed<Invite>, ModelError> {
    let signed: Signed<Invite> = decode_with(
        PREFIX,
        text,
        "not a Flyt invite ticket (it starts with flyt1)",
    )?;
    if signed.signer != signed.payload.inviter.0 {
        return Err(ModelError::BadSignature);
    }
    if signed.payload.expires_ms <= now_ms {
        return Err(ModelError::Expired);
    }
    if signed.payload.role >= Role::Owner || signed.payload.role == Role::Removed {
        return Err(ModelError::Malformed("ticket grants an impossible role"));
    }
    Ok(signed)
}

const LINK_PREFIX: &str = "flytdev1";

/// A device-link ticket: lets a new device become another device of `person`. Signed by the
/// device that issued it, single-use, expiring.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceLink {
    /// The person the new device will act as.
    pub person: PersonId,
    /// The issuing device (its iroh endpoint id).
    pub inviter: DeviceId,
    /// Where the issuing device listens.
    pub addrs: Vec<String>,
    /// Expiry, ms since the epoch.
    pub expires_ms: i64,
    /// Makes the ticket single-use.
    pub nonce: [u8; 16],
}

impl Record for DeviceLink {
    const KIND: &'static str = "device-link";
}

/// Encodes a signed device link as ticket text (`flytdev1...`).
pub fn encode_link(ticket: &Signed<DeviceLink>) -> String {
    encode_with(LINK_PREFIX, ticket)
}

/// Decodes a device-link ticket: signed by the device it names, not expired.
pub fn decode_link(text: &str, now_ms: i64) -> Result<Signed<DeviceLink>, ModelError> {
    let signed: Signed<DeviceLink> = decode_with(
        LINK_PREFIX,
        text,
        "not a Flyt device-link ticket (it starts with flytdev1)",
    )?;
    if signed.signer != signed.payload.inviter.0 {
        return Err(ModelError::BadSignature);
    }
    if signed.payload.expires_ms <= now_ms {
        return Err(ModelError::Expired);
    }
    Ok(signed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Identity;

    fn ticket(role: Role, expires_ms: i64) -> (Identity, String) {
        let alice = Identity::from_secrets([1; 32], [2; 32], "alice");
        let inv = Invite {
            workspace: DocId([3; 16]),
            workspace_name: "acme".into(),
            inviter: alice.device_id(),
            addrs: vec!["127.0.0.1:4000".into()],
            role,
            expires_ms,
            nonce: [7; 16],
        };
        let t = encode(&Signed::sign(&alice.device, inv));
        (alice, t)
    }

    #[test]
    fn round_trip() {
        let (alice, t) = ticket(Role::Member, 10_000);
        let s = decode(&format!("  {t}\n"), 5_000).unwrap();
        assert_eq!(s.payload.inviter, alice.device_id());
        assert_eq!(s.payload.role, Role::Member);
    }

    #[test]
    fn bad_tickets_are_clear_errors() {
        let (_, t) = ticket(Role::Member, 10_000);
        assert!(matches!(decode(&t, 10_000), Err(ModelError::Expired)));
        assert!(matches!(decode("hello", 0), Err(ModelError::Malformed(_))));
        assert!(matches!(
            decode("flyt1!!!", 0),
            Err(ModelError::Malformed(_))
        ));
        assert!(decode(&"flyt1".repeat(2000), 0).is_err());
        // One character changed anywhere in the body: never accepted.
        let mut chars: Vec<char> = t.chars().collect();
        let i = chars.len() / 2;
        chars[i] = if chars[i] == 'a' { 'b' } else { 'a' };
        assert!(decode(&chars.into_iter().collect::<String>(), 0).is_err());
        let (_, owner) = ticket(Role::Owner, 10_000);
        assert!(decode(&owner, 0).is_err());
    }

    #[test]
    fn device_links_round_trip_and_are_not_invites() {
        let alice = Identity::from_secrets([1; 32], [2; 32], "alice");
        let link = DeviceLink {
            person: alice.person_id(),
            inviter: alice.device_id(),
            addrs: vec![],
            expires_ms: 10,
            nonce: [1; 16],
        };
        let t = encode_link(&Signed::sign(&alice.device, link.clone()));
        assert_eq!(decode_link(&t, 5).unwrap().payload, link);
        assert!(matches!(decode_link(&t, 10), Err(ModelError::Expired)));
        assert!(matches!(decode(&t, 5), Err(ModelError::Malformed(_))));
        let (_, invite) = ticket(Role::Member, 10_000);
        assert!(matches!(
            decode_link(&invite, 5),
            Err(ModelError::Malformed(_))
        ));
    }

    #[test]
    fn a_ticket_signed_by_someone_else_than_its_inviter_is_refused() {
        let mallory = Identity::from_secrets([9; 32], [8; 32], "m");
        let inv = Invite {
            workspace: DocId([3; 16]),
            workspace_name: "acme".into(),
            inviter: Identity::from_secrets([1; 32], [2; 32], "a").device_id(),
            addrs: vec![],
            role: Role::Admin,
            expires_ms: 10,
            nonce: [0; 16],
        };
        let t = encode(&Signed::sign(&mallory.device, inv));
        assert!(matches!(decode(&t, 0), Err(ModelError::BadSignature)));
    }
}
