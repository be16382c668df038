//! Applying records made on other nodes, once each, and keeping them (in memory
//! and in the invalidation log) so this node can hand them to a peer that missed
//! them, after a restart too.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use bytes::Bytes;
use fanz_protocol::log::Record;
use fanz_protocol::replication::{Op, Replicated};

use super::*;
use crate::invalidation::Durability;

#[derive(Debug, Default)]
pub(super) struct Applied {
    pub(super) contiguous: u64,
    pub(super) beyond: BTreeSet<u64>,
}

impl Applied {
    pub(super) fn has(&self, seq: u64) -> bool {
        seq <= self.contiguous || self.beyond.contains(&seq)
    }
    pub(super) fn add(&mut self, seq: u64) {
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
pub(super) struct Kept {
    pub(super) records: BTreeMap<(String, u64), Bytes>,
    pub(super) order: VecDeque<(String, u64)>,
    /// Highest sequence evicted, per origin: an asker behind it has a gap.
    pub(super) evicted: HashMap<String, u64>,
    pub(super) applied: HashMap<String, Applied>,
    pub(super) dirty: bool,
}

impl Kept {
    /// Keeps `encoded` (record `name`) and marks it applied; the oldest records
    /// beyond [`KEPT_RECORDS`] are let go, and their sequences counted as evicted.
    pub(super) fn insert(&mut self, name: (String, u64), encoded: Bytes) {
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
    pub(super) fn resume(&mut self, replayed: Vec<Bytes>) {
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

impl Replicator {
    /// [`Self::apply`] for a record pushed to this node (sent by its origin, or
    /// piggybacked on SWIM), which the test hook [`super::APPLY_DELAY_ENV`] holds
    /// back when it is a purge or an overwrite: as if it were slow to arrive, while
    /// anti-entropy pulls still apply what they bring at once.
    pub async fn apply_pushed(&self, encoded: Bytes) -> Result<u64, ApplyError> {
        if !self.apply_delay.is_zero() {
            let held = decode_record(encoded.clone())
                .is_ok_and(|r| matches!(r.op, Op::Purge { .. } | Op::Overwrite { .. }));
            if held {
                tokio::time::sleep(self.apply_delay).await;
            }
        }
        self.apply(encoded).await
    }

    /// Applies a record made on another node, once. Returns the dependents it
    /// invalidated here; a record that does not decode is [`ApplyError::BadRecord`]
    /// (its sender must not retry it).
    pub async fn apply(&self, encoded: Bytes) -> Result<u64, ApplyError> {
        let record = decode_record(encoded.clone())?;
        let serial = self.apply_lock.lock().await;
        let seen = {
            let kept = self.kept.lock().expect("kept lock");
            kept.applied
                .get(&record.origin)
                .is_some_and(|a| a.has(record.seq))
        };
        if seen {
            // Applied by an earlier delivery, whose durable write was queued before
            // this: answer once it is synced (at once if it already is).
            let durable = self
                .cache
                .invalidator()
                .enqueue_sync()
                .await
                .map_err(ApplyError::failed)?;
            drop(serial);
            durable.await.map_err(ApplyError::failed)?;
            return Ok(0);
        }
        let invalidator = self.cache.invalidator().clone();
        // Every later local fill is ordered after the origin's purge; this purge is
        // stamped with our own (later) clock, covering fills already in flight here.
        invalidator.observe(record.at);
        let invalidated = match &record.op {
            Op::Purge { .. } => {
                let targets = purge_targets(&record.op);
                self.cache
                    .purge_with(&targets, Durability::WithNextSync)
                    .await
                    .map_err(ApplyError::failed)?
                    .dependents
                    .len() as u64
            }
            // At the overwrite's own time: a dependent written after the overwrite
            // (but before this record arrived) read the new value and stays valid.
            Op::Overwrite { key, version } => {
                tracing::debug!(?key, version = %version.as_u64(), origin = %record.origin, seq = record.seq, "applying an overwrite");
                self.cache
                    .apply_overwrite(key, *version, record.at, Durability::WithNextSync)
                    .await
                    .map_err(ApplyError::failed)?
                    .len() as u64
            }
            Op::Edges { edges } => {
                invalidator
                    .apply_remote_edges(edges, Durability::WithNextSync)
                    .await
                    .map_err(ApplyError::failed)?;
                self.add_tag_edges(edges).await;
                0
            }
        };
        self.keep(&record, encoded.clone());
        // Durable before the ack, with the effects written before it (one fsync for
        // both): this node may then vouch for it to a peer that missed it, after a
        // restart too. Queued in order under the lock, waited for outside it, so
        // records applied concurrently share an fsync (group commit).
        let durable = invalidator
            .enqueue_kept_record(encoded, true)
            .await
            .map_err(ApplyError::failed)?;
        drop(serial);
        durable.await.map_err(ApplyError::failed)?;
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
}

/// A record another node sent; one that does not decode is [`ApplyError::BadRecord`]:
/// its sender must not send it again.
pub(super) fn decode_record(encoded: Bytes) -> Result<Replicated, ApplyError> {
    Replicated::decode(encoded).map_err(|e| ApplyError::BadRecord(e.to_string()))
}
