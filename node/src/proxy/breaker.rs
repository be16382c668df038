//! A circuit breaker per origin: closed until `failures` consecutive failures, then
//! open (refusing at once) for `open_for`, then half-open: one probe goes through, and
//! its outcome closes or reopens the breaker.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed { consecutive: u32 },
    Open { until: Instant },
    HalfOpen { probing: bool },
}

/// The breaker of one origin.
#[derive(Debug)]
pub struct Breaker {
    state: Mutex<State>,
    failures: u32,
    open_for: Duration,
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
            state: Mutex::new(State::Closed { consecutive: 0 }),
            failures: failures.max(1),
            open_for,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a request may go to the origin now.
    pub fn allow(&self) -> Result<(), Open> {
        let mut state = self.lock();
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
        let mut state = self.lock();
        *state = match (*state, success) {
            (_, true) => State::Closed { consecutive: 0 },
            (State::Closed { consecutive }, false) if consecutive + 1 < self.failures => {
                State::Closed {
                    consecutive: consecutive + 1,
                }
            }
            (_, false) => {
                tracing::warn!(open_for = ?self.open_for, "origin circuit breaker opened");
                State::Open {
                    until: Instant::now() + self.open_for,
                }
            }
        };
    }

    /// Whether the breaker is refusing requests (open, or half-open with a probe out).
    pub fn is_open(&self) -> bool {
        !matches!(*self.lock(), State::Closed { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
