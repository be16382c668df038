//! The in-memory invalidation state: tombstones (by id and by key prefix) and the
//! dependency index. Synchronous and free of I/O, so it can be model-checked.
//!
//! Validity is lazy, in the spirit of Varnish bans: a purge writes one tombstone
//! `id -> HLC`, and an entry is covered when its version is older than the tombstone
//! of any of its ids (its key, its tags, its declared dependencies) or of a prefix of
//! its key. A watermark (the newest tombstone of all) makes the common case a single
//! comparison, and per-id lookups are sharded hash lookups, so the cost of a check
//! does not grow with the number of tombstones.
//!
//! Transitive dependencies are eager but bounded: the dependency index holds edges
//! `id -> dependent key`, only for what something depends on; a purge walks it from
//! its targets and tombstones every key reached. The walk costs the size of the
//! affected dependency graph, never the number of entries a tag covers.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

use bytes::Bytes;
use dashmap::DashMap;
use fanz_protocol::key::IdKind;
use fanz_protocol::log::Record;
use fanz_protocol::{CacheKey, EntryMeta, InvalidationId, Timestamp};

/// How purges cover an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coverage {
    /// No purge covers it.
    Valid,
    /// A soft purge made it stale at this time; it may be served only inside its stale windows.
    SoftPurged(Timestamp),
    /// A hard purge removed it.
    Invalid,
}

/// The newest hard and soft purge of one id.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Tombstone {
    hard: Timestamp,
    soft: Timestamp,
}

impl Tombstone {
    fn raise(&mut self, at: Timestamp, soft: bool) {
        let slot = if soft { &mut self.soft } else { &mut self.hard };
        *slot = (*slot).max(at);
    }

    /// Folds this tombstone's verdict on `version` into `coverage`.
    fn cover(&self, version: Timestamp, coverage: &mut Coverage) {
        if version < self.hard {
            *coverage = Coverage::Invalid;
        } else if version < self.soft {
            if let Coverage::SoftPurged(at) = coverage {
                *at = (*at).min(self.soft);
            } else if *coverage == Coverage::Valid {
                *coverage = Coverage::SoftPurged(self.soft);
            }
        }
    }

    fn newest(&self) -> Timestamp {
        self.hard.max(self.soft)
    }
}

#[derive(Debug, Clone)]
struct PrefixTombstone {
    prefix: CacheKey,
    tombstone: Tombstone,
}

/// What a purge asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PurgeTargets {
    /// Keys to purge.
    pub keys: Vec<CacheKey>,
    /// Tags to purge.
    pub tags: Vec<Bytes>,
    /// Key prefixes to purge.
    pub prefixes: Vec<CacheKey>,
    /// Soft purge: mark stale instead of removing.
    pub soft: bool,
}

impl PurgeTargets {
    /// Whether the purge names nothing.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.tags.is_empty() && self.prefixes.is_empty()
    }
}

/// The records a purge writes and the dependent keys it reached.
#[derive(Debug, Clone, Default)]
pub struct PurgePlan {
    /// Tombstones to apply and log.
    pub records: Vec<Record>,
    /// Keys invalidated because they depend, directly or transitively, on a target.
    pub dependents: Vec<CacheKey>,
}

/// Tombstones and dependency edges of one node.
#[derive(Debug, Default)]
pub struct InvalidationState {
    /// Tombstones of keys, by encoded cache key (no allocation to look one up).
    key_tombstones: DashMap<Bytes, Tombstone>,
    /// Tombstones of tags, by tag.
    tag_tombstones: DashMap<Bytes, Tombstone>,
    /// Newest tombstone (of any kind) ever applied: entries at or after it are valid.
    watermark: AtomicU64,
    /// Versions before this are invalid whatever the tombstones say: tombstones older
    /// than it may have been collected, so nothing may vouch for such an entry.
    floor: AtomicU64,
    /// Prefix tombstones, kept sorted by their newest purge.
    prefixes: RwLock<Vec<PrefixTombstone>>,
    /// Newest prefix tombstone: entries at or after it need no prefix scan.
    prefix_watermark: AtomicU64,
    /// Edges `id -> {dependent key -> expiry ms}`; ordered so a prefix can be scanned.
    dependents: RwLock<BTreeMap<InvalidationId, HashMap<CacheKey, u64>>>,
}

