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
    /// The pod's name in Kubernetes (also its workload name).
    pub name: String,
    /// The pod's namespace, part of its identity.
    pub namespace: String,
    /// The service account it runs as, part of its identity.
    pub service_account: String,
    /// The trust domain of its SPIFFE identity (`cluster.local` by default).
    pub trust_domain: String,
    /// Its labels, which policy selectors match; not sent over xDS, but `app`
    /// becomes the canonical name.
    pub labels: BTreeMap<String, String>,
    /// Its pod IPs.
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
    /// The Service object's name.
    pub name: String,
    /// The namespace of the Service object.
    pub namespace: String,
    /// Its fully qualified DNS name (`<name>.<ns>.svc.cluster.local`).
    pub hostname: String,
    /// Its virtual (cluster) IPs.
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
    /// Every pod, each served as one `Address` resource.
    pub workloads: Vec<MeshWorkload>,
    /// Every service, each served as one `Address` resource.
    pub services: Vec<MeshService>,
    /// The Istio policies; their translation is served as `Authorization` resources.
    pub policies: IstioPolicies,
}
