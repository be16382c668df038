//! Criterion bench of the operator's `[[rules]]` on the request path (issue 20):
//! what `Proxy::context` does per request (the target, the first matching rule and
//! its query handling, the primary key) with 0, 1, 100 and 1 000 rules. The rules
//! name other hosts and paths, so the request is checked against every one and
//! matches the last (the worst case for first-match-wins); the 0-rule case is the
//! baseline. "no rule applies" asks for a host no rule names.
//!
//! Run: `cargo bench -p fanz-node --bench rules`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use fanz_node::config::rules::{parse, Rules};
use fanz_node::proxy::key::Target;

/// `n` rules; the last one matches `www.example.com/static/*`.
fn rules(n: usize) -> Rules {
    if n == 0 {
        return Rules::default();
    }
    let mut list: Vec<String> = (1..n)
        .map(|i| {
            format!(
                r#"{{ host = "site{i}.example", path = "/section{i}/*", query = "sort", drop_params = ["utm_*"] }}"#
            )
        })
        .collect();
    list.push(
        r#"{ host = "www.example.com", path = "/static/*", query = "sort", drop_params = ["utm_*", "fbclid"] }"#
            .to_string(),
    );
    parse(&format!("[{}]", list.join(", "))).expect("bench rules parse")
}

fn bench(c: &mut Criterion) {
    let request = http::Request::get("/static/app.js?v=3&utm_source=news")
        .header("host", "www.example.com")
        .body(())
        .unwrap()
        .into_parts()
        .0;
    let unmatched = http::Request::get("/static/app.js?v=3&utm_source=news")
        .header("host", "cdn.example.net")
        .body(())
        .unwrap()
        .into_parts()
        .0;
    let mut group = c.benchmark_group("rules");
    for n in [100usize, 1000] {
        let rules = rules(n);
        group.bench_with_input(
            BenchmarkId::new("no rule applies", n),
            &rules,
            |b, rules| {
                b.iter(|| {
                    let mut target = Target::of(&unmatched, false).unwrap();
                    let rule = target.apply_rules(rules);
                    (target.primary_key(), rule.is_some())
                })
            },
        );
    }
    for n in [0usize, 1, 100, 1000] {
        let rules = rules(n);
        group.bench_with_input(
            BenchmarkId::new("target, rule and key", n),
            &rules,
            |b, rules| {
                b.iter(|| {
                    let mut target = Target::of(&request, false).unwrap();
                    let rule = target.apply_rules(rules);
                    (target.primary_key(), rule.is_some())
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
