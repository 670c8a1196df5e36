//! A registry that follows a Kubernetes cluster — what ztunnel learns from
//! istiod over xDS, learned here straight from the API server: every few
//! seconds the proxy lists namespaces, pods and services, builds a registry
//! from them, and swaps it in when it changed. It lists Istio's
//! AuthorizationPolicies and PeerAuthentications too, and swaps those in
//! when they changed (judging open streams again); a cluster without the
//! Istio CRDs leaves the proxy's own policies in place.
//!
//! Who speaks HBONE: pods in a namespace labelled
//! `istio.io/dataplane-mode: ambient` (ztunnel's, in the kind lab) and pods
//! labelled `hbone-lab.dev/proxy: sidecar` (hbone-lab's own), unless a pod
//! opts out with `istio.io/dataplane-mode: none`; everyone else is plain
//! TCP. Each pod's "node" is the node it is scheduled on, except for pods
//! with an hbone-lab sidecar, whose proxy serves that pod alone: their node
//! is the pod's own name (start the sidecar with `--node $(POD_NAME)`).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use hbone_policies::istio::IstioPolicies;
use hbone_policies::istio::{AuthorizationPolicy, PeerAuthentication};
use hbone_policies::selector::labels_match;
use thiserror::Error;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::FieldError;
use crate::registry::{Distinct, Node, Protocol, Registry, RegistryFile, Service, Workload};
use crate::state::ProxyCore;

/// The label (on a namespace or a pod) whose value `ambient` meshes pods, and
/// `none` opts a pod out.
pub const DATAPLANE_MODE_LABEL: &str = "istio.io/dataplane-mode";
/// The label marking a pod that carries an hbone-lab sidecar proxy (value `sidecar`).
pub const SIDECAR_LABEL: &str = "hbone-lab.dev/proxy";

/// Why the cluster could not be listed.
#[derive(Debug, Error)]
pub enum KubeError {
    /// No client: no kubeconfig here and no in-cluster service account.
    #[error("cannot reach the Kubernetes API: {0}")]
    Connect(#[source] kube::Error),
    /// A list call failed (the API server down, RBAC, …).
    #[error("listing {what}: {source}")]
    List {
        /// What was being listed (`pods`, `services`, …).
        what: &'static str,
        /// The client's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Why the cluster's Istio policies were not taken (the proxy then keeps
/// the ones it has). Compared between listings, so it keeps text, not the
/// client's error.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PolicyListError {
    /// Listing a policy kind failed.
    #[error("listing {plural}: {message}")]
    List {
        /// The kind's plural (`authorizationpolicies`).
        plural: String,
        /// The client's error, as text.
        message: String,
    },
    /// One object does not parse as its kind.
    #[error("{object}: {field}: {message}")]
    Parse {
        /// `Kind namespace/name`.
        object: String,
        /// The field's path.
        field: String,
        /// What is wrong with it.
        message: String,
    },
}

/// A pod, as the registry needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodFacts {
    /// The pod's name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Its service account (`default` when the spec names none).
    pub service_account: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its IP, once it has one; a pod without one is left out of the registry.
    pub ip: Option<IpAddr>,
    /// The node it is scheduled on, if it is.
    pub node: Option<String>,
    /// Container port names → numbers, for services that target a name.
    pub named_ports: BTreeMap<String, u16>,
}

/// A service port's target: a number, or a container port's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetPort {
    /// A port number.
    Number(u16),
    /// A container port's name, looked up on the pods the service selects.
    Name(String),
}

/// A service, as the registry needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceFacts {
    /// The service's name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Its cluster IP, the service's VIP; a headless service has none and is left out.
    pub cluster_ip: Option<IpAddr>,
    /// Its ports, each with its target.
    pub ports: Vec<(u16, TargetPort)>,
    /// Its pod selector; an empty one selects no pod.
    pub selector: BTreeMap<String, String>,
}

