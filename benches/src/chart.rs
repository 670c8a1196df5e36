//! The benchmark as a picture: one SVG, one bar per subject, so hbone-lab
//! and ztunnel sit next to each other on every figure.
//!
//! When ztunnel ran, the first panel answers what a reader asks first — is
//! hbone-lab ahead of ztunnel? — as hbone-lab's advantage on every figure
//! (ztunnel's cost ÷ ours for latency, CPU and memory; ours ÷ ztunnel's for
//! speed), with a line at 1. Below it: speed relative to no proxy (higher
//! is better; with the ladder's rungs in the run, this panel is the cost
//! ladder, direct → relay → +mTLS → +HTTP/2), p99 latency at a fixed rate,
//! and memory per idle connection (lower is better).
//!
//! The rate sweep gets a chart of its own ([`sweep_svg`]): latency against
//! the rate each subject achieved — the curve load-testing reports draw,
//! because the question there is where the tail bends upward, which bars
//! of one rate cannot show.

use plotters::prelude::*;
use thiserror::Error;

use crate::runner::Summary;

#[derive(Debug, Error)]
#[error("cannot draw the chart: {0}")]
/// Why a chart could not be drawn.
pub struct ChartError(String);

fn err(e: impl std::fmt::Display) -> ChartError {
    ChartError(e.to_string())
}

/// (scenario, figure, label) for the "÷ direct" panel.
const SPEED: &[(&str, &str, &str)] = &[
    ("throughput_1", "throughput_gbps", "1 stream"),
    ("throughput_n", "throughput_gbps", "N streams"),
    ("rr_unthrottled", "rps", "req/s"),
    ("crr", "conn_per_s", "conn/s"),
];

/// Each subject keeps its colour from chart to chart, whoever else ran.
fn colour(subject: &str) -> RGBColor {
    match subject {
        "direct" => RGBColor(0x90, 0x90, 0x90),
        "hbone-lab" => RGBColor(0x2a, 0x7a, 0xc8),
        "ztunnel" => RGBColor(0xe0, 0x8a, 0x1e),
        "bench-relay" => RGBColor(0xa8, 0xcf, 0xf0),
        "bench-mtls" => RGBColor(0x6a, 0xa6, 0xdc),
        _ => RGBColor(0x3a, 0xa0, 0x5a),
    }
}

fn figure(summaries: &[Summary], subject: &str, scenario: &str, key: &str) -> Option<f64> {
    summaries
        .iter()
        .find(|s| s.subject == subject && s.scenario == scenario)
        .and_then(|s| s.figures.get(key).copied())
        .filter(|v| v.is_finite())
}

/// How a panel is labelled.
struct Panel<'a> {
    title: &'a str,
    y_label: &'a str,
    /// Whether the subjects' legend sits in this panel.
    legend: bool,
    /// A horizontal line at this value (1 in a ratio panel).
    reference: Option<f64>,
}

