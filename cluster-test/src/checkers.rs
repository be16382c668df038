//! Checkers over a [`History`]: each says what it checks, passes or fails, and
//! lists the operations that broke it (the first few).
//!
//! Values are unique per write, so a read names the write it saw. Only orderings
//! the client observed count: "before" means one operation ended before the other
//! began; concurrent operations may be seen either way.

use std::collections::HashMap;

use serde::Serialize;

use crate::history::{History, Op, OpKind};

/// Violations listed per checker at most.
const LISTED: usize = 10;

/// One checker's verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    /// Its name.
    pub name: &'static str,
    /// What it checks.
    pub rule: &'static str,
    /// Whether the history obeys it.
    pub pass: bool,
    /// How many operations it judged.
    pub judged: usize,
    /// The first violations, described.
    pub violations: Vec<String>,
    /// How many violations in all.
    pub violation_count: usize,
}

impl Verdict {
    fn new(name: &'static str, rule: &'static str, judged: usize, all: Vec<String>) -> Self {
        Self {
            name,
            rule,
            pass: all.is_empty(),
            judged,
            violation_count: all.len(),
            violations: all.into_iter().take(LISTED).collect(),
        }
    }
}

struct Ops<'a> {
    /// Acknowledged writes by key, and the write of each value.
    writes: HashMap<&'a str, Vec<&'a Op>>,
    by_value: HashMap<&'a str, &'a Op>,
    /// Acknowledged purges by key.
    purges: HashMap<&'a str, Vec<&'a Op>>,
    /// Every write attempt by key, acknowledged or not (a failed write may have
    /// landed).
    attempts: HashMap<&'a str, Vec<&'a Op>>,
}

impl<'a> Ops<'a> {
    fn index(history: &'a History) -> Self {
        let mut ops = Ops {
            writes: HashMap::new(),
            by_value: HashMap::new(),
            purges: HashMap::new(),
            attempts: HashMap::new(),
        };
        for op in &history.ops {
            match &op.kind {
                OpKind::Set { value } => {
                    ops.by_value.insert(value.as_str(), op);
                    ops.attempts.entry(op.key.as_str()).or_default().push(op);
                    if op.ok {
                        ops.writes.entry(op.key.as_str()).or_default().push(op);
                    }
                }
                OpKind::Purge if op.ok => ops.purges.entry(op.key.as_str()).or_default().push(op),
                _ => {}
            }
        }
        ops
    }
}

/// A successful read: what it returned, whether the node marked it as possibly
/// stale, and which node answered (direct reads).
struct Read<'a> {
    op: &'a Op,
    got: &'a Option<String>,
    marked: bool,
    via: &'a str,
}

fn reads(history: &History) -> impl Iterator<Item = Read<'_>> {
    history.ops.iter().filter_map(|op| match &op.kind {
        OpKind::Get { got } if op.ok => Some(Read {
            op,
            got,
            marked: false,
            via: "client",
        }),
        OpKind::DirectGet { node, got, marked } if op.ok => Some(Read {
            op,
            got,
            marked: *marked,
            via: node,
        }),
        _ => None,
    })
}

/// No read returns a value that a purge acknowledged before the read began had
/// covered: a value whose write ended before that purge began.
pub fn no_read_after_acknowledged_purge(history: &History) -> Verdict {
    let ops = Ops::index(history);
    let mut violations = Vec::new();
    let mut judged = 0;
    for Read {
        op: read,
        got,
        marked,
        via,
    } in reads(history)
    {
        let Some(value) = got else { continue };
        judged += 1;
        let Some(write) = ops.by_value.get(value.as_str()) else {
            violations.push(format!(
                "{} at {} ms read {value:?}, which nobody wrote",
                read.key, read.start_ms
            ));
            continue;
        };
        let covering = ops.purges.get(read.key.as_str()).and_then(|purges| {
            purges
                .iter()
                .find(|p| write.end_ms < p.start_ms && p.end_ms < read.start_ms)
        });
        if let Some(purge) = covering {
            let marked = if marked { " (marked unsynced)" } else { "" };
            violations.push(format!(
                "{}: read via {via}{marked} at {}-{} ms returned {value:?} (written {}-{} ms), purged {}-{} ms",
                read.key,
                read.start_ms,
                read.end_ms,
                write.start_ms,
                write.end_ms,
                purge.start_ms,
                purge.end_ms
            ));
        }
    }
    Verdict::new(
        "no_read_after_acknowledged_purge",
        "no read returns data invalidated by a purge acknowledged before the read started",
        judged,
        violations,
    )
}

