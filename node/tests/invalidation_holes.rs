//! Issue 18: the ways a purged object could come back, each closed with a test that
//! failed before its fix. Single-node holes here; the cluster ones are in
//! `cluster_purge.rs`.

mod common;

use std::time::{Duration, Instant};

use common::origin::{respond, TestOrigin};
use common::*;
use http::{Method, StatusCode};

/// Waits until the node holds no tombstone (they have been collected).
async fn wait_tombstones_collected(node: &TestNode) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let m = node.metrics().await;
        if metric_value(&m, "fanz_invalidation_tombstones") == Some(0.0) {
            return;
        }
        assert!(Instant::now() < deadline, "tombstones never collected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn get_lang(node: &TestNode, path: &str, lang: &str) -> Reply {
    request(node, Method::GET, path, &[("accept-language", lang)], "").await
}

// Hole 1: an origin lifetime (a year) longer than tombstone retention (3 s here).
// Before: once the purge's tombstone was collected, the purged object was served
// again as a hit, from memory, from the disk tier after a restart, and as a stale
// copy while the origin was unavailable.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_purged_object_stays_purged_after_its_tombstone_is_collected() {
    let origin = TestOrigin::start(|req, n| {
        if req.path == "/fail" {
            return respond(503, &[], "down");
        }
        respond(
            200,
            &[
                ("cache-control", "max-age=31536000"),
                ("surrogate-key", "t"),
                ("vary", "accept-language"),
            ],
            format!("{} #{n}", req.path),
        )
    })
    .await;
    let (_tmp, data) = data_dir();
    let url = origin.url();
    let mut node = TestNode::start(
        &data,
        &[
            "--origin",
            url.as_str(),
            "--default-ttl",
            "1s",
            "--max-ttl",
            "2s",
            "--max-stale",
            "1s",
            "--maintenance-interval",
            "200ms",
            "--breaker-failures",
            "1",
            "--breaker-statuses",
            "503",
            "--breaker-open",
            "60s",
        ],
    );
    for path in ["/mem", "/down", "/restart"] {
        for lang in ["en", "fr"] {
            let r = get_lang(&node, path, lang).await;
            assert_eq!(r.status, StatusCode::OK);
        }
        assert_eq!(
            get_lang(&node, path, "fr").await.text(),
            format!("{path} #2")
        );
        assert_eq!(origin.count(path), 2, "{path}: both variants stored");
    }
    node.wait_disk_written(1).await;
    let purged = admin_purge(&node, r#"{"tags":["t"]}"#).await;
    assert_eq!(purged.status, StatusCode::OK, "{}", purged.text());
    wait_tombstones_collected(&node).await;

    // From memory: the purged variants are misses.
    for lang in ["en", "fr"] {
        let r = get_lang(&node, "/mem", lang).await;
        assert!(
            !r.text().ends_with("#1") && !r.text().ends_with("#2"),
            "{lang}: a purged variant came back: {} ({:?})",
            r.text(),
            r.header("cache-status")
        );
    }

    // While the origin is unavailable (its breaker open), a purged copy is not a
    // stale copy to serve: nothing is stored, so 503.
    assert_eq!(get_lang(&node, "/fail", "en").await.status, 503);
    let r = get_lang(&node, "/down", "en").await;
    assert_eq!(
        r.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "a purged copy served while the origin is unavailable: {} ({:?})",
        r.text(),
        r.header("cache-status")
    );

    // From the disk tier, after a restart (and a collection after it).
    node.terminate();
    node.restart();
    wait_tombstones_collected(&node).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for lang in ["en", "fr"] {
        let r = get_lang(&node, "/restart", lang).await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(
            !r.text().ends_with("#1") && !r.text().ends_with("#2"),
            "{lang}: a purged variant came back after a restart: {} ({:?})",
            r.text(),
            r.header("cache-status")
        );
    }
}