/// One panel of grouped bars: for each group, one bar per subject.
fn bars(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    panel: &Panel<'_>,
    groups: &[(String, Vec<Option<f64>>)],
    subjects: &[String],
) -> Result<(), ChartError> {
    let Panel {
        title,
        y_label,
        legend,
        reference,
    } = *panel;
    // A figure no subject has (a scenario this run left out) takes no room.
    let groups: Vec<&(String, Vec<Option<f64>>)> = groups
        .iter()
        .filter(|(_, values)| values.iter().any(Option::is_some))
        .collect();
    if groups.is_empty() {
        area.titled(title, ("sans-serif", 18))
            .map_err(err)?
            .draw(&Text::new(
                "not measured in this run",
                (20, 40),
                ("sans-serif", 14),
            ))
            .map_err(err)?;
        return Ok(());
    }
    // Headroom above the tallest bar: room for value labels, and for the
    // legend in the panel that carries it.
    let headroom = if legend { 1.5 } else { 1.15 };
    let top = groups
        .iter()
        .flat_map(|(_, v)| v.iter().flatten())
        .fold(reference.unwrap_or(0.0), |a, b| a.max(*b))
        .max(1e-9)
        * headroom;
    let n = subjects.len().max(1) as f64;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(55)
        .build_cartesian_2d(0.0..groups.len() as f64, 0.0..top)
        .map_err(err)?;
    let names: Vec<String> = groups.iter().map(|(g, _)| g.clone()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(groups.len() * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            match (x - x.floor() - 0.5).abs() < 1e-6 {
                true => names.get(i).cloned().unwrap_or_default(),
                false => String::new(),
            }
        })
        .y_desc(y_label)
        .draw()
        .map_err(err)?;
    for (s, subject) in subjects.iter().enumerate() {
        let colour = colour(subject);
        let rects = groups.iter().enumerate().filter_map(|(g, (_, values))| {
            let v = values.get(s).copied().flatten()?;
            let x0 = g as f64 + 0.1 + 0.8 * s as f64 / n;
            let x1 = x0 + 0.8 / n - 0.02;
            Some(Rectangle::new([(x0, 0.0), (x1, v)], colour.filled()))
        });
        chart
            .draw_series(rects)
            .map_err(err)?
            .label(subject.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], colour.filled()));
        let labels = groups.iter().enumerate().filter_map(|(g, (_, values))| {
            let v = values.get(s).copied().flatten()?;
            let x = g as f64 + 0.1 + 0.8 * (s as f64 + 0.5) / n;
            let text = if v >= 100.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.2}")
            };
            Some(Text::new(
                text,
                (x - 0.06, v + top * 0.02),
                ("sans-serif", 11),
            ))
        });
        chart.draw_series(labels).map_err(err)?;
    }
    if let Some(at) = reference {
        let line = LineSeries::new(
            [(0.0, at), (groups.len() as f64, at)],
            BLACK.stroke_width(1),
        );
        chart.draw_series(line).map_err(err)?;
    }
    if legend {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .border_style(BLACK)
            .background_style(WHITE.mix(0.9))
            .draw()
            .map_err(err)?;
    }
    Ok(())
}

/// The "÷ ztunnel" panel's groups: (label, scenario, figure, whether more
/// is better). Latency is the added p99 (subject's minus direct's).
const VERSUS_ZTUNNEL: &[(&str, &str, &str, bool)] = &[
    ("1 stream", "throughput_1", "throughput_gbps", true),
    ("N streams", "throughput_n", "throughput_gbps", true),
    ("req/s", "rr_unthrottled", "rps", true),
    ("conn/s", "crr", "conn_per_s", true),
    ("added p99", "rr_1000", "p99_ms", false),
    ("CPU/GiB", "throughput_1", "proxy_cpu_s_per_gib", false),
    ("idle conn", "idle_memory", "bytes_per_idle_conn", false),
    (
        "used idle",
        "idle_memory_used",
        "bytes_per_used_idle_conn",
        false,
    ),
];

/// `subject`'s advantage over ztunnel on one figure (above 1: ahead).
fn advantage(
    summaries: &[Summary],
    subject: &str,
    (scenario, key, more_is_better): (&str, &str, bool),
) -> Option<f64> {
    let mut ours = figure(summaries, subject, scenario, key)?;
    let mut theirs = figure(summaries, "ztunnel", scenario, key)?;
    if key == "p99_ms" {
        let direct = figure(summaries, "direct", scenario, key)?;
        ours -= direct;
        theirs -= direct;
    }
    let ratio = if more_is_better {
        ours / theirs
    } else {
        theirs / ours
    };
    Some(ratio).filter(|r| r.is_finite() && *r > 0.0)
}