/// One listing of the cluster.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterSnapshot {
    /// Namespace → its labels.
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
    /// Every pod in the cluster.
    pub pods: Vec<PodFacts>,
    /// Every service in the cluster.
    pub services: Vec<ServiceFacts>,
    /// The cluster's AuthorizationPolicies and PeerAuthentications, as
    /// ztunnel gets them from istiod; `None` where the cluster has no
    /// Istio CRDs (the proxy keeps the policies it has), an error naming
    /// the resource where one does not parse (likewise).
    pub policies: Option<Result<ClusterPolicies, PolicyListError>>,
}

/// Istio's security resources, as listed from the cluster.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterPolicies {
    /// Every AuthorizationPolicy in the cluster.
    pub authorization: Vec<AuthorizationPolicy>,
    /// Every PeerAuthentication in the cluster.
    pub peer_authentication: Vec<PeerAuthentication>,
}

/// Where snapshots come from: the API server, or a fake in tests.
pub trait ClusterLister: Send + Sync {
    /// Lists the cluster once.
    fn snapshot(&self) -> impl Future<Output = Result<ClusterSnapshot, KubeError>> + Send;
}

fn meshed(pod: &PodFacts, snapshot: &ClusterSnapshot) -> bool {
    let pod_mode = pod.labels.get(DATAPLANE_MODE_LABEL).map(String::as_str);
    if pod_mode == Some("none") {
        return false;
    }
    let ns_mode = snapshot
        .namespaces
        .get(&pod.namespace)
        .and_then(|l| l.get(DATAPLANE_MODE_LABEL))
        .map(String::as_str);
    pod.labels.contains_key(SIDECAR_LABEL)
        || pod_mode == Some("ambient")
        || ns_mode == Some("ambient")
}

/// The registry a snapshot describes (as a file, before validation).
pub fn registry_file(snapshot: &ClusterSnapshot, trust_domain: &str) -> RegistryFile {
    let mut workloads = Vec::new();
    // Names many pods share, one allocation each (see `Distinct::name`).
    let mut names = Distinct::default();
    for pod in &snapshot.pods {
        let Some(ip) = pod.ip else {
            continue;
        };
        let node = match pod.labels.contains_key(SIDECAR_LABEL) {
            true => pod.name.clone(),
            false => pod.node.clone().unwrap_or_else(|| "unscheduled".into()),
        };
        workloads.push(Workload {
            name: pod.name.as_str().into(),
            namespace: names.name(&pod.namespace),
            service_account: names.name(&pod.service_account),
            labels: Arc::new(pod.labels.clone()),
            ips: Box::new([ip]),
            node: names.name(&node),
            protocol: if meshed(pod, snapshot) {
                Protocol::Hbone
            } else {
                Protocol::Tcp
            },
            ..Workload::default()
        });
    }
    let mut node_names: Vec<String> = workloads.iter().map(|w| w.node.to_string()).collect();
    node_names.sort();
    node_names.dedup();
    let services = snapshot
        .services
        .iter()
        .filter_map(|s| {
            let vip = s.cluster_ip?;
            let backing: Vec<&PodFacts> = snapshot
                .pods
                .iter()
                .filter(|p| {
                    p.namespace == s.namespace
                        && !s.selector.is_empty()
                        && labels_match(&s.selector, &p.labels)
                })
                .collect();
            let ports = s
                .ports
                .iter()
                .filter_map(|(port, target)| {
                    let target = match target {
                        TargetPort::Number(n) => *n,
                        TargetPort::Name(name) => {
                            *backing.iter().find_map(|p| p.named_ports.get(name))?
                        }
                    };
                    Some((*port, target))
                })
                .collect();
            Some(Service {
                name: s.name.clone(),
                namespace: s.namespace.clone(),
                hostname: None,
                vips: vec![vip],
                ports,
                selector: Some(Arc::new(s.selector.clone())),
            })
        })
        .collect();
    RegistryFile {
        trust_domain: trust_domain.into(),
        nodes: node_names.into_iter().map(|name| Node { name }).collect(),
        workloads,
        services,
    }
}

/// The registry a snapshot describes, validated.
pub fn registry_from(
    snapshot: &ClusterSnapshot,
    trust_domain: &str,
) -> Result<Registry, FieldError> {
    Registry::from_file(registry_file(snapshot, trust_domain))
}

