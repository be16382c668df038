//! The two rules behind "after an acknowledged purge, nothing it covers is served
//! anywhere", as pure functions of (state, now), so tests can check them against any
//! history of acks, verdicts, rounds and clock steps:
//!
//! - **the sync lease** ([`lease_holds`], [`lease_lapsed`]): a node vouches for its
//!   hits only while an anti-entropy round that reached a majority of the members
//!   *started* within `lease` of now;
//! - **fencing** ([`member_fenced_at`], [`purge_fenced_at`]): a `wait=all` purge may
//!   complete without a member that has not applied it once that member can no
//!   longer hold a lease from before the purge: a lease (plus margin) after a
//!   majority acked (any later majority round includes an acker), or a lease after
//!   it was last reachable, by a down verdict this node may trust.
//!
//! `SyncGate` (in `crate::sync_gate`, which the cache reads, so the lease rules are
//! written there) and `Replicator::watch_fencing` keep the state and the timers;
//! these functions decide.

use std::ops::Add;
use std::time::Duration;

pub use crate::sync_gate::{lease_holds, lease_lapsed};

/// A down verdict about a member: when it was reached (`at`, on the clock the
/// fencing timers use) and the wall-clock time of it (`wall_ms`, comparable with
/// the lease's times).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DownVerdict<T> {
    /// When the verdict was reached.
    pub at: T,
    /// The same moment on the wall clock, ms.
    pub wall_ms: u64,
}

/// How long fencing waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FenceRules {
    /// After a majority acked: a lease plus margin.
    pub after_majority: Duration,
    /// After a trusted down verdict: a lease plus margin, less the suspicion time
    /// that passed between the member's last contact and the verdict.
    pub after_down: Duration,
}

