//! The mesh as ztunnel's local configuration file (`LOCAL_XDS_PATH`): the
//! same workloads, services and translated policies the xDS server sends,
//! in the YAML ztunnel reads at start instead of subscribing. Handy to run
//! a ztunnel by hand against the lab's view of the world.
//!
//! The keys are ztunnel's (camelCase, unknown keys are errors there):
//! workloads carry `workloadIps`, `protocol` (HBONE/TCP), `trustDomain` and
//! `serviceAccount` (no defaults in this form), `authorizationPolicies` and
//! a `services` map of `namespace/hostname` → `{port: targetPort}`;
//! services carry `vips` as `network/ip`; policies are rendered by
//! `hbone_policies::authorization::render`.

use hbone_policies::authorization::WorkloadRef;
use hbone_policies::authorization::render::ztunnel_local_value;
use serde_yaml::{Mapping, Value};

use crate::mesh::Mesh;

fn map(entries: Vec<(&str, Value)>) -> Value {
    let mut m = Mapping::new();
    for (k, v) in entries {
        m.insert(Value::String(k.into()), v);
    }
    Value::Mapping(m)
}

fn strings(items: impl IntoIterator<Item = String>) -> Value {
    Value::Sequence(items.into_iter().map(Value::String).collect())
}

fn ports(pairs: &[(u16, u16)]) -> Value {
    let mut m = Mapping::new();
    for (port, target) in pairs {
        m.insert(
            Value::Number((*port).into()),
            Value::Number((*target).into()),
        );
    }
    Value::Mapping(m)
}

/// The whole file.
pub fn render(mesh: &Mesh) -> String {
    let translated = mesh.policies.translated();
    let workloads = mesh
        .workloads
        .iter()
        .map(|w| {
            let listed = translated.workload_policies(&WorkloadRef {
                namespace: &w.namespace,
                labels: &w.labels,
                listed: &[],
            });
            let mut services = Mapping::new();
            for (key, pairs) in &w.services {
                services.insert(Value::String(key.clone()), ports(pairs));
            }
            map(vec![
                ("uid", Value::String(w.uid.clone())),
                ("name", Value::String(w.name.clone())),
                ("namespace", Value::String(w.namespace.clone())),
                ("serviceAccount", Value::String(w.service_account.clone())),
                ("trustDomain", Value::String(w.trust_domain.clone())),
                (
                    "workloadIps",
                    strings(w.ips.iter().map(|ip| ip.to_string())),
                ),
                (
                    "protocol",
                    Value::String(if w.hbone { "HBONE" } else { "TCP" }.into()),
                ),
                ("node", Value::String(w.node.clone())),
                (
                    "canonicalName",
                    Value::String(
                        w.labels
                            .get("app")
                            .cloned()
                            .unwrap_or_else(|| w.name.clone()),
                    ),
                ),
                ("authorizationPolicies", strings(listed)),
                ("services", Value::Mapping(services)),
            ])
        })
        .collect();
    let services = mesh
        .services
        .iter()
        .map(|s| {
            map(vec![
                ("name", Value::String(s.name.clone())),
                ("namespace", Value::String(s.namespace.clone())),
                ("hostname", Value::String(s.hostname.clone())),
                ("vips", strings(s.vips.iter().map(|ip| format!("/{ip}")))),
                ("ports", ports(&s.ports)),
            ])
        })
        .collect();
    let policies = translated
        .policies()
        .iter()
        .map(ztunnel_local_value)
        .collect();
    let file = map(vec![
        ("workloads", Value::Sequence(workloads)),
        ("services", Value::Sequence(services)),
        ("policies", Value::Sequence(policies)),
    ]);
    format!(
        "# ztunnel local config (LOCAL_XDS_PATH), written by hbone-lab: the workloads,\n# services and translated policies its xDS server would send.\n{}",
        serde_yaml::to_string(&file).expect("YAML values always serialize")
    )
}
