//! `fanz-cluster-test`: run fault scenarios against a real FANZ Edge cluster.
//!
//! ```sh
//! cargo build --release --workspace
//! cargo run --release -p fanz-cluster-test -- list
//! cargo run --release -p fanz-cluster-test -- run kill-restart --nodes 3 --duration 30 --seed 7
//! cargo run --release -p fanz-cluster-test -- soak --runs 50 --duration 20 --seed 1
//! cargo run --release -p fanz-cluster-test -- clean   # after a harness was SIGKILLed
//! ```
//!
//! Exit codes: 0 every checker passed; 1 a checker failed; 2 bad parameters or the
//! cluster could not be run; 3 the scenario's fault could not be made here (skipped,
//! with the reason printed); 130/143 interrupted by SIGINT/SIGTERM (everything it
//! made is removed first).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Arg, ArgAction, ArgMatches, Command};
use fanz_cluster_test::scenario::{self, Outcome, Settings, SCENARIOS};
use fanz_cluster_test::{netns, report, soak};

/// A run that takes this much longer than its workload is stopped and cleaned up.
const OVERRUN: Duration = Duration::from_secs(180);

fn run_args(command: Command) -> Command {
    command
        .arg(Arg::new("nodes").long("nodes").default_value("3"))
        .arg(
            Arg::new("duration")
                .long("duration")
                .default_value("30")
                .help("Seconds of workload"),
        )
        .arg(
            Arg::new("seed")
                .long("seed")
                .help("Seed (default: from the clock; printed)"),
        )
        .arg(Arg::new("workers").long("workers").default_value("8"))
        .arg(
            Arg::new("node-arg")
                .long("node-arg")
                .action(ArgAction::Append)
                .allow_hyphen_values(true)
                .help("An extra fanz-node argument for every node (repeat; e.g. --node-arg=--partition-mode --node-arg=consistency)"),
        )
        .arg(
            Arg::new("out")
                .long("out")
                .help("Report directory (default target/cluster-test/SCENARIO-SEED)"),
        )
}

fn cli() -> Command {
    Command::new("fanz-cluster-test")
        .about("Run real FANZ Edge clusters through faults and check the recorded history")
        .subcommand_required(true)
        .subcommand(Command::new("list").about("List the scenarios"))
        .subcommand(run_args(
            Command::new("run")
                .about("Run one scenario")
                .arg(Arg::new("scenario").required(true)),
        ))
        .subcommand(run_args(
            Command::new("soak")
                .about("Run the random scenario RUNS times (seeds SEED, SEED+1, ...) and sum the figures")
                .arg(Arg::new("runs").long("runs").default_value("50")),
        ))
        .subcommand(
            Command::new("clean")
                .about("Remove namespaces and bridges left by a harness that was killed"),
        )
}

fn settings(m: &ArgMatches, scenario: &str) -> anyhow::Result<Settings> {
    let number = |name: &str| -> anyhow::Result<u64> {
        let v = m.get_one::<String>(name).cloned().unwrap_or_default();
        v.parse()
            .map_err(|_| anyhow::anyhow!("--{name} must be a whole number, got {v:?}"))
    };
    let settings = Settings {
        scenario: scenario.to_string(),
        nodes: number("nodes")? as usize,
        duration: Duration::from_secs(number("duration")?),
        seed: match m.get_one::<String>("seed") {
            Some(_) => number("seed")?,
            None => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64 % 1_000_000_000),
        },
        workers: number("workers")? as usize,
        node_args: m
            .get_many::<String>("node-arg")
            .map(|v| v.cloned().collect())
            .unwrap_or_default(),
        log_dir: None,
    };
    settings.validate()?;
    Ok(settings)
}

/// Runs `work` on a runtime; Ctrl-C, SIGTERM or an overrun drops it, which kills
/// every node and removes every namespace and mount it made, before the process
/// exits.
fn supervised<T>(
    limit: Duration,
    work: impl std::future::Future<Output = anyhow::Result<T>>,
) -> Result<T, ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("fanz-cluster-test: {e}");
            ExitCode::from(2)
        })?;
    runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| {
                eprintln!("fanz-cluster-test: {e}");
                ExitCode::from(2)
            })?;
        tokio::select! {
            result = work => result.map_err(|e| {
                eprintln!("fanz-cluster-test: {e:#}");
                ExitCode::from(2)
            }),
            _ = tokio::signal::ctrl_c() => {
                eprintln!("fanz-cluster-test: interrupted; cleaning up");
                Err(ExitCode::from(130))
            }
            _ = term.recv() => {
                eprintln!("fanz-cluster-test: terminated; cleaning up");
                Err(ExitCode::from(143))
            }
            () = tokio::time::sleep(limit) => {
                eprintln!("fanz-cluster-test: the run overran {limit:?}; stopped and cleaned up");
                Err(ExitCode::from(2))
            }
        }
    })
}

fn report_dir(m: &ArgMatches, default: String) -> PathBuf {
    m.get_one::<String>("out")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default))
}

fn finish(outcome: &Outcome, dir: &std::path::Path) -> ExitCode {
    if let Err(e) = report::write(outcome, dir) {
        eprintln!("fanz-cluster-test: writing the report: {e}");
    }
    print!("{}", report::markdown(outcome));
    eprintln!("report: {}", dir.display());
    if !outcome.pass() {
        ExitCode::from(1)
    } else if outcome.faults.is_empty() && !outcome.skipped.is_empty() {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    }
}

fn main() -> ExitCode {
    let matches = cli().get_matches();
    match matches.subcommand() {
        Some(("list", _)) => {
            for (name, what) in SCENARIOS {
                println!("{name:<16} {what}");
            }
            ExitCode::SUCCESS
        }
        Some(("clean", _)) => match netns::sweep() {
            Ok(removed) => {
                for r in &removed {
                    println!("removed {r}");
                }
                println!("{} removed", removed.len());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("fanz-cluster-test: {e:#}");
                ExitCode::from(2)
            }
        },
        Some(("run", m)) => {
            let scenario = m.get_one::<String>("scenario").cloned().unwrap_or_default();
            let mut settings = match settings(m, &scenario) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("fanz-cluster-test: {e}");
                    return ExitCode::from(2);
                }
            };
            let dir = report_dir(
                m,
                format!(
                    "target/cluster-test/{}-{}",
                    settings.scenario, settings.seed
                ),
            );
            settings.log_dir = Some(dir.clone());
            eprintln!("running {}", scenario::describe(&settings));
            let outcome = match supervised(settings.duration + OVERRUN, scenario::run(&settings)) {
                Ok(o) => o,
                Err(code) => return code,
            };
            finish(&outcome, &dir)
        }
        Some(("soak", m)) => {
            let settings = match settings(m, "random") {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("fanz-cluster-test: {e}");
                    return ExitCode::from(2);
                }
            };
            let runs: u32 = match m.get_one::<String>("runs").map(|r| r.parse()) {
                Some(Ok(r)) if (1..=1000).contains(&r) => r,
                _ => {
                    eprintln!("fanz-cluster-test: --runs must be from 1 to 1000");
                    return ExitCode::from(2);
                }
            };
            let dir = report_dir(m, format!("target/cluster-test/soak-{}", settings.seed));
            let limit = (settings.duration + OVERRUN) * runs;
            let summary = match supervised(limit, soak::soak(&settings, runs, &dir)) {
                Ok(s) => s,
                Err(code) => return code,
            };
            print!("{}", soak::markdown(&summary));
            eprintln!("reports: {}", dir.display());
            if summary.pass() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        _ => ExitCode::from(2),
    }
}
