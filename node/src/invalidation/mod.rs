//! The invalidation engine: purges (by key, tag or prefix; hard or soft), transitive
//! dependencies, overwrite-invalidates-dependents, and the durable log behind them.
//!
//! ```text
//! purge ──> state.plan_purge ──> state.apply (visible at once) ──> log.append(fsync) ──> ack
//! set   ──> state.plan_edges ──> log(fsync) ──> store.insert ──> state.plan_overwrite
//!           (dependents' tombstones, taken after the insert) ──> log(fsync) ──> ack
//! get   ──> store hit ──> state.coverage(key, meta): Valid | SoftPurged | Invalid
//! ```
//!
//! Versions are HLC readings taken when a fill *starts*; a tombstone covers every
//! version older than it, so a fill that started before a purge is covered by it
//! whenever it lands.

mod log;
#[cfg(test)]
mod model_tests;
mod state;
mod watchers;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use fanz_protocol::log::Record;
use fanz_protocol::{CacheKey, EntryMeta, Timestamp};

use crate::clock::Clock;
pub(crate) use log::Durable;
pub use log::{LogError, LogStats, LOG_FILE};
pub use state::{Coverage, InvalidationState, PurgePlan, PurgeTargets};
pub use watchers::{WatchEvent, Watchers};

/// How long a near-cache watcher has to confirm an invalidation before it is
/// dropped (and the invalidation acknowledged without it).
pub const WATCHER_ACK_TIMEOUT: Duration = Duration::from_millis(500);

/// When an invalidation's log records must be on disk before it resolves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Synced now (an fsync, shared with whatever else is waiting).
    Synced,
    /// Written now, synced by the next synced append: for a caller that makes one
    /// right after (a replicated record, kept and synced before its ack). The log is
    /// written in order, so a crash keeps a prefix: the effects without the record
    /// that says they were applied, never the other way round.
    WithNextSync,
}

impl Durability {
    fn synced(self) -> bool {
        self == Durability::Synced
    }
}

/// What a purge did.
#[derive(Debug, Clone)]
pub struct PurgeOutcome {
    /// The purge's HLC time: versions before it are covered.
    pub at: Timestamp,
    /// Tombstones written (targets and dependents).
    pub tombstones: usize,
    /// Keys invalidated through dependencies.
    pub dependents: Vec<CacheKey>,
}

/// The invalidation engine of one node.
#[derive(Debug)]
pub struct Invalidator {
    state: Arc<InvalidationState>,
    log: log::InvalidationLog,
    clock: Arc<Clock>,
    /// How long a tombstone can matter: the longest an entry can be served after its
    /// version (max TTL + max stale window).
    retention: Duration,
    /// Never compact a log smaller than this.
    compact_threshold: u64,
    /// Size of the log right after the last compaction.
    last_compacted: AtomicU64,
    /// Records garbage-collected since the last compaction (still in the file).
    dropped_since_compaction: AtomicU64,
    /// Where edges recorded on this node go to be replicated to the cluster (a
    /// cluster of one drops them: there is no one to send them to).
    edge_sink: EdgeSink,
    /// Near caches that must confirm every invalidation before it is acknowledged.
    watchers: Arc<Watchers>,
    /// Where the state's floor is kept across restarts ([`FLOOR_FILE`]).
    floor_file: PathBuf,
    /// The cluster records kept for anti-entropy ([`Record::Kept`]): those the log
    /// replayed, until the cluster's replicator takes them and becomes their source.
    kept: Arc<Mutex<KeptRecords>>,
}

/// Where an [`Invalidator`] sends the dependency edges recorded on this node, for
/// the cluster to replicate ([`edge_channel`]).
pub type EdgeSink = tokio::sync::mpsc::UnboundedSender<Vec<Record>>;

/// A channel for the edges recorded on this node: the sink for the invalidator, the
/// receiver for the cluster's replicator.
pub fn edge_channel() -> (EdgeSink, tokio::sync::mpsc::UnboundedReceiver<Vec<Record>>) {
    tokio::sync::mpsc::unbounded_channel()
}

