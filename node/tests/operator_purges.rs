//! Purges an operator reaches for first (issue 20, part 1): every HTTP object of a
//! host, under a URL prefix, or all of them, through the admin API and the main
//! port's `PURGE` with a trailing `*`; every KV key. Each is one prefix tombstone
//! (O(1) in the objects it covers), and bad requests change nothing.

mod common;

use common::origin::{numbered_origin, TestOrigin};
use common::*;
use http::{Method, StatusCode};

const HOSTS: [&str; 2] = ["a.example", "b.example"];
const PATHS: [&str; 3] = ["/img/1", "/img/2", "/css/1"];

/// An origin that says which path and query it was asked for, and how often.
async fn origin() -> TestOrigin {
    numbered_origin().await
}

fn node_for(origin: &TestOrigin) -> (tempfile::TempDir, TestNode) {
    let (tmp, data) = data_dir();
    let url = origin.url();
    (tmp, TestNode::start(&data, &["--origin", url.as_str()]))
}

/// Fetches `host` `path` and says whether the node answered it from its cache
/// (fresh). Whatever it answers is cached again for the next check. An empty host
/// sends none: the request's authority (the node's address) names the origin, as
/// HTTP/2 and HTTP/3 require.
async fn served_from_cache(node: &TestNode, host: &str, path: &str) -> bool {
    let headers: &[(&str, &str)] = if host.is_empty() {
        &[]
    } else {
        &[("host", host)]
    };
    let r = request(node, Method::GET, path, headers, "").await;
    assert_eq!(r.status, StatusCode::OK, "{host}{path}: {}", r.text());
    let status = r.header("cache-status").unwrap_or_default();
    status.starts_with("fanz; hit") && !status.contains("ttl=-")
}

/// Every object of every host, cached.
async fn warm(node: &TestNode) {
    for host in HOSTS {
        for path in PATHS {
            served_from_cache(node, host, path).await;
            assert!(served_from_cache(node, host, path).await, "{host}{path}");
        }
    }
}

/// Which objects were served from the cache, as `host path` strings.
async fn cached(node: &TestNode) -> Vec<String> {
    let mut hits = Vec::new();
    for host in HOSTS {
        for path in PATHS {
            if served_from_cache(node, host, path).await {
                hits.push(format!("{host}{path}"));
            }
        }
    }
    hits
}

