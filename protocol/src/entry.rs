//! The stored entry: metadata and body, and its checksummed byte encoding.
//!
//! Layout (all integers little-endian):
//!
//! ```text
//! magic "FZE\x02" | version u64 | born_ms u64 | ttl_ms u64 | swr_ms u64 | sie_ms u64 | status u16
//! | headers: u16 count, (name u16-len, value u16-len)*
//! | tags: u16 count, (u16-len bytes)*
//! | depends_on: u16 count, (u16-len encoded InvalidationId)*
//! | body: u32-len bytes
//! | crc32 u32 over every byte before it
//! ```
//!
//! [`Entry::decode`] checks the crc before it parses anything, so a single flipped
//! byte anywhere (the crc included) is reported as corruption, never served.

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::{put_bytes16, put_bytes32, DecodeError, Reader};
use crate::hlc::Timestamp;
use crate::key::InvalidationId;

const MAGIC: &[u8; 4] = b"FZE\x02";
const CRC_LEN: usize = 4;

/// Everything about an entry except its body.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EntryMeta {
    /// HLC reading taken when the fill that produced this entry *started*.
    pub version: Timestamp,
    /// Wall-clock millisecond at which the content was new: its age is counted from
    /// here. For an HTTP response, the response time less its corrected initial age
    /// (RFC 9111 §4.2.3); for a KV value, the version's time.
    pub born_ms: u64,
    /// Freshness lifetime, counted from `born_ms`.
    pub ttl_ms: u64,
    /// How long after it goes stale the entry may still be served while it is refreshed.
    pub stale_while_revalidate_ms: u64,
    /// How long after it goes stale the entry may still be served when refreshing fails.
    pub stale_if_error_ms: u64,
    /// Response status (200 for KV values).
    pub status: u16,
    /// Response headers kept with the entry (for KV: the value's content type).
    pub headers: Vec<(Bytes, Bytes)>,
    /// Tags (surrogate keys) the entry carries.
    pub tags: Vec<Bytes>,
    /// Keys and tags this entry depends on: purging any of them invalidates it.
    pub depends_on: Vec<InvalidationId>,
}

impl EntryMeta {
    /// Wall-clock millisecond at which the entry stops being fresh.
    pub fn fresh_until_ms(&self) -> u64 {
        self.born_ms.saturating_add(self.ttl_ms)
    }

    /// Age at `now_ms` (RFC 9111 `current_age`), in milliseconds.
    pub fn age_ms(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.born_ms)
    }

    /// Wall-clock millisecond after which no stale window allows serving it.
    pub fn usable_until_ms(&self) -> u64 {
        self.fresh_until_ms()
            .saturating_add(self.stale_while_revalidate_ms.max(self.stale_if_error_ms))
    }

    /// Value of the first header named `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&Bytes> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }
}

/// A cache entry: metadata and a body that is shared, never copied, on the hit path.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Entry {
    /// Metadata.
    pub meta: EntryMeta,
    /// The body.
    pub body: Bytes,
}

impl Entry {
    /// Exact length of [`Entry::encode`]'s output.
    pub fn encoded_len(&self) -> usize {
        let m = &self.meta;
        MAGIC.len()
            + 8 * 5
            + 2
            + 2
            + m.headers
                .iter()
                .map(|(n, v)| 4 + n.len() + v.len())
                .sum::<usize>()
            + 2
            + m.tags.iter().map(|t| 2 + t.len()).sum::<usize>()
            + 2
            + m.depends_on
                .iter()
                .map(|d| 2 + d.encoded().len())
                .sum::<usize>()
            + 4
            + self.body.len()
            + CRC_LEN
    }

    /// Whether every field fits its length prefix, so [`Entry::encode`] cannot panic.
    /// Input from the network (an origin's headers, tags) must be checked with it
    /// before an entry is stored.
    pub fn fits_encoding(&self) -> bool {
        const U16: usize = u16::MAX as usize;
        let m = &self.meta;
        m.headers.len() <= U16
            && m.headers
                .iter()
                .all(|(n, v)| n.len() <= U16 && v.len() <= U16)
            && m.tags.len() <= U16
            && m.tags.iter().all(|t| t.len() <= U16)
            && m.depends_on.len() <= U16
            && m.depends_on.iter().all(|d| d.encoded().len() <= U16)
            && self.body.len() <= u32::MAX as usize
    }

