//! The deployment kit (`deploy/`) against the node it deploys: every metric the
//! Grafana dashboard and the alert rules query is one a real node exports, and
//! every `FANZ_*` variable the Dockerfile, compose file and Kubernetes manifests set
//! is a setting `fanz-node` (or `fanzctl`) reads. Schema validation of the same files
//! is `deploy/validate`, which CI runs.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use common::*;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Words that start with `prefix` and go on with `allowed` characters.
fn words(text: &str, prefix: &str, allowed: impl Fn(char) -> bool) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find(prefix) {
        let tail = &rest[at..];
        let end = tail[prefix.len()..]
            .find(|c: char| !allowed(c))
            .map_or(tail.len(), |n| n + prefix.len());
        // Only whole words: not the end of a longer name.
        let before = rest[..at].chars().next_back();
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            found.insert(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    found
}

/// Sample names a node's `/metrics` can hold, from its `# TYPE` lines (families
/// without samples yet are declared too).
fn exported(metrics: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in metrics.lines() {
        let mut parts = line.split_whitespace();
        if let (Some("#"), Some("TYPE"), Some(name), Some(kind)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        {
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                _ => &[""],
            };
            names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
        }
    }
    names
}

#[tokio::test]
async fn the_dashboard_and_alerts_query_only_metrics_a_node_exports() {
    let tmp = tempfile::tempdir().unwrap();
    let dirs = common::cluster::cluster_init(tmp.path(), 1);
    let cluster_dir = dirs[0].display().to_string();
    let (_data_tmp, data) = data_dir();
    let node = TestNode::start(
        &data,
        &[
            "--cluster-dir",
            &cluster_dir,
            "--gossip-addr",
            &common::cluster::free_udp_addr().to_string(),
            "--peer-addr",
            &common::cluster::free_udp_addr().to_string(),
            "--origin",
            "http://127.0.0.1:9",
        ],
    );
    // Families with labels appear once something happened to them: a request to
    // the (unreachable) origin, a purge.
    let _ = request(&node, http::Method::GET, "/page", &[], "").await;
    assert_eq!(
        admin_purge(&node, r#"{"tags":["t"],"keys":["k"]}"#)
            .await
            .status,
        http::StatusCode::OK
    );
    let exported = exported(&node.metrics().await);
    assert!(
        exported.contains("fanz_cache_lookups_total"),
        "{exported:?}"
    );

    let metric_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_';
    for file in [
        "grafana/fanz-edge.json",
        "prometheus/alerts.yml",
        "prometheus/alerts_test.yml",
    ] {
        let used = words(&read(&deploy().join(file)), "fanz_", metric_char);
        assert!(used.len() >= 3, "{file}: {used:?}");
        let unknown: Vec<_> = used.difference(&exported).collect();
        assert!(
            unknown.is_empty(),
            "{file} queries metrics no node exports: {unknown:?}"
        );
    }
}

#[test]
fn every_fanz_variable_the_kit_sets_is_a_setting() {
    let mut known: BTreeSet<String> = fanz_node::config::SETTINGS
        .iter()
        .map(|s| s.env())
        .collect();
    // fanz-node's --config, and fanzctl's endpoint (the token is a setting already).
    known.extend(["FANZ_CONFIG".to_string(), "FANZ_ENDPOINT".to_string()]);
    let env_char = |c: char| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_';
    let mut files = vec![deploy().join("Dockerfile"), deploy().join("compose.yaml")];
    files.extend(
        std::fs::read_dir(deploy().join("k8s"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml")),
    );
    let mut seen = 0;
    for file in &files {
        let used = words(&read(file), "FANZ_", env_char);
        seen += used.len();
        let unknown: Vec<_> = used.difference(&known).collect();
        assert!(
            unknown.is_empty(),
            "{} sets variables fanz-node does not read: {unknown:?}",
            file.display()
        );
    }
    assert!(
        seen > 20,
        "only {seen} variables found: is the scan broken?"
    );

    // And the settings file the Kubernetes ConfigMap carries parses.
    let raw = fanz_node::config::read_file(&deploy().join("k8s/fanz.toml"))
        .expect("deploy/k8s/fanz.toml is a valid settings file");
    fanz_node::config::Config::resolve(&raw).expect("deploy/k8s/fanz.toml resolves");
}

#[test]
fn the_word_scanner_finds_whole_names_only() {
    let found = words("a fanz_x_total{y} xfanz_no fanz_b", "fanz_", |c| {
        c.is_ascii_lowercase() || c == '_'
    });
    assert_eq!(
        found,
        BTreeSet::from(["fanz_x_total".to_string(), "fanz_b".to_string()])
    );
}
