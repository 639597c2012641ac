//! Signed records: the envelope every authored fact travels in, and the record types.
//!
//! Automerge does not sign changes (its `Author` field is plain bytes), so each fact that
//! matters (a message header and body, an edit, a deletion, a reaction, a role, a device
//! certificate) is stored in the document as one scalar `bytes` value: a signed envelope.
//! Layout: `version (1) | signer key (32) | signature (64) | payload (postcard)`. The signature
//! covers `"flyt/v1/" + kind + 0x00 + payload`, so a record of one kind can never be replayed
//! as another.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::ids::{DeviceId, DocId, MessageId, PersonId};
use crate::{ModelError, Role};

const ENVELOPE_VERSION: u8 = 1;
const HEADER_LEN: usize = 1 + 32 + 64;
/// The largest envelope we decode; anything bigger is refused before parsing.
pub const MAX_ENVELOPE: usize = 256 * 1024;

/// A payload type that can be signed. `KIND` separates the signature domains.
pub trait Record: Serialize + DeserializeOwned {
    /// The domain tag mixed into the signature.
    const KIND: &'static str;

    /// Bytes signed after the postcard payload: a field added since version 1 of the record.
    /// Postcard stops reading at the end of the struct, so readers that predate the field
    /// accept the record and ignore it. None by default.
    fn tail(&self) -> Vec<u8> {
        Vec::new()
    }

    /// Takes back what [`Record::tail`] wrote (the bytes after the struct, maybe empty).
    fn with_tail(self, _tail: &[u8]) -> Self {
        self
    }
}

/// What a record vouches for another envelope with: the SHA-256 of its exact bytes.
pub type Vouch = [u8; 32];

/// The [`Vouch`] for an envelope's bytes.
pub fn vouch(envelope: &[u8]) -> Vouch {
    use sha2::{Digest, Sha256};
    Sha256::digest(envelope).into()
}

/// A record with the key that signed it. Only [`Signed::decode`] and [`Signed::sign`] make one,
/// so holding a `Signed<T>` means its signature checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed<T> {
    /// The key that produced the signature (a device key, or a person key for certificates).
    pub signer: [u8; 32],
    /// The decoded payload.
    pub payload: T,
    bytes: Vec<u8>,
}

fn message_to_sign(kind: &str, payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(8 + kind.len() + 1 + payload.len());
    m.extend_from_slice(b"flyt/v1/");
    m.extend_from_slice(kind.as_bytes());
    m.push(0);
    m.extend_from_slice(payload);
    m
}

/// Decompresses a signer's key, remembering the last few hundred per thread: a workspace has a
/// handful of devices signing everything, and decompression is a field square root, about a
/// tenth of a verification.
fn verifying_key(signer: &[u8; 32]) -> Option<VerifyingKey> {
    use std::cell::RefCell;
    use std::collections::HashMap;
    const KEEP: usize = 512;
    thread_local! {
        static KEYS: RefCell<HashMap<[u8; 32], VerifyingKey>> = RefCell::new(HashMap::new());
    }
    KEYS.with_borrow_mut(|keys| {
        if let Some(k) = keys.get(signer) {
            return Some(*k);
        }
        let k = VerifyingKey::from_bytes(signer).ok()?;
        if keys.len() >= KEEP {
            keys.clear();
        }
        keys.insert(*signer, k);
        Some(k)
    })
}

impl<T: Record> Signed<T> {
    /// Signs `payload` with `key`.
    pub fn sign(key: &SigningKey, payload: T) -> Self {
        let mut body = postcard::to_stdvec(&payload).expect("records always serialize");
        body.extend_from_slice(&payload.tail());
        let sig = key.sign(&message_to_sign(T::KIND, &body));
        let mut bytes = Vec::with_capacity(HEADER_LEN + body.len());
        bytes.push(ENVELOPE_VERSION);
        bytes.extend_from_slice(key.verifying_key().as_bytes());
        bytes.extend_from_slice(&sig.to_bytes());
        bytes.extend_from_slice(&body);
        Signed {
            signer: key.verifying_key().to_bytes(),
            payload,
            bytes,
        }
    }

    /// Decodes an envelope and checks its signature. Every failure is a typed error.
    pub fn decode(bytes: &[u8]) -> Result<Self, ModelError> {
        Self::decode_vouched(bytes, None)
    }

