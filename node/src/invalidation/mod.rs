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

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fanz_protocol::log::Record;
use fanz_protocol::{CacheKey, EntryMeta, Timestamp};

use crate::clock::Clock;
pub use log::{LogError, LogStats, LOG_FILE};
pub use state::{Coverage, InvalidationState, PurgePlan, PurgeTargets};

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
    /// Compact when the log is this large and at least twice its last compacted size.
    compact_threshold: u64,
    last_compacted: std::sync::atomic::AtomicU64,
}

impl Invalidator {
    /// Opens the log in `dir`, replays it and garbage-collects what has expired.
    pub async fn open(
        dir: &Path,
        clock: Arc<Clock>,
        retention: Duration,
        compact_threshold: u64,
    ) -> Result<Self, LogError> {
        let (log, replay) = log::InvalidationLog::open(dir)?;
        let state = Arc::new(InvalidationState::new());
        for record in &replay.records {
            state.apply(record);
            match record {
                Record::Tombstone { at, .. } | Record::PrefixTombstone { at, .. } => {
                    clock.observe(*at)
                }
                Record::Edge { .. } => {}
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
            last_compacted: Default::default(),
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

    /// How purges cover an entry.
    pub fn coverage(&self, key: &CacheKey, meta: &EntryMeta) -> Coverage {
        self.state.coverage(key, meta)
    }

    /// Purges `targets`; resolves once the tombstones are durable. They are visible to
    /// lookups before that.
    pub async fn purge(&self, targets: &PurgeTargets) -> Result<PurgeOutcome, LogError> {
        let at = self.clock.now();
        let plan = self.state.plan_purge(targets, at, self.clock.wall_ms());
        for record in &plan.records {
            self.state.apply(record);
        }
        self.log.append(&plan.records, true).await?;
        Ok(PurgeOutcome {
            at,
            tombstones: plan.records.len(),
            dependents: plan.dependents,
        })
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
        self.log.append(&edges, true).await
    }

    /// Invalidates everything that depends on `key`, whose new value has just been
    /// stored (overwrite is invalidation). Resolves once durable; returns the dependents.
    pub async fn invalidate_dependents(&self, key: &CacheKey) -> Result<Vec<CacheKey>, LogError> {
        if !self.state.has_dependents(key) {
            return Ok(Vec::new());
        }
        let plan = self
            .state
            .plan_overwrite(key, self.clock.now(), self.clock.wall_ms());
        for record in &plan.records {
            self.state.apply(record);
        }
        self.log.append(&plan.records, true).await?;
        Ok(plan.dependents)
    }

    /// Drops tombstones and edges that can no longer matter. Returns how many.
    pub fn collect_garbage(&self) -> usize {
        let now_ms = self.clock.wall_ms();
        let horizon_ms = now_ms.saturating_sub(self.retention.as_millis() as u64);
        self.state
            .collect_garbage(Timestamp::from_millis(horizon_ms), now_ms)
    }

    /// Rewrites the log as the live state.
    pub async fn compact(&self) -> Result<u64, LogError> {
        let state = self.state.clone();
        let size = self.log.compact(move || state.snapshot()).await?;
        self.last_compacted.store(size, Ordering::Relaxed);
        Ok(size)
    }

    /// Periodic upkeep: garbage collection, and compaction once the log has grown.
    pub async fn maintain(&self) -> Result<(), LogError> {
        self.collect_garbage();
        let size = self.log.stats().bytes.load(Ordering::Relaxed);
        let last = self.last_compacted.load(Ordering::Relaxed);
        if size > self.compact_threshold && size > 2 * last {
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
