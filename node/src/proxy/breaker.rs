//! A circuit breaker per origin: closed until `failures` consecutive failures, or
//! until at least half of the last [`WINDOW`] outcomes failed; then open (refusing at
//! once) for `open_for`; then half-open: one probe goes through, and its outcome
//! closes or reopens the breaker.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Outcomes the error-rate rule looks at.
pub const WINDOW: u32 = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed { consecutive: u32 },
    Open { until: Instant },
    HalfOpen { probing: bool },
}

/// The breaker of one origin.
#[derive(Debug)]
pub struct Breaker {
    state: Mutex<(State, Outcomes)>,
    failures: u32,
    open_for: Duration,
}

/// The last [`WINDOW`] outcomes as bits (1 = failure).
#[derive(Debug, Clone, Copy, Default)]
struct Outcomes {
    bits: u32,
    seen: u32,
}

impl Outcomes {
    fn record(&mut self, failed: bool) {
        self.bits = ((self.bits << 1) | u32::from(failed)) & ((1 << WINDOW) - 1);
        self.seen = (self.seen + 1).min(WINDOW);
    }

    /// Whether the window is full and at least half of it failed.
    fn error_rate_exceeded(&self) -> bool {
        self.seen == WINDOW && self.bits.count_ones() * 2 >= WINDOW
    }
}

/// The breaker refused a request; retry after this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Open {
    /// Time until a probe will be allowed.
    pub retry_after: Duration,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(failures: u32, open_for: Duration) -> Self {
        Self {
            state: Mutex::new((State::Closed { consecutive: 0 }, Outcomes::default())),
            failures: failures.max(1),
            open_for,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (State, Outcomes)> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a request may go to the origin now.
    pub fn allow(&self) -> Result<(), Open> {
        let mut guard = self.lock();
        let state = &mut guard.0;
        match *state {
            State::Closed { .. } => Ok(()),
            State::Open { until } => {
                let now = Instant::now();
                if now >= until {
                    *state = State::HalfOpen { probing: true };
                    Ok(())
                } else {
                    Err(Open {
                        retry_after: until - now,
                    })
                }
            }
            State::HalfOpen { probing: false } => {
                *state = State::HalfOpen { probing: true };
                Ok(())
            }
            State::HalfOpen { probing: true } => Err(Open {
                retry_after: Duration::from_secs(1),
            }),
        }
    }

    /// Records the outcome of a request that [`Breaker::allow`] let through.
    pub fn record(&self, success: bool) {
        let mut guard = self.lock();
        let (state, outcomes) = &mut *guard;
        outcomes.record(!success);
        let trip = match *state {
            State::Closed { consecutive } if !success => {
                let consecutive = consecutive + 1;
                *state = State::Closed { consecutive };
                consecutive >= self.failures || outcomes.error_rate_exceeded()
            }
            State::Closed { .. } => {
                *state = State::Closed { consecutive: 0 };
                outcomes.error_rate_exceeded()
            }
            // A half-open probe (or a request let through before the breaker opened).
            _ if success => {
                *state = State::Closed { consecutive: 0 };
                false
            }
            _ => true,
        };
        if trip {
            *outcomes = Outcomes::default();
            *state = State::Open {
                until: Instant::now() + self.open_for,
            };
            tracing::warn!(open_for = ?self.open_for, "origin circuit breaker opened");
        }
    }

    /// Whether the breaker is refusing requests (open, or half-open with a probe out).
    pub fn is_open(&self) -> bool {
        !matches!(self.lock().0, State::Closed { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn opens_on_an_error_rate_without_consecutive_failures() {
        let b = Breaker::new(5, Duration::from_secs(10));
        // Alternate failure and success: never two failures in a row, half failing.
        for i in 0..WINDOW - 1 {
            b.allow().unwrap();
            b.record(i % 2 == 1);
        }
        assert!(!b.is_open(), "opened before the window was full");
        b.allow().unwrap();
        b.record(true);
        assert!(b.is_open(), "half of the last {WINDOW} failed");
        // A healthy origin never trips it.
        let healthy = Breaker::new(5, Duration::from_secs(10));
        for i in 0..100 {
            healthy.allow().unwrap();
            healthy.record(i % 4 != 0);
        }
        assert!(!healthy.is_open());
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_then_probes_once() {
        let b = Breaker::new(3, Duration::from_secs(10));
        for _ in 0..2 {
            b.allow().unwrap();
            b.record(false);
        }
        b.allow().unwrap();
        b.record(true); // a success resets the count
        for _ in 0..3 {
            b.allow().unwrap();
            b.record(false);
        }
        let refused = b.allow().unwrap_err();
        assert_eq!(refused.retry_after, Duration::from_secs(10));
        tokio::time::advance(Duration::from_secs(10)).await;
        b.allow().expect("half-open lets one probe through");
        assert!(b.allow().is_err(), "only one probe at a time");
        b.record(false);
        assert!(b.allow().is_err(), "a failed probe reopens the breaker");
        tokio::time::advance(Duration::from_secs(10)).await;
        b.allow().unwrap();
        b.record(true);
        assert!(!b.is_open());
        b.allow().unwrap();
    }
}
