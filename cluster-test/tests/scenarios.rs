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
        log_dir: None,
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
