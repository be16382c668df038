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

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use fanz_protocol::log::Record;
use fanz_protocol::peer::Message;
use fanz_protocol::replication::{Op, Replicated};
use fanz_protocol::{CacheKey, Namespace};
use serde::Serialize;
use tokio::sync::watch;

use super::gossip::Broadcaster;
use super::membership::{MemberState, View};
use super::safety::{self, DownVerdict};
use super::sync::SyncGate;
use super::transport::PeerTransport;
use crate::cache::Cache;
use crate::invalidation::PurgeTargets;
use crate::metrics::Metrics;

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

/// What fan-out does after one attempt to deliver a record to a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    /// The member applied it.
    Acked(u64),
    /// Try again after [`RETRY_EVERY`] (unreachable, timed out, busy).
    Retry,
    /// The member rejected the record as bad: retrying cannot help.
    GiveUp,
}

impl Delivery {
    fn of(answer: &Result<Message, super::transport::PeerError>) -> Self {
        match answer {
            Ok(Message::Applied { invalidated }) => Delivery::Acked(*invalidated),
            Err(e) if !e.is_retryable() => Delivery::GiveUp,
            _ => Delivery::Retry,
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
    /// Acks needed (this node's own apply excluded) for a majority of the members.
    majority: usize,
    /// When the majority had acked.
    majority_at: Mutex<Option<Instant>>,
    /// Woken on every ack (the fencing watcher waits on it).
    acked: tokio::sync::Notify,
    /// A purge (counted in the purge metrics).
    is_purge: bool,
}

#[derive(Debug, Default)]
struct Applied {
    contiguous: u64,
    beyond: BTreeSet<u64>,
}

impl Applied {
    fn has(&self, seq: u64) -> bool {
        seq <= self.contiguous || self.beyond.contains(&seq)
    }
    fn add(&mut self, seq: u64) {
        if seq <= self.contiguous {
            return;
        }
        self.beyond.insert(seq);
        while self.beyond.remove(&(self.contiguous + 1)) {
            self.contiguous += 1;
        }
    }
}

#[derive(Debug, Default)]
struct Kept {
    records: BTreeMap<(String, u64), Bytes>,
    order: VecDeque<(String, u64)>,
    /// Highest sequence evicted, per origin: an asker behind it has a gap.
    evicted: HashMap<String, u64>,
    applied: HashMap<String, Applied>,
    dirty: bool,
}

impl Kept {
    /// Keeps `encoded` (record `name`) and marks it applied; the oldest records
    /// beyond [`KEPT_RECORDS`] are let go, and their sequences counted as evicted.
    fn insert(&mut self, name: (String, u64), encoded: Bytes) {
        self.applied.entry(name.0.clone()).or_default().add(name.1);
        if self.records.insert(name.clone(), encoded).is_none() {
            self.order.push_back(name);
        }
        self.dirty = true;
        while self.order.len() > KEPT_RECORDS {
            if let Some((origin, seq)) = self.order.pop_front() {
                self.records.remove(&(origin.clone(), seq));
                let evicted = self.evicted.entry(origin).or_default();
                *evicted = (*evicted).max(seq);
            }
        }
    }

    /// After a restart: the records the log kept are back, and for every origin,
    /// what was applied but is no longer kept counts as evicted. A peer behind it
    /// is told it has a gap, instead of being vouched for with records this node
    /// can no longer hand over.
    fn resume(&mut self, replayed: Vec<Bytes>) {
        for encoded in replayed {
            match Replicated::decode(encoded.clone()) {
                Ok(record) => self.insert((record.origin, record.seq), encoded),
                Err(e) => {
                    tracing::warn!(error = %e, "a kept cluster record in the log is damaged; skipped")
                }
            }
        }
        for (origin, applied) in &self.applied {
            let mut unkept = applied.contiguous;
            while unkept > 0 && self.records.contains_key(&(origin.clone(), unkept)) {
                unkept -= 1;
            }
            let evicted = self.evicted.entry(origin.clone()).or_default();
            *evicted = (*evicted).max(unkept);
        }
    }
}

/// Replicates this node's invalidations and applies everyone else's.
#[derive(Debug)]
pub struct Replicator {
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
    /// Since when each member has been down in this node's view.
    down_since: Mutex<HashMap<String, DownVerdict<Instant>>>,
    /// How long after SWIM declares a member down it counts as fenced: a lease
    /// (plus margin) after it was first found unreachable, which was at least one
    /// suspicion timeout before. A member that left gracefully fenced itself.
    fence_after_down: Duration,
    /// Test hook: how long applying another node's purge waits first
    /// ([`PURGE_APPLY_DELAY_ENV`]), so tests can hold a member behind a purge.
    purge_apply_delay: Duration,
}

/// Environment variable (milliseconds) that makes a node wait that long before
/// applying each purge made on another node. For tests that need a member to lag
/// behind a purge deterministically; never set it in production.
pub const PURGE_APPLY_DELAY_ENV: &str = "FANZ_TEST_PURGE_APPLY_DELAY_MS";

impl Replicator {
    /// A replicator for node `node_id` of `generation`, keeping its applied set in
    /// `data_dir`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        node_id: String,
        generation: u64,
        cache: Arc<Cache>,
        transport: Arc<PeerTransport>,
        view: watch::Receiver<Arc<View>>,
        gate: Arc<SyncGate>,
        metrics: Arc<Metrics>,
        ack_timeout: Duration,
        suspicion: Duration,
        data_dir: PathBuf,
        piggyback: Broadcaster,
    ) -> Arc<Self> {
        let fence_after_down = (gate.lease() + FENCE_MARGIN).saturating_sub(suspicion);
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
        let purge_apply_delay = std::env::var(PURGE_APPLY_DELAY_ENV)
            .ok()
            .and_then(|ms| ms.parse().ok())
            .map_or(Duration::ZERO, Duration::from_millis);
        if !purge_apply_delay.is_zero() {
            tracing::warn!(delay = ?purge_apply_delay, "{PURGE_APPLY_DELAY_ENV} is set: purges from other nodes are applied late (a test hook)");
        }
        Arc::new_cyclic(|this: &std::sync::Weak<Self>| {
            let this = this.clone();
            let source = move || this.upgrade().map_or_else(Vec::new, |r| r.kept_records());
            kept.resume(cache.invalidator().take_kept_records(Box::new(source)));
            Self {
                resumed,
                origin: format!("{node_id}@{generation}"),
                node_id,
                next_seq: AtomicU64::new(1),
                cache,
                transport,
                view,
                kept: Mutex::new(kept),
                reports: DashMap::new(),
                report_order: Mutex::new(VecDeque::new()),
                gate,
                metrics,
                ack_timeout,
                applied_file,
                apply_lock: tokio::sync::Mutex::new(()),
                piggyback,
                down_since: Mutex::new(HashMap::new()),
                fence_after_down,
                purge_apply_delay,
            }
        })
    }

    /// Whether this node resumed state from an earlier run (it had applied
    /// invalidations then): it may hold values the cluster has since changed.
    pub fn resumed(&self) -> bool {
        self.resumed
    }

    /// Members other than this node that are not down (alive or suspected):
    /// (id, peer address).
    fn peers(&self) -> Vec<(String, SocketAddr)> {
        self.view
            .borrow()
            .members
            .iter()
            .filter(|m| !m.local && m.state != MemberState::Down)
            .map(|m| (m.identity.id.clone(), m.identity.peer))
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

    /// Whether the owners this node writes to may not be the ones another node
    /// reads from: a member is suspected or down (writes skip it), or membership
    /// just changed and views are still converging.
    pub fn owners_uncertain(&self) -> bool {
        !self.gate.settled()
            || self
                .view
                .borrow()
                .members
                .iter()
                .any(|m| m.state != MemberState::Alive)
    }

    /// This node is leaving the cluster: it vouches for no hit from now on.
    pub fn leaving(&self) {
        self.gate.leaving();
    }

    /// Keeps [`Self::down_since`] current as the view changes, and tells the gate
    /// when the members not down change (ownership moved).
    pub fn track_down_members(self: &Arc<Self>) {
        let this = self.clone();
        let mut view = self.view.clone();
        tokio::spawn(async move {
            let mut serving: Vec<String> = Vec::new();
            loop {
                {
                    let current = view.borrow_and_update().clone();
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
                    let mut down = this.down_since.lock().expect("down lock");
                    down.retain(|id, _| {
                        current
                            .members
                            .iter()
                            .any(|m| m.identity.id == *id && m.state == MemberState::Down)
                    });
                    for m in current
                        .members
                        .iter()
                        .filter(|m| m.state == MemberState::Down)
                    {
                        down.entry(m.identity.id.clone())
                            .or_insert_with(|| DownVerdict {
                                at: Instant::now(),
                                wall_ms: crate::clock::now_ms(),
                            });
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

    /// Purges `targets` here and on every member. With `Wait::All`, returns once
    /// every alive member has applied it or the ack timeout passed (the report names
    /// who has not acked).
    pub async fn purge(
        self: &Arc<Self>,
        targets: &PurgeTargets,
        wait: Wait,
    ) -> Result<(crate::invalidation::PurgeOutcome, PurgeReport), crate::cache::CacheError> {
        let outcome = self.cache.purge(targets).await?;
        let record = self.make(purge_op(targets), outcome.at);
        let progress = self.fan_out(record, outcome.dependents.len() as u64, true);
        if wait == Wait::All {
            self.wait_complete(&progress).await;
        }
        let report = progress.report.lock().expect("report lock").clone();
        Ok((outcome, report))
    }

    /// Waits until `progress` is complete or the ack timeout passes; whether it is.
    async fn wait_complete(&self, progress: &Progress) -> bool {
        let done = progress.done.notified();
        tokio::pin!(done);
        done.as_mut().enable();
        if !progress.report.lock().expect("report lock").complete {
            let _ = tokio::time::timeout(self.ack_timeout, done).await;
        }
        progress.report.lock().expect("report lock").complete
    }

    /// `key` was overwritten here with a value of `version`: its dependents are
    /// invalidated everywhere, and older copies of it on owners that missed the write
    /// are dropped. With `wait` (an owner did not confirm the write), returns only
    /// once every member applied the record or is fenced (or the ack timeout passed):
    /// whether it did. Until then the owner that missed the write may still serve
    /// the old value.
    pub async fn overwrite(
        self: &Arc<Self>,
        key: &CacheKey,
        version: fanz_protocol::Timestamp,
        wait: bool,
    ) -> bool {
        let at = self.cache.invalidator().now();
        let record = self.make(
            Op::Overwrite {
                key: key.clone(),
                version,
            },
            at,
        );
        let progress = self.fan_out(record, 0, wait);
        !wait || self.wait_complete(&progress).await
    }

    /// Replicates edges recorded on this node, as they come.
    pub fn replicate_edges(self: &Arc<Self>) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<Record>>();
        self.cache.invalidator().replicate_edges_to(tx);
        let this = self.clone();
        tokio::spawn(async move {
            while let Some(edges) = rx.recv().await {
                let at = this.cache.invalidator().now();
                let record = this.make(Op::Edges { edges }, at);
                this.fan_out(record, 0, false);
            }
        });
    }

    /// The report of purge `id`, if this node made it and still keeps it.
    pub fn report(&self, id: &str) -> Option<PurgeReport> {
        self.reports
            .get(id)
            .map(|p| p.report.lock().expect("report lock").clone())
    }

    /// Keeps `record` and sends it to every member not down, retrying each until it
    /// acks or is declared down. Returns its progress; an `awaited` one also
    /// completes once a majority acked and the rest are fenced.
    fn fan_out(
        self: &Arc<Self>,
        record: Replicated,
        local_dependents: u64,
        awaited: bool,
    ) -> Arc<Progress> {
        let encoded = record.encode();
        self.keep(&record, encoded.clone());
        // In the log with the next sync (a record of ours lost in a crash is
        // reported as a gap after the restart, never vouched for).
        let invalidator = self.cache.invalidator().clone();
        let logged = encoded.clone();
        tokio::spawn(async move {
            if let Err(e) = invalidator.keep_record(logged, false).await {
                tracing::warn!(error = %e, "keeping a cluster record in the log failed");
            }
        });
        self.piggyback.broadcast(encoded.clone());
        let id = format!("{}/{}", record.origin, record.seq);
        let others = self.others();
        let majority = self.majority_of_peers();
        let progress = Arc::new(Progress {
            report: Mutex::new(PurgeReport {
                id: id.clone(),
                members: others.len(),
                acked: BTreeMap::new(),
                pending: others.iter().map(|(id, ..)| id.clone()).collect(),
                fenced: Vec::new(),
                slowest_ms: 0.0,
                dependents_invalidated: local_dependents,
                complete: others.is_empty(),
            }),
            done: tokio::sync::Notify::new(),
            started: Instant::now(),
            majority,
            majority_at: Mutex::new((majority == 0).then(Instant::now)),
            acked: tokio::sync::Notify::new(),
            is_purge: matches!(record.op, Op::Purge { .. }),
        });
        if progress.is_purge {
            self.remember(id, progress.clone());
            if others.is_empty() {
                self.metrics.purge_propagation.observe(0.0);
            } else {
                self.metrics.purges_pending_ack.inc();
            }
        }
        if awaited && !others.is_empty() {
            self.watch_fencing(progress.clone());
        }
        let peers = others
            .into_iter()
            .filter(|(_, _, state)| *state != MemberState::Down)
            .map(|(id, addr, _)| (id, addr));
        for (member, addr) in peers {
            let (this, progress, encoded) = (self.clone(), progress.clone(), encoded.clone());
            tokio::spawn(async move {
                let message = Message::Replicate { record: encoded };
                let deadline = Instant::now() + RETRY_FOR;
                loop {
                    let answer = this.transport.call(addr, &message, CALL_TIMEOUT).await;
                    match Delivery::of(&answer) {
                        Delivery::Acked(invalidated) => {
                            this.acked(&progress, &member, invalidated);
                            return;
                        }
                        Delivery::GiveUp => {
                            tracing::error!(%member, answer = ?answer.err(), "member rejected a replicated invalidation as bad; not retried");
                            return;
                        }
                        Delivery::Retry => {
                            let still_member = this.peers().iter().any(|(id, _)| *id == member);
                            if !still_member || Instant::now() > deadline {
                                tracing::warn!(%member, answer = ?answer.err(), "member did not apply a replicated invalidation; anti-entropy will");
                                return;
                            }
                            tokio::time::sleep(RETRY_EVERY).await;
                        }
                    }
                }
            });
        }
        progress
    }

    fn acked(&self, progress: &Progress, member: &str, invalidated: u64) {
        let took_ms = progress.started.elapsed().as_secs_f64() * 1000.0;
        let mut report = progress.report.lock().expect("report lock");
        report.pending.retain(|m| m != member);
        report.fenced.retain(|m| m != member);
        report.acked.insert(member.to_string(), took_ms);
        report.slowest_ms = report.slowest_ms.max(took_ms);
        report.dependents_invalidated += invalidated;
        if report.acked.len() >= progress.majority {
            let mut at = progress.majority_at.lock().expect("majority lock");
            at.get_or_insert_with(Instant::now);
        }
        if report.pending.is_empty() && !report.complete {
            report.complete = true;
            if progress.is_purge {
                self.metrics.purges_pending_ack.dec();
                self.metrics.purge_propagation.observe(took_ms / 1000.0);
            }
            progress.done.notify_waiters();
        }
        progress.acked.notify_waiters();
    }

    /// Completes a purge that a majority applied once every member that has not is
    /// fenced: a lease (plus [`FENCE_MARGIN`]) after the majority acked, or after
    /// SWIM declared the member down, whichever is sooner. Gives up with the
    /// fan-out ([`RETRY_FOR`]): a purger without a majority never completes one.
    fn watch_fencing(self: &Arc<Self>, progress: Arc<Progress>) {
        let this = self.clone();
        let rules = safety::FenceRules {
            after_majority: self.gate.lease() + FENCE_MARGIN,
            after_down: self.fence_after_down,
        };
        tokio::spawn(async move {
            loop {
                let acked = progress.acked.notified();
                tokio::pin!(acked);
                acked.as_mut().enable();
                let now = Instant::now();
                let majority_at = *progress.majority_at.lock().expect("majority lock");
                let fenced_at = {
                    let report = progress.report.lock().expect("report lock");
                    if report.complete {
                        return;
                    }
                    let down = this.down_since.lock().expect("down lock");
                    let lease_since = this.gate.lease_held_since_ms();
                    let pending = report.pending.iter().map(|m| {
                        safety::member_fenced_at(
                            majority_at,
                            down.get(m).copied(),
                            lease_since,
                            rules,
                        )
                    });
                    safety::purge_fenced_at(now, majority_at, pending)
                };
                if fenced_at.is_some_and(|at| at <= now) {
                    this.complete_fenced(&progress);
                    return;
                }
                if progress.started.elapsed() > RETRY_FOR {
                    return;
                }
                let wake = fenced_at
                    .unwrap_or(now + Duration::from_millis(100))
                    .min(now + Duration::from_millis(100));
                tokio::select! {
                    _ = tokio::time::sleep_until(wake.into()) => {}
                    _ = acked => {}
                }
            }
        });
    }

    /// Every member still pending is fenced: the purge is complete without them.
    fn complete_fenced(&self, progress: &Progress) {
        let mut report = progress.report.lock().expect("report lock");
        if report.complete {
            return;
        }
        let pending = std::mem::take(&mut report.pending);
        tracing::warn!(purge = %report.id, fenced = ?pending, "purge complete without members that are fenced (unreachable past their sync lease)");
        report.fenced.extend(pending);
        report.complete = true;
        if progress.is_purge {
            self.metrics.purges_pending_ack.dec();
            self.metrics
                .purge_propagation
                .observe(progress.started.elapsed().as_secs_f64());
        }
        progress.done.notify_waiters();
    }

    fn remember(&self, id: String, progress: Arc<Progress>) {
        self.reports.insert(id.clone(), progress);
        let mut order = self.report_order.lock().expect("report order lock");
        order.push_back(id);
        while order.len() > KEPT_REPORTS {
            if let Some(old) = order.pop_front() {
                self.reports.remove(&old);
            }
        }
    }

    /// Applies a record made on another node, once. Returns the dependents it
    /// invalidated here; a record that does not decode is [`ApplyError::BadRecord`]
    /// (its sender must not retry it).
    pub async fn apply(&self, encoded: Bytes) -> Result<u64, ApplyError> {
        let record = Replicated::decode(encoded.clone())
            .map_err(|e| ApplyError::BadRecord(e.to_string()))?;
        let _serial = self.apply_lock.lock().await;
        let seen = {
            let kept = self.kept.lock().expect("kept lock");
            kept.applied
                .get(&record.origin)
                .is_some_and(|a| a.has(record.seq))
        };
        if seen {
            return Ok(0);
        }
        if matches!(record.op, Op::Purge { .. }) && !self.purge_apply_delay.is_zero() {
            tokio::time::sleep(self.purge_apply_delay).await;
        }
        let invalidator = self.cache.invalidator().clone();
        // Every later local fill is ordered after the origin's purge; this purge is
        // stamped with our own (later) clock, covering fills already in flight here.
        invalidator.observe(record.at);
        let invalidated = match &record.op {
            Op::Purge { .. } => {
                let targets = purge_targets(&record.op);
                self.cache
                    .purge(&targets)
                    .await
                    .map_err(ApplyError::failed)?
                    .dependents
                    .len() as u64
            }
            // At the overwrite's own time: a dependent written after the overwrite
            // (but before this record arrived) read the new value and stays valid.
            Op::Overwrite { key, version } => {
                // An owner that missed this write (down, or not yet seen back) holds
                // an older value: dropped, so a read asks the other owners.
                if self.cache.drop_if_older(key, *version).await {
                    tracing::debug!(?key, "dropped a copy older than a replicated overwrite");
                }
                invalidator
                    .invalidate_dependents_at(key, record.at)
                    .await
                    .map_err(ApplyError::failed)?
                    .len() as u64
            }
            Op::Edges { edges } => {
                invalidator
                    .apply_remote_edges(edges)
                    .await
                    .map_err(ApplyError::failed)?;
                self.add_tag_edges(edges).await;
                0
            }
        };
        self.keep(&record, encoded.clone());
        // Durable before the ack: this node may then vouch for it to a peer that
        // missed it, after a restart too.
        invalidator
            .keep_record(encoded, true)
            .await
            .map_err(ApplyError::failed)?;
        Ok(invalidated)
    }

    /// For each edge from a key stored here, records the edges from that key's tags
    /// (and replicates them): purging one of its tags must reach its dependents,
    /// wherever they are stored.
    async fn add_tag_edges(&self, edges: &[Record]) {
        for edge in edges {
            let Record::Edge { from, .. } = edge else {
                continue;
            };
            let Some(key) = from.as_key() else { continue };
            let Some(found) = self.cache.find(&key).await else {
                continue;
            };
            let meta = found.meta().clone();
            // Tag edges only: they start from tags, so this never cascades (a
            // dependency cycle cannot make nodes trade edges forever).
            if let Err(e) = self.cache.invalidator().record_tag_edges(&key, &meta).await {
                tracing::warn!(error = %e, "recording tag edges failed");
            }
        }
    }

    /// What a peer asking with `since` lacks, and whether records it lacks are
    /// gone from here.
    pub fn answer_pull(&self, since: &[(String, u64)]) -> (Vec<Bytes>, bool) {
        let since: HashMap<&str, u64> = since.iter().map(|(o, s)| (o.as_str(), *s)).collect();
        let kept = self.kept.lock().expect("kept lock");
        let gap = kept
            .evicted
            .iter()
            .any(|(origin, evicted)| since.get(origin.as_str()).copied().unwrap_or(0) < *evicted);
        let records = kept
            .records
            .iter()
            .filter(|((origin, seq), _)| *seq > since.get(origin.as_str()).copied().unwrap_or(0))
            .take(PULL_BATCH)
            .map(|(_, r)| r.clone())
            .collect();
        (records, gap)
    }

    fn since(&self) -> Vec<(String, u64)> {
        let kept = self.kept.lock().expect("kept lock");
        kept.applied
            .iter()
            .map(|(o, a)| (o.clone(), a.contiguous))
            .collect()
    }

    /// One anti-entropy round: pulls from enough reachable peers, in random order,
    /// that they and this node are a majority of the members. `Ok(true)` when they
    /// all answered: the round renews the sync lease. A round short of a majority
    /// still applies what it pulled, but renews nothing.
    pub async fn sync_once(self: &Arc<Self>) -> Result<bool, String> {
        let round = self.gate.round_started();
        self.gate
            .set_has_peers(!self.view.borrow().members.iter().all(|m| m.local));
        let needed = self.majority_of_peers();
        if needed == 0 {
            // Alone: nothing to sync with.
            self.gate.synced(round);
            return Ok(true);
        }
        let mut candidates = self.peers();
        for i in (1..candidates.len()).rev() {
            candidates.swap(i, rand_index(i + 1));
        }
        let mut answered = 0;
        let mut failure = None;
        // A pull must answer well within the lease, or the round renews nothing.
        let timeout = (self.gate.lease() / 2).min(CALL_TIMEOUT);
        while answered < needed && !candidates.is_empty() {
            let mut pulls = tokio::task::JoinSet::new();
            for (_, addr) in candidates.drain(..(needed - answered).min(candidates.len())) {
                let this = self.clone();
                pulls.spawn(async move { this.pull_from(addr, timeout).await });
            }
            while let Some(result) = pulls.join_next().await {
                match result.map_err(|e| e.to_string()).and_then(|r| r) {
                    Ok(()) => answered += 1,
                    Err(e) => failure = Some(e),
                }
            }
        }
        self.save_applied();
        if answered >= needed {
            self.gate.synced(round);
            return Ok(true);
        }
        match failure {
            Some(e) if answered == 0 => Err(e),
            _ => Ok(false),
        }
    }

    /// Pulls and applies what `addr` has that this node lacks.
    async fn pull_from(&self, addr: SocketAddr, timeout: Duration) -> Result<(), String> {
        self.metrics.anti_entropy_pulls.inc();
        let answer = self
            .transport
            .call(
                addr,
                &Message::Pull {
                    since: self.since(),
                },
                timeout,
            )
            .await
            .map_err(|e| e.to_string())?;
        let Message::Records { records, gap } = answer else {
            return Err("unexpected answer to a pull".into());
        };
        if gap {
            tracing::warn!("invalidations this node missed are no longer kept by its peers: purging everything cached before now");
            let everything = PurgeTargets {
                prefixes: vec![
                    CacheKey::new(Namespace::Kv, b""),
                    CacheKey::new(Namespace::Http, b""),
                ],
                ..PurgeTargets::default()
            };
            self.cache
                .purge(&everything)
                .await
                .map_err(|e| e.to_string())?;
            // Everything older is covered now: start from what the peer keeps.
            let mut kept = self.kept.lock().expect("kept lock");
            for (origin, evicted) in self.peer_evicted_hint(&records) {
                let applied = kept.applied.entry(origin).or_default();
                if applied.contiguous < evicted {
                    applied.contiguous = evicted;
                    applied.beyond.retain(|s| *s > evicted);
                }
            }
        }
        for record in records {
            if let Err(e) = self.apply(record).await {
                tracing::warn!(error = %e, "a pulled record could not be applied");
            }
        }
        Ok(())
    }

    /// After a gap, the sequence just before the oldest record the peer sent, per
    /// origin: everything up to it is covered by the full purge.
    fn peer_evicted_hint(&self, records: &[Bytes]) -> HashMap<String, u64> {
        let mut oldest: HashMap<String, u64> = HashMap::new();
        for r in records {
            if let Ok(r) = Replicated::decode(r.clone()) {
                let e = oldest.entry(r.origin).or_insert(u64::MAX);
                *e = (*e).min(r.seq.saturating_sub(1));
            }
        }
        oldest
    }

    fn save_applied(&self) {
        let snapshot: HashMap<String, u64> = {
            let mut kept = self.kept.lock().expect("kept lock");
            if !kept.dirty {
                return;
            }
            kept.dirty = false;
            kept.applied
                .iter()
                .map(|(o, a)| (o.clone(), a.contiguous))
                .collect()
        };
        let tmp = self.applied_file.with_extension("tmp");
        let written = serde_json::to_vec(&snapshot)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&tmp, bytes))
            .and_then(|()| std::fs::rename(&tmp, &self.applied_file));
        if let Err(e) = written {
            tracing::warn!(error = %e, "saving the applied invalidations failed");
        }
    }

    /// Runs anti-entropy: every `interval`, and at once when the gate asks (after a
    /// stall).
    pub fn start_anti_entropy(self: &Arc<Self>, interval: Duration) {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = this.gate.wake_sync.notified() => {}
                }
                if let Err(e) = this.sync_once().await {
                    tracing::debug!(error = %e, "anti-entropy round failed");
                }
            }
        });
    }

    /// Before serving: one successful round with a peer, if the cluster has any
    /// (waits up to `limit` for membership and the round).
    pub async fn initial_sync(self: &Arc<Self>, limit: Duration) {
        let deadline = Instant::now() + limit;
        let mut view = self.view.clone();
        while Instant::now() < deadline {
            if !self.peers().is_empty() {
                match self.sync_once().await {
                    Ok(true) => {
                        tracing::info!("caught up on the cluster's invalidations");
                        return;
                    }
                    _ => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            } else {
                let _ = tokio::time::timeout(Duration::from_millis(200), view.changed()).await;
            }
        }
        // A node with no peer yet is the first of its cluster, or partitioned at
        // start: it serves, and the gate tracks how long it has been unsynced.
        tracing::info!(node = %self.node_id, "no peer to catch up from yet");
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
    use super::*;
    use fanz_protocol::Timestamp;

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
        use super::super::transport::PeerError;
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(
            Delivery::of(&Ok(Message::Applied { invalidated: 3 })),
            Delivery::Acked(3)
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
