//! Hybrid logical clock (HLC): timestamps that follow wall-clock milliseconds but
//! never go backwards and never repeat, even when the wall clock does.
//!
//! A [`Timestamp`] packs 48 bits of physical milliseconds since the Unix epoch and a
//! 16-bit logical counter into one `u64`, so comparing versions is one integer
//! comparison. The clock is lock-free; the caller passes the wall time in (sans-I/O),
//! so tests control time exactly.

use std::sync::atomic::{AtomicU64, Ordering};

const LOGICAL_BITS: u32 = 16;

/// A point on the hybrid logical clock. Ordered; `Timestamp::ZERO` precedes all others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The smallest timestamp; no clock reading equals it.
    pub const ZERO: Timestamp = Timestamp(0);

    /// Rebuilds a timestamp from its packed form (as stored on disk).
    pub const fn from_u64(raw: u64) -> Self {
        Timestamp(raw)
    }

    /// The packed form.
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// The earliest timestamp of the given wall-clock millisecond.
    pub const fn from_millis(ms: u64) -> Self {
        Timestamp(ms << LOGICAL_BITS)
    }

    /// Physical part: milliseconds since the Unix epoch.
    pub const fn millis(self) -> u64 {
        self.0 >> LOGICAL_BITS
    }

    /// The timestamp just before this one: everything older than `self` is at or
    /// before it. Used to say "every version before this one".
    pub const fn predecessor(self) -> Self {
        Timestamp(self.0.saturating_sub(1))
    }
}

/// A hybrid logical clock shared by every task of a node.
#[derive(Debug, Default)]
pub struct Hlc {
    last: AtomicU64,
}

impl Hlc {
    /// A clock that has issued nothing yet.
    pub const fn new() -> Self {
        Self {
            last: AtomicU64::new(0),
        }
    }

    /// A new timestamp, strictly greater than every timestamp this clock has issued
    /// or observed, and at least `wall_ms`.
    pub fn now(&self, wall_ms: u64) -> Timestamp {
        let wall = Timestamp::from_millis(wall_ms).0;
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            let next = wall.max(last + 1);
            match self
                .last
                .compare_exchange_weak(last, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return Timestamp(next),
                Err(actual) => last = actual,
            }
        }
    }

    /// Moves the clock past a timestamp seen elsewhere (a replayed log record, a peer's
    /// message), so later readings order after it.
    pub fn observe(&self, seen: Timestamp) {
        self.last.fetch_max(seen.0, Ordering::AcqRel);
    }

    /// The latest timestamp issued or observed.
    pub fn last(&self) -> Timestamp {
        Timestamp(self.last.load(Ordering::Acquire))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn follows_wall_clock_when_it_moves_forward() {
        let clock = Hlc::new();
        assert_eq!(clock.now(1_000).millis(), 1_000);
        assert_eq!(clock.now(2_000).millis(), 2_000);
    }

    #[test]
    fn observed_timestamps_order_before_later_readings() {
        let clock = Hlc::new();
        let remote = Timestamp::from_millis(50_000);
        clock.observe(remote);
        assert!(clock.now(10) > remote);
    }

    proptest! {
        /// Whatever the wall clock does (jumps back, stands still), readings strictly increase.
        #[test]
        fn readings_strictly_increase(walls in proptest::collection::vec(0u64..1_000_000, 1..500)) {
            let clock = Hlc::new();
            let mut prev = Timestamp::ZERO;
            for wall in walls {
                let t = clock.now(wall);
                prop_assert!(t > prev);
                prop_assert!(t.millis() >= wall);
                prev = t;
            }
        }

        #[test]
        fn readings_increase_across_threads(n in 1usize..2000) {
            let clock = std::sync::Arc::new(Hlc::new());
            let handles: Vec<_> = (0..2).map(|_| {
                let clock = clock.clone();
                std::thread::spawn(move || (0..n).map(|_| clock.now(7)).collect::<Vec<_>>())
            }).collect();
            let mut all: Vec<Timestamp> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
            let total = all.len();
            all.sort();
            all.dedup();
            prop_assert_eq!(all.len(), total, "two readings were equal");
        }
    }
}