/// Lists the cluster every `every` until `shutdown`, swapping in each
/// changed registry. Returns how many were swapped in.
pub async fn follow_cluster<L: ClusterLister>(
    core: Arc<ProxyCore>,
    lister: L,
    trust_domain: String,
    every: Duration,
    shutdown: CancellationToken,
) -> usize {
    let mut last: Option<ClusterSnapshot> = None;
    let mut swapped = 0;
    loop {
        match lister.snapshot().await {
            Ok(snapshot) if last.as_ref() != Some(&snapshot) => {
                if last.as_ref().map(|l| &l.policies) != Some(&snapshot.policies) {
                    apply_cluster_policies(&core, &snapshot.policies);
                }
                match registry_from(&snapshot, &trust_domain) {
                    Ok(registry) => {
                        info!(
                            workloads = registry.workloads.len(),
                            services = registry.services.len(),
                            "the cluster changed: new connections use the new registry"
                        );
                        core.replace_registry(registry);
                        swapped += 1;
                    }
                    Err(e) => {
                        warn!(error = %e, "the cluster's state makes no valid registry; keeping the previous one")
                    }
                }
                last = Some(snapshot);
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "cannot list the cluster; keeping the previous registry"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return swapped,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// Swaps in the cluster's policies, judging open streams again; keeps the
/// current ones when the cluster has none to give or one does not parse.
fn apply_cluster_policies(
    core: &ProxyCore,
    policies: &Option<Result<ClusterPolicies, PolicyListError>>,
) {
    match policies {
        Some(Ok(listed)) => {
            let policies = IstioPolicies::with(
                core.policies().root_namespace(),
                listed.authorization.clone(),
                listed.peer_authentication.clone(),
            );
            let revoked = core.replace_policies(policies);
            info!(
                authorization_policies = listed.authorization.len(),
                peer_authentications = listed.peer_authentication.len(),
                streams_closed = revoked.len(),
                "the cluster's policies changed: open streams judged again"
            );
        }
        Some(Err(e)) => {
            warn!(error = %e, "a policy in the cluster does not parse; keeping the previous policies")
        }
        None => {}
    }
}

/// Lists one Istio resource kind across the cluster, typed one object at a
/// time so that an error names the object and field. `None`: no such CRD.
async fn list_typed<K>(client: &kube::Client) -> Option<Result<Vec<K>, PolicyListError>>
where
    K: kube::Resource<DynamicType = ()> + serde::de::DeserializeOwned,
{
    let resource = kube::api::ApiResource::erase::<K>(&());
    let api = kube::Api::<kube::api::DynamicObject>::all_with(client.clone(), &resource);
    let listed = match api.list(&kube::api::ListParams::default()).await {
        Ok(listed) => listed,
        Err(kube::Error::Api(status)) if status.code == 404 => return None,
        Err(e) => {
            return Some(Err(PolicyListError::List {
                plural: resource.plural.clone(),
                message: e.to_string(),
            }));
        }
    };
    let mut out = Vec::new();
    for object in listed.items {
        let name = format!(
            "{} {}/{}",
            resource.kind,
            object.metadata.namespace.as_deref().unwrap_or(""),
            object.metadata.name.as_deref().unwrap_or("")
        );
        let parse = |field: String, message: String| PolicyListError::Parse {
            object: name.clone(),
            field,
            message,
        };
        let value = serde_json::to_value(&object).map_err(|e| parse(String::new(), e.to_string()));
        let typed = value.and_then(|v| {
            hbone_policies::load::typed::<K>(&v).map_err(|e| parse(e.field, e.message))
        });
        match typed {
            Ok(k) => out.push(k),
            Err(e) => return Some(Err(e)),
        }
    }
    Some(Ok(out))
}

/// Both Istio security kinds, or why not.
async fn list_policies(client: &kube::Client) -> Option<Result<ClusterPolicies, PolicyListError>> {
    let authorization = list_typed::<AuthorizationPolicy>(client).await?;
    let peer_authentication = list_typed::<PeerAuthentication>(client).await?;
    Some(authorization.and_then(|authorization| {
        Ok(ClusterPolicies {
            authorization,
            peer_authentication: peer_authentication?,
        })
    }))
}

/// The real lister: the Kubernetes API through `kube`.
pub struct KubeLister {
    client: kube::Client,
}

impl KubeLister {
    /// Uses the in-cluster service account (or the kubeconfig outside one).
    pub async fn connect() -> Result<Self, KubeError> {
        kube::Client::try_default()
            .await
            .map(|client| KubeLister { client })
            .map_err(KubeError::Connect)
    }

    /// Uses `client` (a kubeconfig of one's choosing).
    pub fn with_client(client: kube::Client) -> Self {
        KubeLister { client }
    }
}

fn labels(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> BTreeMap<String, String> {
    meta.labels
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect()
}

impl ClusterLister for KubeLister {
    async fn snapshot(&self) -> Result<ClusterSnapshot, KubeError> {
        use k8s_openapi::api::core::v1::{Namespace, Pod, Service as KService};
        use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
        let list = kube::api::ListParams::default();
        let err = |what| {
            move |e: kube::Error| KubeError::List {
                what,
                source: Box::new(e),
            }
        };
        let namespaces = kube::Api::<Namespace>::all(self.client.clone())
            .list(&list)
            .await
            .map_err(err("namespaces"))?;
        let pods = kube::Api::<Pod>::all(self.client.clone())
            .list(&list)
            .await
            .map_err(err("pods"))?;
        let services = kube::Api::<KService>::all(self.client.clone())
            .list(&list)
            .await
            .map_err(err("services"))?;
        let policies = list_policies(&self.client).await;
        Ok(ClusterSnapshot {
            policies,
            namespaces: namespaces
                .items
                .iter()
                .map(|n| {
                    (
                        n.metadata.name.clone().unwrap_or_default(),
                        labels(&n.metadata),
                    )
                })
                .collect(),
            pods: pods
                .items
                .iter()
                .map(|p| {
                    let spec = p.spec.clone().unwrap_or_default();
                    PodFacts {
                        name: p.metadata.name.clone().unwrap_or_default(),
                        namespace: p.metadata.namespace.clone().unwrap_or_default(),
                        service_account: spec
                            .service_account_name
                            .clone()
                            .unwrap_or_else(|| "default".into()),
                        labels: labels(&p.metadata),
                        ip: p
                            .status
                            .as_ref()
                            .and_then(|s| s.pod_ip.as_deref())
                            .and_then(|ip| ip.parse().ok()),
                        node: spec.node_name.clone(),
                        named_ports: spec
                            .containers
                            .iter()
                            .flat_map(|c| c.ports.iter().flatten())
                            .filter_map(|port| {
                                Some((port.name.clone()?, u16::try_from(port.container_port).ok()?))
                            })
                            .collect(),
                    }
                })
                .collect(),
            services: services
                .items
                .iter()
                .map(|s| {
                    let spec = s.spec.clone().unwrap_or_default();
                    ServiceFacts {
                        name: s.metadata.name.clone().unwrap_or_default(),
                        namespace: s.metadata.namespace.clone().unwrap_or_default(),
                        cluster_ip: spec.cluster_ip.as_deref().and_then(|ip| ip.parse().ok()),
                        ports: spec
                            .ports
                            .iter()
                            .flatten()
                            .filter_map(|p| {
                                let port = u16::try_from(p.port).ok()?;
                                let target = match &p.target_port {
                                    Some(IntOrString::Int(n)) => {
                                        TargetPort::Number(u16::try_from(*n).ok()?)
                                    }
                                    Some(IntOrString::String(name)) => {
                                        TargetPort::Name(name.clone())
                                    }
                                    None => TargetPort::Number(port),
                                };
                                Some((port, target))
                            })
                            .collect(),
                        selector: spec
                            .selector
                            .clone()
                            .unwrap_or_default()
                            .into_iter()
                            .collect(),
                    }
                })
                .collect(),
        })
    }
}
