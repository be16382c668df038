//! Soak runs: the `random` scenario many times with consecutive seeds, each run's
//! report kept, and the figures the reliability targets name summed over all runs:
//! stale reads after acknowledged purges, failed operations, failure detection
//! times (p50/p99), restart-to-serving times, false "down" verdicts during pauses.

use std::path::Path;

use serde::Serialize;

use crate::report;
use crate::scenario::{self, Settings};

/// The figures of a soak.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Summary {
    /// Runs made.
    pub runs: u32,
    /// Seeds of runs where a checker failed.
    pub failed_seeds: Vec<u64>,
    /// Violations per checker, summed.
    pub violations: Vec<(String, usize)>,
    /// Operations, and how many failed.
    pub operations: usize,
    /// Reads that missed an acknowledged write (reported, not failed).
    pub lost_writes: usize,
    /// Failed operations.
    pub failed_operations: usize,
    /// Operations through fanz-client (which retries on another node).
    pub client_operations: usize,
    /// How many of those failed.
    pub failed_client_operations: usize,
    /// Faults done, by kind (the first word of their description).
    pub faults: usize,
    /// Failure detection times, ms (kills and partitions).
    pub detection_ms: Vec<u64>,
    /// Restart-to-serving times, ms.
    pub recovery_ms: Vec<u64>,
    /// Heal-to-purges-reach-every-member times, ms.
    pub caught_up_ms: Vec<u64>,
    /// Pauses, and how many had a node declared down.
    pub pauses: usize,
    /// Pauses that got a false "down".
    pub false_positives: usize,
    /// Faults skipped, with why.
    pub skipped: Vec<String>,
    /// Runs that could not be made, with why.
    pub errors: Vec<String>,
}

impl Summary {
    /// Whether every run passed every checker.
    pub fn pass(&self) -> bool {
        self.failed_seeds.is_empty()
    }
}

/// The `q` quantile (0..=1) of `samples`, nearest rank.
pub fn quantile(samples: &[u64], q: f64) -> Option<u64> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

/// Runs `runs` random scenarios with seeds `settings.seed`, `+1`, ...; each report
/// goes to `dir/seed-N`.
pub async fn soak(settings: &Settings, runs: u32, dir: &Path) -> anyhow::Result<Summary> {
    let mut summary = Summary::default();
    for i in 0..runs {
        let mut one = settings.clone();
        one.scenario = "random".into();
        one.seed = settings.seed + u64::from(i);
        one.log_dir = Some(dir.join(format!("seed-{}", one.seed)));
        eprintln!("soak run {}/{runs}: {}", i + 1, scenario::describe(&one));
        let outcome = match scenario::run(&one).await {
            Ok(outcome) => outcome,
            Err(e) => {
                // The cluster could not be run (did not converge, a node would not
                // start): a failed run, not the end of the soak.
                eprintln!("soak run seed {}: could not run: {e:#}", one.seed);
                summary.runs += 1;
                summary.failed_seeds.push(one.seed);
                summary.errors.push(format!("seed {}: {e:#}", one.seed));
                continue;
            }
        };
        report::write(&outcome, &dir.join(format!("seed-{}", one.seed)))?;
        summary.runs += 1;
        if !outcome.pass() {
            summary.failed_seeds.push(one.seed);
            eprintln!("soak run seed {}: FAIL", one.seed);
        }
        for v in &outcome.verdicts {
            match summary.violations.iter_mut().find(|(n, _)| n == v.name) {
                Some((_, count)) => *count += v.violation_count,
                None => summary
                    .violations
                    .push((v.name.to_string(), v.violation_count)),
            }
        }
        summary.operations += outcome.operations;
        summary.lost_writes += outcome.lost_writes;
        summary.failed_operations +=
            outcome.errors.failed_during_faults + outcome.errors.failed_outside_faults;
        summary.client_operations += outcome.errors.client_ops;
        summary.failed_client_operations += outcome.errors.failed_client_ops;
        summary.faults += outcome.faults.len();
        for f in &outcome.faults {
            summary.detection_ms.extend(f.detection_ms);
            summary.recovery_ms.extend(f.recovery_ms);
            summary.caught_up_ms.extend(f.caught_up_ms);
            if let Some(fp) = f.false_positive {
                summary.pauses += 1;
                summary.false_positives += usize::from(fp);
            }
        }
        summary.skipped.extend(outcome.skipped.iter().cloned());
    }
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("summary.json"),
        serde_json::to_string_pretty(&summary)?,
    )?;
    std::fs::write(dir.join("summary.md"), markdown(&summary))?;
    Ok(summary)
}

/// The soak's Markdown summary.
pub fn markdown(s: &Summary) -> String {
    let q = |v: &[u64], q: f64| quantile(v, q).map_or("-".into(), |ms| format!("{ms} ms"));
    let mut out = format!(
        "# cluster-test soak: {} random runs\n\n- Result: **{}**\n",
        s.runs,
        if s.pass() { "PASS" } else { "FAIL" }
    );
    if !s.failed_seeds.is_empty() {
        out.push_str(&format!("- Failed seeds: {:?}\n", s.failed_seeds));
    }
    for (name, count) in &s.violations {
        out.push_str(&format!("- {name}: {count} violations\n"));
    }
    out.push_str(&format!(
        "- Operations: {}; failed: {} ({:.3}%); through fanz-client (retrying): {} of {} failed ({:.3}%)\n- Faults: {}\n- Detection: p50 {}, p99 {}, max {} ({} samples)\n- Restart to serving: p50 {}, max {}\n- Purges reach every member after heal: p50 {}, max {}\n- Pauses: {}; declared down: {}\n",
        s.operations,
        s.failed_operations,
        if s.operations == 0 { 0.0 } else { s.failed_operations as f64 * 100.0 / s.operations as f64 },
        s.failed_client_operations,
        s.client_operations,
        if s.client_operations == 0 { 0.0 } else { s.failed_client_operations as f64 * 100.0 / s.client_operations as f64 },
        s.faults,
        q(&s.detection_ms, 0.5),
        q(&s.detection_ms, 0.99),
        q(&s.detection_ms, 1.0),
        s.detection_ms.len(),
        q(&s.recovery_ms, 0.5),
        q(&s.recovery_ms, 1.0),
        q(&s.caught_up_ms, 0.5),
        q(&s.caught_up_ms, 1.0),
        s.pauses,
        s.false_positives,
    ));
    out.push_str(&format!(
        "- Reads that missed an acknowledged write (reported, not failed): {}\n",
        s.lost_writes
    ));
    for error in &s.errors {
        out.push_str(&format!("- **Could not run**: {error}\n"));
    }
    for skipped in &s.skipped {
        out.push_str(&format!("- **SKIPPED**: {skipped}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::quantile;

    #[test]
    fn quantiles_are_nearest_rank() {
        let samples: Vec<u64> = (1..=100).collect();
        assert_eq!(quantile(&samples, 0.5), Some(50));
        assert_eq!(quantile(&samples, 0.99), Some(99));
        assert_eq!(quantile(&samples, 1.0), Some(100));
        assert_eq!(quantile(&[7], 0.99), Some(7));
        assert_eq!(quantile(&[], 0.5), None);
    }
}
