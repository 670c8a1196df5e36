//! Which proxy runs on each node of the netns lab — hbone-lab's, a real
//! ztunnel, or one of each — and, for ztunnel nodes, the roles around it
//! that hbone-lab plays: istiod (CA and xDS on 15012 inside the node's
//! namespace) and istio-cni (a ZDS node agent handing over the node's pods).
//!
//! Both proxies get the same thing from the same source: the registry's
//! workloads and services as `Address` resources, and the lab's policies
//! translated as istiod does — which is also what hbone-lab's own proxy
//! decides on.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use hbone_ca::server::CaService;
use hbone_harness::netns::NetNs;
use hbone_policies::istio::IstioPolicies;
use hbone_proxy::net::pod_sockets::bind_listener;
use hbone_proxy::registry::{Protocol, Registry};
use hbone_proxy::sources::zds::{self, ZdsStatus};
use hbone_proxy::state::ProxyCore;
use hbone_xds::zds::{NodeAgent, ZdsPod};
use hbone_xds::{Mesh, MeshService, MeshWorkload, RunningControlPlane, XdsState};

use crate::lab::topology::{Cause, LabError, Part};
use hbone_harness::ztunnel::{Mode as ZtunnelMode, Settings, Ztunnel};

/// The node proxies of the lab.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dataplane {
    /// hbone-lab's proxy on every node.
    #[default]
    HboneLab,
    /// A shared-mode ztunnel on every node, fed over xDS and ZDS.
    Ztunnel,
    /// ztunnel on node-1, hbone-lab on node-2: every cross-node connection
    /// crosses from one implementation to the other.
    Mixed,
}

impl Dataplane {
    /// Does `node` run ztunnel?
    pub fn ztunnel_on(self, node: &str) -> bool {
        match self {
            Dataplane::HboneLab => false,
            Dataplane::Ztunnel => true,
            Dataplane::Mixed => node == "node-1",
        }
    }

    /// Its name as the command line spells it (and `from_str` parses).
    pub fn name(self) -> &'static str {
        match self {
            Dataplane::HboneLab => "hbone-lab",
            Dataplane::Ztunnel => "ztunnel",
            Dataplane::Mixed => "mixed",
        }
    }
}

impl FromStr for Dataplane {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "hbone-lab" => Ok(Dataplane::HboneLab),
            "ztunnel" => Ok(Dataplane::Ztunnel),
            "mixed" => Ok(Dataplane::Mixed),
            other => Err(format!(
                "unknown data plane {other:?}: hbone-lab, ztunnel or mixed"
            )),
        }
    }
}

/// The registry and policies as what a control plane serves.
pub fn mesh(registry: &Registry, policies: &IstioPolicies) -> Mesh {
    let services: Vec<MeshService> = registry
        .services
        .iter()
        .map(|s| MeshService {
            name: s.name.clone(),
            namespace: s.namespace.clone(),
            hostname: s.hostname(&registry.trust_domain),
            vips: s.vips.clone(),
            ports: s.ports.iter().map(|(p, t)| (*p, *t)).collect(),
        })
        .collect();
    let workloads = registry
        .workloads
        .iter()
        .map(|w| MeshWorkload {
            uid: w.uid.to_string(),
            name: w.name.to_string(),
            namespace: w.namespace.to_string(),
            service_account: w.service_account.to_string(),
            trust_domain: registry.trust_domain.clone(),
            labels: (*w.labels).clone(),
            ips: w.ips.to_vec(),
            node: w.node.to_string(),
            hbone: w.protocol == Protocol::Hbone,
            services: registry
                .services
                .iter()
                .zip(&services)
                .filter(|(s, _)| s.selects(w))
                .map(|(s, m)| (m.key(), s.ports.iter().map(|(p, t)| (*p, *t)).collect()))
                .collect(),
        })
        .collect();
    Mesh {
        workloads,
        services,
        policies: policies.clone(),
    }
}

