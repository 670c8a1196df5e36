//! The netns lab's side of the real Istio control plane: the lab's
//! registry as the Kubernetes objects istiod reads ([`world_of`]), and
//! istiod made reachable from inside a node's namespace ([`NodeRelay`]).
//!
//! istiod and the API server listen on the host's loopback (see
//! `hbone-control-plane`); a ztunnel runs inside its node's namespace,
//! where that loopback is not. Each node gets a relay on 127.0.0.1:15012
//! in its namespace — where ztunnel looks for istiod in a cluster — that
//! forwards to istiod. istiod's serving certificate carries 127.0.0.1
//! (`ISTIOD_CUSTOM_HOST`), so ztunnel checks it without `ALT_*_HOSTNAME`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use hbone_ca::RenewalPolicy;
use hbone_ca::plugin::PluginCerts;
use hbone_control_plane::cluster::{ISTIO_SYSTEM, ISTIOD_HOST};
use hbone_control_plane::tokens::PodToken;
use hbone_control_plane::world::{self, World, WorldPod, WorldService};
use hbone_control_plane::{ControlPlane, ControlPlaneOptions, Given, Programs};
use hbone_harness::netns::NetNs;
use hbone_policies::istio::{AuthorizationPolicy, IstioPolicies, PeerAuthentication};
use hbone_proxy::net::pod_sockets::bind_listener;
use hbone_proxy::registry::{Protocol, Registry};
use hbone_proxy::sources::xds::XdsSettings;
use hbone_proxy::state::{CaAccess, CaToken};
use kube::Api;
use tokio_util::sync::CancellationToken;

use crate::lab::topology::{LabError, Part};

/// Where a node's ztunnel finds istiod, inside the node's namespace.
pub const ISTIOD_IN_NODE: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 15012);

/// The lab's registry as API objects: a pod per workload (HBONE ones
/// annotated as captured), a Service per service with its selector.
pub fn world_of(registry: &Registry) -> World {
    World {
        nodes: registry.nodes.iter().map(|n| n.name.clone()).collect(),
        pods: registry
            .workloads
            .iter()
            .filter_map(|w| {
                Some(WorldPod {
                    name: w.name.to_string(),
                    namespace: w.namespace.to_string(),
                    service_account: w.service_account.to_string(),
                    labels: (*w.labels).clone(),
                    ip: *w.ips.first()?,
                    node: w.node.to_string(),
                    captured: w.protocol == Protocol::Hbone,
                    named_ports: Default::default(),
                })
            })
            .collect(),
        services: registry
            .services
            .iter()
            .filter_map(|s| {
                Some(WorldService {
                    name: s.name.clone(),
                    namespace: s.namespace.clone(),
                    vip: *s.vips.first()?,
                    ports: s.ports.iter().map(|(p, t)| (*p, *t)).collect(),
                    named_targets: Vec::new(),
                    selector: s.selector.as_deref().cloned().unwrap_or_default(),
                })
            })
            .collect(),
    }
}

/// A TCP relay from 127.0.0.1:15012 inside a node's namespace to istiod;
/// stops when dropped.
pub struct NodeRelay {
    _stop: tokio_util::sync::DropGuard,
}

impl NodeRelay {
    /// Listens in `netns` and forwards every connection to `istiod`.
    pub fn start(node: &str, netns: &NetNs, istiod: SocketAddr) -> Result<NodeRelay, LabError> {
        let what = format!("the relay to istiod in {node}");
        let listener = bind_listener(Some(netns.sockets()), ISTIOD_IN_NODE)
            .map_err(|e| LabError::failed(Part::Proxy, what.clone(), e))?;
        let listener = tokio::net::TcpListener::from_std(listener)
            .map_err(|e| LabError::failed(Part::Proxy, what, e))?;
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = stopped.cancelled() => return,
                };
                let Ok((mut inbound, _)) = accepted else {
                    continue;
                };
                let stopped = stopped.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(istiod).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = stopped.cancelled() => {}
                    }
                });
            }
        });
        Ok(NodeRelay {
            _stop: stop.drop_guard(),
        })
    }

    /// The address a ztunnel in the node dials (`CA_ADDRESS`, `XDS_ADDRESS`).
    pub fn url() -> String {
        format!("https://{ISTIOD_IN_NODE}")
    }
}

/// The real control plane serving the lab: istiod signing with the lab's
/// plug-in CA, the lab's world and policies in the API server, a
/// pod-bound token per node. Stopped (every program, every file) when
/// dropped.
pub struct IstiodPlane {
    /// Each node's token file, kept fresh.
    pub tokens: BTreeMap<String, PodToken>,
    /// etcd, kube-apiserver and istiod.
    pub control: ControlPlane,
    _mesh_ca: tempfile::TempDir,
}

fn failed(what: impl Into<String>, e: impl Into<crate::lab::topology::Cause>) -> LabError {
    LabError::failed(Part::ControlPlane, what, e)
}

impl IstiodPlane {
    /// Starts the control plane with `plugin` as istiod's signing CA, puts
    /// `registry` and `policies` into the API server, and issues each
    /// node's token.
    pub async fn start(
        given: &Given,
        plugin: &PluginCerts,
        registry: &Registry,
        policies: &IstioPolicies,
    ) -> Result<IstiodPlane, LabError> {
        let (control, mesh_ca) = start_signing_with(given, plugin, Vec::new()).await?;
        let applied = world::apply(&control.client, &world_of(registry))
            .await
            .map_err(|e| failed("the lab's pods and services", e))?;
        let plane = IstiodPlane {
            tokens: BTreeMap::new(),
            control,
            _mesh_ca: mesh_ca,
        };
        plane.sync_policies(policies).await?;
        let mut tokens = BTreeMap::new();
        for node in applied.node_proxies.keys() {
            let token = plane
                .control
                .node_token(&applied, node)
                .await
                .map_err(|e| failed(format!("{node}'s token"), e))?;
            tokens.insert(node.clone(), token);
        }
        Ok(IstiodPlane { tokens, ..plane })
    }