/// Where a compaction finds the kept cluster records to write.
enum KeptRecords {
    /// Replayed from the log, not yet taken.
    Replayed(Vec<Bytes>),
    /// The replicator's own list, read at each compaction.
    Source(Box<dyn Fn() -> Vec<Bytes> + Send + Sync>),
}

impl std::fmt::Debug for KeptRecords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeptRecords::Replayed(records) => write!(f, "Replayed({})", records.len()),
            KeptRecords::Source(_) => f.write_str("Source"),
        }
    }
}

impl KeptRecords {
    fn snapshot(&self) -> Vec<Record> {
        let records = match self {
            KeptRecords::Replayed(records) => records.clone(),
            KeptRecords::Source(source) => source(),
        };
        records
            .into_iter()
            .map(|record| Record::Kept { record })
            .collect()
    }
}

/// File (in the data directory) holding the floor below which versions are invalid:
/// the horizon of the last garbage collection. Written before a compaction removes
/// collected tombstones from the log, and read at start, so a restart with a longer
/// retention cannot make valid again what a collected tombstone covered.
pub const FLOOR_FILE: &str = "invalidation-floor";

impl Invalidator {
    /// Opens the log in `dir`, replays it and garbage-collects what has expired.
    pub async fn open(
        dir: &Path,
        clock: Arc<Clock>,
        retention: Duration,
        compact_threshold: u64,
        edge_sink: EdgeSink,
    ) -> Result<Self, LogError> {
        let (log, replay) = log::InvalidationLog::open(dir)?;
        let state = Arc::new(InvalidationState::new());
        let floor_file = dir.join(FLOOR_FILE);
        state.raise_floor(read_floor(&floor_file)?);
        let mut kept = Vec::new();
        for record in &replay.records {
            state.apply(record);
            match record {
                Record::Tombstone { at, .. } | Record::PrefixTombstone { at, .. } => {
                    clock.observe(*at)
                }
                Record::Edge { .. } => {}
                Record::Kept { record } => kept.push(record.clone()),
            }
        }
        let replayed = replay.records.len();
        let damaged = replay.damage.is_some();
        let engine = Self {
            state,
            log,
            clock,
            retention,
            compact_threshold,
            last_compacted: AtomicU64::new(0),
            dropped_since_compaction: AtomicU64::new(0),
            edge_sink,
            watchers: Arc::new(Watchers::new(WATCHER_ACK_TIMEOUT)),
            floor_file,
            kept: Arc::new(Mutex::new(KeptRecords::Replayed(kept))),
        };
        let dropped = engine.collect_garbage();
        tracing::info!(
            records = replayed,
            tombstones = engine.state.tombstone_count(),
            edges = engine.state.edge_count(),
            expired = dropped,
            "replayed the invalidation log"
        );
        if damaged || dropped > 0 {
            engine.compact().await?;
        }
        Ok(engine)
    }

    /// The cluster records the log kept for anti-entropy, oldest first; from now on
    /// `source` lists them for compactions (the caller keeps them). Called once, by
    /// the cluster's replicator at start.
    pub fn take_kept_records(
        &self,
        source: Box<dyn Fn() -> Vec<Bytes> + Send + Sync>,
    ) -> Vec<Bytes> {
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        match std::mem::replace(&mut *kept, KeptRecords::Source(source)) {
            KeptRecords::Replayed(records) => records,
            KeptRecords::Source(_) => Vec::new(),
        }
    }

    /// Keeps an encoded cluster record in the log, so this node can hand it to a
    /// peer after a restart; with `durable`, resolves once it is synced. A record
    /// too large for a log frame is not kept (a restarted node then reports a gap
    /// for it rather than vouch for it).
    pub async fn keep_record(&self, record: Bytes, durable: bool) -> Result<(), LogError> {
        self.enqueue_kept_record(record, durable).await?.await
    }

    /// [`Self::keep_record`], queued: the log's order is fixed when this returns,
    /// and the returned [`Durable`] resolves once it is written (and synced). A
    /// caller that orders records under a lock waits for the disk outside it, so
    /// concurrent records share an fsync.
    pub(crate) async fn enqueue_kept_record(
        &self,
        record: Bytes,
        durable: bool,
    ) -> Result<Durable, LogError> {
        if let KeptRecords::Replayed(list) =
            &mut *self.kept.lock().unwrap_or_else(|e| e.into_inner())
        {
            // No source yet: the list is what a compaction writes.
            list.push(record.clone());
        }
        let record = Record::Kept { record };
        if !record.fits() {
            // Not kept, but what was written before it must still be synced.
            return if durable {
                self.log.enqueue_sync().await
            } else {
                Ok(Durable::done())
            };
        }
        self.log
            .enqueue(std::slice::from_ref(&record), durable)
            .await
    }

