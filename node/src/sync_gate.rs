//! Whether this node's invalidations are in sync with the cluster, and what a hit
//! does when they may not be ([`HitPolicy`]). The cluster's replicator reports its
//! rounds here; the cache asks before every hit. It sits below both, so the cache
//! needs nothing of the cluster (a cluster of one's gate is always in sync).
//!
//! Two things make a node unsure it has every purge:
//! - **a stall**: the process did not run for a while (a pause, SIGSTOP, CPU
//!   starvation), so purges may be sitting unread. A ticker notices its own late
//!   wake-up; a hit also checks the ticker's heartbeat, in case it runs before the
//!   ticker does. Either way hits wait (briefly) for a fresh anti-entropy round,
//!   and for one second after a stall every hit is revalidated regardless;
//! - **no sync lease**: no anti-entropy round has pulled from a majority of the
//!   members for `max_unsynced` (a partition, or most of the cluster down). Purgers
//!   complete a purge without this node once a lease has passed, so from then on
//!   `partition_mode` decides: `consistency` (the default) revalidates every hit
//!   with the owner or the origin first; `availability` serves it, marked
//!   `detail=unsynced`, and may be serving purged content.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::clock::now_ms;
use crate::config::PartitionMode;
use crate::metrics::Metrics;

/// What a hit may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HitPolicy {
    /// In sync: serve.
    Serve,
    /// Out of sync, availability mode: serve, marked.
    ServeUnsynced,
    /// Out of sync, consistency mode: revalidate first.
    Revalidate,
}

/// Whether a lease whose latest majority round started at `last_round_ms` still
/// holds at `now_ms` (one of the rules in `cluster::safety`).
pub fn lease_holds(last_round_ms: u64, now_ms: u64, lease: Duration) -> bool {
    now_ms.saturating_sub(last_round_ms) <= lease.as_millis() as u64
}

/// How often the ticker beats.
const BEAT: Duration = Duration::from_millis(50);
/// A heartbeat older than this means the process stalled.
const STALL: Duration = Duration::from_millis(500);
/// How long after a stall every hit is revalidated, even once a round has caught up.
const AFTER_STALL: Duration = Duration::from_secs(1);
/// Longest a hit waits for the catch-up after a stall.
const CATCH_UP_WAIT: Duration = Duration::from_secs(2);

/// When an anti-entropy round began (see [`SyncGate::round_started`]).
#[derive(Debug, Clone, Copy)]
pub struct RoundToken {
    stalls: u64,
    started_ms: u64,
}

/// The node's sync state, shared by the replicator (which reports rounds) and every
/// front end (which asks before serving a hit).
#[derive(Debug)]
pub struct SyncGate {
    mode: PartitionMode,
    max_unsynced: Duration,
    last_sync_ms: AtomicU64,
    heartbeat_ms: AtomicU64,
    stalled: AtomicBool,
    /// Whether this node has ever known another member (alone, it is in sync).
    has_peers: AtomicBool,
    /// Counts stalls: a round that began before the latest stall does not end it.
    stalls: AtomicU64,
    /// Until when (ms) every hit is revalidated after a stall, whatever the rounds
    /// say: a second line of defence while purges sent during the stall arrive.
    revalidate_until_ms: AtomicU64,
    /// While a restarted node rejoins (non-zero): every hit is revalidated until a
    /// round that began at or after this time (ms) completes. Until the others see
    /// it alive, their writes skip it and their purges do not wait for it; a round
    /// begun after they do brings what it missed.
    rejoin_round_after_ms: AtomicU64,
    /// This node is leaving the cluster: the others stop waiting for it at once,
    /// so it vouches for nothing from now on.
    left: AtomicBool,
    /// Membership changed at this time (ms; 0: settled): keys may have moved to or
    /// from this node, and overwrite records made just before may not be here yet.
    /// Until a round begun after it completes, KV hits are compared with the other
    /// owners' copies (see [`Self::settled`]).
    unsettled_since_ms: AtomicU64,
    synced: Notify,
    /// Hits are checked (from [`Self::guard`] on: once a joined node has caught up
    /// at start). Before, only peers' reads reach a starting node, and they are
    /// answered unchecked, as before a lone node was a cluster of one.
    guarding: AtomicBool,
    /// Woken to run an anti-entropy round at once.
    pub wake_sync: Notify,
    metrics: Arc<Metrics>,
}

