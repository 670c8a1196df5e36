//! The rate sweep (`bench --sweep`): latency against load, open loop, the
//! way load-testing reports are read — "at what rate does it stop keeping
//! up, and what does its tail look like on the way there?".
//!
//! Why not the other scenarios: `rr_unthrottled` is closed loop (the
//! client waits for each answer, so a slow proxy is simply sent less and
//! its stalls hide), and `rr_1000` is one fixed rate, far below either
//! proxy's limit on a fast machine. Here each subject is offered fixed
//! arrival rates ([`hbone_workloads::open_loop`], wrk2's model: each
//! request timed from when it was due) that climb past what the slowest
//! proxy can carry.
//!
//! How:
//!
//! 1. Each subject's **maximum**: closed-loop request/response over the
//!    same connections as the sweep (every connection sending its next
//!    request as soon as its answer is in), requests per second summed.
//! 2. The **reference**: the slowest proxy subject's maximum. direct is
//!    left out (it is the floor, not a contender) unless it is the only
//!    subject. Every subject is offered the same rates, so their curves
//!    share an x axis.
//! 3. The **steps**: the reference × 10, 25, 50, 75, 90, 100 and 110 %
//!    (`--quick`: 10, 50, 90 and 110 %, 1 s each). At each step every
//!    subject is started, warmed, measured and stopped in turn, as
//!    [`crate::runner`] interleaves repetitions, so drift on a shared
//!    machine lands on every subject's step alike rather than on one
//!    subject's whole curve.
//! 4. At each step, per subject: offered and achieved rate, answered,
//!    failed and unfinished requests, p50/p90/p99/p99.9/max, and the
//!    proxies' CPU per answered request (both proxies of the path
//!    together) split into user and system time, from /proc.
//!
//! **The knee** of a subject is the highest step at which it still kept
//! up: achieved ≥ 95 % of offered, no request failed or went unanswered,
//! and p99 ≤ 3 × its own p99 at the lowest step. The first two say it
//! carried the load; the third says it did so without queueing (a proxy
//! that carries 100 % with a p99 ten times its unloaded one is already
//! saturated — its users feel the queue). The highest passing step, not
//! the first failure: on a shared machine one noisy middle step should not
//! hide that the next one was carried. `None` when no step passes.

use std::fmt::Write as _;
use std::time::Duration;

use hbone_workloads::open_loop::{OpenLoopSettings, open_loop};
use hbone_workloads::peers::{Latencies, RrSettings, rr_client};
use serde::{Deserialize, Serialize};

use crate::proc_stats::cpu_times;
use crate::runner::{RR_PORT, Servers, bounded, start_warm};
use crate::subjects::{Running, Shared, Subject, SubjectError};
use crate::topology::{SERVER_IP, Topology};

/// The full sweep's steps, in % of the reference rate.
pub const FULL_STEPS: &[f64] = &[10.0, 25.0, 50.0, 75.0, 90.0, 100.0, 110.0];
/// `--quick`'s steps: the unloaded end, the middle, and both sides of the limit.
pub const QUICK_STEPS: &[f64] = &[10.0, 50.0, 90.0, 110.0];

/// Achieved ÷ offered at or above which a step was carried.
pub const KEPT_UP: f64 = 0.95;
/// How many times its lowest step's p99 a subject's p99 may reach and
/// still be before its knee.
pub const P99_GROWTH: f64 = 3.0;

/// Bytes of each request and each response, as in `rr_unthrottled`.
const MESSAGE: usize = 1024;

/// How the sweep runs.
#[derive(Debug, Clone)]
pub struct SweepSettings {
    /// Connections every load (the maximum's and each step's) is spread over.
    pub connections: usize,
    /// Seconds of each step (and of each maximum).
    pub seconds: f64,
    /// The steps, in % of the reference rate, ascending.
    pub percents: Vec<f64>,
}

impl SweepSettings {
    /// 5 s per step, seven steps, 8 connections.
    pub fn full() -> Self {
        SweepSettings {
            connections: 8,
            seconds: 5.0,
            percents: FULL_STEPS.to_vec(),
        }
    }

