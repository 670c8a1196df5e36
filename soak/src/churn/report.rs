//! What a churn run found, per subject: how each way of ending went, the
//! pods and restarts gone through, the idle baseline and what was left
//! over once the load stopped, and the slopes fitted after warm-up — as
//! JSON (every second's sample kept, for charts) and as text.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::samples::Sample;
use super::schedule::Plan;
use super::ways::{Way, WayTally};

/// Below this much churn a slope says little: it is reported, not judged.
pub const JUDGED_FROM_SECONDS: f64 = 300.0;
/// The most memory growth per hour that counts as flat.
pub const MAX_MIB_PER_HOUR: f64 = 1.0;

/// One subject's churn.
#[derive(Debug, Clone, Serialize)]
pub struct SubjectChurn {
    /// `hbone-lab` or `ztunnel`.
    pub subject: String,
    /// Seconds of churn (warm-up and drain not counted).
    pub churn_seconds: f64,
    /// Each way's connections.
    pub ways: BTreeMap<Way, WayTally>,
    /// Pods handed over and taken back.
    pub pods_added: u64,
    /// Pods whose add or removal the proxy refused or did not acknowledge in time.
    pub pod_errors: u64,
    /// The first few of those, as `pod: why`.
    pub pod_error_examples: Vec<String>,
    /// Control-plane restarts gone through.
    pub control_plane_restarts: u64,
    /// The reading at the end of each pause of the load, when every
    /// connection should have ended and the pools let go of them.
    pub after_pauses: Vec<Sample>,
    /// The idle reading after warm-up.
    pub baseline: Sample,
    /// The most of each quantity seen during the churn.
    pub peak: Sample,
    /// The reading once the load had stopped and the drain had passed.
    pub after: Sample,
    /// Descriptors open after the drain beyond the baseline.
    pub fds_left_over: i64,
    /// How long after the load stopped the descriptors were back at the
    /// baseline; `None` if they never were.
    pub fds_back_after_s: Option<f64>,
    /// Async tasks alive after the drain beyond the baseline (hbone-lab only).
    pub tasks_left_over: Option<i64>,
    /// Resident memory's growth during the churn, MiB per hour.
    pub rss_mib_per_hour: Option<f64>,
    /// Descriptors' growth during the churn, per hour.
    pub fds_per_hour: Option<f64>,
    /// Tasks' growth during the churn, per hour (hbone-lab only).
    pub tasks_per_hour: Option<f64>,
    /// Every second's reading, from the subject's start.
    pub samples: Vec<Sample>,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct ChurnReport {
    /// Client loops at once.
    pub clients: usize,
    /// The payloads' seed.
    pub seed: u64,
    /// Both meshes' pool idle timeout, seconds.
    pub pool_idle_s: f64,
    /// The rhythm every subject went through.
    pub plan: Plan,
    /// hbone-lab first, then ztunnel where it ran.
    pub subjects: Vec<SubjectChurn>,
}

impl SubjectChurn {
    /// What this subject's churn shows wrong (empty: nothing).
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.fds_left_over > 0 {
            out.push(format!(
                "{} descriptors more than the idle baseline ({}) once the load stopped",
                self.fds_left_over, self.baseline.fds
            ));
        }
        if let Some(left) = self.tasks_left_over.filter(|n| *n > 0) {
            out.push(format!("{left} async tasks more than the idle baseline"));
        }
        if self.churn_seconds >= JUDGED_FROM_SECONDS
            && let Some(slope) = self.rss_mib_per_hour.filter(|s| *s > MAX_MIB_PER_HOUR)
        {
            out.push(format!(
                "memory grew {slope:.2} MiB/hour (at most {MAX_MIB_PER_HOUR} counts as flat)"
            ));
        }
        if self.pod_errors > 0 {
            out.push(format!("{} pod changes failed", self.pod_errors));
        }
        out
    }
}

impl ChurnReport {
    /// Whether hbone-lab came through clean (ztunnel is reported, not judged).
    pub fn passed(&self) -> bool {
        self.subjects
            .iter()
            .filter(|s| s.subject == "hbone-lab")
            .all(|s| s.problems().is_empty())
    }

    /// The report as lines to read.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for s in &self.subjects {
            let _ = writeln!(
                out,
                "\n{}: {:.0} s of churn, {} pods added and removed, {} control-plane restarts",
                s.subject, s.churn_seconds, s.pods_added, s.control_plane_restarts
            );
            for (way, t) in &s.ways {
                let otherwise: Vec<String> = t
                    .otherwise
                    .iter()
                    .map(|(why, n)| format!("{why} {n}"))
                    .collect();
                let _ = writeln!(
                    out,
                    "  {:<13} {:>7} connections, {:>7} ended as meant{}",
                    way.as_str(),
                    t.attempted,
                    t.ended_as_meant,
                    if otherwise.is_empty() {
                        String::new()
                    } else {
                        format!(", otherwise: {}", otherwise.join(", "))
                    }
                );
            }
            let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
            let _ = writeln!(
                out,
                "  memory   idle {:.1} MiB, peak {:.1} MiB, after {:.1} MiB; slope {}",
                mib(s.baseline.rss),
                mib(s.peak.rss),
                mib(s.after.rss),
                per_hour(s.rss_mib_per_hour, "MiB")
            );
            let _ = writeln!(
                out,
                "  fds      idle {}, peak {}, after {} ({:+}); {}; slope {}",
                s.baseline.fds,
                s.peak.fds,
                s.after.fds,
                s.fds_left_over,
                match s.fds_back_after_s {
                    Some(at) => format!("back to idle {at:.0} s after the load stopped"),
                    None => "never back to idle".to_string(),
                },
                per_hour(s.fds_per_hour, "")
            );
            if let (Some(low), Some(high)) = (
                s.after_pauses.iter().map(|p| p.fds).min(),
                s.after_pauses.iter().map(|p| p.fds).max(),
            ) {
                let _ = writeln!(
                    out,
                    "  fds at the end of each of {} pauses: {low} to {high}",
                    s.after_pauses.len()
                );
            }
            if let (Some(idle), Some(peak), Some(after)) =
                (s.baseline.tasks, s.peak.tasks, s.after.tasks)
            {
                let _ = writeln!(
                    out,
                    "  tasks    idle {idle}, peak {peak}, after {after}; slope {}",
                    per_hour(s.tasks_per_hour, "")
                );
            }
            let _ = writeln!(
                out,
                "  threads  idle {}, peak {}, after {}",
                s.baseline.threads, s.peak.threads, s.after.threads
            );
            for problem in s.problems() {
                let _ = writeln!(out, "  PROBLEM: {problem}");
            }
        }
        out
    }
}

fn per_hour(value: Option<f64>, unit: &str) -> String {
    match value {
        Some(v) => format!(
            "{v:+.2}{}{unit}/hour",
            if unit.is_empty() { "" } else { " " }
        ),
        None => "none fitted".to_string(),
    }
}
