//! The faults a scenario does to a running cluster, each recorded as a window in the
//! history with the figures it yields: how long the others took to see a node down,
//! how long a restarted node took to answer, how long until every node saw every
//! member alive again, and how long until a purge was again applied by every member
//! (catch-up).

use std::time::{Duration, Instant};

use anyhow::bail;
use fanz_client::{Client, Purge};

use crate::cluster::{Cluster, Placement, TOKEN};
use crate::history::FaultWindow;

/// One fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL a node, restart it 2 s later with its data directory.
    KillRestart { victim: usize },
    /// SIGSTOP a node for 1 s, then SIGCONT.
    Pause { victim: usize },
    /// SIGTERM and restart every node in turn, each once the cluster is whole again.
    RollingRestart,
    /// Cut one node off from the others (clients still reach it), then heal.
    Isolate { victim: usize, hold: Duration },
    /// Cut the cluster in two (`minority` against the rest), then heal.
    Split {
        minority: Vec<usize>,
        hold: Duration,
    },
    /// Drop `percent`% of the packets between nodes, then stop.
    Loss { percent: u8, hold: Duration },
    /// Delay packets between nodes (needs the kernel's netem).
    Latency { hold: Duration },
    /// Fill a node's data directory (a small tmpfs), then free it.
    FullDisk { victim: usize, hold: Duration },
}

impl Fault {
    /// Whether it needs one network namespace per node.
    pub fn needs_namespaces(&self) -> bool {
        matches!(
            self,
            Fault::Isolate { .. }
                | Fault::Split { .. }
                | Fault::Loss { .. }
                | Fault::Latency { .. }
        )
    }

    /// A line naming it, with node ids.
    pub fn describe(&self, cluster: &Cluster) -> String {
        let id = |i: &usize| cluster.nodes[*i].id.clone();
        match self {
            Fault::KillRestart { victim } => format!("SIGKILL {}, restart 2 s later", id(victim)),
            Fault::Pause { victim } => format!("SIGSTOP {} for 1 s", id(victim)),
            Fault::RollingRestart => {
                "rolling restart (SIGTERM, restart, one node at a time)".into()
            }
            Fault::Isolate { victim, hold } => {
                format!("cut {} off from the others for {:?}", id(victim), hold)
            }
            Fault::Split { minority, hold } => format!(
                "split {{{}}} from the rest for {:?}",
                minority.iter().map(id).collect::<Vec<_>>().join(","),
                hold
            ),
            Fault::Loss { percent, hold } => {
                format!("{percent}% packet loss between nodes for {hold:?}")
            }
            Fault::Latency { hold } => format!("100 ms ± 20 ms latency between nodes for {hold:?}"),
            Fault::FullDisk { victim, hold } => {
                format!("disk of {} full for {:?}", id(victim), hold)
            }
        }
    }
}

