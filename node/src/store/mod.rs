//! Storage tiers: memory and disk, holding checksummed entries. Small entries (up
//! to 16 KiB encoded) live in memory in [`small::SmallTier`], one allocation each;
//! larger ones in foyer's memory tier (S3-FIFO, weighed in bytes). On disk, half of
//! the tier's capacity is a log of small entries packed back to back ([`packed`]),
//! the other half foyer's block engine for larger ones (which aligns every entry to
//! a page, four times a 1 KiB entry's size). The two memory tiers share
//! `memory_capacity`: foyer's is resized to what the small tier leaves (at least
//! an eighth of it). With `sendfile_min_size` set, entries that large are held in
//! files of their own ([`mapped`]), so their bodies go out with `sendfile`.
//!
//! Entries are written to disk when inserted (not only on eviction), gathered every
//! 2 ms into one write (`DiskQueue`), so a restart, SIGKILL included, keeps the cache
//! warm. Removals reach the disk as tombstones (foyer's tombstone log, the packed
//! log's tombstone records), so a removed entry does not come back after recovery;
//! whether a recovered entry may be *served* is decided by the invalidation engine,
//! whose log is durable.
//!
//! A key's newest value on disk is in one of the two: a write of one size class
//! removes the key from the other (under the key's lock), and reads look in the
//! packed log before foyer.

mod codec;
pub mod mapped;
mod packed;
mod small;
mod written;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fanz_protocol::{CacheKey, DecodeError, Entry};
use foyer::{
    BlockEngineConfig, DeviceBuilder, Event, EventListener, FsDeviceBuilder, HybridCache,
    HybridCacheBuilder, HybridCacheEntry, HybridCachePolicy, HybridCacheProperties, Load, Location,
    RecoverMode, S3FifoConfig,
};
use prometheus_client::metrics::counter::Counter;

pub use codec::{CorruptionLayer, StoreKey, StoredEntry, CORRUPT_ENTRIES};
use packed::{Found, PackedLog};
use small::{Put, SmallTier};
use written::BatchWritten;
pub use written::DiskWrite;

use crate::config::WriteAck;

/// Largest block of the disk tier; also the largest entry it can hold.
const MAX_BLOCK_SIZE: u64 = 16 << 20;
const PAGE: u64 = 4096;

/// Where an entry was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// In memory.
    Memory,
    /// Read back from disk.
    Disk,
}

/// What [`Store::insert_reporting`] replaced.
#[derive(Debug)]
pub enum Replaced {
    /// A value the memory tier held (its encoding).
    Value(Bytes),
    /// Nothing: no tier held the key.
    Nothing,
    /// Not known without reading the disk tier (or the value is large): nothing
    /// was stored.
    Unknown,
}

/// Sizes and place of the tiers.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Memory tier capacity, bytes.
    pub memory_capacity: u64,
    /// Disk tier capacity, bytes; 0 for none.
    pub disk_capacity: u64,
    /// Directory of the disk tier.
    pub dir: PathBuf,
    /// Entries this large or larger are kept in memory files and sent with
    /// `sendfile` ([`mapped`]); `None`: none are.
    pub sendfile_min_size: Option<u64>,
    /// When an insert's [`DiskWrite`] is done (`kv_write_ack`).
    pub write_ack: WriteAck,
}

impl StoreConfig {
    /// Block size of foyer's disk tier: 1/16 of the whole disk tier's capacity, at
    /// most 16 MiB, page-aligned.
    pub fn disk_block_size(&self) -> u64 {
        ((self.disk_capacity / 16).min(MAX_BLOCK_SIZE) / PAGE * PAGE).max(PAGE)
    }

    /// The share of the disk tier for small entries ([`packed`]): half.
    fn packed_capacity(&self) -> u64 {
        self.disk_capacity / 2
    }
}

/// The store could not be opened or read.
#[derive(Debug, thiserror::Error)]
#[error("storage tier at {dir}: {message}")]
pub struct StoreError {
    dir: PathBuf,
    message: String,
}

struct EvictionCounter(Counter);

impl EventListener for EvictionCounter {
    type Key = StoreKey;
    type Value = StoredEntry;
    fn on_leave(&self, reason: Event, _key: &StoreKey, value: &StoredEntry) {
        // A small entry never lives in foyer's memory tier: its "eviction" is the
        // release of a record foyer did not keep (one read back from a disk tier
        // written before small entries had the packed log).
        if reason == Event::Evict && value.weight() > small::SMALL_ENTRY_MAX {
            self.0.inc();
        }
    }
}

/// The memory and disk tiers.
#[derive(Debug, Clone)]
pub struct Store {
    /// Small entries in memory.
    small: Arc<SmallTier>,
    /// Entries evicted from memory (both memory tiers).
    evictions: Counter,
    /// Large entries in memory, and every entry on disk.
    cache: HybridCache<StoreKey, StoredEntry>,
    config: StoreConfig,
    /// Inserted entries on their way to the disk tier (none without one).
    to_disk: Option<Arc<DiskQueue>>,
    /// One write or removal of a key at a time (striped by the key's hash). A value
    /// goes to one memory tier and out of the other, in two steps: two writes of a
    /// key in different size classes, interleaved, could each take the other's
    /// value out, leaving memory with neither and the disk tier with the value
    /// before both.
    key_locks: Arc<[std::sync::Mutex<()>]>,
    /// Run by an insert between its two memory tiers (tests only).
    #[cfg(test)]
    between_tiers: tests::Hook,
    /// Run by a read of the packed log before it reads (tests only).
    #[cfg(test)]
    before_packed_read: tests::Hook,
    /// Run (on a blocking thread) by a read of foyer's disk tier before it reads
    /// (tests only: foyer's read of a page-cached entry is done within one poll).
    #[cfg(test)]
    before_foyer_read: tests::Hook,
}

/// Stripes of `Store::key_locks`: enough that writes of different keys rarely wait.
const KEY_LOCKS: usize = 64;

/// How long inserted entries gather before they go to the disk tier together.
const DISK_BATCH: Duration = Duration::from_millis(2);

/// The largest batch written on the runtime's own thread when writes wait for it
/// (`kv_write_ack = "written"`): such a batch (what arrived during the last write)
/// is a page-cache copy of tens of KiB, and handing it to the blocking pool and
/// back cost two thread wake-ups per batch, more than the write (with them, a
/// waiting write took 24-27 us of CPU; without, 17-19, and 1.4x the writes a
/// second). `synced` batches and the default's 2 ms batches go to the blocking
/// pool: an `fdatasync` takes milliseconds, and so may a large write.
const INLINE_WRITE_MAX: usize = 256 << 10;

/// An inline write slower than this (the kernel throttling dirty pages, a slow
/// disk) sends the writes of the next [`INLINE_PAUSE`] to the blocking pool, so
/// that a disk falling behind stalls a runtime thread once, not at every batch.
const INLINE_WRITE_SLOW: Duration = Duration::from_millis(2);
const INLINE_PAUSE: Duration = Duration::from_secs(1);

/// Where the disk queue's task writes a batch: on its own runtime thread or on the
/// blocking pool (see [`INLINE_WRITE_MAX`] and [`INLINE_WRITE_SLOW`]).
#[derive(Debug)]
struct InlineWrites {
    /// Until when batches go to the blocking pool: set by a slow inline write.
    paused_until: tokio::time::Instant,
}