/// The certificate lifetime ztunnel nodes ask for: short, so that the
/// rotation scenario sees ztunnel renew by itself (at half of it).
pub const ZTUNNEL_SECRET_TTL: Duration = Duration::from_secs(20);

/// A node of the lab whose proxy is a real ztunnel.
pub struct ZtunnelNode {
    /// The node's name (`node-1` or `node-2`).
    pub node: String,
    /// The running ztunnel process; killed when dropped.
    pub ztunnel: Ztunnel,
    /// The ZDS node agent that hands ztunnel the node's pods.
    pub agent: NodeAgent,
    /// What answers on 127.0.0.1:15012 inside the node's namespace.
    pub control: NodeControl,
}

/// Who serves a ztunnel node's CA and xDS on 127.0.0.1:15012 in its namespace.
pub enum NodeControl {
    /// hbone-lab's own control plane, serving there.
    Lab(RunningControlPlane),
    /// A relay to the real istiod on the host.
    Istiod(crate::lab::istiod::NodeRelay),
}

/// How a ztunnel node proves itself to its control plane.
#[derive(Debug, Clone, Copy)]
pub enum NodeCredential<'a> {
    /// A bearer token, written to a file for ztunnel.
    Token(&'a str),
    /// A file someone keeps fresh (a pod-bound Kubernetes token).
    TokenFile(&'a Path),
}

/// What starting a ztunnel node needs from the lab.
pub struct ZtunnelNodeSpec<'a> {
    /// The node to start it on.
    pub node: &'a str,
    /// The node's network namespace, where ztunnel runs.
    pub netns: &'a NetNs,
    /// The ztunnel executable.
    pub binary: &'a Path,
    /// The node's pods are its workloads with a network namespace.
    pub registry: &'a Registry,
    /// Where sockets, tokens and logs go.
    pub dir: &'a Path,
    /// The mesh root certificate (PEM), which ztunnel trusts for its control plane.
    pub root_pem: &'a str,
    /// How ztunnel authenticates to its control plane.
    pub credential: NodeCredential<'a>,
    /// The certificate lifetime ztunnel asks for (`None`: its default, 24 h).
    pub secret_ttl: Option<Duration>,
    /// ztunnel's `RUST_LOG`.
    pub log_level: &'a str,
}

impl ZtunnelNodeSpec<'_> {
    fn fail(&self, what: &str, e: impl Into<Cause>) -> LabError {
        LabError::failed(Part::Proxy, format!("ztunnel on {}: {what}", self.node), e)
    }
}

/// Serves the CA and xDS on 127.0.0.1:15012 inside the node's namespace,
/// where the node's ztunnel finds them.
pub async fn serve_node_control_plane(
    node: &str,
    netns: &NetNs,
    ca: Arc<CaService>,
    xds: Arc<XdsState>,
) -> Result<RunningControlPlane, LabError> {
    let fail = |what: &str, e: Cause| {
        LabError::failed(Part::Proxy, format!("control plane on {node}: {what}"), e)
    };
    let listener = bind_listener(Some(netns.sockets()), ([127, 0, 0, 1], 15012).into())
        .map_err(|e| fail("listener", e.into()))?;
    let listener =
        tokio::net::TcpListener::from_std(listener).map_err(|e| fail("listener", e.into()))?;
    hbone_xds::serve_on(ca, xds, listener, &[])
        .await
        .map_err(|e| fail("serving", e.into()))
}

