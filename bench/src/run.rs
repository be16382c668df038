//! The load loops, bounded in time: `duration` measured after a `warmup`.
//!
//! - **Closed loop** (no `rate`): `connections` connections, each sending its next
//!   request as soon as the last one is answered. Measures capacity.
//! - **Open loop** (`rate` requests per second): each connection sends on a fixed
//!   schedule, and latency is measured from the *intended* send time, so a server that
//!   stalls is charged for every request that should have been sent meanwhile (the
//!   coordinated-omission correction of wrk2). Measures latency at a given load.
//!
//! Optionally purgers post tag purges (`wait=all`, the default) to an admin API, at
//! their own fixed rate or each as fast as it is answered (closed loop: the sustained
//! purge rate), with their own latency histogram; `connections = 0` leaves only them.
//! Latencies go into one hdrhistogram per task, merged at the end.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::driver::{Connection, DriverOptions, Protocol, Target};
use crate::workload::{Rng, Workload};

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
    /// Driver settings (HTTP/3 trust, the client driver's token).
    pub driver: DriverOptions,
    /// What to ask for.
    pub workload: Workload,
    /// Open loop at this many requests per second in total; `None`: closed loop.
    pub rate: Option<f64>,
    /// Seed of the request sequence.
    pub seed: u64,
    /// Purges sent alongside, if any.
    pub purges: Option<PurgePlan>,
    /// Print progress on standard error once a second.
    pub progress: bool,
}

/// Tag purges posted to an admin API during the run.
#[derive(Debug, Clone)]
pub struct PurgePlan {
    /// `host:port` of the admin API (plain HTTP).
    pub admin: std::net::SocketAddr,
    /// Bearer token, if the node has one.
    pub token: Option<String>,
    /// Purges per second in total, split over the purgers; `None`: each purger
    /// sends its next purge as soon as the last is answered.
    pub rate: Option<f64>,
    /// Concurrent purgers, one connection and one purge in flight each.
    pub connections: usize,
    /// Tags drawn from `t0..t{tags}`.
    pub tags: u64,
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
    /// Purges answered with a success in the measured time, those that were not,
    /// and the latencies of the answered ones (µs).
    pub purges: Option<PurgeOutcome>,
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

fn histogram() -> Histogram<u64> {
    // 1 µs to 60 s, 3 significant digits.
    Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// Runs the plan.
pub async fn run(plan: &Plan) -> anyhow::Result<Outcome> {
    let start = Instant::now();
    let measure_from = start + plan.warmup;
    let end = measure_from + plan.duration;
    let answered = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(plan.connections);
    // Each connection sends every `interval` in the open loop.
    let interval = plan
        .rate
        .map(|r| Duration::from_secs_f64(plan.connections as f64 / r));
    for i in 0..plan.connections {
        let plan = plan.clone();
        let mut conn = Some(Connection::open(plan.protocol, &plan.target, &plan.driver).await?);
        let answered = answered.clone();
        tasks.push(tokio::spawn(async move {
            let mut hist = histogram();
            let mut rng = Rng::new(plan.seed.wrapping_add(i as u64));
            let (mut requests, mut errors, mut bytes) = (0u64, 0u64, 0u64);
            // Connections start evenly spread over one interval.
            let mut intended = start
                + interval.map_or(Duration::ZERO, |iv| iv * i as u32 / plan.connections as u32);
            loop {
                let sent = match interval {
                    Some(iv) => {
                        let due = intended;
                        intended += iv;
                        tokio::time::sleep_until(due.into()).await;
                        due
                    }
                    None => Instant::now(),
                };
                if sent >= end {
                    break;
                }
                let request = plan.workload.next(&mut rng);
                let result = match conn.as_mut() {
                    Some(c) => {
                        tokio::time::timeout(Duration::from_secs(10), c.send(&plan.target, request))
                            .await
                            .map_err(anyhow::Error::from)
                            .and_then(|r| r)
                    }
                    None => Err(anyhow::anyhow!("not connected")),
                };
                if result.is_err() {
                    // The server may close a keep-alive connection (nginx does after
                    // `keepalive_requests`): reconnect, as real clients do.
                    conn = Connection::open(plan.protocol, &plan.target, &plan.driver)
                        .await
                        .ok();
                }
                if sent < measure_from {
                    continue;
                }
                match result {
                    Ok(n) => {
                        requests += 1;
                        bytes += n as u64;
                        answered.fetch_add(1, Ordering::Relaxed);
                        let _ = hist.record(sent.elapsed().as_micros().max(1) as u64);
                    }
                    Err(_) => errors += 1,
                }
            }
            (hist, requests, errors, bytes)
        }));
    }
    let purgers: Vec<_> = plan
        .purges
        .iter()
        .flat_map(|p| {
            (0..p.connections.max(1)).map(move |i| {
                let window = Window {
                    start: start
                        + p.rate
                            .map_or(Duration::ZERO, |r| Duration::from_secs_f64(i as f64 / r)),
                    measure_from,
                    end,
                };
                tokio::spawn(purge_loop(
                    p.clone(),
                    window,
                    plan.seed.wrapping_add(i as u64),
                ))
            })
        })
        .collect();
    let progress = plan.progress.then(|| {
        let answered = answered.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            let mut last = 0;
            loop {
                tick.tick().await;
                let now = Instant::now();
                if now >= end {
                    break;
                }
                let total = answered.load(Ordering::Relaxed);
                let phase = if now < measure_from {
                    "warm-up"
                } else {
                    "measuring"
                };
                eprint!(
                    "\r{phase}: {:>4.0} s left, {:>9} req/s   ",
                    end.duration_since(now).as_secs_f64(),
                    total - last
                );
                last = total;
            }
            eprintln!();
        })
    });
    let mut outcome = Outcome {
        requests: 0,
        errors: 0,
        bytes: 0,
        latency_us: histogram(),
        elapsed: plan.duration,
        purges: None,
    };
    for task in tasks {
        let (hist, requests, errors, bytes) = task.await?;
        outcome.latency_us.add(&hist)?;
        outcome.requests += requests;
        outcome.errors += errors;
        outcome.bytes += bytes;
    }
    if !purgers.is_empty() {
        let mut total = PurgeOutcome {
            done: 0,
            failed: 0,
            latency_us: histogram(),
        };
        for p in purgers {
            let one = p.await??;
            total.done += one.done;
            total.failed += one.failed;
            total.latency_us.add(&one.latency_us)?;
        }
        outcome.purges = Some(total);
    }
    if let Some(p) = progress {
        let _ = p.await;
    }
    Ok(outcome)
}

