//! How keys and entries are written to foyer's disk tier, and where a corrupt entry
//! is caught and counted.
//!
//! foyer verifies its own xxhash over each disk entry before it decodes it, and turns
//! a mismatch into a miss (dropping the entry). Our entry crc32 is checked again in
//! [`StoredEntry`]'s decoder, which reports a mismatch to foyer as a checksum error so
//! foyer drops the entry the same way. Either way foyer logs one "remove this entry"
//! warning, and [`CorruptionLayer`] counts exactly those: one mechanism, one count
//! per dropped entry.

use std::io::{Read, Write};
use std::sync::LazyLock;

use super::mapped;
use bytes::Bytes;
use fanz_protocol::{CacheKey, DecodeError, Entry};
use foyer::{Code, Error as FoyerError, ErrorKind};
use prometheus_client::metrics::counter::Counter;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, Layer};

/// Entries dropped because they failed a checksum on their way back from disk, as
/// counted by [`CorruptionLayer`]. Process-wide: foyer's decoder and its log events
/// have no store instance to report to.
pub static CORRUPT_ENTRIES: LazyLock<Counter> = LazyLock::new(Counter::default);

/// Longest encoded key the decoder accepts (keys are limited far below this).
const MAX_KEY_LEN: usize = 1 << 20;

/// A cache key as foyer stores it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StoreKey(pub CacheKey);

/// Lookups by `&CacheKey` without a clone (the derived `Hash` and `Eq` are the
/// inner key's).
impl std::borrow::Borrow<CacheKey> for StoreKey {
    fn borrow(&self) -> &CacheKey {
        &self.0
    }
}

impl Code for StoreKey {
    fn encode(&self, writer: &mut impl Write) -> foyer::Result<()> {
        let raw = self.0.encoded();
        writer
            .write_all(&(raw.len() as u32).to_le_bytes())
            .and_then(|_| writer.write_all(raw))
            .map_err(FoyerError::io_error)
    }

    fn decode(reader: &mut impl Read) -> foyer::Result<Self> {
        let mut len = [0u8; 4];
        reader.read_exact(&mut len).map_err(FoyerError::io_error)?;
        let len = u32::from_le_bytes(len) as usize;
        if len > MAX_KEY_LEN {
            return Err(FoyerError::new(
                ErrorKind::OutOfRange,
                "stored key length over the limit",
            ));
        }
        let mut raw = vec![0u8; len];
        reader.read_exact(&mut raw).map_err(FoyerError::io_error)?;
        CacheKey::from_encoded(Bytes::from(raw))
            .map(StoreKey)
            .ok_or_else(|| FoyerError::new(ErrorKind::Parse, "stored key has an unknown namespace"))
    }

    fn estimated_size(&self) -> usize {
        4 + self.0.encoded().len()
    }
}

/// An entry as foyer stores it, in memory and on disk: the checksummed encoding
/// from `fanz_protocol::entry`, in one allocation of exactly its size.
///
/// Kept encoded in memory too: a decoded `Entry` is some 170 bytes of fields plus
/// an allocation per list, more than a 100-byte value itself. A hit decodes it
/// again (without the crc: see `Entry::decode_unverified`), which costs a few
/// hundred nanoseconds and shares the bytes rather than copying them.
#[derive(Debug, Clone)]
pub struct StoredEntry(Bytes);

impl StoredEntry {
    /// Encodes `entry`; a large one may then be kept in a file of its own, whose body
    /// a connection can send without a copy (see [`super::mapped`]).
    pub fn new(entry: &Entry) -> Self {
        Self::kept(entry.encode())
    }

    /// `encoded` where it will stay (see [`mapped::kept`]).
    fn kept(encoded: Bytes) -> Self {
        Self(mapped::kept(encoded))
    }

    /// An encoding made elsewhere (the small-entry tier's allocation).
    pub fn from_encoded(encoded: Bytes) -> Self {
        Self(encoded)
    }

    /// The encoding.
    pub fn encoded(&self) -> &Bytes {
        &self.0
    }

    /// The entry; its body and fields are slices of the stored encoding.
    pub fn entry(&self) -> Result<Entry, DecodeError> {
        Entry::decode_unverified(self.0.clone())
    }

    /// Bytes held, as the memory tier weighs them (whole pages for a large entry).
    pub fn weight(&self) -> usize {
        mapped::footprint(self.0.len())
    }
}

impl Code for StoredEntry {
    fn encode(&self, writer: &mut impl Write) -> foyer::Result<()> {
        writer.write_all(&self.0).map_err(FoyerError::io_error)
    }

    fn decode(reader: &mut impl Read) -> foyer::Result<Self> {
        let mut raw = Vec::new();
        reader.read_to_end(&mut raw).map_err(FoyerError::io_error)?;
        let raw = Bytes::from(raw);
        Entry::decode(raw.clone())
            .map(|_| StoredEntry::kept(raw))
            .map_err(|e| {
                // ChecksumMismatch makes foyer drop the entry, answer a miss and log the
                // warning CorruptionLayer counts.
                FoyerError::new(
                    ErrorKind::ChecksumMismatch,
                    format!("entry failed its crc32: {e}"),
                )
            })
    }

    fn estimated_size(&self) -> usize {
        self.0.len()
    }
}

/// A tracing layer that counts the corrupt disk entries foyer itself detects and drops.
#[derive(Debug, Default)]
pub struct CorruptionLayer;

const FOYER_DROP_MESSAGE: &str = "remove this entry and skip";

impl<S: tracing::Subscriber> Layer<S> for CorruptionLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        if *meta.level() != tracing::Level::WARN || !meta.target().starts_with("foyer_storage") {
            return;
        }
        struct Message(bool);
        impl Visit for Message {
            fn record_str(&mut self, field: &Field, value: &str) {
                if field.name() == "message" && value.contains(FOYER_DROP_MESSAGE) {
                    self.0 = true;
                }
            }
            fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" && format!("{value:?}").contains(FOYER_DROP_MESSAGE) {
                    self.0 = true;
                }
            }
        }
        let mut visitor = Message(false);
        event.record(&mut visitor);
        if visitor.0 {
            CORRUPT_ENTRIES.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fanz_protocol::EntryMeta;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn a_corrupt_encoding_is_reported_to_foyer_as_a_checksum_mismatch() {
        let entry = Entry {
            meta: EntryMeta::default(),
            body: Bytes::from_static(b"payload"),
        };
        let mut encoded = Vec::new();
        StoredEntry::new(&entry).encode(&mut encoded).unwrap();
        let decoded = StoredEntry::decode(&mut &encoded[..]).unwrap();
        assert_eq!(decoded.entry().unwrap(), entry);
        let last = encoded.len() - 6;
        encoded[last] ^= 1;
        let err = StoredEntry::decode(&mut &encoded[..]).unwrap_err();
        // foyer drops entries (and answers a miss) only for these kinds.
        assert_eq!(err.kind(), ErrorKind::ChecksumMismatch);
    }

    #[test]
    fn the_layer_counts_foyer_drops_and_nothing_else() {
        let subscriber = tracing_subscriber::registry().with(CorruptionLayer);
        let before = CORRUPT_ENTRIES.get();
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(target: "foyer_storage::engine::block::engine", hash = 1, "[block engine load]: deserialize read buffer raise error, remove this entry and skip");
            tracing::warn!(target: "foyer_storage::engine::block::engine", "something else");
            tracing::info!(target: "foyer_storage::engine::block::engine", "remove this entry and skip");
            tracing::warn!(target: "fanz_node", "remove this entry and skip");
        });
        assert_eq!(CORRUPT_ENTRIES.get() - before, 1);
    }
}
