//! The purge and admin API in production (issue 20, part 4) against a real node:
//! purge-only tokens, several tokens at once rotated by a reload, a rate limit per
//! token (429 + Retry-After, counted), and an address allow-list for the admin API
//! and PURGE.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use http::{Method, StatusCode};

const ADMIN: &str = "adm-token";
const PURGER: &str = "purge-token";

async fn admin(node: &TestNode, method: Method, path: &str, token: &str, body: &str) -> Reply {
    let bearer = format!("Bearer {token}");
    send(
        method,
        &node.admin_url(path),
        &[("authorization", &bearer)],
        body.to_string(),
    )
    .await
}

async fn purge_on_main_port(node: &TestNode, key: &str, token: &str) -> Reply {
    let bearer = format!("Bearer {token}");
    request(
        node,
        Method::from_bytes(b"PURGE").unwrap(),
        &format!("/kv/{key}"),
        &[("authorization", &bearer)],
        "",
    )
    .await
}

/// `fanz_admin_refusals_total{reason}` as the admin token reads it.
async fn refusals(node: &TestNode, reason: &str) -> f64 {
    let metrics = admin(node, Method::GET, "/metrics", ADMIN, "").await;
    assert_eq!(metrics.status, StatusCode::OK, "{}", metrics.text());
    metric_value(
        &metrics.text(),
        &format!("fanz_admin_refusals_total{{reason=\"{reason}\"}}"),
    )
    .unwrap_or(0.0)
}

