//! The report of a run: JSON for machines and Markdown for people, with pass/fail
//! per checker and the seed that reproduces the run.

use std::path::Path;

use crate::scenario::Outcome;

/// The Markdown report.
pub fn markdown(outcome: &Outcome) -> String {
    let mut out = format!(
        "# cluster-test: {}\n\n- Result: **{}**\n- Seed: {} (rerun: `cargo run --release -p fanz-cluster-test -- run {} --nodes {} --duration {:.0} --seed {}`)\n- Nodes: {}; operations: {}; duration: {:.1} s\n",
        outcome.scenario,
        if !outcome.pass() {
            "FAIL"
        } else if outcome.faults.is_empty() && !outcome.skipped.is_empty() {
            "SKIPPED (no fault could be made here; the checkers passed)"
        } else {
            "PASS"
        },
        outcome.seed,
        outcome.scenario,
        outcome.nodes,
        outcome.duration_s.floor(),
        outcome.seed,
        outcome.nodes,
        outcome.operations,
        outcome.duration_s,
    );
    let e = &outcome.errors;
    out.push_str(&format!(
        "- Failed operations: {} of {} during faults (+2 s), {} of {} outside; overall {:.3}%\n",
        e.failed_during_faults,
        e.during_faults,
        e.failed_outside_faults,
        e.outside_faults,
        e.overall() * 100.0
    ));
    out.push_str(&format!(
        "- Through fanz-client (retries on another node): {} of {} failed ({:.3}%)\n",
        e.failed_client_ops,
        e.client_ops,
        e.client_failure_rate() * 100.0
    ));
    out.push_str(&format!("- Placement: {}\n", outcome.placement));
    if !outcome.node_args.is_empty() {
        out.push_str(&format!(
            "- Node arguments: `{}`\n",
            outcome.node_args.join(" ")
        ));
    }
    for skipped in &outcome.skipped {
        out.push_str(&format!("- **SKIPPED**: {skipped}\n"));
    }
    let figure = |v: Option<u64>| v.map_or("-".to_string(), |ms| ms.to_string());
    out.push_str("\n## Faults\n\n| fault | from (ms) | to (ms) | detected (ms) | answering after restart (ms) | converged (ms) | purges reach all (ms) | false down |\n|---|---|---|---|---|---|---|---|\n");
    for f in &outcome.faults {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            f.fault,
            f.start_ms,
            f.end_ms,
            figure(f.detection_ms),
            figure(f.recovery_ms),
            figure(f.converged_ms),
            figure(f.caught_up_ms),
            f.false_positive
                .map_or("-", |b| if b { "**yes**" } else { "no" }),
        ));
    }
    for f in outcome
        .faults
        .iter()
        .filter(|f| f.slow_convergence.is_some())
    {
        out.push_str(&format!(
            "\nSlow convergence after \"{}\": {}\n",
            f.fault,
            f.slow_convergence.as_deref().unwrap_or_default()
        ));
    }
    out.push_str("\n## Checkers\n\n| checker | rule | judged | result |\n|---|---|---|---|\n");
    for v in &outcome.verdicts {
        out.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            v.name,
            v.rule,
            v.judged,
            if v.pass {
                "pass".to_string()
            } else {
                format!("**FAIL** ({} violations)", v.violation_count)
            }
        ));
    }
    out.push_str(&format!(
        "\nReads that missed an acknowledged write (a cache may lose entries; reported, not failed): {}\n",
        outcome.lost_writes
    ));
    for line in &outcome.lost_examples {
        out.push_str(&format!("- {line}\n"));
    }
    if !outcome.errors.examples.is_empty() {
        out.push_str("\n### Failed operations (first few)\n\n");
        for line in &outcome.errors.examples {
            out.push_str(&format!("- {line}\n"));
        }
    }
    for v in outcome.verdicts.iter().filter(|v| !v.pass) {
        out.push_str(&format!(
            "\n### {} violations (first {})\n\n",
            v.name,
            v.violations.len()
        ));
        for line in &v.violations {
            out.push_str(&format!("- {line}\n"));
        }
    }
    out
}

/// Writes `report.json` and `report.md` into `dir`.
pub fn write(outcome: &Outcome, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("report.json"),
        serde_json::to_string_pretty(outcome)?,
    )?;
    std::fs::write(dir.join("report.md"), markdown(outcome))?;
    Ok(())
}
