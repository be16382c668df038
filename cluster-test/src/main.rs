//! `fanz-cluster-test`: run a fault scenario against a real FANZ Edge cluster.
//!
//! ```sh
//! cargo build --release --workspace
//! cargo run --release -p fanz-cluster-test -- list
//! cargo run --release -p fanz-cluster-test -- run kill-restart --nodes 3 --duration 30 --seed 7
//! ```
//!
//! Exit codes: 0 every checker passed; 1 a checker failed; 2 bad parameters or the
//! cluster could not be run.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Arg, Command};
use fanz_cluster_test::report;
use fanz_cluster_test::scenario::{self, Settings, SCENARIOS};

fn cli() -> Command {
    Command::new("fanz-cluster-test")
        .about("Run real FANZ Edge clusters through faults and check the recorded history")
        .subcommand_required(true)
        .subcommand(Command::new("list").about("List the scenarios"))
        .subcommand(
            Command::new("run")
                .about("Run one scenario")
                .arg(Arg::new("scenario").required(true))
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
                    Arg::new("out")
                        .long("out")
                        .help("Report directory (default target/cluster-test/SCENARIO-SEED)"),
                ),
        )
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
        Some(("run", m)) => {
            let number = |name: &str| -> Result<u64, String> {
                let v = m.get_one::<String>(name).cloned().unwrap_or_default();
                v.parse()
                    .map_err(|_| format!("--{name} must be a whole number, got {v:?}"))
            };
            let settings = (|| -> Result<Settings, String> {
                Ok(Settings {
                    scenario: m.get_one::<String>("scenario").cloned().unwrap_or_default(),
                    nodes: number("nodes")? as usize,
                    duration: Duration::from_secs(number("duration")?),
                    seed: match m.get_one::<String>("seed") {
                        Some(_) => number("seed")?,
                        None => std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(1, |d| d.as_nanos() as u64),
                    },
                    workers: number("workers")? as usize,
                })
            })();
            let settings = match settings
                .map_err(anyhow::Error::msg)
                .and_then(|s| s.validate().map(|()| s))
            {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("fanz-cluster-test: {e}");
                    return ExitCode::from(2);
                }
            };
            eprintln!("running {}", scenario::describe(&settings));
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("fanz-cluster-test: {e}");
                    return ExitCode::from(2);
                }
            };
            let outcome = match runtime.block_on(scenario::run(&settings)) {
                Ok(o) => o,
                Err(e) => {
                    eprintln!("fanz-cluster-test: {e:#}");
                    return ExitCode::from(2);
                }
            };
            let dir = m
                .get_one::<String>("out")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(format!(
                        "target/cluster-test/{}-{}",
                        settings.scenario, settings.seed
                    ))
                });
            if let Err(e) = report::write(&outcome, &dir) {
                eprintln!("fanz-cluster-test: writing the report: {e}");
            }
            print!("{}", report::markdown(&outcome));
            eprintln!("report: {}", dir.display());
            if outcome.pass() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        _ => ExitCode::from(2),
    }
}
