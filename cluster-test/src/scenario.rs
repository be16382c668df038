//! Scenarios: a workload through `fanz-client` against a real cluster while faults
//! are done to it ([`crate::faults`]), every operation recorded, then the checkers
//! and the report.
//!
//! The workload: `workers` tasks share one client, 40 KV keys and 10 pages of the
//! origin; each operation, drawn from the run's seed, is a KV read through the
//! client (20%), a KV read sent straight to a random node's KV API (20%), a KV write
//! of a unique value (30%), a KV purge that every member must apply (`wait=all`,
//! 10%), a page read from a random node, pulled through from the origin as CDN
//! traffic is (15%), or a page published at the origin and then invalidated (5%):
//! purged by its tag through the client, or by a `POST` to it through a random node
//! (RFC 9111 §4.4; a direct operation, like the direct reads: no client retries
//! it on another node), then read at once through a random node. A purge counts as
//! acknowledged only when the node reports it complete.

use std::time::{Duration, Instant};

use anyhow::bail;
use fanz_client::{Client, Purge, SetOptions};
use serde::Serialize;

use crate::checkers::{self, ErrorRates, Verdict};
use crate::cluster::{Binaries, Cluster, ClusterOptions, TOKEN};
use crate::faults::{self, Fault};
use crate::history::{FaultWindow, History, Op, OpKind};

/// Keys the workers share.
const KEYS: u64 = 40;
/// Pages of the origin the workers share.
const PAGES: u64 = 10;
/// Operations after a fault's end still counted in its window.
const FAULT_GRACE_MS: u64 = 2_000;

/// The scenarios, with what each does.
pub const SCENARIOS: [(&str, &str); 9] = [
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
    (
        "partition-one",
        "cut one node off from the others for 4 s (clients reach both sides), then heal",
    ),
    (
        "partition-split",
        "split the cluster in two (2 against 3 of 5; 1 against 2 of 3) for 4 s, then heal",
    ),
    (
        "loss",
        "drop 20% of the packets between nodes for 4 s",
    ),
    (
        "latency",
        "delay packets between nodes by 100 ms ± 20 ms for 4 s (needs the kernel's netem)",
    ),
    (
        "full-disk",
        "fill one node's data directory (a 48 MiB tmpfs) for 4 s, then free it",
    ),
    (
        "random",
        "one fault after another, drawn from the seed: kills, pauses, partitions, splits, loss, a full disk",
    ),
];

/// How long network and disk faults are held.
const HOLD: Duration = Duration::from_secs(4);
/// Size of the small disk of the node a disk fault fills.
const SMALL_DISK_MIB: u64 = 48;

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
    /// Extra `fanz-node` arguments for every node (`--partition-mode consistency`...).
    pub node_args: Vec<String>,
    /// Where to copy the nodes' logs (`n1.log`...) at the end, if anywhere.
    pub log_dir: Option<std::path::PathBuf>,
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
    /// Reads that missed an acknowledged write nothing removed (reported, not
    /// failed: see [`checkers::lost_writes`]).
    pub lost_writes: usize,
    /// The first of them.
    pub lost_examples: Vec<String>,
    /// The faults done, with their figures.
    pub faults: Vec<FaultWindow>,
    /// Where the nodes ran (`namespaces` or `loopback`).
    pub placement: String,
    /// Faults not done, with why (never silently).
    pub skipped: Vec<String>,
    /// Extra node arguments of the run.
    pub node_args: Vec<String>,
}

impl Outcome {
    /// Whether every checker passed.
    pub fn pass(&self) -> bool {
        self.verdicts.iter().all(|v| v.pass)
    }
}

/// A tiny seeded generator (xorshift64*), so a run's choices follow its seed.
pub(crate) struct Rng(u64);

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

