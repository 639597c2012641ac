//! Identifiers: documents, messages and the keys of people and devices.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ModelError;

/// The id of an Automerge document: 16 bytes, shown as base58check like automerge-repo's
/// `DocumentId`, so a JS automerge-repo peer names our documents the same way.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DocId(pub [u8; 16]);

impl DocId {
    /// A document id derived from a domain tag and parts, for documents whose id every peer
    /// must compute alone (bucket documents, workspace ids bound to their owner).
    pub fn derive(domain: &str, parts: &[&[u8]]) -> Self {
        let mut h = Sha256::new();
        h.update(domain.as_bytes());
        for p in parts {
            h.update((p.len() as u32).to_be_bytes());
            h.update(p);
        }
        let digest = h.finalize();
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest[..16]);
        DocId(id)
    }
}

impl fmt::Display for DocId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&bs58::encode(self.0).with_check().into_string())
    }
}

impl fmt::Debug for DocId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DocId({self})")
    }
}

impl FromStr for DocId {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = bs58::decode(s)
            .with_check(None)
            .into_vec()
            .map_err(|_| ModelError::BadId(s.to_owned()))?;
        let arr: [u8; 16] = bytes
            .try_into()
            .map_err(|_| ModelError::BadId(s.to_owned()))?;
        Ok(DocId(arr))
    }
}

const CROCKFORD: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

/// A message id: 48 bits of milliseconds then 80 random bits (the ULID layout), shown as 26
/// lowercase Crockford base32 characters. Ids sort by creation time, so they double as a
/// stable tie-break after the timestamp.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MessageId(pub [u8; 16]);

impl MessageId {
    /// Builds an id from a millisecond timestamp and 10 random bytes supplied by the caller
    /// (this crate does no I/O, so it draws no randomness itself).
    pub fn new(ts_ms: i64, random: [u8; 10]) -> Self {
        let mut b = [0u8; 16];
        let ts = (ts_ms.max(0) as u64).to_be_bytes();
        b[..6].copy_from_slice(&ts[2..8]);
        b[6..].copy_from_slice(&random);
        MessageId(b)
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = u128::from_be_bytes(self.0);
        let mut out = [0u8; 26];
        for (i, slot) in out.iter_mut().enumerate() {
            let shift = 125 - 5 * i as i32;
            let idx = if shift >= 0 {
                (v >> shift) & 0x1f
            } else {
                (v << -shift) & 0x1f
            };
            *slot = CROCKFORD[idx as usize];
        }
        f.write_str(std::str::from_utf8(&out).expect("ascii"))
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({self})")
    }
}

impl FromStr for MessageId {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ModelError::BadId(s.to_owned());
        if s.len() != 26 {
            return Err(bad());
        }
        let mut v: u128 = 0;
        for (i, c) in s.bytes().enumerate() {
            let c = c.to_ascii_lowercase();
            let c = match c {
                b'o' => b'0',
                b'i' | b'l' => b'1',
                c => c,
            };
            let d = CROCKFORD.iter().position(|&x| x == c).ok_or_else(bad)? as u128;
            // The first character carries only 3 bits (26 * 5 = 130 = 128 + 2).
            if i == 0 && d > 7 {
                return Err(bad());
            }
            v = (v << 5) | d;
        }
        Ok(MessageId(v.to_be_bytes()))
    }
}

/// The public key of a person (ed25519), the identity other members know them by.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PersonId(pub [u8; 32]);

/// The public key of one device of a person (ed25519; later also its iroh endpoint key).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DeviceId(pub [u8; 32]);

macro_rules! hex_key {
    ($t:ident, $name:literal) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($name, "({})"), &hex::encode(&self.0[..6]))
            }
        }
        impl FromStr for $t {
            type Err = ModelError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let mut b = [0u8; 32];
                hex::decode_to_slice(s, &mut b).map_err(|_| ModelError::BadId(s.to_owned()))?;
                Ok($t(b))
            }
        }
    };
}
hex_key!(PersonId, "PersonId");
hex_key!(DeviceId, "DeviceId");

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn message_id_round_trips(ts in 0i64..(1i64 << 47), r in any::<[u8; 10]>()) {
            let id = MessageId::new(ts, r);
            let s = id.to_string();
            prop_assert_eq!(s.len(), 26);
            prop_assert_eq!(s.parse::<MessageId>().unwrap(), id);
            prop_assert_eq!(s.to_uppercase().parse::<MessageId>().unwrap(), id);
        }

        #[test]
        fn doc_id_round_trips(b in any::<[u8; 16]>()) {
            let id = DocId(b);
            prop_assert_eq!(id.to_string().parse::<DocId>().unwrap(), id);
        }

        #[test]
        fn garbage_ids_are_errors_not_panics(s in "\\PC{0,40}") {
            let _ = s.parse::<MessageId>();
            let _ = s.parse::<DocId>();
            let _ = s.parse::<PersonId>();
        }
    }

    #[test]
    fn message_ids_sort_by_time() {
        let a = MessageId::new(1_000, [0xff; 10]);
        let b = MessageId::new(1_001, [0; 10]);
        assert!(a < b);
        assert!(a.to_string() < b.to_string());
    }

    #[test]
    fn corrupted_doc_id_fails_its_checksum() {
        let s = DocId([7; 16]).to_string();
        let mut bad = s.clone().into_bytes();
        bad[3] = if bad[3] == b'2' { b'3' } else { b'2' };
        assert!(String::from_utf8(bad).unwrap().parse::<DocId>().is_err());
    }
}