/// What the purgers saw in the measured time.
#[derive(Debug)]
pub struct PurgeOutcome {
    /// Purges answered with a success (applied or fenced everywhere).
    pub done: u64,
    /// Purges that failed or were not complete (504) in time.
    pub failed: u64,
    /// Latencies of the successful ones, µs.
    pub latency_us: Histogram<u64>,
}

/// When one loop runs and from when it counts.
#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    measure_from: Instant,
    end: Instant,
}

/// One purger: posts `POST /purge {"tags":["t<n>"]}` on its share of a fixed
/// schedule (latency from the intended time, like the open loop), or back to back.
async fn purge_loop(plan: PurgePlan, window: Window, seed: u64) -> anyhow::Result<PurgeOutcome> {
    let Window {
        start,
        measure_from,
        end,
    } = window;
    let target = Target {
        addr: plan.admin,
        host: plan.admin.to_string(),
        path: "/purge".into(),
        tls: false,
    };
    let mut conn = Connection::open(Protocol::H1, &target, &DriverOptions::none()).await?;
    let interval = plan
        .rate
        .map(|r| Duration::from_secs_f64(plan.connections.max(1) as f64 / r));
    let mut rng = Rng::new(seed ^ 0x0070_7572_6765); // "purge": its own sequence
    let mut out = PurgeOutcome {
        done: 0,
        failed: 0,
        latency_us: histogram(),
    };
    let mut due = start;
    while due < end {
        match interval {
            Some(_) => tokio::time::sleep_until(due.into()).await,
            None => due = Instant::now(),
        }
        let tag = rng.next_u64() % plan.tags.max(1);
        let mut request = http::Request::post("/purge")
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(bytes::Bytes::from(format!(r#"{{"tags":["t{tag}"]}}"#)))?;
        if let Some(token) = &plan.token {
            request.headers_mut().insert(
                http::header::AUTHORIZATION,
                format!("Bearer {token}").parse()?,
            );
        }
        let answered =
            tokio::time::timeout(Duration::from_secs(10), conn.send(&target, request)).await;
        let ok = matches!(answered, Ok(Ok(_)));
        if !ok {
            // A failed exchange may leave the connection unusable: start afresh.
            if let Ok(fresh) = Connection::open(Protocol::H1, &target, &DriverOptions::none()).await
            {
                conn = fresh;
            }
        }
        if due >= measure_from {
            if ok {
                out.done += 1;
                let _ = out
                    .latency_us
                    .record(due.elapsed().as_micros().max(1) as u64);
            } else {
                out.failed += 1;
            }
        }
        if let Some(step) = interval {
            due += step;
        }
    }
    Ok(out)
}