/// The single fault of a one-fault scenario, its victims drawn from `rng`.
fn single_fault(scenario: &str, nodes: usize, rng: &mut Rng) -> Option<Fault> {
    let victim = rng.next() as usize % nodes;
    Some(match scenario {
        "kill-restart" => Fault::KillRestart { victim },
        "pause" => Fault::Pause { victim },
        "rolling-restart" => Fault::RollingRestart,
        "partition-one" => Fault::Isolate { victim, hold: HOLD },
        "partition-split" => Fault::Split {
            minority: split_minority(nodes, rng),
            hold: HOLD,
        },
        "loss" => Fault::Loss {
            percent: 20,
            hold: HOLD,
        },
        "latency" => Fault::Latency { hold: HOLD },
        "full-disk" => Fault::FullDisk { victim, hold: HOLD },
        _ => return None,
    })
}

/// `nodes / 2` distinct nodes drawn from `rng` (2 of 5, 1 of 3).
fn split_minority(nodes: usize, rng: &mut Rng) -> Vec<usize> {
    let mut all: Vec<usize> = (0..nodes).collect();
    let mut minority = Vec::new();
    while minority.len() < nodes / 2 {
        minority.push(all.remove(rng.next() as usize % all.len()));
    }
    minority.sort_unstable();
    minority
}

/// The next fault of a `random` run.
fn random_fault(nodes: usize, small_disk: usize, rng: &mut Rng) -> Fault {
    let victim = rng.next() as usize % nodes;
    match rng.next() % 6 {
        0 => Fault::KillRestart { victim },
        1 => Fault::Pause { victim },
        2 => Fault::Isolate {
            victim,
            hold: Duration::from_millis(2_000 + rng.next() % 3_000),
        },
        3 => Fault::Split {
            minority: split_minority(nodes, rng),
            hold: Duration::from_millis(2_000 + rng.next() % 3_000),
        },
        4 => Fault::Loss {
            percent: 10 + (rng.next() % 30) as u8,
            hold: Duration::from_millis(2_000 + rng.next() % 2_000),
        },
        _ => Fault::FullDisk {
            victim: small_disk,
            hold: Duration::from_millis(2_000 + rng.next() % 2_000),
        },
    }
}

/// Runs one scenario end to end.
pub async fn run(settings: &Settings) -> anyhow::Result<Outcome> {
    settings.validate()?;
    let binaries = Binaries::locate()?;
    let mut rng = Rng::new(settings.seed);
    let small_disk = rng.next() as usize % settings.nodes;
    let options = ClusterOptions {
        namespaces: true,
        small_disk: matches!(settings.scenario.as_str(), "full-disk" | "random")
            .then_some((small_disk, SMALL_DISK_MIB)),
        node_args: settings.node_args.clone(),
    };
    let mut cluster =
        tokio::task::block_in_place(|| Cluster::start(&binaries, settings.nodes, &options))?;
    let outcome = drive(settings, &mut cluster, &mut rng, small_disk).await;
    // Kept whether or not the run could finish: a cluster that did not converge is
    // what the logs are most wanted for.
    if let Some(dir) = &settings.log_dir {
        std::fs::create_dir_all(dir)?;
        for (i, node) in cluster.nodes.iter().enumerate() {
            std::fs::write(dir.join(format!("{}.log", node.id)), cluster.log(i))?;
        }
    }
    outcome
}

