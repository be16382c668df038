//! Cluster-wide invalidation: every purge, overwrite and dependency edge made on one
//! node is applied on every node.
//!
//! - **Fan-out**: the node that makes a record applies it, then sends it to every
//!   member not down over the peer protocol and, for purges, collects their acks
//!   (`wait=all`), retrying a member that does not answer until it does or is
//!   declared down. Small records also ride on SWIM packets (piggyback), a second
//!   path that needs no direct connection.
//! - **Anti-entropy and the sync lease**: every node keeps the records it has seen
//!   (the newest [`KEPT_RECORDS`]) and which it has applied, per origin. Every
//!   `sync_interval`, and at once after a stall, it pulls the records it lacks from
//!   enough reachable peers that they and it are a majority of the members it knows
//!   (down ones included). Such a round renews its *sync lease* (`max_unsynced`,
//!   see [`SyncGate`]); without a lease it serves no hit it cannot revalidate. A
//!   node that starts pulls before it serves. If a peer no longer keeps records
//!   the asker lacks, the asker purges everything it cached before now: a lower hit
//!   ratio, never a stale answer.
//! - **Purge acknowledgement across a partition**: a `wait=all` purge is complete
//!   when every member applied it, or when a majority did and every member that did
//!   not is *fenced*: a lease has passed since the majority acked (so any lease it
//!   holds now was renewed from a majority, which includes an acker, after the ack),
//!   or a lease has passed since it was found unreachable (SWIM declared it down a
//!   suspicion timeout after that; one that left gracefully stopped vouching for
//!   hits before it left). So a node cut off from the purger stops serving hits
//!   before the purge is acknowledged without it; a purger cut off from the
//!   majority cannot complete a purge at all. The shortcut for down members trusts
//!   SWIM's verdict (direct and indirect probes failed), and only while this node
//!   has held its own lease since before the verdict (a node that was cut off
//!   itself holds everyone else down): a member that every prober lost but that
//!   still reaches a majority would break it.
//! - **Race safety**: a receiver applies a purge at its *own* clock, after observing
//!   the origin's: every fill it had started before the purge reached it has an
//!   older version and is covered, whatever the clock skew between nodes.
//! - **Dependencies**: edges are replicated too, so every node can walk every chain;
//!   when an edge arrives naming a key this node stores, the node adds the edges from
//!   that key's tags (so purging a tag reaches dependents on other nodes).
//!
//! Here: the [`Replicator`], its state and the membership it reads. `fan_out`
//! sends records and completes purges (acks, fencing, reports); `apply` applies
//! and keeps other nodes' records; `anti_entropy` answers and makes pulls.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use fanz_protocol::replication::{Op, Replicated};
use serde::Serialize;
use tokio::sync::watch;

use super::gossip::Broadcaster;
use super::membership::{MemberState, View};
use super::safety;
use super::transport::PeerTransport;
use crate::cache::Cache;
use crate::invalidation::PurgeTargets;
use crate::metrics::Metrics;
use crate::sync_gate::SyncGate;

mod anti_entropy;
mod apply;
mod fan_out;

use apply::{Applied, Kept};
use fan_out::Reported;

/// Records kept for anti-entropy, across all origins.
pub const KEPT_RECORDS: usize = 200_000;
/// Purge reports kept for `GET /purge/{id}`.
const KEPT_REPORTS: usize = 10_000;
/// How long fan-out keeps retrying a member that has not acked.
const RETRY_FOR: Duration = Duration::from_secs(30);
/// Pause between retries to one member.
const RETRY_EVERY: Duration = Duration::from_millis(200);
/// How long a member has to answer one replicate or pull.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Records per anti-entropy answer.
const PULL_BATCH: usize = 20_000;
/// File in the data directory with what this node has applied.
const APPLIED_FILE: &str = "cluster-applied.json";
/// Added to a lease before a member counts as fenced: scheduling and clock-rate
/// slack between two machines measuring the same interval.
const FENCE_MARGIN: Duration = Duration::from_millis(500);

