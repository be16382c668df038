//! Criterion benches for the invalidation engine on the request path:
//! - a lookup hit (full `Cache::get`: memory tier, coverage, freshness) with 0, 1k and
//!   1M tombstones present, for an entry newer than every tombstone (the watermark
//!   answers) and one older than all of them (every id of the entry is looked up);
//! - the coverage check alone, same cases;
//! - the purge call for a tag that covers 0 and 1M stored entries (durable, fsync
//!   included), and its in-memory part alone;
//! - baselines from the same run: a bare foyer memory hit, a small append + fsync.
//!
//! Run: `cargo bench -p fanz-node --bench invalidation`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use fanz_node::cache::{Cache, Lookup};
use fanz_node::clock::Clock;
use fanz_node::invalidation::{InvalidationState, Invalidator, PurgeTargets};
use fanz_node::metrics::Metrics;
use fanz_node::store::{Store, StoreConfig, CORRUPT_ENTRIES};
use fanz_protocol::{CacheKey, Entry, EntryMeta, InvalidationId, Timestamp};

const TOMBSTONE_COUNTS: [usize; 3] = [0, 1_000, 1_000_000];
const PURGE_BATCH: usize = 10_000;

struct Node {
    cache: Arc<Cache>,
    _dir: tempfile::TempDir,
}

async fn node(memory: u64) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(Clock::system());
    let metrics = Arc::new(Metrics::new(CORRUPT_ENTRIES.clone()));
    let invalidator = Arc::new(
        Invalidator::open(
            dir.path(),
            clock.clone(),
            Duration::from_secs(86_400),
            u64::MAX,
            fanz_node::invalidation::edge_channel().0,
        )
        .await
        .unwrap(),
    );
    let store = Store::open(
        StoreConfig {
            memory_capacity: memory,
            disk_capacity: 0,
            dir: dir.path().join("cache"),
            sendfile_min_size: None,
            write_ack: fanz_node::config::WriteAck::Memory,
        },
        metrics.evictions.clone(),
    )
    .await
    .unwrap();
    Node {
        cache: Arc::new(Cache::new(
            store,
            invalidator,
            clock,
            metrics.clone(),
            fanz_node::sync_gate::SyncGate::alone(metrics),
        )),
        _dir: dir,
    }
}

fn entry(cache: &Cache, tags: &[&str]) -> Entry {
    let version = cache.begin_fill();
    Entry {
        meta: EntryMeta {
            version,
            born_ms: version.millis(),
            ttl_ms: 3_600_000,
            status: 200,
            tags: tags
                .iter()
                .map(|t| Bytes::copy_from_slice(t.as_bytes()))
                .collect(),
            depends_on: vec![InvalidationId::tag(b"dep-tag")],
            ..EntryMeta::default()
        },
        body: Bytes::from(vec![b'x'; 1024]),
    }
}

/// Purges `n` distinct unrelated tags, in batches.
async fn add_tombstones(cache: &Cache, n: usize) {
    let mut next = 0;
    while next < n {
        let batch = PURGE_BATCH.min(n - next);
        let targets = PurgeTargets {
            tags: (next..next + batch)
                .map(|i| Bytes::from(format!("unrelated-{i}")))
                .collect(),
            ..PurgeTargets::default()
        };
        cache.purge(&targets).await.unwrap();
        next += batch;
    }
}

fn lookup_hit(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("lookup_hit");
    group
        .sample_size(30)
        .measurement_time(Duration::from_secs(3));
    for n in TOMBSTONE_COUNTS {
        let node = rt.block_on(node(256 << 20));
        let old_key = CacheKey::kv(b"old-entry");
        let new_key = CacheKey::kv(b"new-entry");
        rt.block_on(async {
            let e = entry(&node.cache, &["a", "b", "c"]);
            node.cache.set(old_key.clone(), e).await.unwrap();
            add_tombstones(&node.cache, n).await;
            let e = entry(&node.cache, &["a", "b", "c"]);
            node.cache.set(new_key.clone(), e).await.unwrap();
        });
        for (label, key) in [
            ("older_than_tombstones", &old_key),
            ("newer_than_tombstones", &new_key),
        ] {
            group.bench_with_input(BenchmarkId::new(label, n), &n, |b, _| {
                b.to_async(&rt).iter(|| async {
                    match node.cache.get(key).await {
                        Lookup::Hit(hit) => std::hint::black_box(hit.entry().body.len()),
                        Lookup::Miss(reason) => panic!("expected a hit, got {reason:?}"),
                    }
                })
            });
        }
    }
    group.finish();
}

