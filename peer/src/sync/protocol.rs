//! The Flyt sync protocol's frames and their framing: what two Flyt nodes (the relay included)
//! say to each other over one connection, multiplexing every document they share.
//!
//! A frame on the wire is a 4-byte big-endian length, then the frame encoded with postcard.
//! [`FrameDecoder`] never buffers more than [`MAX_FRAME`] bytes for one frame: a length over the
//! limit is an error before anything is allocated for it.

use serde::{Deserialize, Serialize};

use crdt_model::{DeviceId, DocId, PersonId};

/// The ALPN identifying Flyt's sync protocol on an iroh connection.
pub const ALPN: &[u8] = b"flyt/sync/1";

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 1;

/// The largest frame accepted, in bytes (a bucket's full history in one sync message fits).
pub const MAX_FRAME: usize = 16 * 1024 * 1024;

/// What a document is, so a receiver can check it may hold it before allocating anything.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DocRef {
    /// A workspace document.
    Workspace {
        /// Its id.
        id: DocId,
    },
    /// A channel document of `workspace`.
    Channel {
        /// Its id.
        id: DocId,
        /// The workspace it belongs to.
        workspace: DocId,
    },
    /// A bucket document of `channel` (its id is derived from the two).
    Bucket {
        /// The channel.
        channel: DocId,
        /// The bucket key, e.g. `2026-11-22.0`.
        key: String,
    },
    /// The channel document of a DM (or group DM) of `workspace`; its id is derived from the
    /// two, so a receiver checks it is a participant before holding anything.
    Dm {
        /// The workspace.
        workspace: DocId,
        /// The participants (sorted person keys).
        members: Vec<PersonId>,
    },
}

impl DocRef {
    /// The document id this reference names (for buckets, derived; a malformed key gives
    /// `None`).
    pub fn id(&self) -> Option<DocId> {
        match self {
            DocRef::Workspace { id } | DocRef::Channel { id, .. } => Some(*id),
            DocRef::Bucket { channel, key } => key
                .parse()
                .ok()
                .map(|k| crdt_model::bucket::bucket_id(*channel, k)),
            DocRef::Dm { workspace, members } => {
                Some(crdt_model::channel::dm_id(*workspace, members))
            }
        }
    }
}

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    /// First frame on a connection, both ways: the version, and the documents the sender will
    /// share with this peer, in the order it wants them synced (workspace and channel documents
    /// first, then buckets newest first).
    Hello {
        /// [`PROTOCOL_VERSION`] of the sender.
        version: u16,
        /// Documents on offer.
        have: Vec<DocRef>,
    },
    /// The sender now holds a document it did not announce (a new channel or bucket).
    Have {
        /// The new documents.
        docs: Vec<DocRef>,
    },
    /// An Automerge sync message for one document.
    Sync {
        /// The document.
        doc: DocId,
        /// `automerge::sync::Message` bytes.
        data: Vec<u8>,
    },
    /// The sender will not sync this document with the receiver (unknown to it, or not
    /// allowed).
    Unavailable {
        /// The document.
        doc: DocId,
    },
    /// First frame of a joining device, before its Hello: an invite ticket and the joiner's
    /// device certificate (`Signed<DeviceCert>` bytes).
    Join {
        /// The ticket text.
        ticket: String,
        /// The joiner's device certificate.
        cert: Vec<u8>,
    },
    /// The receiver refuses the connection (a bad ticket, not a member); it closes next.
    Refused {
        /// Why, for people.
        reason: String,
    },
    /// First (and only) frame of a new device linking itself to a person: a device-link ticket
    /// and the device's signature over the ticket's person key. The device is the connection's
    /// authenticated endpoint.
    Link {
        /// The ticket text (starts with `flytdev1`).
        ticket: String,
        /// The new device's half of its certificate (`crdt_model::identity::device_sig`).
        device_sig: Vec<u8>,
    },
    /// The answer to [`Frame::Link`]: the person's identity, for the new device to keep, and
    /// the workspaces it was added to. The connection closes next; the new device then
    /// connects as a member device and syncs.
    Linked {
        /// The person's secret key.
        person_secret: Secret,
        /// The person's display name.
        name: String,
        /// Workspaces whose documents now certify the new device.
        workspaces: Vec<DocId>,
    },
    /// An ephemeral note (typing, presence): `Signed<crdt_model::signed::Ephemeral>` bytes.
    /// Never stored and never synced onward; the runtime checks it, the engine ignores it.
    Ephemeral {
        /// The signed envelope.
        signed: Vec<u8>,
    },
    /// Where member devices listen, as the sender knows it (its own addresses included): only
    /// devices of current members of a workspace both ends are current members of. Never
    /// stored or acted on as is: the receiver keeps what [`checked_peers`] lets through and
    /// its share policy allows. The engine ignores it.
    Peers {
        /// At most [`MAX_PEER_ENTRIES`] entries.
        peers: Vec<PeerEntry>,
    },
}

/// The most entries one [`Frame::Peers`] may carry; a frame with more is ignored whole.
pub const MAX_PEER_ENTRIES: usize = 256;