impl SyncGate {
    /// A gate; the node counts as in sync until it learns of a peer.
    pub fn new(mode: PartitionMode, max_unsynced: Duration, metrics: Arc<Metrics>) -> Arc<Self> {
        let now = now_ms();
        Arc::new(Self {
            mode,
            max_unsynced,
            last_sync_ms: AtomicU64::new(now),
            heartbeat_ms: AtomicU64::new(now),
            stalled: AtomicBool::new(false),
            has_peers: AtomicBool::new(false),
            stalls: AtomicU64::new(0),
            revalidate_until_ms: AtomicU64::new(0),
            rejoin_round_after_ms: AtomicU64::new(0),
            left: AtomicBool::new(false),
            unsettled_since_ms: AtomicU64::new(0),
            synced: Notify::new(),
            guarding: AtomicBool::new(false),
            wake_sync: Notify::new(),
            metrics,
        })
    }

    /// The gate of a node that has no peers and never will (tests, benchmarks): it
    /// is always in sync.
    pub fn alone(metrics: Arc<Metrics>) -> Arc<Self> {
        Self::new(
            PartitionMode::Consistency,
            Duration::from_secs(3600),
            metrics,
        )
    }

    /// From now on every hit is checked: the node has caught up at start (a
    /// cluster of one never needs to).
    pub fn guard(&self) {
        self.guarding.store(true, Ordering::Release);
    }

    /// The sync lease: how long a round that reached a majority keeps this node in
    /// sync (`max_unsynced`). Purgers count a member that has not acked as fenced
    /// only a lease after the majority acked.
    pub fn lease(&self) -> Duration {
        self.max_unsynced
    }

