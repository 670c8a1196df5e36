//! How each proxy's cost grows as its work grows — the figures no one
//! publishes. Three curves, for hbone-lab and (given) ztunnel in one run:
//!
//! - [`workloads`](mod@workloads) (`scale_workloads`): memory per workload known.
//! - [`policies`] (`scale_policies`): new connections per second and their
//!   p99 with 1, 100 and 1 000 AuthorizationPolicies selecting the
//!   destination, all but one not matching.
//! - [`connections`] (`scale_connections`): memory per open idle proxied
//!   connection at 1 000 and 10 000, and how long a policy change takes to
//!   judge them all again (until the last one it denies is closed).
//!
//! The rows are points of a curve, not repetitions: each is reported as it
//! was measured, one per size and subject, under bench.json's `scale`.
//! For the last two curves hbone-lab is fed over xDS by the bench's control
//! plane, as ztunnel is, so both get the same translated policies the same
//! way and a policy change reaches both at the same moment.

pub mod connections;
pub mod policies;
pub mod workloads;

use std::fmt::Write as _;
use std::process::Child;
use std::time::Duration;

pub use workloads::workloads;

use crate::proc_stats::rss_bytes;
use crate::runner::Sample;
use crate::subjects::SubjectError;

/// The curves, by the names `--scenarios` picks them with.
pub const CURVES: &[&str] = &["scale_workloads", "scale_policies", "scale_connections"];

fn setup<E: std::fmt::Display>(e: E) -> SubjectError {
    SubjectError::Setup(e.to_string())
}

/// The sizes of each curve: `--quick` keeps them small.
#[derive(Debug, Clone)]
pub struct Sizes {
    /// Workloads known to the proxy, per point.
    pub workloads: Vec<usize>,
    /// AuthorizationPolicies selecting the destination, per point.
    pub policies: Vec<usize>,
    /// Open idle connections, per point.
    pub connections: Vec<usize>,
    /// Seconds of new connections per policy count.
    pub seconds: f64,
}

/// Measures `curves` (names from [`CURVES`]) in
/// order, each for every subject; stops at the first that fails.
pub async fn run(
    curves: &[&str],
    subjects: &[crate::subjects::Subject],
    topology: &crate::topology::Topology,
    shared: &mut crate::subjects::Shared,
    sizes: &Sizes,
    say: &mut dyn FnMut(&str),
) -> Result<Vec<Sample>, SubjectError> {
    let mut rows = Vec::new();
    for curve in curves {
        rows.extend(match *curve {
            "scale_workloads" => {
                workloads(subjects, topology, shared, &sizes.workloads, say).await?
            }
            "scale_policies" => policies::policies(subjects, topology, shared, sizes, say).await?,
            _ => connections::connections(subjects, topology, shared, sizes, say).await?,
        });
    }
    Ok(rows)
}

/// The sizes of a run.
pub fn sizes(quick: bool) -> Sizes {
    if quick {
        Sizes {
            workloads: vec![100, 1_000, 5_000],
            policies: vec![1, 10, 100],
            connections: vec![100, 500],
            seconds: 1.0,
        }
    } else {
        Sizes {
            workloads: vec![1_000, 10_000, 100_000],
            policies: vec![1, 100, 1_000],
            connections: vec![1_000, 10_000],
            seconds: 5.0,
        }
    }
}

/// RSS of a process once it has settled: a reading within 1 % of the one
/// `QUIET` seconds before it, or the last after `LIMIT` seconds.
///
/// Not sooner: both proxies parse their whole registry or local config at
/// start and free the parser's memory, and jemalloc (which both run, with
/// background purging) hands freed pages back in steps spread over its
/// decay time — readings taken every second for 25 s showed drops of 10 to
/// 30 % at 5–7 s and again at 15–18 s, with equal readings in between. Two
/// readings a second apart agreeing (this function's earlier rule) caught a
/// pause between steps and counted the parser's garbage as the registry's.
async fn settled_rss(pid: u32) -> u64 {
    const QUIET: usize = 12;
    const LIMIT: usize = 45;
    let mut readings = vec![rss_bytes(&[pid])];
    while readings.len() <= LIMIT {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = rss_bytes(&[pid]);
        readings.push(now);
        if let Some(&before) = readings.iter().rev().nth(QUIET)
            && now.abs_diff(before) * 100 <= before
        {
            return now;
        }
    }
    readings.last().copied().unwrap_or_default()
}

/// A child process killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One point of a curve: rows are not repetitions, so each is repetition 0.
fn row(
    subject: &crate::subjects::Subject,
    scenario: &str,
    figures: std::collections::BTreeMap<String, f64>,
) -> Sample {
    Sample {
        subject: subject.name().into(),
        scenario: scenario.into(),
        repetition: 0,
        figures,
    }
}

/// The columns of each curve's table: (figure, heading, scale, decimals).
fn columns(scenario: &str) -> &'static [(&'static str, &'static str, f64, usize)] {
    match scenario {
        "scale_workloads" => &[
            ("workloads", "workloads", 1.0, 0),
            ("rss_bytes", "RSS MiB", 1.0 / (1 << 20) as f64, 1),
            ("bytes_per_workload", "bytes/workload", 1.0, 0),
        ],
        "scale_policies" => &[
            ("policies", "policies", 1.0, 0),
            ("conn_per_s", "conn/s", 1.0, 0),
            ("p99_ms", "p99 ms", 1.0, 3),
        ],
        _ => &[
            ("connections", "connections", 1.0, 0),
            ("bytes_per_conn", "bytes/conn", 1.0, 0),
            ("rejudge_ms", "rejudge ms", 1.0, 1),
        ],
    }
}

/// The curves as tables: for each scenario, one row per subject and size.
pub fn table(samples: &[Sample]) -> String {
    let mut out = String::new();
    let mut scenario = "";
    for s in samples {
        let cols = columns(&s.scenario);
        if s.scenario != scenario {
            scenario = &s.scenario;
            let _ = write!(out, "\n{:<18} {:<10}", "scenario", "subject");
            for (_, heading, _, _) in cols {
                let _ = write!(out, " {heading:>15}");
            }
            out.push('\n');
        }
        let _ = write!(out, "{:<18} {:<10}", s.scenario, s.subject);
        for (key, _, scale, decimals) in cols {
            let v = s.figures.get(*key).copied().unwrap_or(f64::NAN) * scale;
            let _ = write!(out, " {v:>15.decimals$}");
        }
        out.push('\n');
    }
    out
}
