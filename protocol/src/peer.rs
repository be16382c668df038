//! The peer protocol: the messages nodes (and the client library) exchange over
//! QUIC streams, and their framing.
//!
//! A connection starts with a [`Message::Hello`] each way on its first stream, which
//! fixes the protocol version; after that every request gets its own stream: one
//! request frame, then one response frame (or an [`Message::Error`]).
//!
//! Frame: `len: u32 | crc32(body): u32 | body`, little-endian, where body is a kind
//! byte and the message's fields. The length is checked against the reader's limit
//! before anything is buffered, and the checksum before anything is parsed; entry
//! bodies are returned as slices of the received buffer (no copy).

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::codec::{put_bytes16, put_bytes32, DecodeError, Reader};
use crate::key::CacheKey;

/// The version this build speaks. Version 2 added [`Message::Unvouched`], version 3
/// the [`Contacts`] of [`Message::Applied`]; each is sent only to peers that agreed
/// on that version or later.
pub const VERSION: u16 = 3;
/// The oldest version this build still accepts.
pub const MIN_VERSION: u16 = 1;
/// The first version that may be sent [`Message::Unvouched`].
pub const UNVOUCHED_SINCE: u16 = 2;
/// The first version whose [`Message::Applied`] may carry [`Contacts`].
pub const CONTACTS_SINCE: u16 = 3;
/// Bytes before a frame's body: length and checksum.
pub const FRAME_HEADER: usize = 8;

/// Why a frame was refused. Any of these ends the stream it arrived on (and is
/// counted); the connection and its other streams carry on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The announced length is over the reader's limit.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    Oversized {
        /// Announced body length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The body does not match its checksum.
    #[error("frame checksum mismatch")]
    Checksum,
    /// The kind byte names no message of this version.
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    /// The body is not a well-formed message.
    #[error("malformed message: {0}")]
    Malformed(#[from] DecodeError),
}

/// Error codes carried by [`Message::Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    /// The peer speaks no version this node accepts.
    Version = 1,
    /// The request was malformed or not allowed.
    BadRequest = 2,
    /// The node could not serve it now (overloaded, shutting down, origin failed).
    Unavailable = 3,
    /// An internal error.
    Internal = 4,
}

impl ErrorCode {
    fn from_u16(v: u16) -> Option<Self> {
        Some(match v {
            1 => Self::Version,
            2 => Self::BadRequest,
            3 => Self::Unavailable,
            4 => Self::Internal,
            _ => return None,
        })
    }
}

/// One message of the peer protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// First frame each way on a connection.
    Hello {
        /// The sender's protocol version.
        version: u16,
        /// The sender's node id (empty for a client library).
        node_id: String,
    },
    /// Request: the entry under `key`, if the receiver has a usable one.
    Get {
        /// The key.
        key: CacheKey,
    },
    /// Request: store `entry` (an encoded [`crate::Entry`]) under `key`.
    Put {
        /// The key.
        key: CacheKey,
        /// The encoded entry, checksummed by its own format.
        entry: Bytes,
    },
    /// Request: delete `key`.
    Delete {
        /// The key.
        key: CacheKey,
    },
    /// Request: answer an HTTP request for a URL this node owns, as its proxy would
    /// (from its tiers, or from the origin with concurrent fetches collapsed). The
    /// answer is a [`Message::Head`], any number of [`Message::Data`], then
    /// [`Message::End`].
    Fetch {
        /// Request method.
        method: String,
        /// Absolute request URL (`scheme://host/path?query`).
        url: String,
        /// Request headers, in order.
        headers: Vec<(Bytes, Bytes)>,
    },
    /// Response to [`Message::Fetch`]: the status and headers.
    Head {
        /// HTTP status.
        status: u16,
        /// Response headers, in order.
        headers: Vec<(Bytes, Bytes)>,
    },
    /// Response to [`Message::Fetch`]: the next body bytes.
    Data {
        /// The bytes.
        bytes: Bytes,
    },
    /// Response to [`Message::Fetch`]: the body is complete.
    End,
    /// Request: apply a replicated invalidation (an encoded
    /// [`crate::replication::Replicated`]). Answered by [`Message::Applied`].
    Replicate {
        /// The encoded record.
        record: Bytes,
    },
    /// Response to [`Message::Replicate`]: applied (durably), with how many
    /// dependent keys it invalidated on the answering node.
    Applied {
        /// Dependents invalidated there.
        invalidated: u64,
        /// When each member last sent the answering node a request, as of the
        /// answer (since version 3; `None` from older peers).
        contacts: Option<Contacts>,
    },
    /// Request (anti-entropy): the replicated records the asker has not applied,
    /// given the highest sequence it has applied without a gap, per origin.
    Pull {
        /// (origin, highest contiguous sequence applied).
        since: Vec<(String, u64)>,
    },
    /// Response to [`Message::Pull`].
    Records {
        /// Encoded records, oldest first per origin.
        records: Vec<Bytes>,
        /// Some records the asker lacks are no longer kept here: it must treat
        /// everything it cached before now as invalid.
        gap: bool,
    },
    /// Response: the entry asked for, encoded.
    Found {
        /// The encoded entry.
        entry: Bytes,
    },
    /// Response: no usable entry.
    NotFound,
    /// Response to [`Message::Get`] from a node that cannot vouch for what it holds
    /// (it is catching up with the cluster): its copy, if it has one, which a purge
    /// it has not applied yet may cover; `None` says only that it holds none (it may
    /// have missed writes). Since version 2.
    Unvouched {
        /// The encoded entry it holds, if any.
        entry: Option<Bytes>,
    },
    /// Response: the request was carried out.
    Done,
    /// Response: the request failed.
    Error {
        /// What kind of failure.
        code: ErrorCode,
        /// For people.
        message: String,
    },
}

