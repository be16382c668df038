//! HTTP/3: the same handler as HTTP/1.1 and HTTP/2 (KV API, caching, PURGE), reached
//! with a real quinn + h3 client, over the node's development certificate.

mod common;

use bytes::Bytes;
use common::h3client::*;
use common::origin::{respond, TestOrigin};
use common::*;
use http::{Method, StatusCode};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kv_api_caching_and_purge_over_http3() {
    let origin = TestOrigin::start(|req, n| {
        respond(
            200,
            &[("cache-control", "max-age=60"), ("surrogate-key", "t")],
            format!("{} #{n}", req.path),
        )
    })
    .await;
    let (tmp, data) = data_dir();
    let url = origin.url();
    let node = TestNode::start(&data, &["--origin", &url]);
    let addr = h3_addr(&node).await;
    let cert = data.join("dev-cert.pem");
    let _keep = tmp;

    // KV API: PUT then GET, same answers as over TCP.
    let r = h3_request(
        addr,
        &cert,
        Method::PUT,
        "/kv/over-h3",
        &[("surrogate-key", "q")],
        "quic value",
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let r = h3_request(addr, &cert, Method::GET, "/kv/over-h3", &[], "").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(&r.body[..], b"quic value");
    assert!(r.headers["cache-status"]
        .to_str()
        .unwrap()
        .starts_with("fanz; hit"));
    // The same entry over HTTP/1.1.
    assert_eq!(get(&node, "over-h3").await.text(), "quic value");

    // Pull-through caching: a miss, then a hit. (The key includes the scheme, so this
    // https:// entry is not the one a cleartext TCP request for the same path uses.)
    let r = h3_request(addr, &cert, Method::GET, "/page", &[], "").await;
    assert_eq!(&r.body[..], b"/page #1");
    assert!(r.headers["cache-status"]
        .to_str()
        .unwrap()
        .contains("stored"));
    let r = h3_request(addr, &cert, Method::GET, "/page", &[], "").await;
    assert_eq!(&r.body[..], b"/page #1");
    assert!(r.headers["cache-status"]
        .to_str()
        .unwrap()
        .starts_with("fanz; hit"));

    // PURGE over HTTP/3.
    let bearer = format!("Bearer {TOKEN}");
    let r = h3_request(
        addr,
        &cert,
        Method::from_bytes(b"PURGE").unwrap(),
        "/",
        &[("authorization", &bearer), ("surrogate-key", "t")],
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = h3_request(addr, &cert, Method::GET, "/page", &[], "").await;
    assert_eq!(&r.body[..], b"/page #2");
    assert_eq!(origin.count("/page"), 2);
}

#[test]
fn the_development_certificate_can_be_printed() {
    let (_tmp, data) = data_dir();
    let out = std::process::Command::new(binary())
        .args(["print-dev-cert", "--data-dir", data.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let pem = String::from_utf8_lossy(&out.stdout);
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("SHA-256 fingerprint"));
    assert_eq!(
        std::fs::read_to_string(data.join("dev-cert.pem")).unwrap(),
        pem,
        "the node and the command share one certificate"
    );
}

/// A simple xorshift generator: the test needs noise, not quality.
fn noise(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_datagrams_do_not_stop_the_listener() {
    let (_tmp, data) = data_dir();
    let node = TestNode::start(&data, &[]);
    let addr = h3_addr(&node).await;
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    for i in 0..3000 {
        let len = 1 + (noise(&mut seed) % 1400) as usize;
        let mut packet: Vec<u8> = (0..len).map(|_| noise(&mut seed) as u8).collect();
        if i % 2 == 0 {
            // Looks like the start of a long-header (Initial) packet, then stops short.
            packet[0] = 0xC0 | (packet[0] & 0x0F);
            packet.truncate(packet.len().min(40));
        }
        let _ = socket.send_to(&packet, addr);
    }
    let r = h3_request(
        addr,
        &data.join("dev-cert.pem"),
        Method::GET,
        "/kv/none",
        &[],
        "",
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::NOT_FOUND,
        "the listener stopped answering"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_header_section_is_refused() {
    let (_tmp, data) = data_dir();
    let node = TestNode::start(&data, &["--max-header-size", "16KiB"]);
    let addr = h3_addr(&node).await;
    let cert = data.join("dev-cert.pem");
    let big = "b".repeat(64 * 1024);
    let refused = try_h3_request(addr, &cert, Method::GET, "/kv/x", &[("x-big", &big)], "").await;
    assert!(
        !matches!(&refused, Ok(r) if r.status.is_success() || r.status == StatusCode::NOT_FOUND),
        "a 64 KiB header section was processed: {:?}",
        refused.as_ref().map(|r| r.status)
    );
    let r = h3_request(addr, &cert, Method::GET, "/kv/x", &[], "").await;
    assert_eq!(
        r.status,
        StatusCode::NOT_FOUND,
        "the node stopped serving after the refusal"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_complete_a_retry_when_address_validation_is_on() {
    let (_tmp, data) = data_dir();
    let node = TestNode::start(&data, &["--h3-retry", "always"]);
    let addr = h3_addr(&node).await;
    put(&node, "validated", "yes", &[]).await;
    let r = h3_request(
        addr,
        &data.join("dev-cert.pem"),
        Method::GET,
        "/kv/validated",
        &[],
        "",
    )
    .await;
    assert_eq!(&r.body[..], b"yes");
}

/// Resumes a session: a first connection fetches a ticket, the second tries 0-RTT.
/// Returns whether the client could send early data, and the replies to a PUT and a
/// GET sent on the resumed connection before waiting for its handshake.
async fn resume_with_early_data(
    addr: std::net::SocketAddr,
    cert: &std::path::Path,
) -> (bool, H3Reply, H3Reply) {
    let endpoint = h3_endpoint(cert, true);
    let first = endpoint.connect(addr, "localhost").unwrap().await.unwrap();
    let (mut send, drive) = h3_over(first.clone()).await;
    let r = h3_exchange(&mut send, Method::GET, "/kv/ticket", &[], "")
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // The server sends resumption tickets just after the handshake; give them a moment.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    drop(send);
    drive.abort();
    first.close(0u32.into(), b"done");

    let connecting = endpoint.connect(addr, "localhost").unwrap();
    let (conn, early) = match connecting.into_0rtt() {
        Ok((conn, accepted)) => (conn, Some(accepted)),
        Err(connecting) => (connecting.await.unwrap(), None),
    };
    let (mut send, drive) = h3_over(conn.clone()).await;
    let mut send_get = send.clone();
    let (put, get) = tokio::join!(
        h3_exchange(&mut send, Method::PUT, "/kv/early", &[], "sent early"),
        h3_exchange(&mut send_get, Method::GET, "/page", &[], "")
    );
    drop(send_get);
    let accepted = match early {
        Some(accepted) => accepted.await,
        None => false,
    };
    drop(send);
    drive.abort();
    conn.close(0u32.into(), b"done");
    (accepted, put.unwrap(), get.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_rtt_is_accepted_only_when_enabled_and_every_method_is_answered() {
    let origin = TestOrigin::start(|req, _| {
        respond(200, &[("cache-control", "max-age=60")], req.path.clone())
    })
    .await;
    for enabled in [false, true] {
        let (_tmp, data) = data_dir();
        let url = origin.url();
        let flag = enabled.to_string();
        let node = TestNode::start(&data, &["--origin", &url, "--h3-early-data", &flag]);
        let addr = h3_addr(&node).await;
        let (accepted, put, get) = resume_with_early_data(addr, &data.join("dev-cert.pem")).await;
        assert_eq!(
            accepted, enabled,
            "0-RTT accepted with h3_early_data={enabled}"
        );
        // Early or not, the unsafe request is carried out exactly once, after the
        // handshake (never refused, never lost), and the safe one is served.
        assert_eq!(put.status, StatusCode::CREATED);
        assert_eq!(get.status, StatusCode::OK);
        assert_eq!(&get.body[..], b"/page");
        let r = h3_request(
            addr,
            &data.join("dev-cert.pem"),
            Method::GET,
            "/kv/early",
            &[],
            "",
        )
        .await;
        assert_eq!(&r.body[..], b"sent early");
        let metrics = node.metrics().await;
        let served = metric_value(&metrics, "fanz_h3_early_data_served_total").unwrap();
        let deferred = metric_value(&metrics, "fanz_h3_early_data_deferred_total").unwrap();
        if !enabled {
            assert_eq!(
                served + deferred,
                0.0,
                "no early data without h3_early_data"
            );
        }
        // Whether the requests arrived before the handshake completed depends on
        // timing (and a request just after it may still count as early: the node
        // learns of completion a moment late, which errs on the safe side). What
        // the node did must match what it counted: the GET of /page (a miss) reaches
        // the origin marked `Early-Data: 1` only if something was served early, and
        // at most the PUT was ever held back.
        assert!(deferred <= 1.0, "{deferred}");
        let seen = origin.last("/page").unwrap();
        if seen.headers.contains_key("early-data") {
            assert!(enabled && served >= 1.0, "{served}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_open_more_streams_than_allowed() {
    let (_tmp, data) = data_dir();
    let node = TestNode::start(&data, &["--h3-max-streams", "2"]);
    let addr = h3_addr(&node).await;
    let (_endpoint, mut client, _drive) = h3_connect(addr, &data.join("dev-cert.pem")).await;
    let put = || {
        http::Request::put("https://localhost/kv/slow")
            .body(())
            .unwrap()
    };
    // Two uploads left open hold both streams.
    let mut first = client.send_request(put()).await.unwrap();
    let _second = client.send_request(put()).await.unwrap();
    let third = tokio::time::timeout(
        std::time::Duration::from_millis(500),
        client.send_request(put()),
    )
    .await;
    assert!(
        third.is_err(),
        "a third stream opened while two were in use"
    );
    // Finishing one frees a stream for the next request.
    first.send_data(Bytes::from_static(b"done")).await.unwrap();
    first.finish().await.unwrap();
    assert_eq!(
        first.recv_response().await.unwrap().status(),
        StatusCode::CREATED
    );
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        client.send_request(put()),
    )
    .await
    .expect("a stream became free")
    .unwrap();
}

/// 10,000 requests aborted by the client mid-response: every stream is released and
/// resident memory returns close to where it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborted_requests_leave_no_leak() {
    let (_tmp, data) = data_dir();
    let node = TestNode::start(&data, &[]);
    let addr = h3_addr(&node).await;
    put(&node, "big", &"x".repeat(256 * 1024), &[]).await;
    let (endpoint, mut client, _drive) = h3_connect(addr, &data.join("dev-cert.pem")).await;
    let get = || {
        http::Request::get("https://localhost/kv/big")
            .body(())
            .unwrap()
    };
    // Warm up, then take the baseline.
    for _ in 0..200 {
        let mut s = client.send_request(get()).await.unwrap();
        let _ = s.finish().await; // may be stopped once answered (RFC 9114 §4.1)
        let _ = s.recv_response().await.unwrap();
        while s.recv_data().await.unwrap().is_some() {}
    }
    let baseline = node.resident_bytes() / 1024;
    for _ in 0..10_000 {
        let mut s = client.send_request(get()).await.unwrap();
        let _ = s.finish().await; // may be stopped once answered (RFC 9114 §4.1)
        let _ = s.recv_response().await.unwrap();
        let _ = s.recv_data().await;
        // Dropping the unfinished stream makes quinn send STOP_SENDING: an abort.
        drop(s);
    }
    let mut open = f64::NAN;
    for _ in 0..100 {
        open = metric_value(&node.metrics().await, "fanz_h3_open_streams").unwrap();
        if open == 0.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(open, 0.0, "streams left open after the client aborted them");
    let after = node.resident_bytes() / 1024;
    eprintln!("resident memory: {baseline} KiB before, {after} KiB after 10,000 aborted requests");
    assert!(
        after < baseline + 32 * 1024,
        "resident memory grew from {baseline} KiB to {after} KiB"
    );
    endpoint.close(0u32.into(), b"done");
}
