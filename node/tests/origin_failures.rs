//! An origin's failures at a default node: a 5xx answer is the origin's answer, not
//! an outage; only transport failures (or statuses opted in with
//! `breaker_statuses`) open the circuit breaker; with the breaker open a stored copy
//! is served when the RFC allows it; retries never duplicate a request; concurrent
//! clients see what one client alone sees.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::origin::{respond, Seen, TestOrigin};
use common::*;
use http::{Method, StatusCode};

fn node_for(origin: &TestOrigin, extra: &[&str]) -> (tempfile::TempDir, TestNode) {
    let (tmp, data) = data_dir();
    let url = origin.url();
    let mut args = vec!["--origin", url.as_str()];
    args.extend_from_slice(extra);
    (tmp, TestNode::start(&data, &args))
}

fn cache_status(r: &Reply) -> String {
    r.header("cache-status").unwrap_or_default()
}

/// A site with one broken page among healthy ones.
fn site(req: &Seen, n: usize) -> http::Response<http_body_util::Full<bytes::Bytes>> {
    let path = req.path.as_str();
    if path.ends_with("/broken") {
        return respond(500, &[], "internal error");
    }
    if path.ends_with("/unavailable") {
        return respond(503, &[("retry-after", "1")], "maintenance");
    }
    if path.ends_with("/fresh") {
        return respond(
            200,
            &[("cache-control", "max-age=600")],
            format!("{path} #{n}"),
        );
    }
    if path.ends_with("/stale") {
        return respond(
            200,
            &[("cache-control", "max-age=1")],
            format!("{path} #{n}"),
        );
    }
    if path.ends_with("/shared-only") {
        // s-maxage implies proxy-revalidate for a shared cache: never served stale.
        return respond(
            200,
            &[("cache-control", "s-maxage=1")],
            format!("{path} #{n}"),
        );
    }
    if path.ends_with("/nostore") {
        return respond(
            200,
            &[("cache-control", "no-store")],
            format!("{path} #{n}"),
        );
    }
    if req.method == Method::POST {
        return respond(201, &[], format!("created {path} #{n}"));
    }
    respond(
        200,
        &[("cache-control", "max-age=600")],
        format!("{path} #{n}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_origins_500s_on_one_url_do_not_change_the_answers_for_others() {
    for_each_protocol(async |proto| {
        let origin = TestOrigin::start(site).await;
        let (_tmp, node) = node_for(&origin, &[]);
        let node = node.with_proto(proto);
        let get = |path: &'static str| request(&node, Method::GET, path, &[], "");
        assert_eq!(get("/ok/fresh").await.text(), "/ok/fresh #1");
        assert_eq!(get("/ok/stale").await.text(), "/ok/stale #1");
        tokio::time::sleep(Duration::from_millis(1100)).await;
        for i in 0..50 {
            let r = get("/broken").await;
            assert_eq!(
                r.status,
                StatusCode::INTERNAL_SERVER_ERROR,
                "{proto:?} request {i} to /broken: {}",
                cache_status(&r)
            );
            assert_eq!(r.text(), "internal error", "the origin's answer passes");
        }
        assert_eq!(
            origin.count("/broken"),
            50,
            "{proto:?}: every request reached the origin"
        );
        let fresh = get("/ok/fresh").await;
        assert_eq!(fresh.status, StatusCode::OK, "{proto:?}");
        assert_eq!(
            fresh.text(),
            "/ok/fresh #1",
            "{proto:?}: {}",
            cache_status(&fresh)
        );
        let stale = get("/ok/stale").await;
        assert_eq!(
            stale.status,
            StatusCode::OK,
            "{proto:?}: {}",
            cache_status(&stale)
        );
        assert_eq!(
            stale.text(),
            "/ok/stale #2",
            "{proto:?}: refetched once stale"
        );
        let new = get("/ok/never-cached").await;
        assert_eq!(
            new.status,
            StatusCode::OK,
            "{proto:?}: {}",
            cache_status(&new)
        );
        assert_eq!(new.text(), "/ok/never-cached #1");
        let m = node.metrics().await;
        assert_eq!(
            metric_value(&m, "fanz_origin_breakers_open"),
            Some(0.0),
            "{proto:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn statuses_opted_in_open_the_breaker_and_stored_copies_are_served_meanwhile() {
    let origin = TestOrigin::start(site).await;
    let (_tmp, node) = node_for(
        &origin,
        &["--breaker-statuses", "500,503", "--breaker-failures", "3"],
    );
    let get = |path: &'static str| request(&node, Method::GET, path, &[], "");
    assert_eq!(get("/a/fresh").await.text(), "/a/fresh #1");
    assert_eq!(get("/a/stale").await.text(), "/a/stale #1");
    assert_eq!(get("/a/shared-only").await.text(), "/a/shared-only #1");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..3 {
        assert_eq!(
            get("/broken").await.status,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
    let m = node.metrics().await;
    assert_eq!(
        metric_value(&m, "fanz_origin_breakers_open"),
        Some(1.0),
        "{m}"
    );
    let seen = origin.count("/a/stale");

    // Fresh: a hit, as ever.
    let fresh = get("/a/fresh").await;
    assert_eq!(fresh.text(), "/a/fresh #1");
    // Stale without a stale-if-error window: the origin is unavailable, and nothing
    // forbids serving it stale.
    let stale = get("/a/stale").await;
    assert_eq!(stale.status, StatusCode::OK);
    assert_eq!(stale.text(), "/a/stale #1");
    assert!(
        cache_status(&stale).contains("origin-unavailable"),
        "{}",
        cache_status(&stale)
    );
    assert_eq!(
        origin.count("/a/stale"),
        seen,
        "the breaker let a request through"
    );
    // s-maxage forbids serving stale (RFC 9111 §5.2.2.10): nothing to serve.
    let strict = get("/a/shared-only").await;
    assert_eq!(strict.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(strict.header("retry-after").is_some());
    // Never stored: nothing to serve either.
    let new = get("/a/new").await;
    assert_eq!(new.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(new.header("retry-after").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_malformed_breaker_statuses_setting_is_refused_at_start() {
    let (_tmp, data) = data_dir();
    for bad in ["5xx", "99", "600", "500;503"] {
        let err = TestNode::try_start_with(
            &data,
            vec![
                "--origin".into(),
                "http://127.0.0.1:9".into(),
                "--breaker-statuses".into(),
                bad.into(),
            ],
        )
        .err()
        .unwrap_or_else(|| panic!("{bad:?} was accepted"));
        assert!(err.contains("breaker_statuses"), "{bad:?}: {err}");
    }
}

/// A response cut off mid-body is a transport failure: it counts against the breaker
/// (while a complete 500 does not, above).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn responses_cut_off_mid_body_count_against_the_breaker() {
    // Dropped after writing: the connection closes 990 bytes short.
    let origin = raw_origin(
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nCache-Control: no-store\r\n\r\nonly ten b"
            .to_vec(),
    );
    let (_tmp, data) = data_dir();
    let url = format!("http://{origin}");
    let node = TestNode::start(
        &data,
        &[
            "--origin",
            &url,
            "--breaker-failures",
            "2",
            "--origin-retries",
            "0",
        ],
    );
    for path in ["/cut/1", "/cut/2"] {
        let answer = raw_request(
            node.http,
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(
            !answer.contains(&"x".repeat(1000)),
            "a complete body? {answer}"
        );
    }
    let m = node.metrics().await;
    assert_eq!(
        metric_value(&m, "fanz_origin_breakers_open"),
        Some(1.0),
        "{m}"
    );
    let r = request(&node, Method::GET, "/other", &[], "").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.header("retry-after").is_some());
}

/// Twenty-five clients at once, each with its own URLs: the origin sees exactly the
/// requests one client alone would make it see, and every client gets the answers it
/// would get alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_clients_see_what_one_client_alone_sees() {
    let origin = TestOrigin::start(site).await;
    let (_tmp, node) = node_for(&origin, &[]);
    let node = Arc::new(node);
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..25 {
        let node = node.clone();
        clients.spawn(async move {
            let mut answers = Vec::new();
            for round in 0..3 {
                for page in ["fresh", "broken", "unavailable", "nostore"] {
                    let r = request(&node, Method::GET, &format!("/c{c}/{page}"), &[], "").await;
                    answers.push((format!("GET /c{c}/{page} round {round}"), r.status));
                }
            }
            let r = request(&node, Method::POST, &format!("/c{c}/form"), &[], "x=1").await;
            answers.push((format!("POST /c{c}/form"), r.status));
            answers
        });
    }
    while let Some(answers) = clients.join_next().await {
        for (what, status) in answers.unwrap() {
            let expected = if what.contains("/broken") {
                StatusCode::INTERNAL_SERVER_ERROR
            } else if what.contains("/unavailable") {
                StatusCode::SERVICE_UNAVAILABLE
            } else if what.starts_with("POST") {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            assert_eq!(status, expected, "{what}");
        }
    }
    for c in 0..25 {
        for (page, expected) in [
            ("fresh", 1),
            ("broken", 3),
            ("unavailable", 3),
            ("nostore", 3),
            ("form", 1),
        ] {
            assert_eq!(
                origin.count(&format!("/c{c}/{page}")),
                expected,
                "/c{c}/{page}"
            );
        }
    }
}

/// An origin that closes keep-alive connections idle for 1 s (as many servers do, with
/// shorter timeouts than the node's pool): requests arriving around that moment are
/// answered, and none reaches the origin twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_origin_closing_idle_connections_costs_no_request_and_duplicates_none() {
    let (origin, served) = closing_origin(Duration::from_secs(1)).await;
    let (_tmp, data) = data_dir();
    let url = format!("http://{origin}");
    let node = TestNode::start(&data, &["--origin", &url]);
    let mut step = 0;
    for wait_ms in (900..=1100).step_by(25) {
        tokio::time::sleep(Duration::from_millis(wait_ms)).await;
        step += 1;
        let get = request(
            &node,
            Method::GET,
            &format!("/page/{step}/nostore"),
            &[],
            "",
        )
        .await;
        assert_eq!(
            get.status,
            StatusCode::OK,
            "GET after {wait_ms} ms idle: {}",
            get.text()
        );
        let post = request(&node, Method::POST, &format!("/form/{step}"), &[], "a=1").await;
        assert_eq!(
            post.status,
            StatusCode::CREATED,
            "POST after {wait_ms} ms idle: {}",
            post.text()
        );
    }
    let served = served.lock().unwrap().clone();
    for s in 1..=step {
        for path in [format!("/page/{s}/nostore"), format!("/form/{s}")] {
            assert_eq!(
                served.iter().filter(|p| **p == path).count(),
                1,
                "{path} reached the origin a number of times other than once: {served:?}"
            );
        }
    }
}

/// A hyper origin closing connections idle for `idle`; records every request path.
async fn closing_origin(
    idle: Duration,
) -> (std::net::SocketAddr, Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = served.clone();
    let counter = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (record, counter) = (record.clone(), counter.clone());
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (record, counter) = (record.clone(), counter.clone());
                        async move {
                            use http_body_util::BodyExt;
                            let (parts, body) = req.into_parts();
                            let _ = body.collect().await;
                            let path = parts.uri.path().to_string();
                            record.lock().unwrap().push(path.clone());
                            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                            let seen = Seen {
                                version: parts.version,
                                method: parts.method,
                                path,
                                headers: parts.headers,
                                body: bytes::Bytes::new(),
                            };
                            Ok::<_, std::convert::Infallible>(site(&seen, n))
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(idle)
                    .keep_alive(true)
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, served)
}

/// An origin on a free port answering every connection's first request with
/// `answer`, then closing it.
fn raw_origin(answer: Vec<u8>) -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let origin = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(&answer);
        }
    });
    origin
}

/// Response heads past the limits are a 502 with a reason; the node stays up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn response_heads_over_the_limits_are_a_502_with_a_reason() {
    let mut many = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n".to_vec();
    for i in 0..300 {
        many.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\nok");
    let mut huge = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Big: ".to_vec();
    huge.extend_from_slice(&vec![b'a'; 512 * 1024]);
    huge.extend_from_slice(b"\r\n\r\nok");
    for (what, answer) in [("300 fields", many), ("a 512 KiB field", huge)] {
        let origin = raw_origin(answer);
        let (_tmp, data) = data_dir();
        let url = format!("http://{origin}");
        let node = TestNode::start(&data, &["--origin", &url, "--origin-retries", "0"]);
        let r = request(&node, Method::GET, "/x", &[], "").await;
        assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{what}: {}", r.text());
        assert!(!r.text().trim().is_empty(), "{what}: no reason given");
        let health = send(Method::GET, &node.admin_url("/healthz"), &[], "").await;
        assert_eq!(
            health.status,
            StatusCode::OK,
            "{what}: the node is not healthy"
        );
    }
}

/// Field values with obs-text (bytes above 0x7F, RFC 9110 §5.5) are kept byte for
/// byte in stored responses; a request carrying some is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn obs_text_in_field_values_is_kept_byte_for_byte() {
    let mut answer =
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nCache-Control: max-age=600\r\nX-Name: caf"
            .to_vec();
    answer.extend_from_slice(&[0xE9, b' ', 0xFF]);
    answer.extend_from_slice(b"\r\n\r\nok");
    let origin = raw_origin(answer);
    let (_tmp, data) = data_dir();
    let url = format!("http://{origin}");
    let node = TestNode::start(&data, &["--origin", &url]);
    for round in ["fill", "hit"] {
        let reply = raw_request_bytes(
            node.http,
            b"GET /obs HTTP/1.1\r\nHost: x\r\nX-Client: na\xefve\r\nConnection: close\r\n\r\n",
        );
        assert!(reply.starts_with(b"HTTP/1.1 200"), "{round}: {reply:?}");
        let wanted: &[u8] = b"x-name: caf\xe9 \xff\r\n";
        assert!(
            reply.windows(wanted.len()).any(|w| w == wanted),
            "{round}: {}",
            String::from_utf8_lossy(&reply)
        );
    }
}

/// The raw bytes of one HTTP/1.1 exchange on a fresh connection.
fn raw_request_bytes(addr: std::net::SocketAddr, request: &[u8]) -> Vec<u8> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).expect("write request");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    buf
}
