//! Records of the invalidation log and their framing.
//!
//! The node appends records to a file and replays them on start. Each record is
//! framed as `len u32 | crc32 u32 | payload`, so a reader can tell a whole record
//! from one cut off by a crash: [`decode_frames`] returns every whole record up to the
//! first damaged or partial one and the length of that valid prefix, which is where
//! the file is truncated before appending again.

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::{put_bytes16, put_bytes32, DecodeError, Reader};
use crate::hlc::Timestamp;
use crate::key::{CacheKey, InvalidationId};

/// Largest payload a frame may declare; anything larger is damage, not a record.
pub const MAX_RECORD_LEN: usize = 1 << 20;
const FRAME_HEADER_LEN: usize = 8;

/// One fact of the invalidation state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// Every version of `id` older than `at` is invalid (hard) or stale (soft).
    Tombstone {
        /// The key or tag purged.
        id: InvalidationId,
        /// Versions before this are covered.
        at: Timestamp,
        /// Soft purge: stale rather than gone.
        soft: bool,
    },
    /// Every version of every key starting with `prefix` older than `at` is covered.
    PrefixTombstone {
        /// Key prefix, namespaced.
        prefix: CacheKey,
        /// Versions before this are covered.
        at: Timestamp,
        /// Soft purge: stale rather than gone.
        soft: bool,
    },
    /// `dependent` must be invalidated when `from` is; the edge lapses at `expires_ms`
    /// (wall clock), when the dependent entry can no longer be served anyway.
    Edge {
        /// The key or tag depended upon.
        from: InvalidationId,
        /// The key that depends on it.
        dependent: CacheKey,
        /// Wall-clock millisecond after which the edge can be dropped.
        expires_ms: u64,
    },
    /// A cluster record (an encoded `replication::Replicated`) this node applied or
    /// made, kept so it can hand it to a peer that missed it, after a restart too.
    /// It changes no local state when replayed.
    Kept {
        /// The encoded record.
        record: Bytes,
    },
}

const TOMBSTONE: u8 = 1;
const PREFIX_TOMBSTONE: u8 = 2;
const EDGE: u8 = 3;
const KEPT: u8 = 4;

impl Record {
    fn encode_payload(&self, out: &mut BytesMut) {
        match self {
            Record::Tombstone { id, at, soft } => {
                out.put_u8(TOMBSTONE);
                put_bytes16(out, id.encoded());
                out.put_u64_le(at.as_u64());
                out.put_u8(u8::from(*soft));
            }
            Record::PrefixTombstone { prefix, at, soft } => {
                out.put_u8(PREFIX_TOMBSTONE);
                put_bytes32(out, prefix.encoded());
                out.put_u64_le(at.as_u64());
                out.put_u8(u8::from(*soft));
            }
            Record::Edge {
                from,
                dependent,
                expires_ms,
            } => {
                out.put_u8(EDGE);
                put_bytes16(out, from.encoded());
                put_bytes16(out, dependent.encoded());
                out.put_u64_le(*expires_ms);
            }
            Record::Kept { record } => {
                out.put_u8(KEPT);
                put_bytes32(out, record);
            }
        }
    }

    /// Whether the record fits a log frame ([`MAX_RECORD_LEN`]); only a kept
    /// cluster record can be too large.
    pub fn fits(&self) -> bool {
        match self {
            Record::Kept { record } => record.len() + 5 <= MAX_RECORD_LEN,
            _ => true,
        }
    }

    fn decode_payload(payload: Bytes) -> Result<Record, DecodeError> {
        let mut r = Reader::new(payload);
        let record = match r.u8()? {
            TOMBSTONE => Record::Tombstone {
                id: read_id(&mut r)?,
                at: Timestamp::from_u64(r.u64()?),
                soft: read_bool(&mut r)?,
            },
            PREFIX_TOMBSTONE => Record::PrefixTombstone {
                prefix: CacheKey::from_encoded(r.bytes32()?)
                    .ok_or(DecodeError::Format("invalid prefix key"))?,
                at: Timestamp::from_u64(r.u64()?),
                soft: read_bool(&mut r)?,
            },
            EDGE => Record::Edge {
                from: read_id(&mut r)?,
                dependent: CacheKey::from_encoded(r.bytes16()?)
                    .ok_or(DecodeError::Format("invalid dependent key"))?,
                expires_ms: r.u64()?,
            },
            KEPT => Record::Kept {
                record: r.bytes32()?,
            },
            _ => return Err(DecodeError::Format("unknown record type")),
        };
        r.finish()?;
        Ok(record)
    }

    /// Appends this record, framed, to `out`.
    pub fn encode_frame(&self, out: &mut BytesMut) {
        let start = out.len();
        out.put_u64_le(0); // room for len + crc, filled in below
        self.encode_payload(out);
        let payload = &out[start + FRAME_HEADER_LEN..];
        let len = u32::try_from(payload.len()).expect("record payloads are bounded by key limits");
        let crc = crc32fast::hash(payload);
        out[start..start + 4].copy_from_slice(&len.to_le_bytes());
        out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    }
}