/// What a node that applied a record tells the sender about the other members'
/// requests to it, as of its answer: the sender uses it to bound the leases those
/// members may still hold without the record (`cluster::safety`). Ages, not
/// timestamps, so the two nodes' clocks need not agree.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Contacts {
    /// How long the answering node's peer listener has been up, ms: a member not
    /// listed has sent it no request for at least that long.
    pub uptime_ms: u64,
    /// (member id, ms since its last request).
    pub ages_ms: Vec<(String, u64)>,
}

const HELLO: u8 = 1;
const GET: u8 = 2;
const PUT: u8 = 3;
const DELETE: u8 = 4;
const FETCH: u8 = 5;
const REPLICATE: u8 = 6;
const PULL: u8 = 7;
const FOUND: u8 = 16;
const NOT_FOUND: u8 = 17;
const DONE: u8 = 18;
const ERROR: u8 = 19;
const HEAD: u8 = 20;
const DATA: u8 = 21;
const END: u8 = 22;
const APPLIED: u8 = 23;
const RECORDS: u8 = 24;
const UNVOUCHED: u8 = 25;

impl Message {
    /// Appends this message as one frame to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        let start = out.len();
        out.put_u32_le(0);
        out.put_u32_le(0);
        match self {
            Message::Hello { version, node_id } => {
                out.put_u8(HELLO);
                out.put_u16_le(*version);
                put_bytes16(out, node_id.as_bytes());
            }
            Message::Get { key } => {
                out.put_u8(GET);
                put_bytes16(out, key.encoded());
            }
            Message::Put { key, entry } => {
                out.put_u8(PUT);
                put_bytes16(out, key.encoded());
                put_bytes32(out, entry);
            }
            Message::Delete { key } => {
                out.put_u8(DELETE);
                put_bytes16(out, key.encoded());
            }
            Message::Fetch {
                method,
                url,
                headers,
            } => {
                out.put_u8(FETCH);
                put_bytes16(out, method.as_bytes());
                put_bytes16(out, url.as_bytes());
                put_headers(out, headers);
            }
            Message::Head { status, headers } => {
                out.put_u8(HEAD);
                out.put_u16_le(*status);
                put_headers(out, headers);
            }
            Message::Data { bytes } => {
                out.put_u8(DATA);
                put_bytes32(out, bytes);
            }
            Message::End => out.put_u8(END),
            Message::Replicate { record } => {
                out.put_u8(REPLICATE);
                put_bytes32(out, record);
            }
            Message::Applied {
                invalidated,
                contacts,
            } => {
                out.put_u8(APPLIED);
                out.put_u64_le(*invalidated);
                // Older peers read no further: only sent to version 3 or later.
                if let Some(c) = contacts {
                    out.put_u64_le(c.uptime_ms);
                    out.put_u16_le(u16::try_from(c.ages_ms.len()).unwrap_or(u16::MAX));
                    for (member, age) in c.ages_ms.iter().take(usize::from(u16::MAX)) {
                        put_bytes16(out, member.as_bytes());
                        out.put_u64_le(*age);
                    }
                }
            }
            Message::Pull { since } => {
                out.put_u8(PULL);
                out.put_u32_le(since.len() as u32);
                for (origin, seq) in since {
                    put_bytes16(out, origin.as_bytes());
                    out.put_u64_le(*seq);
                }
            }
            Message::Records { records, gap } => {
                out.put_u8(RECORDS);
                out.put_u8(u8::from(*gap));
                out.put_u32_le(records.len() as u32);
                for r in records {
                    put_bytes32(out, r);
                }
            }
            Message::Found { entry } => {
                out.put_u8(FOUND);
                put_bytes32(out, entry);
            }
            Message::NotFound => out.put_u8(NOT_FOUND),
            Message::Unvouched { entry } => {
                out.put_u8(UNVOUCHED);
                out.put_u8(u8::from(entry.is_some()));
                if let Some(entry) = entry {
                    put_bytes32(out, entry);
                }
            }
            Message::Done => out.put_u8(DONE),
            Message::Error { code, message } => {
                out.put_u8(ERROR);
                out.put_u16_le(*code as u16);
                // Messages are for people; a long one is cut, not refused.
                let cut = floor_char_boundary(message, u16::MAX as usize);
                put_bytes16(out, &message.as_bytes()[..cut]);
            }
        }
        let body_len = out.len() - start - FRAME_HEADER;
        let crc = crc32fast::hash(&out[start + FRAME_HEADER..]);
        out[start..start + 4].copy_from_slice(&(body_len as u32).to_le_bytes());
        out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    }

    /// The whole frame as one buffer.
    pub fn to_frame(&self) -> Bytes {
        let mut out = BytesMut::new();
        self.encode(&mut out);
        out.freeze()
    }

    /// Takes one frame off the front of `buf` if a whole one is there. `Ok(None)`
    /// means more bytes are needed; a frame announcing more than `max_body` bytes is
    /// refused before it is buffered.
    pub fn decode(buf: &mut BytesMut, max_body: usize) -> Result<Option<Message>, FrameError> {
        let Some(len) = Self::announced_len(buf, max_body)? else {
            return Ok(None);
        };
        if buf.len() < FRAME_HEADER + len {
            return Ok(None);
        }
        let mut frame = buf.split_to(FRAME_HEADER + len);
        frame.advance(4);
        let crc = frame.get_u32_le();
        let body = frame.freeze();
        if crc32fast::hash(&body) != crc {
            return Err(FrameError::Checksum);
        }
        Self::parse(body).map(Some)
    }

    /// The body length the frame at the front of `buf` announces, once its header
    /// has arrived, checked against `max_body`.
    pub fn announced_len(buf: &[u8], max_body: usize) -> Result<Option<usize>, FrameError> {
        if buf.len() < FRAME_HEADER {
            return Ok(None);
        }
        let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len > max_body {
            return Err(FrameError::Oversized { len, max: max_body });
        }
        Ok(Some(len))
    }

    fn parse(body: Bytes) -> Result<Message, FrameError> {
        let mut r = Reader::new(body);
        let key = |r: &mut Reader| {
            CacheKey::from_encoded(r.bytes16()?).ok_or(DecodeError::Format("cache key"))
        };
        let message = match r.u8()? {
            HELLO => Message::Hello {
                version: r.u16()?,
                node_id: utf8(r.bytes16()?)?,
            },
            GET => Message::Get { key: key(&mut r)? },
            PUT => Message::Put {
                key: key(&mut r)?,
                entry: r.bytes32()?,
            },
            DELETE => Message::Delete { key: key(&mut r)? },
            FETCH => Message::Fetch {
                method: utf8(r.bytes16()?)?,
                url: utf8(r.bytes16()?)?,
                headers: headers(&mut r)?,
            },
            HEAD => Message::Head {
                status: r.u16()?,
                headers: headers(&mut r)?,
            },
            DATA => Message::Data {
                bytes: r.bytes32()?,
            },
            END => Message::End,
            REPLICATE => Message::Replicate {
                record: r.bytes32()?,
            },
            APPLIED => Message::Applied {
                invalidated: r.u64()?,
                contacts: if r.remaining() == 0 {
                    None
                } else {
                    let uptime_ms = r.u64()?;
                    let n = usize::from(r.u16()?);
                    if n * 10 > r.remaining() {
                        return Err(DecodeError::Format("count exceeds the frame").into());
                    }
                    let mut ages_ms = Vec::with_capacity(n);
                    for _ in 0..n {
                        ages_ms.push((utf8(r.bytes16()?)?, r.u64()?));
                    }
                    Some(Contacts { uptime_ms, ages_ms })
                },
            },
            PULL => {
                let n = r.u32()? as usize;
                if n * 10 > r.remaining() {
                    return Err(DecodeError::Format("count exceeds the frame").into());
                }
                let mut since = Vec::with_capacity(n);
                for _ in 0..n {
                    since.push((utf8(r.bytes16()?)?, r.u64()?));
                }
                Message::Pull { since }
            }
            RECORDS => {
                let gap = r.u8()? != 0;
                let n = r.u32()? as usize;
                if n * 4 > r.remaining() {
                    return Err(DecodeError::Format("count exceeds the frame").into());
                }
                let mut records = Vec::with_capacity(n);
                for _ in 0..n {
                    records.push(r.bytes32()?);
                }
                Message::Records { records, gap }
            }
            FOUND => Message::Found {
                entry: r.bytes32()?,
            },
            NOT_FOUND => Message::NotFound,
            UNVOUCHED => Message::Unvouched {
                entry: match r.u8()? {
                    0 => None,
                    1 => Some(r.bytes32()?),
                    _ => return Err(DecodeError::Format("unvouched flag").into()),
                },
            },
            DONE => Message::Done,
            ERROR => Message::Error {
                code: ErrorCode::from_u16(r.u16()?).ok_or(DecodeError::Format("error code"))?,
                message: utf8(r.bytes16()?)?,
            },
            other => return Err(FrameError::UnknownKind(other)),
        };
        r.finish()?;
        Ok(message)
    }
}

