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

/// The free port standing in for each port the kit names, and the text with them.
struct Ports(Vec<(u16, u16)>);

impl Ports {
    fn new() -> Self {
        let tcp = |_| free_addr().port();
        let udp = |_| common::cluster::free_udp_addr().port();
        Ports(vec![
            (8080, tcp(())),
            (6380, tcp(())),
            (9090, tcp(())),
            (8443, udp(())),
            (7946, udp(())),
            (7947, udp(())),
        ])
    }

    fn of(&self, port: u16) -> u16 {
        self.0.iter().find(|(p, _)| *p == port).unwrap().1
    }

    fn rewrite(&self, value: &str) -> String {
        let mut out = value.to_string();
        for (kit, free) in &self.0 {
            out = out.replace(&format!(":{kit}"), &format!(":{free}"));
        }
        out
    }
}

/// The `KEY=value` pairs of the runtime stage's `ENV` instruction.
fn dockerfile_env() -> Vec<(String, String)> {
    let text = read(&deploy().join("Dockerfile"));
    let start = text.find("\nENV ").expect("an ENV instruction") + 5;
    let mut pairs = Vec::new();
    for line in text[start..].lines() {
        let continued = line.trim_end().ends_with('\\');
        for word in line.trim_end_matches('\\').split_whitespace() {
            let (k, v) = word.split_once('=').expect("KEY=value");
            pairs.push((k.to_string(), v.to_string()));
        }
        if !continued {
            break;
        }
    }
    pairs
}

/// The `name:`/`value:` pairs of the StatefulSet's container environment (the
/// `valueFrom` ones are left out: the test supplies them).
fn statefulset_env() -> Vec<(String, String)> {
    let text = read(&deploy().join("k8s/statefulset.yaml"));
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    lines
        .windows(2)
        .filter_map(|w| {
            let name = w[0].strip_prefix("- name: ")?;
            let value = w[1].strip_prefix("value: ")?;
            Some((name.to_string(), value.trim_matches('"').to_string()))
        })
        .filter(|(name, _)| name.starts_with("FANZ_"))
        .collect()
}

fn sibling(name: &str) -> PathBuf {
    let path = Path::new(binary()).with_file_name(name);
    assert!(
        path.exists(),
        "{} is missing: run the workspace's tests (cargo test --workspace), which build it",
        path.display()
    );
    path
}

/// Runs `fanz-node` with exactly `env` (and PATH).
fn spawn_with_env(env: &[(String, String)], log: &Path) -> std::process::Child {
    let out = std::fs::File::create(log).unwrap();
    std::process::Command::new(binary())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap()
}

/// A node process killed if the test fails before stopping it.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a node with the environment `env_for` gives for fresh free ports and waits
/// until it is ready. A port another test took between our picking it and the node
/// binding it (the node exits: address in use) is retried with new ports.
async fn start_ready(
    log: &Path,
    env_for: impl Fn(&Ports) -> Vec<(String, String)>,
) -> (Running, Ports, Vec<(String, String)>) {
    for _ in 0..5 {
        let ports = Ports::new();
        let env = env_for(&ports);
        let mut node = Running(spawn_with_env(&env, log));
        match ready_or_exit(ports.of(9090), &mut node.0, log).await {
            Ok(()) => return (node, ports, env),
            Err(text) if text.contains("Address already in use") => continue,
            Err(text) => panic!("{text}"),
        }
    }
    panic!("no free ports after five tries");
}