    /// [`Signed::decode`], except that an envelope whose bytes are exactly the ones `vouched`
    /// names (see [`vouch`]) is not checked again: the verified record that vouches for it
    /// signed these very bytes. A message's header vouches for its first body this way, so a
    /// new device checks one signature per message instead of two (the bulk of a join).
    /// Any other envelope (an edit, a forgery) has its own signature checked.
    pub fn decode_vouched(bytes: &[u8], vouched: Option<&Vouch>) -> Result<Self, ModelError> {
        if bytes.len() > MAX_ENVELOPE {
            return Err(ModelError::Malformed("envelope too large"));
        }
        if bytes.len() < HEADER_LEN {
            return Err(ModelError::Malformed("envelope truncated"));
        }
        if bytes[0] != ENVELOPE_VERSION {
            return Err(ModelError::UnknownVersion(bytes[0]));
        }
        let signer: [u8; 32] = bytes[1..33].try_into().expect("length checked");
        let sig: [u8; 64] = bytes[33..HEADER_LEN].try_into().expect("length checked");
        let body = &bytes[HEADER_LEN..];
        if vouched != Some(&vouch(bytes)) {
            let key = verifying_key(&signer).ok_or(ModelError::BadSignature)?;
            key.verify_strict(
                &message_to_sign(T::KIND, body),
                &Signature::from_bytes(&sig),
            )
            .map_err(|_| ModelError::BadSignature)?;
        }
        let (payload, tail) = postcard::take_from_bytes::<T>(body)
            .map_err(|_| ModelError::Malformed("record payload"))?;
        let payload = payload.with_tail(tail);
        Ok(Signed {
            signer,
            payload,
            bytes: bytes.to_vec(),
        })
    }

    /// The envelope bytes, as stored in the document.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.bytes.clone()
    }

    /// The signer as a device id.
    pub fn device(&self) -> DeviceId {
        DeviceId(self.signer)
    }
}

/// The founding record of a workspace, signed by the owner's person key. The workspace id is
/// derived from the owner key and `nonce`, so nobody else can write a valid genesis for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Genesis {
    /// The workspace id (must equal `workspace_id(owner, nonce)`).
    pub workspace: DocId,
    /// Random bytes chosen by the owner.
    pub nonce: [u8; 16],
    /// The workspace name.
    pub name: String,
    /// Creation time, ms since the Unix epoch.
    pub at_ms: i64,
}
impl Record for Genesis {
    const KIND: &'static str = "genesis";
}

/// A person's certificate for one of their devices, signed by the person key. It carries the
/// device's own signature over the person key (`device_sig`), so nobody can claim another
/// person's device as theirs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceCert {
    /// The certified device key.
    pub device: DeviceId,
    /// The device key's signature over `"flyt/v1/device-of" + person key`.
    pub device_sig: Vec<u8>,
    /// A human label ("laptop").
    pub label: String,
    /// Issue time, ms.
    pub at_ms: i64,
}
impl Record for DeviceCert {
    const KIND: &'static str = "device-cert";
}

/// A role assignment for `person` in `workspace`, signed by a device of an owner or admin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// The workspace.
    pub workspace: DocId,
    /// Who the role is for.
    pub person: PersonId,
    /// The role; [`Role::Removed`] removes the person.
    pub role: Role,
    /// When it was decided, ms.
    pub at_ms: i64,
}
impl Record for Membership {
    const KIND: &'static str = "membership";
}

/// Whether `person` is in a private channel, signed by a device of a channel member. The
/// channel's member list is these records, kept append-only in the channel document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelMembership {
    /// The channel (its document id).
    pub channel: DocId,
    /// Who is added or removed.
    pub person: PersonId,
    /// In the channel (true) or removed from it (false).
    pub member: bool,
    /// When it was decided, ms.
    pub at_ms: i64,
}
impl Record for ChannelMembership {
    const KIND: &'static str = "channel-member";
}

/// A person's display name in a workspace, signed by one of their devices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    /// The workspace.
    pub workspace: DocId,
    /// The display name.
    pub name: String,
    /// When it was set, ms.
    pub at_ms: i64,
}
impl Record for Profile {
    const KIND: &'static str = "profile";
}

/// A channel's listing in the workspace (name, topic, privacy), signed by a member's device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelInfo {
    /// The workspace.
    pub workspace: DocId,
    /// The channel (its document id).
    pub channel: DocId,
    /// The name, without `#`.
    pub name: String,
    /// The topic, possibly empty.
    pub topic: String,
    /// Private channels reach only their members.
    pub private: bool,
    /// When this version was written, ms.
    pub at_ms: i64,
}
impl Record for ChannelInfo {
    const KIND: &'static str = "channel";
}