fn read_id(r: &mut Reader) -> Result<InvalidationId, DecodeError> {
    InvalidationId::from_encoded(r.bytes16()?).ok_or(DecodeError::Format("invalid id"))
}

fn read_bool(r: &mut Reader) -> Result<bool, DecodeError> {
    match r.u8()? {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(DecodeError::Format("invalid flag")),
    }
}

/// What a log file holds.
#[derive(Debug, Default)]
pub struct Replay {
    /// Every whole record, in order.
    pub records: Vec<Record>,
    /// Length of the prefix of the input made of whole, valid records.
    pub valid_len: usize,
    /// Why reading stopped before the end of the input, if it did.
    pub damage: Option<DecodeError>,
}

/// Decodes framed records until the input ends or a frame is partial or damaged.
pub fn decode_frames(buf: Bytes) -> Replay {
    let mut replay = Replay::default();
    let mut r = Reader::new(buf);
    while r.remaining() > 0 {
        match read_frame(&mut r) {
            Ok(record) => {
                replay.records.push(record);
                replay.valid_len = r.position();
            }
            Err(e) => {
                replay.damage = Some(e);
                break;
            }
        }
    }
    replay
}

fn read_frame(r: &mut Reader) -> Result<Record, DecodeError> {
    let len = r.u32()? as usize;
    let stored = r.u32()?;
    if len > MAX_RECORD_LEN {
        return Err(DecodeError::Format("record length over the limit"));
    }
    let payload = r.take(len)?;
    let computed = crc32fast::hash(&payload);
    if computed != stored {
        return Err(DecodeError::Checksum { stored, computed });
    }
    Record::decode_payload(payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_record() -> impl Strategy<Value = Record> {
        let bytes = || proptest::collection::vec(any::<u8>(), 0..24);
        prop_oneof![
            (bytes(), any::<u64>(), any::<bool>(), any::<bool>()).prop_map(|(b, at, soft, tag)| {
                Record::Tombstone {
                    id: if tag {
                        InvalidationId::tag(&b)
                    } else {
                        InvalidationId::key(&CacheKey::kv(&b))
                    },
                    at: Timestamp::from_u64(at),
                    soft,
                }
            }),
            (bytes(), any::<u64>(), any::<bool>()).prop_map(|(b, at, soft)| {
                Record::PrefixTombstone {
                    prefix: CacheKey::kv(&b),
                    at: Timestamp::from_u64(at),
                    soft,
                }
            }),
            (bytes(), bytes(), any::<u64>()).prop_map(|(a, b, expires_ms)| Record::Edge {
                from: InvalidationId::tag(&a),
                dependent: CacheKey::kv(&b),
                expires_ms,
            }),
            bytes().prop_map(|b| Record::Kept {
                record: Bytes::from(b),
            }),
        ]
    }

    fn encode_all(records: &[Record]) -> (Bytes, Vec<usize>) {
        let mut out = BytesMut::new();
        let mut ends = Vec::new();
        for record in records {
            record.encode_frame(&mut out);
            ends.push(out.len());
        }
        (out.freeze(), ends)
    }

    proptest! {
        #[test]
        fn round_trip(records in proptest::collection::vec(arb_record(), 0..20)) {
            let (buf, _) = encode_all(&records);
            let replay = decode_frames(buf.clone());
            prop_assert_eq!(replay.records, records);
            prop_assert_eq!(replay.valid_len, buf.len());
            prop_assert!(replay.damage.is_none());
        }

        /// A crash can cut the file anywhere: every whole record before the cut survives,
        /// and the valid length ends exactly at the last whole record.
        #[test]
        fn a_cut_keeps_every_whole_record(
            records in proptest::collection::vec(arb_record(), 1..20),
            cut in any::<prop::sample::Index>(),
        ) {
            let (buf, ends) = encode_all(&records);
            let at = cut.index(buf.len());
            let whole = ends.iter().filter(|&&end| end <= at).count();
            let replay = decode_frames(buf.slice(..at));
            prop_assert_eq!(&replay.records[..], &records[..whole]);
            prop_assert_eq!(replay.valid_len, if whole == 0 { 0 } else { ends[whole - 1] });
        }

        /// A flipped byte stops the replay at the damaged record; the records before it stay.
        #[test]
        fn a_flipped_byte_stops_at_the_damaged_record(
            records in proptest::collection::vec(arb_record(), 1..10),
            pos in any::<prop::sample::Index>(),
            flip in 1u8..=255,
        ) {
            let (buf, ends) = encode_all(&records);
            let at = pos.index(buf.len());
            let mut bad = buf.to_vec();
            bad[at] ^= flip;
            let damaged = ends.iter().position(|&end| at < end).unwrap();
            let replay = decode_frames(Bytes::from(bad));
            prop_assert_eq!(&replay.records[..damaged], &records[..damaged]);
            prop_assert!(replay.records.len() == damaged);
            prop_assert!(replay.damage.is_some());
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode_frames(Bytes::from(bytes));
        }
    }
}