    /// How a node's proxy reaches istiod's CA: its token file.
    pub fn ca_access(
        &self,
        node: &str,
        renewal: RenewalPolicy,
        key_log: Option<PathBuf>,
    ) -> CaAccess {
        CaAccess {
            address: self.control.istiod_url(),
            root_pem: self.control.root_pem.clone(),
            token: CaToken::File(self.token_file(node)),
            renewal,
            key_log,
            crl: None,
        }
    }

    fn token_file(&self, node: &str) -> PathBuf {
        self.tokens
            .get(node)
            .map(|t| t.path.clone())
            .unwrap_or_else(|| self.control.dir.join(format!("{node}.token")))
    }

    /// How a node's proxy follows istiod: ztunnel's node id and metadata
    /// for the node's proxy pod, the same token.
    pub fn xds_settings(&self, node: &str) -> XdsSettings {
        XdsSettings {
            address: self.control.istiod_url(),
            root_pem: self.control.root_pem.clone(),
            token_file: Some(self.token_file(node)),
            node_id: world::node_proxy_id(node, ISTIOD_HOST.parse().expect("an address")),
            metadata: world::node_proxy_metadata(node),
            root_namespace: ISTIO_SYSTEM.into(),
            max_backoff: std::time::Duration::from_secs(2),
        }
    }

    /// Makes the API server hold exactly `policies` (see [`sync_policies`]);
    /// istiod pushes the change to every node proxy.
    pub async fn sync_policies(&self, policies: &IstioPolicies) -> Result<(), LabError> {
        sync_policies(&self.control.client, policies).await
    }
}

/// Starts etcd, kube-apiserver and istiod with `plugin` as istiod's signing
/// CA (so hbone-lab's CA and istiod share one root) and `istiod_env` added
/// to istiod's environment. The folder holding the CA files lives as long
/// as the returned guard.
pub async fn start_signing_with(
    given: &Given,
    plugin: &PluginCerts,
    istiod_env: Vec<(String, String)>,
) -> Result<(ControlPlane, tempfile::TempDir), LabError> {
    let programs = Programs::find(given).map_err(|e| failed("finding istiod", e))?;
    let mesh_ca = tempfile::Builder::new()
        .prefix("hbone-lab-cacerts-")
        .tempdir()
        .map_err(|e| failed("a folder for istiod's CA files", e))?;
    plugin
        .write(mesh_ca.path())
        .map_err(|e| failed("writing istiod's CA files", e))?;
    let mut options = ControlPlaneOptions::new(programs);
    options.mesh_ca = Some(mesh_ca.path().to_path_buf());
    options.istiod_env.extend(istiod_env);
    let control = ControlPlane::start(options)
        .await
        .map_err(|e| failed("starting etcd, kube-apiserver and istiod", e))?;
    Ok((control, mesh_ca))
}

/// Makes the API server behind `client` hold exactly `policies`: each
/// applied (server-side), any other AuthorizationPolicy or
/// PeerAuthentication deleted.
pub async fn sync_policies(
    client: &kube::Client,
    policies: &IstioPolicies,
) -> Result<(), LabError> {
    let mut wanted = Vec::new();
    let mut yaml = String::new();
    for p in policies.authorization() {
        wanted.push((
            "AuthorizationPolicy",
            p.metadata.namespace.clone(),
            p.metadata.name.clone(),
        ));
        yaml.push_str(&to_document(p)?);
    }
    for p in policies.peer_authentication() {
        wanted.push((
            "PeerAuthentication",
            p.metadata.namespace.clone(),
            p.metadata.name.clone(),
        ));
        yaml.push_str(&to_document(p)?);
    }
    world::apply_yaml(client, &yaml, "the lab's policies")
        .await
        .map_err(|e| failed("applying the lab's policies", e))?;
    let gone = [
        unwanted::<AuthorizationPolicy>(client, "AuthorizationPolicy", &wanted).await?,
        unwanted::<PeerAuthentication>(client, "PeerAuthentication", &wanted).await?,
    ]
    .concat();
    world::delete_yaml(client, &gone, "policies no longer in the lab")
        .await
        .map_err(|e| failed("removing policies", e))
}

/// The objects of kind `K` in the API server that `wanted` does not name,
/// as YAML documents.
async fn unwanted<K>(
    client: &kube::Client,
    kind: &'static str,
    wanted: &[(&'static str, Option<String>, Option<String>)],
) -> Result<String, LabError>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + serde::Serialize,
    K: std::fmt::Debug,
{
    let present: Api<K> = Api::all(client.clone());
    let listed = present
        .list(&Default::default())
        .await
        .map_err(|e| failed(format!("listing the {kind}s in the API server"), e))?;
    let mut stale = String::new();
    for p in listed {
        let meta = p.meta();
        let key = (kind, meta.namespace.clone(), meta.name.clone());
        if !wanted.contains(&key) {
            stale.push_str(&to_document(&p)?);
        }
    }
    Ok(stale)
}

/// One YAML document (with its `---`) for a policy.
fn to_document(object: &impl serde::Serialize) -> Result<String, LabError> {
    serde_yaml::to_string(object)
        .map(|text| format!("---\n{text}"))
        .map_err(|e| failed("writing a policy as YAML", e))
}