/// Starts the node agent with the node's pods and a shared-mode ztunnel fed
/// by the control plane at `control_url` (as dialled from the node), and
/// waits until ztunnel holds every pod.
pub async fn start_shared_ztunnel(
    spec: &ZtunnelNodeSpec<'_>,
    control_url: String,
) -> Result<(Ztunnel, NodeAgent), LabError> {
    let write = |name: &str, text: &str| -> Result<PathBuf, LabError> {
        let path = spec.dir.join(format!("{}-{name}", spec.node));
        std::fs::write(&path, text).map_err(|e| spec.fail(name, e))?;
        Ok(path)
    };
    let root_ca = write("root.pem", spec.root_pem)?;
    let token_file = match spec.credential {
        NodeCredential::Token(token) => write("token", token)?,
        NodeCredential::TokenFile(path) => path.to_path_buf(),
    };
    let uds = spec.dir.join(format!("{}-ztunnel.sock", spec.node));
    let agent = NodeAgent::listen(&uds, node_pods(spec.registry, spec.node))
        .map_err(|e| spec.fail("node agent", e))?;
    let ztunnel = Ztunnel::start(
        spec.netns,
        Settings {
            name: spec.node.to_string(),
            binary: spec.binary.to_path_buf(),
            control_plane: control_url,
            root_ca,
            token_file,
            node: spec.node.to_string(),
            mode: ZtunnelMode::Shared { inpod_uds: uds },
            log: spec.dir.join(format!("{}-ztunnel.log", spec.node)),
            log_level: spec.log_level.into(),
            secret_ttl: spec.secret_ttl,
            local_config: None,
        },
    )
    .map_err(|e| spec.fail("start", e))?;
    agent
        .wait_synced(Duration::from_secs(20))
        .await
        .map_err(|e| {
            spec.fail(
                "take its pods over ZDS",
                format!("{e}; its log ends with:\n{}", ztunnel.log_tail(15)),
            )
        })?;
    refused_pod(&agent).map_err(|e| spec.fail("refused a pod", e))?;
    Ok((ztunnel, agent))
}

/// The first pod the proxy refused, as `uid: error`.
fn refused_pod(agent: &NodeAgent) -> Result<(), String> {
    match agent.status().nacks.first() {
        Some((uid, error)) => Err(format!("{uid}: {error}")),
        None => Ok(()),
    }
}

/// The node's pods as its node agent hands them over: those with a
/// network namespace.
pub fn node_pods(registry: &Registry, node: &str) -> Vec<ZdsPod> {
    registry
        .workloads
        .iter()
        .filter(|w| &*w.node == node)
        .filter_map(|w| {
            Some(ZdsPod {
                uid: w.uid.to_string(),
                name: w.name.to_string(),
                namespace: w.namespace.to_string(),
                service_account: w.service_account.to_string(),
                netns: w.netns.as_deref()?.to_path_buf(),
            })
        })
        .collect()
}

/// hbone-lab's proxy in shared mode, as ztunnel runs: the node agent that
/// hands it the node's pods, and the proxy following it.
pub struct HboneNodeAgent {
    /// Dropped first (fields drop in order): the proxy stops following
    /// before the agent goes, so its end is not reported as a failure.
    _follow: tokio_util::sync::DropGuard,
    /// The ZDS node agent serving the proxy the node's pods.
    pub agent: NodeAgent,
}

impl HboneNodeAgent {
    /// Starts the node agent on a socket in `dir` with the node's pods and
    /// points `core` at it; call before the proxy starts, then
    /// [`Self::wait_served`].
    pub fn start(core: &Arc<ProxyCore>, registry: &Registry, dir: &Path) -> Result<Self, LabError> {
        let node = core.node.clone();
        let socket = dir.join(format!("{node}-hbone-lab.sock"));
        let agent = NodeAgent::listen(&socket, node_pods(registry, &node))
            .map_err(|e| LabError::failed(Part::Proxy, format!("node agent of {node}"), e))?;
        let stop = tokio_util::sync::CancellationToken::new();
        let (status, _) = tokio::sync::watch::channel(ZdsStatus::default());
        tokio::spawn(zds::follow(
            core.clone(),
            socket,
            Duration::from_secs(1),
            status,
            stop.clone(),
        ));
        Ok(HboneNodeAgent {
            agent,
            _follow: stop.drop_guard(),
        })
    }

