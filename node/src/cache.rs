//! The cache: lookups, sets, deletes and purges over the store and the invalidation
//! engine, with freshness (TTL, stale windows, soft purges). Every front end (KV API,
//! PURGE, admin API, the HTTP proxy, peers) goes through here.
//!
//! Lookup phases:
//!
//! ```text
//! lookup ─> store (memory, then disk) ─> coverage (tombstones) ─> freshness ─> Hit | Stale | Miss
//! ```

use std::sync::Arc;

use bytes::Bytes;
use fanz_protocol::key::{IdKind, Namespace};
use fanz_protocol::{CacheKey, Entry, EntryMeta, Timestamp};

use crate::clock::Clock;
use crate::invalidation::{
    Coverage, Durability, Invalidator, LogError, PurgeOutcome, PurgeTargets,
};
use crate::metrics::{LookupResult, Metrics, PurgeKind, PurgeLabels, TierLabel};
use crate::store::{DiskWrite, Replaced, Store, Tier};
pub use crate::sync_gate::HitPolicy;
use crate::sync_gate::SyncGate;

/// How usable a found entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Fresh for this many more milliseconds.
    Fresh {
        /// Remaining freshness, ms.
        ttl_ms: u64,
    },
    /// Stale for this many milliseconds, but inside its stale-while-revalidate window.
    Stale {
        /// Time since it went stale, ms.
        stale_ms: u64,
    },
}

/// Why a lookup found nothing usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissReason {
    /// Not in any tier.
    Absent,
    /// Expired beyond its stale windows.
    Expired,
    /// Covered by a purge.
    Invalidated,
}

/// A usable entry.
#[derive(Debug)]
pub struct Hit {
    /// The entry (its bytes shared with the store, not copied).
    pub entry: Entry,
    /// Tier it came from.
    pub tier: Tier,
    /// Fresh or stale.
    pub freshness: Freshness,
    /// Age in whole seconds (RFC 9111 `Age`).
    pub age_secs: u64,
}

impl Hit {
    /// The entry's metadata and body.
    pub fn entry(&self) -> &Entry {
        &self.entry
    }
}

/// A stored entry not removed by a hard purge.
#[derive(Debug)]
pub struct Found {
    /// The entry.
    pub entry: Entry,
    /// Where it was.
    pub tier: Tier,
    /// How purges cover it (soft purges make it stale).
    pub coverage: Coverage,
}

impl Found {
    /// Metadata.
    pub fn meta(&self) -> &EntryMeta {
        &self.entry.meta
    }

    /// Milliseconds until it goes stale (negative: stale for that long), counting a
    /// soft purge as the moment it went stale.
    pub fn ttl_ms(&self, now_ms: u64) -> i64 {
        let mut fresh_until = self.meta().fresh_until_ms();
        if let Coverage::SoftPurged(at) = self.coverage {
            fresh_until = fresh_until.min(at.millis());
        }
        fresh_until as i64 - now_ms as i64
    }
}

/// What a lookup found.
#[derive(Debug)]
pub enum Lookup {
    /// A usable entry.
    Hit(Hit),
    /// Nothing usable.
    Miss(MissReason),
}

/// Decides freshness from the entry, how purges cover it, and the wall clock.
/// `None` when it may not be served at all.
pub fn freshness(
    meta: &EntryMeta,
    coverage: Coverage,
    now_ms: u64,
) -> Result<Freshness, MissReason> {
    let mut fresh_until = meta.fresh_until_ms();
    match coverage {
        Coverage::Invalid => return Err(MissReason::Invalidated),
        Coverage::SoftPurged(at) => fresh_until = fresh_until.min(at.millis()),
        Coverage::Valid => {}
    }
    if now_ms < fresh_until {
        return Ok(Freshness::Fresh {
            ttl_ms: fresh_until - now_ms,
        });
    }
    let stale_ms = now_ms - fresh_until;
    if stale_ms <= meta.stale_while_revalidate_ms {
        Ok(Freshness::Stale { stale_ms })
    } else if coverage == Coverage::Valid {
        Err(MissReason::Expired)
    } else {
        Err(MissReason::Invalidated)
    }
}

