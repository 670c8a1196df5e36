//! The lab's world as Kubernetes objects, so that istiod sees it as it
//! would see a cluster: a Node per lab node, namespaces, ServiceAccounts,
//! Services with selectors, and one Pod per lab pod — scheduled
//! (`spec.nodeName`), running, ready and addressed through the status
//! subresource, since no kubelet runs here — annotated
//! `ambient.istio.io/redirection: enabled` as istio-cni would annotate it
//! once the pod is captured (istiod sends `tunnelProtocol: HBONE` only for
//! such pods).
//!
//! Each node proxy gets a Pod `istio-system/ztunnel-<node>` of the
//! `ztunnel` ServiceAccount on its node: istiod grants impersonated
//! certificates only to a caller whose token is bound to such a Pod, and
//! only for identities of pods on the same node. These Pods stay Pending
//! without an address, so they are no workloads.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{
    Container, ContainerPort, Node, Pod, PodCondition, PodIP, PodSpec, PodStatus, Service,
    ServiceAccount, ServicePort, ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams};
use kube::{Api, Client};

use crate::cluster::{
    ControlPlaneError, ISTIO_SYSTEM, ZTUNNEL_ACCOUNT, create_namespace, create_or_keep,
};

/// The annotation istio-cni puts on a pod it has captured; istiod sends
/// `tunnelProtocol: HBONE` for a pod only when it is there.
pub const REDIRECTION_ANNOTATION: &str = "ambient.istio.io/redirection";
/// The image named in the Pods' one container: nothing pulls it (no
/// kubelet), and its name says so.
pub const NO_KUBELET_IMAGE: &str = "hbone-lab/no-kubelet-runs-this:fake";

/// A pod of the lab.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorldPod {
    /// Its name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Its ServiceAccount (its SPIFFE identity).
    pub service_account: String,
    /// Its labels (what selectors match).
    pub labels: BTreeMap<String, String>,
    /// Its address.
    pub ip: IpAddr,
    /// The node it runs on.
    pub node: String,
    /// Captured by ambient (annotated for HBONE)?
    pub captured: bool,
    /// Its container's ports that have a name (what a Service's named
    /// target port refers to).
    pub named_ports: BTreeMap<String, u16>,
}

impl WorldPod {
    /// A captured pod of `namespace` whose name, service account and
    /// `app` label are `name`.
    pub fn captured(namespace: &str, name: &str, ip: IpAddr, node: &str) -> WorldPod {
        WorldPod {
            name: name.into(),
            namespace: namespace.into(),
            service_account: name.into(),
            labels: BTreeMap::from([("app".to_string(), name.to_string())]),
            ip,
            node: node.into(),
            captured: true,
            named_ports: BTreeMap::new(),
        }
    }
}

/// A Service of the lab.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorldService {
    /// Its name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Its cluster IP (inside [`crate::cluster::SERVICE_CIDR`]).
    pub vip: IpAddr,
    /// `(port, target port)`.
    pub ports: Vec<(u16, u16)>,
    /// `(port, target port's name)`: the target is each pod's container
    /// port of that name.
    pub named_targets: Vec<(u16, String)>,
    /// The pods it selects, by label.
    pub selector: BTreeMap<String, String>,
}

/// Everything the lab puts into the API server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct World {
    /// The nodes (a Node object and a node proxy Pod each).
    pub nodes: Vec<String>,
    /// The pods.
    pub pods: Vec<WorldPod>,
    /// The Services.
    pub services: Vec<WorldService>,
}

/// What [`apply`] created that later steps need.
#[derive(Debug, Clone, Default)]
pub struct Applied {
    /// Each node's proxy Pod: node → (pod name, Kubernetes UID).
    pub node_proxies: BTreeMap<String, (String, String)>,
    /// Each lab pod's Kubernetes UID, by `namespace/name`.
    pub pod_uids: BTreeMap<String, String>,
}