    /// Waits until the proxy serves every pod of the node.
    pub async fn wait_served(&self, node: &str) -> Result<(), LabError> {
        let fail = |e: Cause| {
            LabError::failed(
                Part::Proxy,
                format!("hbone-lab on {node}: take its pods over ZDS"),
                e,
            )
        };
        self.agent
            .wait_synced(Duration::from_secs(20))
            .await
            .map_err(|e| fail(e.into()))?;
        refused_pod(&self.agent).map_err(|e| fail(e.into()))
    }
}

impl ZtunnelNode {
    /// Serves the control plane in the node's namespace, starts the node
    /// agent with the node's pods and a shared-mode ztunnel, and waits until
    /// ztunnel holds every pod.
    pub async fn start(
        spec: ZtunnelNodeSpec<'_>,
        ca: Arc<CaService>,
        xds: Arc<XdsState>,
    ) -> Result<ZtunnelNode, LabError> {
        let control = serve_node_control_plane(spec.node, spec.netns, ca, xds).await?;
        let (ztunnel, agent) = start_shared_ztunnel(&spec, control.url()).await?;
        Ok(ZtunnelNode {
            node: spec.node.to_string(),
            ztunnel,
            agent,
            control: NodeControl::Lab(control),
        })
    }

    /// Relays 127.0.0.1:15012 in the node's namespace to the real istiod
    /// at `istiod`, starts the node agent with the node's pods and a
    /// shared-mode ztunnel, and waits until ztunnel holds every pod.
    pub async fn start_on_istiod(
        spec: ZtunnelNodeSpec<'_>,
        istiod: std::net::SocketAddr,
    ) -> Result<ZtunnelNode, LabError> {
        let relay = crate::lab::istiod::NodeRelay::start(spec.node, spec.netns, istiod)?;
        let (ztunnel, agent) =
            start_shared_ztunnel(&spec, crate::lab::istiod::NodeRelay::url()).await?;
        Ok(ZtunnelNode {
            node: spec.node.to_string(),
            ztunnel,
            agent,
            control: NodeControl::Istiod(relay),
        })
    }

    /// How long ztunnel's log is now, as an offset for [`Self::log_since`].
    pub fn log_len(&self) -> usize {
        std::fs::metadata(&self.ztunnel.settings.log).map_or(0, |m| m.len() as usize)
    }

    /// Lines of ztunnel's log written since `offset` bytes (its access log
    /// and errors), and the new offset.
    pub fn log_since(&self, offset: usize) -> (Vec<String>, usize) {
        let text = std::fs::read_to_string(&self.ztunnel.settings.log).unwrap_or_default();
        let start = offset.min(text.len());
        let lines = text[start..].lines().map(String::from).collect();
        (lines, text.len())
    }

    /// Lines of its log that report a connection refused by policy.
    pub fn policy_rejections(&self) -> Vec<String> {
        let (lines, _) = self.log_since(0);
        lines
            .into_iter()
            .filter(|l| l.contains("policy rejection"))
            .collect()
    }

    /// The serial of the certificate ztunnel holds for `spiffe_id`, from its config dump.
    pub async fn serial_of(&self, spiffe_id: &str) -> Option<String> {
        let dump = self.ztunnel.config_dump().await.ok()?;
        find_serial(&dump, spiffe_id)
    }

    /// Stops ztunnel and its node agent, then the node's own control plane if it has one.
    pub async fn shutdown(self) {
        drop(self.ztunnel);
        drop(self.agent);
        if let NodeControl::Lab(control) = self.control {
            control.server.shutdown().await;
        }
    }
}

/// ztunnel's config dump lists certificates as
/// `{identity, state, certChain: [{serialNumber, …}, …]}`; the first of
/// the chain is the leaf.
fn find_serial(dump: &serde_json::Value, spiffe_id: &str) -> Option<String> {
    dump["certificates"]
        .as_array()?
        .iter()
        .find(|c| c["identity"].as_str() == Some(spiffe_id))?["certChain"]
        .get(0)?["serialNumber"]
        .as_str()
        .map(String::from)
}