    /// A sync of everything queued on the log so far, queued now: resolves once it
    /// is durable (at once if it already is).
    pub(crate) async fn enqueue_sync(&self) -> Result<Durable, LogError> {
        self.log.enqueue_sync().await
    }

    /// How purges cover an entry.
    pub fn coverage(&self, key: &CacheKey, meta: &EntryMeta) -> Coverage {
        self.state.coverage(key, meta)
    }

    /// Purges `targets`; resolves once the tombstones are durable. They are visible to
    /// lookups before that.
    pub async fn purge(&self, targets: &PurgeTargets) -> Result<PurgeOutcome, LogError> {
        self.purge_with(targets, Durability::Synced).await
    }

    /// [`Self::purge`], its records synced as `durability` says.
    pub async fn purge_with(
        &self,
        targets: &PurgeTargets,
        durability: Durability,
    ) -> Result<PurgeOutcome, LogError> {
        let at = self.clock.now();
        let plan = self.state.plan_purge(targets, at, self.clock.wall_ms());
        for record in &plan.records {
            self.state.apply(record);
        }
        self.log.append(&plan.records, durability.synced()).await?;
        if self.watchers.count() > 0 {
            if let Some(event) = WatchEvent::of_purge(targets, &plan.dependents) {
                self.watchers.publish(&event).await;
            }
        }
        Ok(PurgeOutcome {
            at,
            tombstones: plan.records.len(),
            dependents: plan.dependents,
        })
    }

    /// The near caches watching this node's invalidations.
    pub fn watchers(&self) -> &Arc<Watchers> {
        &self.watchers
    }

    /// Records the dependency edges of `key`'s new entry `meta`; resolves once they are
    /// durable, after which the entry may be stored.
    pub async fn record_edges(
        &self,
        key: &CacheKey,
        meta: &EntryMeta,
        dependency_tags: &[(CacheKey, Vec<Bytes>)],
    ) -> Result<(), LogError> {
        let edges = self
            .state
            .plan_edges(key, meta, dependency_tags, meta.usable_until_ms());
        for record in &edges {
            self.state.apply(record);
        }
        self.log.append(&edges, true).await?;
        if !edges.is_empty() {
            let _ = self.edge_sink.send(edges);
        }
        Ok(())
    }

    /// Records the edges from each of `key`'s tags to `key` (stored here with `meta`),
    /// so purging one of its tags reaches what depends on it. Only tag edges: they
    /// start from tags, so receiving them triggers nothing further anywhere.
    pub async fn record_tag_edges(&self, key: &CacheKey, meta: &EntryMeta) -> Result<(), LogError> {
        let edges: Vec<Record> = meta
            .tags
            .iter()
            .map(|tag| Record::Edge {
                from: fanz_protocol::InvalidationId::tag(tag),
                dependent: key.clone(),
                expires_ms: meta.usable_until_ms(),
            })
            .collect();
        if edges.is_empty() {
            return Ok(());
        }
        for record in &edges {
            self.state.apply(record);
        }
        self.log.append(&edges, true).await?;
        let _ = self.edge_sink.send(edges);
        Ok(())
    }

    /// Applies edges recorded on another node; resolves once written (synced as
    /// `durability` says). Not sent on to the edge sink (they are already replicated).
    pub async fn apply_remote_edges(
        &self,
        edges: &[Record],
        durability: Durability,
    ) -> Result<(), LogError> {
        let edges: Vec<Record> = edges
            .iter()
            .filter(|r| matches!(r, Record::Edge { .. }))
            .cloned()
            .collect();
        for record in &edges {
            self.state.apply(record);
        }
        self.log.append(&edges, durability.synced()).await
    }

