//! Issue 28's targets, judged from one run's samples: for each figure,
//! hbone-lab's and ztunnel's repetitions as minimum–median–maximum, the
//! ratio of the medians, whether the two ranges overlap, and whether the
//! target is met.
//!
//! Why here and not by hand in `RESULTS.md`: a targets table copied out of
//! several runs mixes runs, drops the spread, and drifts from the targets'
//! definitions. Computed from `bench.json`'s samples, every run (and
//! `--replot` of an old one) prints the same table the same way. A figure
//! whose scenario the run did not measure is left out, so a timed run and
//! an `--instructions` run each print their own rows.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::figures::{Sample, median};

/// Which way a figure is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Better {
    /// Throughput, requests, connections: hbone-lab ÷ ztunnel at least the target.
    Higher,
    /// Latency, memory, instructions: hbone-lab ÷ ztunnel at most the target.
    Lower,
}

/// One target of issue 28.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// What the table calls it.
    pub figure: &'static str,
    /// The scenario that measures it.
    pub scenario: &'static str,
    /// The figure's key in the samples.
    pub key: &'static str,
    /// Which way is better.
    pub better: Better,
    /// The ratio hbone-lab ÷ ztunnel must reach.
    pub ratio: f64,
    /// Judged as what the proxies add over the direct path (the figure
    /// minus direct's, repetition by repetition).
    pub over_direct: bool,
}

const fn target(
    figure: &'static str,
    scenario: &'static str,
    key: &'static str,
    better: Better,
    ratio: f64,
) -> Target {
    Target {
        figure,
        scenario,
        key,
        better,
        ratio,
        over_direct: false,
    }
}

/// Issue 28's targets, in its table's order.
pub const TARGETS: &[Target] = &[
    target(
        "single stream",
        "throughput_1",
        "throughput_gbps",
        Better::Higher,
        1.25,
    ),
    target(
        "4 streams",
        "throughput_n",
        "throughput_gbps",
        Better::Higher,
        1.25,
    ),
    target(
        "requests/s, one connection",
        "rr_unthrottled",
        "rps",
        Better::Higher,
        1.2,
    ),
    target(
        "new connections/s",
        "crr",
        "conn_per_s",
        Better::Higher,
        1.5,
    ),
    Target {
        over_direct: true,
        ..target(
            "added p99 at 1 000 req/s",
            "rr_1000",
            "p99_ms",
            Better::Lower,
            0.8,
        )
    },
    target(
        "memory per idle connection",
        "idle_memory",
        "bytes_per_idle_conn",
        Better::Lower,
        0.6,
    ),
    target(
        "memory per used-then-idle connection",
        "idle_memory_used",
        "bytes_per_used_idle_conn",
        Better::Lower,
        0.5,
    ),
    target(
        "instructions per request",
        "instructions_rr",
        "instructions_per_request",
        Better::Lower,
        0.8,
    ),
    target(
        "instructions per new connection",
        "instructions_crr",
        "instructions_per_connection",
        Better::Lower,
        0.8,
    ),
    target(
        "instructions per MiB",
        "instructions_bulk",
        "instructions_per_mib",
        Better::Lower,
        0.8,
    ),
];

/// Minimum, median and maximum of one subject's repetitions.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spread {
    /// The lowest repetition.
    pub min: f64,
    /// The median (of an even count, the mean of the middle two).
    pub median: f64,
    /// The highest repetition.
    pub max: f64,
}

impl Spread {
    fn of(mut values: Vec<f64>) -> Option<Spread> {
        values.retain(|v| v.is_finite());
        let min = values.iter().copied().reduce(f64::min)?;
        let max = values.iter().copied().reduce(f64::max)?;
        Some(Spread {
            min,
            median: median(values),
            max,
        })
    }
}

/// How the two subjects' ranges lie.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Ranges {
    /// Every hbone-lab repetition better than every ztunnel one.
    ApartAhead,
    /// Every hbone-lab repetition worse than every ztunnel one.
    ApartBehind,
    /// The ranges overlap: no verdict either way.
    Overlap,
}

