//! The scaling scenario (`bench --scaling`): throughput over 1, 2, 4 and 8
//! parallel streams and new connections/s over as many parallel connection
//! loops, so a proxy's multi-core behaviour shows as a curve rather than the
//! single point `throughput_n` gives.
//!
//! Each point is an ordinary scenario of the runner (`throughput_x4`,
//! `crr_x8`), so it is measured by the same code, interleaved across
//! subjects and summarised (median, ratios) exactly as the others; this
//! module only names the points and lays their medians out as curves.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::figures::Summary;

/// The parallelism of each point on a curve.
pub const POINTS: [usize; 4] = [1, 2, 4, 8];

/// Every scaling scenario, in the order they run: each curve's points.
pub const SCENARIOS: &[&str] = &[
    "throughput_x1",
    "throughput_x2",
    "throughput_x4",
    "throughput_x8",
    "crr_x1",
    "crr_x2",
    "crr_x4",
    "crr_x8",
];

/// One curve of the scaling scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Bulk throughput over N parallel streams.
    Throughput,
    /// New connections/s from N parallel connect–request–close loops.
    Crr,
}

impl Kind {
    /// Both curves, in the order they are reported.
    pub const ALL: [Kind; 2] = [Kind::Throughput, Kind::Crr];

    /// The scenario names' prefix (`throughput` in `throughput_x4`).
    pub fn prefix(self) -> &'static str {
        match self {
            Kind::Throughput => "throughput",
            Kind::Crr => "crr",
        }
    }

    /// The figure each point reports.
    pub fn figure(self) -> &'static str {
        match self {
            Kind::Throughput => "throughput_gbps",
            Kind::Crr => "conn_per_s",
        }
    }
}

/// The parallelism of `scenario` if it is one of `kind`'s points
/// (`crr_x4` → 4 for [`Kind::Crr`]).
pub fn parallelism(scenario: &str, kind: Kind) -> Option<usize> {
    let n: usize = scenario
        .strip_prefix(kind.prefix())?
        .strip_prefix("_x")?
        .parse()
        .ok()?;
    POINTS.contains(&n).then_some(n)
}

/// One subject's curve: the median figure at each parallelism measured.
#[derive(Debug, Clone, Serialize)]
pub struct Curve {
    /// Who was measured.
    pub subject: String,
    /// What the figure is (`throughput_gbps`, `conn_per_s`).
    pub figure: String,
    /// Parallelism → median figure.
    pub points: BTreeMap<usize, f64>,
}

/// The scaling points among `summaries` as curves, one per subject and
/// kind, subjects in the order they ran.
pub fn curves(summaries: &[Summary]) -> Vec<Curve> {
    let mut out: Vec<Curve> = Vec::new();
    for kind in Kind::ALL {
        for s in summaries {
            let Some(n) = parallelism(&s.scenario, kind) else {
                continue;
            };
            let Some(value) = s.figures.get(kind.figure()) else {
                continue;
            };
            let at = out
                .iter()
                .position(|c| c.subject == s.subject && c.figure == kind.figure());
            let curve = match at {
                Some(i) => &mut out[i],
                None => {
                    out.push(Curve {
                        subject: s.subject.clone(),
                        figure: kind.figure().into(),
                        points: BTreeMap::new(),
                    });
                    out.last_mut().expect("just pushed")
                }
            };
            curve.points.insert(n, *value);
        }
    }
    out
}

/// The curves as a terminal table: one row per subject and figure, one
/// column per parallelism, and the last point ÷ the first (1.00 = no gain).
pub fn table(curves: &[Curve]) -> String {
    let mut out = String::new();
    let head: Vec<String> = POINTS.iter().map(|n| format!("×{n}")).collect();
    let _ = writeln!(
        out,
        "{:<16}  {:<14}  {}  {:>8}",
        "figure",
        "subject",
        head.iter()
            .map(|h| format!("{h:>10}"))
            .collect::<Vec<_>>()
            .join("  "),
        "gain"
    );
    for c in curves {
        let cells: Vec<String> = POINTS
            .iter()
            .map(|n| match c.points.get(n) {
                Some(v) => format!("{v:>10.3}"),
                None => format!("{:>10}", "-"),
            })
            .collect();
        let gain = match (c.points.get(&POINTS[0]), c.points.get(&POINTS[3])) {
            (Some(first), Some(last)) if *first > 0.0 => format!("{:.2}×", last / first),
            _ => "-".into(),
        };
        let _ = writeln!(
            out,
            "{:<16}  {:<14}  {}  {gain:>8}",
            c.figure,
            c.subject,
            cells.join("  ")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_are_one_two_four_eight() {
        assert_eq!(POINTS, [1, 2, 4, 8]);
        for kind in Kind::ALL {
            let found: Vec<usize> = SCENARIOS
                .iter()
                .filter_map(|s| parallelism(s, kind))
                .collect();
            assert_eq!(found, POINTS, "{kind:?}'s scenarios");
        }
        assert!(
            SCENARIOS
                .iter()
                .all(|s| Kind::ALL.iter().any(|k| parallelism(s, *k).is_some())),
            "every scaling scenario is a point of a curve"
        );
    }

    #[test]
    fn other_scenarios_are_not_points() {
        for s in [
            "throughput_1",
            "throughput_n",
            "crr",
            "crr_x3",
            "crr_x",
            "rr_x2",
        ] {
            assert!(
                Kind::ALL.iter().all(|k| parallelism(s, *k).is_none()),
                "{s}"
            );
        }
    }

    #[test]
    fn curves_gather_each_subjects_points() {
        let summary = |subject: &str, scenario: &str, key: &str, v: f64| Summary {
            subject: subject.into(),
            scenario: scenario.into(),
            figures: [(key.to_string(), v)].into(),
            ratio_vs_direct: BTreeMap::new(),
            ratio_vs_ztunnel: BTreeMap::new(),
        };
        let summaries = vec![
            summary("direct", "throughput_x1", "throughput_gbps", 1.0),
            summary("direct", "throughput_x2", "throughput_gbps", 2.0),
            summary("hbone-lab", "crr_x1", "conn_per_s", 10.0),
            summary("hbone-lab", "throughput_1", "throughput_gbps", 9.0),
        ];
        let curves = curves(&summaries);
        assert_eq!(curves.len(), 2);
        assert_eq!(curves[0].subject, "direct");
        assert_eq!(curves[0].points, [(1, 1.0), (2, 2.0)].into());
        assert_eq!(curves[1].figure, "conn_per_s");
        assert!(table(&curves).contains("2.000"));
    }
}
