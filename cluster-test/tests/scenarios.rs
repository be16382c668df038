//! A short run of every scenario against a real cluster (3 `fanz-node` processes,
//! each in its own network namespace when the tests run as root with iproute2 and
//! nftables; `.ci/run` sets `FANZ_REQUIRE_NAMESPACES=1` so that there a run that
//! could not make them fails instead of skipping its network faults), and the
//! harness's parameter checks. The runs take turns: two clusters at once on a
//! 2-core machine would measure the machine, not the cluster.
//!
//! Each run must pass every checker (no read after an acknowledged purge, no stale
//! or lost write) and meet the targets that one run can show: no failed
//! operation through the client across a rolling restart, under 0.1% through a
//! node loss, failure detection under 3 s, a restarted node answering within 5 s,
//! no false "down" for a 1 s pause. Long soak runs are by hand:
//! `cargo run --release -p fanz-cluster-test -- soak --runs 50 --duration 20`.
//!
//! The `fanz-node` binary must be built (`cargo test --workspace` builds it).

use std::time::Duration;

use fanz_cluster_test::scenario::{run, Outcome, Settings};

/// One cluster at a time.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn short(scenario: &str, seed: u64) -> Settings {
    Settings {
        scenario: scenario.into(),
        nodes: 3,
        duration: Duration::from_secs(8),
        seed,
        workers: 4,
        node_args: Vec::new(),
        // Kept after the run (the last run of each scenario and seed), so a failure
        // seen in CI can be read from the node logs (RELIABILITY finding 15).
        log_dir: Some(
            std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
                .join(format!("scenario-{scenario}-{seed}")),
        ),
    }
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Runs `scenario` and checks what every run must show.
async fn run_short(scenario: &str, seed: u64) -> Outcome {
    let _turn = TURN.lock().await;
    let outcome = run(&short(scenario, seed))
        .await
        .unwrap_or_else(|e| panic!("{scenario} could not run: {e:#}"));
    let report = fanz_cluster_test::report::markdown(&outcome);
    assert!(outcome.pass(), "{report}");
    assert!(
        outcome.operations > 300,
        "too few operations to judge: {report}"
    );
    if std::env::var("FANZ_REQUIRE_NAMESPACES").is_ok_and(|v| v == "1") {
        // In CI no network fault may be skipped for want of namespaces.
        assert_eq!(outcome.placement, "namespaces", "{report}");
    } else if outcome.placement != "namespaces" {
        eprintln!(
            "cluster-test: {scenario} ran on loopback; its network faults were SKIPPED: {:?}",
            outcome.skipped
        );
    }
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_restart_loses_no_client_operation_and_recovers_within_5_s() {
    let outcome = run_short("kill-restart", 7).await;
    let report = fanz_cluster_test::report::markdown(&outcome);
    let fault = &outcome.faults[0];
    assert!(
        outcome.errors.client_failure_rate() < 0.001,
        "client failures through a node loss: {report}"
    );
    assert!(
        fault.detection_ms.is_some_and(|ms| ms < 3_000),
        "detection: {report}"
    );
    assert!(
        fault.recovery_ms.is_some_and(|ms| ms < 5_000),
        "restart to serving: {report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_second_pause_is_not_declared_down() {
    let outcome = run_short("pause", 7).await;
    assert_eq!(
        outcome.faults[0].false_positive,
        Some(false),
        "{}",
        fanz_cluster_test::report::markdown(&outcome)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_fails_no_client_operation() {
    let outcome = run_short("rolling-restart", 42).await;
    assert_eq!(
        outcome.errors.failed_client_ops,
        0,
        "{}",
        fanz_cluster_test::report::markdown(&outcome)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_faults_keep_every_acknowledged_purge() {
    for (scenario, seed) in [("partition-one", 7), ("partition-split", 11), ("loss", 7)] {
        let outcome = run_short(scenario, seed).await;
        if outcome.placement == "namespaces" {
            let report = fanz_cluster_test::report::markdown(&outcome);
            assert_eq!(outcome.faults.len(), 1, "{report}");
            assert!(
                outcome.faults[0].caught_up_ms.is_some(),
                "purges reach every member again after the heal: {report}"
            );
        } else {
            // Not root: skipped, and said so.
            assert!(!outcome.skipped.is_empty());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_runs_or_says_why_not() {
    let outcome = run_short("latency", 7).await;
    let report = fanz_cluster_test::report::markdown(&outcome);
    match (outcome.faults.len(), outcome.skipped.first()) {
        (1, None) => {}
        (0, Some(why)) => assert!(
            why.contains("netem") || why.contains("namespace"),
            "{report}"
        ),
        _ => panic!("neither run nor skipped with a reason: {report}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_on_one_node_loses_nothing_acknowledged() {
    let outcome = run_short("full-disk", 7).await;
    if is_root() {
        assert_eq!(
            outcome.faults.len(),
            1,
            "{}",
            fanz_cluster_test::report::markdown(&outcome)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_faults_one_after_another() {
    let mut settings = short("random", 5);
    settings.duration = Duration::from_secs(15);
    let _turn = TURN.lock().await;
    let outcome = run(&settings).await.expect("random runs");
    let report = fanz_cluster_test::report::markdown(&outcome);
    assert!(outcome.pass(), "{report}");
    assert!(outcome.faults.len() >= 2, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impossible_parameters_are_refused_with_a_reason() {
    let err = run(&short("no-such-scenario", 1))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("unknown scenario") && err.contains("kill-restart"),
        "{err}"
    );
    let mut two = short("pause", 1);
    two.nodes = 2;
    assert!(run(&two).await.unwrap_err().to_string().contains("--nodes"));
    let mut long = short("pause", 1);
    long.duration = Duration::from_secs(1);
    assert!(run(&long)
        .await
        .unwrap_err()
        .to_string()
        .contains("--duration"));
}

/// Pids of the processes the harness started: nodes (they carry the harness's
/// admin token) and its origin.
fn harness_processes() -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let node = cmdline.contains("fanz-node") && cmdline.contains("cluster-test-token");
        let origin = cmdline.contains("fanz-bench") && cmdline.contains("--versioned");
        if node || origin {
            pids.push(pid);
        }
    }
    pids
}

/// tmpfs mounts on node data directories (`.../nN/data`).
fn data_mounts() -> Vec<String> {
    std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("tmpfs "))
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|path| path.ends_with("/data"))
        .map(str::to_string)
        .collect()
}

fn harness_namespaces() -> Vec<String> {
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    out.lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with("fzt"))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_run_leaves_no_process_namespace_or_mount() {
    let _turn = TURN.lock().await;
    for (signal, code) in [("INT", 130), ("TERM", 143)] {
        let out = tempfile::tempdir().unwrap();
        let mut harness = std::process::Command::new(env!("CARGO_BIN_EXE_fanz-cluster-test"))
            .args([
                "run",
                "full-disk",
                "--duration",
                "60",
                "--workers",
                "2",
                "--seed",
                "1",
            ])
            .arg("--out")
            .arg(out.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Wait until the cluster is up: 3 nodes and the origin.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let started = loop {
            let pids = harness_processes();
            if pids.len() >= 4 {
                break pids;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the cluster never started"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let namespaces = harness_namespaces();
        let mounted: Vec<String> = data_mounts();
        if is_root() {
            assert_eq!(namespaces.len(), 3, "{namespaces:?}");
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let sent = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(harness.id().to_string())
            .status()
            .unwrap();
        assert!(sent.success());
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = harness.try_wait().unwrap() {
                break status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "SIG{signal} did not stop it"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(status.code(), Some(code), "SIG{signal}");
        for pid in &started {
            assert!(
                !std::path::Path::new(&format!("/proc/{pid}")).exists(),
                "SIG{signal}: process {pid} left running"
            );
        }
        let left: Vec<String> = harness_namespaces()
            .into_iter()
            .filter(|n| namespaces.contains(n))
            .collect();
        assert!(left.is_empty(), "SIG{signal}: namespaces left: {left:?}");
        if is_root() {
            assert_eq!(mounted.len(), 1, "the full disk's tmpfs: {mounted:?}");
        }
        let still: Vec<String> = data_mounts()
            .into_iter()
            .filter(|m| mounted.contains(m))
            .collect();
        assert!(still.is_empty(), "SIG{signal}: still mounted: {still:?}");
    }
}
