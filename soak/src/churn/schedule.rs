//! When, in a churn run, the load stops and starts, pods come and go and
//! the control planes restart: a pure function of the run's length and its
//! [`Plan`], so that hbone-lab and ztunnel go through the same run.

use std::time::Duration;

use serde::Serialize;

/// One step of the churn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// The client loops start (again).
    LoadOn,
    /// The client loops pause: every pooled connection goes idle, long
    /// enough for both meshes to release it.
    LoadOff,
    /// Pod number `n` is made and handed to its node's proxy over ZDS.
    PodAdd(u32),
    /// Pod number `n` is taken back and its namespace deleted.
    PodRemove(u32),
    /// Every control plane (CA and xDS) restarts; the proxies reconnect.
    Restart,
}

/// The churn's rhythm (seconds in JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// How long the load runs between pauses.
    #[serde(serialize_with = "seconds")]
    pub load_for: Duration,
    /// How long each pause lasts: until the abandoned tunnels' dials have
    /// timed out and the pools have released every connection gone idle.
    #[serde(serialize_with = "seconds")]
    pub pause: Duration,
    /// A pod is added this often.
    #[serde(serialize_with = "seconds")]
    pub pod_every: Duration,
    /// How long each pod lives.
    #[serde(serialize_with = "seconds")]
    pub pod_life: Duration,
    /// The control planes restart this often.
    #[serde(serialize_with = "seconds")]
    pub restart_every: Duration,
}

fn seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl Plan {
    /// The rhythm for a churn of `duration`, where an unanswered dial
    /// ends after `dial_timeout` and pools release an idle connection
    /// after `pool_idle` (checked every quarter of it): pauses long enough
    /// for both, loads of 30 s, a pod every 4 s living 6 s, and a
    /// control-plane restart every 90 s — at least one of each in a short run.
    pub fn for_run(duration: Duration, dial_timeout: Duration, pool_idle: Duration) -> Plan {
        Plan {
            load_for: Duration::from_secs(30).min(duration / 2),
            pause: dial_timeout + pool_idle * 3 / 2 + Duration::from_secs(1),
            pod_every: Duration::from_secs(4),
            pod_life: Duration::from_secs(6),
            restart_every: Duration::from_secs(90).min(duration / 2),
        }
    }
}

/// Every event of a churn of `duration`, in time order (ties keep the
/// order load, pods, restart). The load is off at the end.
pub fn events(duration: Duration, plan: &Plan) -> Vec<(Duration, Event)> {
    let mut out = Vec::new();
    let mut at = Duration::ZERO;
    while at < duration {
        out.push((at, Event::LoadOn));
        let off = (at + plan.load_for).min(duration);
        out.push((off, Event::LoadOff));
        at = off + plan.pause;
    }
    let mut n = 1;
    let mut at = plan.pod_every;
    while !plan.pod_every.is_zero() && at + plan.pod_life < duration {
        out.push((at, Event::PodAdd(n)));
        out.push((at + plan.pod_life, Event::PodRemove(n)));
        n += 1;
        at += plan.pod_every;
    }
    let mut at = plan.restart_every;
    while !plan.restart_every.is_zero() && at < duration {
        out.push((at, Event::Restart));
        at += plan.restart_every;
    }
    out.sort_by_key(|(at, _)| *at);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn a_short_run_has_a_pause_a_pod_and_a_restart() {
        let plan = Plan::for_run(S(30), S(1), S(4));
        assert_eq!(plan.load_for, S(15));
        assert_eq!(plan.pause, S(8));
        let events = events(S(30), &plan);
        let kinds: Vec<Event> = events.iter().map(|(_, e)| *e).collect();
        assert_eq!(
            events.iter().filter(|(_, e)| *e == Event::LoadOff).count(),
            2,
            "{events:?}"
        );
        assert!(kinds.contains(&Event::PodAdd(1)) && kinds.contains(&Event::PodRemove(1)));
        assert_eq!(kinds.iter().filter(|e| **e == Event::Restart).count(), 1);
        // The load ends off, at the end of the run.
        assert_eq!(
            events
                .iter()
                .rev()
                .find(|(_, e)| matches!(e, Event::LoadOn | Event::LoadOff)),
            Some(&(S(30), Event::LoadOff))
        );
    }

    #[test]
    fn events_are_in_time_order_and_every_pod_that_comes_goes() {
        let events = events(S(600), &Plan::for_run(S(600), S(10), S(5)));
        assert!(events.windows(2).all(|w| w[0].0 <= w[1].0));
        let added = events
            .iter()
            .filter(|(_, e)| matches!(e, Event::PodAdd(_)))
            .count();
        let removed = events
            .iter()
            .filter(|(_, e)| matches!(e, Event::PodRemove(_)))
            .count();
        // One every 4 s from 4 s, while its 6 s of life end before 600 s.
        assert_eq!((added, removed), (148, 148));
        assert_eq!(
            events.iter().filter(|(_, e)| *e == Event::Restart).count(),
            6
        );
        for (at, event) in &events {
            if let Event::PodAdd(n) = event {
                let gone = events
                    .iter()
                    .find(|(_, e)| *e == Event::PodRemove(*n))
                    .unwrap();
                assert_eq!(gone.0 - *at, S(6));
            }
        }
        assert!(events.iter().all(|(at, _)| *at <= S(600)));
    }
}