/// No page read (pull-through from the origin) shows a generation older than the
/// newest one published before a purge of the page that was acknowledged before the
/// read began: a purge makes every node fetch the page again.
pub fn no_stale_page_after_purge(history: &History) -> Verdict {
    let mut published: HashMap<&str, Vec<(&Op, u64)>> = HashMap::new();
    let mut purges: HashMap<&str, Vec<&Op>> = HashMap::new();
    for op in history.ops.iter().filter(|op| op.ok) {
        match &op.kind {
            OpKind::Publish { generation } => published
                .entry(op.key.as_str())
                .or_default()
                .push((op, *generation)),
            OpKind::Purge | OpKind::DirectInvalidation { .. } if op.key.starts_with('/') => {
                purges.entry(op.key.as_str()).or_default().push(op)
            }
            _ => {}
        }
    }
    let mut violations = Vec::new();
    let mut judged = 0;
    for read in history.ops.iter().filter(|op| op.ok) {
        let OpKind::PageGet {
            node,
            generation: Some(got),
            ..
        } = &read.kind
        else {
            continue;
        };
        judged += 1;
        let page = read.key.as_str();
        // The newest generation some purge acknowledged before this read promises.
        let owed = purges
            .get(page)
            .into_iter()
            .flatten()
            .filter(|p| p.end_ms < read.start_ms)
            .filter_map(|p| {
                published
                    .get(page)
                    .into_iter()
                    .flatten()
                    .filter(|(w, _)| w.end_ms < p.start_ms)
                    .map(|(_, g)| *g)
                    .max()
            })
            .max();
        if let Some(owed) = owed.filter(|owed| got < owed) {
            violations.push(format!(
                "{page}: read via {node} at {}-{} ms showed generation {got}; a purge acknowledged before it owed {owed}",
                read.start_ms, read.end_ms
            ));
        }
    }
    Verdict::new(
        "no_stale_page_after_purge",
        "no page read shows an older generation than one published before a purge acknowledged before the read began",
        judged,
        violations,
    )
}

/// No read returns a value older than the last write acknowledged before the read
/// began, unless the node marked it unsynced.
pub fn no_stale_read(history: &History) -> Verdict {
    let judged = judge_writes(history);
    Verdict::new(
        "no_stale_read",
        "no read returns a value older than the last write acknowledged before it began (unless marked unsynced)",
        judged.reads,
        judged.stale,
    )
}

/// Reads that found nothing although an acknowledged write was there and nothing
/// could have removed it: reported, not failed. A cache may lose entries (eviction,
/// a node lost with the only copy, an owner that came back without a value written
/// while it was away); the reader falls back to the source of truth.
pub fn lost_writes(history: &History) -> Vec<String> {
    judge_writes(history).lost
}

struct WriteJudgement {
    reads: usize,
    stale: Vec<String>,
    lost: Vec<String>,
}

fn judge_writes(history: &History) -> WriteJudgement {
    let ops = Ops::index(history);
    let mut violations = Vec::new();
    let mut lost = Vec::new();
    let mut judged = 0;
    for Read {
        op: read,
        got,
        marked,
        via,
    } in reads(history)
    {
        if marked {
            // The node said it may be stale: allowed here, never after a purge.
            continue;
        }
        judged += 1;
        let key = read.key.as_str();
        let writes = ops.writes.get(key).map(Vec::as_slice).unwrap_or_default();
        let purges = ops.purges.get(key).map(Vec::as_slice).unwrap_or_default();
        let attempts = ops.attempts.get(key).map(Vec::as_slice).unwrap_or_default();
        // The last write acknowledged before the read began.
        let Some(last) = writes
            .iter()
            .filter(|w| w.end_ms < read.start_ms)
            .max_by_key(|w| w.start_ms)
        else {
            continue;
        };
        // A purge not finished before that write began may have removed it (one
        // concurrent with the write may be stamped after it).
        let purged_since = purges
            .iter()
            .any(|p| p.end_ms > last.start_ms && p.start_ms < read.end_ms);
        match got {
            Some(value) => {
                let Some(seen) = ops.by_value.get(value.as_str()) else {
                    continue;
                };
                // `seen` is stale if `last` began after `seen` ended (judged only
                // for acknowledged writes: a failed one may have landed late).
                if seen.ok && seen.end_ms < last.start_ms {
                    violations.push(format!(
                        "{key}: read via {via} at {}-{} ms returned {value:?} (written {}-{} ms), overwritten by {:?} at {}-{} ms",
                        read.start_ms, read.end_ms, seen.start_ms, seen.end_ms, set_value(last), last.start_ms, last.end_ms
                    ));
                }
            }
            None => {
                // Nothing written after `last` could have hidden it either: any
                // write attempt concurrent with or after it (even a failed one)
                // makes the outcome ambiguous.
                let later_attempt = attempts
                    .iter()
                    .any(|w| w.start_ms > last.start_ms && !std::ptr::eq(*w, *last));
                if !purged_since && !later_attempt {
                    lost.push(format!(
                        "{key}: read via {via} at {}-{} ms found nothing; {:?} was acknowledged at {} ms and nothing removed it",
                        read.start_ms, read.end_ms, set_value(last), last.end_ms
                    ));
                }
            }
        }
    }
    WriteJudgement {
        reads: judged,
        stale: violations,
        lost,
    }
}