fn meta(name: &str, namespace: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: namespace.map(String::from),
        ..ObjectMeta::default()
    }
}

fn api_err(step: String) -> impl FnOnce(kube::Error) -> ControlPlaneError {
    move |source| ControlPlaneError::Api { step, source }
}

/// The node proxy Pod's name on `node`.
pub fn node_proxy_pod(node: &str) -> String {
    format!("ztunnel-{node}")
}

/// The xDS node id ztunnel on `node` sends (`ztunnel~<ip>~<pod>.<ns>~<ns>.svc.cluster.local`):
/// istiod checks that its namespace is the token's.
pub fn node_proxy_id(node: &str, ip: IpAddr) -> String {
    let pod = node_proxy_pod(node);
    format!("ztunnel~{ip}~{pod}.{ISTIO_SYSTEM}~{ISTIO_SYSTEM}.svc.cluster.local")
}

/// The xDS node metadata ztunnel on `node` sends (`NAME`, `NAMESPACE`,
/// `NODE_NAME`, `CLUSTER_ID`).
pub fn node_proxy_metadata(node: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("NAME".to_string(), node_proxy_pod(node)),
        ("NAMESPACE".to_string(), ISTIO_SYSTEM.to_string()),
        ("NODE_NAME".to_string(), node.to_string()),
        (
            "CLUSTER_ID".to_string(),
            crate::cluster::CLUSTER_ID.to_string(),
        ),
    ])
}

fn placeholder_spec(
    node: &str,
    service_account: &str,
    named_ports: &BTreeMap<String, u16>,
) -> PodSpec {
    let ports: Vec<ContainerPort> = named_ports
        .iter()
        .map(|(name, port)| ContainerPort {
            name: Some(name.clone()),
            container_port: i32::from(*port),
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        })
        .collect();
    PodSpec {
        node_name: Some(node.into()),
        service_account_name: Some(service_account.into()),
        automount_service_account_token: Some(false),
        containers: vec![Container {
            name: "main".into(),
            image: Some(NO_KUBELET_IMAGE.into()),
            ports: (!ports.is_empty()).then_some(ports),
            ..Container::default()
        }],
        ..PodSpec::default()
    }
}

/// Creates (or keeps) a Pod and returns its UID.
async fn create_pod(client: &Client, pod: &Pod) -> Result<String, ControlPlaneError> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    create_or_keep(&api, pod, &format!("pod {namespace}/{name}")).await?;
    let created = api
        .get(&name)
        .await
        .map_err(api_err(format!("reading pod {namespace}/{name}")))?;
    Ok(created.metadata.uid.unwrap_or_default())
}

/// Marks a pod Running and Ready at `ip`, as its kubelet would.
pub async fn set_running(
    client: &Client,
    namespace: &str,
    name: &str,
    ip: IpAddr,
) -> Result<(), ControlPlaneError> {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let status = PodStatus {
        phase: Some("Running".into()),
        pod_ip: Some(ip.to_string()),
        pod_ips: Some(vec![PodIP { ip: ip.to_string() }]),
        conditions: Some(vec![PodCondition {
            type_: "Ready".into(),
            status: "True".into(),
            ..PodCondition::default()
        }]),
        ..PodStatus::default()
    };
    let patch = serde_json::json!({ "status": status });
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(api_err(format!(
            "setting the status of pod {namespace}/{name}"
        )))?;
    Ok(())
}

