//! A circuit breaker per node: after `threshold` failures in a row the node is
//! skipped for `cool_down`, then one request is let through to probe it. Keeps a
//! dead node from costing every operation a timeout while the membership catches up.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Default, Clone, Copy)]
struct NodeHealth {
    failures: u32,
    open_until: Option<Instant>,
}

/// The breakers of every node, by address.
#[derive(Debug)]
pub(crate) struct Breakers {
    threshold: u32,
    cool_down: Duration,
    nodes: Mutex<HashMap<String, NodeHealth>>,
    /// Nodes with a failure on record: while none has, no lock is taken.
    tracked: AtomicUsize,
}

impl Breakers {
    pub(crate) fn new(threshold: u32, cool_down: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            cool_down,
            nodes: Mutex::new(HashMap::new()),
            tracked: AtomicUsize::new(0),
        }
    }

    /// Whether `node` may be sent a request now. An open breaker past its cool-down
    /// lets one through (half-open) and is re-armed, so concurrent callers do not
    /// all probe at once.
    pub(crate) fn allows(&self, node: &str) -> bool {
        if self.tracked.load(Ordering::Acquire) == 0 {
            return true;
        }
        let mut nodes = self.nodes.lock().expect("breaker lock");
        let Some(health) = nodes.get_mut(node) else {
            return true;
        };
        match health.open_until {
            None => true,
            Some(until) if Instant::now() >= until => {
                health.open_until = Some(Instant::now() + self.cool_down);
                true
            }
            Some(_) => false,
        }
    }

    pub(crate) fn success(&self, node: &str) {
        if self.tracked.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut nodes = self.nodes.lock().expect("breaker lock");
        if nodes.remove(node).is_some() {
            self.tracked.store(nodes.len(), Ordering::Release);
        }
    }

    pub(crate) fn failure(&self, node: &str) {
        let mut nodes = self.nodes.lock().expect("breaker lock");
        let health = nodes.entry(node.to_string()).or_default();
        health.failures += 1;
        let failures = health.failures;
        let open = failures >= self.threshold;
        if open {
            health.open_until = Some(Instant::now() + self.cool_down);
        }
        self.tracked.store(nodes.len(), Ordering::Release);
        if open {
            tracing::debug!(node, failures, "circuit open");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_the_threshold_and_probes_after_the_cool_down() {
        let b = Breakers::new(3, Duration::from_millis(50));
        b.failure("n");
        b.failure("n");
        assert!(b.allows("n"), "below the threshold");
        b.failure("n");
        assert!(!b.allows("n"), "open");
        std::thread::sleep(Duration::from_millis(60));
        assert!(b.allows("n"), "one probe after the cool-down");
        assert!(!b.allows("n"), "only one probe");
        b.success("n");
        assert!(b.allows("n"), "closed by a success");
        assert!(b.allows("other"), "breakers are per node");
    }
}