/// Headers as a u16 count of (name, value) pairs. The caller keeps a header section
/// within the count (the node's header limits are far below it).
fn put_headers(out: &mut BytesMut, headers: &[(Bytes, Bytes)]) {
    let n = u16::try_from(headers.len()).expect("header count is bounded by the node");
    out.put_u16_le(n);
    for (name, value) in headers {
        put_bytes16(out, name);
        put_bytes16(out, value);
    }
}

fn headers(r: &mut Reader) -> Result<Vec<(Bytes, Bytes)>, DecodeError> {
    let n = r.u16()? as usize;
    // Each pair takes at least four bytes: a count beyond that is a lie, and is
    // refused before anything is allocated for it.
    if n * 4 > r.remaining() {
        return Err(DecodeError::Format("header count exceeds the frame"));
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push((r.bytes16()?, r.bytes16()?));
    }
    Ok(out)
}

fn utf8(b: Bytes) -> Result<String, DecodeError> {
    String::from_utf8(b.to_vec()).map_err(|_| DecodeError::Format("text is not UTF-8"))
}

fn floor_char_boundary(s: &str, max: usize) -> usize {
    if s.len() <= max {
        return s.len();
    }
    (0..=max)
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0)
}

/// The first bytes of a [`Message::Data`] frame carrying `body`: followed by `body`
/// itself they make the whole frame, so a sender can hand the body to the
/// transport as it is, without copying it into a frame buffer.
pub fn data_frame_header(body: &[u8]) -> Bytes {
    let len = u32::try_from(body.len()).expect("a body chunk is far below 4 GiB");
    let kind_and_len = [
        DATA,
        len.to_le_bytes()[0],
        len.to_le_bytes()[1],
        len.to_le_bytes()[2],
        len.to_le_bytes()[3],
    ];
    let mut crc = crc32fast::Hasher::new();
    crc.update(&kind_and_len);
    crc.update(body);
    let mut out = BytesMut::with_capacity(FRAME_HEADER + kind_and_len.len());
    out.put_u32_le(kind_and_len.len() as u32 + len);
    out.put_u32_le(crc.finalize());
    out.put_slice(&kind_and_len);
    out.freeze()
}