/// Why a record from another node was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// It does not decode: sending it again cannot help.
    #[error("bad record: {0}")]
    BadRecord(String),
    /// This node could not apply it now (its log failed): it may later.
    #[error("not applied: {0}")]
    Failed(String),
}

impl ApplyError {
    fn failed(e: impl std::fmt::Display) -> Self {
        ApplyError::Failed(e.to_string())
    }

    /// The peer-protocol error code to answer with.
    pub fn code(&self) -> fanz_protocol::peer::ErrorCode {
        match self {
            ApplyError::BadRecord(_) => fanz_protocol::peer::ErrorCode::BadRequest,
            ApplyError::Failed(_) => fanz_protocol::peer::ErrorCode::Unavailable,
        }
    }
}

/// How long a purge request waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Until every alive member has applied it (or the ack timeout).
    All,
    /// Not at all: answer with the purge id.
    None,
}

/// The progress of one purge across the cluster, as `GET /purge/{id}` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PurgeReport {
    /// `origin/seq`.
    pub id: String,
    /// Members it was sent to (this node excluded).
    pub members: usize,
    /// Members that applied it, with how long it took (ms).
    pub acked: BTreeMap<String, f64>,
    /// Members that have not (yet).
    pub pending: Vec<String>,
    /// Members that did not apply it but are fenced (unreachable for longer than
    /// their sync lease, so they serve no hit without revalidating): a complete
    /// purge may have some. They catch up when they reach the cluster again.
    pub fenced: Vec<String>,
    /// The slowest ack so far, ms.
    pub slowest_ms: f64,
    /// Dependent keys invalidated, summed over the nodes that acked (this one
    /// included).
    pub dependents_invalidated: u64,
    /// Whether every member has applied it.
    pub complete: bool,
}

#[derive(Debug)]
struct Progress {
    report: Mutex<PurgeReport>,
    done: tokio::sync::Notify,
    started: Instant,
    /// How many nodes that applied it (this one included) must report a pending
    /// member's requests before it can be fenced ([`safety::fencing_quorum`]).
    quorum: usize,
    /// What each node that applied it (this one included) said about the others'
    /// requests to it, by node id.
    reported: Mutex<HashMap<String, Reported>>,
    /// Woken on every ack (the fencing watcher waits on it).
    acked: tokio::sync::Notify,
    /// A purge (counted in the purge metrics).
    is_purge: bool,
}

/// What every replicator is built on, joined or alone.
#[derive(Debug)]
pub struct ReplicatorBase {
    /// This node's id.
    pub node_id: String,
    /// This run of it (records are named `node_id@generation`).
    pub generation: u64,
    /// The node's cache.
    pub cache: Arc<Cache>,
    /// The peer transport (none for a cluster of one).
    pub transport: Arc<PeerTransport>,
    /// The membership, as it changes.
    pub view: watch::Receiver<Arc<View>>,
    /// The sync state this replicator's rounds renew.
    pub gate: Arc<SyncGate>,
    /// The node's metrics.
    pub metrics: Arc<Metrics>,
}

/// Replicates this node's invalidations and applies everyone else's.
#[derive(Debug)]
pub struct Replicator {
    /// A cluster of one: nothing is recorded for others ([`Replicator::alone`]).
    alone: bool,
    node_id: String,
    origin: String,
    next_seq: AtomicU64,
    cache: Arc<Cache>,
    transport: Arc<PeerTransport>,
    view: watch::Receiver<Arc<View>>,
    kept: Mutex<Kept>,
    reports: DashMap<String, Arc<Progress>>,
    report_order: Mutex<VecDeque<String>>,
    gate: Arc<SyncGate>,
    metrics: Arc<Metrics>,
    ack_timeout: Duration,
    applied_file: PathBuf,
    /// It started with an applied set saved by an earlier run.
    resumed: bool,
    /// Serialises applying records (fan-out and anti-entropy may both deliver).
    apply_lock: tokio::sync::Mutex<()>,
    /// Small records also ride on SWIM packets (the backstop).
    piggyback: Broadcaster,
    /// Test hook: how long applying another node's purge or overwrite waits first
    /// ([`APPLY_DELAY_ENV`]), so tests can hold a member behind one.
    apply_delay: Duration,
}

