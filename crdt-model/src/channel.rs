//! The channel document: which buckets hold the channel's messages.
//!
//! Root keys: `kind` = "channel", `workspace`, `channel`, and `buckets` (bucket key → true).
//! The first change is deterministic (see [`deterministic_init`]), so a DM channel whose id
//! both people derive alone converges when both open it offline.

use std::fmt;
use std::str::FromStr;

use automerge::transaction::Transactable;
use automerge::{ActorId, Automerge, ObjType, ROOT, ReadDoc};

use crate::ids::DocId;
use crate::{ModelError, commit, get_map, get_str};

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
