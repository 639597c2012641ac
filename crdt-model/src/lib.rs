//! Flyt's data model: the Automerge document schemas, every operation on them, identities and
//! signatures. Pure: this crate does no I/O, reads no clock, draws no randomness and spawns
//! nothing. Callers (the `peer` crate) pass in times, ids and keys.
//!
//! A workspace is a tree of Automerge documents:
//! - one **workspace document** ([`workspace`]): genesis, members and roles, device
//!   certificates, display names, the channel list;
//! - one **channel document** per channel or DM ([`channel`]): the index of its buckets;
//! - **bucket documents** ([`bucket`]) holding the messages of one UTC day (split into parts
//!   when a day gets busy). A bucket's first change is the same bytes on every peer, so two
//!   peers that both create it offline converge on one document.
//!
//! Everything authored is a [`signed::Signed`] envelope; views ([`workspace::WorkspaceView`],
//! [`bucket::MessageView`]) verify them and flag what does not check out.
#![deny(missing_docs)]

pub mod bucket;
pub mod channel;
pub mod identity;
pub mod ids;
pub mod invite;
pub mod mentions;
pub mod signed;
pub mod workspace;

#[cfg(test)]
mod convergence_tests;

use automerge::transaction::{CommitOptions, Transaction};
use automerge::{ActorId, Automerge};
use serde::{Deserialize, Serialize};

pub use identity::Identity;
pub use ids::{DeviceId, DocId, MessageId, PersonId};

/// The longest message text accepted, in characters.
pub const MAX_TEXT_CHARS: usize = 40_000;

/// Everything that can go wrong in the model. Bad input is always one of these, never a panic.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// An id that does not parse.
    #[error("not a valid id: {0:?}")]
    BadId(String),
    /// Bytes that do not decode.
    #[error("malformed data: {0}")]
    Malformed(&'static str),
    /// A format version newer than this build knows.
    #[error("unknown format version {0}")]
    UnknownVersion(u8),
    /// A signature that does not verify.
    #[error("signature does not verify")]
    BadSignature,
    /// Empty message text.
    #[error("message text is empty")]
    EmptyText,
    /// Message text over [`MAX_TEXT_CHARS`].
    #[error("message text is {0} characters; the limit is {MAX_TEXT_CHARS}")]
    TextTooLong(usize),
    /// An invalid emoji for a reaction.
    #[error("not a valid reaction emoji: {0:?}")]
    BadEmoji(String),
    /// An invalid channel or workspace name.
    #[error("not a valid name: {0}")]
    BadName(String),
    /// No message with that id in this document.
    #[error("no message {0}")]
    NoSuchMessage(MessageId),
    /// The message was deleted.
    #[error("message {0} was deleted")]
    Deleted(MessageId),
    /// The action needs a role or authorship the actor does not have.
    #[error("not allowed: {0}")]
    NotAllowed(&'static str),
    /// The document is not of the expected kind or shape.
    #[error("document is not a valid {0} document")]
    WrongDocument(&'static str),
    /// An invite ticket past its expiry.
    #[error("this invite has expired; ask for a new one")]
    Expired,
    /// Automerge refused an operation.
    #[error(transparent)]
    Automerge(#[from] automerge::AutomergeError),
}

/// A role in a workspace. Ordered: a higher role can do what a lower one can.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Role {
    /// No longer a member.
    Removed,
    /// A member.
    Member,
    /// May change roles of members and admins, remove members, delete any message.
    Admin,
    /// The founder; holds every right and cannot be removed.
    Owner,
}

impl Role {
    /// The lowercase name used in the CLI and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Removed => "removed",
            Role::Member => "member",
            Role::Admin => "admin",
            Role::Owner => "owner",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "member" => Ok(Role::Member),
            "admin" => Ok(Role::Admin),
            "owner" => Ok(Role::Owner),
            "removed" => Ok(Role::Removed),
            _ => Err(ModelError::BadName(format!("unknown role {s:?}"))),
        }
    }
}