/// The most addresses one [`PeerEntry`] may carry; an entry with more is dropped.
pub const MAX_PEER_ADDRS: usize = 8;

/// The longest address string kept (a relay URL); longer ones are dropped.
pub const MAX_ADDR_LEN: usize = 256;

/// One device's addresses in a [`Frame::Peers`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerEntry {
    /// The device (its iroh endpoint key).
    pub device: DeviceId,
    /// Where it listens: `ip:port` direct addresses and `http(s)://` relay URLs, as tickets
    /// carry them.
    pub addrs: Vec<String>,
    /// When the sender learnt these addresses (ms; for its own, when it started listening).
    pub updated_ms: i64,
}

/// The part of a received [`Frame::Peers`] that is within bounds and well formed: nothing if it
/// has more than [`MAX_PEER_ENTRIES`] entries; without entries that have more than
/// [`MAX_PEER_ADDRS`] addresses, and without addresses that are neither a socket address nor an
/// `http(s)://` relay URL (or longer than [`MAX_ADDR_LEN`]); entries left with no address are
/// dropped, and a device listed twice keeps its first entry. What is dropped is logged (debug).
pub fn checked_peers(peers: Vec<PeerEntry>) -> Vec<PeerEntry> {
    if peers.len() > MAX_PEER_ENTRIES {
        tracing::debug!(
            entries = peers.len(),
            "ignoring a Peers frame over {MAX_PEER_ENTRIES} entries"
        );
        return Vec::new();
    }
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(peers.len());
    for mut e in peers {
        if e.addrs.len() > MAX_PEER_ADDRS {
            tracing::debug!(device = %e.device, addrs = e.addrs.len(), "dropping an entry with too many addresses");
            continue;
        }
        e.addrs.retain(|a| {
            let ok = valid_addr(a);
            if !ok {
                tracing::debug!(device = %e.device, "dropping a malformed address");
            }
            ok
        });
        if e.addrs.is_empty() || !seen.insert(e.device) {
            continue;
        }
        out.push(e);
    }
    out
}

/// Whether `a` is an address a [`PeerEntry`] may carry (see [`checked_peers`]).
fn valid_addr(a: &str) -> bool {
    a.len() <= MAX_ADDR_LEN
        && (a.parse::<std::net::SocketAddr>().is_ok() || crate::net::relay_url(a).is_ok())
}

/// A secret key in a frame; its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Secret(pub [u8; 32]);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Why bytes are not a frame.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    /// The length prefix exceeds [`MAX_FRAME`].
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    /// The frame does not decode.
    #[error("malformed frame")]
    Malformed,
    /// The peer speaks a protocol version this build does not.
    #[error("unsupported protocol version {0} (this build speaks {PROTOCOL_VERSION})")]
    UnsupportedVersion(u16),
}

impl Frame {
    /// Encodes the frame with its length prefix.
    pub fn encode(&self) -> Vec<u8> {
        let body = postcard::to_stdvec(self).expect("frames always serialize");
        let mut out = Vec::with_capacity(4 + body.len());
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// Decodes one frame body (without its length prefix).
    pub fn decode(body: &[u8]) -> Result<Frame, FrameError> {
        if body.len() > MAX_FRAME {
            return Err(FrameError::TooLarge(body.len()));
        }
        let frame: Frame = postcard::from_bytes(body).map_err(|_| FrameError::Malformed)?;
        if let Frame::Hello { version, .. } = &frame
            && *version != PROTOCOL_VERSION
        {
            return Err(FrameError::UnsupportedVersion(*version));
        }
        Ok(frame)
    }
}

/// Splits a byte stream into frames.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
}

impl FrameDecoder {
    /// Adds bytes received from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed. After an error the
    /// connection must be closed: the stream is no longer in step.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes(self.buf[..4].try_into().expect("4 bytes")) as usize;
        if len > MAX_FRAME {
            return Err(FrameError::TooLarge(len));
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        let frame = Frame::decode(&self.buf[4..4 + len]);
        self.buf.drain(..4 + len);
        frame.map(Some)
    }

