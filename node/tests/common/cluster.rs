//! Clusters of real `fanz-node` processes on loopback: trust material from the real
//! `fanz-node cluster-init`, one process per node, membership read from `/cluster`.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Method;

use super::{binary, send, TestNode, TOKEN};

/// A free UDP port on 127.0.0.1.
pub fn free_udp_addr() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Runs `fanz-node cluster-init DIR --nodes N`; returns the node directories.
pub fn cluster_init(dir: &Path, nodes: usize) -> Vec<PathBuf> {
    let out = std::process::Command::new(binary())
        .arg("cluster-init")
        .arg(dir)
        .arg("--nodes")
        .arg(nodes.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cluster-init failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (1..=nodes).map(|n| dir.join(format!("node-{n}"))).collect()
}

/// Gossip timings for tests: fast enough to detect a failure in about 1.5 s.
pub const FAST: &[&str] = &["--gossip-probe-period", "200ms", "--gossip-suspicion", "1s"];

/// Anti-entropy rounds far apart (leases long enough for them): with the test
/// hook `FANZ_TEST_APPLY_DELAY_MS`, which holds back only pushed records, a member
/// then stays behind for the whole delay instead of pulling the record sooner.
pub const SLOW_ANTI_ENTROPY: &[&str] = &["--sync-interval", "5s", "--max-unsynced", "10s"];

/// One member of a test cluster.
pub struct ClusterNode {
    pub node: TestNode,
    pub id: String,
    pub gossip: SocketAddr,
    _tmp: tempfile::TempDir,
}

impl ClusterNode {
    /// Starts node `id` with `cluster_dir`, joining through `seeds`.
    pub fn start(id: &str, cluster_dir: &Path, seeds: &[SocketAddr], extra: &[&str]) -> Self {
        Self::start_with_env(id, cluster_dir, seeds, extra, &[])
    }

    /// [`Self::start`] with environment variables for the process (test hooks).
    pub fn start_with_env(
        id: &str,
        cluster_dir: &Path,
        seeds: &[SocketAddr],
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        // Free ports are not held until the node binds them: on a collision, retry.
        for _ in 0..5 {
            match Self::try_start(id, cluster_dir, seeds, extra, env) {
                Ok(node) => return node,
                Err(log) if log.contains("Address already in use") => continue,
                Err(log) => panic!("fanz-node {id} exited during start-up; log:\n{log}"),
            }
        }
        panic!("no free ports for {id} after five tries");
    }

    fn try_start(
        id: &str,
        cluster_dir: &Path,
        seeds: &[SocketAddr],
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self, String> {
        let tmp = tempfile::tempdir().unwrap();
        let gossip = free_udp_addr();
        let seeds = seeds
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let (gossip_s, peer_s) = (gossip.to_string(), free_udp_addr().to_string());
        let mut args = vec![
            "--cluster-dir",
            cluster_dir.to_str().unwrap(),
            "--node-id",
            id,
            "--gossip-addr",
            &gossip_s,
            "--peer-addr",
            &peer_s,
        ];
        if !seeds.is_empty() {
            args.extend(["--seeds", seeds.as_str()]);
        }
        args.extend(extra);
        let mut all = vec!["--admin-token".to_string(), TOKEN.to_string()];
        all.extend(args.iter().map(|s| s.to_string()));
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let node = TestNode::try_start_with_env(&tmp.path().join("data"), all, env)?;
        Ok(Self {
            node,
            id: id.to_string(),
            gossip,
            _tmp: tmp,
        })
    }
}

/// `GET /cluster` of a node.
pub async fn cluster_report(node: &TestNode) -> serde_json::Value {
    let bearer = format!("Bearer {TOKEN}");
    let r = send(
        Method::GET,
        &node.admin_url("/cluster"),
        &[("authorization", &bearer)],
        "",
    )
    .await;
    assert_eq!(r.status, http::StatusCode::OK, "{}", r.text());
    r.json()
}

/// Member id -> state, as `node` sees them.
pub async fn states(node: &TestNode) -> Vec<(String, String)> {
    let report = cluster_report(node).await;
    report["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["id"].as_str().unwrap().to_string(),
                m["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Polls until `check` holds for what `node` reports, or panics after `limit`.
/// Returns how long it took.
pub async fn wait_until(
    node: &TestNode,
    limit: Duration,
    what: &str,
    check: impl Fn(&[(String, String)]) -> bool,
) -> Duration {
    let every = Duration::from_millis(50);
    super::eventually(limit, every, what, || async {
        let seen = states(node).await;
        if check(&seen) {
            Ok(())
        } else {
            Err(seen)
        }
    })
    .await
    .1
}

/// Whether `id` has `state` in `seen`.
pub fn has(seen: &[(String, String)], id: &str, state: &str) -> bool {
    seen.iter().any(|(i, s)| i == id && s == state)
}

/// Starts `n` nodes (`n1`...) from one `cluster-init`, all joining through `n1`,
/// each with `extra` arguments, and waits until every node sees all of them alive.
pub async fn start_cluster(n: usize, extra: &[&str]) -> (tempfile::TempDir, Vec<ClusterNode>) {
    start_cluster_with_env(n, extra, &[]).await
}

/// [`start_cluster`] with environment variables for every process (test hooks).
pub async fn start_cluster_with_env(
    n: usize,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (tempfile::TempDir, Vec<ClusterNode>) {
    let tmp = tempfile::tempdir().unwrap();
    let dirs = cluster_init(tmp.path(), n);
    let first = ClusterNode::start_with_env("n1", &dirs[0], &[], extra, env);
    let seed = first.gossip;
    let mut nodes = vec![first];
    for (i, dir) in dirs.iter().enumerate().skip(1) {
        nodes.push(ClusterNode::start_with_env(
            &format!("n{}", i + 1),
            dir,
            &[seed],
            extra,
            env,
        ));
    }
    for node in &nodes {
        wait_until(
            &node.node,
            Duration::from_secs(15),
            "every member alive",
            |s| s.iter().filter(|(_, st)| st == "alive").count() == n,
        )
        .await;
    }
    (tmp, nodes)
}

/// A cluster directory that shares `ours`'s gossip key and CA but holds `theirs`'s
/// node certificate: the node gossips with the cluster, but every peer-protocol
/// (mutual TLS) connection to or from it is refused.
pub fn impostor_dir(at: &Path, ours: &Path, theirs: &Path) -> PathBuf {
    std::fs::create_dir_all(at).unwrap();
    for f in ["ca.pem", "cluster.keys"] {
        std::fs::copy(ours.join(f), at.join(f)).unwrap();
    }
    for f in ["node.pem", "node-key.pem"] {
        std::fs::copy(theirs.join(f), at.join(f)).unwrap();
    }
    at.to_path_buf()
}