impl InvalidationState {
    /// An empty state.
    pub fn new() -> Self {
        Self::default()
    }

    fn table(&self, kind: IdKind) -> &DashMap<Bytes, Tombstone> {
        match kind {
            IdKind::Key => &self.key_tombstones,
            IdKind::Tag => &self.tag_tombstones,
        }
    }

    /// How the tombstones cover the entry stored under `key` with metadata `meta`.
    pub fn coverage(&self, key: &CacheKey, meta: &EntryMeta) -> Coverage {
        let version = meta.version;
        if version.as_u64() < self.floor.load(Ordering::Acquire) {
            return Coverage::Invalid;
        }
        if version.as_u64() >= self.watermark.load(Ordering::Acquire) {
            return Coverage::Valid;
        }
        let mut coverage = Coverage::Valid;
        let mut check = |table: &DashMap<Bytes, Tombstone>, id: &[u8]| {
            if let Some(t) = table.get(id) {
                t.cover(version, &mut coverage);
            }
        };
        check(&self.key_tombstones, key.encoded());
        for tag in &meta.tags {
            check(&self.tag_tombstones, tag);
        }
        for dep in &meta.depends_on {
            check(self.table(dep.kind()), &dep.encoded()[1..]);
        }
        if coverage != Coverage::Invalid
            && version.as_u64() < self.prefix_watermark.load(Ordering::Acquire)
        {
            let prefixes = self.prefixes.read().unwrap_or_else(|e| e.into_inner());
            // Sorted by newest purge: only the tail newer than the version can cover it.
            let start = prefixes.partition_point(|p| p.tombstone.newest() <= version);
            for p in &prefixes[start..] {
                if key.encoded().starts_with(p.prefix.encoded()) {
                    p.tombstone.cover(version, &mut coverage);
                }
            }
        }
        coverage
    }

    /// Plans a purge at time `at`: tombstones for the targets and for every key that
    /// depends on them, transitively.
    pub fn plan_purge(&self, targets: &PurgeTargets, at: Timestamp, now_ms: u64) -> PurgePlan {
        let soft = targets.soft;
        let mut plan = PurgePlan::default();
        let mut roots: Vec<InvalidationId> = Vec::new();
        for key in &targets.keys {
            plan.records.push(Record::Tombstone {
                id: InvalidationId::key(key),
                at,
                soft,
            });
            roots.push(InvalidationId::key(key));
        }
        for tag in &targets.tags {
            let id = InvalidationId::tag(tag);
            plan.records.push(Record::Tombstone {
                id: id.clone(),
                at,
                soft,
            });
            roots.push(id);
        }
        let dependents = self.dependents.read().unwrap_or_else(|e| e.into_inner());
        for prefix in &targets.prefixes {
            plan.records.push(Record::PrefixTombstone {
                prefix: prefix.clone(),
                at,
                soft,
            });
            // Keys under the prefix that something depends on: walk from each.
            roots.extend(
                dependents
                    .range(InvalidationId::key_prefix(prefix)..)
                    .take_while(|(id, _)| id.is_key_with_prefix(prefix))
                    .map(|(id, _)| id.clone()),
            );
        }
        drop(dependents);
        self.walk_dependents(roots, at, soft, now_ms, &mut plan);
        plan
    }