/// One target, judged.
#[derive(Debug, Clone, Serialize)]
pub struct Judged {
    /// What the table calls it.
    pub figure: &'static str,
    /// hbone-lab's repetitions.
    pub hbone_lab: Spread,
    /// ztunnel's repetitions.
    pub ztunnel: Spread,
    /// hbone-lab's median ÷ ztunnel's.
    pub ratio: f64,
    /// Whether the ranges overlap.
    pub ranges: Ranges,
    /// Which way is better.
    pub better: Better,
    /// The ratio to reach.
    pub target: f64,
    /// Whether the median ratio reaches it.
    pub met: bool,
}

/// Every target whose scenario `samples` holds for both hbone-lab and
/// ztunnel, judged.
pub fn judge(samples: &[Sample]) -> Vec<Judged> {
    TARGETS
        .iter()
        .filter_map(|t| judge_one(t, samples))
        .collect()
}

/// `who`'s figure for `t`, each with its repetition.
fn repetitions<'a>(
    t: &'a Target,
    samples: &'a [Sample],
    who: &'a str,
) -> impl Iterator<Item = (usize, f64)> + 'a {
    samples
        .iter()
        .filter(move |s| s.subject == who && s.scenario == t.scenario)
        .filter_map(|s| Some((s.repetition, *s.figures.get(t.key)?)))
}

fn values(t: &Target, samples: &[Sample], subject: &str) -> Vec<f64> {
    if !t.over_direct {
        return repetitions(t, samples, subject).map(|(_, v)| v).collect();
    }
    let direct: BTreeMap<usize, f64> = repetitions(t, samples, "direct").collect();
    let direct_median = Spread::of(direct.values().copied().collect()).map(|s| s.median);
    repetitions(t, samples, subject)
        .filter_map(|(repetition, v)| {
            let base = direct.get(&repetition).copied().or(direct_median)?;
            Some(v - base)
        })
        .collect()
}

fn judge_one(t: &Target, samples: &[Sample]) -> Option<Judged> {
    let ours = Spread::of(values(t, samples, "hbone-lab"))?;
    let theirs = Spread::of(values(t, samples, "ztunnel"))?;
    let ratio = ours.median / theirs.median;
    let (ranges, met) = match t.better {
        Better::Higher => (
            if ours.min > theirs.max {
                Ranges::ApartAhead
            } else if ours.max < theirs.min {
                Ranges::ApartBehind
            } else {
                Ranges::Overlap
            },
            ratio >= t.ratio,
        ),
        Better::Lower => (
            if ours.max < theirs.min {
                Ranges::ApartAhead
            } else if ours.min > theirs.max {
                Ranges::ApartBehind
            } else {
                Ranges::Overlap
            },
            ratio <= t.ratio,
        ),
    };
    Some(Judged {
        figure: t.figure,
        hbone_lab: ours,
        ztunnel: theirs,
        ratio,
        ranges,
        better: t.better,
        target: t.ratio,
        met,
    })
}

fn spread_text(s: &Spread) -> String {
    let f = |v: f64| {
        if v.abs() >= 100.0 {
            format!("{v:.0}")
        } else {
            format!("{v:.3}")
        }
    };
    if s.min == s.max {
        return f(s.median);
    }
    format!("{}–{}–{}", f(s.min), f(s.median), f(s.max))
}