impl InlineWrites {
    fn new(now: tokio::time::Instant) -> Self {
        Self { paused_until: now }
    }

    /// Whether a batch of `len()` bytes, which writes wait for (`flush`) in `ack`
    /// mode, is written inline at `now` (`len` walks the batch: asked last, only in
    /// `written` mode).
    fn inline(
        &self,
        now: tokio::time::Instant,
        ack: WriteAck,
        flush: bool,
        len: impl FnOnce() -> usize,
    ) -> bool {
        flush && ack == WriteAck::Written && now >= self.paused_until && len() <= INLINE_WRITE_MAX
    }

    /// An inline write ran from `started` to `finished`: one slower than
    /// [`INLINE_WRITE_SLOW`] pauses inline writes for [`INLINE_PAUSE`].
    fn wrote(&mut self, started: tokio::time::Instant, finished: tokio::time::Instant) {
        if finished.saturating_duration_since(started) > INLINE_WRITE_SLOW {
            self.paused_until = finished + INLINE_PAUSE;
        }
    }
}

/// Entries inserted in memory and not yet handed to the disk tier, and the small
/// entries' disk tier.
///
/// foyer's flusher writes whatever it holds as soon as its last write is done, so
/// entries handed over one by one make one small (page-padded) write each, through a
/// blocking-pool thread: at 20 000 KV writes a second that was most of a core.
/// Handed over every [`DISK_BATCH`], they make one write per batch. They were already
/// written behind the acknowledgement (foyer queues them); a crash now loses at most
/// [`DISK_BATCH`] more of them, which a cache may (a restarted node serves from
/// memory and disk only what the invalidation log allows, and missing entries are
/// misses).
///
/// A removal and a hand-over hold the same lock, so an entry removed (purged,
/// deleted, replaced) while queued never reaches the disk after its removal, where a
/// restart would bring it back.
struct DiskQueue {
    pending: std::sync::Mutex<Pending>,
    /// When the inserts queued here are done: at once (`Memory`), or once their
    /// batch is written (and flushed: `Synced`).
    ack: WriteAck,
    /// foyer's directory (its files are flushed for `Synced`).
    dir: PathBuf,
    wake: tokio::sync::Notify,
    log: PackedLog,
    /// One batch at a time, from its take to the end of its write: the hand-over
    /// task holds it across its write, and [`Store::close`] takes it before writing
    /// what is left, so a batch taken before a close is written before it returns
    /// (else it would be a hole in the log, placed before the close's own records,
    /// and recovery stops at a hole).
    turn: tokio::sync::Mutex<()>,
    /// Run by the hand-over task between a batch's take and its write (tests only).
    #[cfg(test)]
    before_batch_write: tests::Hook,
}

/// The batch being gathered.
#[derive(Default)]
struct Pending {
    entries: Vec<Queued>,
    /// Its waiters' side, made by the first insert that waits for it.
    written: Option<BatchWritten>,
}

/// An entry waiting for the disk tier.
enum Queued {
    /// For the packed log: the key's hash, the key, the encoded entry.
    Small(u64, CacheKey, bytes::Bytes),
    /// For foyer's block engine.
    Large(HybridCacheEntry<StoreKey, StoredEntry>),
}

impl Queued {
    fn key(&self) -> &CacheKey {
        match self {
            Queued::Small(_, key, _) => key,
            Queued::Large(entry) => &entry.key().0,
        }
    }

    fn value(&self) -> StoredEntry {
        match self {
            Queued::Small(_, _, value) => StoredEntry::from_encoded(value.clone()),
            Queued::Large(entry) => entry.value().clone(),
        }
    }
}

impl DiskQueue {
    /// Queues `entry`, waking the hand-over task for the first of a batch; what
    /// to wait on before acknowledging it.
    fn push(&self, entry: Queued) -> DiskWrite {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.entries.push(entry);
        if pending.entries.len() == 1 {
            self.wake.notify_one();
        }
        if self.ack == WriteAck::Memory {
            return DiskWrite::default();
        }
        pending
            .written
            .get_or_insert_with(BatchWritten::new)
            .waiter()
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes `batch` to the packed log, and flushes it for `Synced` when
    /// `flush`. Blocking.
    fn write(&self, batch: packed::Batch, flush: bool) -> Result<(), String> {
        self.log.write(batch).map_err(|e| e.to_string())?;
        if flush && self.ack == WriteAck::Synced {
            self.log.sync().map_err(|e| format!("flushing: {e}"))?;
        }
        Ok(())
    }

    /// Completes the waiters of a batch written with `outcome` (from
    /// [`DiskQueue::write`]), once the larger entries it handed to foyer are
    /// written too (and flushed, for `Synced`).
    async fn complete(
        &self,
        waiters: Waiters,
        outcome: Result<(), String>,
        cache: &HybridCache<StoreKey, StoredEntry>,
    ) {
        let Some(written) = waiters.written else {
            return;
        };
        let outcome = match outcome {
            Ok(()) if waiters.large => {
                // foyer's flusher answers once what was enqueued before is written.
                cache.storage().wait().await;
                if self.ack == WriteAck::Synced {
                    let dir = self.dir.clone();
                    tokio::task::spawn_blocking(move || written::sync_foyer_files(&dir))
                        .await
                        .map_err(|e| e.to_string())
                        .and_then(|r| r.map_err(|e| format!("flushing: {e}")))
                } else {
                    Ok(())
                }
            }
            outcome => outcome,
        };
        written.complete(outcome);
    }
}

impl std::fmt::Debug for DiskQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DiskQueue")
    }
}

impl Store {
    /// Opens the tiers, recovering what the disk tier holds. `evictions` counts
    /// entries evicted from memory.
    pub async fn open(config: StoreConfig, evictions: Counter) -> Result<Self, StoreError> {
        let err = |dir: &Path, e: foyer::Error| StoreError {
            dir: dir.to_path_buf(),
            message: e.to_string(),
        };
        mapped::keep_entries_in_files(config.sendfile_min_size);
        let builder = HybridCacheBuilder::new()
            .with_name("fanz")
            .with_policy(HybridCachePolicy::WriteOnInsertion)
            .with_event_listener(Arc::new(EvictionCounter(evictions.clone())))
            .memory(config.memory_capacity as usize)
            .with_eviction_config(S3FifoConfig::default())
            .with_weighter(|key: &StoreKey, value: &StoredEntry| {
                key.0.encoded().len() + value.weight()
            })
            // Small entries reach foyer only read back from a disk tier written
            // before they had the packed log: records it does not keep in memory.
            .with_filter(|_: &StoreKey, value: &StoredEntry| {
                value.weight() > small::SMALL_ENTRY_MAX
            });
        let cache = if config.disk_capacity == 0 {
            builder.storage().build().await
        } else {
            let device = FsDeviceBuilder::new(&config.dir)
                .with_capacity((config.disk_capacity - config.packed_capacity()) as usize)
                .build()
                .map_err(|e| err(&config.dir, e))?;
            builder
                .storage()
                .with_engine_config(
                    BlockEngineConfig::new(device)
                        .with_block_size(config.disk_block_size() as usize)
                        // Without it, an entry removed before a restart comes back.
                        .with_tombstone_log(true),
                )
                .with_recover_mode(RecoverMode::Quiet)
                .build()
                .await
        }
        .map_err(|e| err(&config.dir, e))?;
        let small = Arc::new(SmallTier::new(config.memory_capacity as usize));
        let to_disk = if config.disk_capacity == 0 {
            None
        } else {
            let log = PackedLog::open(&config.dir, config.packed_capacity(), |key| small.hash(key))
                .map_err(|e| StoreError {
                    dir: config.dir.clone(),
                    message: format!("small-entry log: {e}"),
                })?;
            Some(Arc::new(DiskQueue {
                pending: Default::default(),
                ack: config.write_ack,
                dir: config.dir.clone(),
                wake: Default::default(),
                log,
                turn: Default::default(),
                #[cfg(test)]
                before_batch_write: tests::Hook::default(),
            }))
        };
        if let Some(queue) = &to_disk {
            tokio::spawn(hand_to_disk(Arc::downgrade(queue), cache.clone()));
        }
        tokio::spawn(share_memory(
            Arc::downgrade(&small),
            cache.clone(),
            config.memory_capacity as usize,
        ));
        Ok(Self {
            small,
            evictions,
            cache,
            config,
            to_disk,
            key_locks: (0..KEY_LOCKS).map(|_| std::sync::Mutex::new(())).collect(),
            #[cfg(test)]
            between_tiers: tests::Hook::default(),
            #[cfg(test)]
            before_packed_read: tests::Hook::default(),
            #[cfg(test)]
            before_foyer_read: tests::Hook::default(),
        })
    }