    /// The dependency edges that storing `key` with `meta` adds: one from each id it
    /// depends on; from each of its tags when something depends on it (so a purge of the
    /// tag reaches its dependents); and, from `dependency_tags` (the tags of each key it
    /// depends on that is stored now), into those keys. `expires_ms`: when this entry
    /// can no longer be served. Apply and log them before the entry is stored.
    pub fn plan_edges(
        &self,
        key: &CacheKey,
        meta: &EntryMeta,
        dependency_tags: &[(CacheKey, Vec<Bytes>)],
        expires_ms: u64,
    ) -> Vec<Record> {
        let edge = |from: InvalidationId, dependent: &CacheKey| Record::Edge {
            from,
            dependent: dependent.clone(),
            expires_ms,
        };
        let mut edges: Vec<Record> = meta
            .depends_on
            .iter()
            .map(|dep| edge(dep.clone(), key))
            .collect();
        for (dependency, tags) in dependency_tags {
            edges.extend(
                tags.iter()
                    .map(|tag| edge(InvalidationId::tag(tag), dependency)),
            );
        }
        if self.has_dependents(key) {
            edges.extend(
                meta.tags
                    .iter()
                    .map(|tag| edge(InvalidationId::tag(tag), key)),
            );
        }
        edges
    }

    /// Overwrite is invalidation: tombstones at `at` for everything that depends,
    /// transitively, on `key`. Plan it after the new value is stored, so a dependent
    /// fill that starts after `at` can only have read the new value. `key` itself gets
    /// no tombstone; in a dependency cycle it is still covered through what it depends on.
    pub fn plan_overwrite(&self, key: &CacheKey, at: Timestamp, now_ms: u64) -> PurgePlan {
        let mut plan = PurgePlan::default();
        self.walk_dependents(vec![InvalidationId::key(key)], at, false, now_ms, &mut plan);
        plan
    }

    /// Breadth-first walk of the dependency index from `roots`, adding a tombstone at
    /// `at` for every live dependent reached that is not a root. Cycles terminate: each
    /// id is visited once.
    fn walk_dependents(
        &self,
        roots: Vec<InvalidationId>,
        at: Timestamp,
        soft: bool,
        now_ms: u64,
        plan: &mut PurgePlan,
    ) {
        let dependents = self.dependents.read().unwrap_or_else(|e| e.into_inner());
        let mut visited: HashSet<InvalidationId> = roots.iter().cloned().collect();
        let mut queue: VecDeque<InvalidationId> = roots.into();
        while let Some(id) = queue.pop_front() {
            let Some(edges) = dependents.get(&id) else {
                continue;
            };
            for (dependent, &expires_ms) in edges {
                if expires_ms < now_ms {
                    continue;
                }
                let dependent_id = InvalidationId::key(dependent);
                if !visited.insert(dependent_id.clone()) {
                    continue;
                }
                queue.push_back(dependent_id.clone());
                plan.records.push(Record::Tombstone {
                    id: dependent_id,
                    at,
                    soft,
                });
                plan.dependents.push(dependent.clone());
            }
        }
    }

    /// Applies one record. Idempotent and order-insensitive (every field only grows),
    /// so replaying a log twice, or a compacted log plus its tail, gives the same state.
    pub fn apply(&self, record: &Record) {
        match record {
            Record::Tombstone { id, at, soft } => {
                self.table(id.kind())
                    .entry(id.encoded().slice(1..))
                    .or_default()
                    .raise(*at, *soft);
                self.watermark.fetch_max(at.as_u64(), Ordering::AcqRel);
            }
            Record::PrefixTombstone { prefix, at, soft } => {
                let mut prefixes = self.prefixes.write().unwrap_or_else(|e| e.into_inner());
                match prefixes.iter_mut().find(|p| &p.prefix == prefix) {
                    Some(p) => p.tombstone.raise(*at, *soft),
                    None => {
                        let mut tombstone = Tombstone::default();
                        tombstone.raise(*at, *soft);
                        prefixes.push(PrefixTombstone {
                            prefix: prefix.clone(),
                            tombstone,
                        });
                    }
                }
                prefixes.sort_by_key(|p| p.tombstone.newest());
                self.prefix_watermark
                    .fetch_max(at.as_u64(), Ordering::AcqRel);
                self.watermark.fetch_max(at.as_u64(), Ordering::AcqRel);
            }
            Record::Edge {
                from,
                dependent,
                expires_ms,
            } => {
                let mut deps = self.dependents.write().unwrap_or_else(|e| e.into_inner());
                let expiry = deps
                    .entry(from.clone())
                    .or_default()
                    .entry(dependent.clone())
                    .or_insert(*expires_ms);
                *expiry = (*expiry).max(*expires_ms);
            }
            // The cluster's record, kept for peers: no state of this node's.
            Record::Kept { .. } => {}
        }
    }

