//! The KV API, purge paths and admin API of a real `fanz-node` process.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::*;
use http::{Method, StatusCode};

#[tokio::test]
async fn put_get_head_conditional_and_replace() {
    on_a_fresh_node_per_protocol(&[], async |node| {
        let r = put(
            node,
            "user:1",
            "{\"name\":\"ada\"}",
            &[
                ("content-type", "application/json"),
                ("cache-control", "max-age=300"),
            ],
        )
        .await;
        assert_eq!(r.status, StatusCode::CREATED);
        let etag = r.header("etag").expect("ETag on PUT");

        let r = get(node, "user:1").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.text(), "{\"name\":\"ada\"}");
        assert_eq!(
            r.header("content-type").as_deref(),
            Some("application/json")
        );
        assert_eq!(r.header("etag").as_deref(), Some(etag.as_str()));
        assert_eq!(r.header("age").as_deref(), Some("0"));
        let status = r.header("cache-status").unwrap();
        assert!(status.starts_with("fanz; hit; ttl=29"), "{status}");

        let r = request(node, Method::HEAD, "/kv/user:1", &[], "").await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(r.body.is_empty());
        assert_eq!(r.header("content-length").as_deref(), Some("14"));

        let r = request(
            node,
            Method::GET,
            "/kv/user:1",
            &[("if-none-match", &etag)],
            "",
        )
        .await;
        assert_eq!(r.status, StatusCode::NOT_MODIFIED);
        assert!(r.body.is_empty());

        let r = put(node, "user:1", "v2", &[]).await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "replacing answers 204");
        let new_etag = r.header("etag").unwrap();
        assert_ne!(new_etag, etag);
        let r = request(
            node,
            Method::GET,
            "/kv/user:1",
            &[("if-none-match", &etag)],
            "",
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "old ETag no longer matches");
        assert_eq!(r.text(), "v2");

        // Keys are percent-decoded; a missing key is a 404 with Cache-Status.
        assert_eq!(
            put(node, "a%2Fb", "slash", &[]).await.status,
            StatusCode::CREATED
        );
        assert_eq!(get(node, "a/b").await.text(), "slash");
        let r = get(node, "nope").await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        assert_eq!(
            r.header("cache-status").as_deref(),
            Some("fanz; fwd=uri-miss")
        );
    })
    .await;
}

/// RFC 9110 §13: a write's preconditions are evaluated against the key's current
/// value, and a false one answers 412 and writes nothing. `If-None-Match: *` makes
/// a PUT create-only, `If-Match: <etag>` a compare-and-set.
#[tokio::test]
async fn conditional_writes_are_evaluated_and_a_failed_one_writes_nothing() {
    on_a_fresh_node_per_protocol(&[], async |node| {
        let put_if = async |key: &str, value: &str, condition: (&str, &str)| {
            put(node, key, value, &[condition]).await
        };
        // Create-only: the first succeeds, the second is refused, the value kept.
        let r = put_if("c", "first", ("if-none-match", "*")).await;
        assert_eq!(r.status, StatusCode::CREATED);
        let first = r.header("etag").unwrap();
        let r = put_if("c", "second", ("if-none-match", "*")).await;
        assert_eq!(r.status, StatusCode::PRECONDITION_FAILED, "{}", r.text());
        assert_eq!(r.header("etag").as_deref(), Some(first.as_str()));
        assert_eq!(get(node, "c").await.text(), "first");
        // If-None-Match with the current ETag is false too; with another, true.
        let r = put_if("c", "x", ("if-none-match", &first)).await;
        assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);
        let r = put_if("c", "third", ("if-none-match", "\"other\"")).await;
        assert_eq!(r.status, StatusCode::NO_CONTENT);
        let third = r.header("etag").unwrap();

        // Compare-and-set: an old ETag is refused, the current one accepted.
        let r = put_if("c", "stale", ("if-match", &first)).await;
        assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);
        assert_eq!(r.header("etag").as_deref(), Some(third.as_str()));
        assert_eq!(get(node, "c").await.text(), "third");
        let r = put_if("c", "fourth", ("if-match", &third)).await;
        assert_eq!(r.status, StatusCode::NO_CONTENT);
        assert_eq!(get(node, "c").await.text(), "fourth");
        // A list matches if any member does; `*` matches any current value.
        let fourth = get(node, "c").await.header("etag").unwrap();
        let r = put_if("c", "fifth", ("if-match", &format!("\"nope\", {fourth}"))).await;
        assert_eq!(r.status, StatusCode::NO_CONTENT);
        assert_eq!(
            put_if("c", "sixth", ("if-match", "*")).await.status,
            StatusCode::NO_CONTENT
        );

        // If-Match on an absent key is false: nothing is created.
        let r = put_if("absent", "v", ("if-match", "*")).await;
        assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);
        assert_eq!(get(node, "absent").await.status, StatusCode::NOT_FOUND);

        // DELETE takes the same preconditions.
        let current = get(node, "c").await.header("etag").unwrap();
        let r = request(node, Method::DELETE, "/kv/c", &[("if-match", &first)], "").await;
        assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);
        assert_eq!(get(node, "c").await.text(), "sixth");
        let r = request(node, Method::DELETE, "/kv/c", &[("if-match", &current)], "").await;
        assert_eq!(r.status, StatusCode::NO_CONTENT);
        assert_eq!(get(node, "c").await.status, StatusCode::NOT_FOUND);
        // An expired or deleted value is no current value: create-only works again.
        let r = put_if("c", "again", ("if-none-match", "*")).await;
        assert_eq!(r.status, StatusCode::CREATED);
    })
    .await;
}

