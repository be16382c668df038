//! The harness's parameters. Short runs of the scenarios against real clusters join
//! this file as the defects they find are fixed: today `rolling-restart` finds stale
//! reads in every seed tried, and `kill-restart` and `pause` did in some runs
//! (docs/RELIABILITY.md, "Findings of the fault harness"); CI must not depend on a
//! run that happens to pass. Runs are by hand:
//! `cargo run --release -p fanz-cluster-test -- run SCENARIO --duration 30 --seed N`.

use std::time::Duration;

use fanz_cluster_test::scenario::{run, Settings};

fn short(scenario: &str, seed: u64) -> Settings {
    Settings {
        scenario: scenario.into(),
        nodes: 3,
        duration: Duration::from_secs(6),
        seed,
        workers: 4,
        node_args: Vec::new(),
        log_dir: None,
    }
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
