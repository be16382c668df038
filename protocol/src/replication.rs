//! Invalidations replicated across the cluster: what one node tells every other so
//! that a purge, an overwrite or a new dependency edge made anywhere holds everywhere.
//!
//! Each [`Replicated`] record is named by its origin (a node id and the node's
//! generation, so a restarted node starts a new sequence) and a sequence number
//! within it. Receivers apply a record once; the names let anti-entropy ask a peer
//! for exactly the records it has not applied.
//!
//! Purges travel as their *targets*, not as tombstones: each node walks its own copy
//! of the dependency index and stamps tombstones with its own clock, late enough to
//! cover every fill it had started before the purge reached it.

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::{put_bytes16, put_bytes32, DecodeError, Reader};
use crate::hlc::Timestamp;
use crate::key::CacheKey;
use crate::log::{decode_frames, Record};

/// What a replicated record asks every node to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Purge these targets (and, through each node's dependency index, their
    /// dependents).
    Purge {
        /// Keys.
        keys: Vec<CacheKey>,
        /// Tags.
        tags: Vec<Bytes>,
        /// Key prefixes.
        prefixes: Vec<CacheKey>,
        /// Stale rather than gone.
        soft: bool,
    },
    /// `key` got a new value, of `version`: invalidate what depends on it, and drop
    /// older copies of the key (an owner that missed the write must not serve its
    /// old value; it reads the new one from the other owners instead).
    Overwrite {
        /// The key overwritten.
        key: CacheKey,
        /// The new value's version.
        version: Timestamp,
    },
    /// Dependency edges recorded on the origin node (`Record::Edge` only).
    Edges {
        /// The edges.
        edges: Vec<Record>,
    },
}

/// One replicated invalidation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replicated {
    /// `node_id@generation` of the node that made it.
    pub origin: String,
    /// Position in the origin's sequence, from 1.
    pub seq: u64,
    /// The origin's clock when it made it (receivers observe it).
    pub at: Timestamp,
    /// What to do.
    pub op: Op,
}

const PURGE: u8 = 1;
const OVERWRITE: u8 = 2;
const EDGES: u8 = 3;

impl Replicated {
    /// The record as bytes.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::new();
        put_bytes16(&mut out, self.origin.as_bytes());
        out.put_u64_le(self.seq);
        out.put_u64_le(self.at.as_u64());
        match &self.op {
            Op::Purge {
                keys,
                tags,
                prefixes,
                soft,
            } => {
                out.put_u8(PURGE);
                out.put_u8(u8::from(*soft));
                for list in [keys, prefixes] {
                    out.put_u32_le(list.len() as u32);
                    for k in list {
                        put_bytes16(&mut out, k.encoded());
                    }
                }
                out.put_u32_le(tags.len() as u32);
                for t in tags {
                    put_bytes16(&mut out, t);
                }
            }
            Op::Overwrite { key, version } => {
                out.put_u8(OVERWRITE);
                put_bytes16(&mut out, key.encoded());
                out.put_u64_le(version.as_u64());
            }
            Op::Edges { edges } => {
                out.put_u8(EDGES);
                let mut frames = BytesMut::new();
                for e in edges {
                    e.encode_frame(&mut frames);
                }
                put_bytes32(&mut out, &frames);
            }
        }
        out.freeze()
    }

    /// Decodes a record; never panics, whatever the bytes.
    pub fn decode(buf: Bytes) -> Result<Replicated, DecodeError> {
        let mut r = Reader::new(buf);
        let origin = String::from_utf8(r.bytes16()?.to_vec())
            .map_err(|_| DecodeError::Format("origin is not UTF-8"))?;
        let seq = r.u64()?;
        let at = Timestamp::from_u64(r.u64()?);
        let key = |r: &mut Reader| {
            CacheKey::from_encoded(r.bytes16()?).ok_or(DecodeError::Format("cache key"))
        };
        let count = |r: &mut Reader| -> Result<usize, DecodeError> {
            let n = r.u32()? as usize;
            // Each item takes at least two bytes: a larger count is a lie.
            if n * 2 > r.remaining() {
                return Err(DecodeError::Format("count exceeds the record"));
            }
            Ok(n)
        };
        let op = match r.u8()? {
            PURGE => {
                let soft = r.u8()? != 0;
                let mut keys = Vec::new();
                for _ in 0..count(&mut r)? {
                    keys.push(key(&mut r)?);
                }
                let mut prefixes = Vec::new();
                for _ in 0..count(&mut r)? {
                    prefixes.push(key(&mut r)?);
                }
                let mut tags = Vec::new();
                for _ in 0..count(&mut r)? {
                    tags.push(r.bytes16()?);
                }
                Op::Purge {
                    keys,
                    tags,
                    prefixes,
                    soft,
                }
            }
            OVERWRITE => Op::Overwrite {
                key: key(&mut r)?,
                version: Timestamp::from_u64(r.u64()?),
            },
            EDGES => {
                let frames = r.bytes32()?;
                let total = frames.len();
                let replay = decode_frames(frames);
                if replay.valid_len != total {
                    return Err(DecodeError::Format("damaged edge records"));
                }
                if replay
                    .records
                    .iter()
                    .any(|e| !matches!(e, Record::Edge { .. }))
                {
                    return Err(DecodeError::Format("only edges replicate as edges"));
                }
                Op::Edges {
                    edges: replay.records,
                }
            }
            _ => return Err(DecodeError::Format("replicated op")),
        };
        r.finish()?;
        Ok(Replicated {
            origin,
            seq,
            at,
            op,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::InvalidationId;
    use proptest::prelude::*;

    fn op() -> impl Strategy<Value = Op> {
        let key = proptest::collection::vec(any::<u8>(), 0..40).prop_map(|k| CacheKey::kv(&k));
        let keys = proptest::collection::vec(key.clone(), 0..5);
        let tags = proptest::collection::vec(
            proptest::collection::vec(any::<u8>(), 0..20).prop_map(Bytes::from),
            0..5,
        );
        prop_oneof![
            (keys.clone(), tags.clone(), keys, any::<bool>()).prop_map(
                |(keys, tags, prefixes, soft)| Op::Purge {
                    keys,
                    tags,
                    prefixes,
                    soft
                }
            ),
            (key.clone(), any::<u64>()).prop_map(|(key, v)| Op::Overwrite {
                key,
                version: Timestamp::from_u64(v)
            }),
            proptest::collection::vec((key.clone(), key, any::<u64>()), 0..5).prop_map(|e| {
                Op::Edges {
                    edges: e
                        .into_iter()
                        .map(|(from, dependent, expires_ms)| Record::Edge {
                            from: InvalidationId::key(&from),
                            dependent,
                            expires_ms,
                        })
                        .collect(),
                }
            }),
        ]
    }

    proptest! {
        #[test]
        fn records_round_trip(origin in "[a-z0-9@-]{1,30}", seq in any::<u64>(), at in any::<u64>(), op in op()) {
            let r = Replicated { origin, seq, at: Timestamp::from_u64(at), op };
            prop_assert_eq!(Replicated::decode(r.encode()).unwrap(), r);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Replicated::decode(Bytes::from(bytes));
        }

        #[test]
        fn truncation_is_an_error(op in op(), cut in any::<proptest::sample::Index>()) {
            let whole = Replicated { origin: "n1@1".into(), seq: 1, at: Timestamp::from_u64(1), op }.encode();
            let cut = cut.index(whole.len());
            prop_assert!(Replicated::decode(whole.slice(..cut)).is_err());
        }
    }
}