/// The version two sides agree on: the lower of the two, if both accept it.
pub fn negotiate(theirs: u16) -> Option<u16> {
    let v = theirs.min(VERSION);
    (v >= MIN_VERSION).then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::Namespace;
    use proptest::prelude::*;

    const MAX: usize = 1 << 20;

    fn message() -> impl Strategy<Value = Message> {
        let key =
            (any::<bool>(), proptest::collection::vec(any::<u8>(), 0..64)).prop_map(|(kv, k)| {
                CacheKey::new(if kv { Namespace::Kv } else { Namespace::Http }, &k)
            });
        let blob = proptest::collection::vec(any::<u8>(), 0..2048).prop_map(Bytes::from);
        prop_oneof![
            (any::<u16>(), "\\PC{0,40}")
                .prop_map(|(version, node_id)| Message::Hello { version, node_id }),
            key.clone().prop_map(|key| Message::Get { key }),
            (key.clone(), blob.clone()).prop_map(|(key, entry)| Message::Put { key, entry }),
            key.prop_map(|key| Message::Delete { key }),
            blob.clone().prop_map(|entry| Message::Found { entry }),
            proptest::option::of(blob.clone()).prop_map(|entry| Message::Unvouched { entry }),
            (
                "[A-Z]{1,8}",
                "\\PC{0,60}",
                proptest::collection::vec((blob.clone(), blob.clone()), 0..6)
            )
                .prop_map(|(method, url, headers)| Message::Fetch {
                    method,
                    url,
                    headers
                }),
            (
                any::<u16>(),
                proptest::collection::vec((blob.clone(), blob.clone()), 0..6)
            )
                .prop_map(|(status, headers)| Message::Head { status, headers }),
            blob.clone().prop_map(|bytes| Message::Data { bytes }),
            Just(Message::End),
            blob.clone()
                .prop_map(|record| Message::Replicate { record }),
            (
                any::<u64>(),
                proptest::option::of((
                    any::<u64>(),
                    proptest::collection::vec(("\\PC{0,20}", any::<u64>()), 0..6)
                ))
            )
                .prop_map(|(invalidated, contacts)| Message::Applied {
                    invalidated,
                    contacts: contacts.map(|(uptime_ms, ages_ms)| Contacts { uptime_ms, ages_ms }),
                }),
            proptest::collection::vec(("\\PC{0,20}", any::<u64>()), 0..5)
                .prop_map(|since| Message::Pull { since }),
            (proptest::collection::vec(blob.clone(), 0..4), any::<bool>())
                .prop_map(|(records, gap)| Message::Records { records, gap }),
            Just(Message::NotFound),
            Just(Message::Done),
            (0usize..4, "\\PC{0,80}").prop_map(|(c, message)| Message::Error {
                code: [
                    ErrorCode::Version,
                    ErrorCode::BadRequest,
                    ErrorCode::Unavailable,
                    ErrorCode::Internal
                ][c],
                message,
            }),
        ]
    }

    proptest! {
        /// Frames written back to back come out whole and in order, however the
        /// bytes are split as they arrive.
        #[test]
        fn frames_round_trip_across_any_split(messages in proptest::collection::vec(message(), 1..8), cut in any::<proptest::sample::Index>()) {
            let mut wire = BytesMut::new();
            for m in &messages {
                m.encode(&mut wire);
            }
            let wire = wire.freeze();
            let cut = cut.index(wire.len() + 1);
            let mut buf = BytesMut::from(&wire[..cut]);
            let mut out = Vec::new();
            while let Some(m) = Message::decode(&mut buf, MAX).unwrap() {
                out.push(m);
            }
            buf.extend_from_slice(&wire[cut..]);
            while let Some(m) = Message::decode(&mut buf, MAX).unwrap() {
                out.push(m);
            }
            prop_assert!(buf.is_empty());
            prop_assert_eq!(out, messages);
        }

        /// Any bytes at all: a message, "need more", or an error; never a panic.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut buf = BytesMut::from(&bytes[..]);
            let _ = Message::decode(&mut buf, MAX);
        }

        /// Any body under a valid checksum (what a buggy or hostile peer can send):
        /// the parser answers a message or an error, never panics or over-allocates.
        #[test]
        fn arbitrary_bodies_with_a_valid_checksum_never_panic(kind in 0u8..32, rest in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut body = vec![kind];
            body.extend_from_slice(&rest);
            let mut frame = BytesMut::new();
            frame.put_u32_le(body.len() as u32);
            frame.put_u32_le(crc32fast::hash(&body));
            frame.put_slice(&body);
            let _ = Message::decode(&mut frame, MAX);
        }

        /// A flipped bit anywhere in a frame's body is caught by the checksum.
        #[test]
        fn a_flipped_body_bit_is_refused(m in message(), bit in any::<proptest::sample::Index>()) {
            let mut frame = BytesMut::from(&m.to_frame()[..]);
            let body_bits = (frame.len() - FRAME_HEADER) * 8;
            let bit = FRAME_HEADER * 8 + bit.index(body_bits);
            frame[bit / 8] ^= 1 << (bit % 8);
            prop_assert_eq!(Message::decode(&mut frame, MAX), Err(FrameError::Checksum));
        }
    }

    #[test]
    fn an_oversized_frame_is_refused_from_its_header_alone() {
        let big = Message::Found {
            entry: Bytes::from(vec![0u8; 4096]),
        };
        let frame = big.to_frame();
        let mut header_only = BytesMut::from(&frame[..FRAME_HEADER]);
        assert!(matches!(
            Message::decode(&mut header_only, 1024),
            Err(FrameError::Oversized { max: 1024, .. })
        ));
    }

    #[test]
    fn unknown_kinds_and_trailing_bytes_are_refused() {
        let with_body = |body: &[u8]| {
            let mut f = BytesMut::new();
            f.put_u32_le(body.len() as u32);
            f.put_u32_le(crc32fast::hash(body));
            f.put_slice(body);
            f
        };
        assert_eq!(
            Message::decode(&mut with_body(&[200]), MAX),
            Err(FrameError::UnknownKind(200))
        );
        assert!(matches!(
            Message::decode(&mut with_body(&[DONE, 0]), MAX),
            Err(FrameError::Malformed(DecodeError::Trailing(1)))
        ));
    }

    #[test]
    fn entry_bodies_are_not_copied() {
        let entry = Bytes::from(vec![7u8; 1000]);
        let mut buf = BytesMut::from(&Message::Found { entry }.to_frame()[..]);
        let before = buf.as_ptr() as usize;
        let Some(Message::Found { entry }) = Message::decode(&mut buf, MAX).unwrap() else {
            panic!("a Found frame");
        };
        // The body is a slice of the receive buffer: header (8), kind (1), length (4).
        assert_eq!(entry.as_ptr() as usize, before + FRAME_HEADER + 1 + 4);
    }

    #[test]
    fn a_data_header_and_its_body_make_the_same_frame_as_encoding() {
        for body in [Bytes::new(), Bytes::from(vec![9u8; 70_000])] {
            let mut split = BytesMut::from(&data_frame_header(&body)[..]);
            split.extend_from_slice(&body);
            let whole = Message::Data {
                bytes: body.clone(),
            }
            .to_frame();
            assert_eq!(&split[..], &whole[..]);
        }
    }

    #[test]
    fn versions_negotiate_down_and_refuse_the_unknown_past() {
        assert_eq!(negotiate(VERSION + 5), Some(VERSION));
        assert_eq!(negotiate(VERSION), Some(VERSION));
        assert_eq!(negotiate(MIN_VERSION - 1), None);
    }

    #[test]
    fn long_error_messages_are_cut_on_a_character_boundary() {
        let message = "é".repeat(40_000); // 80 000 bytes
        let frame = Message::Error {
            code: ErrorCode::Internal,
            message,
        }
        .to_frame();
        let mut buf = BytesMut::from(&frame[..]);
        let Some(Message::Error { message, .. }) = Message::decode(&mut buf, MAX).unwrap() else {
            panic!("an Error frame");
        };
        assert_eq!(message.len(), 65_534);
    }
}