    /// Looks `key` up in memory, then on disk. A disk read error is logged and
    /// answered as a miss; a corrupt disk entry is dropped, counted, and a miss. The
    /// entry's body and fields share the stored bytes.
    pub async fn get(&self, key: &CacheKey) -> Option<(Entry, Tier)> {
        if let Some(encoded) = self.small.get(key) {
            return self
                .parsed(key, Entry::decode_unverified(encoded))
                .map(|e| (e, Tier::Memory));
        }
        if let Some(queued) = self.queued(key) {
            // Newer than anything the disk tier holds for the key.
            return self.parsed(key, queued.entry()).map(|e| (e, Tier::Memory));
        }
        let small_changes = self.small.changes(key);
        if let Some(queue) = &self.to_disk {
            let hash = self.small.hash(key);
            let encoded = match queue.log.find(hash, key) {
                Found::Absent => None,
                Found::Writing(value) => {
                    let entry = StoredEntry::from_encoded(value).entry();
                    return self.parsed(key, entry).map(|e| (e, Tier::Memory));
                }
                Found::At(loc, seq) => {
                    // The key's newest value on disk is this one (see the module's
                    // doc): a record gone since the lookup is a miss.
                    let (queue, read_key) = (queue.clone(), key.clone());
                    #[cfg(test)]
                    let hook = self.before_packed_read.clone();
                    let read = tokio::task::spawn_blocking(move || {
                        #[cfg(test)]
                        hook.run();
                        queue.log.read(hash, &read_key, (loc, seq))
                    })
                    .await
                    .unwrap_or_else(|e| Err(std::io::Error::other(e)));
                    match read {
                        Ok(Some(encoded)) => Some(encoded),
                        Ok(None) => return None,
                        Err(e) => {
                            tracing::error!(?key, error = %e, "small-entry disk read failed; answering a miss");
                            return None;
                        }
                    }
                }
            };
            if let Some(encoded) = encoded {
                let entry = self.parsed(key, Entry::decode(encoded.clone()))?;
                // Read back: kept in memory again, unless the key was written or
                // removed during the read.
                let promoted = self.small.promote(key, &encoded, small_changes);
                self.evictions.inc_by(promoted.unwrap_or(0) as u64);
                return Some((entry, Tier::Disk));
            }
        }
        let store_key = StoreKey(key.clone());
        let in_memory = || {
            let held = self.cache.memory().get(&store_key)?;
            Some(
                self.parsed(key, held.value().entry())
                    .map(|e| (e, Tier::Memory)),
            )
        };
        if let Some(found) = in_memory() {
            return found;
        }
        // Taken under the key's lock: a large write or a removal changes the count
        // and then foyer's memory tier, in one step under it. Memory is looked at
        // again after it: a write done between the look above and the count would
        // not show in the count.
        let hash = self.small.hash(key);
        let changes = {
            let _only_change = self.key_lock(hash);
            self.small.changes(key)
        };
        if let Some(found) = in_memory() {
            return found;
        }
        // Read from foyer's disk tier (or its flusher, on the way there) without
        // `HybridCache::get`, which keeps what it fetched in memory even when a
        // write or removal of the key was made meanwhile (its fetch inserts
        // unconditionally, over a newer value or after a removal: seen once in CI,
        // a removed large value back in memory). Kept here, as the small tier's
        // promote does: only if nothing changed during the read.
        #[cfg(test)]
        if self.before_foyer_read.is_set() {
            let hook = self.before_foyer_read.clone();
            let _ = tokio::task::spawn_blocking(move || hook.run()).await;
        }
        let (value, tier) = match self.cache.storage().load(&store_key).await {
            Ok(Load::Entry { value, .. }) => (value, Tier::Disk),
            Ok(Load::Piece { piece, .. }) => (piece.value().clone(), Tier::Memory),
            Ok(Load::Throttled | Load::Miss) => return None,
            Err(e) => {
                tracing::error!(?key, error = %e, "disk tier read failed; answering a miss");
                return None;
            }
        };
        let entry = self.parsed(key, value.entry())?;
        if value.weight() <= small::SMALL_ENTRY_MAX {
            // Where foyer keeps no small one.
            let promoted = self.small.promote(key, value.encoded(), changes);
            self.evictions.inc_by(promoted.unwrap_or(0) as u64);
        } else {
            let _only_change = self.key_lock(hash);
            if self.small.changes(key) == changes {
                self.cache.memory().insert(store_key, value);
            }
        }
        Some((entry, tier))
    }

    /// Looks `key` up in memory only, without waiting: the hit path's first try. An
    /// entry that does not parse is left for [`Store::get`] to drop and report.
    pub fn get_in_memory(&self, key: &CacheKey) -> Option<Entry> {
        if let Some(encoded) = self.small.get(key) {
            return Entry::decode_unverified(encoded).ok();
        }
        self.cache.memory().get(key)?.value().entry().ok()
    }

    /// A stored entry parsed; one that does not parse is dropped from every tier
    /// and reported.
    fn parsed(&self, key: &CacheKey, decoded: Result<Entry, DecodeError>) -> Option<Entry> {
        match decoded {
            Ok(entry) => Some(entry),
            Err(e) => {
                // Only this process's encoder wrote it: a bug, not bad input.
                tracing::error!(?key, error = %e, "a stored entry does not parse; dropping it");
                self.remove(key);
                None
            }
        }
    }

    /// Whether either tier may hold `key` (the memory tier's index, the disk tier's):
    /// `false` is certain, `true` may need a read to confirm.
    pub fn may_hold(&self, key: &CacheKey) -> bool {
        self.small.contains(key) || self.may_hold_beyond_small(self.small.hash(key), key)
    }

    /// [`Store::may_hold`] but for the small memory tier (`hash` is its hash of
    /// `key`).
    fn may_hold_beyond_small(&self, hash: u64, key: &CacheKey) -> bool {
        self.queued(key).is_some()
            || self
                .to_disk
                .as_ref()
                .is_some_and(|queue| queue.log.may_hold(hash))
            || self.cache.contains(&StoreKey(key.clone()))
    }

