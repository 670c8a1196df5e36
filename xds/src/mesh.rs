//! What the control plane serves: the mesh's workloads, services and
//! policies, as plain data that any lab (standalone, netns, a test) fills in.

use std::collections::BTreeMap;
use std::net::IpAddr;

use hbone_policies::istio::IstioPolicies;

/// One pod.
#[derive(Debug, Clone, PartialEq)]
pub struct MeshWorkload {
    /// The xDS resource name and the ZDS uid (istiod: `Kubernetes//Pod/<ns>/<name>`).
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    pub trust_domain: String,
    pub labels: BTreeMap<String, String>,
    pub ips: Vec<IpAddr>,
    /// The node it runs on (ztunnel's `NODE_NAME`).
    pub node: String,
    /// In the mesh (HBONE); false for a plaintext workload.
    pub hbone: bool,
    /// `namespace/hostname` → (service port, target port) pairs it serves.
    pub services: BTreeMap<String, Vec<(u16, u16)>>,
}

impl MeshWorkload {
    /// A meshed pod labelled `app: <app>` whose service account is its
    /// `account` (the shape tests and small labs need).
    pub fn pod(
        namespace: &str,
        name: &str,
        account: &str,
        ip: IpAddr,
        app: &str,
        node: &str,
    ) -> Self {
        MeshWorkload {
            uid: Self::pod_uid(namespace, name),
            name: name.into(),
            namespace: namespace.into(),
            service_account: account.into(),
            trust_domain: "cluster.local".into(),
            labels: [("app".to_string(), app.to_string())].into(),
            ips: vec![ip],
            node: node.into(),
            hbone: true,
            services: BTreeMap::new(),
        }
    }

    /// istiod's uid for a Kubernetes pod in cluster `Kubernetes`.
    pub fn pod_uid(namespace: &str, name: &str) -> String {
        format!("Kubernetes//Pod/{namespace}/{name}")
    }
}

/// One service and its virtual IPs.
#[derive(Debug, Clone, PartialEq)]
pub struct MeshService {
    pub name: String,
    pub namespace: String,
    pub hostname: String,
    pub vips: Vec<IpAddr>,
    /// (service port, target port).
    pub ports: Vec<(u16, u16)>,
}

impl MeshService {
    /// `namespace/hostname`: its resource name and the key workloads use.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.hostname)
    }
}

/// Everything one control plane knows.
#[derive(Debug, Clone, Default)]
pub struct Mesh {
    pub workloads: Vec<MeshWorkload>,
    pub services: Vec<MeshService>,
    pub policies: IstioPolicies,
}
