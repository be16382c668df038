//! `fanz-bench chart`: the latency percentiles of several runs (their `--json`
//! output) side by side, as a self-contained SVG: one group of bars per percentile,
//! one bar per run, with the throughput in the legend. People would rather look than
//! read.

use std::fmt::Write as _;

/// The percentiles drawn, with their JSON field names.
const LEVELS: [(&str, &str); 5] = [
    ("p50", "p50_ms"),
    ("p90", "p90_ms"),
    ("p99", "p99_ms"),
    ("p99.9", "p999_ms"),
    ("max", "max_ms"),
];
const COLOURS: [&str; 6] = [
    "#2b6cb0", "#dd6b20", "#38a169", "#805ad5", "#c53030", "#718096",
];

/// One run to draw: its label and its `--json` object.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend label.
    pub label: String,
    /// The run's JSON output.
    pub run: serde_json::Value,
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The chart. Fails if a run lacks a percentile.
pub fn svg(title: &str, series: &[Series]) -> Result<String, String> {
    if series.is_empty() {
        return Err("no runs to chart".into());
    }
    let mut values = Vec::new();
    for s in series {
        let mut row = Vec::new();
        for (_, field) in LEVELS {
            let v = s.run[field]
                .as_f64()
                .ok_or_else(|| format!("{}: no {field} in its JSON", s.label))?;
            row.push(v);
        }
        values.push(row);
    }
    let top = values
        .iter()
        .flatten()
        .cloned()
        .fold(0.0_f64, f64::max)
        .max(0.001);
    let (width, height, left, bottom, top_pad) = (760.0, 420.0, 60.0, 60.0, 50.0);
    let plot_h = height - bottom - top_pad;
    let group_w = (width - left - 20.0) / LEVELS.len() as f64;
    let bar_w = (group_w * 0.8) / series.len() as f64;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{}" font-family="sans-serif" font-size="12">"#,
        height + 20.0 * series.len() as f64
    );
    let _ = writeln!(
        out,
        r#"<text x="{left}" y="24" font-size="16">{}</text>"#,
        escape(title)
    );
    for step in 0..=4 {
        let v = top * f64::from(step) / 4.0;
        let y = top_pad + plot_h - plot_h * f64::from(step) / 4.0;
        let _ = writeln!(
            out,
            r##"<line x1="{left}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{v:.2} ms</text>"##,
            width - 20.0,
            left - 6.0,
            y + 4.0
        );
    }
    for (g, (name, _)) in LEVELS.iter().enumerate() {
        let x0 = left + group_w * g as f64 + group_w * 0.1;
        for (i, row) in values.iter().enumerate() {
            let h = plot_h * row[g] / top;
            let x = x0 + bar_w * i as f64;
            let _ = writeln!(
                out,
                r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="{}"><title>{}: {} {:.3} ms</title></rect>"#,
                top_pad + plot_h - h,
                bar_w * 0.95,
                COLOURS[i % COLOURS.len()],
                escape(&series[i].label),
                name,
                row[g]
            );
        }
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{name}</text>"#,
            x0 + group_w * 0.4,
            top_pad + plot_h + 18.0
        );
    }
    for (i, s) in series.iter().enumerate() {
        let y = height - 10.0 + 20.0 * i as f64;
        let rate = s.run["req_per_s"].as_f64().unwrap_or(0.0);
        let _ = writeln!(
            out,
            r#"<rect x="{left}" y="{:.1}" width="12" height="12" fill="{}"/><text x="{}" y="{y:.1}">{} ({rate:.0} req/s)</text>"#,
            y - 10.0,
            COLOURS[i % COLOURS.len()],
            left + 18.0,
            escape(&s.label)
        );
    }
    out.push_str("</svg>\n");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_run_gets_a_bar_per_percentile_and_a_legend_entry() {
        let run = |p: f64| serde_json::json!({"p50_ms": p, "p90_ms": p * 2.0, "p99_ms": p * 3.0, "p999_ms": p * 4.0, "max_ms": p * 5.0, "req_per_s": 1000.0});
        let out = svg(
            "hits <1 KiB>",
            &[
                Series {
                    label: "fanz".into(),
                    run: run(1.0),
                },
                Series {
                    label: "nginx".into(),
                    run: run(2.0),
                },
            ],
        )
        .unwrap();
        assert_eq!(out.matches("<rect").count(), 2 * 5 + 2);
        assert!(out.contains("hits &lt;1 KiB&gt;") && out.contains("nginx (1000 req/s)"));
        assert!(out.starts_with("<svg") && out.trim_end().ends_with("</svg>"));
        let missing = svg(
            "x",
            &[Series {
                label: "bad".into(),
                run: serde_json::json!({}),
            }],
        );
        assert!(missing.unwrap_err().contains("p50_ms"));
    }
}