    /// Encodes the entry, checksum last.
    ///
    /// # Panics
    /// If a field exceeds its length prefix (more than 65535 tags, headers or
    /// dependencies, a tag or header over 64 KiB, a body of 4 GiB). The node validates
    /// input against far smaller limits before it builds an entry.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.encoded_len());
        self.encode_into(&mut out);
        out.freeze()
    }

    /// Encodes into `out` (see [`Entry::encode`]).
    pub fn encode_into(&self, out: &mut BytesMut) {
        let start = out.len();
        self.put_fields(out);
        let crc = crc32fast::hash(&out[start..]);
        out.put_u32_le(crc);
    }

    /// Encodes into `out`, which is exactly [`Entry::encoded_len`] bytes long: a
    /// caller that owns the allocation writes the entry straight into it.
    ///
    /// # Panics
    /// As [`Entry::encode`], and if `out` is not [`Entry::encoded_len`] long.
    pub fn encode_to_slice(&self, out: &mut [u8]) {
        let covered = out.len().checked_sub(CRC_LEN).expect("room for the crc");
        let mut fields = &mut out[..covered];
        self.put_fields(&mut fields);
        assert!(fields.is_empty(), "the slice is the encoding's length");
        let crc = crc32fast::hash(&out[..covered]);
        out[covered..].copy_from_slice(&crc.to_le_bytes());
    }

    /// Everything the crc covers.
    fn put_fields(&self, out: &mut impl BufMut) {
        let m = &self.meta;
        out.put_slice(MAGIC);
        out.put_u64_le(m.version.as_u64());
        out.put_u64_le(m.born_ms);
        out.put_u64_le(m.ttl_ms);
        out.put_u64_le(m.stale_while_revalidate_ms);
        out.put_u64_le(m.stale_if_error_ms);
        out.put_u16_le(m.status);
        put_count(out, m.headers.len());
        for (name, value) in &m.headers {
            put_bytes16(out, name);
            put_bytes16(out, value);
        }
        put_count(out, m.tags.len());
        for tag in &m.tags {
            put_bytes16(out, tag);
        }
        put_count(out, m.depends_on.len());
        for dep in &m.depends_on {
            put_bytes16(out, dep.encoded());
        }
        put_bytes32(out, &self.body);
    }

    /// Decodes and verifies an encoded entry. The body is a zero-copy slice of `buf`.
    pub fn decode(buf: Bytes) -> Result<Entry, DecodeError> {
        if buf.len() < MAGIC.len() + CRC_LEN {
            return Err(DecodeError::Truncated {
                offset: buf.len(),
                needed: MAGIC.len() + CRC_LEN - buf.len(),
            });
        }
        let covered = buf.len() - CRC_LEN;
        let mut stored_bytes = [0u8; CRC_LEN];
        stored_bytes.copy_from_slice(&buf[covered..]);
        let stored = u32::from_le_bytes(stored_bytes);
        let computed = crc32fast::hash(&buf[..covered]);
        if stored != computed {
            return Err(DecodeError::Checksum { stored, computed });
        }
        Self::parse(buf.slice(..covered))
    }

    /// Decodes an encoding this process made and kept in memory, without checking
    /// its crc (a 64 KiB body would cost microseconds on every hit). Still
    /// bounds-checked: a malformed buffer is an error, never a panic.
    pub fn decode_unverified(buf: Bytes) -> Result<Entry, DecodeError> {
        match buf.len().checked_sub(CRC_LEN) {
            Some(covered) => Self::parse(buf.slice(..covered)),
            None => Err(DecodeError::Truncated {
                offset: buf.len(),
                needed: CRC_LEN - buf.len(),
            }),
        }
    }

    /// Parses the fields of an encoding whose crc has been dealt with.
    fn parse(fields: Bytes) -> Result<Entry, DecodeError> {
        let mut r = Reader::new(fields);
        if &r.take(MAGIC.len())?[..] != MAGIC {
            return Err(DecodeError::Format("not an entry (bad magic)"));
        }
        let version = Timestamp::from_u64(r.u64()?);
        let born_ms = r.u64()?;
        let ttl_ms = r.u64()?;
        let stale_while_revalidate_ms = r.u64()?;
        let stale_if_error_ms = r.u64()?;
        let status = r.u16()?;
        let headers = read_list(&mut r, |r| Ok((r.bytes16()?, r.bytes16()?)))?;
        let tags = read_list(&mut r, Reader::bytes16)?;
        let depends_on = read_list(&mut r, |r| {
            InvalidationId::from_encoded(r.bytes16()?)
                .ok_or(DecodeError::Format("invalid dependency id"))
        })?;
        let body = r.bytes32()?;
        r.finish()?;
        Ok(Entry {
            meta: EntryMeta {
                version,
                born_ms,
                ttl_ms,
                stale_while_revalidate_ms,
                stale_if_error_ms,
                status,
                headers,
                tags,
                depends_on,
            },
            body,
        })
    }
}

fn put_count(out: &mut impl BufMut, n: usize) {
    out.put_u16_le(u16::try_from(n).expect("caller enforces at most 65535 items per list"));
}