    /// 1 s per step, four steps, 8 connections.
    pub fn quick() -> Self {
        SweepSettings {
            connections: 8,
            seconds: 1.0,
            percents: QUICK_STEPS.to_vec(),
        }
    }
}

/// One subject at one offered rate.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Step {
    /// The step, in % of the reference rate.
    pub percent: f64,
    /// Requests per second offered.
    pub offered_per_s: f64,
    /// Requests per second answered.
    pub achieved_per_s: f64,
    /// Requests answered.
    pub requests: u64,
    /// Requests that failed.
    pub errors: u64,
    /// Requests unanswered when the step's grace ran out.
    pub unfinished: u64,
    /// Latency from each request's due time.
    #[serde(flatten)]
    pub latency: Latencies,
    /// Both proxies' user CPU seconds per answered request (none for direct).
    pub proxy_user_cpu_s_per_request: Option<f64>,
    /// Both proxies' system CPU seconds per answered request (none for direct).
    pub proxy_system_cpu_s_per_request: Option<f64>,
}

/// Where a subject stopped keeping up (see the module doc).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Knee {
    /// The step, in % of the reference rate.
    pub percent: f64,
    /// Requests per second offered there.
    pub offered_per_s: f64,
    /// Requests per second achieved there.
    pub achieved_per_s: f64,
    /// Its p99 there, in ms.
    pub p99_ms: f64,
}

/// One subject's curve.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubjectSweep {
    /// Who was measured.
    pub subject: String,
    /// Its closed-loop maximum, requests per second.
    pub max_per_s: f64,
    /// Every step, ascending.
    pub steps: Vec<Step>,
    /// Its knee, if any step was carried.
    pub knee: Option<Knee>,
}

/// The whole sweep, as bench.json's `sweep` holds it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepReport {
    /// Connections every load was spread over.
    pub connections: usize,
    /// Seconds of each step.
    pub seconds: f64,
    /// The subject whose maximum the steps are a share of.
    pub reference_subject: String,
    /// Its maximum, requests per second.
    pub reference_per_s: f64,
    /// One curve per subject, in the order they ran.
    pub subjects: Vec<SubjectSweep>,
}

/// The subject whose maximum sets the steps: the slowest one that is not
/// direct (direct's own when it ran alone); `None` for no subjects.
pub fn reference(maxima: &[(String, f64)]) -> Option<(String, f64)> {
    let slowest = |among: &mut dyn Iterator<Item = &(String, f64)>| {
        among
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(name, max)| (name.clone(), *max))
    };
    slowest(&mut maxima.iter().filter(|(name, _)| name != "direct"))
        .or_else(|| slowest(&mut maxima.iter()))
}

/// The offered rates: `reference × percent / 100` for each step, in whole
/// requests per second (at least one).
pub fn offered_rates(reference: f64, percents: &[f64]) -> Vec<f64> {
    percents
        .iter()
        .map(|p| (reference * p / 100.0).round().max(1.0))
        .collect()
}

/// Whether a step was carried without queueing, against the p99 of the
/// subject's lowest step.
fn carried(step: &Step, lowest_p99_ms: f64) -> bool {
    step.achieved_per_s >= KEPT_UP * step.offered_per_s
        && step.errors == 0
        && step.unfinished == 0
        && step.latency.p99_ms <= P99_GROWTH * lowest_p99_ms
}

/// The knee of one subject's steps (see the module doc).
pub fn knee(steps: &[Step]) -> Option<Knee> {
    let lowest = steps
        .iter()
        .min_by(|a, b| a.offered_per_s.total_cmp(&b.offered_per_s))?;
    steps
        .iter()
        .filter(|s| carried(s, lowest.latency.p99_ms))
        .max_by(|a, b| a.offered_per_s.total_cmp(&b.offered_per_s))
        .map(|s| Knee {
            percent: s.percent,
            offered_per_s: s.offered_per_s,
            achieved_per_s: s.achieved_per_s,
            p99_ms: s.latency.p99_ms,
        })
}

