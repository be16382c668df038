//! Restarts of a real `fanz-node` (SIGKILL included): the disk tier comes back warm,
//! acknowledged purges and dependency edges survive, corrupt data is never served,
//! and start-up fails clearly on bad settings.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::Command;

use common::*;
use http::StatusCode;

#[tokio::test]
async fn sigkill_then_restart_serves_the_disk_tier() {
    let (_tmp, data) = data_dir();
    let mut node = TestNode::start(&data, &[]);
    for i in 0..50 {
        let r = put(
            &node,
            &format!("warm:{i}"),
            &format!("value {i}"),
            &[("cache-control", "max-age=3600")],
        )
        .await;
        assert_eq!(r.status, StatusCode::CREATED);
    }
    node.wait_disk_written(50 * 20).await;
    node.kill();
    node.restart();
    for i in 0..50 {
        let r = get(&node, &format!("warm:{i}")).await;
        assert_eq!(r.status, StatusCode::OK, "warm:{i} lost across SIGKILL");
        assert_eq!(r.text(), format!("value {i}"));
        if i == 0 {
            let status = r.header("cache-status").unwrap();
            assert!(
                status.contains("detail=disk"),
                "first read after restart should come from disk: {status}"
            );
        }
    }
}

/// Writes are acknowledged from memory and reach the disk tier in batches every 2 ms
/// (README, "What a crash keeps"). A SIGKILL right after acknowledged overwrites may
/// lose them: each key then reads as it was before them or as they wrote it, never
/// absent and never older (the small-entry log comes back as it stood at a batch),
/// and a delete acknowledged before them never comes undone.
#[tokio::test]
async fn sigkill_right_after_overwrites_keeps_each_key_as_it_was_or_as_written() {
    let (_tmp, data) = data_dir();
    let mut node = TestNode::start(&data, &[]);
    for i in 0..20 {
        put(&node, &format!("c{i}"), &format!("v1-{i}"), &[]).await;
    }
    put(&node, "gone", "x", &[]).await;
    node.wait_disk_written(21 * 20).await;
    let deleted = request(&node, http::Method::DELETE, "/kv/gone", &[], "").await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    // Overwrites one after another on one connection, then the kill at once: the
    // last batch is most likely still in memory.
    let mut conn = std::net::TcpStream::connect(node.http).unwrap();
    for i in 0..20 {
        let status_line = put_on(&mut conn, &format!("c{i}"), &format!("v2-{i}"));
        assert!(status_line.starts_with("HTTP/1.1 204"), "{status_line}");
    }
    node.kill();
    node.restart();
    let mut reverted = 0;
    for i in 0..20 {
        let r = get(&node, &format!("c{i}")).await;
        assert_eq!(r.status, StatusCode::OK, "c{i} lost across SIGKILL");
        let value = r.text();
        assert!(
            value == format!("v1-{i}") || value == format!("v2-{i}"),
            "c{i} read {value:?}"
        );
        reverted += usize::from(value == format!("v1-{i}"));
    }
    eprintln!("{reverted} of 20 acknowledged overwrites lost to the kill");
    assert_eq!(
        get(&node, "gone").await.status,
        StatusCode::NOT_FOUND,
        "a delete acknowledged before the kill came undone"
    );
}

/// With `kv_write_ack = "written"`, a write is answered once the disk tier has
/// written it: a SIGKILL right after acknowledged overwrites loses none of them.
#[tokio::test]
async fn with_writes_acknowledged_once_written_sigkill_loses_none() {
    let (_tmp, data) = data_dir();
    let mut node = TestNode::start(&data, &["--kv-write-ack", "written"]);
    let mut conn = std::net::TcpStream::connect(node.http).unwrap();
    for round in 1..=2 {
        for i in 0..20 {
            let status_line = put_on(&mut conn, &format!("w{i}"), &format!("v{round}-{i}"));
            assert!(status_line.starts_with("HTTP/1.1 20"), "{status_line}");
        }
    }
    node.kill();
    node.restart();
    for i in 0..20 {
        let r = get(&node, &format!("w{i}")).await;
        assert_eq!(r.status, StatusCode::OK, "w{i} lost across SIGKILL");
        assert_eq!(
            r.text(),
            format!("v2-{i}"),
            "an acknowledged write of w{i} lost"
        );
    }
}