/// Draws the chart into an SVG string (colours: direct grey, hbone-lab
/// blue and its ladder rungs lighter blues, ztunnel orange, a baseline
/// build green; the legend sits in the first panel).
pub fn svg(summaries: &[Summary], subjects: &[String]) -> Result<String, ChartError> {
    let versus: Vec<String> = subjects
        .iter()
        .filter(|s| *s != "direct" && *s != "ztunnel")
        .cloned()
        .collect();
    let with_ztunnel = subjects.iter().any(|s| s == "ztunnel")
        && VERSUS_ZTUNNEL.iter().any(|(_, scenario, key, better)| {
            versus
                .iter()
                .any(|s| advantage(summaries, s, (scenario, key, *better)).is_some())
        });
    let height = if with_ztunnel { 840 } else { 420 };
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (1200, height)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let below = if with_ztunnel {
            let (top, below) = root.split_vertically(420);
            let groups: Vec<(String, Vec<Option<f64>>)> = VERSUS_ZTUNNEL
                .iter()
                .map(|(label, scenario, key, better)| {
                    let values = versus
                        .iter()
                        .map(|s| advantage(summaries, s, (scenario, key, *better)))
                        .collect();
                    (label.to_string(), values)
                })
                .collect();
            let panel = Panel {
                title: "advantage over ztunnel (× — above the line, ahead of ztunnel)",
                y_label: "× ztunnel",
                legend: true,
                reference: Some(1.0),
            };
            bars(&top, &panel, &groups, &versus)?;
            below
        } else {
            root.clone()
        };
        let (left, rest) = below.split_horizontally(560);
        let (middle, right) = rest.split_horizontally(320);
        let speed: Vec<(String, Vec<Option<f64>>)> = SPEED
            .iter()
            .map(|(scenario, key, label)| {
                let base = figure(summaries, "direct", scenario, key);
                let values = subjects
                    .iter()
                    .map(|s| Some(figure(summaries, s, scenario, key)? / base?))
                    .collect();
                (label.to_string(), values)
            })
            .collect();
        let ladder = subjects.iter().any(|s| s.starts_with("bench-"));
        let panel = Panel {
            title: if ladder {
                "cost ladder: ÷ direct (higher is better)"
            } else {
                "÷ direct (higher is better)"
            },
            y_label: "ratio to no proxy",
            legend: true,
            reference: None,
        };
        bars(&left, &panel, &speed, subjects)?;
        let p99 = vec![(
            "1000 req/s".to_string(),
            subjects
                .iter()
                .map(|s| figure(summaries, s, "rr_1000", "p99_ms"))
                .collect(),
        )];
        let panel = Panel {
            title: "p99 latency, ms",
            y_label: "ms",
            legend: false,
            reference: None,
        };
        bars(&middle, &panel, &p99, subjects)?;
        let memory: Vec<(String, Vec<Option<f64>>)> = [
            ("per idle conn", "idle_memory", "bytes_per_idle_conn"),
            (
                "used, then idle",
                "idle_memory_used",
                "bytes_per_used_idle_conn",
            ),
        ]
        .into_iter()
        .map(|(label, scenario, key)| {
            let values = subjects
                .iter()
                .map(|s| figure(summaries, s, scenario, key).map(|b| b / 1024.0))
                .collect();
            (label.to_string(), values)
        })
        .collect();
        let panel = Panel {
            title: "memory, KiB (lower is better)",
            y_label: "KiB",
            legend: false,
            reference: None,
        };
        bars(&right, &panel, &memory, subjects)?;
        root.present().map_err(err)?;
    }
    Ok(out)
}

/// The scale curves' panels: (scenario, x figure, y figure, title).
const CURVES: &[(&str, &str, &str, &str)] = &[
    (
        "scale_workloads",
        "workloads",
        "bytes_per_workload",
        "bytes per workload known",
    ),
    (
        "scale_policies",
        "policies",
        "conn_per_s",
        "new connections/s by policies in scope",
    ),
    (
        "scale_connections",
        "connections",
        "bytes_per_conn",
        "bytes per open idle connection",
    ),
    (
        "scale_connections",
        "connections",
        "rejudge_ms",
        "ms until a DENY has closed them all",
    ),
];

/// One curve panel: a line per subject over a log-scaled x axis.
fn curve(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    samples: &[crate::runner::Sample],
    (scenario, x_key, y_key, title): (&str, &str, &str, &str),
) -> Result<(), ChartError> {
    let mut lines: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for s in samples.iter().filter(|s| s.scenario == scenario) {
        let (Some(x), Some(y)) = (s.figures.get(x_key), s.figures.get(y_key)) else {
            continue;
        };
        if !(x.is_finite() && y.is_finite() && *x > 0.0) {
            continue;
        }
        match lines.iter_mut().find(|(subject, _)| *subject == s.subject) {
            Some((_, points)) => points.push((*x, *y)),
            None => lines.push((s.subject.clone(), vec![(*x, *y)])),
        }
    }
    let points = lines.iter().flat_map(|(_, p)| p.iter());
    let (x_min, x_max, y_max) = points.fold((f64::MAX, 1.0f64, 0.0f64), |(a, b, c), (x, y)| {
        (a.min(*x), b.max(*x), c.max(*y))
    });
    let x_min = if x_min == f64::MAX { 1.0 } else { x_min };
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(
            (x_min / 2.0..x_max * 2.0).log_scale(),
            0.0..(y_max * 1.2).max(1e-9),
        )
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(x_key)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .draw()
        .map_err(err)?;
    for (subject, mut points) in lines {
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        let colour = colour(&subject);
        chart
            .draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))
            .map_err(err)?
            .label(subject)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], colour.filled()));
        chart
            .draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, 3, colour.filled())),
            )
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.9))
        .draw()
        .map_err(err)?;
    Ok(())
}