async fn purged(node: &TestNode, body: &str) -> serde_json::Value {
    let r = admin_purge(node, body).await;
    assert_eq!(r.status, StatusCode::OK, "{body}: {}", r.text());
    r.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http_objects_are_purged_by_host_by_url_prefix_and_all_at_once() {
    let origin = origin().await;
    let (_tmp, node) = node_for(&origin);
    assert_eq!(put(&node, "k", "v", &[]).await.status, StatusCode::CREATED);
    warm(&node).await;

    // One host: both schemes' objects of it, nothing of the other host.
    let answer = purged(&node, r#"{"hosts":["A.example"]}"#).await;
    assert!(
        answer["tombstones"].as_u64().unwrap() <= 2,
        "a host purge is a prefix tombstone per scheme, whatever it covers: {answer}"
    );
    assert_eq!(
        cached(&node).await,
        ["b.example/img/1", "b.example/img/2", "b.example/css/1"]
    );

    // A URL prefix.
    let answer = purged(&node, r#"{"url_prefixes":["http://b.example/img/"]}"#).await;
    assert_eq!(answer["tombstones"], 1, "{answer}");
    assert_eq!(
        cached(&node).await,
        [
            "a.example/img/1",
            "a.example/img/2",
            "a.example/css/1",
            "b.example/css/1"
        ]
    );

    // Every HTTP object; KV keys are not HTTP objects.
    let answer = purged(&node, r#"{"all":true}"#).await;
    assert_eq!(answer["tombstones"], 1, "{answer}");
    assert!(cached(&node).await.is_empty());
    assert_eq!(get(&node, "k").await.status, StatusCode::OK);

    // Every KV key: the empty key prefix. HTTP objects stay.
    purged(&node, r#"{"prefixes":[""]}"#).await;
    assert_eq!(get(&node, "k").await.status, StatusCode::NOT_FOUND);
    assert_eq!(cached(&node).await.len(), 6);

    // Soft: a host's objects are stale, not gone.
    purged(&node, r#"{"hosts":["a.example"],"soft":true}"#).await;
    assert_eq!(
        cached(&node).await,
        ["b.example/img/1", "b.example/img/2", "b.example/css/1"]
    );
}

/// `PURGE` over the node's protocol, with the token; `host` as in
/// [`served_from_cache`].
async fn purge_method(node: &TestNode, host: &str, path: &str) -> Reply {
    let bearer = format!("Bearer {TOKEN}");
    let mut headers = vec![("authorization", bearer.as_str())];
    if !host.is_empty() {
        headers.push(("host", host));
    }
    request(
        node,
        Method::from_bytes(b"PURGE").unwrap(),
        path,
        &headers,
        "",
    )
    .await
}

/// Which of `PATHS` the node serves from its cache for requests without a Host.
async fn cached_paths(node: &TestNode) -> Vec<&'static str> {
    let mut hits = Vec::new();
    for path in PATHS {
        if served_from_cache(node, "", path).await {
            hits.push(path);
        }
    }
    hits
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn purge_with_a_trailing_star_purges_a_prefix_on_the_main_port() {
    for_each_protocol(async |proto| {
        let origin = origin().await;
        let (_tmp, node) = node_for(&origin);
        let node = node.with_proto(proto);
        for path in PATHS {
            served_from_cache(&node, "", path).await;
        }
        assert_eq!(cached_paths(&node).await, PATHS, "{proto:?}");
        let r = purge_method(&node, "", "/img/*").await;
        assert_eq!(r.status, StatusCode::OK, "{proto:?}: {}", r.text());
        assert_eq!(cached_paths(&node).await, ["/css/1"], "{proto:?}");
        let r = purge_method(&node, "", "/*").await;
        assert_eq!(r.status, StatusCode::OK, "{proto:?}: {}", r.text());
        assert!(cached_paths(&node).await.is_empty(), "{proto:?}");
        // KV keys by prefix, and every KV key.
        for key in ["user:1", "user:2", "team:1"] {
            put(&node, key, "v", &[]).await;
        }
        let r = purge_method(&node, "", "/kv/user:*").await;
        assert_eq!(r.status, StatusCode::OK, "{proto:?}: {}", r.text());
        assert_eq!(get(&node, "user:1").await.status, StatusCode::NOT_FOUND);
        assert_eq!(get(&node, "user:2").await.status, StatusCode::NOT_FOUND);
        assert_eq!(get(&node, "team:1").await.status, StatusCode::OK);
        let r = purge_method(&node, "", "/kv/*").await;
        assert_eq!(r.status, StatusCode::OK, "{proto:?}: {}", r.text());
        assert_eq!(get(&node, "team:1").await.status, StatusCode::NOT_FOUND);
        // Without the token: refused, nothing purged.
        let r = request(&node, Method::from_bytes(b"PURGE").unwrap(), "/*", &[], "").await;
        assert!(r.status.is_client_error(), "{proto:?}: {}", r.status);
        assert_eq!(cached_paths(&node).await, PATHS, "{proto:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn purge_with_a_star_covers_only_the_host_it_names() {
    // HTTP/1.1, where the Host header names the origin.
    let origin = origin().await;
    let (_tmp, node) = node_for(&origin);
    warm(&node).await;
    let r = purge_method(&node, "a.example", "/img/*").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        cached(&node).await,
        [
            "a.example/css/1",
            "b.example/img/1",
            "b.example/img/2",
            "b.example/css/1"
        ]
    );
    let r = purge_method(&node, "b.example", "/*").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        cached(&node).await,
        ["a.example/img/1", "a.example/img/2", "a.example/css/1"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bad_purge_body_is_refused_with_its_reason_and_changes_nothing() {
    let origin = origin().await;
    let (_tmp, node) = node_for(&origin);
    warm(&node).await;
    for (body, reason) in [
        (r#"{"hostz":["a.example"]}"#, "unknown field"),
        (r#"{"hosts":[""]}"#, "empty"),
        (r#"{"hosts":["a.example/img"]}"#, "host"),
        (r#"{"url_prefixes":["/img/"]}"#, "scheme"),
        (r#"{"url_prefixes":["a.example/img/"]}"#, "scheme"),
        (r#"{"url_prefixes":["ftp://a.example/"]}"#, "scheme"),
        (r#"{"all":true,"tags":["x"]}"#, "all"),
        (r#"{"all":true,"hosts":["a.example"]}"#, "all"),
        (r#"{"all":false}"#, "at least one"),
    ] {
        let r = admin_purge(&node, body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text());
        assert!(r.text().contains(reason), "{body}: {}", r.text());
    }
    assert_eq!(
        cached(&node).await.len(),
        6,
        "a refused purge purged something"
    );
}