    /// This node's clock now.
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// Moves this node's clock past `at` (a timestamp from another node), so what it
    /// does next is ordered after it.
    pub fn observe(&self, at: Timestamp) {
        self.clock.observe(at);
    }

    /// Invalidates everything that depends on `key`, whose new value has just been
    /// stored (overwrite is invalidation). Resolves once durable; returns the dependents.
    pub async fn invalidate_dependents(&self, key: &CacheKey) -> Result<Vec<CacheKey>, LogError> {
        self.overwrite(key, None, self.clock.now(), Durability::Synced)
            .await
    }

    /// An overwrite of `key` made on another node at `at`, with a value of
    /// `version`: its dependents are invalidated at `at` (those stored after it read
    /// the new value and stay valid), and `key` gets a tombstone at `version`, so
    /// every older value of it is covered here from now on. Dropping this node's
    /// older copy is not enough: an older value may still be on its way (a
    /// replicated write delayed in the network, a read repair answered before the
    /// overwrite), and would be kept and served after the write was acknowledged
    /// (RELIABILITY finding 15). The new value, and newer ones, stay valid.
    pub async fn apply_remote_overwrite(
        &self,
        key: &CacheKey,
        version: Timestamp,
        at: Timestamp,
        durability: Durability,
    ) -> Result<Vec<CacheKey>, LogError> {
        self.overwrite(key, Some(version), at, durability).await
    }

    /// Tombstones at `at` for what depends on `key`, and one for `key` itself at
    /// `older_than` when given; applied, then logged in one append.
    async fn overwrite(
        &self,
        key: &CacheKey,
        older_than: Option<Timestamp>,
        at: Timestamp,
        durability: Durability,
    ) -> Result<Vec<CacheKey>, LogError> {
        let mut plan = if self.state.has_dependents(key) {
            self.state.plan_overwrite(key, at, self.clock.wall_ms())
        } else {
            PurgePlan::default()
        };
        if let Some(version) = older_than {
            plan.records.push(Record::Tombstone {
                id: fanz_protocol::InvalidationId::key(key),
                at: version,
                soft: false,
            });
        }
        if !plan.records.is_empty() {
            for record in &plan.records {
                self.state.apply(record);
            }
            self.log.append(&plan.records, durability.synced()).await?;
        }
        // The overwritten key itself leaves near caches too.
        if self.watchers.count() > 0 {
            if let Some(event) = WatchEvent::of_overwrite(key, &plan.dependents) {
                self.watchers.publish(&event).await;
            }
        }
        Ok(plan.dependents)
    }

    /// Drops tombstones and edges that can no longer matter. Returns how many.
    pub fn collect_garbage(&self) -> usize {
        let now_ms = self.clock.wall_ms();
        let horizon_ms = now_ms.saturating_sub(self.retention.as_millis() as u64);
        let dropped = self
            .state
            .collect_garbage(Timestamp::from_millis(horizon_ms), now_ms);
        self.dropped_since_compaction
            .fetch_add(dropped as u64, Ordering::Relaxed);
        dropped
    }

    /// Rewrites the log as the live state (after making the floor durable: the
    /// rewritten log no longer holds the tombstones collected below it).
    pub async fn compact(&self) -> Result<u64, LogError> {
        let (file, floor) = (self.floor_file.clone(), self.state.floor());
        tokio::task::spawn_blocking(move || write_floor(&file, floor))
            .await
            .map_err(|_| LogError::Closed)??;
        let (state, kept) = (self.state.clone(), self.kept.clone());
        // Both read on the log's thread, between batches: a record kept in memory
        // before its append is in the snapshot whether or not the append came first.
        let size = self
            .log
            .compact(move || {
                let mut records = state.snapshot();
                records.extend(kept.lock().unwrap_or_else(|e| e.into_inner()).snapshot());
                records
            })
            .await?;
        self.last_compacted.store(size, Ordering::Relaxed);
        self.dropped_since_compaction.store(0, Ordering::Relaxed);
        Ok(size)
    }

