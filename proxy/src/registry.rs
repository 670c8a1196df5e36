//! The workload registry: who runs where, as ztunnel learns it from xDS.
//!
//! Standalone there is no istiod, so the registry is a YAML file:
//!
//! ```yaml
//! trustDomain: cluster.local
//! nodes:
//!   - name: node-1
//!   - name: node-2
//! workloads:
//!   - name: hello-app
//!     namespace: demo
//!     serviceAccount: hello-app
//!     labels: {app: hello-app}
//!     ips: [127.0.2.2]
//!     node: node-2
//!     protocol: HBONE          # HBONE (meshed, the default) or TCP (not meshed)
//!     # uid: Kubernetes//Pod/demo/hello-app   # the default: how a node agent (ZDS) names it
//! services:
//!   - name: hello-app
//!     namespace: demo
//!     vips: [127.0.3.2]
//!     ports: {8000: 8000}     # service port → target port
//!     selector: {app: hello-app}
//! ```
//!
//! A source is identified by its IP; a destination by a workload IP or a
//! service VIP. A meshed destination is reached over HBONE at its own IP on
//! port 15008, as ztunnel does in its in-pod mode: the receiving proxy then
//! knows from the address a connection arrived on which workload, and so
//! which certificate, it serves.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use hbone_ca::Identity;
use hbone_policies::selector::labels_match;
use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum RegistryError {
    #[error("cannot read registry {file}: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: field `{field}`: {message}")]
    Field {
        file: String,
        field: String,
        message: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    /// Meshed: reached over HBONE, identity checked on arrival.
    #[default]
    Hbone,
    /// Not meshed: plain TCP passthrough.
    Tcp,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Node {
    pub name: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Workload {
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub ips: Vec<IpAddr>,
    pub node: String,
    #[serde(default)]
    pub protocol: Protocol,
    /// The network namespace holding this workload's sockets (in-pod mode),
    /// e.g. `/var/run/netns/pod-hello-app`. The proxy binds and dials there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<std::path::PathBuf>,
    /// Filled in at load from the registry's trust domain.
    #[serde(skip)]
    pub identity: Option<Identity>,
    /// The selector-scoped policy keys the workload's record lists (from
    /// xDS, where the selectors are not sent); empty in a registry file,
    /// whose policies' selectors are matched against `labels` instead.
    #[serde(skip)]
    pub authorization_policies: Vec<String>,
    /// The services (`namespace/hostname`) whose endpoint the workload's
    /// record says it is (from xDS, where services carry no selector).
    #[serde(skip)]
    pub services: Vec<String>,
    /// The control plane's uid for it (`Kubernetes//Pod/<ns>/<name>`, the
    /// default), by which a node agent names the pod whose namespace it hands over.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
}

impl Workload {
    pub fn identity(&self) -> &Identity {
        self.identity
            .as_ref()
            .expect("identity is set when the registry loads")
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Service {
    pub name: String,
    pub namespace: String,
    #[serde(default)]
    pub hostname: Option<String>,
    pub vips: Vec<IpAddr>,
    /// Service port → target port.
    pub ports: BTreeMap<u16, u16>,
    /// The labels of its endpoints; without one, its endpoints are the
    /// workloads that name it (xDS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<BTreeMap<String, String>>,
}

impl Service {
    /// `namespace/hostname`, the key a workload's record names it by.
    pub fn key(&self, trust_domain_suffix: &str) -> String {
        format!("{}/{}", self.namespace, self.hostname(trust_domain_suffix))
    }

    /// Whether `w` is one of its endpoints.
    pub fn selects(&self, w: &Workload) -> bool {
        w.namespace == self.namespace
            && match &self.selector {
                Some(labels) => labels_match(labels, &w.labels),
                None => w.services.contains(&self.key("cluster.local")),
            }
    }

    pub fn hostname(&self, trust_domain_suffix: &str) -> String {
        self.hostname.clone().unwrap_or_else(|| {
            format!("{}.{}.svc.{trust_domain_suffix}", self.name, self.namespace)
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RegistryFile {
    #[serde(default = "default_trust_domain")]
    pub trust_domain: String,
    #[serde(default)]
    pub nodes: Vec<Node>,
    #[serde(default)]
    pub workloads: Vec<Workload>,
    #[serde(default)]
    pub services: Vec<Service>,
}

fn default_trust_domain() -> String {
    "cluster.local".into()
}

/// Where an outbound connection goes.
#[derive(Debug, Clone)]
pub enum Destination<'a> {
    /// A known workload, possibly reached through a service.
    Workload {
        workload: &'a Arc<Workload>,
        /// The workload's address and target port.
        addr: SocketAddr,
        service: Option<&'a Arc<Service>>,
    },
    /// Not in the registry: passed through as plain TCP.
    External(SocketAddr),
}

/// The registry, validated and indexed.
#[derive(Debug, Clone)]
pub struct Registry {
    pub trust_domain: String,
    pub nodes: Vec<Node>,
    /// Shared, so a connection holds its endpoints for its lifetime at the
    /// cost of a reference count, not a copy of every name and label.
    pub workloads: Vec<Arc<Workload>>,
    pub services: Vec<Arc<Service>>,
}

impl Registry {
    pub fn load(path: &Path) -> Result<Self, RegistryError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| RegistryError::Read {
            file: file.clone(),
            source,
        })?;
        Self::parse(&text, &file)
    }

    pub fn parse(text: &str, file: &str) -> Result<Self, RegistryError> {
        let err = |field: String, message: String| RegistryError::Field {
            file: file.to_string(),
            field,
            message,
        };
        let doc: RegistryFile =
            crate::config::parse_yaml(text).map_err(|(field, message)| err(field, message))?;
        Self::from_file(doc).map_err(|(field, message)| err(field, message))
    }

    /// Validates cross-references and computes identities (in the file's
    /// trust domain, unless a workload comes with its own, as from xDS).
    pub fn from_file(mut doc: RegistryFile) -> Result<Self, (String, String)> {
        let mut seen_ips = BTreeMap::new();
        for (i, w) in doc.workloads.iter_mut().enumerate() {
            if w.uid.is_empty() {
                w.uid = hbone_xds::MeshWorkload::pod_uid(&w.namespace, &w.name);
            }
            if w.identity.is_none() {
                let identity = Identity::new(&doc.trust_domain, &w.namespace, &w.service_account)
                    .map_err(|e| (format!("workloads[{i}]"), e.to_string()))?;
                w.identity = Some(identity);
            }
            if !doc.nodes.iter().any(|n| n.name == w.node) {
                return Err((
                    format!("workloads[{i}].node"),
                    format!("node {:?} is not listed under nodes", w.node),
                ));
            }
            if w.ips.is_empty() {
                return Err((
                    format!("workloads[{i}].ips"),
                    "a workload needs at least one IP".into(),
                ));
            }
            for ip in &w.ips {
                if let Some(other) = seen_ips.insert(*ip, w.name.clone()) {
                    return Err((
                        format!("workloads[{i}].ips"),
                        format!("{ip} is also used by workload {other}"),
                    ));
                }
            }
        }
        for (i, s) in doc.services.iter().enumerate() {
            for vip in &s.vips {
                if let Some(other) = seen_ips.insert(*vip, s.name.clone()) {
                    return Err((
                        format!("services[{i}].vips"),
                        format!("{vip} is also used by {other}"),
                    ));
                }
            }
        }
        Ok(Registry {
            trust_domain: doc.trust_domain,
            nodes: doc.nodes,
            workloads: doc.workloads.into_iter().map(Arc::new).collect(),
            services: doc.services.into_iter().map(Arc::new).collect(),
        })
    }

    pub fn workload_by_ip(&self, ip: IpAddr) -> Option<&Arc<Workload>> {
        self.workloads.iter().find(|w| w.ips.contains(&ip))
    }

    pub fn workload_by_identity(&self, identity: &Identity) -> Option<&Arc<Workload>> {
        self.workloads.iter().find(|w| w.identity() == identity)
    }

    /// Workloads on `node`.
    pub fn local_workloads<'a>(
        &'a self,
        node: &'a str,
    ) -> impl Iterator<Item = &'a Arc<Workload>> + 'a {
        self.workloads.iter().filter(move |w| w.node == node)
    }

    /// A service by VIP or by hostname (`name.namespace.svc.cluster.local`, `name.namespace`, or `name`).
    pub fn service_by_host(&self, host: &str) -> Option<&Arc<Service>> {
        let host = host.trim_end_matches('.');
        self.services.iter().find(|s| {
            let full = s.hostname("cluster.local");
            host == full
                || host == format!("{}.{}", s.name, s.namespace)
                || host == format!("{}.{}.svc", s.name, s.namespace)
                || host == s.name
        })
    }

    /// Resolves an outbound destination address (service VIP or workload IP).
    /// Services pick an endpoint by the `pick` index (for spreading load).
    pub fn resolve(&self, dst: SocketAddr, pick: usize) -> Result<Destination<'_>, String> {
        if let Some(service) = self.services.iter().find(|s| s.vips.contains(&dst.ip())) {
            return self.resolve_service(service, dst.port(), pick);
        }
        match self.workload_by_ip(dst.ip()) {
            Some(workload) => Ok(Destination::Workload {
                workload,
                addr: dst,
                service: None,
            }),
            None => Ok(Destination::External(dst)),
        }
    }

    pub fn resolve_service<'a>(
        &'a self,
        service: &'a Arc<Service>,
        port: u16,
        pick: usize,
    ) -> Result<Destination<'a>, String> {
        let target_port = *service.ports.get(&port).ok_or_else(|| {
            format!(
                "service {}/{} has no port {port}",
                service.namespace, service.name
            )
        })?;
        let endpoints: Vec<&Arc<Workload>> = self
            .workloads
            .iter()
            .filter(|w| service.selects(w))
            .collect();
        if endpoints.is_empty() {
            return Err(format!(
                "service {}/{} has no endpoints",
                service.namespace, service.name
            ));
        }
        let workload = endpoints[pick % endpoints.len()];
        Ok(Destination::Workload {
            workload,
            addr: SocketAddr::new(workload.ips[0], target_port),
            service: Some(service),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = "
nodes: [{name: n1}, {name: n2}]
workloads:
  - {name: gw, namespace: demo, serviceAccount: hello-gateway-istio, ips: [127.0.2.1], node: n1}
  - {name: app, namespace: demo, serviceAccount: hello-app, labels: {app: hello-app}, ips: [127.0.2.2], node: n2}
services:
  - {name: hello-app, namespace: demo, vips: [127.0.3.2], ports: {80: 8000}, selector: {app: hello-app}}
";

    #[test]
    fn resolves_vips_workloads_and_externals() {
        let r = Registry::parse(YAML, "r.yaml").unwrap();
        match r.resolve("127.0.3.2:80".parse().unwrap(), 0).unwrap() {
            Destination::Workload {
                workload,
                addr,
                service,
            } => {
                assert_eq!(workload.name, "app");
                assert_eq!(addr, "127.0.2.2:8000".parse().unwrap());
                assert_eq!(service.unwrap().name, "hello-app");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            r.resolve("127.0.2.1:9".parse().unwrap(), 0),
            Ok(Destination::Workload { .. })
        ));
        assert!(matches!(
            r.resolve("8.8.8.8:53".parse().unwrap(), 0),
            Ok(Destination::External(_))
        ));
        assert!(
            r.resolve("127.0.3.2:81".parse().unwrap(), 0)
                .unwrap_err()
                .contains("no port 81")
        );
        assert_eq!(r.local_workloads("n2").count(), 1);
        assert_eq!(
            r.workload_by_ip("127.0.2.2".parse().unwrap())
                .unwrap()
                .identity()
                .to_string(),
            "spiffe://cluster.local/ns/demo/sa/hello-app"
        );
        assert!(
            r.service_by_host("hello-app.demo.svc.cluster.local")
                .is_some()
        );
    }

    #[test]
    fn errors_name_the_field() {
        let err = Registry::parse(
            "workloads:\n  - {name: a, namespace: d, serviceAcount: x}\n",
            "r.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("r.yaml: field `workloads[0]") && err.contains("serviceAcount"),
            "{err}"
        );
        let err = Registry::parse(
            "nodes: [{name: n1}]\nworkloads:\n  - {name: a, namespace: d, serviceAccount: x, ips: [127.0.0.1], node: n9}\n",
            "r.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("workloads[0].node") && err.contains("n9"),
            "{err}"
        );
    }
}