/// Why `fault` cannot run on `cluster`, if it cannot: the scenario reports it as
/// skipped, with this reason.
pub fn unavailable(fault: &Fault, cluster: &Cluster) -> Option<String> {
    if fault.needs_namespaces() && cluster.placement != Placement::Namespaces {
        return Some(
            cluster
                .placement_note
                .clone()
                .unwrap_or_else(|| "network faults need one namespace per node".into()),
        );
    }
    if let Fault::Latency { .. } = fault {
        if !cluster.fabric().is_some_and(|f| f.netem_available()) {
            return Some(
                "this kernel has no netem queueing discipline (tc qdisc ... netem): latency faults cannot be made here".into(),
            );
        }
    }
    if let Fault::FullDisk { victim, .. } = fault {
        if !cluster.has_small_disk(*victim) {
            return Some("the node has no small tmpfs of its own (mounting one needs root)".into());
        }
    }
    None
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

/// How long a convergence may take before [`wait_all_alive`] says what held it up.
const SLOW_CONVERGENCE: Duration = Duration::from_secs(5);

/// Waits until every node sees `n` alive members. When that took longer than
/// [`SLOW_CONVERGENCE`], returns what the node that held it up last reported (its
/// members and their states, or its error), for the report (RELIABILITY finding 9).
pub async fn wait_all_alive(
    cluster: &Cluster,
    n: usize,
    limit: Duration,
) -> anyhow::Result<Option<String>> {
    let began = Instant::now();
    let deadline = began + limit;
    let mut holding_up = String::new();
    'poll: while Instant::now() < deadline {
        for node in &cluster.nodes {
            let seen = states(&node.seed()).await;
            match &seen {
                Ok(s) if s.iter().filter(|(_, st)| st == "alive").count() == n => {}
                _ => {
                    let seen = match seen {
                        Ok(s) => s
                            .iter()
                            .map(|(id, st)| format!("{id} {st}"))
                            .collect::<Vec<_>>()
                            .join(", "),
                        Err(e) => format!("no answer: {e:#}"),
                    };
                    holding_up = format!(
                        "{} saw [{seen}] {} ms after the wait began",
                        node.id,
                        began.elapsed().as_millis()
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue 'poll;
                }
            }
        }
        return Ok((began.elapsed() > SLOW_CONVERGENCE).then_some(holding_up));
    }
    bail!("the cluster did not converge on {n} alive members within {limit:?}: {holding_up}")
}

/// Waits until every node outside `victims` sees every victim down; `None` if not
/// within `limit`.
async fn wait_seen_down(cluster: &Cluster, victims: &[usize], limit: Duration) -> Option<()> {
    let ids: Vec<&str> = victims
        .iter()
        .map(|v| cluster.nodes[*v].id.as_str())
        .collect();
    let deadline = Instant::now() + limit;
    'poll: while Instant::now() < deadline {
        for (i, node) in cluster.nodes.iter().enumerate() {
            if victims.contains(&i) {
                continue;
            }
            let down = states(&node.seed())
                .await
                .map(|s| {
                    ids.iter()
                        .all(|id| s.iter().any(|(m, st)| m == id && st == "down"))
                })
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

/// Whether any other node reports `victim` down at some point within `limit`
/// (a false positive while it is only paused).
async fn seen_down_within(cluster: &Cluster, victim: usize, limit: Duration) -> bool {
    let id = &cluster.nodes[victim].id;
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        for (i, node) in cluster.nodes.iter().enumerate() {
            if i == victim {
                continue;
            }
            if states(&node.seed())
                .await
                .is_ok_and(|s| s.iter().any(|(m, st)| m == id && st == "down"))
            {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Waits until node `index` answers a KV read on its main port.
async fn wait_kv_answers(cluster: &Cluster, index: usize, limit: Duration) -> Option<()> {
    let addr = cluster.nodes[index].http;
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let probe = "GET /kv/probe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        // Any HTTP answer counts: the node is serving.
        if crate::scenario::exchange(addr, probe).await.is_ok() {
            return Some(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// Purges a marker key with `wait=all` until every member applies it; how long that
/// took, or `None` if not within `limit`.
async fn wait_purges_reach_everyone(cluster: &Cluster, limit: Duration) -> Option<u64> {
    let began = Instant::now();
    let client = Client::builder()
        .seeds(cluster.seeds())
        .token(TOKEN)
        .timeout(Duration::from_secs(3))
        .build()
        .await
        .ok()?;
    while began.elapsed() < limit {
        if let Ok(report) = client.purge(&Purge::key("catch-up-marker")).await {
            let members = report.raw["cluster"]["members"].as_u64().unwrap_or(0);
            let fenced = report.raw["cluster"]["fenced"]
                .as_array()
                .map_or(0, Vec::len);
            if report.complete() && fenced == 0 && members + 1 == cluster.nodes.len() as u64 {
                return Some(began.elapsed().as_millis() as u64);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

fn ms_since(t: Instant) -> u64 {
    t.elapsed().as_millis() as u64
}

/// Does `fault` to `cluster` and returns its window; `now_ms` is the run's clock.
pub async fn inject(
    fault: &Fault,
    cluster: &mut Cluster,
    now_ms: &(dyn Fn() -> u64 + Sync),
) -> anyhow::Result<FaultWindow> {
    let n = cluster.nodes.len();
    let mut window = FaultWindow::new(fault.describe(cluster), now_ms(), 0);
    let began = Instant::now();
    match fault {
        Fault::KillRestart { victim } => {
            cluster.nodes[*victim].kill();
            window.detection_ms = wait_seen_down(cluster, &[*victim], Duration::from_secs(10))
                .await
                .map(|()| ms_since(began));
            tokio::time::sleep(Duration::from_secs(2).saturating_sub(began.elapsed())).await;
            let restarted = Instant::now();
            tokio::task::block_in_place(|| cluster.nodes[*victim].start())?;
            window.recovery_ms = wait_kv_answers(cluster, *victim, Duration::from_secs(10))
                .await
                .map(|()| ms_since(restarted));
            let healed = Instant::now();
            window.slow_convergence = wait_all_alive(cluster, n, Duration::from_secs(20)).await?;
            window.converged_ms = Some(ms_since(healed));
        }
        Fault::Pause { victim } => {
            cluster.nodes[*victim].signal("STOP")?;
            // Watch the others while it is stopped and for a second after.
            let watching = seen_down_within(cluster, *victim, Duration::from_millis(900));
            let seen = watching.await;
            tokio::time::sleep(Duration::from_secs(1).saturating_sub(began.elapsed())).await;
            cluster.nodes[*victim].signal("CONT")?;
            let after = seen_down_within(cluster, *victim, Duration::from_secs(1)).await;
            window.false_positive = Some(seen || after);
        }
        Fault::RollingRestart => {
            for i in 0..n {
                tokio::task::block_in_place(|| {
                    cluster.nodes[i].terminate(Duration::from_secs(15))
                })?;
                tokio::task::block_in_place(|| cluster.nodes[i].start())?;
                window.slow_convergence =
                    wait_all_alive(cluster, n, Duration::from_secs(20)).await?;
            }
        }
        Fault::Isolate { victim, hold } => {
            let others: Vec<usize> = (0..n).filter(|i| i != victim).collect();
            network_fault(cluster, fault, *hold, &[*victim], &others, &mut window).await?;
        }
        Fault::Split { minority, hold } => {
            let rest: Vec<usize> = (0..n).filter(|i| !minority.contains(i)).collect();
            network_fault(cluster, fault, *hold, minority, &rest, &mut window).await?;
        }
        Fault::Loss { hold, .. } | Fault::Latency { hold } => {
            network_fault(cluster, fault, *hold, &[], &[], &mut window).await?;
        }
        Fault::FullDisk { victim, hold } => {
            let filler = cluster.nodes[*victim].data_dir.join("filler");
            tokio::task::block_in_place(|| fill(&filler))?;
            tokio::time::sleep(*hold).await;
            std::fs::remove_file(&filler)?;
        }
    }
    window.end_ms = now_ms();
    if window.caught_up_ms.is_none() && !matches!(fault, Fault::Pause { .. }) {
        window.caught_up_ms = wait_purges_reach_everyone(cluster, Duration::from_secs(20)).await;
    }
    Ok(window)
}

/// A network fault between `side_a` and `side_b` (or, for loss and latency, between
/// every node) held for `hold`, then healed.
async fn network_fault(
    cluster: &Cluster,
    fault: &Fault,
    hold: Duration,
    side_a: &[usize],
    side_b: &[usize],
    window: &mut FaultWindow,
) -> anyhow::Result<()> {
    let Some(fabric) = cluster.fabric() else {
        bail!("network faults need namespaces");
    };
    let began = Instant::now();
    match fault {
        Fault::Loss { percent, .. } => fabric.loss(*percent)?,
        Fault::Latency { .. } => fabric.latency(100, 20)?,
        _ => fabric.partition(side_a, side_b)?,
    }
    if !side_a.is_empty() && side_a.len() < side_b.len() {
        // How long the majority took to see the cut-off side down.
        window.detection_ms = wait_seen_down(cluster, side_a, hold)
            .await
            .map(|()| ms_since(began));
    }
    tokio::time::sleep(hold.saturating_sub(began.elapsed())).await;
    fabric.heal()?;
    let healed = Instant::now();
    window.slow_convergence =
        wait_all_alive(cluster, cluster.nodes.len(), Duration::from_secs(30)).await?;
    window.converged_ms = Some(ms_since(healed));
    window.caught_up_ms = wait_purges_reach_everyone(cluster, Duration::from_secs(20))
        .await
        .map(|_| ms_since(healed));
    Ok(())
}

/// Writes zeros to `path` until the file system is full.
fn fill(path: &std::path::Path) -> anyhow::Result<()> {
    use std::io::Write;
    let mut file = std::fs::File::create(path)?;
    let block = vec![0u8; 1 << 20];
    loop {
        match file.write_all(&block) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
            Err(e) => return Err(e.into()),
        }
    }
    // Smaller writes fill the last partial block.
    let small = [0u8; 4096];
    while file.write_all(&small).is_ok() {}
    Ok(())
}