fn set_value(op: &Op) -> &str {
    match &op.kind {
        OpKind::Set { value } => value,
        _ => "",
    }
}

/// Errors inside and outside the fault windows, as a fraction of operations.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorRates {
    /// Operations that began inside a fault window (or within `grace_ms` after it).
    pub during_faults: usize,
    /// How many of those failed.
    pub failed_during_faults: usize,
    /// Operations at other times.
    pub outside_faults: usize,
    /// How many of those failed.
    pub failed_outside_faults: usize,
    /// Operations through `fanz-client`, which retries on another node (direct
    /// reads to one node are not: a client of a down edge sees it down).
    pub client_ops: usize,
    /// How many of those failed.
    pub failed_client_ops: usize,
    /// The first failures, described (those through the client first).
    pub examples: Vec<String>,
}

impl ErrorRates {
    /// Failed operations over all operations.
    pub fn overall(&self) -> f64 {
        let all = self.during_faults + self.outside_faults;
        if all == 0 {
            return 0.0;
        }
        (self.failed_during_faults + self.failed_outside_faults) as f64 / all as f64
    }
}

impl ErrorRates {
    /// Failed operations through the client over all of them.
    pub fn client_failure_rate(&self) -> f64 {
        if self.client_ops == 0 {
            return 0.0;
        }
        self.failed_client_ops as f64 / self.client_ops as f64
    }
}

