//! One report per connection, whatever listener took it: made when the
//! connection is accepted (with the client's address), it ends either
//! refused — counted under its reason in `hbone_refusals_total`, one
//! warning naming the client, an entry in the connection log — or opened
//! and later finished: ztunnel's connection metrics, the connection log's
//! open entry closed with its bytes and outcome, and one "connection
//! complete" line. ztunnel's `ConnectionResult` plays this part there.
//!
//! Every listener writes the same three things the same way, so a refusal
//! cannot be counted and forgotten in the log (the HBONE port's
//! connection-level refusals used to be), and the log line always carries
//! the client's address, even at `warn` where the connection's span is off.
//!
//! The report borrows the proxy's metrics and connection log rather than
//! holding references counted per connection: it lives as long as the
//! connection, idle ones included, inside the task that carries it.

use std::fmt::Display;
use std::net::SocketAddr;
use std::time::Instant;

use tracing::{info, warn};

use crate::observe::connection_log::{ConnectionLog, ConnectionRecord, Outcome};
use crate::observe::metrics::{ConnectionGuard, ConnectionLabels, ProxyMetrics};
use crate::observe::refusal::{Direction, Reason};

/// A connection not yet carrying bytes: what is known of it so far.
pub struct ConnectionReport<'a> {
    metrics: &'a ProxyMetrics,
    log: &'a ConnectionLog,
    record: ConnectionRecord,
}

impl<'a> ConnectionReport<'a> {
    /// A connection accepted from `src` (when known) for `dst` (when known).
    pub fn new(
        metrics: &'a ProxyMetrics,
        log: &'a ConnectionLog,
        direction: Direction,
        src: Option<SocketAddr>,
        dst: Option<SocketAddr>,
    ) -> Self {
        ConnectionReport {
            metrics,
            log,
            record: ConnectionRecord::new(direction, src, dst),
        }
    }

    /// What the connection log will show; fill in what is learned (the
    /// workloads, the peer's identity, the decision, TLS).
    pub fn record(&mut self) -> &mut ConnectionRecord {
        &mut self.record
    }

    /// Refused before it carried anything: counted under `reason`, said
    /// once with the client's address, and kept in the connection log as
    /// `<reason>: <detail>`.
    pub fn refuse(self, reason: Reason, detail: impl Display) {
        let ConnectionReport {
            metrics,
            log,
            record,
        } = self;
        metrics.refused(record.direction, reason);
        let detail = detail.to_string();
        warn!(
            direction = record.direction.log_name(),
            src.addr = %Addr(record.src_addr),
            dst.addr = %Addr(record.dst_addr),
            %reason,
            detail = %detail,
            "connection refused"
        );
        log.refused(record, format!("{reason}: {detail}"));
    }

    /// Carrying bytes from now on, counted under `labels` (ztunnel's).
    pub fn open(self, labels: ConnectionLabels) -> OpenReport<'a> {
        let guard = ConnectionGuard::open(self.metrics, labels);
        let id = self.log.open(self.record);
        OpenReport {
            log: self.log,
            guard,
            id,
            started: Instant::now(),
            finished: false,
        }
    }
}

/// A connection carrying bytes; [`OpenReport::finish`] ends it. Dropped
/// without finishing (its task cancelled or panicking), it is closed as
/// failed, in the metrics and in the connection log alike.
pub struct OpenReport<'a> {
    log: &'a ConnectionLog,
    guard: ConnectionGuard,
    id: u64,
    started: Instant,
    finished: bool,
}

impl Drop for OpenReport<'_> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        self.guard.failed = true;
        if let Some(record) = self.log.take_open(self.id) {
            let why = "the connection's task ended before it finished".to_string();
            self.log
                .keep(record.finished(Outcome::Failed, 0, 0, Some(why)));
        }
    }
}