fn coverage_check(c: &mut Criterion) {
    let mut group = c.benchmark_group("coverage_check");
    group
        .sample_size(50)
        .measurement_time(Duration::from_secs(2));
    for n in TOMBSTONE_COUNTS {
        let state = InvalidationState::new();
        let key = CacheKey::kv(b"entry");
        let meta = EntryMeta {
            version: Timestamp::from_millis(1),
            tags: vec![
                Bytes::from_static(b"a"),
                Bytes::from_static(b"b"),
                Bytes::from_static(b"c"),
            ],
            depends_on: vec![InvalidationId::tag(b"dep-tag")],
            ..EntryMeta::default()
        };
        let plan = state.plan_purge(
            &PurgeTargets {
                tags: (0..n)
                    .map(|i| Bytes::from(format!("unrelated-{i}")))
                    .collect(),
                ..Default::default()
            },
            Timestamp::from_millis(2),
            0,
        );
        for r in &plan.records {
            state.apply(r);
        }
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| std::hint::black_box(state.coverage(&key, &meta)))
        });
    }
    group.finish();
}

fn purge_tag(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("purge_tag");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(5));
    for covered in [0usize, 1_000_000] {
        let node = rt.block_on(node(1 << 30));
        rt.block_on(async {
            for i in 0..covered {
                let version = node.cache.begin_fill();
                let e = Entry {
                    meta: EntryMeta {
                        version,
                        born_ms: version.millis(),
                        ttl_ms: 3_600_000,
                        tags: vec![Bytes::from_static(b"big")],
                        ..EntryMeta::default()
                    },
                    body: Bytes::from_static(b"0123456789"),
                };
                node.cache
                    .set(CacheKey::kv(format!("e{i}").as_bytes()), e)
                    .await
                    .unwrap();
            }
        });
        let targets = PurgeTargets {
            tags: vec![Bytes::from_static(b"big")],
            ..Default::default()
        };
        group.bench_with_input(
            BenchmarkId::new("durable_call", covered),
            &covered,
            |b, _| {
                b.to_async(&rt)
                    .iter(|| async { node.cache.purge(&targets).await.unwrap() })
            },
        );
        let state = InvalidationState::new();
        group.bench_with_input(
            BenchmarkId::new("in_memory_plan_and_apply", covered),
            &covered,
            |b, _| {
                let mut t = 1u64;
                b.iter(|| {
                    t += 1;
                    let plan = state.plan_purge(&targets, Timestamp::from_u64(t), 0);
                    plan.records.iter().for_each(|r| state.apply(r));
                })
            },
        );
    }
    group.finish();
}

/// Floors measured in the same run, to read the figures above against: a bare foyer
/// memory hit (no coverage or freshness check) and a small append + fsync on the same
/// file system (what a durable purge cannot go below).
fn baselines(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("baseline");
    group
        .sample_size(30)
        .measurement_time(Duration::from_secs(3));
    let node = rt.block_on(node(256 << 20));
    let key = CacheKey::kv(b"k");
    rt.block_on(async {
        node.cache
            .set(key.clone(), entry(&node.cache, &["a", "b", "c"]))
            .await
            .unwrap()
    });
    let store = node.cache.store().clone();
    group.bench_function("foyer_memory_get", |b| {
        b.to_async(&rt)
            .iter(|| async { std::hint::black_box(store.get(&key).await.is_some()) })
    });
    let dir = tempfile::tempdir().unwrap();
    let mut file = std::fs::File::create(dir.path().join("fsync-probe")).unwrap();
    group.bench_function("append_40_bytes_and_fsync", |b| {
        use std::io::Write;
        b.iter(|| {
            file.write_all(&[7u8; 40]).unwrap();
            file.sync_data().unwrap();
        })
    });
    group.finish();
}

criterion_group!(benches, baselines, coverage_check, lookup_hit, purge_tag);
criterion_main!(benches);