/// When a member that has not applied a purge counts as fenced, if it can yet:
/// `after_majority` past the time a majority acked (`majority_at`), or
/// `after_down` past a down verdict, whichever is sooner. A verdict counts only if
/// this node has held its own lease since before it (`lease_held_since_ms`): a node
/// that was itself cut off holds everyone else down. And it fences no sooner than
/// `after_majority` past the member's last request to this node (`last_contact`):
/// a member declared down by gossip from a node that had been cut off (finding 14)
/// is alive, renewing its lease with the rest, and must not be fenced on a verdict.
pub fn member_fenced_at<T>(
    majority_at: Option<T>,
    down: Option<DownVerdict<T>>,
    lease_held_since_ms: Option<u64>,
    last_contact: Option<T>,
    rules: FenceRules,
) -> Option<T>
where
    T: Copy + Ord + Add<Duration, Output = T>,
{
    let by_majority = majority_at.map(|at| at + rules.after_majority);
    let by_down = down
        .filter(|d| lease_held_since_ms.is_some_and(|since| since <= d.wall_ms))
        .map(|d| d.at + rules.after_down)
        .map(|at| match last_contact {
            Some(contact) => at.max(contact + rules.after_majority),
            None => at,
        });
    match (by_majority, by_down) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// When a purge may complete without the members still pending, given when each
/// of them is fenced ([`member_fenced_at`]): the latest of those times (at least
/// `now`), once a majority has acked; `None` while one cannot be fenced yet or no
/// majority has acked.
pub fn purge_fenced_at<T>(
    now: T,
    majority_at: Option<T>,
    pending_fenced_at: impl IntoIterator<Item = Option<T>>,
) -> Option<T>
where
    T: Copy + Ord,
{
    majority_at?;
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
    const SUSPICION: Duration = Duration::from_millis(1000);

    fn rules() -> FenceRules {
        FenceRules {
            after_majority: LEASE + MARGIN,
            after_down: LEASE + MARGIN - SUSPICION,
        }
    }

    fn majority(members: usize) -> usize {
        members / 2 + 1
    }

    /// One member other than the purger, in a random history.
    #[derive(Debug, Clone)]
    struct Member {
        /// When it applied the purge (its ack reached the purger then), if it did.
        applied_at: Option<i64>,
        /// Its anti-entropy rounds: when each started and whom it pulled from
        /// (indexes of the other members; `0` is the purger).
        rounds: Vec<(i64, Vec<usize>)>,
        /// A down verdict the purger reached about it, if any.
        verdict: Option<i64>,
    }

    #[derive(Debug, Clone)]
    struct History {
        members: Vec<Member>,
        /// Since when the purger has held its own lease (wall ms), if it holds it.
        purger_lease_since: Option<i64>,
    }

    fn history() -> impl Strategy<Value = History> {
        (2usize..=4).prop_flat_map(|others| {
            let member = (
                proptest::option::weighted(0.6, 0i64..6000),
                proptest::collection::vec(
                    (
                        -3000i64..9000,
                        proptest::collection::vec(0usize..=others, 0..=others),
                    ),
                    0..6,
                ),
                proptest::option::weighted(0.4, 0i64..6000),
            )
                .prop_map(|(applied_at, rounds, verdict)| Member {
                    applied_at,
                    rounds,
                    verdict,
                });
            (
                proptest::collection::vec(member, others),
                proptest::option::weighted(0.7, -3000i64..6000),
            )
                .prop_map(|(members, purger_lease_since)| History {
                    members,
                    purger_lease_since,
                })
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

        /// A verdict the purger trusts (it held its lease since before it) means
        /// the member was cut off from the majority since a suspicion time before:
        /// none of its rounds begun after that reached a majority.
        fn trusted_verdict(&self, m: &Member) -> Option<i64> {
            m.verdict
                .filter(|v| self.purger_lease_since.is_some_and(|since| since <= *v))
        }

        /// The rounds of member `i` (from 1) that reached a majority.
        fn majority_rounds(&self, i: usize) -> Vec<(i64, &Vec<usize>)> {
            let m = &self.members[i - 1];
            let cut_off_after = self
                .trusted_verdict(m)
                .map(|v| v - SUSPICION.as_millis() as i64);
            m.rounds
                .iter()
                .filter(|(_, peers)| {
                    let mut distinct: Vec<usize> =
                        peers.iter().copied().filter(|&p| p != i).collect();
                    distinct.sort_unstable();
                    distinct.dedup();
                    distinct.len() + 1 >= majority(self.size())
                })
                .filter(|(start, _)| cut_off_after.is_none_or(|c| *start <= c))
                .map(|(start, peers)| (*start, peers))
                .collect()
        }

        /// Whether member `i` (from 1) has the purge at `t`: it applied it, or one of
        /// its rounds begun by `t` pulled from a member that had it by then.
        fn has_purge(&self, i: usize, t: i64) -> bool {
            if self.applied_at(i).is_some_and(|a| a <= t) {
                return true;
            }
            self.members[i - 1].rounds.iter().any(|(start, peers)| {
                *start <= t
                    && peers
                        .iter()
                        .any(|&p| p != i && self.applied_at(p).is_some_and(|a| a <= *start))
            })
        }

        /// Whether member `i` vouches for a hit at `t` without having the purge.
        fn vouches_without_purge(&self, i: usize, t: i64) -> bool {
            !self.has_purge(i, t)
                && self.majority_rounds(i).iter().any(|(start, _)| {
                    *start <= t && lease_holds((*start + 10_000) as u64, (t + 10_000) as u64, LEASE)
                })
        }

        /// When a majority (the purger included) had applied it.
        fn majority_at(&self) -> Option<i64> {
            let mut acks: Vec<i64> = self.members.iter().filter_map(|m| m.applied_at).collect();
            acks.sort_unstable();
            let needed = majority(self.size()) - 1;
            if needed == 0 {
                return Some(0);
            }
            acks.get(needed - 1).copied()
        }

        /// When the purge completes, by the rules, if it does within the horizon.
        fn completed_at(&self) -> Option<i64> {
            let majority_at = self.majority_at().map(Ms);
            let fenced: Vec<Option<Ms>> = self
                .members
                .iter()
                .map(|m| {
                    let down = m.verdict.map(|v| DownVerdict {
                        at: Ms(v),
                        wall_ms: (v + 10_000) as u64,
                    });
                    let since = self.purger_lease_since.map(|s| (s + 10_000) as u64);
                    member_fenced_at(majority_at, down, since, None, rules())
                })
                .collect();
            (0..=20_000i64).step_by(50).find(|&t| {
                let all_acked = self
                    .members
                    .iter()
                    .all(|m| m.applied_at.is_some_and(|a| a <= t));
                let pending = self
                    .members
                    .iter()
                    .zip(&fenced)
                    .filter(|(m, _)| m.applied_at.is_none_or(|a| a > t))
                    .map(|(_, f)| *f);
                all_acked
                    || purge_fenced_at(Ms(t), majority_at, pending).is_some_and(|at| at <= Ms(t))
            })
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

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

        /// The lease holds exactly while the latest round started within it, and is
        /// held anew from the first round after a lapse.
        #[test]
        fn the_lease_holds_for_a_lease_after_the_latest_round(
            mut starts in proptest::collection::vec(0u64..20_000, 1..12),
            now in 0u64..25_000,
        ) {
            starts.sort_unstable();
            let (mut last, mut since) = (starts[0], starts[0]);
            for &s in &starts[1..] {
                if lease_lapsed(last, s, LEASE) {
                    since = s;
                }
                last = last.max(s);
            }
            let latest_before = starts.iter().rev().find(|&&s| s <= now);
            prop_assert_eq!(
                lease_holds(last, now, LEASE) && now >= last,
                latest_before == Some(&last) && now - last <= 2000
            );
            // Between `since` and `last`, no two rounds were more than a lease apart.
            let held: Vec<u64> = starts.iter().copied().filter(|&s| s >= since).collect();
            prop_assert!(held.windows(2).all(|w| w[1] - w[0] <= 2000));
        }
    }

    #[test]
    fn a_verdict_counts_only_from_a_node_that_held_its_lease_since_before_it() {
        let verdict = Some(DownVerdict {
            at: Ms(1000),
            wall_ms: 1000,
        });
        let r = rules();
        assert_eq!(
            member_fenced_at(None, verdict, Some(900), None, r),
            Some(Ms(2500))
        );
        assert_eq!(member_fenced_at(None, verdict, Some(1100), None, r), None);
        assert_eq!(member_fenced_at(None, verdict, None, None, r), None);
        assert_eq!(
            member_fenced_at(Some(Ms(0)), verdict, Some(900), None, r),
            Some(Ms(2500)),
            "the sooner of the two"
        );
        // Finding 14: declared down while it was talking to this node: a verdict
        // fences it no sooner than a lease after its last request.
        assert_eq!(
            member_fenced_at(None, verdict, Some(900), Some(Ms(1800)), r),
            Some(Ms(1800) + r.after_majority)
        );
        assert_eq!(
            member_fenced_at(None, verdict, Some(900), Some(Ms(0)), r),
            Some(Ms(2500)),
            "contact long before the verdict changes nothing"
        );
        assert_eq!(purge_fenced_at(Ms(0), None, [Some(Ms(5))]), None);
        assert_eq!(
            purge_fenced_at(Ms(3), Some(Ms(0)), [Some(Ms(5)), Some(Ms(9))]),
            Some(Ms(9))
        );
        assert_eq!(
            purge_fenced_at(Ms(3), Some(Ms(0)), [Some(Ms(5)), None]),
            None
        );
    }
}