impl OpenReport<'_> {
    /// Ends it: `sent` bytes went towards the client (responses),
    /// `received` came from it; `revoked` when a policy change closed it,
    /// `error` when it broke.
    pub fn finish(mut self, sent: u64, received: u64, revoked: bool, error: Option<&dyn Display>) {
        self.guard.sent = sent;
        self.guard.received = received;
        self.guard.failed = error.is_some();
        let outcome = match (revoked, error) {
            (true, _) => Outcome::Revoked,
            (false, Some(_)) => Outcome::Failed,
            (false, None) => Outcome::Closed,
        };
        let detail = error.map(|e| e.to_string());
        self.finished = true;
        let Some(record) = self.log.take_open(self.id) else {
            return;
        };
        let record = record.finished(outcome, sent, received, detail);
        info!(
            direction = record.direction.log_name(),
            src.addr = %Addr(record.src_addr),
            src.identity = record.source_identity().as_deref().unwrap_or("-"),
            src.workload = record.src_workload.as_ref().map_or("-", |w| &*w.name),
            dst.addr = %Addr(record.dst_addr),
            dst.workload = record.dst_workload.as_ref().map_or("-", |w| &*w.name),
            policy = record.decision.as_ref().map_or("-", |d| d.reason.as_str()),
            bytes_sent = sent,
            bytes_recv = received,
            duration_ms = self.started.elapsed().as_millis() as u64,
            outcome = outcome.as_str(),
            error = record.detail().unwrap_or_default(),
            "connection complete"
        );
        self.log.keep(record);
    }
}

/// An address, or `-` where it is not known.
struct Addr(Option<SocketAddr>);

impl Display for Addr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(a) => a.fmt(f),
            None => f.write_str("-"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Option<SocketAddr> {
        s.parse().ok()
    }

    #[test]
    fn a_refusal_is_counted_and_logged_with_the_client_address() {
        let (metrics, log) = (ProxyMetrics::default(), ConnectionLog::new(10));
        let report = ConnectionReport::new(
            &metrics,
            &log,
            Direction::Inbound,
            addr("10.0.0.1:4000"),
            addr("10.0.0.2:15008"),
        );
        report.refuse(Reason::Alpn, "ALPN http/1.1 negotiated; HBONE needs h2");
        assert_eq!(metrics.refusal_count(Direction::Inbound, Reason::Alpn), 1);
        let (open, done) = log.snapshot();
        assert!(open.is_empty());
        assert_eq!(done[0].src_addr, "10.0.0.1:4000");
        assert_eq!(done[0].outcome, Outcome::Refused);
        assert_eq!(
            done[0].detail.as_deref(),
            Some("alpn: ALPN http/1.1 negotiated; HBONE needs h2")
        );
    }

    #[test]
    fn an_opened_connection_is_open_in_the_log_until_finished_with_its_bytes() {
        let (metrics, log) = (ProxyMetrics::default(), ConnectionLog::new(10));
        let report = ConnectionReport::new(
            &metrics,
            &log,
            Direction::Outbound,
            addr("10.0.0.1:4000"),
            addr("10.0.0.2:80"),
        );
        let labels = ConnectionLabels::new("source", None, None, None, None, true);
        let open = report.open(labels.clone());
        assert_eq!(log.snapshot().0.len(), 1);
        assert_eq!(metrics.opened.get_or_create(&labels).get(), 1);
        open.finish(7, 11, false, None);
        let (open, done) = log.snapshot();
        assert!(open.is_empty());
        assert_eq!((done[0].bytes_sent, done[0].bytes_recv), (7, 11));
        assert_eq!(done[0].outcome, Outcome::Closed);
        assert_eq!(metrics.sent_bytes.get_or_create(&labels).get(), 7);
        assert_eq!(metrics.closed.get_or_create(&labels).get(), 1);

        let report = ConnectionReport::new(&metrics, &log, Direction::Outbound, None, None);
        let broken = std::io::Error::other("reset by peer");
        report
            .open(labels.clone())
            .finish(0, 0, true, Some(&broken));
        let done = log.snapshot().1;
        assert_eq!(done[1].outcome, Outcome::Revoked);
        assert_eq!(done[1].detail.as_deref(), Some("reset by peer"));
        assert_eq!(metrics.failed.get_or_create(&labels).get(), 1);

        // A report dropped unfinished (its task cancelled) closes as failed.
        let report = ConnectionReport::new(&metrics, &log, Direction::Outbound, None, None);
        drop(report.open(labels.clone()));
        let (open, done) = log.snapshot();
        assert!(open.is_empty(), "no entry left open");
        assert_eq!(done[2].outcome, Outcome::Failed);
        assert_eq!(metrics.failed.get_or_create(&labels).get(), 2);
        assert_eq!(metrics.closed.get_or_create(&labels).get(), 3);
    }
}