/// Environment variable (milliseconds) that makes a node wait that long before
/// applying each purge or overwrite made on another node. For tests that need a
/// member to lag behind one deterministically; never set it in production.
pub const APPLY_DELAY_ENV: &str = "FANZ_TEST_APPLY_DELAY_MS";

impl Replicator {
    /// A replicator on `base`, keeping its applied set in `data_dir`.
    pub fn new(
        base: ReplicatorBase,
        ack_timeout: Duration,
        data_dir: PathBuf,
        piggyback: Broadcaster,
    ) -> Arc<Self> {
        let applied_file = data_dir.join(APPLIED_FILE);
        let mut kept = Kept::default();
        if let Ok(text) = std::fs::read_to_string(&applied_file) {
            if let Ok(saved) = serde_json::from_str::<HashMap<String, u64>>(&text) {
                for (origin, contiguous) in saved {
                    kept.applied.insert(
                        origin,
                        Applied {
                            contiguous,
                            beyond: BTreeSet::new(),
                        },
                    );
                }
            }
        }
        let resumed = !kept.applied.is_empty();
        let apply_delay = std::env::var(APPLY_DELAY_ENV)
            .ok()
            .and_then(|ms| ms.parse().ok())
            .map_or(Duration::ZERO, Duration::from_millis);
        if !apply_delay.is_zero() {
            tracing::warn!(delay = ?apply_delay, "{APPLY_DELAY_ENV} is set: purges and overwrites from other nodes are applied late (a test hook)");
        }
        Arc::new_cyclic(|this: &std::sync::Weak<Self>| {
            let this = this.clone();
            let source = move || this.upgrade().map_or_else(Vec::new, |r| r.kept_records());
            kept.resume(base.cache.invalidator().take_kept_records(Box::new(source)));
            Self {
                resumed,
                kept: Mutex::new(kept),
                ack_timeout,
                applied_file,
                piggyback,
                apply_delay,
                ..Self::with(base)
            }
        })
    }

    /// The replicator of a cluster of one (no `cluster_dir`): a purge or overwrite
    /// is applied here and has no one to go to, now or later, so no record is made
    /// and no report kept.
    pub fn alone(base: ReplicatorBase) -> Arc<Self> {
        Arc::new(Self {
            alone: true,
            ..Self::with(base)
        })
    }

    /// A replicator on `base`, the rest as a fresh node without peers.
    fn with(base: ReplicatorBase) -> Self {
        let ReplicatorBase {
            node_id,
            generation,
            cache,
            transport,
            view,
            gate,
            metrics,
        } = base;
        Self {
            alone: false,
            resumed: false,
            origin: format!("{node_id}@{generation}"),
            node_id,
            next_seq: AtomicU64::new(1),
            cache,
            transport,
            view,
            kept: Mutex::new(Kept::default()),
            reports: DashMap::new(),
            report_order: Mutex::new(VecDeque::new()),
            gate,
            metrics,
            ack_timeout: Duration::ZERO,
            applied_file: PathBuf::new(),
            apply_lock: tokio::sync::Mutex::new(()),
            piggyback: Broadcaster::none(),
            apply_delay: Duration::ZERO,
        }
    }

    /// How long ago each member last sent this node a request: what an ack of a
    /// record tells its sender, for fencing.
    pub fn contacts(&self) -> fanz_protocol::peer::Contacts {
        self.transport.contacts()
    }

    /// Whether this node resumed state from an earlier run (it had applied
    /// invalidations then): it may hold values the cluster has since changed.
    pub fn resumed(&self) -> bool {
        self.resumed
    }