/// Runs the workload and the faults of one scenario on `cluster`, and judges the
/// history.
async fn drive(
    settings: &Settings,
    cluster: &mut Cluster,
    rng: &mut Rng,
    small_disk: usize,
) -> anyhow::Result<Outcome> {
    let mut skipped = Vec::new();
    if let Some(note) = &cluster.placement_note {
        eprintln!("fanz-cluster-test: {note}");
    }
    faults::wait_all_alive(cluster, settings.nodes, Duration::from_secs(20)).await?;
    let client = Client::builder()
        .seeds(cluster.seeds())
        .token(TOKEN)
        .timeout(Duration::from_secs(5))
        .build()
        .await?;
    let began = Instant::now();
    let ms = move || began.elapsed().as_millis() as u64;
    let end = began + settings.duration;
    let nodes: Vec<(String, std::net::SocketAddr)> = cluster
        .nodes
        .iter()
        .map(|n| (n.id.clone(), n.http))
        .collect();
    let workers = start_workload(&client, &nodes, cluster.origin.addr, settings, end, ms);

    let mut windows = Vec::new();
    let mut do_fault = async |fault: Fault, cluster: &mut Cluster| -> anyhow::Result<()> {
        if let Some(reason) = faults::unavailable(&fault, cluster) {
            let description = fault.describe(cluster);
            eprintln!("fanz-cluster-test: SKIPPED {description}: {reason}");
            skipped.push(format!("{description}: {reason}"));
            return Ok(());
        }
        windows.push(faults::inject(&fault, cluster, &ms).await?);
        Ok(())
    };
    if settings.scenario == "random" {
        tokio::time::sleep(Duration::from_secs(1)).await;
        // Leave the last 3 s of the run fault-free, so the history ends whole.
        while Instant::now() + Duration::from_secs(3) < end {
            let fault = random_fault(settings.nodes, small_disk, rng);
            do_fault(fault, cluster).await?;
            tokio::time::sleep(Duration::from_millis(500 + rng.next() % 1_500)).await;
        }
    } else {
        tokio::time::sleep(settings.duration / 3).await;
        let Some(fault) = single_fault(&settings.scenario, settings.nodes, rng) else {
            bail!("unknown scenario {}", settings.scenario);
        };
        do_fault(fault, cluster).await?;
    }

    let mut history = History {
        ops: Vec::new(),
        faults: windows,
    };
    let mut workers = workers;
    while let Some(ops) = workers.join_next().await {
        history.ops.extend(ops?);
    }
    let verdicts = vec![
        checkers::no_read_after_acknowledged_purge(&history),
        checkers::no_stale_read(&history),
        checkers::no_stale_page_after_purge(&history),
    ];
    let lost = checkers::lost_writes(&history);
    let outcome = Outcome {
        scenario: settings.scenario.clone(),
        seed: settings.seed,
        nodes: settings.nodes,
        duration_s: began.elapsed().as_secs_f64(),
        operations: history.ops.len(),
        errors: checkers::error_rates(&history, FAULT_GRACE_MS),
        verdicts,
        lost_writes: lost.len(),
        lost_examples: lost.into_iter().take(10).collect(),
        faults: history.faults.clone(),
        placement: format!("{:?}", cluster.placement).to_lowercase(),
        skipped,
        node_args: settings.node_args.clone(),
    };
    Ok(outcome)
}