    /// Starts the ticker that detects stalls.
    pub fn start_ticker(self: &Arc<Self>) {
        let gate = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(BEAT);
            loop {
                tick.tick().await;
                gate.beat();
            }
        });
    }

    fn beat(&self) {
        let now = now_ms();
        let last = self.heartbeat_ms.swap(now, Ordering::AcqRel);
        if now.saturating_sub(last) > STALL.as_millis() as u64 {
            self.stall_detected();
        }
        let behind = now.saturating_sub(self.last_sync_ms.load(Ordering::Acquire));
        self.metrics.unsynced_seconds.set(if self.out_of_sync(now) {
            (behind / 1000) as i64
        } else {
            0
        });
    }

    /// The process stalled: hits wait for a catch-up round.
    pub fn stall_detected(&self) {
        if !self.has_peers.load(Ordering::Acquire) {
            return;
        }
        // Any round already under way began before the stall: it cannot end it.
        self.stalls.fetch_add(1, Ordering::AcqRel);
        self.revalidate_until_ms
            .fetch_max(now_ms() + AFTER_STALL.as_millis() as u64, Ordering::AcqRel);
        if !self.stalled.swap(true, Ordering::AcqRel) {
            tracing::warn!("this node stalled; catching up on invalidations before serving hits");
        }
        self.wake_sync.notify_one();
    }

    /// Marks the start of an anti-entropy round; hand the token to [`Self::synced`].
    pub fn round_started(&self) -> RoundToken {
        RoundToken {
            stalls: self.stalls.load(Ordering::Acquire),
            started_ms: now_ms(),
        }
    }

    /// This node restarted with state from an earlier run: revalidate every hit
    /// until a round that began `settle` from now (time for the others to see it
    /// alive again) completes. Alone at that time, it has nothing to catch up on.
    pub fn rejoining(&self, settle: Duration) {
        let after = now_ms() + settle.as_millis() as u64;
        self.rejoin_round_after_ms
            .store(after.max(1), Ordering::Release);
        tracing::info!(
            ?settle,
            "rejoining: hits are revalidated until a catch-up round after the others see this node"
        );
    }

    fn rejoining_now(&self, now: u64) -> bool {
        let after = self.rejoin_round_after_ms.load(Ordering::Acquire);
        if after == 0 {
            return false;
        }
        if now >= after && !self.has_peers.load(Ordering::Acquire) {
            // Nobody to have missed anything from.
            self.rejoin_round_after_ms.store(0, Ordering::Release);
            return false;
        }
        true
    }

    /// This node is leaving the cluster (shutting down): every hit is revalidated
    /// from now on, since purges no longer wait for it.
    pub fn leaving(&self) {
        self.left.store(true, Ordering::Release);
    }

    /// The members not down changed: ownership of keys moved.
    pub fn membership_changed(&self) {
        self.unsettled_since_ms.store(now_ms(), Ordering::Release);
        self.wake_sync.notify_one();
    }

    /// Whether membership has been stable since the last catch-up round began: a KV
    /// hit here is then as new as any other owner's copy. Otherwise the KV API reads
    /// the other owners too and serves the newest.
    pub fn settled(&self) -> bool {
        !self.guarding.load(Ordering::Acquire)
            || self.unsettled_since_ms.load(Ordering::Acquire) == 0
    }

    /// This node now knows other members.
    pub fn set_has_peers(&self, yes: bool) {
        self.has_peers.store(yes, Ordering::Release);
    }

    /// An anti-entropy round that began at `round` completed: everything a peer
    /// had then is applied. It ends a stall only if it began after it.
    pub fn synced(&self, round: RoundToken) {
        self.last_sync_ms
            .fetch_max(round.started_ms, Ordering::AcqRel);
        let after = self.rejoin_round_after_ms.load(Ordering::Acquire);
        if after != 0 && round.started_ms >= after {
            self.rejoin_round_after_ms.store(0, Ordering::Release);
            tracing::info!("rejoined: caught up after the others saw this node");
        }
        let unsettled = self.unsettled_since_ms.load(Ordering::Acquire);
        if unsettled != 0 && round.started_ms > unsettled {
            // Only if no newer change came meanwhile.
            let _ = self.unsettled_since_ms.compare_exchange(
                unsettled,
                0,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
        }
        if self.stalls.load(Ordering::Acquire) == round.stalls {
            self.stalled.store(false, Ordering::Release);
            self.synced.notify_waiters();
        }
    }

    fn out_of_sync(&self, now: u64) -> bool {
        self.has_peers.load(Ordering::Acquire)
            && !lease_holds(
                self.last_sync_ms.load(Ordering::Acquire),
                now,
                self.max_unsynced,
            )
    }

    /// [`SyncGate::before_hit`] when it needs no wait and notices no stall (which it
    /// reports): `None` then, and the async call must decide.
    pub fn before_hit_now(&self) -> Option<HitPolicy> {
        if self.alone_and_quiet() {
            return Some(HitPolicy::Serve);
        }
        if self.left.load(Ordering::Acquire) {
            return Some(HitPolicy::Revalidate);
        }
        let stall_to_report =
            self.has_peers.load(Ordering::Acquire) && self.heartbeat_late(now_ms());
        if stall_to_report || self.stalled.load(Ordering::Acquire) {
            return None;
        }
        Some(self.policy_in_sync())
    }

    /// Not guarding yet, or no peer known and nothing pending (not leaving, no
    /// stall, rejoin or post-stall window): the hit is served without reading the clock. Always so
    /// in a cluster of one, whose gate has no ticker.
    fn alone_and_quiet(&self) -> bool {
        !self.guarding.load(Ordering::Acquire)
            || (!self.has_peers.load(Ordering::Acquire)
                && !self.left.load(Ordering::Acquire)
                && !self.stalled.load(Ordering::Acquire)
                && self.revalidate_until_ms.load(Ordering::Acquire) == 0
                && self.rejoin_round_after_ms.load(Ordering::Acquire) == 0)
    }

    fn heartbeat_late(&self, now: u64) -> bool {
        now.saturating_sub(self.heartbeat_ms.load(Ordering::Acquire)) > STALL.as_millis() as u64
    }

    /// Why hits are revalidated now, for the reason a refusal gives (the most
    /// specific cause first).
    pub fn unsure_because(&self) -> &'static str {
        let now = now_ms();
        if self.left.load(Ordering::Acquire) {
            "it is leaving the cluster"
        } else if self.stalled.load(Ordering::Acquire)
            || now < self.revalidate_until_ms.load(Ordering::Acquire)
        {
            "it stalled and is catching up on invalidations"
        } else if self.rejoin_round_after_ms.load(Ordering::Acquire) != 0 {
            "it restarted and is catching up after the others see it"
        } else if self.out_of_sync(now) {
            "no sync lease: no round reached a majority of the members lately"
        } else {
            "it was briefly out of sync"
        }
    }

    /// The policy once no stall is pending.
    fn policy_in_sync(&self) -> HitPolicy {
        if now_ms() < self.revalidate_until_ms.load(Ordering::Acquire)
            || self.rejoining_now(now_ms())
        {
            return HitPolicy::Revalidate;
        }
        if !self.out_of_sync(now_ms()) {
            return HitPolicy::Serve;
        }
        match self.mode {
            PartitionMode::Availability => HitPolicy::ServeUnsynced,
            PartitionMode::Consistency => HitPolicy::Revalidate,
        }
    }

    /// Asked before serving a hit. After a stall it first waits (bounded) for the
    /// catch-up round.
    pub async fn before_hit(&self) -> HitPolicy {
        if self.alone_and_quiet() {
            return HitPolicy::Serve;
        }
        if self.left.load(Ordering::Acquire) {
            return HitPolicy::Revalidate;
        }
        if self.heartbeat_late(now_ms()) {
            self.stall_detected();
        }
        if self.stalled.load(Ordering::Acquire) {
            let waiting = self.synced.notified();
            tokio::pin!(waiting);
            // Registered before the check, so a round finishing in between wakes it.
            waiting.as_mut().enable();
            if self.stalled.load(Ordering::Acquire) {
                let _ = tokio::time::timeout(CATCH_UP_WAIT, waiting).await;
            }
            if self.stalled.load(Ordering::Acquire) {
                // Still not caught up: never serve what may have been purged.
                return HitPolicy::Revalidate;
            }
        }
        self.policy_in_sync()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(mode: PartitionMode) -> Arc<SyncGate> {
        let g = SyncGate::new(
            mode,
            Duration::from_millis(50),
            Arc::new(Metrics::new(Default::default())),
        );
        g.guard();
        g
    }

    #[test]
    fn a_gate_checks_nothing_until_it_guards() {
        let g = SyncGate::new(
            PartitionMode::Consistency,
            Duration::from_millis(50),
            Arc::new(Metrics::new(Default::default())),
        );
        g.set_has_peers(true);
        g.leaving();
        assert_eq!(g.before_hit_now(), Some(HitPolicy::Serve));
        assert!(g.settled());
        g.guard();
        assert_eq!(g.before_hit_now(), Some(HitPolicy::Revalidate));
    }

    #[tokio::test]
    async fn a_rejoining_node_revalidates_until_a_round_begun_after_it_settled() {
        let g = SyncGate::new(
            PartitionMode::Availability,
            Duration::from_secs(60),
            Arc::new(Metrics::new(Default::default())),
        );
        g.guard();
        g.set_has_peers(true);
        g.rejoining(Duration::from_millis(100));
        assert_eq!(g.before_hit().await, HitPolicy::Revalidate);
        // A round begun before the others could see this node does not end it.
        let early = g.round_started();
        tokio::time::sleep(Duration::from_millis(120)).await;
        g.synced(early);
        assert_eq!(g.before_hit().await, HitPolicy::Revalidate);
        let late = g.round_started();
        g.synced(late);
        assert_eq!(g.before_hit().await, HitPolicy::Serve);

        // Alone when it has settled: nothing to catch up on.
        let alone = gate(PartitionMode::Availability);
        alone.rejoining(Duration::from_millis(50));
        assert_eq!(alone.before_hit().await, HitPolicy::Revalidate);
        tokio::time::sleep(Duration::from_millis(70)).await;
        alone.heartbeat_ms.store(now_ms(), Ordering::Release);
        assert_eq!(alone.before_hit().await, HitPolicy::Serve);
    }

    #[tokio::test]
    async fn membership_changes_unsettle_until_a_round_begun_after_them() {
        let g = gate(PartitionMode::Consistency);
        assert!(g.settled());
        let before = g.round_started();
        tokio::time::sleep(Duration::from_millis(2)).await;
        g.membership_changed();
        g.synced(before);
        assert!(
            !g.settled(),
            "a round begun before the change does not settle it"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
        g.synced(g.round_started());
        assert!(g.settled());
    }

    #[tokio::test]
    async fn a_leaving_node_vouches_for_no_hit_in_either_mode() {
        for mode in [PartitionMode::Availability, PartitionMode::Consistency] {
            let g = gate(mode);
            g.set_has_peers(true);
            g.synced(g.round_started());
            assert_eq!(g.before_hit().await, HitPolicy::Serve);
            g.leaving();
            g.synced(g.round_started());
            assert_eq!(g.before_hit().await, HitPolicy::Revalidate);
        }
    }

    // A refusal names its cause: the CI failure this came with said "no sync
    // lease" for a node that may as well have stalled.
    #[tokio::test]
    async fn a_refusal_says_which_of_the_causes_holds() {
        let g = gate(PartitionMode::Consistency);
        g.set_has_peers(true);
        g.synced(g.round_started());
        tokio::time::sleep(Duration::from_millis(80)).await;
        g.heartbeat_ms.store(now_ms(), Ordering::Release);
        assert_eq!(g.before_hit().await, HitPolicy::Revalidate);
        assert!(g.unsure_because().starts_with("no sync lease"));
        g.stall_detected();
        assert!(g.unsure_because().contains("stalled"));
        g.leaving();
        assert!(g.unsure_because().contains("leaving"));
    }

    #[tokio::test]
    async fn alone_a_node_is_always_in_sync() {
        let g = gate(PartitionMode::Consistency);
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert_eq!(g.before_hit().await, HitPolicy::Serve);
    }

    #[tokio::test]
    async fn without_a_sync_for_max_unsynced_the_mode_decides() {
        for (mode, policy) in [
            (PartitionMode::Availability, HitPolicy::ServeUnsynced),
            (PartitionMode::Consistency, HitPolicy::Revalidate),
        ] {
            let g = gate(mode);
            g.set_has_peers(true);
            g.synced(g.round_started());
            assert_eq!(g.before_hit().await, HitPolicy::Serve);
            tokio::time::sleep(Duration::from_millis(80)).await;
            g.heartbeat_ms.store(now_ms(), Ordering::Release);
            assert_eq!(g.before_hit().await, policy);
            g.synced(g.round_started());
            assert_eq!(g.before_hit().await, HitPolicy::Serve);
        }
    }

    #[tokio::test]
    async fn after_a_stall_hits_wait_for_the_catch_up() {
        let g = gate(PartitionMode::Availability);
        g.set_has_peers(true);
        g.synced(g.round_started());
        // A round is under way when the process stops.
        let early_round = g.round_started();
        // The heartbeat is old: as if the process had been stopped.
        g.heartbeat_ms.store(now_ms() - 2_000, Ordering::Release);
        let waiting = tokio::spawn({
            let g = g.clone();
            async move { g.before_hit().await }
        });
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(!waiting.is_finished(), "a hit after a stall waits");
        g.heartbeat_ms.store(now_ms(), Ordering::Release);
        // The round that began before the stall ends: not enough.
        g.synced(early_round);
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(
            !waiting.is_finished(),
            "a round from before the stall does not end it"
        );
        g.synced(g.round_started());
        // Caught up, but still inside the window after the stall: revalidated.
        assert_eq!(waiting.await.unwrap(), HitPolicy::Revalidate);
        tokio::time::sleep(AFTER_STALL).await;
        g.heartbeat_ms.store(now_ms(), Ordering::Release);
        g.synced(g.round_started());
        assert_eq!(g.before_hit().await, HitPolicy::Serve);
    }
}
