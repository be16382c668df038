//! The node's clock: wall time in milliseconds and the hybrid logical clock that
//! versions entries and tombstones. Tests can freeze and move wall time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use fanz_protocol::{Hlc, Timestamp};

/// The system's wall clock, milliseconds since the Unix epoch: the one place the
/// node reads it (`clippy.toml` steers every other reading here).
#[allow(clippy::disallowed_methods)]
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Wall clock plus HLC. Shared by every part of a node.
#[derive(Debug, Default)]
pub struct Clock {
    hlc: Hlc,
    /// When non-zero, the wall time in ms (tests); zero means the system clock.
    manual_ms: AtomicU64,
}

impl Clock {
    /// A clock that follows the system's wall time.
    pub fn system() -> Self {
        Self::default()
    }

    /// A clock frozen at `wall_ms` until [`Clock::advance`] moves it.
    pub fn manual(wall_ms: u64) -> Self {
        let clock = Self::default();
        clock.manual_ms.store(wall_ms.max(1), Ordering::Relaxed);
        clock
    }

    /// Moves a manual clock forward.
    pub fn advance(&self, ms: u64) {
        self.manual_ms.fetch_add(ms, Ordering::Relaxed);
    }

    /// Wall time, milliseconds since the Unix epoch.
    pub fn wall_ms(&self) -> u64 {
        match self.manual_ms.load(Ordering::Relaxed) {
            0 => now_ms(),
            ms => ms,
        }
    }

    /// A fresh HLC timestamp, later than every one issued or observed.
    pub fn now(&self) -> Timestamp {
        self.hlc.now(self.wall_ms())
    }

    /// Orders later readings after `seen`.
    pub fn observe(&self, seen: Timestamp) {
        self.hlc.observe(seen);
    }
}
