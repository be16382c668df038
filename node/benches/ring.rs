//! Criterion bench of key ownership (`fanz_protocol::ring`): the owners of one key
//! (R = 2) with 3, 10, 20 and 100 members of equal weight, and 10 with mixed weights
//! (the `ln` path). Baseline from the same run: hashing the key alone.
//!
//! Run: `cargo bench -p fanz-node --bench ring`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use fanz_protocol::ring::{hash64, Ring, RingMember};

fn ring(n: usize, weight: impl Fn(usize) -> u32) -> Ring {
    Ring::new(
        (0..n).map(|i| RingMember {
            id: format!("node-{i}"),
            weight: weight(i),
        }),
        2,
    )
}

fn bench(c: &mut Criterion) {
    let keys: Vec<Vec<u8>> = (0..1024)
        .map(|i| format!("https://example.com/assets/{i}/app.js").into_bytes())
        .collect();
    let mut group = c.benchmark_group("ring");
    let mut i = 0;
    group.bench_function("hash64 of the key (baseline)", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            hash64(&keys[i])
        })
    });
    for n in [3, 10, 20, 100] {
        let r = ring(n, |_| 1);
        group.bench_with_input(BenchmarkId::new("owners, equal weights", n), &r, |b, r| {
            b.iter(|| {
                i = (i + 1) % keys.len();
                r.owners(&keys[i]).len()
            })
        });
    }
    let r = ring(10, |i| 1 + (i % 3) as u32);
    group.bench_with_input(BenchmarkId::new("owners, mixed weights", 10), &r, |b, r| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            r.owners(&keys[i]).len()
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
