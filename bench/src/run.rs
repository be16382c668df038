//! The closed loop: `connections` connections, each sending its next request as soon
//! as the last one is answered, for `duration` after a `warmup`. Latencies go into one
//! hdrhistogram per connection, merged at the end.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::driver::{Connection, Protocol, QuicOptions, Target};

/// What to run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Protocol.
    pub protocol: Protocol,
    /// Where.
    pub target: Target,
    /// Concurrent connections (one request in flight each).
    pub connections: usize,
    /// Measured time.
    pub duration: Duration,
    /// Unmeasured time before it.
    pub warmup: Duration,
    /// HTTP/3 settings.
    pub quic: QuicOptions,
}

/// What came out.
#[derive(Debug)]
pub struct Outcome {
    /// Requests answered in the measured time.
    pub requests: u64,
    /// Failed requests in the measured time.
    pub errors: u64,
    /// Response body bytes received.
    pub bytes: u64,
    /// Latencies, microseconds.
    pub latency_us: Histogram<u64>,
    /// Measured time.
    pub elapsed: Duration,
}

impl Outcome {
    /// Requests per second.
    pub fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    /// A latency quantile in milliseconds.
    pub fn ms(&self, quantile: f64) -> f64 {
        self.latency_us.value_at_quantile(quantile) as f64 / 1000.0
    }
}

/// Runs the plan.
pub async fn run(plan: &Plan) -> anyhow::Result<Outcome> {
    let start = Instant::now();
    let measure_from = start + plan.warmup;
    let end = measure_from + plan.duration;
    let mut tasks = Vec::with_capacity(plan.connections);
    for _ in 0..plan.connections {
        let plan = plan.clone();
        let mut conn = Connection::open(plan.protocol, &plan.target, &plan.quic).await?;
        tasks.push(tokio::spawn(async move {
            // 1 µs to 60 s, 3 significant digits.
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
                .expect("valid histogram bounds");
            let (mut requests, mut errors, mut bytes) = (0u64, 0u64, 0u64);
            loop {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                let result =
                    tokio::time::timeout(Duration::from_secs(10), conn.get(&plan.target)).await;
                if sent < measure_from {
                    continue;
                }
                match result {
                    Ok(Ok(n)) => {
                        requests += 1;
                        bytes += n as u64;
                        let _ = hist.record(sent.elapsed().as_micros().max(1) as u64);
                    }
                    _ => errors += 1,
                }
            }
            (hist, requests, errors, bytes)
        }));
    }
    let mut outcome = Outcome {
        requests: 0,
        errors: 0,
        bytes: 0,
        latency_us: Histogram::new_with_bounds(1, 60_000_000, 3)?,
        elapsed: plan.duration,
    };
    for task in tasks {
        let (hist, requests, errors, bytes) = task.await?;
        outcome.latency_us.add(&hist)?;
        outcome.requests += requests;
        outcome.errors += errors;
        outcome.bytes += bytes;
    }
    Ok(outcome)
}