/// Counts failures inside and outside the fault windows.
pub fn error_rates(history: &History, grace_ms: u64) -> ErrorRates {
    let mut rates = ErrorRates {
        during_faults: 0,
        failed_during_faults: 0,
        outside_faults: 0,
        failed_outside_faults: 0,
        client_ops: 0,
        failed_client_ops: 0,
        examples: Vec::new(),
    };
    let direct = |op: &Op| {
        matches!(
            op.kind,
            OpKind::DirectGet { .. } | OpKind::PageGet { .. } | OpKind::DirectInvalidation { .. }
        )
    };
    let failed = history.ops.iter().filter(|op| !op.ok);
    let (through_client, straight): (Vec<&Op>, Vec<&Op>) = failed.partition(|op| !direct(op));
    for op in through_client.into_iter().chain(straight).take(LISTED) {
        let what = match &op.kind {
            OpKind::Set { .. } => "write".to_string(),
            OpKind::Get { .. } => "read via client".to_string(),
            OpKind::DirectGet { node, .. } => format!("read via {node}"),
            OpKind::Purge => "purge".to_string(),
            OpKind::DirectInvalidation { node } => format!("POST via {node}"),
            OpKind::Publish { .. } => "publish".to_string(),
            OpKind::PageGet { node, .. } => format!("page read via {node}"),
        };
        rates.examples.push(format!(
            "{what} of {} at {}-{} ms: {}",
            op.key,
            op.start_ms,
            op.end_ms,
            op.error.as_deref().unwrap_or("?")
        ));
    }
    for op in &history.ops {
        if !direct(op) {
            rates.client_ops += 1;
            rates.failed_client_ops += usize::from(!op.ok);
        }
        let in_fault = history
            .faults
            .iter()
            .any(|f| op.start_ms >= f.start_ms && op.start_ms <= f.end_ms + grace_ms);
        match (in_fault, op.ok) {
            (true, ok) => {
                rates.during_faults += 1;
                rates.failed_during_faults += usize::from(!ok);
            }
            (false, ok) => {
                rates.outside_faults += 1;
                rates.failed_outside_faults += usize::from(!ok);
            }
        }
    }
    rates
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(key: &str, kind: OpKind, start_ms: u64, end_ms: u64) -> Op {
        Op {
            worker: 0,
            key: key.into(),
            kind,
            start_ms,
            end_ms,
            ok: true,
            error: None,
        }
    }
    fn set(key: &str, v: &str, s: u64, e: u64) -> Op {
        op(key, OpKind::Set { value: v.into() }, s, e)
    }
    fn get(key: &str, v: Option<&str>, s: u64, e: u64) -> Op {
        op(
            key,
            OpKind::Get {
                got: v.map(str::to_string),
            },
            s,
            e,
        )
    }
    fn purge(key: &str, s: u64, e: u64) -> Op {
        op(key, OpKind::Purge, s, e)
    }
    fn history(ops: Vec<Op>) -> History {
        History {
            ops,
            faults: vec![],
        }
    }

    #[test]
    fn a_read_of_a_purged_value_after_the_purge_is_caught() {
        let bad = history(vec![
            set("k", "a", 0, 10),
            purge("k", 20, 30),
            get("k", Some("a"), 40, 45),
        ]);
        let v = no_read_after_acknowledged_purge(&bad);
        assert!(!v.pass);
        assert_eq!(v.violation_count, 1);
        // Concurrent with the purge: either answer is allowed.
        let racing = history(vec![
            set("k", "a", 0, 10),
            purge("k", 20, 30),
            get("k", Some("a"), 25, 35),
        ]);
        assert!(no_read_after_acknowledged_purge(&racing).pass);
        // A value written after the purge began is not covered by it.
        let newer = history(vec![
            purge("k", 20, 30),
            set("k", "b", 25, 32),
            get("k", Some("b"), 40, 45),
        ]);
        assert!(no_read_after_acknowledged_purge(&newer).pass);
    }

    #[test]
    fn an_overwritten_value_read_later_is_caught_and_a_lost_write_counted() {
        let stale = history(vec![
            set("k", "a", 0, 10),
            set("k", "b", 20, 30),
            get("k", Some("a"), 40, 45),
        ]);
        assert!(!no_stale_read(&stale).pass);
        let fine = history(vec![
            set("k", "a", 0, 10),
            set("k", "b", 20, 30),
            get("k", Some("b"), 40, 45),
        ]);
        assert!(no_stale_read(&fine).pass);
        assert!(lost_writes(&fine).is_empty());
        let lost = history(vec![set("k", "a", 0, 10), get("k", None, 40, 45)]);
        assert!(no_stale_read(&lost).pass, "a miss is not a stale read");
        assert_eq!(lost_writes(&lost).len(), 1);
        let purged = history(vec![
            set("k", "a", 0, 10),
            purge("k", 20, 30),
            get("k", None, 40, 45),
        ]);
        assert!(lost_writes(&purged).is_empty());
        // A purge concurrent with the write may cover it.
        let racing = history(vec![
            purge("k", 0, 20),
            set("k", "a", 5, 10),
            get("k", None, 40, 45),
        ]);
        assert!(lost_writes(&racing).is_empty());
        // A purge over before the write began cannot.
        let earlier = history(vec![
            purge("k", 0, 4),
            set("k", "a", 5, 10),
            get("k", None, 40, 45),
        ]);
        assert_eq!(lost_writes(&earlier).len(), 1);
        // A failed write after the acknowledged one may have landed: no verdict on a miss.
        let mut failed = set("k", "c", 15, 35);
        failed.ok = false;
        let ambiguous = history(vec![set("k", "a", 0, 10), failed, get("k", None, 40, 45)]);
        assert!(lost_writes(&ambiguous).is_empty());
    }

    #[test]
    fn a_page_older_than_a_purge_promised_is_caught() {
        let page = |node: &str, g: u64, s: u64, e: u64| {
            op(
                "/site/p1",
                OpKind::PageGet {
                    node: node.into(),
                    generation: Some(g),
                    marked: false,
                },
                s,
                e,
            )
        };
        let publish =
            |g: u64, s: u64, e: u64| op("/site/p1", OpKind::Publish { generation: g }, s, e);
        let purge = |s: u64, e: u64| op("/site/p1", OpKind::Purge, s, e);
        // Published 1, purged, then read 0: stale.
        let stale = history(vec![publish(1, 0, 5), purge(10, 20), page("n1", 0, 30, 31)]);
        assert!(!no_stale_page_after_purge(&stale).pass);
        // Read during the purge: may still show the old page.
        let racing = history(vec![publish(1, 0, 5), purge(10, 20), page("n1", 0, 15, 16)]);
        assert!(no_stale_page_after_purge(&racing).pass);
        // Published after the purge began: the purge promised nothing about it.
        let later = history(vec![
            purge(10, 20),
            publish(1, 12, 14),
            page("n1", 0, 30, 31),
        ]);
        assert!(no_stale_page_after_purge(&later).pass);
        let fresh = history(vec![publish(1, 0, 5), purge(10, 20), page("n2", 1, 30, 31)]);
        assert!(no_stale_page_after_purge(&fresh).pass);
    }

    #[test]
    fn error_rates_are_split_by_fault_window() {
        let mut h = history(vec![
            get("k", None, 5, 6),
            get("k", None, 105, 106),
            get("k", None, 300, 301),
        ]);
        h.ops[1].ok = false;
        h.faults
            .push(crate::history::FaultWindow::new("x".into(), 100, 150));
        let r = error_rates(&h, 50);
        assert_eq!((r.during_faults, r.failed_during_faults), (1, 1));
        assert_eq!((r.outside_faults, r.failed_outside_faults), (2, 0));
        assert!((r.overall() - 1.0 / 3.0).abs() < 1e-9);
    }
}