    /// Periodic upkeep: garbage collection, then compaction when the log is over the
    /// threshold and either has doubled since the last compaction or holds more
    /// collected records than live ones.
    pub async fn maintain(&self) -> Result<(), LogError> {
        self.collect_garbage();
        let size = self.log.stats().bytes.load(Ordering::Relaxed);
        let grown = size > 2 * self.last_compacted.load(Ordering::Relaxed);
        let live = (self.state.tombstone_count() + self.state.edge_count()) as u64;
        let mostly_garbage = self.dropped_since_compaction.load(Ordering::Relaxed) > live;
        if size > self.compact_threshold && (grown || mostly_garbage) {
            self.compact().await?;
        }
        Ok(())
    }

    /// Whether something depends on `key`.
    pub fn has_dependents(&self, key: &CacheKey) -> bool {
        self.state.has_dependents(key)
    }

    /// Number of tombstones held.
    pub fn tombstone_count(&self) -> usize {
        self.state.tombstone_count()
    }

    /// Number of dependency edges held.
    pub fn edge_count(&self) -> usize {
        self.state.edge_count()
    }

    /// Log counters.
    pub fn log_stats(&self) -> &Arc<LogStats> {
        self.log.stats()
    }

    /// Writes and syncs everything queued and stops the log writer.
    pub async fn close(&self) {
        self.log.close().await;
    }
}

/// The floor kept in `path`; the lowest one when there is no file yet.
fn read_floor(path: &Path) -> Result<Timestamp, LogError> {
    let io = |source| LogError::Io {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => text
            .trim()
            .parse::<u64>()
            .map(Timestamp::from_u64)
            .map_err(|e| io(std::io::Error::new(std::io::ErrorKind::InvalidData, e))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Timestamp::from_u64(0)),
        Err(e) => Err(io(e)),
    }
}