/// A set or purge could not be made durable.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The invalidation log refused the write: nothing was acknowledged.
    #[error("invalidation log: {0}")]
    Log(#[from] LogError),
    /// A key, tag or entry field is too long for the storage formats.
    #[error("{0}")]
    TooLong(&'static str),
    /// Stored in memory, but the disk tier did not write it, where `kv_write_ack`
    /// asks for that before an acknowledgement: it is served until replaced or
    /// evicted, and a restart loses it.
    #[error("the disk tier did not write it ({0}): it is held in memory only, served until replaced or evicted, and a restart loses it")]
    NotOnDisk(String),
}

/// Longest key, tag or prefix a purge may name (the log's length fields, with room
/// for the id's kind and namespace bytes).
const MAX_ID_LEN: usize = 65_000;

/// What a set did.
#[derive(Debug, Clone)]
pub struct SetOutcome {
    /// Keys invalidated because they depend on the overwritten one.
    pub dependents: Vec<CacheKey>,
    /// Whether the key held a value that may be served, which the write replaced
    /// (asked by [`Cache::set_reporting`] only; `false` otherwise).
    pub replaced_usable: bool,
}

/// Store, engine, clock and metrics of one node.
#[derive(Debug)]
pub struct Cache {
    store: Store,
    invalidator: Arc<Invalidator>,
    clock: Arc<Clock>,
    metrics: Arc<Metrics>,
    /// Whether this node's invalidations are in sync with the cluster (a cluster
    /// of one always is).
    sync_gate: Arc<SyncGate>,
}

impl Cache {
    /// Puts the parts together.
    pub fn new(
        store: Store,
        invalidator: Arc<Invalidator>,
        clock: Arc<Clock>,
        metrics: Arc<Metrics>,
        sync_gate: Arc<SyncGate>,
    ) -> Self {
        Self {
            store,
            invalidator,
            clock,
            metrics,
            sync_gate,
        }
    }

    /// What a hit may do now: serve, serve marked as unsynced, or revalidate first.
    /// After a stall this waits (briefly) for the node to catch up on purges.
    pub async fn hit_policy(&self) -> HitPolicy {
        self.sync_gate.before_hit().await
    }

    /// Why [`Cache::hit_policy`] says revalidate: see [`SyncGate::unsure_because`].
    pub fn unsure_because(&self) -> &'static str {
        self.sync_gate.unsure_because()
    }

    /// [`Cache::hit_policy`] when it is known without waiting or logging; `None`
    /// when only the async call can tell (the node just stalled or is catching up).
    pub fn hit_policy_now(&self) -> Option<HitPolicy> {
        self.sync_gate.before_hit_now()
    }

    /// The version a fill starting now gets: call it before reading anything the
    /// value is made of (the request body, the origin's response).
    pub fn begin_fill(&self) -> Timestamp {
        self.clock.now()
    }

    /// Wall clock, ms.
    pub fn now_ms(&self) -> u64 {
        self.clock.wall_ms()
    }

    /// Looks `key` up, and counts the outcome in the lookup metrics.
    pub async fn get(&self, key: &CacheKey) -> Lookup {
        let lookup = self.lookup(key).await;
        let (tier, result) = match &lookup {
            Lookup::Hit(hit) => (
                hit.tier,
                match hit.freshness {
                    Freshness::Fresh { .. } => LookupResult::Hit,
                    Freshness::Stale { .. } => LookupResult::Stale,
                },
            ),
            Lookup::Miss(MissReason::Absent) => (Tier::Memory, LookupResult::Miss),
            Lookup::Miss(MissReason::Expired) => (Tier::Memory, LookupResult::Expired),
            Lookup::Miss(MissReason::Invalidated) => (Tier::Memory, LookupResult::Invalidated),
        };
        let tier = match tier {
            Tier::Memory => TierLabel::Memory,
            Tier::Disk => TierLabel::Disk,
        };
        self.metrics.lookup(tier, result);
        lookup
    }

    /// Looks `key` up as a read would judge it, without counting it in the lookup
    /// metrics (for the node's own reads: a set checking whether it replaces
    /// something, a conditional write's check of the current value).
    pub async fn lookup(&self, key: &CacheKey) -> Lookup {
        let Some((entry, tier)) = self.store.get(key).await else {
            return Lookup::Miss(MissReason::Absent);
        };
        self.usable(key, entry, tier)
    }

    /// A usable entry for `key` in the memory tier, found without waiting, and
    /// counted; `None` (counting nothing) leaves the answer to [`Cache::get`].
    pub fn hit_in_memory(&self, key: &CacheKey) -> Option<Hit> {
        let entry = self.store.get_in_memory(key)?;
        let Lookup::Hit(hit) = self.usable(key, entry, Tier::Memory) else {
            return None;
        };
        let result = match hit.freshness {
            Freshness::Fresh { .. } => LookupResult::Hit,
            Freshness::Stale { .. } => LookupResult::Stale,
        };
        self.metrics.lookup(TierLabel::Memory, result);
        Some(hit)
    }

    /// Whether `key` holds a value that may be served (a KV PUT's 201 or 204): the
    /// memory tier's copy is judged as it is, without the hybrid cache's fetch; the
    /// disk tier is read only for a key its index may hold.
    pub async fn holds_usable(&self, key: &CacheKey) -> bool {
        if let Some(entry) = self.store.get_in_memory(key) {
            return matches!(self.usable(key, entry, Tier::Memory), Lookup::Hit(_));
        }
        self.store.may_hold(key) && matches!(self.lookup(key).await, Lookup::Hit(_))
    }

    /// Whether a stored entry may be served: purges and freshness.
    fn usable(&self, key: &CacheKey, entry: Entry, tier: Tier) -> Lookup {
        let meta = &entry.meta;
        let now_ms = self.clock.wall_ms();
        match freshness(meta, self.invalidator.coverage(key, meta), now_ms) {
            Ok(freshness) => {
                let age_secs = meta.age_ms(now_ms) / 1000;
                Lookup::Hit(Hit {
                    entry,
                    tier,
                    freshness,
                    age_secs,
                })
            }
            Err(reason) => Lookup::Miss(reason),
        }
    }

    /// Stores `entry`, read from another owner, unless this node already holds a
    /// version as new (a write may have landed here while the read was under way)
    /// or a purge covers it.
    pub async fn repair(&self, key: CacheKey, entry: Entry) -> Result<bool, CacheError> {
        if let Some((held, _)) = self.store.get(&key).await {
            if held.meta.version >= entry.meta.version {
                return Ok(false);
            }
        }
        self.store_response(key, entry).await
    }

    /// Whether membership has been stable since this node's last catch-up round
    /// began (always, in a cluster of one): see [`SyncGate::settled`].
    pub fn settled(&self) -> bool {
        self.sync_gate.settled()
    }

    /// Whether a purge or delete this node has applied covers `meta` (an entry read
    /// from another node, say).
    pub fn covered(&self, key: &CacheKey, meta: &EntryMeta) -> bool {
        self.invalidator.coverage(key, meta) != Coverage::Valid
    }

    /// Stores `entry` (whose version came from [`Cache::begin_fill`]) under `key`.
    ///
    /// Order matters: (1) the dependency edges are made durable, so a dependent never
    /// sits on disk without the edge that lets a purge reach it; (2) the entry is
    /// stored, unless a purge that started after the fill already covers it; (3) the
    /// old value's dependents are invalidated at a time after the store, so a
    /// dependent fill that starts later can only have read the new value.
    pub async fn set(&self, key: CacheKey, entry: Entry) -> Result<SetOutcome, CacheError> {
        self.write(key, entry, false).await
    }

    /// [`Cache::set`] for a client's write, which also tells whether `key` held a
    /// value that may be served before it ([`SetOutcome::replaced_usable`]: a KV
    /// PUT's 204 rather than 201). Asked here, not by every set: replicated writes
    /// would pay for it for nothing.
    pub async fn set_reporting(
        &self,
        key: CacheKey,
        entry: Entry,
    ) -> Result<SetOutcome, CacheError> {
        self.write(key, entry, true).await
    }

    async fn write(
        &self,
        key: CacheKey,
        entry: Entry,
        report: bool,
    ) -> Result<SetOutcome, CacheError> {
        if !entry.fits_encoding() {
            return Err(CacheError::TooLong("entry metadata too large to store"));
        }
        let dependency_tags = self.dependency_tags(&entry.meta).await;
        self.invalidator
            .record_edges(&key, &entry.meta, &dependency_tags)
            .await?;
        let overtaken = || self.invalidator.coverage(&key, &entry.meta) == Coverage::Invalid;
        let mut replaced_usable = false;
        let mut disk = DiskWrite::default();
        if overtaken() {
            // A purge arrived while the value was being received, or a newer write
            // of the key was applied here meanwhile (its overwrite's tombstone): it
            // wins.
            tracing::debug!(
                ?key,
                "set overtaken by a purge or a newer write; not stored"
            );
            replaced_usable = report && self.holds_usable(&key).await;
        } else if !report {
            disk = self.store.insert(&key, &entry);
        } else {
            // Judged in the same step as the insert where the memory tier can tell
            // (one lookup, not two); else the disk tier is read first, and the
            // check above made again after that wait.
            let replaced;
            (replaced, disk) = self.store.insert_reporting(&key, &entry);
            replaced_usable = match replaced {
                Replaced::Value(old) => Entry::decode_unverified(old).is_ok_and(|old| {
                    matches!(self.usable(&key, old, Tier::Memory), Lookup::Hit(_))
                }),
                Replaced::Nothing => false,
                Replaced::Unknown => {
                    let usable = self.holds_usable(&key).await;
                    if !overtaken() {
                        disk = self.store.insert(&key, &entry);
                    }
                    usable
                }
            };
        }
        let dependents = self.invalidator.invalidate_dependents(&key).await?;
        self.count_purge(PurgeKind::Dependent, false, dependents.len());
        disk.done().await.map_err(CacheError::NotOnDisk)?;
        Ok(SetOutcome {
            dependents,
            replaced_usable,
        })
    }

    /// Stores a value another node wrote (a replicated `Put`) as [`Cache::set`]
    /// does, unless this node already holds a version as new: a `Put` delayed in the
    /// network may arrive after a newer write, and must not replace it.
    pub async fn set_replica(&self, key: CacheKey, entry: Entry) -> Result<(), CacheError> {
        if let Some((held, _)) = self.store.get(&key).await {
            if held.meta.version >= entry.meta.version {
                tracing::debug!(
                    ?key,
                    "a replicated write older than the stored value; not stored"
                );
                return Ok(());
            }
        }
        self.set(key, entry).await.map(|_| ())
    }

    /// The stored entry under `key` and how purges cover it, unless a hard purge
    /// removed it. Freshness is the caller's to judge (the HTTP proxy has its own
    /// stale rules). Not counted in the lookup metrics; see [`Cache::count_lookup`].
    pub async fn find(&self, key: &CacheKey) -> Option<Found> {
        let (entry, tier) = self.store.get(key).await?;
        match self.invalidator.coverage(key, &entry.meta) {
            Coverage::Invalid => None,
            coverage => Some(Found {
                entry,
                tier,
                coverage,
            }),
        }
    }

    /// [`Cache::find`] in the memory tier only, without waiting (the hit path's
    /// first try: `None` says nothing about the disk tier).
    pub fn find_in_memory(&self, key: &CacheKey) -> Option<Found> {
        let entry = self.store.get_in_memory(key)?;
        match self.invalidator.coverage(key, &entry.meta) {
            Coverage::Invalid => None,
            coverage => Some(Found {
                entry,
                tier: Tier::Memory,
                coverage,
            }),
        }
    }

    /// Counts a lookup made through [`Cache::find`].
    pub fn count_lookup(&self, tier: Tier, result: LookupResult) {
        let tier = match tier {
            Tier::Memory => TierLabel::Memory,
            Tier::Disk => TierLabel::Disk,
        };
        self.metrics.lookup(tier, result);
    }

    /// Stores a response fetched from an origin (its version taken when the fetch
    /// started), unless a purge that came after the fetch started covers it. A
    /// response that declared KV keys it depends on gets its edges first (durable,
    /// and replicated), so an overwrite of one of them reaches it, as it would a KV
    /// value; a variant's tie to its URL needs no edge (it is checked lazily).
    pub async fn store_response(&self, key: CacheKey, entry: Entry) -> Result<bool, CacheError> {
        if !entry.fits_encoding() || key.encoded().len() > MAX_ID_LEN {
            tracing::debug!(?key, "response too large in its metadata to store");
            return Ok(false);
        }
        let on_kv_keys = entry
            .meta
            .depends_on
            .iter()
            .any(|dep| dep.as_key().is_some_and(|k| k.namespace() == Namespace::Kv));
        if on_kv_keys {
            let dependency_tags = self.dependency_tags(&entry.meta).await;
            self.invalidator
                .record_edges(&key, &entry.meta, &dependency_tags)
                .await?;
        }
        if self.invalidator.coverage(&key, &entry.meta) != Coverage::Valid {
            return Ok(false);
        }
        // A copy of the origin's response: no client waits for it to be durable.
        let _ = self.store.insert(&key, &entry);
        let dependents = self.invalidator.invalidate_dependents(&key).await?;
        self.count_purge(PurgeKind::Dependent, false, dependents.len());
        Ok(true)
    }

    /// Tags of the stored entries of the keys `meta` depends on.
    async fn dependency_tags(&self, meta: &EntryMeta) -> Vec<(CacheKey, Vec<Bytes>)> {
        let mut out = Vec::new();
        for dep in &meta.depends_on {
            if dep.kind() != IdKind::Key {
                continue;
            }
            let Some(dep_key) = dep.as_key() else {
                continue;
            };
            if let Some((dep_entry, _)) = self.store.get(&dep_key).await {
                let tags = &dep_entry.meta.tags;
                if !tags.is_empty() {
                    out.push((dep_key, tags.clone()));
                }
            }
        }
        out
    }

    /// Purges `targets`; resolves once durable. Space is reclaimed in the background.
    pub async fn purge(&self, targets: &PurgeTargets) -> Result<PurgeOutcome, CacheError> {
        self.purge_with(targets, Durability::Synced).await
    }

    /// [`Cache::purge`], its log records synced as `durability` says.
    pub async fn purge_with(
        &self,
        targets: &PurgeTargets,
        durability: Durability,
    ) -> Result<PurgeOutcome, CacheError> {
        let too_long = targets
            .keys
            .iter()
            .chain(&targets.prefixes)
            .any(|k| k.encoded().len() > MAX_ID_LEN)
            || targets.tags.iter().any(|t| t.len() > MAX_ID_LEN);
        if too_long {
            return Err(CacheError::TooLong(
                "a purged key, tag or prefix is too long",
            ));
        }
        let outcome = self.invalidator.purge_with(targets, durability).await?;
        self.metrics.purges.inc();
        self.count_purge(PurgeKind::Key, targets.soft, targets.keys.len());
        self.count_purge(PurgeKind::Tag, targets.soft, targets.tags.len());
        self.count_purge(PurgeKind::Prefix, targets.soft, targets.prefixes.len());
        self.count_purge(PurgeKind::Dependent, targets.soft, outcome.dependents.len());
        if !targets.soft {
            let keys: Vec<CacheKey> = targets
                .keys
                .iter()
                .chain(&outcome.dependents)
                .cloned()
                .collect();
            self.reclaim(keys, outcome.at);
        }
        Ok(outcome)
    }

    fn count_purge(&self, kind: PurgeKind, soft: bool, n: usize) {
        if n > 0 {
            self.metrics
                .purge_targets
                .get_or_create(&PurgeLabels { kind, soft })
                .inc_by(n as u64);
        }
    }

    /// Frees the space of hard-purged keys whose stored version the purge covers. The
    /// tombstone already hides them; this only returns memory and disk sooner.
    fn reclaim(&self, keys: Vec<CacheKey>, at: Timestamp) {
        let store = self.store.clone();
        tokio::spawn(async move {
            for key in keys {
                remove_if_older(&store, &key, at).await;
            }
        });
    }

    /// Applies an overwrite of `key` made on another node at `at`, with a value of
    /// `version`: every older value of `key` is covered from now on, including one
    /// still on its way here (see [`Invalidator::apply_remote_overwrite`]); what
    /// depends on `key` is invalidated at `at`. Older copies held here (an owner
    /// that missed the write, a node that still believes it owns the key) are then
    /// dropped to free their space. Returns the dependents.
    pub async fn apply_overwrite(
        &self,
        key: &CacheKey,
        version: Timestamp,
        at: Timestamp,
        durability: Durability,
    ) -> Result<Vec<CacheKey>, CacheError> {
        let dependents = self
            .invalidator
            .apply_remote_overwrite(key, version, at, durability)
            .await?;
        if remove_if_older(&self.store, key, version).await {
            tracing::debug!(?key, "dropped a copy older than a replicated overwrite");
        }
        Ok(dependents)
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The invalidation engine.
    pub fn invalidator(&self) -> &Arc<Invalidator> {
        &self.invalidator
    }
}

/// Removes `key` from the tiers if its stored version is older than `at`.
async fn remove_if_older(store: &Store, key: &CacheKey, at: Timestamp) -> bool {
    match store.get(key).await {
        Some((entry, _)) if entry.meta.version < at => {
            store.remove(key);
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(version_ms: u64, ttl_ms: u64, swr_ms: u64) -> EntryMeta {
        EntryMeta {
            version: Timestamp::from_millis(version_ms),
            born_ms: version_ms,
            ttl_ms,
            stale_while_revalidate_ms: swr_ms,
            ..EntryMeta::default()
        }
    }

    #[test]
    fn fresh_then_stale_then_expired() {
        let m = meta(1_000, 10_000, 5_000);
        assert_eq!(
            freshness(&m, Coverage::Valid, 2_000),
            Ok(Freshness::Fresh { ttl_ms: 9_000 })
        );
        assert_eq!(
            freshness(&m, Coverage::Valid, 11_000),
            Ok(Freshness::Stale { stale_ms: 0 })
        );
        assert_eq!(
            freshness(&m, Coverage::Valid, 16_000),
            Ok(Freshness::Stale { stale_ms: 5_000 })
        );
        assert_eq!(
            freshness(&m, Coverage::Valid, 16_001),
            Err(MissReason::Expired)
        );
    }

    #[test]
    fn a_soft_purge_makes_an_entry_stale_from_the_purge_on() {
        let m = meta(1_000, 60_000, 5_000);
        let purged = Coverage::SoftPurged(Timestamp::from_millis(3_000));
        assert_eq!(
            freshness(&m, purged, 4_000),
            Ok(Freshness::Stale { stale_ms: 1_000 })
        );
        assert_eq!(freshness(&m, purged, 8_001), Err(MissReason::Invalidated));
        // Without a stale window, a soft-purged entry is not served at all.
        let m = meta(1_000, 60_000, 0);
        assert_eq!(freshness(&m, purged, 4_000), Err(MissReason::Invalidated));
    }

    #[test]
    fn a_hard_purge_is_never_served() {
        let m = meta(1_000, 60_000, 60_000);
        assert_eq!(
            freshness(&m, Coverage::Invalid, 1_001),
            Err(MissReason::Invalidated)
        );
    }
}

#[cfg(test)]
mod replica_tests {
    use super::*;
    use crate::store::StoreConfig;
    use std::time::Duration;

    async fn cache(dir: &std::path::Path) -> Cache {
        cache_with(dir, 0, Arc::new(Clock::manual(1_000_000))).await
    }

    /// A cache on `dir` with a disk tier of `disk_capacity` bytes (none: 0).
    async fn cache_with(dir: &std::path::Path, disk_capacity: u64, clock: Arc<Clock>) -> Cache {
        let metrics = Arc::new(Metrics::new(crate::store::CORRUPT_ENTRIES.clone()));
        let invalidator = Arc::new(
            Invalidator::open(
                dir,
                clock.clone(),
                Duration::from_secs(3600),
                u64::MAX,
                crate::invalidation::edge_channel().0,
            )
            .await
            .unwrap(),
        );
        let store = Store::open(
            StoreConfig {
                memory_capacity: 1 << 20,
                disk_capacity,
                dir: dir.join("cache"),
                sendfile_min_size: None,
                write_ack: crate::config::WriteAck::Memory,
            },
            metrics.evictions.clone(),
        )
        .await
        .unwrap();
        let gate = SyncGate::alone(metrics.clone());
        Cache::new(store, invalidator, clock, metrics, gate)
    }

    fn value(version: Timestamp, body: &'static str) -> Entry {
        Entry {
            meta: EntryMeta {
                version,
                born_ms: version.millis(),
                ttl_ms: 60_000,
                status: 200,
                ..EntryMeta::default()
            },
            body: Bytes::from_static(body.as_bytes()),
        }
    }

    // Found by the fault harness (5-node soak, seed 2005, 34% packet loss): a
    // replicated write delayed in the network arrived at an owner after a newer one
    // and replaced it, and the owner served the older value.
    #[tokio::test]
    async fn a_replicated_write_older_than_the_stored_value_does_not_replace_it() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache(dir.path()).await;
        let key = CacheKey::kv(b"k8");
        let older = cache.begin_fill();
        let newer = cache.begin_fill();
        cache
            .set_replica(key.clone(), value(newer, "new"))
            .await
            .unwrap();
        cache
            .set_replica(key.clone(), value(older, "old"))
            .await
            .unwrap();
        let Lookup::Hit(hit) = cache.get(&key).await else {
            panic!("the value is gone");
        };
        assert_eq!(hit.entry().body, Bytes::from_static(b"new"));
    }

    // Found by the fault harness (3-node soak, seed 3006, 36% packet loss while n2
    // was declared down and came back): an older value reached a node after the
    // overwrite that dropped its copy had been applied there (a read repair answered
    // before the overwrite, or a replicated write delayed in the network), was kept,
    // and served after the newer write was acknowledged.
    #[tokio::test]
    async fn an_older_value_arriving_after_an_overwrite_is_never_kept() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache(dir.path()).await;
        let key = CacheKey::kv(b"k11");
        let older = cache.begin_fill();
        let newer = cache.begin_fill();
        cache
            .set_replica(key.clone(), value(older, "w2-371"))
            .await
            .unwrap();
        let at = cache.begin_fill();
        cache
            .apply_overwrite(&key, newer, at, Durability::Synced)
            .await
            .unwrap();
        assert!(
            matches!(cache.get(&key).await, Lookup::Miss(_)),
            "the older copy is dropped"
        );

        // A read repair answered with the older value before the overwrite came.
        let kept = cache
            .repair(key.clone(), value(older, "w2-371"))
            .await
            .unwrap();
        assert!(!kept, "a read repair older than the overwrite was stored");
        // A replicated write of the older value, delayed in the network.
        cache
            .set_replica(key.clone(), value(older, "w2-371"))
            .await
            .unwrap();
        assert!(
            matches!(cache.get(&key).await, Lookup::Miss(_)),
            "an older value came back after the overwrite"
        );

        // The overwrite's own value, and anything newer, is stored as ever.
        cache
            .set_replica(key.clone(), value(newer, "w0-385"))
            .await
            .unwrap();
        let Lookup::Hit(hit) = cache.get(&key).await else {
            panic!("the overwrite's value was not stored");
        };
        assert_eq!(hit.entry().body, Bytes::from_static(b"w0-385"));
    }

    /// A client's write of `body` under `key`: whether it replaced a usable value.
    async fn write(cache: &Cache, key: &[u8], body: Bytes) -> bool {
        let entry = Entry {
            body,
            ..value(cache.begin_fill(), "")
        };
        let outcome = cache.set_reporting(CacheKey::kv(key), entry).await;
        outcome.unwrap().replaced_usable
    }

    /// What a client's write reports (a KV PUT's 201 or 204) wherever the value it
    /// replaces is: none, in memory, expired, only on disk, large, purged.
    #[tokio::test]
    async fn a_write_tells_whether_it_replaced_a_value_that_may_be_served() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(Clock::manual(1_000_000));
        let cache = cache_with(dir.path(), 16 << 20, clock.clone()).await;
        let small = || Bytes::from_static(b"small");
        let large = || Bytes::from(vec![7u8; 40 << 10]);
        assert!(!write(&cache, b"a", small()).await, "a new key");
        assert!(write(&cache, b"a", small()).await, "over a value in memory");
        assert!(!write(&cache, b"b", large()).await, "a new key, large");
        assert!(write(&cache, b"b", large()).await, "large over large");
        assert!(write(&cache, b"b", small()).await, "small over large");
        assert!(write(&cache, b"a", large()).await, "large over small");
        assert!(
            write(&cache, b"a", small()).await,
            "small over large, again"
        );
        let Lookup::Hit(hit) = cache.get(&CacheKey::kv(b"a")).await else {
            panic!("the last write was not stored");
        };
        assert_eq!(hit.entry().body, small());

        // Expired: a value that may no longer be served does not count.
        write(&cache, b"c", small()).await;
        clock.advance(61_000);
        assert!(!write(&cache, b"c", small()).await, "over an expired value");
        // Purged.
        write(&cache, b"d", small()).await;
        let purge = PurgeTargets {
            keys: vec![CacheKey::kv(b"d")],
            ..PurgeTargets::default()
        };
        cache.purge(&purge).await.unwrap();
        assert!(!write(&cache, b"d", small()).await, "over a purged key");

        // Only on disk: after a restart, memory holds nothing.
        write(&cache, b"e", small()).await;
        cache.store().close().await;
        drop(cache);
        let cache = cache_with(dir.path(), 16 << 20, clock.clone()).await;
        assert!(
            write(&cache, b"e", small()).await,
            "over a value on disk only"
        );
        assert!(
            !write(&cache, b"f", small()).await,
            "a new key, after a restart"
        );
        let Lookup::Hit(hit) = cache.get(&CacheKey::kv(b"e")).await else {
            panic!("the write over a value on disk was not stored");
        };
        assert_eq!(hit.tier, Tier::Memory);
    }
}
