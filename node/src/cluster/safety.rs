//! The two rules behind "after an acknowledged purge, nothing it covers is served
//! anywhere", as pure functions of (state, now), so tests can check them against any
//! history of acks, requests, rounds and clock steps:
//!
//! - **the sync lease** ([`lease_holds`]): a node vouches for its hits only while an
//!   anti-entropy round that reached a majority of the members (itself included)
//!   *started* within `lease` of now, and a round applies what it pulled before it
//!   renews the lease;
//! - **fencing** ([`member_fenced_at`], [`purge_fenced_at`]): a `wait=all` purge may
//!   complete without a member that has not applied it once that member can no
//!   longer hold a lease from a round that missed the purge. Every such round was
//!   answered by a majority, so by at least one node of any [`fencing_quorum`] of
//!   the others; a node that applied the purge and answered the round without it
//!   received the round's request before it applied, so no later than the last
//!   request from that member it reports with its ack. The quorum-th earliest of
//!   those reports, plus a lease and margin, fences the member. No SWIM verdict is
//!   trusted: a verdict gossiped by a node that was itself cut off once fenced
//!   live, leased members (RELIABILITY finding 14), and a member that is in fact
//!   down stopped sending requests when it went down, so the reports fence it a
//!   lease after that.
//!
//! `SyncGate` (in `crate::sync_gate`, which the cache reads, so the lease rule is
//! written there) and `Replicator::watch_fencing` keep the state and the timers;
//! these functions decide.

use std::ops::Add;
use std::time::Duration;

pub use crate::sync_gate::lease_holds;

/// Of `members` in all, how many other than a pending member must have applied a
/// record, each telling when that member last asked it, before the member can be
/// fenced: every round of the member reaches `members / 2` others, and a quorum
/// this large meets every such set (`members - members / 2`: 2 of 3, 3 of 5, and
/// this node alone of 2).
pub fn fencing_quorum(members: usize) -> usize {
    members - members / 2
}

/// When a member that has not applied a record counts as fenced: `after` (a lease
/// plus margin) past the `quorum`-th earliest of `bounds`, one per node that applied
/// the record (this node included): the latest moment the member may have begun a
/// round that node answered without the record, which is the member's last request
/// to it as of its ack (or the ack itself, from a node that did not say). `None`
/// while fewer than `quorum` nodes have applied it.
pub fn member_fenced_at<T>(
    bounds: impl IntoIterator<Item = T>,
    quorum: usize,
    after: Duration,
) -> Option<T>
where
    T: Copy + Ord + Add<Duration, Output = T>,
{
    let mut bounds: Vec<T> = bounds.into_iter().collect();
    bounds.sort_unstable();
    let nth = quorum.checked_sub(1)?;
    bounds.get(nth).map(|at| *at + after)
}