    /// Members other than this node that are not down (alive or suspected):
    /// (id, peer address, state).
    fn peers(&self) -> Vec<(String, SocketAddr, MemberState)> {
        self.view
            .borrow()
            .members
            .iter()
            .filter(|m| !m.local && m.state != MemberState::Down)
            .map(|m| (m.identity.id.clone(), m.identity.peer, m.state))
            .collect()
    }

    /// Every member other than this node, down ones included: a purge is complete
    /// only once each applied it or is fenced.
    fn others(&self) -> Vec<(String, SocketAddr, MemberState)> {
        self.view
            .borrow()
            .members
            .iter()
            .filter(|m| !m.local)
            .map(|m| (m.identity.id.clone(), m.identity.peer, m.state))
            .collect()
    }

    /// Peers that, with this node, are a majority of the members it knows (down
    /// ones included: a partition must not shrink the count).
    fn majority_of_peers(&self) -> usize {
        self.view.borrow().members.len() / 2
    }

    /// This node restarted with state from an earlier run: see
    /// [`SyncGate::rejoining`].
    pub fn rejoining(&self, settle: Duration) {
        self.gate.rejoining(settle);
    }

    /// From now on every hit asks the sync gate: see [`SyncGate::guard`].
    pub fn guard_hits(&self) {
        self.gate.guard();
    }

    /// This node is leaving the cluster: it vouches for no hit from now on.
    pub fn leaving(&self) {
        self.gate.leaving();
    }