    /// How many bytes are buffered (bounded by `4 + MAX_FRAME` plus one read).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_frame() -> impl Strategy<Value = Frame> {
        let id = any::<[u8; 16]>().prop_map(DocId);
        prop_oneof![
            proptest::collection::vec(id.clone(), 0..5).prop_map(|ids| Frame::Hello {
                version: PROTOCOL_VERSION,
                have: ids.into_iter().map(|id| DocRef::Workspace { id }).collect(),
            }),
            (id.clone(), proptest::collection::vec(any::<u8>(), 0..300))
                .prop_map(|(doc, data)| Frame::Sync { doc, data }),
            id.clone().prop_map(|doc| Frame::Unavailable { doc }),
            proptest::collection::vec(any::<u8>(), 0..200)
                .prop_map(|signed| Frame::Ephemeral { signed }),
            proptest::collection::vec(arb_entry(), 0..4).prop_map(|peers| Frame::Peers { peers }),
            (id.clone(), id).prop_map(|(channel, workspace)| Frame::Have {
                docs: vec![
                    DocRef::Channel {
                        id: channel,
                        workspace
                    },
                    DocRef::Bucket {
                        channel,
                        key: "2026-11-22.0".into()
                    },
                ],
            }),
        ]
    }

    fn arb_entry() -> impl Strategy<Value = PeerEntry> {
        (
            any::<[u8; 32]>(),
            proptest::collection::vec("[ -~]{0,40}", 0..4),
            any::<i64>(),
        )
            .prop_map(|(d, addrs, updated_ms)| PeerEntry {
                device: DeviceId(d),
                addrs,
                updated_ms,
            })
    }

    proptest! {
        #[test]
        fn frames_round_trip_in_any_split(frames in proptest::collection::vec(arb_frame(), 1..6), cut in 1usize..50) {
            let bytes: Vec<u8> = frames.iter().flat_map(Frame::encode).collect();
            let mut d = FrameDecoder::default();
            let mut out = Vec::new();
            for chunk in bytes.chunks(cut) {
                d.push(chunk);
                while let Some(f) = d.next_frame().unwrap() {
                    out.push(f);
                }
            }
            prop_assert_eq!(out, frames);
            prop_assert_eq!(d.buffered(), 0);
        }

        #[test]
        fn garbage_is_an_error_or_incomplete_never_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut d = FrameDecoder::default();
            d.push(&bytes);
            let _ = d.next_frame();
        }
    }

    #[test]
    fn an_oversized_length_is_refused_before_allocating() {
        let mut d = FrameDecoder::default();
        d.push(&u32::MAX.to_be_bytes());
        assert_eq!(d.next_frame(), Err(FrameError::TooLarge(u32::MAX as usize)));
        assert_eq!(d.buffered(), 4);
    }

    #[test]
    fn unknown_versions_and_truncation() {
        let bytes = Frame::Hello {
            version: 99,
            have: vec![],
        }
        .encode();
        let mut d = FrameDecoder::default();
        d.push(&bytes);
        assert_eq!(d.next_frame(), Err(FrameError::UnsupportedVersion(99)));
        let bytes = Frame::Sync {
            doc: DocId([1; 16]),
            data: vec![1, 2, 3],
        }
        .encode();
        let mut d = FrameDecoder::default();
        d.push(&bytes[..bytes.len() - 1]);
        assert_eq!(d.next_frame(), Ok(None));
        // A length that claims less than the body: the rest is a malformed next frame.
        let mut short = bytes.clone();
        short[3] -= 2;
        let mut d = FrameDecoder::default();
        d.push(&short);
        assert!(d.next_frame().is_err());
    }

    fn entry(d: u8, addrs: &[&str]) -> PeerEntry {
        PeerEntry {
            device: DeviceId([d; 32]),
            addrs: addrs.iter().map(|a| a.to_string()).collect(),
            updated_ms: 7,
        }
    }

    #[test]
    fn peers_frames_round_trip_and_keep_only_what_is_bounded_and_well_formed() {
        let frame = Frame::Peers {
            peers: vec![
                entry(
                    1,
                    &["127.0.0.1:4000", "[::1]:4001", "http://relay.example:3340"],
                ),
                entry(2, &["not an address", "10.0.0.2:9", "ftp://x", "10.0.0.2"]),
                entry(3, &["nonsense"]),
                entry(4, &["1.2.3.4:5"; MAX_PEER_ADDRS + 1]),
                entry(1, &["127.0.0.9:1"]),
            ],
        };
        let mut d = FrameDecoder::default();
        d.push(&frame.encode());
        let Some(Frame::Peers { peers }) = d.next_frame().unwrap() else {
            panic!("a Peers frame")
        };
        assert_eq!(
            checked_peers(peers),
            vec![
                entry(
                    1,
                    &["127.0.0.1:4000", "[::1]:4001", "http://relay.example:3340"]
                ),
                entry(2, &["10.0.0.2:9"]),
            ],
            "malformed addresses, entries left empty or over the address bound, and repeats \
             are dropped"
        );
        let long = format!("http://{}.example", "a".repeat(MAX_ADDR_LEN));
        assert!(checked_peers(vec![entry(5, &[&long])]).is_empty());

        let full: Vec<PeerEntry> = (0..MAX_PEER_ENTRIES)
            .map(|i| PeerEntry {
                device: DeviceId([(i % 256) as u8; 32]),
                addrs: vec!["127.0.0.1:1".into()],
                updated_ms: 0,
            })
            .collect();
        assert_eq!(checked_peers(full.clone()).len(), 256);
        let mut over = full;
        over.push(entry(9, &["127.0.0.1:2"]));
        assert!(
            checked_peers(over).is_empty(),
            "a frame over the bound is ignored whole"
        );
    }

    #[test]
    fn bucket_refs_derive_their_id() {
        let channel = DocId([4; 16]);
        let r = DocRef::Bucket {
            channel,
            key: "2026-11-22.0".into(),
        };
        let key = "2026-11-22.0".parse().unwrap();
        assert_eq!(r.id(), Some(crdt_model::bucket::bucket_id(channel, key)));
        assert_eq!(
            DocRef::Bucket {
                channel,
                key: "nope".into()
            }
            .id(),
            None
        );
    }
}