/// The scale curves as one SVG, four panels on log-scaled x axes: bytes
/// per workload, connections/s by policies in scope, bytes per open
/// connection, and the time a DENY takes to close them all.
pub fn scale_svg(samples: &[crate::runner::Sample]) -> Result<String, ChartError> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (1200, 800)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        for (area, spec) in root.split_evenly((2, 2)).iter().zip(CURVES) {
            curve(area, samples, *spec)?;
        }
        root.present().map_err(err)?;
    }
    Ok(out)
}

/// The rate sweep as one SVG: latency (log scale) against achieved
/// requests per second, per subject its p99 as a solid line and its p50
/// dashed, in the subject's colour; each knee ringed and labelled.
pub fn sweep_svg(report: &crate::sweep::SweepReport) -> Result<String, ChartError> {
    let points = |pick: fn(&crate::sweep::Step) -> f64, steps: &[crate::sweep::Step]| {
        steps
            .iter()
            .map(|s| (s.achieved_per_s, pick(s)))
            .filter(|(x, y)| x.is_finite() && y.is_finite() && *y > 0.0)
            .collect::<Vec<(f64, f64)>>()
    };
    let p99 = |s: &crate::sweep::Step| s.latency.p99_ms;
    let p50 = |s: &crate::sweep::Step| s.latency.p50_ms;
    let all: Vec<(f64, f64)> = report
        .subjects
        .iter()
        .flat_map(|c| {
            points(p99, &c.steps)
                .into_iter()
                .chain(points(p50, &c.steps))
        })
        .collect();
    let x_max = all.iter().fold(1.0f64, |m, (x, _)| m.max(*x)) * 1.08;
    let y_min = all.iter().fold(f64::MAX, |m, (_, y)| m.min(*y)).min(1.0) / 2.0;
    let y_max = all.iter().fold(y_min * 4.0, |m, (_, y)| m.max(*y)) * 2.0;
    let title = format!(
        "latency against achieved rate — open loop, {} connections; p99 solid, p50 dashed, ○ knee",
        report.connections
    );
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (1100, 620)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(16)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..x_max, (y_min..y_max).log_scale())
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc(format!(
                "requests/s achieved (steps: % of {}'s maximum, {:.0}/s)",
                report.reference_subject, report.reference_per_s
            ))
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_desc("ms from each request's due time")
            .y_label_formatter(&|y| format!("{y}"))
            .draw()
            .map_err(err)?;
        for curve in &report.subjects {
            let colour = colour(&curve.subject);
            let tail = points(p99, &curve.steps);
            chart
                .draw_series(LineSeries::new(tail.clone(), colour.stroke_width(2)))
                .map_err(err)?
                .label(format!("{} p99", curve.subject))
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 18, y)], colour.stroke_width(2))
                });
            chart
                .draw_series(tail.into_iter().map(|p| Circle::new(p, 3, colour.filled())))
                .map_err(err)?;
            chart
                .draw_series(DashedLineSeries::new(
                    points(p50, &curve.steps),
                    6,
                    4,
                    colour.stroke_width(1),
                ))
                .map_err(err)?
                .label(format!("{} p50", curve.subject))
                .legend(move |(x, y)| {
                    let dash = |from: i32| PathElement::new([(from, 0), (from + 6, 0)], colour);
                    EmptyElement::at((x, y)) + dash(0) + dash(11)
                });
            if let Some(knee) = curve.knee.as_ref().filter(|k| k.p99_ms > 0.0) {
                let at = (knee.achieved_per_s, knee.p99_ms);
                chart
                    .draw_series([EmptyElement::at(at)
                        + Circle::new((0, 0), 9, colour.stroke_width(2))
                        + Text::new(
                            format!("knee {} %", knee.percent),
                            (-20, -24),
                            ("sans-serif", 12),
                        )])
                    .map_err(err)?;
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .border_style(BLACK)
            .background_style(WHITE.mix(0.9))
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_chart_names_each_subject_and_rings_the_knee() {
        let svg = super::sweep_svg(&crate::sweep::fixtures::report()).unwrap();
        for label in ["direct p99", "direct p50", "hbone-lab p99", "knee 110 %"] {
            assert!(svg.contains(label), "{label} missing");
        }
        assert_eq!(svg.matches("knee 1").count(), 1, "hbone-lab has no knee");
    }
}
