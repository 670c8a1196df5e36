//! The CA's Prometheus metrics: certificates issued, and refusals by reason,
//! so an operator can tell a misconfigured token from an attack at a glance.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

/// Counters kept by the CA server.
pub struct CaMetrics {
    registry: Registry,
    issued: Counter,
    refusals: Family<ReasonLabel, Counter>,
}

impl Default for CaMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("hbone_ca");
        let issued = Counter::default();
        let refusals = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "certificates_issued",
            "Workload certificates signed",
            issued.clone(),
        );
        registry.register(
            "refusals",
            "Certificate requests refused, by reason",
            refusals.clone(),
        );
        CaMetrics {
            registry,
            issued,
            refusals,
        }
    }
}

impl CaMetrics {
    /// Counts one certificate issued.
    pub fn record_issued(&self) {
        self.issued.inc();
    }

    fn refusal(&self, reason: &str) -> Counter {
        self.refusals
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .clone()
    }

    /// Counts one refused request under `reason`, a label such as `unknown_token`.
    pub fn record_refusal(&self, reason: &str) {
        self.refusal(reason).inc();
    }

    /// How many certificates have been issued so far.
    pub fn issued(&self) -> u64 {
        self.issued.get()
    }

    /// How many requests have been refused so far for `reason`.
    pub fn refusals(&self, reason: &str) -> u64 {
        self.refusal(reason).get()
    }

    /// The Prometheus text exposition of every counter.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