/// A relay added to (`active`) or removed from a workspace, signed by a device of an owner or
/// admin. Members' nodes sync through the relays a workspace lists; a relay serves only the
/// workspaces that list it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayRecord {
    /// The workspace.
    pub workspace: DocId,
    /// The relay's iroh endpoint id (its device key).
    pub relay: DeviceId,
    /// The relay's HTTP URL (what `flyt relay add` was given), without a trailing slash.
    pub url: String,
    /// Direct UDP addresses of the relay's iroh endpoint (`ip:port`).
    pub addrs: Vec<String>,
    /// `false` removes the relay.
    pub active: bool,
    /// When it was decided, ms.
    pub at_ms: i64,
}
impl Record for RelayRecord {
    const KIND: &'static str = "relay";
}

/// The immutable part of a message, signed by the author's device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostHeader {
    /// The channel it was posted in.
    pub channel: DocId,
    /// Its id (must equal its key in the bucket).
    pub id: MessageId,
    /// Its author.
    pub author: PersonId,
    /// Post time, ms.
    pub ts_ms: i64,
    /// The message it quotes or answers, if any.
    pub reply_to: Option<MessageId>,
    /// The root of the thread it belongs to, if any.
    pub thread_root: Option<MessageId>,
    /// The message's first body envelope, vouched for (since 0.1 of the header: a tail, see
    /// [`Record::tail`]; `None` in older headers, whose first body is checked on its own).
    #[serde(skip)]
    pub body: Option<Vouch>,
}
impl Record for PostHeader {
    const KIND: &'static str = "post";

    fn tail(&self) -> Vec<u8> {
        self.body.map(Vec::from).unwrap_or_default()
    }

    fn with_tail(self, tail: &[u8]) -> Self {
        PostHeader {
            body: tail.try_into().ok(),
            ..self
        }
    }
}

/// The current text of a message (the first version, or an edit), signed by the author's device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Body {
    /// The message.
    pub id: MessageId,
    /// Markdown text.
    pub text: String,
    /// People mentioned with `@name`.
    pub mentions: Vec<PersonId>,
    /// When this version was written, ms.
    pub at_ms: i64,
    /// True for an edit.
    pub edit: bool,
}
impl Record for Body {
    const KIND: &'static str = "body";
}

/// Delete-for-everyone, signed by the author's device or an admin's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deletion {
    /// The message.
    pub id: MessageId,
    /// Who deleted it.
    pub by: PersonId,
    /// When, ms.
    pub at_ms: i64,
}
impl Record for Deletion {
    const KIND: &'static str = "delete";
}

/// One person's reaction with one emoji, on or off, signed by one of their devices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reaction {
    /// The message.
    pub id: MessageId,
    /// The emoji.
    pub emoji: String,
    /// Who reacted.
    pub by: PersonId,
    /// Added (true) or removed (false).
    pub on: bool,
    /// When, ms.
    pub at_ms: i64,
}
impl Record for Reaction {
    const KIND: &'static str = "reaction";
}

/// An ephemeral note between online devices (typing, presence), signed by the sender's device.
/// Never stored in a document; `at_ms` makes repeats distinct and stale ones detectable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ephemeral {
    /// The workspace it concerns.
    pub workspace: DocId,
    /// Who sends it (the signing device must be theirs).
    pub person: PersonId,
    /// What it says.
    pub kind: EphemeralKind,
    /// When it was sent, ms.
    pub at_ms: i64,
}
impl Record for Ephemeral {
    const KIND: &'static str = "ephemeral";
}

/// What an [`Ephemeral`] note says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EphemeralKind {
    /// The person is typing in this channel (or DM).
    Typing {
        /// The channel.
        channel: DocId,
    },
    /// The person's presence (a heartbeat while online or away).
    Presence {
        /// Online, away or offline.
        state: Presence,
    },
}

/// Whether a person is around.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Presence {
    /// Connected and active.
    Online,
    /// Connected, but not at the keyboard.
    Away,
    /// Not connected.
    Offline,
}

impl Presence {
    /// `online`, `away` or `offline`.
    pub fn as_str(self) -> &'static str {
        match self {
            Presence::Online => "online",
            Presence::Away => "away",
            Presence::Offline => "offline",
        }
    }
}

