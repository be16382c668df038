//! Hot reload against a real node process: SIGHUP, or a watched file, applies a
//! new admin token, TTL policy, origin and log level without dropping an open
//! connection; a broken file is rejected and the running config stays.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use common::origin::{respond, TestOrigin};
use common::*;
use http::{Method, StatusCode};

fn write_config(path: &Path, token: &str, default_ttl: &str, origin: &str, extra: &str) {
    let log_level = if extra.contains("log_level") {
        ""
    } else {
        "log_level = \"info\"\n"
    };
    std::fs::write(
        path,
        format!(
            "admin_token = \"{token}\"\ndefault_ttl = \"{default_ttl}\"\norigin = \"{origin}\"\n{log_level}{extra}"
        ),
    )
    .unwrap();
}

/// One request on an open keep-alive connection; the response's body.
fn exchange(conn: &mut TcpStream, path: &str) -> String {
    write!(conn, "GET {path} HTTP/1.1\r\nHost: site.test\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    // The test origin's bodies are short; the head says how long.
    loop {
        let n = conn.read(&mut chunk).unwrap();
        assert!(n > 0, "the connection was closed");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|v| v.trim().parse().unwrap())
                })
                .expect("content-length");
            if body.len() >= length {
                return body[..length].to_string();
            }
        }
    }
}

fn origin_named(
    name: &'static str,
) -> impl Fn(&common::origin::Seen, usize) -> http::Response<http_body_util::Full<bytes::Bytes>> {
    move |seen, _| {
        respond(
            200,
            &[("cache-control", "no-store")],
            format!("{name} {}", seen.path),
        )
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_applies_a_new_config_and_keeps_the_old_one_when_the_file_is_broken() {
    let (tmp, data) = data_dir();
    let (one, two) = (
        TestOrigin::start(origin_named("one")).await,
        TestOrigin::start(origin_named("two")).await,
    );
    let file = tmp.path().join("fanz.toml");
    write_config(&file, "first-token", "1h", &one.url(), "");
    let node = TestNode::start_with(&data, vec!["--config".into(), file.display().to_string()]);
    let mut conn = TcpStream::connect(node.http).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(exchange(&mut conn, "/a"), "one /a");
    assert!(
        !node.log_text().contains("fetching from the origin"),
        "debug is off"
    );

    // A new token, TTL policy and origin; a setting that needs a restart.
    write_config(
        &file,
        "second-token",
        "2m",
        &two.url(),
        "max_connections = 17\nlog_level = \"info,fanz_node::proxy=debug\"\n",
    );
    signal(node.pid(), "HUP");
    wait_reloads(&node, "second-token", "applied", 1.0).await;
    assert_eq!(
        admin_get(&node, "/metrics", "first-token").await.status,
        StatusCode::UNAUTHORIZED,
        "the old token no longer works"
    );
    // The connection opened before the reload is still served, by the new origin.
    assert_eq!(exchange(&mut conn, "/b"), "two /b");
    let put = request(&node, Method::PUT, "/kv/k", &[], "v".to_string()).await;
    assert_eq!(put.status, StatusCode::CREATED);
    let got = get(&node, "k").await;
    let status = got.header("cache-status").unwrap();
    let ttl: u64 = status
        .split("ttl=")
        .nth(1)
        .and_then(|t| t.split(';').next())
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or_else(|| panic!("{status}"));
    assert!((100..=120).contains(&ttl), "the new default TTL: {status}");
    let log = node.log_text();
    assert!(log.contains("config reloaded"), "{log}");
    assert!(
        log.contains("fetching from the origin"),
        "the new log level: {log}"
    );
    assert!(
        log.contains("need a restart") && log.contains("max_connections"),
        "{log}"
    );

    // Broken files: TOML that does not parse, then a value that does not resolve.
    for broken in [
        "admin_token = = \"x\"\n",
        "admin_token = \"third\"\ndefault_ttl = \"forever\"\n",
    ] {
        std::fs::write(&file, broken).unwrap();
        let rejected = reloads(&node, "second-token", "rejected").await.unwrap();
        signal(node.pid(), "HUP");
        wait_reloads(&node, "second-token", "rejected", rejected + 1.0).await;
        // The running config stays: token, origin, the open connection.
        assert_eq!(
            admin_get(&node, "/metrics", "third").await.status,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(exchange(&mut conn, "/c"), "two /c");
    }
    assert!(node.log_text().contains("config reload rejected"));
    assert_eq!(reloads(&node, "second-token", "applied").await, Some(1.0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_watched_file_is_reloaded_when_it_changes() {
    let (tmp, data) = data_dir();
    let (one, two) = (
        TestOrigin::start(origin_named("one")).await,
        TestOrigin::start(origin_named("two")).await,
    );
    let file = tmp.path().join("fanz.toml");
    let watch = "config_watch = \"100ms\"\n";
    write_config(&file, "first-token", "1h", &one.url(), watch);
    let node = TestNode::start_with(&data, vec!["--config".into(), file.display().to_string()]);
    assert_eq!(reloads(&node, "first-token", "applied").await, Some(0.0));
    write_config(&file, "first-token", "1h", &two.url(), watch);
    wait_reloads(&node, "first-token", "applied", 1.0).await;
    let page = request(&node, Method::GET, "/x", &[("host", "site.test")], "").await;
    assert_eq!(page.text(), "two /x");
}