#[tokio::test]
async fn an_acknowledged_purge_survives_sigkill() {
    let (_tmp, data) = data_dir();
    let mut node = TestNode::start(&data, &[]);
    for i in 0..20 {
        let tag = if i % 2 == 0 { "even" } else { "odd" };
        put(&node, &format!("n{i}"), "x", &[("surrogate-key", tag)]).await;
    }
    put(&node, "user:9", "x", &[]).await;
    put(&node, "page", "x", &[("fanz-depends-on", "user:9")]).await;
    node.wait_disk_written(22 * 20).await;
    // Purges acknowledged, then the process dies before any clean shutdown.
    assert_eq!(
        admin_purge(&node, r#"{"tags":["even"]}"#).await.status,
        StatusCode::OK
    );
    assert_eq!(
        admin_purge(&node, r#"{"prefixes":["user:"]}"#).await.status,
        StatusCode::OK
    );
    node.kill();
    node.restart();
    for i in 0..20 {
        let r = get(&node, &format!("n{i}")).await;
        let expected = if i % 2 == 0 {
            StatusCode::NOT_FOUND
        } else {
            StatusCode::OK
        };
        assert_eq!(r.status, expected, "n{i} after restart");
    }
    assert_eq!(get(&node, "user:9").await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        get(&node, "page").await.status,
        StatusCode::NOT_FOUND,
        "dependent of a purged prefix served after restart"
    );
}

#[tokio::test]
async fn dependency_edges_survive_sigkill() {
    let (_tmp, data) = data_dir();
    let mut node = TestNode::start(&data, &[]);
    put(&node, "base", "b", &[("surrogate-key", "root")]).await;
    put(&node, "mid", "m", &[("fanz-depends-on", "base")]).await;
    put(&node, "top", "t", &[("fanz-depends-on", "mid")]).await;
    node.wait_disk_written(3 * 20).await;
    node.kill();
    node.restart();
    assert_eq!(get(&node, "top").await.status, StatusCode::OK);
    // The edges were replayed from the log: purging the root tag reaches the chain.
    assert_eq!(
        admin_purge(&node, r#"{"tags":["root"]}"#).await.status,
        StatusCode::OK
    );
    for key in ["base", "mid", "top"] {
        assert_eq!(get(&node, key).await.status, StatusCode::NOT_FOUND, "{key}");
    }
}

/// Finds `marker` in the disk tier's files and flips one byte of it.
fn corrupt_on_disk(dir: &Path, marker: &[u8]) -> bool {
    for entry in walk(dir) {
        let mut bytes = std::fs::read(&entry).unwrap();
        if let Some(at) = bytes.windows(marker.len()).position(|w| w == marker) {
            bytes[at + marker.len() / 2] ^= 0x20;
            std::fs::write(&entry, &bytes).unwrap();
            return true;
        }
    }
    false
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[tokio::test]
async fn a_flipped_byte_on_disk_is_a_miss_never_served() {
    let (_tmp, data) = data_dir();
    let mut node = TestNode::start(&data, &[]);
    let marker = "CORRUPT-ME-".repeat(40);
    put(&node, "victim", &marker, &[]).await;
    put(&node, "bystander", "fine", &[]).await;
    // Both values: the marker's bytes and more.
    node.wait_disk_written(marker.len() as u64 + 4).await;
    node.kill();
    assert!(
        corrupt_on_disk(&data.join("cache"), marker.as_bytes()),
        "entry not found on disk"
    );
    node.restart();
    let r = get(&node, "victim").await;
    assert_eq!(
        r.status,
        StatusCode::NOT_FOUND,
        "a corrupt entry was served: {}",
        r.text()
    );
    assert_eq!(get(&node, "bystander").await.text(), "fine");
    let m = node.metrics().await;
    assert_eq!(
        metric_value(&m, "fanz_cache_corrupt_entries_dropped_total"),
        Some(1.0),
        "{m}"
    );
    // Dropped, not just hidden: a second read is a plain miss and counts nothing new.
    assert_eq!(get(&node, "victim").await.status, StatusCode::NOT_FOUND);
    let m = node.metrics().await;
    assert_eq!(
        metric_value(&m, "fanz_cache_corrupt_entries_dropped_total"),
        Some(1.0)
    );
}

#[tokio::test]
async fn a_torn_invalidation_log_keeps_every_whole_record() {
    let (_tmp, data) = data_dir();
    let mut node = TestNode::start(&data, &[]);
    put(&node, "gone", "x", &[("surrogate-key", "t1")]).await;
    put(&node, "kept", "x", &[]).await;
    node.wait_disk_written(2 * 20).await;
    assert_eq!(
        admin_purge(&node, r#"{"tags":["t1"]}"#).await.status,
        StatusCode::OK
    );
    node.kill();
    // A crash in the middle of appending the next record: a header promising more bytes.
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .open(data.join("invalidation.log"))
        .unwrap();
    log.write_all(&[40, 0, 0, 0, 1, 2, 3, 4, 1, b'k']).unwrap();
    drop(log);
    node.restart();
    assert!(
        node.log_text().contains("damaged or partial tail"),
        "the cut was not logged"
    );
    assert_eq!(
        get(&node, "gone").await.status,
        StatusCode::NOT_FOUND,
        "the whole purge record before the tear was lost"
    );
    assert_eq!(get(&node, "kept").await.status, StatusCode::OK);
}

fn run_binary(args: &[&str]) -> (i32, String) {
    let out = Command::new(binary())
        .args(args)
        .env_remove("FANZ_ADMIN_TOKEN")
        .output()
        .expect("run fanz-node");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn invalid_settings_stop_start_up_with_exit_code_2() {
    let (code, err) = run_binary(&["--memory-capacity", "lots"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("memory_capacity"), "{err}");

    let (code, err) = run_binary(&["--admin-addr", "0.0.0.0:0"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("admin_addr"), "{err}");

    let out = Command::new(binary())
        .env("FANZ_HTTP_ADDR", "not-an-address")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("FANZ_HTTP_ADDR"));
}

#[test]
fn an_unwritable_data_directory_is_a_clear_start_up_error() {
    let (tmp, _) = data_dir();
    // Running as root, permissions do not stop us: use a path under a regular file.
    let file = tmp.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let under_file = file.join("data");
    let (http, admin) = (free_addr().to_string(), free_addr().to_string());
    let (code, err) = run_binary(&[
        "--data-dir",
        under_file.to_str().unwrap(),
        "--http-addr",
        &http,
        "--admin-addr",
        &admin,
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("data_dir") && err.contains("cannot create"),
        "{err}"
    );
}

#[test]
fn two_nodes_cannot_share_a_data_directory() {
    let (_tmp, data) = data_dir();
    let _first = TestNode::start(&data, &[]);
    let (http, admin) = (free_addr().to_string(), free_addr().to_string());
    let (code, err) = run_binary(&[
        "--data-dir",
        data.to_str().unwrap(),
        "--http-addr",
        &http,
        "--admin-addr",
        &admin,
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("LOCK"), "{err}");
}

#[test]
fn starts_on_defaults_without_a_config_file_and_documents_every_setting() {
    let (code, help) = {
        let out = Command::new(binary()).arg("--help").output().unwrap();
        (
            out.status.code().unwrap(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    assert_eq!(code, 0);
    for flag in [
        "--http-addr",
        "--admin-addr",
        "--data-dir",
        "--memory-capacity",
        "--disk-capacity",
        "FANZ_ADMIN_TOKEN",
        "--config",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
    let out = Command::new(binary()).arg("print-config").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("http_addr = \"127.0.0.1:8080\""), "{text}");
    assert!(text.contains("disk_capacity = \"1073741824\""), "{text}");
}