/// A subject's closed-loop maximum: one `rr_client` per connection, each
/// as fast as its answers come, for `seconds`; their rates summed.
async fn maximum(topology: &Topology, s: &SweepSettings) -> std::io::Result<f64> {
    let dialer = topology.client_dialer();
    let rr = RrSettings {
        request: MESSAGE,
        response: MESSAGE,
        rate: None,
        max_requests: 10_000_000,
        duration: Duration::from_secs_f64(s.seconds),
        new_connection_each: false,
    };
    let clients = (0..s.connections).map(|_| rr_client(&dialer, SERVER_IP, RR_PORT, &rr));
    let mut total = 0.0;
    for r in futures::future::join_all(clients).await {
        total += r?.per_second;
    }
    Ok(total.round())
}

/// One step of one running subject.
async fn step(
    topology: &Topology,
    running: &Running,
    s: &SweepSettings,
    (percent, rate): (f64, f64),
) -> Result<Step, hbone_workloads::open_loop::OpenLoopError> {
    let duration = Duration::from_secs_f64(s.seconds);
    let load = OpenLoopSettings {
        request: MESSAGE,
        response: MESSAGE,
        rate,
        connections: s.connections,
        max_requests: (rate * s.seconds).ceil() as u64,
        duration,
        // An overloaded subject's backlog drains for up to a step's length.
        grace: duration.max(Duration::from_secs(1)),
    };
    let pids = running.pids();
    let before = cpu_times(&pids);
    let r = open_loop(&topology.client_dialer(), SERVER_IP, RR_PORT, &load).await?;
    let cpu = cpu_times(&pids).since(before);
    let per_request =
        |seconds: f64| (!pids.is_empty() && r.requests > 0).then(|| seconds / r.requests as f64);
    Ok(Step {
        percent,
        offered_per_s: r.offered_per_s,
        achieved_per_s: r.achieved_per_s.round(),
        requests: r.requests,
        errors: r.errors,
        unfinished: r.unfinished,
        latency: r.latency,
        proxy_user_cpu_s_per_request: per_request(cpu.user),
        proxy_system_cpu_s_per_request: per_request(cpu.system),
    })
}

/// Runs the sweep: every subject's maximum, then every step for every
/// subject in turn; `say` gets a line as each measurement starts or ends.
pub async fn run(
    subjects: &[Subject],
    settings: &SweepSettings,
    topology: &Topology,
    shared: &Shared,
    say: &mut dyn FnMut(&str),
) -> Result<SweepReport, SubjectError> {
    let servers = Servers::start(topology)?;
    let c = settings.connections;
    let limit = Duration::from_secs_f64(settings.seconds * 3.0 + 30.0);
    let mut maxima = Vec::new();
    for subject in subjects {
        say(&format!(
            "sweep: {}'s maximum ({c} connections, closed loop, {} s)",
            subject.name(),
            settings.seconds
        ));
        let running = start_warm(subject, topology, shared).await?;
        let max = bounded(subject, "maximum", limit, maximum(topology, settings)).await;
        running.stop();
        let max = max?;
        say(&format!("sweep: {}: {max:.0} requests/s", subject.name()));
        maxima.push((subject.name().to_string(), max));
    }
    let (reference_subject, reference_per_s) = reference(&maxima)
        .ok_or_else(|| SubjectError::Setup("the sweep has no subjects".into()))?;
    let rates = offered_rates(reference_per_s, &settings.percents);
    let mut curves: Vec<Vec<Step>> = vec![Vec::new(); subjects.len()];
    for (i, (percent, rate)) in settings.percents.iter().zip(&rates).enumerate() {
        for (subject, curve) in subjects.iter().zip(&mut curves) {
            let running = start_warm(subject, topology, shared).await?;
            let measuring = step(topology, &running, settings, (*percent, *rate));
            let what = format!("sweep step {percent} %");
            let measured = bounded(subject, &what, limit, measuring).await;
            running.stop();
            let measured = measured?;
            say(&format!(
                "sweep: step {}/{} · {percent} % of {reference_subject}'s maximum · {rate:.0}/s offered · {}: {:.0}/s achieved, p99 {:.3} ms",
                i + 1,
                rates.len(),
                subject.name(),
                measured.achieved_per_s,
                measured.latency.p99_ms
            ));
            curve.push(measured);
        }
    }
    drop(servers);
    let _ = topology.capture(false);
    let subjects = maxima
        .into_iter()
        .zip(curves)
        .map(|((subject, max_per_s), steps)| SubjectSweep {
            knee: knee(&steps),
            subject,
            max_per_s,
            steps,
        })
        .collect();
    Ok(SweepReport {
        connections: c,
        seconds: settings.seconds,
        reference_subject,
        reference_per_s,
        subjects,
    })
}