    /// The newest entry of `key` waiting for the disk tier. Memory may have evicted
    /// it already: until its batch is written, the disk tier holds an older one.
    fn queued(&self, key: &CacheKey) -> Option<StoredEntry> {
        let pending = self.to_disk.as_ref()?.lock_pending();
        pending
            .entries
            .iter()
            .rev()
            .find(|e| e.key() == key)
            .map(Queued::value)
    }

    /// Stores `entry` under `key` in memory and queues it for the disk tier.
    ///
    /// Both are copied into allocations of exactly their size (the entry encoded):
    /// they usually arrive as slices of larger network buffers (hyper reads into
    /// shared blocks of several KiB), and keeping such a slice would keep the whole
    /// block alive, so a 100-byte value could hold 4 KiB or more while the memory
    /// tier counts 100.
    ///
    /// The write may be acknowledged once the returned [`DiskWrite`] is done
    /// (at once unless `write_ack` says to wait for the disk tier).
    pub fn insert(&self, key: &CacheKey, entry: &Entry) -> DiskWrite {
        self.write(key, entry, false).1
    }

    /// [`Store::insert`], telling what it replaced, when that is known without
    /// reading the disk tier: a value the small memory tier held (the write is then
    /// counted as a use of the key), or nothing anywhere. Otherwise
    /// ([`Replaced::Unknown`]) nothing is stored: the caller reads what is there
    /// and then inserts.
    pub fn insert_reporting(&self, key: &CacheKey, entry: &Entry) -> (Replaced, DiskWrite) {
        self.write(key, entry, true)
    }

    fn write(&self, key: &CacheKey, entry: &Entry, report: bool) -> (Replaced, DiskWrite) {
        let hash = self.small.hash(key);
        let _only_change = self.key_lock(hash);
        if SmallTier::takes(entry) {
            let encoded = SmallTier::encode(key, entry);
            // The disk tier's queue and the handle it keeps (taken before `encoded`
            // moves).
            let to_disk = self
                .to_disk
                .as_ref()
                .map(|queue| (queue, encoded.encoding()));
            let put = |encoded, how| self.small.put(hash, key, encoded, how);
            let stored = if report {
                match put(encoded, Put::Replace) {
                    Ok(stored) => stored,
                    Err(_) if self.may_hold_beyond_small(hash, key) => {
                        return (Replaced::Unknown, DiskWrite::default())
                    }
                    Err(encoded) => put(encoded, Put::Always).expect("an unconditional put"),
                }
            } else {
                put(encoded, Put::Always).expect("an unconditional put")
            };
            self.evictions.inc_by(stored.evicted as u64);
            let mut disk = DiskWrite::default();
            match to_disk {
                Some((queue, queued)) => {
                    #[cfg(test)]
                    self.between_tiers.run();
                    disk = queue.push(Queued::Small(hash, owned(key), queued));
                    // A larger value of this key goes from foyer's tiers, memory and
                    // disk. (`contains` sees one on its way to the disk too: foyer's
                    // keeper holds it until it is written and indexed.)
                    let key = StoreKey(key.clone());
                    if self.cache.contains(&key) {
                        self.cache.remove(&key);
                    }
                }
                // A larger value of this key may be in foyer's memory tier.
                None => {
                    self.cache.memory().remove(key);
                }
            }
            let replaced = match stored.replaced {
                Some(old) => Replaced::Value(old.encoding()),
                None => Replaced::Nothing,
            };
            return (replaced, disk);
        }
        if report {
            // Large values are not asked about: the caller reads what is there.
            return (Replaced::Unknown, DiskWrite::default());
        }
        // A smaller value of this key would be found first, in memory or in the
        // packed log.
        self.small.remove(key);
        let Some(queue) = &self.to_disk else {
            #[cfg(test)]
            self.between_tiers.run();
            self.cache
                .insert(StoreKey(owned(key)), StoredEntry::new(entry));
            return (Replaced::Unknown, DiskWrite::default());
        };
        queue.log.remove(hash, key);
        #[cfg(test)]
        self.between_tiers.run();
        // In memory now; to disk with the next batch (see `DiskQueue`).
        let in_memory = HybridCacheProperties::default().with_location(Location::InMem);
        let inserted = self.cache.insert_with_properties(
            StoreKey(owned(key)),
            StoredEntry::new(entry),
            in_memory,
        );
        (Replaced::Unknown, queue.push(Queued::Large(inserted)))
    }

    /// Removes `key` from every tier (and from the way to the disk tier).
    pub fn remove(&self, key: &CacheKey) {
        let hash = self.small.hash(key);
        let _only_change = self.key_lock(hash);
        self.small.remove(key);
        if let Some(queue) = &self.to_disk {
            let mut pending = queue.lock_pending();
            pending.entries.retain(|e| e.key() != key);
            drop(pending);
            queue.log.remove(hash, key);
        }
        self.cache.remove(&StoreKey(key.clone()));
    }

    /// The lock of `key`'s writes and removals (see `key_locks`).
    fn key_lock(&self, hash: u64) -> std::sync::MutexGuard<'_, ()> {
        let stripe = hash as usize % self.key_locks.len();
        self.key_locks[stripe]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes held by the memory tier.
    pub fn memory_usage(&self) -> u64 {
        (self.small.usage() + self.cache.memory().usage()) as u64
    }

    /// Bytes written to / read from the disk tier since start.
    pub fn disk_io(&self) -> (u64, u64) {
        let stats = self.cache.statistics();
        let (packed_written, packed_read) =
            self.to_disk.as_ref().map_or((0, 0), |queue| queue.log.io());
        (
            stats.disk_write_bytes() as u64 + packed_written,
            stats.disk_read_bytes() as u64 + packed_read,
        )
    }

    /// Configured sizes.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// Waits for queued disk writes, then closes the tiers.
    pub async fn close(&self) {
        if let Some(queue) = &self.to_disk {
            let _turn = queue.turn.lock().await;
            let (batch, waiters) = hand_over(queue, &self.cache);
            let outcome = queue.write(batch, waiters.wait());
            queue.complete(waiters, outcome, &self.cache).await;
        }
        if let Err(e) = self.cache.close().await {
            tracing::error!(error = %e, "closing the storage tiers failed");
        }
    }
}

/// Hands queued entries to the disk tier every [`DISK_BATCH`] while there are
/// any, until the store is dropped.
async fn hand_to_disk(
    queue: std::sync::Weak<DiskQueue>,
    cache: HybridCache<StoreKey, StoredEntry>,
) {
    let mut inline_writes = InlineWrites::new(tokio::time::Instant::now());
    loop {
        let Some(current) = queue.upgrade() else {
            return;
        };
        // Woken by the first entry of a batch, then gathering for DISK_BATCH; the
        // wait is bounded so that a dropped store ends this task.
        let woken = tokio::time::timeout(Duration::from_secs(1), current.wake.notified()).await;
        drop(current);
        if woken.is_err() {
            continue;
        }
        let Some(current) = queue.upgrade() else {
            return;
        };
        // Writes waiting for the disk are written at once: what arrives while a
        // batch is written makes the next one (a group commit), and each write
        // waits about one write, not DISK_BATCH more.
        if current.ack == WriteAck::Memory {
            tokio::time::sleep(DISK_BATCH).await;
        }
        let _turn = current.turn.lock().await;
        let (batch, waiters) = hand_over(&current, &cache);
        #[cfg(test)]
        current.before_batch_write.run();
        // The packed log's write, a `pwrite` or a few: here when someone waits
        // for a small one (see INLINE_WRITE_MAX), else on a blocking thread.
        let writer = current.clone();
        let flush = waiters.wait();
        let started = tokio::time::Instant::now();
        let outcome = if inline_writes.inline(started, current.ack, flush, || batch.len()) {
            let outcome = writer.write(batch, flush);
            inline_writes.wrote(started, tokio::time::Instant::now());
            outcome
        } else {
            tokio::task::spawn_blocking(move || writer.write(batch, flush))
                .await
                .unwrap_or_else(|e| {
                    tracing::error!(error = %e, "writing small entries to disk did not finish");
                    Err(e.to_string())
                })
        };
        current.complete(waiters, outcome, &cache).await;
    }
}