/// Writes `floor` to `path` durably (a synced temporary file renamed over it).
fn write_floor(path: &Path, floor: Timestamp) -> Result<(), LogError> {
    use std::io::Write;
    let io = |source| LogError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp).map_err(io)?;
    file.write_all(floor.as_u64().to_string().as_bytes())
        .map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use fanz_protocol::InvalidationId;

    const RETENTION: Duration = Duration::from_secs(3600);

    async fn engine(dir: &Path, clock: Arc<Clock>) -> Invalidator {
        Invalidator::open(dir, clock, RETENTION, 0, edge_channel().0)
            .await
            .unwrap()
    }

    fn tagged(version: Timestamp, tag: &'static [u8]) -> EntryMeta {
        EntryMeta {
            version,
            tags: vec![Bytes::from_static(tag)],
            ..EntryMeta::default()
        }
    }

    #[tokio::test]
    async fn old_tombstones_and_expired_edges_are_collected_and_compacted_away() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(Clock::manual(1_000_000));
        let engine = engine(dir.path(), clock.clone()).await;
        let key = CacheKey::kv(b"k");
        let dependent = CacheKey::kv(b"dep");
        let version = clock.now();
        let dep_meta = EntryMeta {
            version,
            born_ms: version.millis(),
            ttl_ms: 10_000,
            depends_on: vec![InvalidationId::key(&key)],
            ..EntryMeta::default()
        };
        engine
            .record_edges(&dependent, &dep_meta, &[])
            .await
            .unwrap();
        for i in 0..100 {
            let tag = Bytes::from(format!("t{i}"));
            engine
                .purge(&PurgeTargets {
                    tags: vec![tag],
                    ..Default::default()
                })
                .await
                .unwrap();
        }
        assert_eq!(engine.tombstone_count(), 100);
        assert_eq!(engine.edge_count(), 1);
        let before = engine.log_stats().bytes.load(Ordering::Relaxed);

        // Inside the retention window nothing goes.
        clock.advance(RETENTION.as_millis() as u64 / 2);
        engine.maintain().await.unwrap();
        assert_eq!(engine.tombstone_count(), 100);
        assert_eq!(engine.edge_count(), 0, "the edge's dependent has expired");

        let after_edge_gc = engine.log_stats().bytes.load(Ordering::Relaxed);
        assert!(
            after_edge_gc < before,
            "log not compacted: {before} -> {after_edge_gc}"
        );

        // Past it, every tombstone goes, and the compacted log is empty.
        clock.advance(RETENTION.as_millis() as u64);
        engine.maintain().await.unwrap();
        assert_eq!(engine.tombstone_count(), 0);
        assert_eq!(
            engine.log_stats().bytes.load(Ordering::Relaxed),
            0,
            "garbage left in the log"
        );
        engine.close().await;

        let reopened = self::engine(dir.path(), clock).await;
        assert_eq!(reopened.tombstone_count(), 0);
        assert_eq!(reopened.edge_count(), 0);
    }

    // Issue 18, hole 1: an entry whose purge's tombstone was collected stays
    // invalid, here and after a restart with a longer retention.
    #[tokio::test]
    async fn versions_below_a_collected_tombstone_stay_invalid_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(Clock::manual(9_000_000));
        let engine = engine(dir.path(), clock.clone()).await;
        let old_entry = tagged(clock.now(), b"news");
        clock.advance(10);
        engine
            .purge(&PurgeTargets {
                tags: vec![Bytes::from_static(b"news")],
                ..Default::default()
            })
            .await
            .unwrap();
        clock.advance(RETENTION.as_millis() as u64 + 1_000);
        engine.maintain().await.unwrap();
        assert_eq!(engine.tombstone_count(), 0, "collected");
        let key = CacheKey::kv(b"x");
        assert_eq!(engine.coverage(&key, &old_entry), Coverage::Invalid);
        let fresh = tagged(clock.now(), b"news");
        assert_eq!(engine.coverage(&key, &fresh), Coverage::Valid);
        engine.compact().await.unwrap();
        engine.close().await;

        let longer = Invalidator::open(
            dir.path(),
            clock.clone(),
            RETENTION * 10,
            0,
            edge_channel().0,
        )
        .await
        .unwrap();
        assert_eq!(
            longer.coverage(&key, &old_entry),
            Coverage::Invalid,
            "a longer retention after a restart brought a purged version back"
        );
        assert_eq!(longer.coverage(&key, &fresh), Coverage::Valid);
    }

    // Issue 18, hole 4: the cluster records kept for anti-entropy survive a restart,
    // through a compaction too (from the replayed list, then from the source).
    #[tokio::test]
    async fn kept_cluster_records_survive_compaction_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(Clock::manual(1_000));
        let engine = engine(dir.path(), clock.clone()).await;
        for r in [&b"one"[..], b"two"] {
            engine
                .keep_record(Bytes::copy_from_slice(r), true)
                .await
                .unwrap();
        }
        engine.compact().await.unwrap();
        engine.close().await;
        let reopened = self::engine(dir.path(), clock.clone()).await;
        // Compacted again before anyone took them: still there.
        reopened.compact().await.unwrap();
        reopened.close().await;
        let reopened = self::engine(dir.path(), clock.clone()).await;
        let source = || vec![Bytes::from_static(b"two"), Bytes::from_static(b"three")];
        let taken = reopened.take_kept_records(Box::new(source));
        assert_eq!(
            taken,
            vec![Bytes::from_static(b"one"), Bytes::from_static(b"two")]
        );
        // From now on a compaction writes what the source lists.
        reopened.compact().await.unwrap();
        reopened.close().await;
        let last = self::engine(dir.path(), clock).await;
        let taken = last.take_kept_records(Box::new(Vec::new));
        assert_eq!(
            taken,
            vec![Bytes::from_static(b"two"), Bytes::from_static(b"three")]
        );
    }

    #[tokio::test]
    async fn a_tombstone_still_needed_survives_collection_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(Clock::manual(5_000_000));
        let engine = engine(dir.path(), clock.clone()).await;
        let old_entry = tagged(clock.now(), b"news");
        engine
            .purge(&PurgeTargets {
                tags: vec![Bytes::from_static(b"news")],
                ..Default::default()
            })
            .await
            .unwrap();
        clock.advance(RETENTION.as_millis() as u64 - 1);
        engine.maintain().await.unwrap();
        engine.close().await;
        let reopened = self::engine(dir.path(), clock.clone()).await;
        assert_eq!(
            reopened.coverage(&CacheKey::kv(b"x"), &old_entry),
            Coverage::Invalid
        );
        // The clock moved past every replayed tombstone: new fills are newer than them.
        let fresh = tagged(clock.now(), b"news");
        assert_eq!(
            reopened.coverage(&CacheKey::kv(b"x"), &fresh),
            Coverage::Valid
        );
    }
}