    /// Tells the gate, as the view changes, when the members not down change
    /// (ownership moved), and when this node was declared down and rejoined: others
    /// may have fenced it meanwhile and completed purges and writes without it, so
    /// it revalidates its hits until a round that begins `settle` later (RELIABILITY
    /// finding 14).
    pub fn track_membership(self: &Arc<Self>, settle: Duration) {
        let this = self.clone();
        let mut view = self.view.clone();
        tokio::spawn(async move {
            let mut serving: Vec<String> = Vec::new();
            let mut generation = None;
            loop {
                {
                    let current = view.borrow_and_update().clone();
                    let own = current.members.iter().find(|m| m.local);
                    let now = own.map(|m| m.identity.generation);
                    if generation.is_some() && now != generation {
                        this.gate.rejoining(settle);
                    }
                    generation = now;
                    let mut now_serving: Vec<String> = current
                        .members
                        .iter()
                        .filter(|m| m.state != MemberState::Down)
                        .map(|m| m.identity.id.clone())
                        .collect();
                    now_serving.sort_unstable();
                    if now_serving != serving {
                        serving = now_serving;
                        this.gate.membership_changed();
                    }
                }
                if view.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    fn make(&self, op: Op, at: fanz_protocol::Timestamp) -> Replicated {
        Replicated {
            origin: self.origin.clone(),
            seq: self.next_seq.fetch_add(1, Ordering::Relaxed),
            at,
            op,
        }
    }

    fn keep(&self, record: &Replicated, encoded: Bytes) {
        let mut kept = self.kept.lock().expect("kept lock");
        kept.insert((record.origin.clone(), record.seq), encoded);
    }

    /// The records kept for anti-entropy, oldest first (what a log compaction keeps).
    fn kept_records(&self) -> Vec<Bytes> {
        let kept = self.kept.lock().expect("kept lock");
        kept.order
            .iter()
            .filter_map(|name| kept.records.get(name).cloned())
            .collect()
    }
}

fn rand_index(n: usize) -> usize {
    use rand::RngExt;
    rand::rng().random_range(0..n)
}

/// The replicated form of a purge.
fn purge_op(targets: &PurgeTargets) -> Op {
    Op::Purge {
        keys: targets.keys.clone(),
        tags: targets.tags.clone(),
        prefixes: targets.prefixes.clone(),
        soft: targets.soft,
    }
}

/// The purge a replicated `Op::Purge` asks for (empty for any other op).
fn purge_targets(op: &Op) -> PurgeTargets {
    match op {
        Op::Purge {
            keys,
            tags,
            prefixes,
            soft,
        } => PurgeTargets {
            keys: keys.clone(),
            tags: tags.clone(),
            prefixes: prefixes.clone(),
            soft: *soft,
        },
        _ => PurgeTargets::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::apply::{Applied, Kept};
    use super::fan_out::Delivery;
    use super::*;
    use fanz_protocol::peer::Message;
    use fanz_protocol::Timestamp;
    use std::collections::{BTreeSet, HashMap};
    use std::net::SocketAddr;

    fn record(origin: &str, seq: u64) -> Bytes {
        Replicated {
            origin: origin.into(),
            seq,
            at: Timestamp::from_u64(seq),
            op: purge_op(&PurgeTargets {
                tags: vec![Bytes::from_static(b"t")],
                ..PurgeTargets::default()
            }),
        }
        .encode()
    }

    fn since(pairs: &[(&str, u64)]) -> HashMap<String, u64> {
        pairs.iter().map(|(o, s)| (o.to_string(), *s)).collect()
    }

    fn gap_for(kept: &Kept, asker: &HashMap<String, u64>) -> bool {
        kept.evicted
            .iter()
            .any(|(o, e)| asker.get(o).copied().unwrap_or(0) < *e)
    }

    // Issue 18: cluster errors that decide retries are typed. A record that does
    // not decode is rejected as bad and never retried; anything else is retried.
    #[test]
    fn a_bad_record_is_given_up_on_and_other_failures_are_retried() {
        use crate::cluster::transport::PeerError;
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(
            Delivery::of(&Ok(Message::Applied {
                invalidated: 3,
                contacts: None
            })),
            Delivery::Acked(3, None)
        );
        assert_eq!(
            Delivery::of(&Err(PeerError::Rejected(addr, "bad record".into()))),
            Delivery::GiveUp
        );
        for retried in [
            PeerError::Refused(addr, "not applied".into()),
            PeerError::Timeout(addr),
            PeerError::Unreachable(addr, "reset".into()),
        ] {
            assert_eq!(Delivery::of(&Err(retried)), Delivery::Retry);
        }
        assert_eq!(Delivery::of(&Ok(Message::Done)), Delivery::Retry);
        let garbage = Bytes::from_static(b"\xff not a record");
        assert!(matches!(
            apply::decode_record(garbage),
            Err(ApplyError::BadRecord(_))
        ));
        assert_eq!(
            ApplyError::BadRecord("x".into()).code(),
            fanz_protocol::peer::ErrorCode::BadRequest
        );
        assert_eq!(
            ApplyError::Failed("x".into()).code(),
            fanz_protocol::peer::ErrorCode::Unavailable
        );
    }

    // Issue 18, hole 4: after a restart a node vouches only for the records its log
    // kept; for anything it applied but lost it reports a gap.
    #[test]
    fn a_restarted_node_reports_a_gap_for_what_it_applied_but_lost() {
        let mut kept = Kept::default();
        // The applied file says a@1 up to 5 and b@1 up to 3; the log kept a 3..=5
        // and none of b (lost in a crash before its sync).
        kept.applied.insert(
            "a@1".into(),
            Applied {
                contiguous: 5,
                beyond: BTreeSet::new(),
            },
        );
        kept.applied.insert(
            "b@1".into(),
            Applied {
                contiguous: 3,
                beyond: BTreeSet::new(),
            },
        );
        kept.resume((3..=5).map(|s| record("a@1", s)).collect());
        assert_eq!(kept.evicted["a@1"], 2, "a 3..=5 can be handed over");
        assert_eq!(kept.evicted["b@1"], 3, "nothing of b can");
        assert!(!gap_for(&kept, &since(&[("a@1", 2), ("b@1", 3)])));
        assert!(gap_for(&kept, &since(&[("a@1", 1), ("b@1", 3)])));
        assert!(gap_for(&kept, &since(&[("a@1", 5), ("b@1", 2)])));
        // A record replayed beyond the applied file counts as applied.
        kept.resume(vec![record("a@1", 6)]);
        assert_eq!(kept.applied["a@1"].contiguous, 6);
    }
}
