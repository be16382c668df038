//! FANZ Edge protocol: the pure types and byte formats shared by the node and the
//! client. Nothing here does I/O or knows about tokio; time comes in as arguments.
//!
//! Components:
//! - [`hlc`]: hybrid logical clock; versions of entries and of tombstones.
//! - [`key`]: cache keys (KV and HTTP namespaces) and invalidation ids (keys and tags).
//! - [`entry`]: the stored entry (metadata + body) and its checksummed encoding.
//! - [`log`]: records of the invalidation log (tombstones, dependency edges) and their framing.
//! - [`peer`]: the peer protocol's messages and frames (nodes and the client library).
//! - [`replication`]: invalidations replicated across the cluster (purges, overwrites, edges).
//! - [`ring`]: key ownership (weighted rendezvous hashing), shared with the client.
//! - [`resp`]: RESP2, the Redis protocol: commands read, replies written (the node's
//!   Redis-compatible KV port).
//! - [`codec`]: the bounds-checked little-endian reader/writer the formats above share.

#![warn(missing_docs)]

pub mod codec;
pub mod entry;
pub mod hlc;
pub mod key;
pub mod log;
pub mod peer;
pub mod percent;
pub mod replication;
pub mod resp;
pub mod ring;

pub use codec::DecodeError;
pub use entry::{Entry, EntryMeta};
pub use hlc::{Hlc, Timestamp};
pub use key::{CacheKey, InvalidationId, Namespace};
