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