/// When a record may complete without the members still pending, given when each
/// of them is fenced ([`member_fenced_at`]): the latest of those times (at least
/// `now`); `None` while one cannot be fenced yet.
pub fn purge_fenced_at<T>(
    now: T,
    pending_fenced_at: impl IntoIterator<Item = Option<T>>,
) -> Option<T>
where
    T: Copy + Ord,
{
    pending_fenced_at
        .into_iter()
        .try_fold(now, |latest, t| t.map(|t| latest.max(t)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Milliseconds on one time axis (the model's clock).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
    struct Ms(i64);

    impl Add<Duration> for Ms {
        type Output = Ms;
        fn add(self, d: Duration) -> Ms {
            Ms(self.0 + d.as_millis() as i64)
        }
    }

    const LEASE: Duration = Duration::from_millis(2000);
    const MARGIN: Duration = Duration::from_millis(500);
    /// When every node started (before any round of the model).
    const STARTED: i64 = -100_000;

    fn majority(members: usize) -> usize {
        members / 2 + 1
    }

    /// One anti-entropy round of a member: when it started, and whom it pulled
    /// from (indexes of the members; `0` is the purger) with the delay after the
    /// start at which each received the request and answered.
    type Round = (i64, Vec<(usize, i64)>);

    /// One member other than the purger, in a random history.
    #[derive(Debug, Clone)]
    struct Member {
        /// When it applied the purge (its ack reached the purger then), if it did.
        applied_at: Option<i64>,
        /// Its anti-entropy rounds.
        rounds: Vec<Round>,
    }

    #[derive(Debug, Clone)]
    struct History {
        members: Vec<Member>,
    }

    fn history() -> impl Strategy<Value = History> {
        (1usize..=5).prop_flat_map(|others| {
            let member = (
                proptest::option::weighted(0.6, 0i64..6000),
                proptest::collection::vec(
                    (
                        -3000i64..9000,
                        proptest::collection::vec((0usize..=others, 0i64..400), 0..=others),
                    ),
                    0..8,
                ),
            )
                .prop_map(|(applied_at, rounds)| Member { applied_at, rounds });
            proptest::collection::vec(member, others).prop_map(|members| History { members })
        })
    }

    impl History {
        /// Members in all, the purger included (index 0; the others from 1).
        fn size(&self) -> usize {
            self.members.len() + 1
        }

        /// When member `i` (0: the purger, which applied it at 0) applied it.
        fn applied_at(&self, i: usize) -> Option<i64> {
            if i == 0 {
                Some(0)
            } else {
                self.members[i - 1].applied_at
            }
        }

        /// The rounds of member `i` (from 1) that reached a majority (it and the
        /// distinct others it pulled from): when each started and completed.
        fn majority_rounds(&self, i: usize) -> Vec<(i64, i64)> {
            self.members[i - 1]
                .rounds
                .iter()
                .filter(|(_, pulls)| {
                    let mut distinct: Vec<usize> =
                        pulls.iter().map(|p| p.0).filter(|&p| p != i).collect();
                    distinct.sort_unstable();
                    distinct.dedup();
                    distinct.len() + 1 >= majority(self.size())
                })
                .map(|(start, pulls)| {
                    let end = pulls.iter().map(|p| start + p.1).max().unwrap_or(*start);
                    (*start, end)
                })
                .collect()
        }

        /// Whether member `i` (from 1) has the purge at `t`: it applied it, or one of
        /// its pulls answered by `t` came from a member that had it by then.
        fn has_purge(&self, i: usize, t: i64) -> bool {
            if self.applied_at(i).is_some_and(|a| a <= t) {
                return true;
            }
            self.members[i - 1].rounds.iter().any(|(start, pulls)| {
                pulls.iter().any(|&(p, delay)| {
                    let answered = start + delay;
                    p != i && answered <= t && self.applied_at(p).is_some_and(|a| a <= answered)
                })
            })
        }

        /// Whether member `i` vouches for a hit at `t` without having the purge: a
        /// majority round it completed by `t` started within a lease of `t`.
        fn vouches_without_purge(&self, i: usize, t: i64) -> bool {
            !self.has_purge(i, t)
                && self.majority_rounds(i).iter().any(|&(start, end)| {
                    end <= t && lease_holds((start - STARTED) as u64, (t - STARTED) as u64, LEASE)
                })
        }

        /// What node `p` reports about member `i` with its ack: the last time `i`
        /// asked it something, up to the ack, or its start if never.
        fn reported_contact(&self, p: usize, i: usize) -> i64 {
            let acked = self.applied_at(p).expect("only ackers report");
            self.members[i - 1]
                .rounds
                .iter()
                .flat_map(|(start, pulls)| {
                    pulls.iter().filter(|q| q.0 == p).map(move |q| start + q.1)
                })
                .filter(|&asked| asked <= acked)
                .max()
                .unwrap_or(STARTED)
        }

        /// When the purge completes, by the rules, if it does within the horizon.
        fn completed_at(&self) -> Option<i64> {
            let quorum = fencing_quorum(self.size());
            (0..=20_000i64).step_by(50).find(|&t| {
                let pending: Vec<usize> = (1..self.size())
                    .filter(|&i| self.applied_at(i).is_none_or(|a| a > t))
                    .collect();
                let fenced = pending.iter().map(|&i| {
                    let ackers = (0..self.size())
                        .filter(|&p| p != i && self.applied_at(p).is_some_and(|a| a <= t));
                    let bounds = ackers.map(|p| Ms(self.reported_contact(p, i)));
                    member_fenced_at(bounds, quorum, LEASE + MARGIN)
                });
                pending.is_empty() || purge_fenced_at(Ms(t), fenced).is_some_and(|at| at <= Ms(t))
            })
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        /// For any history, once the purge completes no member that has not applied
        /// it may still vouch for a hit, then or later.
        #[test]
        fn a_complete_purge_leaves_no_member_vouching_without_it(h in history()) {
            if let Some(done) = h.completed_at() {
                for i in 1..h.size() {
                    for t in (done..done + 4000).step_by(50) {
                        prop_assert!(
                            !h.vouches_without_purge(i, t),
                            "member {i} vouches without the purge at {t}; complete at {done}"
                        );
                    }
                }
            }
        }

        /// The lease holds exactly while the latest round started within it.
        #[test]
        fn the_lease_holds_for_a_lease_after_the_latest_round(
            mut starts in proptest::collection::vec(0u64..20_000, 1..12),
            now in 0u64..25_000,
        ) {
            starts.sort_unstable();
            let last = *starts.last().expect("one at least");
            let latest_before = starts.iter().rev().find(|&&s| s <= now);
            prop_assert_eq!(
                lease_holds(last, now, LEASE) && now >= last,
                latest_before == Some(&last) && now - last <= 2000
            );
        }
    }

    #[test]
    fn a_member_is_fenced_a_lease_after_the_quorum_th_earliest_report() {
        let after = LEASE + MARGIN;
        assert_eq!(fencing_quorum(2), 1, "of two, this node alone");
        assert_eq!(fencing_quorum(3), 2);
        assert_eq!(fencing_quorum(4), 2);
        assert_eq!(fencing_quorum(5), 3);
        assert_eq!(
            member_fenced_at([Ms(900), Ms(100), Ms(4000)], 2, after),
            Some(Ms(900) + after),
            "the second earliest of three reports, for a quorum of two"
        );
        assert_eq!(
            member_fenced_at([Ms(100)], 2, after),
            None,
            "too few reports"
        );
        assert_eq!(member_fenced_at([Ms(100)], 0, after), None);
        // Finding 14: a member declared down by a node that had been cut off is
        // alive and asking the others; their reports keep it from being fenced
        // until a lease after its last request.
        assert_eq!(
            member_fenced_at([Ms(5000), Ms(5010)], 2, after),
            Some(Ms(5010) + after)
        );
        assert_eq!(
            purge_fenced_at(Ms(3), [Some(Ms(5)), Some(Ms(9))]),
            Some(Ms(9))
        );
        assert_eq!(purge_fenced_at(Ms(30), [Some(Ms(5))]), Some(Ms(30)));
        assert_eq!(purge_fenced_at(Ms(3), [Some(Ms(5)), None]), None);
    }
}