/// Waits until the node's admin port answers `/readyz` with 200; `Err` with its log
/// if it exited first.
async fn ready_or_exit(
    admin: u16,
    child: &mut std::process::Child,
    log: &Path,
) -> Result<(), String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Err(format!("fanz-node exited ({status}):\n{}", read(log)));
        }
        // Refused until the node listens.
        let addr: std::net::SocketAddr = ([127, 0, 0, 1], admin).into();
        if std::net::TcpStream::connect(addr).is_ok()
            && raw_request(
                addr,
                b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            )
            .starts_with("HTTP/1.1 200")
        {
            return Ok(());
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not ready:\n{}",
            read(log)
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

fn stop(child: &mut std::process::Child) -> std::process::ExitStatus {
    signal(child.id(), "TERM");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("no exit within 20 s of SIGTERM");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The image's environment: without a token the node refuses to start (its admin
/// port listens on every interface); with one it serves, and the image's
/// HEALTHCHECK command passes.
#[tokio::test(flavor = "multi_thread")]
async fn the_images_environment_needs_a_token_then_serves_and_passes_its_health_check() {
    let tmp = tempfile::tempdir().unwrap();
    let image_env = |ports: &Ports| -> Vec<(String, String)> {
        dockerfile_env()
            .into_iter()
            .map(|(k, v)| match k.as_str() {
                "FANZ_DATA_DIR" => (k, tmp.path().join("data").display().to_string()),
                _ => (k, ports.rewrite(&v)),
            })
            .collect()
    };
    let env = image_env(&Ports::new());
    assert!(env
        .iter()
        .any(|(k, v)| k == "FANZ_ADMIN_ADDR" && v.starts_with("0.0.0.0:")));
    let log = tmp.path().join("node.log");
    let refused = spawn_with_env(&env, &log).wait_with_output().unwrap();
    assert_eq!(refused.status.code(), Some(2), "{}", read(&log));
    assert!(read(&log).contains("admin_token"), "{}", read(&log));

    let (mut node, _ports, env) = start_ready(&log, |ports| {
        let mut env = image_env(ports);
        env.push(("FANZ_ADMIN_TOKEN".into(), "image-token".into()));
        env
    })
    .await;
    // HEALTHCHECK CMD ["fanzctl", "--timeout", "2", "health"], in the image's env.
    let dockerfile = read(&deploy().join("Dockerfile"));
    let check = dockerfile
        .lines()
        .find_map(|l| l.trim().strip_prefix("CMD [\"fanzctl\", "))
        .expect("a fanzctl HEALTHCHECK");
    let args: Vec<String> = check
        .trim_end_matches(']')
        .split(", ")
        .map(|a| a.trim_matches('"').to_string())
        .collect();
    let health = std::process::Command::new(sibling("fanzctl"))
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .args(&args)
        .output()
        .unwrap();
    assert!(health.status.success(), "{health:?}");
    assert!(stop(&mut node.0).success(), "{}", read(&log));
}

/// The StatefulSet's environment with the pod's facts filled in, the ConfigMap's
/// file and a cluster directory: the node starts, passes its probes, drains the way
/// its preStop hook does, and stops on SIGTERM within its grace period.
#[tokio::test(flavor = "multi_thread")]
async fn the_statefulsets_environment_starts_a_node_that_probes_drains_and_stops() {
    let tmp = tempfile::tempdir().unwrap();
    let dirs = common::cluster::cluster_init(tmp.path(), 1);
    let log = tmp.path().join("node.log");
    let (mut node, ports, env) = start_ready(&log, |ports| {
        let pod = |v: &str| {
            ports.rewrite(
                &v.replace("$(POD_IP)", "127.0.0.1")
                    .replace("$(POD_NAME)", "fanz-edge-0")
                    .replace("$(POD_NAMESPACE)", "fanz-edge"),
            )
        };
        let mut env: Vec<(String, String)> = statefulset_env()
            .into_iter()
            .map(|(k, v)| match k.as_str() {
                "FANZ_DATA_DIR" => (k, tmp.path().join("data").display().to_string()),
                "FANZ_CLUSTER_DIR" => (k, dirs[0].display().to_string()),
                "FANZ_CONFIG" => (k, deploy().join("k8s/fanz.toml").display().to_string()),
                _ => (k, pod(&v)),
            })
            .collect();
        env.push(("FANZ_ADMIN_TOKEN".into(), "k8s-token".into()));
        env
    })
    .await;
    assert!(env.len() >= 11, "{env:?}");
    let admin = ports.of(9090);
    let live = send(
        http::Method::GET,
        &format!("http://127.0.0.1:{admin}/healthz"),
        &[],
        "",
    )
    .await;
    assert_eq!(live.status, http::StatusCode::OK);
    let members = send(
        http::Method::GET,
        &format!("http://127.0.0.1:{admin}/cluster"),
        &[("authorization", "Bearer k8s-token")],
        "",
    )
    .await
    .json();
    assert_eq!(members["node_id"], "fanz-edge-0", "{members}");

    let drain = std::process::Command::new(sibling("fanzctl"))
        .env("FANZ_ADMIN_TOKEN", "k8s-token")
        .args([
            "--endpoint",
            &format!("http://127.0.0.1:{admin}"),
            "--timeout",
            "5",
            "drain",
        ])
        .output()
        .unwrap();
    assert!(drain.status.success(), "{drain:?}");
    let ready = send(
        http::Method::GET,
        &format!("http://127.0.0.1:{admin}/readyz"),
        &[],
        "",
    )
    .await;
    assert_eq!(ready.status, http::StatusCode::SERVICE_UNAVAILABLE);
    let started = std::time::Instant::now();
    assert!(stop(&mut node.0).success(), "{}", read(&log));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(50),
        "within terminationGracePeriodSeconds less the preStop wait"
    );
}