/// A KV read answers a single byte range (RFC 9110 §14) as the proxy does: 206 with
/// `Content-Range`, 416 past the end, the whole value for an `If-Range` that does not
/// match; every 200 says `Accept-Ranges: bytes`.
#[tokio::test]
async fn kv_reads_answer_byte_ranges() {
    on_a_fresh_node_per_protocol(&[], async |node| {
        let etag = put(node, "r", "hello world", &[])
            .await
            .header("etag")
            .unwrap();
        let read =
            async |headers: &[(&str, &str)]| request(node, Method::GET, "/kv/r", headers, "").await;
        let whole = read(&[]).await;
        assert_eq!(whole.header("accept-ranges").as_deref(), Some("bytes"));
        let r = read(&[("range", "bytes=0-4")]).await;
        assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
        assert_eq!(r.text(), "hello");
        assert_eq!(r.header("content-range").as_deref(), Some("bytes 0-4/11"));
        assert_eq!(r.header("etag").as_deref(), Some(etag.as_str()));
        let r = read(&[("range", "bytes=-5")]).await;
        assert_eq!(
            (r.status, r.text().as_str()),
            (StatusCode::PARTIAL_CONTENT, "world")
        );
        let r = read(&[("range", "bytes=6-")]).await;
        assert_eq!(
            (r.status, r.text().as_str()),
            (StatusCode::PARTIAL_CONTENT, "world")
        );
        let r = read(&[("range", "bytes=20-")]).await;
        assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(r.header("content-range").as_deref(), Some("bytes */11"));
        let r = read(&[("range", "bytes=0-4"), ("if-range", "\"other\"")]).await;
        assert_eq!(
            (r.status, r.text().as_str()),
            (StatusCode::OK, "hello world")
        );
        let r = read(&[("range", "bytes=0-4"), ("if-range", &etag)]).await;
        assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
        // A matching If-None-Match still wins: 304, no range.
        let r = read(&[("range", "bytes=0-4"), ("if-none-match", &etag)]).await;
        assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    })
    .await;
}

