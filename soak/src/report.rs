//! What a soak found: counts of connections and bytes, every failure by the
//! window it fell in, its phase and its reason, the faults as they happened,
//! and each proxy's peak memory and file descriptors — as JSON (`--json`)
//! and as a few lines of text.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::load::{Failure, Phase};
use super::schedule::{Fault, Window, Windows};

/// Failures of one kind.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FailureGroup {
    /// The window they fell in.
    pub window: Window,
    /// The phase they failed in.
    pub phase: Phase,
    /// Why.
    pub reason: &'static str,
    /// How many.
    pub count: u64,
    /// Whether the window excuses them (a killed proxy, a DENY policy).
    pub excused: bool,
}

/// One fault as it was carried out.
#[derive(Debug, Clone, Serialize)]
pub struct FaultRecord {
    /// When it began, seconds from the start.
    pub at_s: f64,
    /// Which fault.
    pub fault: Fault,
    /// How long it took until the system was back (or the step done).
    pub took_ms: u64,
    /// What was seen.
    pub detail: String,
}

/// The most a proxy (over all its processes) used.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProxyPeak {
    /// The largest resident memory seen, in bytes.
    pub peak_rss_bytes: u64,
    /// The most file descriptors seen open.
    pub peak_fds: u64,
    /// How many processes it ran as, over the run (each hand-over and restart adds one).
    pub processes: u32,
}

#[derive(Debug, Clone, Serialize)]
/// What a soak found: its verdict is [`SoakReport::passed`].
pub struct SoakReport {
    /// How long it ran.
    pub seconds: f64,
    /// Clients at once.
    pub clients: usize,
    /// The load's seed.
    pub seed: u64,
    /// The certificates' lifetime, in seconds.
    pub cert_ttl_s: f64,
    /// How long the CA was away each cycle, in seconds.
    pub ca_outage_s: f64,
    /// Connections tried.
    pub connections_attempted: u64,
    /// Connections that carried every payload intact.
    pub connections_succeeded: u64,
    /// Failed connections by reason, whatever the window.
    pub connections_failed: BTreeMap<String, u64>,
    /// Failures grouped by window, phase and reason.
    pub failures: Vec<FailureGroup>,
    /// Failures no fault excuses: must be zero.
    pub unexcused_failures: u64,
    /// Connections started during a hand-over that failed: must be zero.
    pub failed_new_connections_during_handover: u64,
    /// Payload bytes sent.
    pub bytes_sent: u64,
    /// Bytes that came back as sent.
    pub bytes_verified: u64,
    /// Bytes that came back different from what was sent: must be zero.
    pub bytes_corrupted: u64,
    /// Every fault, as it was carried out.
    pub faults: Vec<FaultRecord>,
    /// Certificates the CA signed during the run.
    pub certificates_issued: u64,
    /// Each proxy's peak use.
    pub proxies: BTreeMap<String, ProxyPeak>,
    /// The client-side proxy's own count of what it refused, by reason.
    pub client_proxy_refusals: BTreeMap<String, u64>,
}

/// The failure tallies of a report, from the failures and the windows.
pub struct FailureSummary {
    /// Failures by reason.
    pub by_reason: BTreeMap<String, u64>,
    /// Failures grouped by window, phase and reason.
    pub groups: Vec<FailureGroup>,
    /// Failures no window excuses.
    pub unexcused: u64,
    /// Connections started during a hand-over that failed.
    pub during_handover: u64,
}

/// Groups `failures` by the window each started in, and counts what no fault excuses.
pub fn summarize_failures(failures: &[Failure], windows: &Windows) -> FailureSummary {
    let mut by_reason = BTreeMap::new();
    let mut groups: BTreeMap<(Window, Phase, &'static str), u64> = BTreeMap::new();
    let mut during_handover = 0;
    for f in failures {
        *by_reason.entry(f.reason.to_string()).or_insert(0) += 1;
        let window = windows.blame(f.started, f.ended);
        *groups.entry((window, f.phase, f.reason)).or_insert(0) += 1;
        if windows.started_in_handover(f.started) && !window.excuses_failures() {
            during_handover += 1;
        }
    }
    let groups: Vec<FailureGroup> = groups
        .into_iter()
        .map(|((window, phase, reason), count)| FailureGroup {
            window,
            phase,
            reason,
            count,
            excused: window.excuses_failures(),
        })
        .collect();
    let unexcused = groups.iter().filter(|g| !g.excused).map(|g| g.count).sum();
    FailureSummary {
        by_reason,
        groups,
        unexcused,
        during_handover,
    }
}

impl SoakReport {
    /// Whether the run kept every promise: no corruption, no failure
    /// outside a kill or a DENY, none during a hand-over.
    pub fn passed(&self) -> bool {
        self.bytes_corrupted == 0
            && self.unexcused_failures == 0
            && self.failed_new_connections_during_handover == 0
    }

    /// The report for a terminal.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "soak: {:.0} s, {} clients, certificates of {:.0} s, CA away {:.0} s per cycle",
            self.seconds, self.clients, self.cert_ttl_s, self.ca_outage_s
        );
        let _ = writeln!(
            out,
            "connections: {} attempted, {} succeeded, {} failed",
            self.connections_attempted,
            self.connections_succeeded,
            self.connections_attempted - self.connections_succeeded
        );
        let _ = writeln!(
            out,
            "bytes: {} sent, {} verified, {} corrupted",
            self.bytes_sent, self.bytes_verified, self.bytes_corrupted
        );
        for g in &self.failures {
            let _ = writeln!(
                out,
                "  {:>6} × {:<10} {:<9} {:<14} {}",
                g.count,
                g.window.as_str(),
                g.phase.as_str(),
                g.reason,
                if g.excused {
                    "(excused)"
                } else {
                    "NOT EXCUSED"
                }
            );
        }
        let _ = writeln!(out, "faults:");
        for f in &self.faults {
            let _ = writeln!(
                out,
                "  {:>7.1} s  {:<9} {:>6} ms  {}",
                f.at_s,
                f.fault.as_str(),
                f.took_ms,
                f.detail
            );
        }
        let _ = writeln!(out, "certificates issued: {}", self.certificates_issued);
        for (node, p) in &self.proxies {
            let _ = writeln!(
                out,
                "proxy {node}: peak RSS {:.1} MiB, peak {} fds, {} process(es)",
                p.peak_rss_bytes as f64 / (1 << 20) as f64,
                p.peak_fds,
                p.processes
            );
        }
        if !self.client_proxy_refusals.is_empty() {
            let refusals: Vec<String> = self
                .client_proxy_refusals
                .iter()
                .map(|(r, n)| format!("{r} {n}"))
                .collect();
            let _ = writeln!(out, "client-side proxy refused: {}", refusals.join(", "));
        }
        let _ = writeln!(
            out,
            "unexcused failures: {}; failed new connections during hand-over: {} → {}",
            self.unexcused_failures,
            self.failed_new_connections_during_handover,
            if self.passed() { "PASSED" } else { "FAILED" }
        );
        out
    }
}
