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
    /// `source` from the sending proxy, `destination` from the receiving one.
    pub reporter: String,
    /// The source workload's name (`unknown` when not known).
    pub source_workload: String,
    /// The source's canonical service: its `service.istio.io/canonical-name` label, else its app.
    pub source_canonical_service: String,
    /// The source's canonical revision: its
    /// `service.istio.io/canonical-revision` label, else its version.
    pub source_canonical_revision: String,
    /// The source workload's namespace.
    pub source_workload_namespace: String,
    /// The source's SPIFFE identity (`unknown` when it is not known).
    pub source_principal: String,
    /// The source's `app` (or `app.kubernetes.io/name`) label, else its name.
    pub source_app: String,
    /// The source's `version` label, else `latest`.
    pub source_version: String,
    /// The source's cluster: `Kubernetes` when the source is known.
    pub source_cluster: String,
    /// The dialed service's hostname (`name.namespace.svc.cluster.local`), else `unknown`.
    pub destination_service: String,
    /// The dialed service's namespace.
    pub destination_service_namespace: String,
    /// The dialed service's name.
    pub destination_service_name: String,
    /// The destination workload's name (`unknown` when not known).
    pub destination_workload: String,
    /// The destination's canonical service, chosen as for the source.
    pub destination_canonical_service: String,
    /// The destination's canonical revision, chosen as for the source.
    pub destination_canonical_revision: String,
    /// The destination workload's namespace.
    pub destination_workload_namespace: String,
    /// The destination workload's SPIFFE identity (`unknown` when not known).
    pub destination_principal: String,
    /// The destination's `app` (or `app.kubernetes.io/name`) label, else its name.
    pub destination_app: String,
    /// The destination's `version` label, else `latest`.
    pub destination_version: String,
    /// The destination's cluster: `Kubernetes` when the destination is known.
    pub destination_cluster: String,
    /// Always `tcp`: the proxy moves bytes and never parses HTTP.
    pub request_protocol: String,
    /// Always `-`.
    pub response_flags: String,
    /// `mutual_tls` when carried over mTLS, else `unknown`.
    pub connection_security_policy: String,
}

const UNKNOWN: &str = "unknown";

fn canonical(w: &Workload) -> (String, String, String, String) {
    let label = |k: &str| w.labels.get(k).cloned();
    let app = label("app")
        .or_else(|| label("app.kubernetes.io/name"))
        .unwrap_or_else(|| w.name.to_string());
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
                l.source_workload = w.name.to_string();
                l.source_workload_namespace = w.namespace.to_string();
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
            l.destination_workload = w.name.to_string();
            l.destination_workload_namespace = w.namespace.to_string();
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

/// The labels of `hbone_refusals_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    /// inbound | outbound | socks5 | plaintext
    pub direction: String,
    /// The refusal's reason, as [`Reason::as_str`] spells it.
    pub reason: String,
}

/// Every metric the proxy keeps.
pub struct ProxyMetrics {
    registry: Registry,
    /// `istio_tcp_connections_opened_total`: connections that started carrying bytes.
    pub opened: Family<ConnectionLabels, Counter>,
    /// `istio_tcp_connections_closed_total`: connections that ended, whatever the outcome.
    pub closed: Family<ConnectionLabels, Counter>,
    /// `istio_tcp_sent_bytes_total`: bytes sent towards the client (responses).
    pub sent_bytes: Family<ConnectionLabels, Counter>,
    /// `istio_tcp_received_bytes_total`: bytes received from the client (requests).
    pub received_bytes: Family<ConnectionLabels, Counter>,
    /// `istio_tcp_connections_failed_total`: connections that ended with an error.
    pub failed: Family<ConnectionLabels, Counter>,
    /// `hbone_refusals_total`: connections and streams refused, by direction and reason.
    pub refusals: Family<RefusalLabels, Counter>,
    /// `tcp_sockets_open`: proxied connections open now.
    pub sockets_open: Gauge,
    /// `hbone_runtime_tasks_alive`: the async tasks alive in the proxy's
    /// runtime, read when the metrics are: a task that outlives its
    /// connection shows here as a slope (the churn soak samples it).
    tasks_alive: Gauge,
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
            tasks_alive: Gauge::default(),
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
        registry.register(
            "hbone_runtime_tasks_alive",
            "Async tasks alive in the proxy's runtime",
            m.tasks_alive.clone(),
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

    /// Counts one refusal under `direction` and `reason`.
    pub fn refused(&self, direction: Direction, reason: Reason) {
        self.refusal(direction, reason).inc();
    }

    /// How many refusals have been counted under `direction` and `reason`.
    pub fn refusal_count(&self, direction: Direction, reason: Reason) -> u64 {
        self.refusal(direction, reason).get()
    }

    /// Every metric in the OpenMetrics text format, as `/metrics` serves it.
    pub fn encode(&self) -> String {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let alive = runtime.metrics().num_alive_tasks();
            self.tasks_alive
                .set(i64::try_from(alive).unwrap_or(i64::MAX));
        }
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
    /// Bytes sent towards the client, added to the sent-bytes counter on drop.
    pub sent: u64,
    /// Bytes received from the client, added to the received-bytes counter on drop.
    pub received: u64,
    /// Whether the connection ended with an error, counted as failed on drop.
    pub failed: bool,
}

impl ConnectionGuard {
    /// Counts a connection opened under `labels`, and one more socket open.
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