/// Concurrent create-only writes of one key: exactly one is created, every other
/// answers 412, and the value is the winner's.
#[tokio::test]
async fn concurrent_create_only_writes_have_one_winner() {
    let (_tmp, data) = data_dir();
    let node = TestNode::start(&data, &[]);
    for round in 0..20 {
        let key = format!("race-{round}");
        let writers = (0..8).map(|i| {
            let key = key.clone();
            let node = &node;
            async move {
                let value = format!("writer {i}");
                let r = put(node, &key, &value, &[("if-none-match", "*")]).await;
                (r.status, value)
            }
        });
        let answers = join_all(writers).await;
        let won: Vec<_> = answers
            .iter()
            .filter(|(s, _)| *s == StatusCode::CREATED)
            .collect();
        assert_eq!(won.len(), 1, "round {round}: {answers:?}");
        assert!(
            answers
                .iter()
                .all(|(s, _)| *s == StatusCode::CREATED || *s == StatusCode::PRECONDITION_FAILED),
            "round {round}: {answers:?}"
        );
        assert_eq!(get(&node, &key).await.text(), won[0].1);
    }
}

#[tokio::test]
async fn tag_dependency_and_transitive_purges() {
    on_a_fresh_node_per_protocol(&[], async |node| {
        // C is tagged; B depends on C; A depends on B; D depends on the tag directly.
        put(node, "c", "c", &[("surrogate-key", "team-a shared")]).await;
        put(node, "b", "b", &[("fanz-depends-on", "c")]).await;
        put(node, "a", "a", &[("fanz-depends-on", "b")]).await;
        put(node, "d", "d", &[("fanz-depends-on", "tag:team-a")]).await;
        put(node, "other", "o", &[("surrogate-key", "shared")]).await;

        let r = admin_purge(node, r#"{"tags":["team-a"]}"#).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        let report = r.json();
        assert_eq!(report["durable"], true);
        assert!(
            report["dependents_invalidated"].as_u64().unwrap() >= 2,
            "{report}"
        );
        for key in ["a", "b", "c", "d"] {
            assert_eq!(
                get(node, key).await.status,
                StatusCode::NOT_FOUND,
                "{key} survived the purge"
            );
        }
        assert_eq!(
            get(node, "other").await.status,
            StatusCode::OK,
            "a different tag's entry was purged"
        );
    })
    .await;
}

#[tokio::test]
async fn overwrite_and_delete_invalidate_dependents() {
    on_a_fresh_node_per_protocol(&[], async |node| {
        put(node, "profile", "v1", &[]).await;
        put(
            node,
            "page",
            "rendered from v1",
            &[("fanz-depends-on", "profile")],
        )
        .await;

        let r = put(node, "profile", "v2", &[]).await;
        assert_eq!(r.header("fanz-invalidated").as_deref(), Some("1"));
        assert_eq!(
            get(node, "page").await.status,
            StatusCode::NOT_FOUND,
            "dependent survived an overwrite"
        );
        assert_eq!(get(node, "profile").await.text(), "v2");

        put(
            node,
            "page",
            "rendered from v2",
            &[("fanz-depends-on", "profile")],
        )
        .await;
        let r = request(node, Method::DELETE, "/kv/profile", &[], "").await;
        assert_eq!(r.status, StatusCode::NO_CONTENT);
        assert_eq!(get(node, "profile").await.status, StatusCode::NOT_FOUND);
        assert_eq!(
            get(node, "page").await.status,
            StatusCode::NOT_FOUND,
            "dependent survived a delete"
        );
    })
    .await;
}

#[tokio::test]
async fn purge_by_prefix_key_and_the_purge_method() {
    on_a_fresh_node_per_protocol(&[], async |node| {
        for key in ["user:1", "user:2", "userx", "team:1"] {
            put(node, key, key, &[("surrogate-key", "all")]).await;
        }
        let r = admin_purge(node, r#"{"prefixes":["user:"],"keys":["team:1"]}"#).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert_eq!(get(node, "user:1").await.status, StatusCode::NOT_FOUND);
        assert_eq!(get(node, "user:2").await.status, StatusCode::NOT_FOUND);
        assert_eq!(get(node, "team:1").await.status, StatusCode::NOT_FOUND);
        assert_eq!(get(node, "userx").await.status, StatusCode::OK);

        // PURGE with Surrogate-Key purges tags; PURGE on a key purges the key.
        let bearer = format!("Bearer {TOKEN}");
        put(node, "t1", "x", &[("surrogate-key", "red")]).await;
        put(node, "t2", "x", &[("surrogate-key", "blue")]).await;
        let r = request(
            node,
            Method::from_bytes(b"PURGE").unwrap(),
            "/",
            &[("authorization", &bearer), ("surrogate-key", "red")],
            "",
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert_eq!(get(node, "t1").await.status, StatusCode::NOT_FOUND);
        assert_eq!(get(node, "t2").await.status, StatusCode::OK);
        let r = request(
            node,
            Method::from_bytes(b"PURGE").unwrap(),
            "/kv/t2",
            &[("authorization", &bearer)],
            "",
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(get(node, "t2").await.status, StatusCode::NOT_FOUND);
    })
    .await;
}

#[tokio::test]
async fn soft_purge_serves_stale_only_inside_its_window() {
    on_a_fresh_node_per_protocol(&[], async |node| {
        put(
            node,
            "with-swr",
            "x",
            &[
                ("cache-control", "max-age=600, stale-while-revalidate=60"),
                ("surrogate-key", "s"),
            ],
        )
        .await;
        put(
            node,
            "without-swr",
            "y",
            &[("cache-control", "max-age=600"), ("surrogate-key", "s")],
        )
        .await;
        let r = admin_purge(node, r#"{"tags":["s"],"soft":true}"#).await;
        assert_eq!(r.status, StatusCode::OK);
        let r = get(node, "with-swr").await;
        assert_eq!(r.status, StatusCode::OK);
        let status = r.header("cache-status").unwrap();
        assert!(
            status.contains("detail=stale") && status.contains("ttl=-"),
            "{status}"
        );
        let r = get(node, "without-swr").await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        assert_eq!(
            r.header("cache-status").as_deref(),
            Some("fanz; fwd=miss; detail=invalidated")
        );
    })
    .await;
}

#[tokio::test]
async fn entries_expire_after_their_ttl() {
    let (_tmp, data) = data_dir();
    let node = TestNode::start(&data, &[]);
    put(&node, "brief", "x", &[("cache-control", "max-age=1")]).await;
    assert_eq!(get(&node, "brief").await.status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let r = get(&node, "brief").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(
        r.header("cache-status").as_deref(),
        Some("fanz; fwd=miss; detail=expired")
    );
}

#[tokio::test]
async fn bad_input_gets_a_clear_error() {
    let (_tmp, data) = data_dir();
    let node = TestNode::start(&data, &["--max-value-size", "1KiB"]);

    // Key over the limit (8 KiB by default): 414.
    let long = "k".repeat(8193);
    let r = put(&node, &long, "x", &[]).await;
    assert_eq!(r.status, StatusCode::URI_TOO_LONG);
    assert_eq!(
        get(&node, &"k".repeat(8192)).await.status,
        StatusCode::NOT_FOUND,
        "a key at the limit is fine"
    );

    // Value over the limit: 413, declared length or streamed.
    let r = put(&node, "big", &"v".repeat(1025), &[]).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        put(&node, "fits", &"v".repeat(1024), &[]).await.status,
        StatusCode::CREATED
    );

    // Malformed headers: 400 naming the header.
    let long_tag = "t".repeat(1025);
    for (header, value) in [
        ("cache-control", "max-age=soon"),
        ("surrogate-key", long_tag.as_str()),
        ("fanz-depends-on", "tag:"),
        ("fanz-depends-on", "bad%zzescape"),
        ("fanz-depends-on", "other, h"),
    ] {
        let r = send(Method::PUT, &node.url("/kv/h"), &[(header, value)], "x").await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{header}: {value}");
        let expected = match header {
            "cache-control" => "Cache-Control",
            "surrogate-key" => "Surrogate-Key",
            _ => "Fanz-Depends-On",
        };
        assert!(
            r.text().contains(expected),
            "error does not name {expected}: {}",
            r.text()
        );
    }
    // A tag with bytes outside visible ASCII (the http crate will not send one: raw socket).
    let answer = raw_request(
        node.http,
        b"PUT /kv/h HTTP/1.1\r\nHost: x\r\nSurrogate-Key: caf\xe9\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx",
    );
    assert!(
        answer.starts_with("HTTP/1.1 400") && answer.contains("Surrogate-Key"),
        "{answer}"
    );
    let r = put(&node, "self", "x", &[("fanz-depends-on", "self")]).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        get(&node, "h").await.status,
        StatusCode::NOT_FOUND,
        "a rejected PUT stored something"
    );

    // Purges need the token.
    let r = send(
        Method::POST,
        &node.admin_url("/purge"),
        &[],
        r#"{"tags":["x"]}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.header("www-authenticate").is_some());
    let r = send(
        Method::POST,
        &node.admin_url("/purge"),
        &[("authorization", "Bearer wrong")],
        r#"{"tags":["x"]}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = send(
        Method::from_bytes(b"PURGE").unwrap(),
        &node.url("/kv/fits"),
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        get(&node, "fits").await.status,
        StatusCode::OK,
        "an unauthorised purge took effect"
    );
    let r = send(Method::GET, &node.admin_url("/metrics"), &[], "").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    // Malformed purge bodies.
    for body in [
        r#"{"tags":[]}"#,
        r#"{"tagz":["x"]}"#,
        "not json",
        r#"{"tags":[""]}"#,
    ] {
        assert_eq!(
            admin_purge(&node, body).await.status,
            StatusCode::BAD_REQUEST,
            "{body}"
        );
    }
    // Wrong methods and unknown paths.
    assert_eq!(
        send(Method::POST, &node.url("/kv/x"), &[], "").await.status,
        StatusCode::METHOD_NOT_ALLOWED
    );
    assert_eq!(get(&node, "").await.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        send(Method::GET, &node.url("/elsewhere"), &[], "")
            .await
            .status,
        StatusCode::NOT_FOUND
    );
}

/// A client that declares a huge body is answered 413 at once, before it sends it:
/// the node never buffers what it will refuse.
#[test]
fn an_oversized_declared_body_is_refused_before_it_is_sent() {
    let (_tmp, data) = data_dir();
    let node = TestNode::start(&data, &[]);
    let mut s = std::net::TcpStream::connect(node.http).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"PUT /kv/huge HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000000\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).expect("answer before the body was sent");
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 413"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
}

/// Streamed (chunked) bodies are cut off at the limit.
#[test]
fn an_oversized_chunked_body_is_cut_off() {
    let (_tmp, data) = data_dir();
    let node = TestNode::start(&data, &["--max-value-size", "1KiB"]);
    let mut s = std::net::TcpStream::connect(node.http).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"PUT /kv/chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    let chunk = format!("400\r\n{}\r\n", "z".repeat(1024));
    for _ in 0..4 {
        if s.write_all(chunk.as_bytes()).is_err() {
            break;
        }
    }
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 413"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
}

#[tokio::test]
async fn metrics_count_hits_misses_and_purges() {
    let (_tmp, data) = data_dir();
    let node = TestNode::start(&data, &[]);
    put(&node, "m", "x", &[("surrogate-key", "t")]).await;
    get(&node, "m").await;
    get(&node, "m").await;
    get(&node, "absent").await;
    admin_purge(&node, r#"{"tags":["t"]}"#).await;
    let m = node.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            "fanz_cache_lookups_total{tier=\"memory\",result=\"hit\"}"
        ),
        Some(2.0),
        "{m}"
    );
    assert!(
        metric_value(
            &m,
            "fanz_cache_lookups_total{tier=\"memory\",result=\"miss\"}"
        )
        .unwrap()
            >= 1.0
    );
    assert_eq!(metric_value(&m, "fanz_purges_total"), Some(1.0));
    assert_eq!(
        metric_value(&m, "fanz_purge_targets_total{kind=\"tag\",soft=\"false\"}"),
        Some(1.0)
    );
    assert!(metric_value(&m, "fanz_invalidation_tombstones").unwrap() >= 1.0);
    assert!(metric_value(&m, "fanz_cache_tier_bytes{tier=\"memory\"}").unwrap() > 0.0);
    assert!(m.contains("fanz_http_request_duration_seconds_bucket"));
    assert!(m.contains("fanz_cache_evictions_total"));
    assert!(m.contains("fanz_cache_corrupt_entries_dropped_total"));
}

#[tokio::test]
async fn health_and_readiness_need_no_token() {
    let (_tmp, data) = data_dir();
    let node = TestNode::start(&data, &[]);
    assert_eq!(
        send(Method::GET, &node.admin_url("/healthz"), &[], "")
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        send(Method::GET, &node.admin_url("/readyz"), &[], "")
            .await
            .status,
        StatusCode::OK
    );
}

#[test]
fn sigterm_lets_an_in_flight_request_finish() {
    let (_tmp, data) = data_dir();
    let mut node = TestNode::start(&data, &[]);
    let mut s = std::net::TcpStream::connect(node.http).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"PUT /kv/slow HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nab")
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let pid = node.pid();
    signal(pid, "TERM");
    std::thread::sleep(Duration::from_millis(300));
    // Draining: the admin port still answers, and says the node is not ready.
    let ready = raw_request(
        node.admin,
        b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");
    s.write_all(b"cd").unwrap();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 201"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    drop(s);
    let status = node.terminate_after_signal();
    assert!(status.success(), "exit status {status}");
    assert!(node.log_text().contains("shut down cleanly"));
}

/// A fill that started before a purge never becomes valid after it: the PUT's body is
/// still uploading when the purge is acknowledged.
#[tokio::test]
async fn a_put_that_started_before_a_purge_is_covered_by_it() {
    let (_tmp, data) = data_dir();
    let node = TestNode::start(&data, &[]);
    let http = node.http;
    let upload = std::thread::spawn(move || {
        let mut s = std::net::TcpStream::connect(http).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"PUT /kv/racy HTTP/1.1\r\nHost: x\r\nSurrogate-Key: news\r\nContent-Length: 6\r\n\r\nold").unwrap();
        std::thread::sleep(Duration::from_millis(600));
        s.write_all(b"val").unwrap();
        let mut buf = [0u8; 32];
        let n = s.read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    });
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(
        admin_purge(&node, r#"{"tags":["news"]}"#).await.status,
        StatusCode::OK
    );
    let answer = tokio::task::spawn_blocking(move || upload.join().unwrap())
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    assert_eq!(
        get(&node, "racy").await.status,
        StatusCode::NOT_FOUND,
        "a write that started before the purge was served after it"
    );
    // A write that starts after the purge is served.
    put(&node, "racy", "new", &[("surrogate-key", "news")]).await;
    assert_eq!(get(&node, "racy").await.text(), "new");
}

/// A client that sends its headers too slowly is cut off (slowloris).
#[test]
fn slow_headers_are_cut_off() {
    let (_tmp, data) = data_dir();
    let node = TestNode::start(&data, &["--header-read-timeout", "1s"]);
    let mut s = std::net::TcpStream::connect(node.http).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /kv/x HTTP/1.1\r\nHost: x\r\n").unwrap();
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(5),
        "connection held for {waited:?}"
    );
    assert!(
        buf.is_empty() || buf.starts_with(b"HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&buf)
    );
}

/// HTTP/2 with prior knowledge (h2c) on the same port.
#[tokio::test]
async fn http2_prior_knowledge_is_served() {
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let (_tmp, data) = data_dir();
    let node = TestNode::start(&data, &[]);
    put(&node, "h2", "over h2", &[]).await;
    let client: Client<_, Full<bytes::Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let resp = client
        .get(node.url("/kv/h2").parse().unwrap())
        .await
        .unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        &resp.into_body().collect().await.unwrap().to_bytes()[..],
        b"over h2"
    );
}

/// Runs `futures` concurrently on this task; their outputs in order.
async fn join_all<F: std::future::Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut futures: Vec<_> = futures.into_iter().map(|f| Some(Box::pin(f))).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (slot, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if let Some(future) = slot {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => {
                        *output = Some(v);
                        *slot = None;
                    }
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs
        .into_iter()
        .map(|o| o.expect("every future finished"))
        .collect()
}