fn start(data: &Path, extra: &[&str]) -> TestNode {
    let mut args = vec!["--admin-token", ADMIN, "--purge-token", PURGER];
    args.extend(extra);
    TestNode::start_with(data, args.iter().map(|s| s.to_string()).collect())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_purge_token_purges_and_does_nothing_else() {
    let (_tmp, data) = data_dir();
    let node = start(&data, &[]);
    assert!(put(&node, "k", "v", &[]).await.status.is_success());

    // Purges, through the admin API and the main port, and their reports.
    let purged = admin(&node, Method::POST, "/purge", PURGER, r#"{"keys":["k"]}"#).await;
    assert_eq!(purged.status, StatusCode::OK, "{}", purged.text());
    assert_eq!(get(&node, "k").await.status, StatusCode::NOT_FOUND);
    // A purge's report (a lone node keeps none: 404, not 403).
    let report = admin(&node, Method::GET, "/purge/n1@1/1", PURGER, "").await;
    assert_eq!(report.status, StatusCode::NOT_FOUND, "{}", report.text());
    assert!(put(&node, "k", "v2", &[]).await.status.is_success());
    let purged = purge_on_main_port(&node, "k", PURGER).await;
    assert!(purged.status.is_success(), "{}", purged.text());
    assert_eq!(get(&node, "k").await.status, StatusCode::NOT_FOUND);

    // Nothing else: 403, saying why, and counted.
    for (method, path) in [
        (Method::GET, "/metrics"),
        (Method::GET, "/cluster"),
        (Method::POST, "/drain"),
        (Method::GET, "/"),
    ] {
        let r = admin(&node, method.clone(), path, PURGER, "").await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{method} {path}");
        assert!(r.text().contains("may purge only"), "{}", r.text());
    }
    assert_eq!(refusals(&node, "scope").await, 4.0);
    // A wrong token is 401 on either scope.
    let wrong = admin(&node, Method::POST, "/purge", "nope", r#"{"keys":["k"]}"#).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        purge_on_main_port(&node, "k", "nope").await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(refusals(&node, "unauthorized").await, 2.0);
    // And the node still serves: the drain above was refused.
    assert_eq!(
        admin(&node, Method::GET, "/readyz", "", "").await.status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_rotate_by_reload_with_both_valid_in_between() {
    let (tmp, data) = data_dir();
    let file = tmp.path().join("fanz.toml");
    let write = |admin: &str, purge: &str| {
        std::fs::write(
            &file,
            format!("admin_token = \"{admin}\"\npurge_token = \"{purge}\"\n"),
        )
        .unwrap()
    };
    let status = |r: Reply| r.status;
    write("old", "p-old");
    let node = TestNode::start_with(&data, vec!["--config".into(), file.display().to_string()]);
    // Each reload is awaited by its count: the "new" token already opens the
    // metrics before the second one, so its effect cannot tell it has happened.
    let reload = |n: f64| {
        let node = &node;
        async move {
            signal(node.pid(), "HUP");
            wait_reloads(node, "new", "applied", n).await;
        }
    };
    write("new, old", "p-new,p-old");
    reload(1.0).await;
    for token in ["new", "old"] {
        let r = admin(&node, Method::GET, "/metrics", token, "").await;
        assert_eq!(status(r), StatusCode::OK, "{token} during the rotation");
    }
    for token in ["p-new", "p-old"] {
        let r = admin(&node, Method::POST, "/purge", token, r#"{"keys":["x"]}"#).await;
        assert_eq!(status(r), StatusCode::OK, "{token} during the rotation");
    }
    write("new", "p-new");
    reload(2.0).await;
    let old = admin(&node, Method::GET, "/metrics", "old", "").await;
    assert_eq!(
        old.status,
        StatusCode::UNAUTHORIZED,
        "the old token is gone"
    );
    let old = admin(&node, Method::POST, "/purge", "p-old", r#"{"keys":["x"]}"#).await;
    assert_eq!(old.status, StatusCode::UNAUTHORIZED);
    // A broken token list is refused and the running ones stay.
    write("new,,", "p-new");
    signal(node.pid(), "HUP");
    let start = Instant::now();
    while !node.log_text().contains("config reload rejected") {
        assert!(start.elapsed() < Duration::from_secs(10), "not rejected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(node.log_text().contains("admin_token"), "names the setting");
    let r = admin(&node, Method::GET, "/metrics", "new", "").await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_past_its_rate_limit_gets_429_with_retry_after() {
    let (_tmp, data) = data_dir();
    let node = start(&data, &["--admin-rate-limit", "5"]);
    // A burst of twice the rate per second passes; the rest of the second does not.
    let mut statuses = Vec::new();
    for _ in 0..14 {
        let r = admin(&node, Method::POST, "/purge", PURGER, r#"{"keys":["x"]}"#).await;
        statuses.push(r.status);
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
            assert!((1..=2).contains(&wait), "Retry-After: {wait}");
            assert!(r.text().contains("rate limit"), "{}", r.text());
        }
    }
    let refused = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    // 14 requests well within a second (or a few more tokens refilled if slow).
    assert!((1..=4).contains(&refused), "{statuses:?}");
    assert!(
        statuses[..10].iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
    // Each token has its own bucket: the admin token still works.
    let counted = refusals(&node, "rate_limited").await;
    assert_eq!(counted, refused as f64);
    // And the bucket refills.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let r = admin(&node, Method::POST, "/purge", PURGER, r#"{"keys":["x"]}"#).await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_allow_list_refuses_other_addresses_but_not_health_checks() {
    let (_tmp, data) = data_dir();
    // The tests reach the node from 127.0.0.1, which this list leaves out.
    let node = start(&data, &["--admin-allow", "10.0.0.0/8,192.0.2.0/24"]);
    let r = admin(&node, Method::GET, "/metrics", ADMIN, "").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(
        r.text().contains("127.0.0.1 is not in admin_allow"),
        "{}",
        r.text()
    );
    let r = admin(&node, Method::POST, "/purge", ADMIN, r#"{"keys":["x"]}"#).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = purge_on_main_port(&node, "x", ADMIN).await;
    assert_eq!(
        r.status,
        StatusCode::FORBIDDEN,
        "PURGE on the main port too"
    );
    for health in ["/healthz", "/readyz"] {
        let r = admin(&node, Method::GET, health, "", "").await;
        assert_eq!(r.status, StatusCode::OK, "{health}");
    }
    // The KV API is not admin: it stays open.
    assert!(put(&node, "k", "v", &[]).await.status.is_success());
    drop(node);

    let (_tmp, data) = data_dir();
    let node = start(&data, &["--admin-allow", "127.0.0.0/8"]);
    let r = admin(&node, Method::GET, "/metrics", ADMIN, "").await;
    assert_eq!(r.status, StatusCode::OK);
}

#[test]
fn bad_access_settings_stop_the_node_with_the_setting_named() {
    let (_tmp, data) = data_dir();
    for (args, named) in [
        (vec!["--purge-token", ""], "purge_token"),
        (vec!["--purge-token", "a,,b"], "purge_token"),
        (vec!["--admin-token", "a b"], "admin_token"),
        (
            vec!["--admin-token", "same", "--purge-token", "same"],
            "purge_token",
        ),
        (vec!["--admin-allow", "10.0.0.1/8"], "admin_allow"),
        (vec!["--admin-allow", "10.0.0.0/33"], "admin_allow"),
        (vec!["--admin-rate-limit", "lots"], "admin_rate_limit"),
    ] {
        let mut all = vec!["--data-dir".to_string(), data.display().to_string()];
        all.extend(args.iter().map(|s| s.to_string()));
        let out = std::process::Command::new(binary())
            .args(&all)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(named), "{args:?}: {err}");
    }
}