/// Decodes an envelope of the given record type, ignoring (and reporting) what fails.
pub fn decode_opt<T: Record>(bytes: &[u8]) -> Option<Signed<T>> {
    Signed::decode(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(n: u8) -> SigningKey {
        SigningKey::from_bytes(&[n; 32])
    }

    fn sample() -> Body {
        Body {
            id: MessageId::new(5, [1; 10]),
            text: "hello **world**".into(),
            mentions: vec![PersonId([3; 32])],
            at_ms: 5,
            edit: false,
        }
    }

    #[test]
    fn round_trip_and_tamper() {
        let s = Signed::sign(&key(1), sample());
        let bytes = s.to_bytes();
        let back = Signed::<Body>::decode(&bytes).unwrap();
        assert_eq!(back, s);
        // Flip any byte of the payload or signature: the signature no longer checks out.
        for i in 33..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 1;
            assert!(Signed::<Body>::decode(&b).is_err(), "byte {i}");
        }
        // A body envelope is not a valid deletion, even though the signer is the same.
        assert!(matches!(
            Signed::<Deletion>::decode(&bytes),
            Err(ModelError::BadSignature)
        ));
    }

    #[test]
    fn unknown_version_and_truncation_are_typed_errors() {
        let mut bytes = Signed::sign(&key(1), sample()).to_bytes();
        bytes[0] = 9;
        assert!(matches!(
            Signed::<Body>::decode(&bytes),
            Err(ModelError::UnknownVersion(9))
        ));
        assert!(matches!(
            Signed::<Body>::decode(&bytes[..50]),
            Err(ModelError::Malformed(_))
        ));
        let huge = vec![1u8; MAX_ENVELOPE + 1];
        assert!(matches!(
            Signed::<Body>::decode(&huge),
            Err(ModelError::Malformed(_))
        ));
    }

    fn header(body: Option<Vouch>) -> PostHeader {
        PostHeader {
            channel: DocId([7; 16]),
            id: MessageId::new(5, [1; 10]),
            author: PersonId([3; 32]),
            ts_ms: 5,
            reply_to: None,
            thread_root: None,
            body,
        }
    }

    #[test]
    fn a_header_vouches_for_exactly_one_body_envelope() {
        let body = Signed::sign(&key(1), sample()).to_bytes();
        let h = Signed::sign(&key(1), header(Some(vouch(&body))));
        let back = Signed::<PostHeader>::decode(&h.to_bytes()).unwrap();
        assert_eq!(back.payload.body, Some(vouch(&body)), "the tail comes back");
        // Readers from before the tail (postcard stops at the struct's end) still accept it.
        let old: PostHeader = postcard::from_bytes(&h.to_bytes()[HEADER_LEN..]).unwrap();
        assert_eq!(old, header(None));
        // The tail is signed: change it and the header no longer checks out.
        let mut bytes = h.to_bytes();
        *bytes.last_mut().unwrap() ^= 1;
        assert!(Signed::<PostHeader>::decode(&bytes).is_err());
        // A header without a tail (written before it existed) reads as vouching for nothing.
        let plain = Signed::sign(&key(1), header(None)).to_bytes();
        assert_eq!(plain.len(), h.to_bytes().len() - 32);
        let plain = Signed::<PostHeader>::decode(&plain).unwrap();
        assert_eq!(plain.payload.body, None);

        // The vouched envelope is taken as it is: its own signature is not checked again...
        let mut unsigned = body.clone();
        unsigned[40] ^= 1;
        assert!(Signed::<Body>::decode(&unsigned).is_err());
        let v = Signed::<Body>::decode_vouched(&unsigned, Some(&vouch(&unsigned))).unwrap();
        assert_eq!(v.payload, sample());
        // ...and any other envelope is: a forgery under the same voucher is refused, a genuine
        // one (an edit) accepted on its own signature.
        let vouched = Some(vouch(&body));
        assert!(matches!(
            Signed::<Body>::decode_vouched(&unsigned, vouched.as_ref()),
            Err(ModelError::BadSignature)
        ));
        let edit = Signed::sign(
            &key(1),
            Body {
                edit: true,
                ..sample()
            },
        )
        .to_bytes();
        assert!(Signed::<Body>::decode_vouched(&edit, vouched.as_ref()).is_ok());
    }

    proptest! {
        #[test]
        fn any_body_round_trips(text in "\\PC{0,200}", at in any::<i64>(), edit in any::<bool>()) {
            let b = Body { id: MessageId::new(1, [2; 10]), text, mentions: vec![], at_ms: at, edit };
            let s = Signed::sign(&key(4), b.clone());
            prop_assert_eq!(Signed::<Body>::decode(&s.to_bytes()).unwrap().payload, b);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Signed::<Body>::decode(&bytes);
            let _ = Signed::<Membership>::decode(&bytes);
        }
    }
}