/// The sweep as a table: a block per subject, a row per step, the knee marked.
pub fn table(report: &SweepReport) -> String {
    let mut out = String::new();
    let maxima: Vec<String> = report
        .subjects
        .iter()
        .map(|s| format!("{} {:.0}/s", s.subject, s.max_per_s))
        .collect();
    let _ = writeln!(
        out,
        "maximum (closed loop, {} connections): {}; steps are % of {}'s",
        report.connections,
        maxima.join(", "),
        report.reference_subject
    );
    let _ = writeln!(
        out,
        "\n{:<10} {:>5} {:>10} {:>10} {:>8} {:>8} {:>9} {:>8} {:>8} {:>12} {:>11}",
        "subject",
        "step",
        "offered/s",
        "achieved/s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "errors",
        "user µs/req",
        "sys µs/req"
    );
    let micros = |v: Option<f64>| match v {
        Some(v) => format!("{:.1}", v * 1e6),
        None => "-".into(),
    };
    for curve in &report.subjects {
        for s in &curve.steps {
            let is_knee = curve.knee.as_ref().is_some_and(|k| k.percent == s.percent);
            let _ = writeln!(
                out,
                "{:<10} {:>4}% {:>10.0} {:>10.0} {:>8.3} {:>8.3} {:>9.3} {:>8.3} {:>8} {:>12} {:>11}{}",
                curve.subject,
                s.percent,
                s.offered_per_s,
                s.achieved_per_s,
                s.latency.p50_ms,
                s.latency.p99_ms,
                s.latency.p999_ms,
                s.latency.max_ms,
                s.errors + s.unfinished,
                micros(s.proxy_user_cpu_s_per_request),
                micros(s.proxy_system_cpu_s_per_request),
                if is_knee { "  ◀ knee" } else { "" }
            );
        }
        if curve.knee.is_none() {
            let _ = writeln!(out, "{:<10} no step was carried: no knee", curve.subject);
        }
    }
    out
}

