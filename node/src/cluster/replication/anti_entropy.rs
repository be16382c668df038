//! Anti-entropy: answering a peer's pull with what it lacks (or that it has a gap),
//! and the rounds that pull from enough peers to make a majority, which renew this
//! node's sync lease.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fanz_protocol::peer::Message;
use fanz_protocol::replication::Replicated;
use fanz_protocol::{CacheKey, Namespace};

use super::*;

impl Replicator {
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

    /// One anti-entropy round: pulls from enough reachable peers, in random order
    /// (suspects last), that they and this node are a majority of the members. `Ok(true)` when they
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
        // Suspects last: each that does not answer costs the round a hedge.
        candidates.sort_by_key(|(_, _, state)| *state == MemberState::Suspect);
        // A pull must answer well within the lease, or the round renews nothing.
        let timeout = (self.gate.lease() / 2).min(CALL_TIMEOUT);
        let hedge = (self.gate.lease() / 8).min(timeout);
        let this = self.clone();
        let (answered, failure) = pull_until_enough(
            candidates.into_iter().map(|(_, addr, _)| addr).collect(),
            needed,
            hedge,
            move |addr| {
                let this = this.clone();
                async move { this.pull_from(addr, timeout).await }
            },
        )
        .await;
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

/// Pulls from `candidates`, in order, until `needed` of them answered: how many did,
/// and the last failure. It starts `needed` pulls; a failed one is replaced by the
/// next candidate at once, and whenever `hedge` passes with no pull ending, one more
/// is started. So a member that died but is not declared down yet (its pull runs
/// to the timeout) costs the round one hedge, not the timeout: the round must end
/// well within the lease it renews. Pulls still running when the round has enough
/// answers finish on their own (they apply what they bring; aborting one could
/// leave a record half applied).
async fn pull_until_enough<F, Fut>(
    candidates: Vec<SocketAddr>,
    needed: usize,
    hedge: Duration,
    pull: F,
) -> (usize, Option<String>)
where
    F: Fn(SocketAddr) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>> + Send + 'static,
{
    let mut candidates = candidates.into_iter();
    let mut pulls = tokio::task::JoinSet::new();
    for addr in candidates.by_ref().take(needed) {
        pulls.spawn(pull(addr));
    }
    let (mut answered, mut failure) = (0, None);
    while answered < needed && !pulls.is_empty() {
        tokio::select! {
            Some(result) = pulls.join_next() => {
                match result.map_err(|e| e.to_string()).and_then(|r| r) {
                    Ok(()) => answered += 1,
                    Err(e) => {
                        failure = Some(e);
                        if let Some(addr) = candidates.next() {
                            pulls.spawn(pull(addr));
                        }
                    }
                }
            }
            () = tokio::time::sleep(hedge) => {
                if let Some(addr) = candidates.next() {
                    pulls.spawn(pull(addr));
                }
            }
        }
    }
    pulls.detach_all();
    (answered, failure)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// A peer at port 1 never answers (it died and is not declared down yet: its
    /// pull runs to its timeout); the others answer in 5 ms, or fail at once at
    /// port 2 (refused).
    fn pull(
        timeout: Duration,
    ) -> impl Fn(
        SocketAddr,
    )
        -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>> {
        move |addr: SocketAddr| {
            Box::pin(async move {
                match addr.port() {
                    1 => {
                        tokio::time::sleep(timeout).await;
                        Err(format!("peer {addr} timed out"))
                    }
                    2 => Err(format!("peer {addr} refused")),
                    _ => {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        Ok(())
                    }
                }
            })
        }
    }

    // The CI failure of reads_of_moved_keys_keep_answering_while_a_restarted_owner_
    // catches_up: with one of three members killed and not yet declared down, a
    // round that picked it waited out the whole pull timeout (half the lease) before
    // asking the live one; two such rounds in a row let the survivors' leases lapse,
    // and they refused writes. A dead member may cost a round the hedge delay, not
    // the timeout.
    #[tokio::test(start_paused = true)]
    async fn a_member_that_does_not_answer_costs_a_round_the_hedge_not_the_timeout() {
        let (timeout, hedge) = (Duration::from_secs(1), Duration::from_millis(250));
        let started = tokio::time::Instant::now();
        let (answered, _) =
            pull_until_enough(vec![addr(1), addr(3)], 1, hedge, pull(timeout)).await;
        assert_eq!(answered, 1);
        let took = started.elapsed();
        assert!(
            took < hedge + Duration::from_millis(50),
            "the round took {took:?}"
        );
        // Two silent ones before the live one: two hedges.
        let started = tokio::time::Instant::now();
        let (answered, _) = pull_until_enough(
            vec![addr(1), addr(1), addr(3), addr(4)],
            2,
            hedge,
            pull(timeout),
        )
        .await;
        assert_eq!(answered, 2);
        let took = started.elapsed();
        assert!(
            took < hedge * 2 + Duration::from_millis(50),
            "the round took {took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_pull_is_replaced_at_once_and_a_short_round_says_why() {
        let (timeout, hedge) = (Duration::from_secs(1), Duration::from_millis(250));
        let started = tokio::time::Instant::now();
        let (answered, _) =
            pull_until_enough(vec![addr(2), addr(3)], 1, hedge, pull(timeout)).await;
        assert_eq!(answered, 1);
        assert!(started.elapsed() < Duration::from_millis(50));
        // Nobody to answer: the round ends once every pull has, with the failure.
        let (answered, failure) =
            pull_until_enough(vec![addr(2), addr(1)], 2, hedge, pull(timeout)).await;
        assert_eq!(answered, 0);
        assert!(failure.is_some());
        let (answered, failure) = pull_until_enough(vec![], 1, hedge, pull(timeout)).await;
        assert_eq!((answered, failure), (0, None));
    }
}
