//! Scenarios: a workload through `fanz-client` against a real cluster while one
//! fault is done to it, every operation recorded, then the checkers and the report.
//!
//! The workload: `workers` tasks share one client and 40 keys; each operation is a
//! read (60%), a write of a unique value (30%) or a purge of the key acknowledged by
//! every member (10%), drawn from the run's seed.

use std::time::{Duration, Instant};

use anyhow::bail;
use fanz_client::{Client, Purge, SetOptions};
use serde::Serialize;

use crate::checkers::{self, ErrorRates, Verdict};
use crate::cluster::{Binaries, Cluster, TOKEN};
use crate::history::{FaultWindow, History, Op, OpKind};

/// Keys the workers share.
const KEYS: u64 = 40;
/// Operations after a fault's end still counted in its window.
const FAULT_GRACE_MS: u64 = 2_000;

/// The scenarios, with what each does.
pub const SCENARIOS: [(&str, &str); 3] = [
    (
        "kill-restart",
        "SIGKILL one node a third into the run; restart it 2 s later with its disk tier",
    ),
    (
        "pause",
        "SIGSTOP one node for 1 s a third into the run, then SIGCONT",
    ),
    (
        "rolling-restart",
        "SIGTERM and restart every node in turn, each once the previous one is back",
    ),
];

/// What to run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// One of [`SCENARIOS`].
    pub scenario: String,
    /// Nodes in the cluster.
    pub nodes: usize,
    /// How long the workload runs.
    pub duration: Duration,
    /// Seed of the workload and of the fault's victim.
    pub seed: u64,
    /// Concurrent workers.
    pub workers: usize,
}

impl Settings {
    /// Checks the parameters; a clear message for impossible ones.
    pub fn validate(&self) -> anyhow::Result<()> {
        if !SCENARIOS.iter().any(|(name, _)| *name == self.scenario) {
            let names: Vec<&str> = SCENARIOS.iter().map(|(n, _)| *n).collect();
            bail!(
                "unknown scenario {:?}: expected one of {}",
                self.scenario,
                names.join(", ")
            );
        }
        if self.nodes < 3 || self.nodes > 16 {
            bail!(
                "--nodes must be from 3 to 16 (a fault needs a replica to fail over to), got {}",
                self.nodes
            );
        }
        if self.duration < Duration::from_secs(3) || self.duration > Duration::from_secs(3600) {
            bail!("--duration must be from 3 to 3600 seconds");
        }
        if self.workers == 0 || self.workers > 64 {
            bail!("--workers must be from 1 to 64");
        }
        Ok(())
    }
}

/// A run's outcome: the report's content.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// The scenario.
    pub scenario: String,
    /// Seed to reproduce it.
    pub seed: u64,
    /// Nodes.
    pub nodes: usize,
    /// Workload duration, seconds.
    pub duration_s: f64,
    /// Operations recorded.
    pub operations: usize,
    /// Failed operations inside and outside fault windows.
    pub errors: ErrorRates,
    /// Each checker's verdict.
    pub verdicts: Vec<Verdict>,
    /// The faults done.
    pub faults: Vec<FaultWindow>,
    /// Time from the fault until every other node saw the victim down (kill-restart).
    pub detection_ms: Option<u64>,
    /// Time from restart until the node answered its KV API again (kill-restart).
    pub recovery_ms: Option<u64>,
}

impl Outcome {
    /// Whether every checker passed.
    pub fn pass(&self) -> bool {
        self.verdicts.iter().all(|v| v.pass)
    }
}

