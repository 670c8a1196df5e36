//! The benchmark's outputs: a terminal table, Markdown and JSON.

use std::fmt::Write as _;

use crate::runner::Summary;

fn headline(s: &Summary) -> Option<(&'static str, f64)> {
    for key in [
        "throughput_gbps",
        "rps",
        "conn_per_s",
        "bytes_per_idle_conn",
        "bytes_per_used_idle_conn",
        "instructions_per_request",
        "instructions_per_connection",
        "instructions_per_mib",
    ] {
        if let Some(v) = s.figures.get(key) {
            return Some((key, *v));
        }
    }
    None
}

fn row(s: &Summary) -> Vec<String> {
    let (key, value) = headline(s).unwrap_or(("-", f64::NAN));
    let p99 = s
        .figures
        .get("p99_ms")
        .map(|v| format!("{v:.3}"))
        .unwrap_or_else(|| "-".into());
    let vs = |m: &std::collections::BTreeMap<String, f64>| {
        m.get(key)
            .map(|r| format!("{r:.2}×"))
            .unwrap_or_else(|| "-".into())
    };
    vec![
        s.scenario.clone(),
        s.subject.clone(),
        format!("{key} {value:.3}"),
        p99,
        vs(&s.ratio_vs_direct),
        vs(&s.ratio_vs_ztunnel),
    ]
}

const HEAD: [&str; 6] = [
    "scenario",
    "subject",
    "headline figure (median)",
    "p99 ms",
    "÷ direct",
    "÷ ztunnel",
];

/// A fixed-width table for the terminal.
pub fn table(summaries: &[Summary]) -> String {
    let rows: Vec<Vec<String>> = summaries.iter().map(row).collect();
    let widths: Vec<usize> = (0..HEAD.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([HEAD[i].chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    let line = |cells: &[String]| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
    };
    let _ = writeln!(out, "{}", line(&HEAD.map(String::from)));
    let _ = writeln!(
        out,
        "{}",
        "─".repeat(widths.iter().sum::<usize>() + 2 * (widths.len() - 1))
    );
    for r in &rows {
        let _ = writeln!(out, "{}", line(r));
    }
    out
}

/// The same as a Markdown table.
pub fn markdown(summaries: &[Summary]) -> String {
    let mut out = format!(
        "| {} |\n|{}|\n",
        HEAD.join(" | "),
        vec!["---"; HEAD.len()].join("|")
    );
    for s in summaries {
        let _ = writeln!(out, "| {} |", row(s).join(" | "));
    }
    out
}