fn read_list<T>(
    r: &mut Reader,
    mut item: impl FnMut(&mut Reader) -> Result<T, DecodeError>,
) -> Result<Vec<T>, DecodeError> {
    let n = r.u16()? as usize;
    // Each item takes at least two bytes: never reserve more than the input can hold.
    let mut out = Vec::with_capacity(n.min(r.remaining() / 2));
    for _ in 0..n {
        out.push(item(r)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::CacheKey;
    use proptest::prelude::*;

    fn arb_bytes(max: usize) -> impl Strategy<Value = Bytes> {
        proptest::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
    }

    fn arb_id() -> impl Strategy<Value = InvalidationId> {
        (any::<bool>(), proptest::collection::vec(any::<u8>(), 0..20)).prop_map(|(is_key, b)| {
            if is_key {
                InvalidationId::key(&CacheKey::kv(&b))
            } else {
                InvalidationId::tag(&b)
            }
        })
    }

    prop_compose! {
        fn arb_entry()(
            version in any::<u64>(),
            born_ms in any::<u64>(),
            ttl_ms in any::<u64>(),
            swr in any::<u64>(),
            sie in any::<u64>(),
            status in any::<u16>(),
            headers in proptest::collection::vec((arb_bytes(16), arb_bytes(40)), 0..4),
            tags in proptest::collection::vec(arb_bytes(24), 0..6),
            depends_on in proptest::collection::vec(arb_id(), 0..4),
            body in arb_bytes(300),
        ) -> Entry {
            Entry {
                meta: EntryMeta {
                    version: Timestamp::from_u64(version),
                    born_ms,
                    ttl_ms,
                    stale_while_revalidate_ms: swr,
                    stale_if_error_ms: sie,
                    status,
                    headers,
                    tags,
                    depends_on,
                },
                body,
            }
        }
    }

    proptest! {
        #[test]
        fn round_trip(entry in arb_entry()) {
            let encoded = entry.encode();
            prop_assert_eq!(encoded.len(), entry.encoded_len());
            let mut in_place = vec![0u8; entry.encoded_len()];
            entry.encode_to_slice(&mut in_place);
            prop_assert_eq!(&in_place[..], &encoded[..]);
            prop_assert_eq!(Entry::decode_unverified(encoded.clone()).unwrap(), entry.clone());
            prop_assert_eq!(Entry::decode(encoded).unwrap(), entry);
        }

        /// Every single-byte corruption, anywhere in the encoding, is detected.
        #[test]
        fn every_single_byte_corruption_is_detected(entry in arb_entry(), flip in 1u8..=255) {
            let encoded = entry.encode();
            for i in 0..encoded.len() {
                let mut bad = encoded.to_vec();
                bad[i] ^= flip;
                prop_assert!(Entry::decode(Bytes::from(bad)).is_err(), "corruption at byte {} not detected", i);
            }
        }

        /// Truncated input is an error, never a panic.
        #[test]
        fn truncation_is_an_error(entry in arb_entry(), cut in any::<prop::sample::Index>()) {
            let encoded = entry.encode();
            let at = cut.index(encoded.len());
            prop_assert!(Entry::decode(encoded.slice(..at)).is_err());
        }

        /// Arbitrary bytes never panic the decoder.
        #[test]
        fn garbage_never_panics(bytes in arb_bytes(200)) {
            let _ = Entry::decode(bytes.clone());
            let _ = Entry::decode_unverified(bytes);
        }

        /// Without the crc check, truncation is still an error, never a panic.
        #[test]
        fn unverified_truncation_is_an_error(entry in arb_entry(), cut in any::<prop::sample::Index>()) {
            let encoded = entry.encode();
            let at = cut.index(encoded.len());
            prop_assert!(Entry::decode_unverified(encoded.slice(..at)).is_err());
        }
    }

    #[test]
    fn oversized_fields_are_caught_before_encoding() {
        let ok = Entry {
            meta: EntryMeta {
                tags: vec![Bytes::from(vec![b't'; 65_535])],
                ..EntryMeta::default()
            },
            body: Bytes::new(),
        };
        assert!(ok.fits_encoding());
        let long_header = Entry {
            meta: EntryMeta {
                headers: vec![(Bytes::from_static(b"x"), Bytes::from(vec![b'v'; 65_536]))],
                ..EntryMeta::default()
            },
            body: Bytes::new(),
        };
        assert!(!long_header.fits_encoding());
        let many_tags = Entry {
            meta: EntryMeta {
                tags: vec![Bytes::from_static(b"t"); 65_536],
                ..EntryMeta::default()
            },
            body: Bytes::new(),
        };
        assert!(!many_tags.fits_encoding());
        let long_dep = Entry {
            meta: EntryMeta {
                depends_on: vec![InvalidationId::key(&CacheKey::kv(&vec![b'k'; 65_534]))],
                ..EntryMeta::default()
            },
            body: Bytes::new(),
        };
        assert!(!long_dep.fits_encoding());
    }

    #[test]
    fn a_valid_checksum_over_a_bad_structure_is_still_rejected() {
        let mut buf = BytesMut::new();
        buf.put_slice(MAGIC);
        buf.put_u64_le(1);
        let crc = crc32fast::hash(&buf);
        buf.put_u32_le(crc);
        assert!(matches!(
            Entry::decode(buf.freeze()),
            Err(DecodeError::Truncated { .. })
        ));
    }
}