/// Keeps foyer's memory tier to what the small-entry tier leaves of the memory
/// capacity (at least an eighth of it, for large entries), until the store is
/// dropped.
async fn share_memory(
    small: std::sync::Weak<SmallTier>,
    cache: HybridCache<StoreKey, StoredEntry>,
    capacity: usize,
) {
    let mut current = capacity;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let Some(small) = small.upgrade() else {
            return;
        };
        let target = capacity.saturating_sub(small.usage()).max(capacity / 8);
        // Resizing evicts (when smaller): only for a change worth it.
        if target.abs_diff(current) > capacity / 64 {
            if let Err(e) = cache.memory().resize(target) {
                tracing::warn!(error = %e, "resizing the large-entry memory tier failed");
            }
            current = target;
        }
    }
}

/// Who waits for a batch handed over: whether foyer got larger entries with it,
/// and the waiters of them all (`None`: nobody waits).
struct Waiters {
    large: bool,
    written: Option<BatchWritten>,
}

impl Waiters {
    /// Whether anyone waits for the batch's write.
    fn wait(&self) -> bool {
        self.written.is_some()
    }
}

/// Hands the queued entries to the disk tiers, each key's newest only: large ones
/// enqueued to foyer's, small ones returned as the packed log's next batch. An
/// entry a later one of its key replaced in the same batch is not written. (A
/// removed one is no longer queued.) One evicted from memory meanwhile is written
/// all the same: it is still its key's newest value, and the disk tier may hold an
/// older one.
fn hand_over(
    queue: &DiskQueue,
    cache: &HybridCache<StoreKey, StoredEntry>,
) -> (packed::Batch, Waiters) {
    let mut pending = queue.lock_pending();
    let mut newer = std::collections::HashSet::with_capacity(pending.entries.len());
    let newest: Vec<bool> = pending
        .entries
        .iter()
        .rev()
        .map(|e| newer.insert(e.key()))
        .collect();
    drop(newer);
    let mut small = Vec::new();
    let mut large = false;
    for (entry, newest) in pending.entries.drain(..).zip(newest.into_iter().rev()) {
        match entry {
            _ if !newest => {}
            Queued::Small(hash, key, value) => small.push((hash, key, value)),
            Queued::Large(entry) => {
                large = true;
                cache.storage().enqueue(entry.piece(), false)
            }
        }
    }
    // Taken under the queue's lock: a removal of one of these keys, which takes it
    // first, then finds it in the log's batch.
    let waiters = Waiters {
        large,
        written: pending.written.take(),
    };
    (queue.log.take(small), waiters)
}

/// `key` in an allocation of its own (see [`Store::insert`]).
fn owned(key: &CacheKey) -> CacheKey {
    CacheKey::from_encoded(bytes::Bytes::copy_from_slice(key.encoded()))
        .unwrap_or_else(|| key.clone())
}