/// Puts `world` into the API server: Nodes, namespaces, ServiceAccounts,
/// Services, Pods (running and ready) and a node proxy Pod per node.
pub async fn apply(client: &Client, world: &World) -> Result<Applied, ControlPlaneError> {
    let mut applied = Applied::default();
    let nodes: Api<Node> = Api::all(client.clone());
    for node in &world.nodes {
        create_or_keep(
            &nodes,
            &Node {
                metadata: meta(node, None),
                ..Node::default()
            },
            &format!("node {node}"),
        )
        .await?;
    }

    let mut accounts: Vec<(&str, &str)> = world
        .pods
        .iter()
        .map(|p| (p.namespace.as_str(), p.service_account.as_str()))
        .collect();
    accounts.push((ISTIO_SYSTEM, ZTUNNEL_ACCOUNT));
    accounts.sort_unstable();
    accounts.dedup();
    let mut namespaces: Vec<&str> = accounts.iter().map(|(ns, _)| *ns).collect();
    namespaces.extend(world.services.iter().map(|s| s.namespace.as_str()));
    namespaces.sort_unstable();
    namespaces.dedup();
    for namespace in namespaces {
        create_namespace(client, namespace).await?;
    }
    for (namespace, account) in accounts {
        let api: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
        create_or_keep(
            &api,
            &ServiceAccount {
                metadata: meta(account, Some(namespace)),
                ..ServiceAccount::default()
            },
            &format!("service account {namespace}/{account}"),
        )
        .await?;
    }

    for service in &world.services {
        let api: Api<Service> = Api::namespaced(client.clone(), &service.namespace);
        let object = Service {
            metadata: meta(&service.name, Some(&service.namespace)),
            spec: Some(ServiceSpec {
                cluster_ip: Some(service.vip.to_string()),
                selector: Some(service.selector.clone()),
                ports: Some(
                    service
                        .ports
                        .iter()
                        .map(|(port, target)| (*port, IntOrString::Int(i32::from(*target))))
                        .chain(
                            service
                                .named_targets
                                .iter()
                                .map(|(port, name)| (*port, IntOrString::String(name.clone()))),
                        )
                        .map(|(port, target)| ServicePort {
                            name: Some(format!("tcp-{port}")),
                            port: i32::from(port),
                            target_port: Some(target),
                            protocol: Some("TCP".into()),
                            ..ServicePort::default()
                        })
                        .collect(),
                ),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        };
        create_or_keep(
            &api,
            &object,
            &format!("service {}/{}", service.namespace, service.name),
        )
        .await?;
    }

    for pod in &world.pods {
        let mut metadata = meta(&pod.name, Some(&pod.namespace));
        metadata.labels = Some(pod.labels.clone());
        if pod.captured {
            metadata.annotations = Some(BTreeMap::from([(
                REDIRECTION_ANNOTATION.to_string(),
                "enabled".to_string(),
            )]));
        }
        let uid = create_pod(
            client,
            &Pod {
                metadata,
                spec: Some(placeholder_spec(
                    &pod.node,
                    &pod.service_account,
                    &pod.named_ports,
                )),
                ..Pod::default()
            },
        )
        .await?;
        set_running(client, &pod.namespace, &pod.name, pod.ip).await?;
        applied
            .pod_uids
            .insert(format!("{}/{}", pod.namespace, pod.name), uid);
    }

    for node in &world.nodes {
        let name = node_proxy_pod(node);
        let uid = create_pod(
            client,
            &Pod {
                metadata: meta(&name, Some(ISTIO_SYSTEM)),
                spec: Some(placeholder_spec(node, ZTUNNEL_ACCOUNT, &BTreeMap::new())),
                ..Pod::default()
            },
        )
        .await?;
        applied.node_proxies.insert(node.clone(), (name, uid));
    }
    Ok(applied)
}

/// Deletes a pod (as its node would report it gone).
pub async fn delete_pod(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<(), ControlPlaneError> {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        ..DeleteParams::default()
    };
    match api.delete(name, &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(e) => Err(api_err(format!("deleting pod {namespace}/{name}"))(e)),
    }
}

/// The field manager hbone-lab's server-side applies go by.
pub const FIELD_MANAGER: &str = "hbone-lab";

/// Applies every document of `yaml` (any kind the API server serves, e.g.
/// the lab's AuthorizationPolicies) by server-side apply: created, or
/// updated in place; a namespace named that does not exist is created.
/// Returns `Kind namespace/name` of each.
pub async fn apply_yaml(
    client: &Client,
    yaml: &str,
    source: &str,
) -> Result<Vec<String>, ControlPlaneError> {
    use serde::Deserialize as _;
    let mut applied = Vec::new();
    for (i, document) in serde_yaml::Deserializer::from_str(yaml).enumerate() {
        let bad = |reason: String| ControlPlaneError::Document {
            source_name: source.to_string(),
            index: i + 1,
            reason,
        };
        let value = serde_yaml::Value::deserialize(document).map_err(|e| bad(e.to_string()))?;
        if value.is_null() {
            continue;
        }
        let object: kube::api::DynamicObject =
            serde_json::from_value(json_of(value)).map_err(|e| bad(e.to_string()))?;
        let (api, name) = dynamic_api(client, &object).map_err(bad)?;
        let label = format!(
            "{} {}/{name}",
            object.types.as_ref().map_or("", |t| t.kind.as_str()),
            object.metadata.namespace.as_deref().unwrap_or("")
        );
        // A namespace the document names is made first, as a lab expects.
        if let Some(namespace) = &object.metadata.namespace {
            create_namespace(client, namespace).await?;
        }
        api.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&object),
        )
        .await
        .map_err(api_err(format!("applying {label} from {source}")))?;
        applied.push(label);
    }
    Ok(applied)
}

