//! Fan-out: a record made here is kept, piggybacked on SWIM and sent to every member
//! not down, retried until each applies it; purge reports (`GET /purge/{id}`) and
//! the fencing watch that completes a purge without a member that can no longer
//! vouch for hits, judged by what the nodes that applied it say of that member's
//! requests to them (`Reported`, `safety::member_fenced_at`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fanz_protocol::log::Record;
use fanz_protocol::peer::{Contacts, Message};
use fanz_protocol::replication::{Op, Replicated};
use fanz_protocol::CacheKey;
use tokio::sync::mpsc;

use super::*;

/// What fan-out does after one attempt to deliver a record to a member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Delivery {
    /// The member applied it: the dependents it invalidated, and when the others
    /// last asked it something (from peers of protocol 3 on).
    Acked(u64, Option<Contacts>),
    /// Try again after [`RETRY_EVERY`] (unreachable, timed out, busy).
    Retry,
    /// The member rejected the record as bad: retrying cannot help.
    GiveUp,
}

impl Delivery {
    pub(super) fn of(answer: &Result<Message, crate::cluster::transport::PeerError>) -> Self {
        match answer {
            Ok(Message::Applied {
                invalidated,
                contacts,
            }) => Delivery::Acked(*invalidated, contacts.clone()),
            Err(e) if !e.is_retryable() => Delivery::GiveUp,
            _ => Delivery::Retry,
        }
    }
}

/// What one node that applied a record said about the other members' requests to
/// it, on this node's clock: for each member, the latest moment it may have asked
/// that node something before the ack.
#[derive(Debug, Clone)]
pub(super) struct Reported {
    /// Each member's last request, as of the ack.
    last_request: HashMap<String, Instant>,
    /// For a member not listed: the node heard nothing from it since then (its
    /// start; or the ack itself, from a node that did not say).
    otherwise: Instant,
}

impl Reported {
    /// A member's ack (or this node's own word, as it applies a record it makes), received at `at`. Ages are subtracted from the receipt, so
    /// the moments are never earlier than the truth (the ack spent time in flight).
    fn ack(contacts: Option<&Contacts>, at: Instant) -> Self {
        let before = |ms: u64| at.checked_sub(Duration::from_millis(ms)).unwrap_or(at);
        match contacts {
            Some(c) => Self {
                last_request: c
                    .ages_ms
                    .iter()
                    .map(|(id, age)| (id.clone(), before(*age)))
                    .collect(),
                otherwise: before(c.uptime_ms),
            },
            None => Self {
                last_request: HashMap::new(),
                otherwise: at,
            },
        }
    }

    /// The latest moment `member` may have asked this node something before it
    /// applied the record.
    fn bound(&self, member: &str) -> Instant {
        self.last_request
            .get(member)
            .copied()
            .unwrap_or(self.otherwise)
    }
}

impl Replicator {
    /// Purges `targets` here and on every member. With `Wait::All`, returns once
    /// every alive member has applied it or the ack timeout passed (the report names
    /// who has not acked). A cluster of one has no report to give.
    pub async fn purge(
        self: &Arc<Self>,
        targets: &PurgeTargets,
        wait: Wait,
    ) -> Result<(crate::invalidation::PurgeOutcome, Option<PurgeReport>), crate::cache::CacheError>
    {
        let outcome = self.cache.purge(targets).await?;
        if self.alone {
            return Ok((outcome, None));
        }
        let record = self.make(purge_op(targets), outcome.at);
        let progress = self.fan_out(record, outcome.dependents.len() as u64, true);
        if wait == Wait::All {
            self.wait_complete(&progress).await;
        }
        let report = progress.report.lock().expect("report lock").clone();
        Ok((outcome, Some(report)))
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
    /// invalidated everywhere, and older copies of it are dropped on every node (an
    /// owner that missed the write, a node that still believes it owns the key).
    /// With `wait` (the value was stored somewhere), returns only once every member
    /// applied the record or is fenced (or the ack timeout passed): whether it did.
    /// Until then some node may still serve the old value.
    pub async fn overwrite(
        self: &Arc<Self>,
        key: &CacheKey,
        version: fanz_protocol::Timestamp,
        wait: bool,
    ) -> bool {
        if self.alone {
            return true;
        }
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

    /// Replicates the edges recorded on this node (sent by its
    /// [`crate::invalidation::Invalidator`] to `rx`), as they come.
    pub fn replicate_edges(self: &Arc<Self>, mut rx: mpsc::UnboundedReceiver<Vec<Record>>) {
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
        let own = Reported::ack(Some(&self.transport.contacts()), Instant::now());
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
            quorum: safety::fencing_quorum(others.len() + 1),
            reported: Mutex::new(HashMap::from([(self.node_id.clone(), own)])),
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
                        Delivery::Acked(invalidated, contacts) => {
                            let reported = Reported::ack(contacts.as_ref(), Instant::now());
                            this.acked(&progress, &member, invalidated, reported);
                            return;
                        }
                        Delivery::GiveUp => {
                            tracing::error!(%member, answer = ?answer.err(), "member rejected a replicated invalidation as bad; not retried");
                            return;
                        }
                        Delivery::Retry => {
                            let still_member = this.peers().iter().any(|(id, _, _)| *id == member);
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

    fn acked(&self, progress: &Progress, member: &str, invalidated: u64, reported: Reported) {
        let took_ms = progress.started.elapsed().as_secs_f64() * 1000.0;
        progress
            .reported
            .lock()
            .expect("reported lock")
            .insert(member.to_string(), reported);
        let mut report = progress.report.lock().expect("report lock");
        report.pending.retain(|m| m != member);
        report.fenced.retain(|m| m != member);
        report.acked.insert(member.to_string(), took_ms);
        report.slowest_ms = report.slowest_ms.max(took_ms);
        report.dependents_invalidated += invalidated;
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

    /// Completes a record once every member that has not applied it is fenced: a
    /// lease (plus [`FENCE_MARGIN`]) after its last request to enough of the nodes
    /// that did ([`safety::member_fenced_at`]). A member that is down stopped asking
    /// when it went down; one that is alive keeps asking and is not fenced on
    /// anyone's verdict. Gives up with the fan-out ([`RETRY_FOR`]): a purger cut off
    /// from a quorum never completes one.
    fn watch_fencing(self: &Arc<Self>, progress: Arc<Progress>) {
        let this = self.clone();
        let after = self.gate.lease() + FENCE_MARGIN;
        tokio::spawn(async move {
            loop {
                let acked = progress.acked.notified();
                tokio::pin!(acked);
                acked.as_mut().enable();
                let now = Instant::now();
                let fenced_at = {
                    let report = progress.report.lock().expect("report lock");
                    if report.complete {
                        return;
                    }
                    let reported = progress.reported.lock().expect("reported lock");
                    let pending = report.pending.iter().map(|m| {
                        let bounds = reported
                            .iter()
                            .filter(|(node, _)| *node != m)
                            .map(|(_, r)| r.bound(m));
                        safety::member_fenced_at(bounds, progress.quorum, after)
                    });
                    safety::purge_fenced_at(now, pending)
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
}