#[cfg(test)]
// The stores here acknowledge at once (`WriteAck::Memory`) unless a test says
// otherwise: their inserts' `DiskWrite`s are done as returned.
#[allow(unused_must_use)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn only_small_batches_someone_waits_for_are_written_inline_and_a_slow_one_pauses_that() {
        let t0 = tokio::time::Instant::now();
        let mut writes = InlineWrites::new(t0);
        let small = 64 << 10;
        assert!(writes.inline(t0, WriteAck::Written, true, || small));
        // Nobody waits (the default's batches), an fdatasync follows, or the batch is
        // large: the blocking pool.
        assert!(!writes.inline(t0, WriteAck::Written, false, || small));
        assert!(!writes.inline(t0, WriteAck::Memory, true, || small));
        assert!(!writes.inline(t0, WriteAck::Synced, true, || small));
        assert!(!writes.inline(t0, WriteAck::Written, true, || INLINE_WRITE_MAX + 1));
        // A quick write changes nothing.
        writes.wrote(t0, t0 + INLINE_WRITE_SLOW);
        assert!(writes.inline(t0 + INLINE_WRITE_SLOW, WriteAck::Written, true, || small));
        // A slow one sends the next INLINE_PAUSE of batches to the blocking pool...
        let finished = t0 + INLINE_WRITE_SLOW * 3;
        writes.wrote(t0, finished);
        assert!(!writes.inline(finished, WriteAck::Written, true, || small));
        assert!(!writes.inline(
            finished + INLINE_PAUSE - Duration::from_millis(1),
            WriteAck::Written,
            true,
            || small
        ));
        // ...and then inline again.
        assert!(writes.inline(finished + INLINE_PAUSE, WriteAck::Written, true, || small));
    }

    /// Something to run in the middle of a store operation, to place another one
    /// exactly there.
    #[derive(Clone, Default)]
    pub(super) struct Hook(Arc<std::sync::Mutex<Option<HookFn>>>);

    type HookFn = Box<dyn FnMut() + Send>;

    impl std::fmt::Debug for Hook {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Hook")
        }
    }

    impl Hook {
        fn set(&self, f: impl FnMut() + Send + 'static) {
            *self.0.lock().unwrap() = Some(Box::new(f));
        }

        pub(super) fn is_set(&self) -> bool {
            self.0.lock().unwrap().is_some()
        }

        /// Runs the hook once (taken out first: what it runs may pass here too).
        pub(super) fn run(&self) {
            let taken = self.0.lock().unwrap().take();
            if let Some(mut f) = taken {
                f();
            }
        }
    }

    /// Two writes of one key at once, one small and one large, go to different
    /// memory tiers. Placed exactly between the small write's two tiers, the large
    /// one used to be displaced by it while it displaced the small one: memory held
    /// neither, nothing went to disk, and a read found the value before both.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_of_one_key_into_both_memory_tiers_at_once_leave_one_of_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_with_disk(dir.path()).await;
        let key = CacheKey::kv(b"k");
        let large = Bytes::from(vec![2u8; 2 * small::SMALL_ENTRY_MAX]);
        store.insert(&key, &entry(b"before both"));
        wait_for_a_disk_write(&store).await;
        let (other, other_key, other_value) = (store.clone(), key.clone(), large.clone());
        let runtime = tokio::runtime::Handle::current();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        store.between_tiers.set(move || {
            let (other, key, value, runtime) = (
                other.clone(),
                other_key.clone(),
                other_value.clone(),
                runtime.clone(),
            );
            let done_tx = done_tx.clone();
            std::thread::spawn(move || {
                let _in_runtime = runtime.enter();
                other.insert(&key, &body_entry(&value));
                let _ = done_tx.send(());
            });
            // Let it run to its end if it can (it must wait, once writes of a key
            // are serialised).
            let _ = done_rx.recv_timeout(Duration::from_millis(300));
        });
        store.insert(&key, &entry(b"small"));
        // Both writes are done once the large one's thread ends (at most the
        // hook's wait after this one).
        tokio::time::sleep(Duration::from_millis(400)).await;
        let held = store.get_in_memory(&key).map(|e| e.body);
        assert!(
            held.as_deref() == Some(&b"small"[..]) || held.as_deref() == Some(&large[..]),
            "memory holds neither write"
        );
        let read = store.get(&key).await.map(|(e, _)| e.body);
        assert_ne!(
            read.as_deref(),
            Some(&b"before both"[..]),
            "the value before both writes came back"
        );
    }

    /// A close while the hand-over task holds a batch it took but has not written
    /// yet: `close` returned after writing what was still queued, and the batch,
    /// placed before that in the log, was written later or (at a process's exit,
    /// where a blocking task not yet started is dropped) never, leaving a hole that
    /// recovery stops at. Everything inserted before a close must be on disk when it
    /// returns.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_close_writes_the_batch_being_handed_over_before_it_returns() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_with_disk(dir.path()).await;
        let queue = store.to_disk.clone().expect("a disk tier");
        let (taken_tx, taken_rx) = std::sync::mpsc::channel();
        queue.before_batch_write.set(move || {
            let _ = taken_tx.send(());
            // Holds the taken batch back a while (a blocking wait: the hand-over
            // task's thread stays here; the test runs on the other one).
            std::thread::sleep(Duration::from_millis(300));
        });
        let key = |i: usize| CacheKey::kv(format!("k{i}").as_bytes());
        for i in 0..8 {
            store.insert(&key(i), &body_entry(&small_value(i as u8)));
        }
        let taken =
            tokio::task::spawn_blocking(move || taken_rx.recv_timeout(Duration::from_secs(5)));
        taken
            .await
            .unwrap()
            .expect("the hand-over task took a batch");
        for i in 8..16 {
            store.insert(&key(i), &body_entry(&small_value(i as u8)));
        }
        store.close().await;
        // What the disk holds as `close` returns is what a node that exits then
        // comes back to.
        let at_close = tempfile::tempdir().unwrap();
        copy_dir(dir.path(), at_close.path());
        tokio::time::sleep(Duration::from_millis(400)).await;
        drop(store);
        let reopened = open_with_disk(at_close.path()).await;
        let mut missing = Vec::new();
        for i in 0..16 {
            let read = reopened.get(&key(i)).await.map(|(e, _)| e.body);
            if read != Some(small_value(i as u8)) {
                missing.push(i);
            }
        }
        assert!(
            missing.is_empty(),
            "not on disk when close returned: keys {missing:?}"
        );
    }

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy_dir(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), target).unwrap();
            }
        }
    }

    /// A close writes what is still queued, large entries (foyer's disk tier)
    /// as well as small ones: a clean stop keeps every write.
    #[tokio::test]
    async fn a_close_right_after_writes_keeps_them_all() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_with_disk(dir.path()).await;
        let (small_key, large_key) = (CacheKey::kv(b"small"), CacheKey::kv(b"large"));
        store.insert(&small_key, &body_entry(&small_value(1)));
        store.insert(&large_key, &body_entry(&large_value(2)));
        store.close().await;
        drop(store);
        let reopened = open_with_disk(dir.path()).await;
        let read = |key: CacheKey| {
            let reopened = reopened.clone();
            async move { reopened.get(&key).await.map(|(e, _)| e.body) }
        };
        assert_eq!(read(small_key).await, Some(small_value(1)));
        assert_eq!(read(large_key).await, Some(large_value(2)));
    }

    /// With `kv_write_ack` `written` or `synced`, an insert's `DiskWrite` ends once
    /// its batch is on disk, small and large entries alike: the data directory as it
    /// stands then (copied, as a killed process would leave it, without a close)
    /// holds them. (With the wait made a no-op, both are missing from the copy.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_acknowledged_once_written_is_on_disk_when_its_wait_ends() {
        for ack in [WriteAck::Written, WriteAck::Synced] {
            let dir = tempfile::tempdir().unwrap();
            let store = open_acking(dir.path(), ack).await;
            let (small_key, large_key) = (CacheKey::kv(b"small"), CacheKey::kv(b"large"));
            let small = store.insert(&small_key, &body_entry(&small_value(1)));
            let large = store.insert(&large_key, &body_entry(&large_value(2)));
            assert_eq!(small.done().await, Ok(()));
            assert_eq!(large.done().await, Ok(()));
            let killed = tempfile::tempdir().unwrap();
            copy_dir(dir.path(), killed.path());
            let reopened = open_with_disk(killed.path()).await;
            let holds = |key: CacheKey, value: Bytes| {
                let reopened = reopened.clone();
                async move { reopened.get(&key).await.map(|(e, _)| e.body) == Some(value) }
            };
            assert!(holds(small_key, small_value(1)).await, "small, {ack:?}");
            assert!(holds(large_key, large_value(2)).await, "large, {ack:?}");
        }
    }

    /// A batch that fails to be written fails its waiters, with the reason.
    #[tokio::test]
    async fn a_failed_disk_write_fails_the_writes_waiting_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_acking(dir.path(), WriteAck::Written).await;
        let queue = store.to_disk.as_ref().unwrap();
        let fail_writes = |on| {
            queue
                .log
                .fail_writes
                .store(on, std::sync::atomic::Ordering::Relaxed)
        };
        fail_writes(true);
        let waited = store
            .insert(&CacheKey::kv(b"k"), &body_entry(&small_value(1)))
            .done()
            .await;
        let reason = waited.expect_err("the write failed");
        assert!(reason.contains("a write failed (test)"), "{reason}");
        fail_writes(false);
        let waited = store
            .insert(&CacheKey::kv(b"k"), &body_entry(&small_value(2)))
            .done()
            .await;
        assert_eq!(waited, Ok(()), "writes work again");
    }

    async fn open_with_disk(dir: &Path) -> Store {
        open_store(dir, 1 << 20, 16 << 20, Counter::default()).await
    }

    async fn open_acking(dir: &Path, write_ack: WriteAck) -> Store {
        let config = StoreConfig {
            write_ack,
            ..store_config(dir, 1 << 20, 16 << 20)
        };
        Store::open(config, Counter::default()).await.unwrap()
    }

    fn store_config(dir: &Path, memory_capacity: u64, disk_capacity: u64) -> StoreConfig {
        StoreConfig {
            memory_capacity,
            disk_capacity,
            dir: dir.to_path_buf(),
            sendfile_min_size: None,
            write_ack: WriteAck::Memory,
        }
    }

    async fn open_store(
        dir: &Path,
        memory_capacity: u64,
        disk_capacity: u64,
        evictions: Counter,
    ) -> Store {
        let config = store_config(dir, memory_capacity, disk_capacity);
        Store::open(config, evictions).await.unwrap()
    }

    async fn wait_for_a_disk_write(store: &Store) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while store.disk_io().0 == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "nothing reached the disk"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn entry(body: &'static [u8]) -> Entry {
        body_entry(&Bytes::from_static(body))
    }

    fn body_entry(body: &Bytes) -> Entry {
        Entry {
            meta: fanz_protocol::EntryMeta::default(),
            body: body.clone(),
        }
    }

    /// A value the small-entry tier takes, and one it does not (foyer's memory
    /// tier), filled with `tag`.
    fn small_value(tag: u8) -> Bytes {
        Bytes::from(vec![tag; 100])
    }

    fn large_value(tag: u8) -> Bytes {
        Bytes::from(vec![tag; 20 << 10])
    }

    /// Small entries are packed on disk: 100-byte values take about their size
    /// (foyer's block engine, which kept them before, took a 4 KiB page each), and
    /// come back from there after a restart.
    #[tokio::test]
    async fn small_entries_are_packed_on_disk_and_read_back_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_with_disk(dir.path()).await;
        let entries = 64;
        let key = |i| CacheKey::kv(format!("k{i}").as_bytes());
        for i in 0..entries {
            store.insert(&key(i), &body_entry(&small_value(i as u8)));
        }
        let encoded = entry(&[0; 100]).encoded_len() as u64;
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while store.disk_io().0 < entries * encoded {
            assert!(std::time::Instant::now() < deadline, "not all written");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let written = store.disk_io().0;
        assert!(
            written < entries * (encoded + 64),
            "{written} bytes for {entries} entries of {encoded} bytes encoded"
        );
        store.close().await;
        drop(store);
        let reopened = open_with_disk(dir.path()).await;
        for i in 0..entries {
            let (read, tier) = reopened.get(&key(i)).await.expect("kept on disk");
            assert_eq!(read.body, small_value(i as u8));
            assert_eq!(tier, Tier::Disk);
        }
    }

    /// Written behind in batches: what was inserted reaches the disk tier (and
    /// survives a restart); what was removed or replaced while queued does not come
    /// back after one.
    #[tokio::test]
    async fn batched_disk_writes_keep_inserts_and_never_bring_back_removals() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_with_disk(dir.path()).await;
        let (kept, removed, replaced) = (
            CacheKey::kv(b"kept"),
            CacheKey::kv(b"removed"),
            CacheKey::kv(b"replaced"),
        );
        store.insert(&kept, &entry(b"kept"));
        store.insert(&removed, &entry(b"removed"));
        store.insert(&replaced, &entry(b"old"));
        // Before the batch goes: one removed, one replaced.
        store.remove(&removed);
        store.insert(&replaced, &entry(b"new"));
        wait_for_a_disk_write(&store).await;
        store.close().await;
        drop(store);

        let reopened = open_with_disk(dir.path()).await;
        let body = |key: &CacheKey| {
            let reopened = reopened.clone();
            let key = key.clone();
            async move { reopened.get(&key).await.map(|(e, _)| e.body) }
        };
        assert_eq!(body(&kept).await.as_deref(), Some(&b"kept"[..]));
        assert_eq!(body(&removed).await, None, "a removal came back");
        assert_eq!(body(&replaced).await.as_deref(), Some(&b"new"[..]));
    }

    /// A value evicted from memory before its batch goes to disk is still the
    /// newest one of its key: a read finds it in the queue, and it goes to disk all
    /// the same. (It used to be skipped as if replaced, and the disk tier's older
    /// value came back on the next read; a read before the batch found the older
    /// value and kept it in memory.)
    #[tokio::test]
    async fn a_value_evicted_before_its_disk_write_does_not_uncover_an_older_one() {
        let cases = [
            (small_value(1), small_value(2)),
            (large_value(1), large_value(2)),
        ];
        for (old, new) in cases {
            let what = format!("{} B values", old.len());
            let dir = tempfile::tempdir().unwrap();
            let store = open_with_disk(dir.path()).await;
            let key = CacheKey::kv(b"k");
            store.insert(&key, &body_entry(&old));
            wait_for_a_disk_write(&store).await;
            // The new value, then (before this task lets the batch go) enough
            // values, each read once so that they are kept past the first queue, to
            // push it out of memory (1 MiB here; the small tier evicts by shard, a
            // 64th of it each, so as many as it takes for the key's shard).
            store.insert(&key, &body_entry(&new));
            let held =
                |store: &Store| store.small.contains(&key) || store.cache.memory().contains(&key);
            for i in 0..4096 {
                if !held(&store) {
                    break;
                }
                let filler = Bytes::from(vec![9; new.len().max(8 << 10)]);
                let filler_key = CacheKey::kv(format!("f{i}").as_bytes());
                store.insert(&filler_key, &body_entry(&filler));
                store.get_in_memory(&filler_key);
            }
            assert!(
                store.get_in_memory(&key).is_none(),
                "{what}: the new value was not evicted; the test needs more filler"
            );
            // Read before the batch goes: the disk tier holds only the old value.
            let written = store.disk_io().0;
            let read = store.get(&key).await.map(|(e, _)| e.body);
            assert_eq!(store.disk_io().0, written, "{what}: the batch went first");
            assert!(
                read.as_ref() != Some(&old),
                "{what}: a read before the disk write found the value replaced"
            );
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while store.disk_io().0 == written {
                assert!(std::time::Instant::now() < deadline, "{what}: no batch");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            let read = store.get(&key).await.map(|(e, _)| e.body);
            assert!(
                read.as_ref() != Some(&old),
                "{what}: the value replaced came back from the disk tier"
            );
        }
    }

    /// A read that goes to the disk tier keeps what it read in memory again. A write
    /// or a removal of the key made while that read was under way is newer: the
    /// read must not put the older value back over it.
    #[tokio::test]
    async fn a_disk_read_does_not_bring_back_a_value_replaced_or_removed_meanwhile() {
        let (small, large) = (small_value, large_value);
        // The value on disk, and the change made while it is read: values small
        // (the small-entry tier) and large (foyer's memory tier), or a removal.
        let cases = [
            (small(1), Some(small(2))),
            (small(1), Some(large(2))),
            (large(1), Some(small(2))),
            (large(1), Some(large(2))),
            (small(1), None),
            (large(1), None),
        ];
        let both_orders = cases.iter().flat_map(|case| [(case, false), (case, true)]);
        for ((old, new), read_first) in both_orders {
            let what = format!(
                "{} B then {:?} B, read done first: {read_first}",
                old.len(),
                new.as_ref().map(|n| n.len())
            );
            let dir = tempfile::tempdir().unwrap();
            let store = open_with_disk(dir.path()).await;
            let key = CacheKey::kv(b"k");
            store.insert(&key, &body_entry(old));
            wait_for_a_disk_write(&store).await;
            // A large one written and indexed by foyer too (not only handed to it:
            // its read would then be answered at once from the flusher's queue).
            if old.len() > small::SMALL_ENTRY_MAX {
                let deadline = std::time::Instant::now() + Duration::from_secs(5);
                while !matches!(
                    store.cache.storage().load(&StoreKey(key.clone())).await,
                    Ok(Load::Entry { .. })
                ) {
                    assert!(std::time::Instant::now() < deadline, "{what}: not on disk");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            // Evicted from memory: only the disk tier holds it now.
            store.small.remove(&key);
            store.cache.memory().remove(&StoreKey(key.clone()));
            // A disk read, fast from the page cache, could be done before this task
            // first polls it.
            let slow = || std::thread::sleep(Duration::from_millis(20));
            store.before_packed_read.set(slow);
            store.before_foyer_read.set(slow);
            let mut read = Box::pin(store.get(&key));
            let first = std::future::poll_fn(|cx| {
                std::task::Poll::Ready(std::future::Future::poll(read.as_mut(), cx))
            })
            .await;
            assert!(
                first.is_pending(),
                "{what}: the disk read did not have to wait"
            );
            if read_first {
                // The read completes on foyer's side before the change; this task
                // has yet to see it and keep what it read.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            match new {
                Some(new) => drop(store.insert(&key, &body_entry(new))),
                None => store.remove(&key),
            }
            // Concurrent with the change, the read may answer either value.
            let _ = read.await;
            let now = store.get_in_memory(&key).map(|e| e.body);
            assert!(now == *new, "{what}: memory holds the older value");
            let read_again = store.get(&key).await.map(|(e, _)| e.body);
            assert!(
                read_again == *new,
                "{what}: a read then finds the older value"
            );
        }
    }

    /// The same race without hooks, as the node meets it: reads of a large value
    /// that only the disk tier holds, on one thread, and its removal or
    /// replacement, on another, at once; afterwards memory never holds the value
    /// read over the change. (foyer's own read, `HybridCache::get`, kept what it
    /// fetched in memory unconditionally: a removed value came back there, once in
    /// CI.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_disk_reads_and_changes_of_a_large_value_leave_memory_newest() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_with_disk(dir.path()).await;
        for round in 0..60u8 {
            let key = CacheKey::kv(format!("k{round}").as_bytes());
            store.insert(&key, &body_entry(&large_value(1)));
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while !matches!(
                store.cache.storage().load(&StoreKey(key.clone())).await,
                Ok(Load::Entry { .. })
            ) {
                assert!(std::time::Instant::now() < deadline, "not on disk");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            store.cache.memory().remove(&StoreKey(key.clone()));
            let reader = {
                let (store, key) = (store.clone(), key.clone());
                tokio::spawn(async move { store.get(&key).await })
            };
            let replace = round % 2 == 1;
            if replace {
                store.insert(&key, &body_entry(&large_value(2)));
            } else {
                store.remove(&key);
            }
            let _ = reader.await;
            let now = store.get_in_memory(&key).map(|e| e.body);
            let expected = replace.then(|| large_value(2));
            assert!(
                now == expected,
                "round {round}: memory holds the older value"
            );
        }
    }

    // Small entries reach the disk tier as records foyer's memory tier does not
    // keep; when such a record is let go, foyer reports an eviction. None of them is
    // one: nothing left memory.
    #[tokio::test]
    async fn small_entries_on_their_way_to_disk_are_not_counted_as_evictions() {
        let dir = tempfile::tempdir().unwrap();
        let evictions = Counter::default();
        let store = open_store(dir.path(), 1 << 20, 16 << 20, evictions.clone()).await;
        for i in 0..50 {
            store.insert(&CacheKey::kv(format!("k{i}").as_bytes()), &entry(b"small"));
        }
        wait_for_a_disk_write(&store).await;
        store.close().await;
        assert_eq!(evictions.get(), 0);
        assert!(store.get_in_memory(&CacheKey::kv(b"k7")).is_some());
    }

    // A key whose value changes size moves between the memory tiers; a read never
    // finds the value it replaced in the other one.
    #[tokio::test]
    async fn a_value_that_changes_size_is_read_back_as_written() {
        for disk_capacity in [0, 16 << 20] {
            let dir = tempfile::tempdir().unwrap();
            let store = open_store(dir.path(), 8 << 20, disk_capacity, Counter::default()).await;
            let key = CacheKey::kv(b"k");
            let large = Bytes::from(vec![1u8; 2 * small::SMALL_ENTRY_MAX]);
            for body in [large.clone(), Bytes::from_static(b"small"), large.clone()] {
                store.insert(&key, &body_entry(&body));
                let (read, _) = store.get(&key).await.unwrap();
                assert_eq!(read.body, body, "disk capacity {disk_capacity}");
                assert_eq!(store.get_in_memory(&key).unwrap().body, body);
            }
            store.remove(&key);
            assert!(store.get(&key).await.is_none());
            store.close().await;
        }
    }

    /// A small value written just after a large one of its key, which foyer's
    /// memory tier no longer holds and its disk tier has yet to write (and index):
    /// foyer must still drop it. Once the
    /// small value has left memory and the packed log has reused its segment, a
    /// read finds nothing, never the large value it replaced.
    #[tokio::test]
    async fn a_large_value_on_its_way_to_disk_does_not_outlive_the_small_one_replacing_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_with_disk(dir.path()).await;
        let key = CacheKey::kv(b"k");
        let large = large_value(1);
        store.insert(&key, &body_entry(&large));
        // Evicted from foyer's memory tier already (as memory pressure would), and
        // handed to foyer's disk tier, whose flusher (a task of this thread's
        // runtime) has not run yet.
        store.cache.memory().remove(&StoreKey(key.clone()));
        let queue = store.to_disk.as_ref().unwrap();
        queue.log.write(hand_over(queue, &store.cache).0).unwrap();
        store.insert(&key, &body_entry(&small_value(2)));
        // More than the packed log holds (half of 16 MiB) and memory (1 MiB).
        let filler = Bytes::from(vec![9u8; 10_000]);
        for i in 0..1000 {
            store.insert(
                &CacheKey::kv(format!("f{i}").as_bytes()),
                &body_entry(&filler),
            );
            if i % 100 == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(store.get_in_memory(&key).is_none(), "needs more filler");
        let read = store.get(&key).await.map(|(e, _)| e.body);
        assert!(
            read.as_ref() != Some(&large),
            "the large value replaced came back from foyer's disk tier"
        );
        store.close().await;
    }

    /// A large value replaced by a small one is gone from foyer's memory tier: when
    /// the small one is evicted later, a read finds it on disk (or nothing), never
    /// the large value it replaced.
    #[tokio::test]
    async fn an_evicted_small_value_does_not_uncover_the_large_value_it_replaced() {
        for disk_capacity in [0, 16 << 20] {
            let dir = tempfile::tempdir().unwrap();
            let store = open_store(dir.path(), 8 << 20, disk_capacity, Counter::default()).await;
            let key = CacheKey::kv(b"k");
            let large = Bytes::from(vec![1u8; 2 * small::SMALL_ENTRY_MAX]);
            store.insert(&key, &body_entry(&large));
            store.insert(&key, &body_entry(&Bytes::from_static(b"small")));
            if disk_capacity > 0 {
                wait_for_a_disk_write(&store).await;
            }
            // Evicted from the small tier (as memory pressure would).
            store.small.remove(&key);
            let read = store.get(&key).await.map(|(e, _)| e.body);
            assert!(
                read.as_deref() != Some(&large[..]),
                "disk capacity {disk_capacity}: the replaced value came back"
            );
            store.close().await;
        }
    }

    #[tokio::test]
    async fn a_stored_value_does_not_keep_the_buffer_it_was_sliced_from() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path(), 1 << 20, 0, Counter::default()).await;
        // As a request body arrives: 100 bytes inside a 64 KiB network buffer.
        let network = Bytes::from(vec![7u8; 64 * 1024]);
        let body = network.slice(1000..1100);
        let key = CacheKey::kv(b"k");
        store.insert(&key, &body_entry(&body));
        let (stored, _) = store.get(&key).await.unwrap();
        let kept = &stored.body;
        assert_eq!(&kept[..], &[7u8; 100][..]);
        let range = network.as_ptr() as usize..network.as_ptr() as usize + network.len();
        assert!(
            !range.contains(&(kept.as_ptr() as usize)),
            "the stored value still points into the 64 KiB buffer"
        );
    }
}