/// Deletes what `yaml` names (each document's kind, namespace and name);
/// what is already gone is fine.
pub async fn delete_yaml(
    client: &Client,
    yaml: &str,
    source: &str,
) -> Result<(), ControlPlaneError> {
    use serde::Deserialize as _;
    for document in serde_yaml::Deserializer::from_str(yaml) {
        let Ok(value) = serde_yaml::Value::deserialize(document) else {
            continue;
        };
        let Ok(object) = serde_json::from_value::<kube::api::DynamicObject>(json_of(value)) else {
            continue;
        };
        let Ok((api, name)) = dynamic_api(client, &object) else {
            continue;
        };
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(e) => return Err(api_err(format!("deleting {name} (from {source})"))(e)),
        }
    }
    Ok(())
}

/// A YAML document as the JSON the API server takes: YAML allows keys
/// that are not strings (`portLevelMtls: {9090: …}`), JSON does not, so
/// they become their text, as kubectl sends them.
fn json_of(value: serde_yaml::Value) -> serde_json::Value {
    use serde_yaml::Value as Y;
    match value {
        Y::Null => serde_json::Value::Null,
        Y::Bool(b) => b.into(),
        Y::Number(n) => serde_json::to_value(&n).unwrap_or(serde_json::Value::Null),
        Y::String(s) => s.into(),
        Y::Sequence(items) => items.into_iter().map(json_of).collect(),
        Y::Mapping(map) => map
            .into_iter()
            .map(|(k, v)| {
                let key = match k {
                    Y::String(s) => s,
                    other => serde_yaml::to_string(&other)
                        .unwrap_or_default()
                        .trim_end()
                        .to_string(),
                };
                (key, json_of(v))
            })
            .collect::<serde_json::Map<_, _>>()
            .into(),
        Y::Tagged(tagged) => json_of(tagged.value),
    }
}

/// The API for `object`'s kind (from its `apiVersion` and `kind`) in its
/// namespace, and its name.
fn dynamic_api(
    client: &Client,
    object: &kube::api::DynamicObject,
) -> Result<(Api<kube::api::DynamicObject>, String), String> {
    let types = object
        .types
        .as_ref()
        .ok_or_else(|| "no apiVersion and kind".to_string())?;
    let (group, version) = match types.api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", types.api_version.as_str()),
    };
    let gvk = kube::api::GroupVersionKind::gvk(group, version, &types.kind);
    let resource = kube::api::ApiResource::from_gvk(&gvk);
    let name = object
        .metadata
        .name
        .clone()
        .ok_or_else(|| "no metadata.name".to_string())?;
    let api = match &object.metadata.namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    };
    Ok((api, name))
}
