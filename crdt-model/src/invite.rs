//! Invite tickets: a signed, expiring, single-use permission to join a workspace, with how to
//! reach the inviter. Text form: `flyt1` followed by base58 of the signed envelope.
//!
//! The inviter's node checks everything at redemption (signature by its own device, not
//! expired, not used before, role); the joiner checks signature and expiry up front to give a
//! clear message before dialling anyone.

use serde::{Deserialize, Serialize};

use crate::ids::{DeviceId, DocId};
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
    format!("{PREFIX}{}", bs58::encode(ticket.to_bytes()).into_string())
}

/// Decodes ticket text and checks its signature (by the inviter device it names) and, given the
/// current time, its expiry. Whitespace around the ticket is ignored.
pub fn decode(text: &str, now_ms: i64) -> Result<Signed<Invite>, ModelError> {
    let text = text.trim();
    if text.len() > MAX_TICKET_CHARS {
        return Err(ModelError::Malformed("ticket too long"));
    }
    let body = text.strip_prefix(PREFIX).ok_or(ModelError::Malformed(
        "not a Flyt invite ticket (it starts with flyt1)",
    ))?;
    let bytes = bs58::decode(body)
        .into_vec()
        .map_err(|_| ModelError::Malformed("ticket is damaged (not base58)"))?;
    let signed = Signed::<Invite>::decode(&bytes)?;
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