/// A tiny seeded generator (xorshift64*), so a run's choices follow its seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// Runs one scenario end to end.
pub async fn run(settings: &Settings) -> anyhow::Result<Outcome> {
    settings.validate()?;
    let binaries = Binaries::locate()?;
    let mut cluster = tokio::task::block_in_place(|| Cluster::start(&binaries, settings.nodes))?;
    wait_all_alive(&cluster, settings.nodes, Duration::from_secs(20)).await?;
    let client = Client::builder()
        .seeds(cluster.seeds())
        .token(TOKEN)
        .timeout(Duration::from_secs(2))
        .build()
        .await?;
    let began = Instant::now();
    let ms = move || began.elapsed().as_millis() as u64;
    let end = began + settings.duration;

    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..settings.workers {
        let client = client.clone();
        let mut rng = Rng::new(settings.seed ^ (worker as u64 + 1) << 32);
        workers.spawn(async move {
            let mut ops = Vec::new();
            let mut n = 0u64;
            while Instant::now() < end {
                let key = format!("k{}", rng.next() % KEYS);
                let roll = rng.next() % 10;
                let start_ms = ms();
                let (kind, result) = if roll < 6 {
                    match client.get(&key).await {
                        Ok(v) => (
                            OpKind::Get {
                                got: v.map(|b| String::from_utf8_lossy(&b).into_owned()),
                            },
                            Ok(()),
                        ),
                        Err(e) => (OpKind::Get { got: None }, Err(e)),
                    }
                } else if roll < 9 {
                    n += 1;
                    let value = format!("w{worker}-{n}");
                    let result = client
                        .set(&key, value.clone(), &SetOptions::default())
                        .await;
                    (OpKind::Set { value }, result)
                } else {
                    (
                        OpKind::Purge,
                        client.purge(&Purge::key(key.clone())).await.map(|_| ()),
                    )
                };
                ops.push(Op {
                    worker,
                    key,
                    kind,
                    start_ms,
                    end_ms: ms(),
                    ok: result.is_ok(),
                    error: result.err().map(|e| e.to_string()),
                });
            }
            ops
        });
    }

    let mut rng = Rng::new(settings.seed);
    let mut faults = Vec::new();
    let (mut detection_ms, mut recovery_ms) = (None, None);
    tokio::time::sleep(settings.duration / 3).await;
    match settings.scenario.as_str() {
        "kill-restart" => {
            let victim = rng.next() as usize % settings.nodes;
            let start_ms = ms();
            let killed = Instant::now();
            cluster.nodes[victim].kill();
            let id = cluster.nodes[victim].id.clone();
            detection_ms = wait_seen_down(&cluster, victim, Duration::from_secs(10))
                .await
                .map(|()| killed.elapsed().as_millis() as u64);
            tokio::time::sleep(Duration::from_secs(2).saturating_sub(killed.elapsed())).await;
            let restarted = Instant::now();
            tokio::task::block_in_place(|| cluster.nodes[victim].start())?;
            recovery_ms = wait_kv_answers(&cluster, victim, Duration::from_secs(10))
                .await
                .map(|()| restarted.elapsed().as_millis() as u64);
            faults.push(FaultWindow {
                fault: format!("SIGKILL {id}, restart 2 s later"),
                start_ms,
                end_ms: ms(),
            });
        }
        "pause" => {
            let victim = rng.next() as usize % settings.nodes;
            let start_ms = ms();
            cluster.nodes[victim].signal("STOP")?;
            tokio::time::sleep(Duration::from_secs(1)).await;
            cluster.nodes[victim].signal("CONT")?;
            faults.push(FaultWindow {
                fault: format!("SIGSTOP {} for 1 s", cluster.nodes[victim].id),
                start_ms,
                end_ms: ms(),
            });
        }
        "rolling-restart" => {
            for i in 0..settings.nodes {
                let start_ms = ms();
                tokio::task::block_in_place(|| {
                    cluster.nodes[i].terminate(Duration::from_secs(15))
                })?;
                tokio::task::block_in_place(|| cluster.nodes[i].start())?;
                wait_all_alive(&cluster, settings.nodes, Duration::from_secs(20)).await?;
                faults.push(FaultWindow {
                    fault: format!("SIGTERM {} and restart", cluster.nodes[i].id),
                    start_ms,
                    end_ms: ms(),
                });
            }
        }
        other => bail!("unknown scenario {other}"),
    }

    let mut history = History {
        ops: Vec::new(),
        faults,
    };
    while let Some(ops) = workers.join_next().await {
        history.ops.extend(ops?);
    }
    let verdicts = vec![
        checkers::no_read_after_acknowledged_purge(&history),
        checkers::no_stale_or_lost_write(&history),
    ];
    let outcome = Outcome {
        scenario: settings.scenario.clone(),
        seed: settings.seed,
        nodes: settings.nodes,
        duration_s: began.elapsed().as_secs_f64(),
        operations: history.ops.len(),
        errors: checkers::error_rates(&history, FAULT_GRACE_MS),
        verdicts,
        faults: history.faults.clone(),
        detection_ms,
        recovery_ms,
    };
    if !outcome.pass() {
        for i in 0..cluster.nodes.len() {
            tracing::warn!(node = i + 1, log = %cluster.log(i), "node log of a failed run");
        }
    }
    Ok(outcome)
}

/// The states every node reports for every member.
async fn states(seed: &str) -> anyhow::Result<Vec<(String, String)>> {
    let client = Client::builder()
        .seeds([seed.to_string()])
        .token(TOKEN)
        .timeout(Duration::from_secs(1))
        .connect_timeout(Duration::from_secs(1))
        .build()
        .await?;
    Ok(client
        .members()
        .await?
        .into_iter()
        .map(|m| (m.id, m.state))
        .collect())
}

async fn wait_all_alive(cluster: &Cluster, n: usize, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    'poll: while Instant::now() < deadline {
        for node in &cluster.nodes {
            match states(&node.seed()).await {
                Ok(s) if s.iter().filter(|(_, st)| st == "alive").count() == n => {}
                _ => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue 'poll;
                }
            }
        }
        return Ok(());
    }
    bail!("the cluster did not converge on {n} alive members within {limit:?}")
}

/// Waits until every other node sees `victim` down; `None` if not within `limit`.
async fn wait_seen_down(cluster: &Cluster, victim: usize, limit: Duration) -> Option<()> {
    let id = &cluster.nodes[victim].id;
    let deadline = Instant::now() + limit;
    'poll: while Instant::now() < deadline {
        for (i, node) in cluster.nodes.iter().enumerate() {
            if i == victim {
                continue;
            }
            let down = states(&node.seed())
                .await
                .map(|s| s.iter().any(|(m, st)| m == id && st == "down"))
                .unwrap_or(false);
            if !down {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue 'poll;
            }
        }
        return Some(());
    }
    None
}

/// Waits until node `index` answers a KV read on its main port.
async fn wait_kv_answers(cluster: &Cluster, index: usize, limit: Duration) -> Option<()> {
    let addr = cluster.nodes[index].http;
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let ok = s
                .write_all(b"GET /kv/probe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await
                .is_ok();
            let mut head = [0u8; 12];
            if ok && s.read_exact(&mut head).await.is_ok() && head.starts_with(b"HTTP/1.1 ") {
                return Some(());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// One line naming a run.
pub fn describe(settings: &Settings) -> String {
    format!(
        "{} on {} nodes for {:?}, {} workers, seed {}",
        settings.scenario, settings.nodes, settings.duration, settings.workers, settings.seed
    )
}