    /// Whether any live edge points out of `key`: something depends on it.
    pub fn has_dependents(&self, key: &CacheKey) -> bool {
        let deps = self.dependents.read().unwrap_or_else(|e| e.into_inner());
        deps.get(&InvalidationId::key(key))
            .is_some_and(|edges| !edges.is_empty())
    }

    /// Versions before this are invalid (see [`Self::raise_floor`]).
    pub fn floor(&self) -> Timestamp {
        Timestamp::from_u64(self.floor.load(Ordering::Acquire))
    }

    /// Makes every version before `floor` invalid from now on (never lowers it).
    pub fn raise_floor(&self, floor: Timestamp) {
        self.floor.fetch_max(floor.as_u64(), Ordering::AcqRel);
    }

    /// Drops tombstones older than `horizon` and edges whose dependent has expired.
    /// Returns what was dropped. Every version before `horizon` becomes invalid first
    /// (the floor), so no entry a dropped tombstone covered is ever valid again,
    /// however long a lifetime its origin gave it.
    pub fn collect_garbage(&self, horizon: Timestamp, now_ms: u64) -> usize {
        self.raise_floor(horizon);
        let mut dropped = 0;
        for table in [&self.key_tombstones, &self.tag_tombstones] {
            let before = table.len();
            table.retain(|_, t| t.newest() >= horizon);
            dropped += before - table.len();
        }
        {
            let mut prefixes = self.prefixes.write().unwrap_or_else(|e| e.into_inner());
            let before = prefixes.len();
            prefixes.retain(|p| p.tombstone.newest() >= horizon);
            dropped += before - prefixes.len();
        }
        let mut deps = self.dependents.write().unwrap_or_else(|e| e.into_inner());
        deps.retain(|_, edges| {
            let before = edges.len();
            edges.retain(|_, &mut expires_ms| expires_ms >= now_ms);
            dropped += before - edges.len();
            !edges.is_empty()
        });
        dropped
    }

    /// The whole state as records: what a compacted log holds.
    pub fn snapshot(&self) -> Vec<Record> {
        let mut out = Vec::new();
        let mut push_tombstones = |id: InvalidationId, t: &Tombstone| {
            for (at, soft) in [(t.hard, false), (t.soft, true)] {
                if at > Timestamp::ZERO {
                    out.push(Record::Tombstone {
                        id: id.clone(),
                        at,
                        soft,
                    });
                }
            }
        };
        for t in self.key_tombstones.iter() {
            if let Some(key) = CacheKey::from_encoded(t.key().clone()) {
                push_tombstones(InvalidationId::key(&key), t.value());
            }
        }
        for t in self.tag_tombstones.iter() {
            push_tombstones(InvalidationId::tag(t.key()), t.value());
        }
        let prefixes = self.prefixes.read().unwrap_or_else(|e| e.into_inner());
        for p in prefixes.iter() {
            for (at, soft) in [(p.tombstone.hard, false), (p.tombstone.soft, true)] {
                if at > Timestamp::ZERO {
                    out.push(Record::PrefixTombstone {
                        prefix: p.prefix.clone(),
                        at,
                        soft,
                    });
                }
            }
        }
        let deps = self.dependents.read().unwrap_or_else(|e| e.into_inner());
        for (from, edges) in deps.iter() {
            for (dependent, &expires_ms) in edges {
                out.push(Record::Edge {
                    from: from.clone(),
                    dependent: dependent.clone(),
                    expires_ms,
                });
            }
        }
        out
    }

    /// Number of tombstones (ids and prefixes).
    pub fn tombstone_count(&self) -> usize {
        self.key_tombstones.len()
            + self.tag_tombstones.len()
            + self.prefixes.read().map(|p| p.len()).unwrap_or(0)
    }

    /// Number of dependency edges.
    pub fn edge_count(&self) -> usize {
        let deps = self.dependents.read().unwrap_or_else(|e| e.into_inner());
        deps.values().map(HashMap::len).sum()
    }
}
