//! When the soak's faults happen, and which failures each one excuses.
//!
//! The faults repeat in cycles of at most a minute (one cycle for a short
//! run, ten for a ten-minute one): the CA goes away and comes back, the
//! server-side proxy is handed over to a new process, then killed and
//! restarted, then a DENY policy comes and goes. Certificates rotate all
//! along, their lifetime short.
//!
//! Only two faults may fail connections — a killed proxy and a policy that
//! denies them. Every other failure is a defect, and so is any failure of a
//! connection started during a hand-over.

use std::time::Duration;

use serde::Serialize;

/// One thing the schedule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// The CA stops answering.
    CaStop,
    /// The CA is back.
    CaStart,
    /// A new server-side proxy takes the pod; the old one drains and exits.
    Handover,
    /// The server-side proxy is killed (SIGKILL).
    Kill,
    /// A new server-side proxy is started after a kill.
    Restart,
    /// A DENY policy for the soak's traffic is applied.
    DenyOn,
    /// It is removed.
    DenyOff,
}

impl Fault {
    /// The fault's name in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::CaStop => "ca_stop",
            Fault::CaStart => "ca_start",
            Fault::Handover => "handover",
            Fault::Kill => "kill",
            Fault::Restart => "restart",
            Fault::DenyOn => "deny_on",
            Fault::DenyOff => "deny_off",
        }
    }
}

/// A stretch of the run a failure can be blamed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Window {
    /// No fault under way.
    Steady,
    /// The CA is away.
    CaOutage,
    /// A proxy hands its pod over to a new one.
    Handover,
    /// The server-side proxy was killed and is restarting.
    Kill,
    /// A DENY policy is in force.
    Deny,
}

impl Window {
    /// The window's name in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Window::Steady => "steady",
            Window::CaOutage => "ca_outage",
            Window::Handover => "handover",
            Window::Kill => "kill",
            Window::Deny => "deny",
        }
    }

    /// Whether connections may fail in this window.
    pub fn excuses_failures(self) -> bool {
        matches!(self, Window::Kill | Window::Deny)
    }

    /// When a failure falls in more than one window, the one that excuses
    /// it wins, then the hand-over (whose failures are counted apart).
    fn precedence(self) -> u8 {
        match self {
            Window::Kill | Window::Deny => 3,
            Window::Handover => 2,
            Window::CaOutage => 1,
            Window::Steady => 0,
        }
    }
}

/// The faults of a run of `total`, each at its offset from the start.
/// The CA is away for `ca_outage`, or a sixth of a cycle if that is shorter.
pub fn faults(total: Duration, ca_outage: Duration) -> Vec<(Duration, Fault)> {
    let cycle = total.min(Duration::from_secs(60));
    let outage = ca_outage.min(cycle / 6);
    let mut events = Vec::new();
    let mut start = Duration::ZERO;
    while start + cycle <= total {
        let at = |fraction: f64| start + cycle.mul_f64(fraction);
        events.push((at(0.10), Fault::CaStop));
        events.push((at(0.10) + outage, Fault::CaStart));
        events.push((at(0.40), Fault::Handover));
        events.push((at(0.60), Fault::Kill));
        events.push((at(0.60) + Duration::from_secs(1), Fault::Restart));
        events.push((at(0.78), Fault::DenyOn));
        events.push((at(0.86), Fault::DenyOff));
        start += cycle;
    }
    events
}

/// The windows as they really happened: each from its fault's start to
/// when the system was back (plus a settling margin).
#[derive(Debug, Default, Clone, Serialize)]
pub struct Windows {
    spans: Vec<(Window, Duration, Duration)>,
}

impl Windows {
    /// Records that `window` lasted from `from` to `to`.
    pub fn add(&mut self, window: Window, from: Duration, to: Duration) {
        self.spans.push((window, from, to));
    }

    /// The window a connection that ran from `started` to `ended` is blamed on.
    pub fn blame(&self, started: Duration, ended: Duration) -> Window {
        self.spans
            .iter()
            .filter(|(_, from, to)| started <= *to && ended >= *from)
            .map(|(w, _, _)| *w)
            .max_by_key(|w| w.precedence())
            .unwrap_or(Window::Steady)
    }

    /// Whether a connection started during a hand-over.
    pub fn started_in_handover(&self, started: Duration) -> bool {
        self.spans
            .iter()
            .any(|(w, from, to)| *w == Window::Handover && (*from..=*to).contains(&started))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn a_short_run_has_one_cycle_and_a_long_one_repeats_it() {
        let short = faults(secs(20.0), secs(10.0));
        assert_eq!(short.len(), 7);
        let (stop, start) = (short[0].0, short[1].0);
        assert!(
            start - stop <= secs(20.0 / 6.0) + secs(0.001),
            "the outage fits the cycle"
        );
        assert!(short.windows(2).all(|w| w[0].0 <= w[1].0), "in order");
        let long = faults(secs(600.0), secs(10.0));
        assert_eq!(long.len(), 70);
        assert_eq!(long[1].0 - long[0].0, secs(10.0));
        assert!(long.last().unwrap().0 < secs(600.0));
    }

    #[test]
    fn failures_are_blamed_on_the_window_that_excuses_them() {
        let mut w = Windows::default();
        w.add(Window::CaOutage, secs(2.0), secs(5.0));
        w.add(Window::Handover, secs(8.0), secs(9.0));
        w.add(Window::Kill, secs(9.0), secs(11.0));
        assert_eq!(w.blame(secs(0.5), secs(1.0)), Window::Steady);
        assert_eq!(w.blame(secs(3.0), secs(3.1)), Window::CaOutage);
        assert_eq!(w.blame(secs(8.5), secs(8.6)), Window::Handover);
        // Started in the hand-over, cut by the kill: the kill excuses it.
        assert_eq!(w.blame(secs(8.9), secs(9.5)), Window::Kill);
        assert!(w.blame(secs(9.5), secs(9.6)).excuses_failures());
        assert!(w.started_in_handover(secs(8.0)));
        assert!(!w.started_in_handover(secs(7.9)));
    }
}