/// Steps and a report with made-up figures, for tests of the knee, the
/// table and the chart.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;

    pub(crate) fn step(percent: f64, offered: f64, achieved: f64, p99_ms: f64) -> Step {
        Step {
            percent,
            offered_per_s: offered,
            achieved_per_s: achieved,
            requests: achieved as u64,
            errors: 0,
            unfinished: 0,
            latency: Latencies {
                p50_ms: p99_ms / 2.0,
                p90_ms: p99_ms,
                p99_ms,
                p999_ms: p99_ms,
                max_ms: p99_ms,
            },
            proxy_user_cpu_s_per_request: None,
            proxy_system_cpu_s_per_request: None,
        }
    }

    pub(crate) fn report() -> SweepReport {
        let direct = vec![
            step(10.0, 100.0, 100.0, 0.1),
            step(110.0, 1100.0, 1100.0, 0.1),
        ];
        SweepReport {
            connections: 8,
            seconds: 1.0,
            reference_subject: "hbone-lab".into(),
            reference_per_s: 1000.0,
            subjects: vec![
                SubjectSweep {
                    subject: "direct".into(),
                    max_per_s: 3000.0,
                    knee: knee(&direct),
                    steps: direct,
                },
                SubjectSweep {
                    subject: "hbone-lab".into(),
                    max_per_s: 1000.0,
                    steps: vec![step(10.0, 100.0, 10.0, 0.3)],
                    knee: None,
                },
            ],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{report, step};
    use super::*;

    #[test]
    fn the_reference_is_the_slowest_proxy_not_direct() {
        let maxima = |m: &[(&str, f64)]| -> Vec<(String, f64)> {
            m.iter().map(|(n, v)| (n.to_string(), *v)).collect()
        };
        let all = maxima(&[
            ("direct", 900.0),
            ("hbone-lab", 5000.0),
            ("ztunnel", 4000.0),
        ]);
        assert_eq!(reference(&all), Some(("ztunnel".into(), 4000.0)));
        // direct is slower than both here, and still not the reference.
        let slow_direct = maxima(&[("direct", 10.0), ("hbone-lab", 5000.0)]);
        assert_eq!(reference(&slow_direct), Some(("hbone-lab".into(), 5000.0)));
        assert_eq!(
            reference(&maxima(&[("direct", 7.0)])),
            Some(("direct".into(), 7.0))
        );
        assert_eq!(reference(&[]), None);
    }

    #[test]
    fn steps_are_shares_of_the_reference_in_whole_requests() {
        assert_eq!(
            offered_rates(4321.0, FULL_STEPS),
            [432.0, 1080.0, 2161.0, 3241.0, 3889.0, 4321.0, 4753.0]
        );
        assert_eq!(
            offered_rates(3.0, &[10.0]),
            [1.0],
            "never below one per second"
        );
        assert!(QUICK_STEPS.windows(2).all(|w| w[0] < w[1]));
        assert!(FULL_STEPS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn the_knee_is_the_highest_step_carried_without_queueing() {
        let steps = [
            step(10.0, 100.0, 100.0, 0.2),
            step(50.0, 500.0, 499.0, 0.3),
            step(90.0, 900.0, 870.0, 0.59), // 96.7 % achieved, p99 under 3×
            step(110.0, 1100.0, 950.0, 40.0),
        ];
        let k = knee(&steps).unwrap();
        assert_eq!((k.percent, k.offered_per_s, k.p99_ms), (90.0, 900.0, 0.59));
    }

    #[test]
    fn a_step_fails_on_rate_on_latency_or_on_lost_requests() {
        let lowest = step(10.0, 100.0, 100.0, 0.2);
        // Kept up in rate, but p99 above 3 × 0.2 ms: queueing.
        let queued = [lowest.clone(), step(50.0, 500.0, 500.0, 0.61)];
        assert_eq!(knee(&queued).unwrap().percent, 10.0);
        // Fast, but 94 % of the offered rate.
        let short = [lowest.clone(), step(50.0, 500.0, 470.0, 0.2)];
        assert_eq!(knee(&short).unwrap().percent, 10.0);
        // Fast and on rate, but a request failed or went unanswered.
        for lost in [(1, 0), (0, 1)] {
            let mut s = step(50.0, 500.0, 500.0, 0.2);
            (s.errors, s.unfinished) = lost;
            assert_eq!(knee(&[lowest.clone(), s]).unwrap().percent, 10.0);
        }
        // Nothing carried, not even the lowest step.
        assert_eq!(knee(&[step(10.0, 100.0, 50.0, 0.2)]), None);
        assert_eq!(knee(&[]), None);
    }

    #[test]
    fn a_noisy_middle_step_does_not_hide_a_carried_higher_one() {
        let steps = [
            step(10.0, 100.0, 100.0, 0.2),
            step(25.0, 250.0, 250.0, 0.9), // one noisy step
            step(50.0, 500.0, 500.0, 0.3),
            step(75.0, 750.0, 600.0, 5.0),
        ];
        assert_eq!(knee(&steps).unwrap().percent, 50.0);
    }

    #[test]
    fn the_table_marks_each_knee_and_says_when_there_is_none() {
        let t = table(&report());
        assert!(t.contains("steps are % of hbone-lab's"), "{t}");
        let knee_rows: Vec<&str> = t.lines().filter(|l| l.contains("◀ knee")).collect();
        assert_eq!(knee_rows.len(), 1, "{t}");
        assert!(
            knee_rows[0].starts_with("direct") && knee_rows[0].contains("110%"),
            "{t}"
        );
        assert!(t.contains("hbone-lab  no step was carried"), "{t}");
    }
}
