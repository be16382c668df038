//! `fanz-client` against real `fanz-node` processes: a lone node, a 3-node cluster,
//! an owner SIGKILLed under load, and bad answers and bad input on the client side.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::cluster::*;
use common::*;
use fanz_client::{Client, Dependency, Error, Purge, RetryPolicy, SetOptions};
use http::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn admin_seed(node: &TestNode) -> String {
    format!("http://{}", node.admin)
}

async fn client_for(nodes: &[&TestNode]) -> Client {
    Client::builder()
        .seeds(nodes.iter().map(|n| admin_seed(n)))
        .token(TOKEN)
        .timeout(Duration::from_secs(3))
        .build()
        .await
        .expect("client connects")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_node_stores_reads_and_deletes_with_metadata() {
    let (_tmp, data) = data_dir();
    let node = TestNode::start(&data, &[]);
    let client = client_for(&[&node]).await;

    assert_eq!(client.get("user:1").await.unwrap(), None);
    let options = SetOptions::ttl(Duration::from_secs(60))
        .tag("users")
        .tag("team-a");
    client.set("user:1", "Ada", &options).await.unwrap();
    let first = client.get_with_meta("user:1").await.unwrap().unwrap();
    assert_eq!(first.value, Bytes::from("Ada"));
    assert_eq!(first.tags, vec!["team-a".to_string(), "users".to_string()]);
    assert!(first.age < Duration::from_secs(5));

    client
        .set("user:1", "Ada Lovelace", &options)
        .await
        .unwrap();
    let second = client.get_with_meta("user:1").await.unwrap().unwrap();
    assert_eq!(second.value, Bytes::from("Ada Lovelace"));
    assert!(
        second.version > first.version,
        "an overwrite has a later version"
    );

    // Keys with bytes that need encoding in a URL path.
    let odd = "a key/with spaces?&%#";
    client
        .set(odd, "odd", &SetOptions::default())
        .await
        .unwrap();
    assert_eq!(client.get(odd).await.unwrap(), Some(Bytes::from("odd")));

    client.delete("user:1").await.unwrap();
    assert_eq!(client.get("user:1").await.unwrap(), None);

    let pairs: Vec<(String, Bytes)> = (0..20)
        .map(|i| (format!("m{i}"), Bytes::from(format!("v{i}"))))
        .collect();
    client
        .set_many(&pairs, &SetOptions::default())
        .await
        .unwrap();
    let keys: Vec<String> = (0..22).map(|i| format!("m{i}")).collect();
    let values = client.get_many(&keys).await.unwrap();
    for (i, v) in values.iter().enumerate() {
        let expected = (i < 20).then(|| Bytes::from(format!("v{i}")));
        assert_eq!(v, &expected, "key m{i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serde_values_round_trip_as_json() {
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct User {
        name: String,
        logins: u32,
    }
    let (_tmp, data) = data_dir();
    let node = TestNode::start(&data, &[]);
    let client = client_for(&[&node]).await;
    let ada = User {
        name: "Ada".into(),
        logins: 3,
    };
    client
        .set_json("user:ada", &ada, &SetOptions::default())
        .await
        .unwrap();
    assert_eq!(
        client.get_json::<User>("user:ada").await.unwrap(),
        Some(ada)
    );
    let meta = client.get_with_meta("user:ada").await.unwrap().unwrap();
    assert_eq!(meta.content_type.as_deref(), Some("application/json"));
    assert_eq!(client.get_json::<User>("nobody").await.unwrap(), None);
    client
        .set("broken", "{not json", &SetOptions::default())
        .await
        .unwrap();
    assert!(matches!(
        client.get_json::<User>("broken").await,
        Err(Error::Invalid(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purges_by_tag_and_dependencies_reach_the_values() {
    let (_tmp, data) = data_dir();
    let node = TestNode::start(&data, &[]);
    let client = client_for(&[&node]).await;
    client
        .set("post:1", "hello", &SetOptions::default().tag("posts"))
        .await
        .unwrap();
    client
        .set("post:2", "world", &SetOptions::default().tag("posts"))
        .await
        .unwrap();
    client
        .set(
            "page:home",
            "<h1>hello</h1>",
            &SetOptions::default().depends_on(Dependency::Key(b"post:1".to_vec())),
        )
        .await
        .unwrap();
    let report = client.purge(&Purge::tag("posts")).await.unwrap();
    assert!(report.dependents_invalidated >= 1, "{:?}", report.raw);
    for key in ["post:1", "post:2", "page:home"] {
        assert_eq!(
            client.get(key).await.unwrap(),
            None,
            "{key} after the purge"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_is_a_typed_auth_error_not_a_retry_storm() {
    let (_tmp, data) = data_dir();
    let node = TestNode::start(&data, &[]);
    let started = Instant::now();
    let err = Client::builder()
        .seeds([admin_seed(&node)])
        .token("wrong")
        .retry(RetryPolicy {
            max_attempts: 10,
            base: Duration::from_millis(200),
            max: Duration::from_secs(2),
        })
        .build()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Auth(_)), "{err:?}");
    assert!(!err.is_retryable());
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "an auth failure was retried: {:?}",
        started.elapsed()
    );

    // No token at all: the same typed error.
    let err = Client::builder()
        .seeds([admin_seed(&node)])
        .build()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Auth(_)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_keys_and_values_are_refused_before_sending() {
    let (_tmp, data) = data_dir();
    let node = TestNode::start(&data, &["--max-value-size", "1KiB"]);
    let client = client_for(&[&node]).await;
    let long_key = "k".repeat(8193);
    assert!(matches!(
        client.get(&long_key).await,
        Err(Error::TooLarge {
            what: "key",
            size: 8193,
            limit: 8192
        })
    ));
    assert!(matches!(
        client
            .set("k", vec![0u8; 2048], &SetOptions::default())
            .await,
        Err(Error::TooLarge {
            what: "value",
            size: 2048,
            limit: 1024
        })
    ));
    assert!(matches!(client.get("").await, Err(Error::Invalid(_))));
    assert!(matches!(
        client
            .set("k", "v", &SetOptions::default().tag("two words"))
            .await,
        Err(Error::Invalid(_))
    ));
    // Nothing was stored by the refused write.
    assert_eq!(client.get("k").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_or_set_runs_the_producer_once_for_concurrent_callers() {
    let (_tmp, data) = data_dir();
    let node = TestNode::start(&data, &[]);
    let client = client_for(&[&node]).await;
    let runs = Arc::new(AtomicUsize::new(0));
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (client, runs) = (client.clone(), runs.clone());
        callers.spawn(async move {
            client
                .get_or_set("expensive", &SetOptions::default(), || async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    Ok::<_, String>(Bytes::from("computed"))
                })
                .await
        });
    }
    while let Some(result) = callers.join_next().await {
        assert_eq!(result.unwrap().unwrap(), Bytes::from("computed"));
    }
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "the producer ran more than once"
    );
    // Stored: a later call finds it without producing.
    let again = client
        .get_or_set("expensive", &SetOptions::default(), || async {
            Err::<Bytes, _>("must not run")
        })
        .await
        .unwrap();
    assert_eq!(again, Bytes::from("computed"));
    // A failing producer is a typed error, and nothing is stored.
    let err = client
        .get_or_set("broken", &SetOptions::default(), || async {
            Err::<Bytes, _>("db down")
        })
        .await
        .unwrap_err();
    assert_eq!(err, Error::Producer("db down".into()));
    assert_eq!(client.get("broken").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_seeds_fail_within_the_connect_timeout() {
    // A closed port: refused at once.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let started = Instant::now();
    let err = Client::builder()
        .seeds([format!("http://{closed}")])
        .connect_timeout(Duration::from_millis(500))
        .build()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unreachable(_)), "{err:?}");
    assert!(err.is_retryable());
    assert!(started.elapsed() < Duration::from_secs(2));

    // A listener that accepts and never answers: the connect timeout bounds it.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let started = Instant::now();
    let err = Client::builder()
        .seeds([format!("http://{silent_addr}")])
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_millis(500))
        .build()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout(_)), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "hung for {:?}",
        started.elapsed()
    );
    holder.abort();

    assert!(matches!(
        Client::builder().build().await,
        Err(Error::Config(_))
    ));
}

/// A stand-in seed whose `/cluster` lists a bad node and a real one, and the bad
/// node, which answers every request with a body cut short.
async fn fake_cluster(real_http: SocketAddr) -> (SocketAddr, Arc<AtomicUsize>) {
    let bad = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bad_addr = bad.local_addr().unwrap();
    let bad_hits = Arc::new(AtomicUsize::new(0));
    let hits = bad_hits.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = bad.accept().await {
            hits.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\netag: \"1\"\r\ncontent-length: 100\r\n\r\ncut short",
                    )
                    .await;
            });
        }
    });
    let seed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let seed_addr = seed.local_addr().unwrap();
    let report = serde_json::json!({
        "node_id": "seed", "replicas": 2, "kv_prefix": "/kv/",
        "max_key_size": 8192, "max_value_size": 1048576,
        "members": [
            {"id": "bad", "http": bad_addr.to_string(), "state": "alive"},
            {"id": "real", "http": real_http.to_string(), "state": "alive"},
        ],
    })
    .to_string();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = seed.accept().await {
            let report = report.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{report}",
                        report.len()
                    );
                    if s.write_all(answer.as_bytes()).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (seed_addr, bad_hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_sending_a_malformed_answer_is_skipped_for_a_replica() {
    let (_tmp, data) = data_dir();
    let node = TestNode::start(&data, &[]);
    let (seed, bad_hits) = fake_cluster(node.http).await;
    let client = Client::builder()
        .seeds([format!("http://{seed}")])
        .refresh_interval(Duration::from_secs(3600))
        .build()
        .await
        .unwrap();
    // A key whose primary owner is the bad node.
    let key = (0..)
        .map(|i| format!("key{i}"))
        .find(|k| client.owners(k)[0].id == "bad")
        .unwrap();
    // Written through the real node directly, then read through the client.
    let r = send(
        Method::PUT,
        &node.url(&format!("/kv/{key}")),
        &[],
        "the value",
    )
    .await;
    assert!(r.status.is_success(), "{}", r.text());
    let value = client.get(&key).await.unwrap();
    assert_eq!(value, Some(Bytes::from("the value")));
    assert!(
        bad_hits.load(Ordering::SeqCst) >= 1,
        "the bad node was never asked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_client_writes_each_key_to_its_owners() {
    let (_tmp, nodes) = start_cluster(3, FAST).await;
    let client = client_for(&nodes.iter().map(|n| &n.node).collect::<Vec<_>>()).await;
    let members = client.members().await.unwrap();
    assert_eq!(members.len(), 3);
    assert!(members.iter().all(|m| m.state == "alive"), "{members:?}");
    for i in 0..30 {
        let key = format!("key{i}");
        client
            .set(&key, format!("value {i}"), &SetOptions::default())
            .await
            .unwrap();
        let owners: Vec<String> = client.owners(&key).into_iter().map(|m| m.id).collect();
        assert_eq!(owners.len(), 2);
        // The client's ring is the nodes' ring: the owners it names hold the value
        // (a hit), the third node does not (it forwards).
        for n in &nodes {
            let r = send(Method::GET, &n.node.url(&format!("/kv/{key}")), &[], "").await;
            assert_eq!(r.text(), format!("value {i}"));
            let status = r.header("cache-status").unwrap_or_default();
            if owners.contains(&n.id) {
                assert!(status.contains("hit"), "owner {} of {key}: {status}", n.id);
            } else {
                assert!(
                    status.contains("fwd="),
                    "non-owner {} of {key}: {status}",
                    n.id
                );
            }
        }
        assert_eq!(
            client.get(&key).await.unwrap(),
            Some(Bytes::from(format!("value {i}")))
        );
    }
    let report = client.purge(&Purge::key("key3")).await.unwrap();
    assert!(report.purge_id.is_some(), "{:?}", report.raw);
    assert_eq!(client.get("key3").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_owner_killed_mid_workload_costs_under_a_tenth_of_a_percent() {
    const OPS: usize = 10_000;
    const WORKERS: usize = 4;
    const KEYS_PER_WORKER: usize = 50;
    let (_tmp, mut nodes) = start_cluster(3, FAST).await;
    let client = Client::builder()
        .seeds(nodes.iter().map(|n| admin_seed(&n.node)))
        .token(TOKEN)
        .timeout(Duration::from_secs(2))
        .build()
        .await
        .unwrap();
    let done = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..WORKERS {
        let (client, done) = (client.clone(), done.clone());
        workers.spawn(async move {
            // The last value acknowledged for each key: a read must return it.
            let mut acked: HashMap<String, String> = HashMap::new();
            let (mut failed, mut wrong) = (0usize, Vec::new());
            let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ w as u64;
            for op in 0..OPS / WORKERS {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let key = format!("w{w}-k{}", rng % KEYS_PER_WORKER as u64);
                if op < KEYS_PER_WORKER || rng % 10 < 3 {
                    let key = if op < KEYS_PER_WORKER {
                        format!("w{w}-k{op}")
                    } else {
                        key
                    };
                    let value = format!("{key}@{op}");
                    match client
                        .set(&key, value.clone(), &SetOptions::default())
                        .await
                    {
                        Ok(()) => {
                            acked.insert(key, value);
                        }
                        Err(_) => failed += 1,
                    }
                } else {
                    match client.get(&key).await {
                        Ok(got) => {
                            let got = got.map(|b| String::from_utf8_lossy(&b).into_owned());
                            if got.as_ref() != acked.get(&key) {
                                wrong.push(format!(
                                    "{key}: read {got:?}, last acknowledged {:?}",
                                    acked.get(&key)
                                ));
                            }
                        }
                        Err(_) => failed += 1,
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            (failed, wrong)
        });
    }
    // Kill a node a quarter of the way in: it owns about two thirds of the keys.
    let started = Instant::now();
    while done.load(Ordering::Relaxed) < OPS / 4 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "workload stalled"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    nodes[1].node.kill();
    let (mut failed, mut wrong) = (0, Vec::new());
    while let Some(joined) = workers.join_next().await {
        let (f, w) = joined.unwrap();
        failed += f;
        wrong.extend(w);
    }
    eprintln!(
        "{OPS} operations, owner killed after {}: {failed} failed, {} wrong, {:?}",
        OPS / 4,
        wrong.len(),
        started.elapsed()
    );
    assert!(wrong.is_empty(), "wrong or stale reads: {wrong:#?}");
    assert!(
        failed * 1000 < OPS,
        "{failed} of {OPS} operations failed (limit 0.1%)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_near_cache_never_serves_a_value_after_an_acknowledged_purge() {
    let (_tmp, mut nodes) = start_cluster(3, FAST).await;
    // The reader keeps a near cache and watches n1; the purger goes through n3.
    let reader = Client::builder()
        .seeds([admin_seed(&nodes[0].node)])
        .token(TOKEN)
        .near_cache(1000, Duration::from_secs(60))
        .build()
        .await
        .unwrap();
    let purger = client_for(&[&nodes[2].node]).await;
    let tagged = SetOptions::default().tag("catalog");
    for i in 0..20 {
        purger
            .set(format!("item{i}"), format!("v{i}"), &tagged)
            .await
            .unwrap();
    }
    // The watch is up once heartbeats arrive; reads then fill the near cache.
    let deadline = Instant::now() + Duration::from_secs(5);
    while reader.near_cache_len() < 20 {
        assert!(Instant::now() < deadline, "the near cache never filled");
        for i in 0..20 {
            assert_eq!(
                reader.get(format!("item{i}")).await.unwrap(),
                Some(Bytes::from(format!("v{i}")))
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A purge of one key, acknowledged by every member: the reader's next read
    // (served from its near cache a moment ago) must not return the value.
    for i in 0..10 {
        let key = format!("item{i}");
        assert!(reader.get(&key).await.unwrap().is_some());
        purger.purge(&Purge::key(key.clone())).await.unwrap();
        assert_eq!(
            reader.get(&key).await.unwrap(),
            None,
            "{key} served after its purge"
        );
    }
    // A tag purge reaches everything it covers.
    for i in 10..20 {
        assert!(reader.get(format!("item{i}")).await.unwrap().is_some());
    }
    purger.purge(&Purge::tag("catalog")).await.unwrap();
    for i in 10..20 {
        assert_eq!(
            reader.get(format!("item{i}")).await.unwrap(),
            None,
            "item{i} served after its tag was purged"
        );
    }
    // An overwrite by another client reaches the near cache within moments.
    purger
        .set("fresh", "old", &SetOptions::default())
        .await
        .unwrap();
    assert_eq!(reader.get("fresh").await.unwrap(), Some(Bytes::from("old")));
    purger
        .set("fresh", "new", &SetOptions::default())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    while reader.get("fresh").await.unwrap() != Some(Bytes::from("new")) {
        assert!(
            Instant::now() < deadline,
            "the overwrite never reached the near cache"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The watched node dies: the near cache empties and serves nothing. (A read
    // that raced an invalidation is not kept: read until one is.)
    let (limit, every) = (Duration::from_secs(5), Duration::from_millis(20));
    eventually(limit, every, "the near cache keeps a value", || async {
        reader.get("fresh").await.unwrap();
        match reader.near_cache_len() {
            0 => Err("an empty near cache"),
            _ => Ok(()),
        }
    })
    .await;
    nodes[0].node.kill();
    let (limit, every) = (Duration::from_secs(3), Duration::from_millis(50));
    eventually(limit, every, "the near cache dropped", || async {
        match reader.near_cache_len() {
            0 => Ok(()),
            n => Err(n),
        }
    })
    .await;
}

/// The near cache's process stalls (its runtime's only thread is blocked) just
/// before a purge: the purge is acknowledged only once the near cache confirmed it,
/// or, when the stall outlasts the node's patience (500 ms), once the node dropped
/// the watcher, whose near cache then no longer serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_waits_for_a_near_cache_that_is_slow_to_confirm() {
    let (_tmp, data) = data_dir();
    let node = TestNode::start(&data, &[]);
    let reader_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let seed = admin_seed(&node);
    let reader = reader_rt
        .spawn(async move {
            Client::builder()
                .seeds([seed])
                .token(TOKEN)
                .near_cache(100, Duration::from_secs(60))
                .build()
                .await
        })
        .await
        .unwrap()
        .unwrap();
    let read = |key: &'static str| {
        let reader = reader.clone();
        reader_rt.spawn(async move { reader.get(key).await.unwrap() })
    };
    let purger = client_for(&[&node]).await;
    for (stall, key) in [
        (Duration::from_millis(300), "a"),
        (Duration::from_millis(900), "b"),
    ] {
        purger
            .set(key, "cached", &SetOptions::default())
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while read(key).await.unwrap().is_none() || reader.near_cache_len() == 0 {
            assert!(Instant::now() < deadline, "the near cache never held {key}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Cached now (the watch is up, the value read once more).
        read(key).await.unwrap();
        assert!(reader.near_cache_len() > 0);
        reader_rt.spawn(async move { std::thread::sleep(stall) });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let started = Instant::now();
        purger.purge(&Purge::key(key)).await.unwrap();
        let took = started.elapsed();
        let expected = stall.min(Duration::from_millis(500)) - Duration::from_millis(60);
        assert!(
            took >= expected,
            "the purge of {key} was acknowledged after {took:?}, while the near cache was stalled for {stall:?}"
        );
        assert_eq!(
            read(key).await.unwrap(),
            None,
            "{key} served after its purge"
        );
    }
    reader_rt.shutdown_background();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_speaks_tls_to_nodes_it_trusts_and_to_no_others() {
    let (tmp, data) = data_dir();
    // For 127.0.0.1 (an IP SAN): the client connects to the address the cluster
    // reports.
    let (cert, key, _) = self_signed_certificate(tmp.path(), "node", "127.0.0.1");
    let (other, _, _) = self_signed_certificate(tmp.path(), "other", "127.0.0.1");
    let node = TestNode::start_tls(&data, &cert, &key, &[]);
    let client = Client::builder()
        .seeds([admin_seed(&node)])
        .token(TOKEN)
        .tls_ca_file(&cert)
        .build()
        .await
        .unwrap();
    client
        .set("secret", "over tls", &SetOptions::default())
        .await
        .unwrap();
    assert_eq!(
        client.get("secret").await.unwrap(),
        Some(Bytes::from("over tls"))
    );

    // Trusting another certificate: the node is not usable, and the error says so.
    let distrustful = Client::builder()
        .seeds([admin_seed(&node)])
        .token(TOKEN)
        .tls_ca_file(&other)
        .retry(RetryPolicy::none())
        .build()
        .await
        .unwrap();
    let err = distrustful.get("secret").await.unwrap_err();
    assert!(
        matches!(&err, Error::Unreachable(m) if m.contains("TLS")),
        "{err:?}"
    );

    // Without TLS configured, a plain-HTTP client cannot talk to a TLS port either.
    let plain = Client::builder()
        .seeds([admin_seed(&node)])
        .token(TOKEN)
        .retry(RetryPolicy::none())
        .build()
        .await
        .unwrap();
    assert!(plain.get("secret").await.is_err());

    // A CA file with no certificate in it is a configuration error.
    let empty = tmp.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    assert!(matches!(
        Client::builder()
            .seeds([admin_seed(&node)])
            .tls_ca_file(&empty)
            .build()
            .await,
        Err(Error::Config(_))
    ));
}

/// An owner down while its key is overwritten comes back with the old value in its
/// disk tier: it must answer with the new one (the replicated overwrite marks its
/// copy stale, so it reads the new value from the other owner), never the old.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_that_missed_an_overwrite_never_serves_the_old_value() {
    let (_tmp, mut nodes) = start_cluster(3, FAST).await;
    let client = client_for(&nodes.iter().map(|n| &n.node).collect::<Vec<_>>()).await;
    // A key that n2 owns, n1 too or not.
    let key = (0..)
        .map(|i| format!("key{i}"))
        .find(|k| client.owners(k).iter().any(|m| m.id == "n2"))
        .unwrap();
    client
        .set(&key, "old", &SetOptions::default())
        .await
        .unwrap();
    nodes[1].node.wait_disk_written(1).await;
    nodes[1].node.kill();
    wait_until(&nodes[0].node, Duration::from_secs(10), "n2 down", |s| {
        has(s, "n2", "down")
    })
    .await;
    client
        .set(&key, "new", &SetOptions::default())
        .await
        .unwrap();
    nodes[1].node.restart();
    for n in [0, 2] {
        wait_until(&nodes[n].node, Duration::from_secs(10), "n2 alive", |s| {
            has(s, "n2", "alive")
        })
        .await;
    }
    let url = nodes[1].node.url(&format!("/kv/{key}"));
    let r = send(Method::GET, &url, &[], "").await;
    assert_eq!(
        r.text(),
        "new",
        "the restarted owner served {:?} ({:?}); its log:\n{}",
        r.text(),
        r.header("cache-status"),
        nodes[1].node.log_text()
    );
}