/// Starts the workers; each returns the operations it recorded once `end` passes.
fn start_workload(
    client: &Client,
    nodes: &[(String, std::net::SocketAddr)],
    origin: std::net::SocketAddr,
    settings: &Settings,
    end: Instant,
    ms: impl Fn() -> u64 + Copy + Send + 'static,
) -> tokio::task::JoinSet<Vec<Op>> {
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..settings.workers {
        let client = client.clone();
        let nodes = nodes.to_vec();
        let mut rng = Rng::new(settings.seed ^ (worker as u64 + 1) << 32);
        workers.spawn(async move {
            let mut ops = Vec::new();
            let mut n = 0u64;
            while Instant::now() < end {
                let mut key = format!("k{}", rng.next() % KEYS);
                let roll = rng.next() % 20;
                let start_ms = ms();
                let (kind, result) = if roll >= 17 {
                    key = format!("/site/p{}", rng.next() % PAGES);
                    if roll == 17 {
                        // Publish, then purge the page by its tag (its last segment).
                        match publish(origin, &key).await {
                            Ok(generation) => {
                                ops.push(Op {
                                    worker,
                                    key: key.clone(),
                                    kind: OpKind::Publish { generation },
                                    start_ms,
                                    end_ms: ms(),
                                    ok: true,
                                    error: None,
                                });
                                // Half the time a tag purge through the client, half a
                                // POST to the page through a random node (RFC 9111 §4.4:
                                // its success invalidates the URL on every node).
                                let purge_start = ms();
                                let (kind, result) = if rng.next().is_multiple_of(2) {
                                    let tag =
                                        key.rsplit('/').next().unwrap_or_default().to_string();
                                    let purged = client.purge(&Purge::tag(tag)).await;
                                    (OpKind::Purge, acknowledged(purged))
                                } else {
                                    let (node, addr) = &nodes[rng.next() as usize % nodes.len()];
                                    let kind = OpKind::DirectInvalidation { node: node.clone() };
                                    (kind, unsafe_invalidation(*addr, &key).await)
                                };
                                ops.push(Op {
                                    worker,
                                    key: key.clone(),
                                    kind,
                                    start_ms: purge_start,
                                    end_ms: ms(),
                                    ok: result.is_ok(),
                                    error: result.err(),
                                });
                                // At once a read through a random node: its fill may go
                                // through an owner, racing the purge's last appliers.
                                let (node, addr) = &nodes[rng.next() as usize % nodes.len()];
                                let read_start = ms();
                                let read = direct_get(*addr, &key).await;
                                ops.push(Op {
                                    worker,
                                    key,
                                    kind: OpKind::PageGet {
                                        node: node.clone(),
                                        generation: read
                                            .as_ref()
                                            .ok()
                                            .and_then(|(got, _)| got.as_deref())
                                            .and_then(generation_of),
                                        marked: read.as_ref().is_ok_and(|(_, marked)| *marked),
                                    },
                                    start_ms: read_start,
                                    end_ms: ms(),
                                    ok: read.is_ok(),
                                    error: read.err(),
                                });
                                continue;
                            }
                            Err(e) => (OpKind::Publish { generation: 0 }, Err(e)),
                        }
                    } else {
                        let (node, addr) = &nodes[rng.next() as usize % nodes.len()];
                        match direct_get(*addr, &key).await {
                            Ok((got, marked)) => (
                                OpKind::PageGet {
                                    node: node.clone(),
                                    generation: got.as_deref().and_then(generation_of),
                                    marked,
                                },
                                Ok(()),
                            ),
                            Err(e) => (
                                OpKind::PageGet {
                                    node: node.clone(),
                                    generation: None,
                                    marked: false,
                                },
                                Err(e),
                            ),
                        }
                    }
                } else if roll < 4 {
                    let (node, addr) = &nodes[rng.next() as usize % nodes.len()];
                    match direct_get(*addr, &format!("/kv/{key}")).await {
                        Ok((got, marked)) => (
                            OpKind::DirectGet {
                                node: node.clone(),
                                got,
                                marked,
                            },
                            Ok(()),
                        ),
                        Err(e) => (
                            OpKind::DirectGet {
                                node: node.clone(),
                                got: None,
                                marked: false,
                            },
                            Err(e),
                        ),
                    }
                } else if roll < 8 {
                    match client.get(&key).await {
                        Ok(v) => (
                            OpKind::Get {
                                got: v.map(|b| String::from_utf8_lossy(&b).into_owned()),
                            },
                            Ok(()),
                        ),
                        Err(e) => (OpKind::Get { got: None }, Err(e.to_string())),
                    }
                } else if roll < 14 {
                    n += 1;
                    let value = format!("w{worker}-{n}");
                    let result = client
                        .set(&key, value.clone(), &SetOptions::default())
                        .await
                        .map_err(|e| e.to_string());
                    (OpKind::Set { value }, result)
                } else {
                    let result = acknowledged(client.purge(&Purge::key(key.clone())).await);
                    (OpKind::Purge, result)
                };
                ops.push(Op {
                    worker,
                    key,
                    kind,
                    start_ms,
                    end_ms: ms(),
                    ok: result.is_ok(),
                    error: result.err(),
                });
            }
            ops
        });
    }
    workers
}