/// The judged targets as a Markdown table (empty when none was measured).
pub fn markdown(judged: &[Judged]) -> String {
    if judged.is_empty() {
        return String::new();
    }
    let mut out = String::from(
        "| target | hbone-lab (min–median–max) | ztunnel | ÷ ztunnel | ranges | wanted | met |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for j in judged {
        // One count each (callgrind's instructions): exact, not a spread.
        let exact = j.hbone_lab.min == j.hbone_lab.max && j.ztunnel.min == j.ztunnel.max;
        let ranges = match j.ranges {
            _ if exact => "exact counts",
            Ranges::ApartAhead => "apart, ahead",
            Ranges::ApartBehind => "apart, behind",
            Ranges::Overlap => "overlap",
        };
        let wanted = match j.better {
            Better::Higher => format!("≥ {:.2}×", j.target),
            Better::Lower => format!("≤ {:.2}×", j.target),
        };
        out.push_str(&format!(
            "| {} | {} | {} | {:.2}× | {} | {} | {} |\n",
            j.figure,
            spread_text(&j.hbone_lab),
            spread_text(&j.ztunnel),
            j.ratio,
            ranges,
            wanted,
            if j.met { "**yes**" } else { "no" },
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(subject: &str, scenario: &str, repetition: usize, key: &str, v: f64) -> Sample {
        Sample {
            subject: subject.into(),
            scenario: scenario.into(),
            repetition,
            figures: BTreeMap::from([(key.to_string(), v)]),
        }
    }

    #[test]
    fn a_target_is_met_by_the_median_ratio_and_ranges_decide_ahead_or_level() {
        let mut samples = Vec::new();
        for (rep, (ours, theirs)) in [(13.0, 10.0), (12.0, 10.5), (14.0, 9.5)]
            .into_iter()
            .enumerate()
        {
            samples.push(sample("hbone-lab", "crr", rep, "conn_per_s", ours));
            samples.push(sample("ztunnel", "crr", rep, "conn_per_s", theirs));
        }
        let judged = judge(&samples);
        assert_eq!(judged.len(), 1, "only the measured scenario is judged");
        let j = &judged[0];
        assert_eq!(j.figure, "new connections/s");
        assert_eq!(
            (j.hbone_lab.min, j.hbone_lab.median, j.hbone_lab.max),
            (12.0, 13.0, 14.0)
        );
        assert!((j.ratio - 1.3).abs() < 1e-9);
        assert_eq!(j.ranges, Ranges::ApartAhead);
        assert!(!j.met, "1.3× is short of 1.5×");
        assert!(markdown(&judged).contains("| new connections/s | 12.000–13.000–14.000 |"));
    }

    #[test]
    fn added_latency_is_judged_over_direct_repetition_by_repetition() {
        let mut samples = Vec::new();
        for (rep, (direct, ours, theirs)) in [(0.1, 0.3, 0.4), (0.2, 0.4, 0.5), (0.1, 0.25, 0.6)]
            .into_iter()
            .enumerate()
        {
            samples.push(sample("direct", "rr_1000", rep, "p99_ms", direct));
            samples.push(sample("hbone-lab", "rr_1000", rep, "p99_ms", ours));
            samples.push(sample("ztunnel", "rr_1000", rep, "p99_ms", theirs));
        }
        let j = &judge(&samples)[0];
        // Added: ours 0.2, 0.2, 0.15 (median 0.2); theirs 0.3, 0.3, 0.5 (median 0.3).
        assert!((j.hbone_lab.median - 0.2).abs() < 1e-9);
        assert!((j.ztunnel.median - 0.3).abs() < 1e-9);
        assert!((j.ratio - 2.0 / 3.0).abs() < 1e-9);
        assert!(j.met, "0.67× is within 0.8×");
        assert_eq!(j.ranges, Ranges::ApartAhead);
    }

    #[test]
    fn overlapping_ranges_give_no_verdict_and_a_lower_figure_can_fall_behind() {
        let mut samples = Vec::new();
        for (rep, (ours, theirs)) in [(100.0, 90.0), (130.0, 95.0), (120.0, 125.0)]
            .into_iter()
            .enumerate()
        {
            samples.push(sample(
                "hbone-lab",
                "idle_memory",
                rep,
                "bytes_per_idle_conn",
                ours,
            ));
            samples.push(sample(
                "ztunnel",
                "idle_memory",
                rep,
                "bytes_per_idle_conn",
                theirs,
            ));
        }
        let j = &judge(&samples)[0];
        assert_eq!(j.ranges, Ranges::Overlap);
        assert!(!j.met);
        samples.retain(|s| s.repetition != 2);
        let j = &judge(&samples)[0];
        assert_eq!(j.ranges, Ranges::ApartBehind, "100–130 against 90–95");
    }

    #[test]
    fn single_counts_show_as_exact_not_as_ranges() {
        let samples = vec![
            sample(
                "hbone-lab",
                "instructions_crr",
                0,
                "instructions_per_connection",
                75.0,
            ),
            sample(
                "ztunnel",
                "instructions_crr",
                0,
                "instructions_per_connection",
                100.0,
            ),
        ];
        let table = markdown(&judge(&samples));
        assert!(
            table.contains("| instructions per new connection | 75.000 | 100 | 0.75× | exact counts | ≤ 0.80× | **yes** |"),
            "{table}"
        );
    }

    #[test]
    fn without_ztunnel_nothing_is_judged() {
        let samples = vec![sample("hbone-lab", "crr", 0, "conn_per_s", 1.0)];
        assert!(judge(&samples).is_empty());
        assert_eq!(markdown(&[]), "");
    }
}
