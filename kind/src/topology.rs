//! The kind lab's workloads as `policy check` sees them, read from the
//! manifests: each Deployment and Pod (its template's labels, service
//! account and container ports; meshed when its namespace is enrolled in
//! ambient), and each Gateway as the pod Istio will create for it (service
//! account `<name>-istio`, the gateway-name label, its listener ports; it
//! speaks HBONE to meshed backends but is not captured itself).

use std::collections::BTreeMap;

use hbone_policies::topology::{LabTopology, LabWorkload, MeshMode, lab_outside};
use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::gateway_api::{GATEWAY_NAME_LABEL, istio_gateway_service_account};
use crate::manifests::{Loaded, Manifest};

/// The label that enrolls a namespace (or pod) in ambient.
pub const DATAPLANE_MODE_LABEL: &str = "istio.io/dataplane-mode";

fn ambient_namespaces(manifests: &[Loaded]) -> Vec<String> {
    manifests
        .iter()
        .filter_map(|l| match &l.manifest {
            Manifest::Namespace(ns) => ns.metadata.labels.as_ref().and_then(|labels| {
                (labels.get(DATAPLANE_MODE_LABEL).map(String::as_str) == Some("ambient"))
                    .then(|| ns.metadata.name.clone().unwrap_or_default())
            }),
            _ => None,
        })
        .collect()
}

fn workload(
    name: &str,
    meta: Option<&ObjectMeta>,
    namespace: &str,
    spec: Option<&PodSpec>,
    ambient: &[String],
) -> LabWorkload {
    let labels: BTreeMap<String, String> = meta
        .and_then(|m| m.labels.clone())
        .unwrap_or_default()
        .into_iter()
        .collect();
    let opted_out = labels.get(DATAPLANE_MODE_LABEL).map(String::as_str) == Some("none");
    let mut ports = Vec::new();
    let mut named_ports = BTreeMap::new();
    for c in spec.map(|s| s.containers.as_slice()).unwrap_or_default() {
        for p in c.ports.iter().flatten() {
            let port = u16::try_from(p.container_port).unwrap_or_default();
            ports.push(port);
            if let Some(n) = &p.name {
                named_ports.insert(n.clone(), port);
            }
        }
    }
    LabWorkload {
        name: name.into(),
        namespace: namespace.into(),
        service_account: spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into()),
        labels,
        ip: None,
        ports,
        named_ports,
        mesh: match ambient.iter().any(|a| a == namespace) && !opted_out {
            true => MeshMode::Ambient,
            false => MeshMode::None,
        },
        node: None,
    }
}

/// The lab's topology from its manifests.
pub fn topology(manifests: &[Loaded]) -> LabTopology {
    let ambient = ambient_namespaces(manifests);
    let mut workloads = Vec::new();
    for l in manifests {
        match &l.manifest {
            Manifest::Deployment(d) => {
                let ns = d.metadata.namespace.as_deref().unwrap_or("default");
                let template = d.spec.as_ref().map(|s| &s.template);
                workloads.push(workload(
                    d.metadata.name.as_deref().unwrap_or("?"),
                    template.and_then(|t| t.metadata.as_ref()),
                    ns,
                    template.and_then(|t| t.spec.as_ref()),
                    &ambient,
                ));
            }
            Manifest::Pod(p) => {
                let ns = p.metadata.namespace.as_deref().unwrap_or("default");
                workloads.push(workload(
                    p.metadata.name.as_deref().unwrap_or("?"),
                    Some(&p.metadata),
                    ns,
                    p.spec.as_ref(),
                    &ambient,
                ));
            }
            Manifest::Gateway(g) => {
                let name = g.metadata.name.clone().unwrap_or_default();
                let ns = g
                    .metadata
                    .namespace
                    .clone()
                    .unwrap_or_else(|| "default".into());
                let in_mesh = ambient.contains(&ns);
                workloads.push(LabWorkload {
                    service_account: istio_gateway_service_account(&name),
                    labels: BTreeMap::from([(GATEWAY_NAME_LABEL.to_string(), name.clone())]),
                    ip: None,
                    ports: g.spec.listeners.iter().map(|l| l.port).collect(),
                    named_ports: BTreeMap::new(),
                    mesh: match in_mesh {
                        true => MeshMode::HboneClient,
                        false => MeshMode::None,
                    },
                    node: None,
                    name,
                    namespace: ns,
                });
            }
            _ => {}
        }
    }
    // The same order as the standalone lab: gateway first, then pods as listed.
    workloads.sort_by_key(|w| (w.mesh != MeshMode::HboneClient, order(&w.name)));
    let (externals, outside_clients) = lab_outside(None, None);
    LabTopology {
        trust_domain: "cluster.local".into(),
        workloads,
        nodes: Vec::new(),
        externals,
        outside_clients,
    }
}

/// The lab's usual order of workloads, so matrices read the same in both labs.
fn order(name: &str) -> usize {
    ["test-pod", "hello-app", "postgres", "worker-app"]
        .iter()
        .position(|n| *n == name)
        .unwrap_or(usize::MAX)
}