/// A purge counts as acknowledged only when the node reports every member applied
/// it (or is fenced).
fn acknowledged(
    answer: Result<fanz_client::PurgeReport, fanz_client::Error>,
) -> Result<(), String> {
    match answer {
        Ok(report) if report.complete() => Ok(()),
        Ok(report) => Err(format!(
            "purge not applied by every member in time (pending: {})",
            report.pending().join(",")
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// The generation in a versioned page (`/site/p1 g3`).
fn generation_of(body: &str) -> Option<u64> {
    body.rsplit_once(" g")?.1.trim().parse().ok()
}

/// `POST /_publish/PAGE` at the origin: the page's new generation.
async fn publish(origin: std::net::SocketAddr, page: &str) -> Result<u64, String> {
    let (status, body, _) = exchange(
        origin,
        &format!("POST /_publish{page} HTTP/1.1\r\nHost: origin\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
    )
    .await?;
    match status.as_str() {
        "200" => body
            .trim()
            .parse()
            .map_err(|_| format!("origin answered {body:?}")),
        other => Err(format!("origin HTTP {other}")),
    }
}

/// `POST PAGE` through one node: the origin accepts it, and the node invalidates the
/// page on every node before it answers. Acknowledged only when the answer says the
/// invalidation is complete (`Fanz-Invalidation: complete`).
async fn unsafe_invalidation(addr: std::net::SocketAddr, page: &str) -> Result<(), String> {
    // The node answers once every member applied the invalidation, or its
    // `purge_ack_timeout` (5 s) passed: wait a little longer than that.
    let (status, head, body) = exchange_head(
        addr,
        &format!(
            "POST {page} HTTP/1.1\r\nHost: fanz\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ),
        Duration::from_secs(7),
    )
    .await?;
    let complete = head
        .lines()
        .any(|l| l.eq_ignore_ascii_case("fanz-invalidation: complete"));
    match status.as_str() {
        "200" if complete => Ok(()),
        "200" => Err("invalidation not applied by every member in time".into()),
        other => Err(format!("HTTP {other}: {}", body.trim())),
    }
}

/// `GET PATH` on one node's main port (one connection per read, 2 s limit): the
/// body or `None` for 404, and whether the node marked it unsynced.
async fn direct_get(
    addr: std::net::SocketAddr,
    path: &str,
) -> Result<(Option<String>, bool), String> {
    let (status, body, marked) = exchange(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: fanz\r\nConnection: close\r\n\r\n"),
    )
    .await?;
    match status.as_str() {
        "200" => Ok((Some(body), marked)),
        "404" => Ok((None, marked)),
        other => Err(format!("HTTP {other}: {}", body.trim())),
    }
}

/// One HTTP/1.1 exchange on its own connection within 2 s: status, body, and
/// whether `Cache-Status` said unsynced.
pub(crate) async fn exchange(
    addr: std::net::SocketAddr,
    request: &str,
) -> Result<(String, String, bool), String> {
    let (status, head, body) = exchange_head(addr, request, Duration::from_secs(2)).await?;
    let marked = head
        .lines()
        .any(|l| l.to_ascii_lowercase().starts_with("cache-status:") && l.contains("unsynced"));
    Ok((status, body, marked))
}

/// [`exchange`] within `limit`, with the whole response head instead of the
/// unsynced mark.
async fn exchange_head(
    addr: std::net::SocketAddr,
    request: &str,
    limit: Duration,
) -> Result<(String, String, String), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("send: {e}"))?;
        let mut answer = Vec::new();
        stream
            .read_to_end(&mut answer)
            .await
            .map_err(|e| format!("receive: {e}"))?;
        Ok::<_, String>(answer)
    };
    let answer = tokio::time::timeout(limit, exchange)
        .await
        .map_err(|_| format!("no answer within {limit:?}"))??;
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| "truncated answer".to_string())?;
    let status = head.split(' ').nth(1).unwrap_or_default().to_string();
    Ok((status, head.to_string(), body.to_string()))
}

/// One line naming a run.
pub fn describe(settings: &Settings) -> String {
    format!(
        "{} on {} nodes for {:?}, {} workers, seed {}",
        settings.scenario, settings.nodes, settings.duration, settings.workers, settings.seed
    )
}