/// Checks message text: not blank, at most [`MAX_TEXT_CHARS`] characters.
pub fn validate_text(text: &str) -> Result<(), ModelError> {
    if text.trim().is_empty() {
        return Err(ModelError::EmptyText);
    }
    let n = text.chars().count();
    if n > MAX_TEXT_CHARS {
        return Err(ModelError::TextTooLong(n));
    }
    Ok(())
}

/// The Automerge actor id for a device: its key's first 16 bytes. One actor per device, reused
/// for every document, as Automerge recommends.
pub fn device_actor(device: &DeviceId) -> ActorId {
    ActorId::from(&device.0[..16])
}

/// Runs `f` in one Automerge transaction committed with an explicit time (Automerge's Rust
/// default is 0; times are seconds in Automerge's change metadata).
///
/// Local operations report what they touched themselves (a message id) instead of logging
/// patches: on a 1,000-message bucket a patch log costs ~220 µs per post and
/// `Automerge::diff` ~1.8 ms, against ~125 µs for the change itself. Remote changes are mapped
/// to messages from their patches ([`bucket::touched`]).
pub(crate) fn commit<O>(
    doc: &mut Automerge,
    at_ms: i64,
    f: impl FnOnce(&mut Transaction<'_>) -> Result<O, ModelError>,
) -> Result<O, ModelError> {
    doc.transact_with(
        |_| CommitOptions::default().with_time(at_ms.div_euclid(1000)),
        f,
    )
    .map(|ok| ok.result)
    .map_err(|failed| failed.error)
}

/// Reads a scalar `bytes` value at `key` of `obj`, if that is what is there.
pub(crate) fn get_bytes(
    doc: &impl automerge::ReadDoc,
    obj: &automerge::ObjId,
    key: &str,
) -> Option<Vec<u8>> {
    match doc.get(obj, key).ok()?? {
        (automerge::Value::Scalar(s), _) => match s.as_ref() {
            automerge::ScalarValue::Bytes(b) => Some(b.clone()),
            _ => None,
        },
        _ => None,
    }
}

/// Every conflicting `bytes` value at `key` (Automerge keeps all concurrent writes; the views
/// choose among them by validity, not by Automerge's arbitrary winner).
pub(crate) fn get_all_bytes(
    doc: &impl automerge::ReadDoc,
    obj: &automerge::ObjId,
    key: &str,
) -> Vec<Vec<u8>> {
    doc.get_all(obj, key)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(v, _)| match v {
            automerge::Value::Scalar(s) => match s.as_ref() {
                automerge::ScalarValue::Bytes(b) => Some(b.clone()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// Reads a scalar string at `key` of `obj`.
pub(crate) fn get_str(
    doc: &impl automerge::ReadDoc,
    obj: &automerge::ObjId,
    key: &str,
) -> Option<String> {
    match doc.get(obj, key).ok()?? {
        (automerge::Value::Scalar(s), _) => match s.as_ref() {
            automerge::ScalarValue::Str(t) => Some(t.to_string()),
            _ => None,
        },
        _ => None,
    }
}

/// Reads the map object at `key` of `obj`.
pub(crate) fn get_map(
    doc: &impl automerge::ReadDoc,
    obj: &automerge::ObjId,
    key: &str,
) -> Option<automerge::ObjId> {
    match doc.get(obj, key).ok()?? {
        (automerge::Value::Object(automerge::ObjType::Map), id) => Some(id),
        _ => None,
    }
}

/// Validates a channel or workspace name: 1 to 80 characters, no control characters; channel
/// names also no spaces and no leading `#` (it is stripped by callers).
pub fn validate_name(name: &str, channel: bool) -> Result<(), ModelError> {
    let n = name.chars().count();
    if n == 0 || n > 80 {
        return Err(ModelError::BadName(format!(
            "{name:?} must be 1 to 80 characters"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(ModelError::BadName(format!(
            "{name:?} has control characters"
        )));
    }
    if channel && (name.chars().any(char::is_whitespace) || name.starts_with('#')) {
        return Err(ModelError::BadName(format!(
            "channel names have no spaces and no leading '#': {name:?}"
        )));
    }
    Ok(())
}
