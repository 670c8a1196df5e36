//! The running standalone lab: CA, a proxy per node, PostgreSQL, hello-app,
//! the gateway — in loopback mode (127.x addresses, SOCKS5) or in netns
//! mode (namespaces, in-pod capture, the Cilium layer, the outside world's
//! stand-ins).
//!
//! - [`topology`]: what the lab is made of — pods, addresses per mode, the policy view.
//! - [`plumbing`]: netns mode's namespaces, in-pod capture and the Cilium layer.
//! - [`sni_relay`]: the node-side SNI check that stands in for Cilium's Envoy.
//! - [`dataplane`]: hbone-lab's proxy, ztunnel or one of each on the nodes, and ztunnel's control plane.
//! - [`istiod`]: the lab on the real istiod: its registry as API objects, istiod reachable from a node's namespace.
//! - here: [`Lab`], which starts them in order ([`Lab::start`]).

pub mod dataplane;
pub mod istiod;
pub mod plumbing;
pub mod sni_relay;
pub mod topology;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hbone_ca::metrics::CaMetrics;
use hbone_ca::plugin::PluginCerts;
use hbone_ca::server::{CaService, RunningCa, serve};
use hbone_ca::tokens::TokenFile;
use hbone_ca::{AuthorityConfig, IdentityPattern, RenewalPolicy, SigningAuthority};
use hbone_control_plane::Given;
use hbone_harness::netns::can_create;
use hbone_policies::authorization::MeshAuthorization;
use hbone_policies::istio::IstioPolicies;
use hbone_policies::lab::lab_resources;
use hbone_policies::matrix::{PolicySet, ROOT_NAMESPACE};
use hbone_proxy::ProxyHandle;
use hbone_proxy::config::Listeners;
use hbone_proxy::net::pod_sockets::{Netns, NetnsError, bind_listener, tcp_socket};
use hbone_proxy::observe::refusal::{Direction, Reason};
use hbone_proxy::registry::{Node, Protocol, Registry, RegistryFile, Service, Workload};
use hbone_proxy::sources::xds::{XdsStatus, follow, registry_from};
use hbone_proxy::state::{CaAccess, CaToken, CoreSettings, ProxyCore};
use hbone_workloads::db::{Database, DbConfig};
use hbone_workloads::dial::{Connect, Dialer, futures_lite::BoxedConnect};
use hbone_workloads::gateway::{GatewayConfig, serve as serve_gateway};
use hbone_workloads::hello::{HelloConfig, serve as serve_hello};
use hbone_workloads::pgserver::{PgError, PgServer};
use hbone_workloads::public_api::{self, PublicCa, StandIn};
use hbone_xds::XdsState;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::lab::dataplane::{
    Dataplane, HboneNodeAgent, NodeCredential, ZTUNNEL_SECRET_TTL, ZtunnelNode, ZtunnelNodeSpec,
    mesh,
};
use crate::lab::istiod::IstiodPlane;
use crate::lab::plumbing::{CLOUDFLARE_IP, GITHUB_IP, NetnsPlumbing, remove_stale};
use crate::lab::topology::{
    HELLO_HOST, HELLO_PORT, LabError, Mode, PODS, POSTGRES_HOST, POSTGRES_PORT, Part, ip, lab_pod,
    topology_for,
};
use hbone_harness::ztunnel::find_binary;

const NODE_TOKEN: &str = "standalone-lab-node-token";

/// Options for starting the lab.
#[derive(Debug, Clone)]
pub struct LabOptions {
    /// Where the gateway listens for people in loopback mode (`curl http://…/`).
    pub gateway_listen: SocketAddr,
    /// When hbone-lab's proxies renew certificates: lifetime asked, jitter, retry backoff.
    pub renewal: RenewalPolicy,
    /// Loopback (the default, no privileges) or network namespaces (root).
    pub mode: Mode,
    /// Which proxy runs on each node (ztunnel needs netns mode).
    pub dataplane: Dataplane,
    /// The ztunnel binary (else `ZTUNNEL_BIN`), for ztunnel nodes.
    pub ztunnel: Option<PathBuf>,
    /// hbone-lab's proxies write their mesh TLS secrets here (to decrypt a capture).
    pub key_log: Option<PathBuf>,
    /// Feed every node proxy from the real istiod (on a real kube-apiserver)
    /// instead of hbone-lab's own CA and xDS; the programs to run (each
    /// `None` is looked for as `hbone_control_plane::peers::find` says).
    pub istiod: Option<Given>,
}

impl Default for LabOptions {
    fn default() -> Self {
        LabOptions {
            gateway_listen: "127.0.0.1:0".parse().expect("literal"),
            renewal: RenewalPolicy::default(),
            mode: Mode::Loopback,
            dataplane: Dataplane::HboneLab,
            ztunnel: None,
            key_log: None,
            istiod: None,
        }
    }
}

/// A running lab.
pub struct Lab {
    /// How the lab is wired: loopback or network namespaces.
    pub mode: Mode,
    /// The lab's CA server, where hbone-lab's proxies get their certificates.
    pub ca: RunningCa,
    /// The CA's counters (certificates issued, refusals by reason).
    pub ca_metrics: Arc<CaMetrics>,
    /// What signs the workloads' certificates, under the mesh root.
    pub authority: Arc<SigningAuthority>,
    /// The lab's nodes, workloads and services, as the proxies route by them.
    pub registry: Arc<Registry>,
    /// Both layers; the proxies enforce the Istio half, netns mode's
    /// iptables the Cilium half.
    pub policies: Arc<PolicySet>,
    /// hbone-lab's node proxies (none on a ztunnel node).
    pub nodes: Vec<ProxyHandle>,
    /// Which proxy runs on each node.
    pub dataplane: Dataplane,
    /// The nodes whose proxy is a real ztunnel, with their control plane and node agent.
    pub ztunnels: Vec<ZtunnelNode>,
    /// What the ztunnels are served (the registry and the lab's policies).
    pub xds: Option<Arc<XdsState>>,
    /// Sockets, tokens and logs of the ztunnel nodes.
    pub ztunnel_dir: Option<tempfile::TempDir>,
    /// Netns mode: the node agents handing hbone-lab's proxies their pods.
    pub node_agents: Vec<HboneNodeAgent>,
    _agent_dir: Option<tempfile::TempDir>,
    /// The PostgreSQL server behind hello-app; `None` when PostgreSQL is not installed.
    pub postgres: Option<PgServer>,
    /// Why there is no database, when there is none.
    pub postgres_missing: Option<String>,
    /// Where people reach the gateway (in netns mode: from the world namespace).
    pub gateway: SocketAddr,
    /// Where hello-app listens: its pod address and port.
    pub hello: SocketAddr,
    /// Netns mode: the namespaces and what runs in them.
    pub plumbing: Option<NetnsPlumbing>,
    /// Netns mode: the CA behind the outside world's stand-ins.
    pub public_ca: Option<PublicCa>,
    /// hbone-lab's proxies' view of istiod, by node (when istiod feeds them).
    pub xds_status: Vec<(String, watch::Receiver<XdsStatus>)>,
    /// Stops the proxies following istiod (before istiod goes).
    _xds_follow: Option<tokio_util::sync::DropGuard>,
    /// The real control plane, when it feeds the lab; last to go.
    pub istiod: Option<IstiodPlane>,
}

/// The ztunnel binary the options need (none for hbone-lab only), or why
/// the options cannot run together.
fn check_options(options: &LabOptions) -> Result<Option<PathBuf>, LabError> {
    let (mode, dataplane) = (options.mode, options.dataplane);
    let ztunnel_binary = match dataplane {
        Dataplane::HboneLab => None,
        _ if mode != Mode::Netns => {
            return Err(LabError::refused(
                Part::Netns,
                format!(
                    "--dataplane {} runs ztunnel in shared mode, one per node namespace: add --netns (as root)",
                    dataplane.name()
                ),
            ));
        }
        _ => Some(
            find_binary(options.ztunnel.as_deref())
                .map_err(|e| LabError::failed(Part::Proxy, "finding ztunnel", e))?,
        ),
    };
    if options.istiod.is_some() && mode != Mode::Netns {
        // The API server allocates Service VIPs from its range
        // (10.96.0.0/16); the loopback lab's are 127.x.
        return Err(LabError::refused(
            Part::ControlPlane,
            "--control-plane istiod runs the netns lab, whose Service VIPs the API server can allocate: add --netns (as root)",
        ));
    }
    Ok(ztunnel_binary)
}

/// Netns mode's namespaces, capture and Cilium layer (stale ones from an
/// earlier run removed first); nothing in loopback mode.
async fn start_plumbing(
    mode: Mode,
    policies: &PolicySet,
) -> Result<Option<NetnsPlumbing>, LabError> {
    Ok(match mode {
        Mode::Loopback => None,
        Mode::Netns => {
            if !can_create() {
                return Err(LabError::refused(
                    Part::Netns,
                    "--netns needs root and iproute2 (`ip`); run it with sudo, or without --netns for the loopback lab",
                ));
            }
            let topology = topology_for(Mode::Netns);
            let cilium = policies.cilium.clone();
            let plumbing = tokio::task::spawn_blocking(move || {
                for name in remove_stale() {
                    tracing::warn!(%name, "removed a namespace left by an earlier run");
                }
                NetnsPlumbing::create(&topology, &cilium)
            })
            .await
            .map_err(|e| LabError::failed(Part::Netns, "creating the namespaces", e))??;
            Some(plumbing)
        }
    })
}

/// The lab's CA: a plug-in root (which istiod signs with too, when it
/// feeds the lab), the nodes' token, the CA server, and how a node reaches it.
struct LabCa {
    plugin: PluginCerts,
    authority: Arc<SigningAuthority>,
    tokens: Arc<TokenFile>,
    service: Arc<CaService>,
    running: RunningCa,
    metrics: Arc<CaMetrics>,
    access: CaAccess,
}

impl LabCa {
    async fn start(options: &LabOptions, ztunnel: bool) -> Result<LabCa, LabError> {
        let mut authority_config = AuthorityConfig::new("cluster.local");
        if ztunnel {
            // ztunnel renews at half of (not_after - not_before): with the
            // default minute of backdating, its short lab certificates would
            // be due at once.
            authority_config.backdate = Duration::from_secs(1);
        }
        // Plug-in CA files, so that istiod (when it feeds the lab) signs
        // with the same intermediate and every certificate shares one root.
        let plugin = PluginCerts::generate("cluster.local")
            .map_err(|e| LabError::failed(Part::Ca, "generating the mesh root", e))?;
        let authority = Arc::new(
            SigningAuthority::from_plugin(&plugin, authority_config)
                .map_err(|e| LabError::failed(Part::Ca, "loading the mesh root", e))?,
        );
        // A node may obtain any demo identity, and ztunnel its own.
        let grants: Vec<IdentityPattern> = [
            "spiffe://cluster.local/ns/demo/sa/*",
            "spiffe://cluster.local/ns/istio-system/sa/ztunnel",
        ]
        .iter()
        .map(|p| p.parse())
        .collect::<Result<_, _>>()
        .map_err(|e: hbone_ca::identity::IdentityError| {
            LabError::failed(Part::Ca, "the nodes' identity grants", e)
        })?;
        let ca_metrics = Arc::new(CaMetrics::default());
        let tokens = Arc::new(TokenFile::single(NODE_TOKEN, grants));
        let service = Arc::new(CaService::new(
            authority.clone(),
            tokens.clone(),
            ca_metrics.clone(),
        ));
        let ca = serve(service.clone(), SocketAddr::new(ip("127.0.10.1"), 0), &[])
            .await
            .map_err(|e| LabError::failed(Part::Ca, "serving", e))?;
        let ca_access = CaAccess {
            address: ca.url(),
            root_pem: authority.root_pem().to_string(),
            token: CaToken::Value(NODE_TOKEN.into()),
            renewal: options.renewal.clone(),
            key_log: options.key_log.clone(),
            crl: None,
        };
        Ok(LabCa {
            plugin,
            authority,
            tokens,
            service,
            running: ca,
            metrics: ca_metrics,
            access: ca_access,
        })
    }
}

/// hbone-lab's node proxies (on the nodes ztunnel does not take), each
/// with its node agent in netns mode and following istiod when it feeds
/// the lab.
struct HboneNodes {
    nodes: Vec<ProxyHandle>,
    node_agents: Vec<HboneNodeAgent>,
    agent_dir: Option<tempfile::TempDir>,
    xds_status: Vec<(String, watch::Receiver<XdsStatus>)>,
}

impl HboneNodes {
    async fn start(
        options: &LabOptions,
        registry: &Arc<Registry>,
        policies: &PolicySet,
        ca: &LabCa,
        istiod: Option<&IstiodPlane>,
        follow_stop: &tokio_util::sync::CancellationToken,
    ) -> Result<HboneNodes, LabError> {
        let (mode, dataplane) = (options.mode, options.dataplane);
        let mut xds_status = Vec::new();
        let mut nodes = Vec::new();
        let mut node_agents = Vec::new();
        // Netns mode: hbone-lab runs in shared mode, as ztunnel does — one
        // process per node, its pods handed over by a node agent (ZDS).
        let agent_dir = match mode {
            Mode::Netns => Some(
                tempfile::Builder::new()
                    .prefix("hbone-lab-zds-")
                    .tempdir()
                    .map_err(|e| {
                        LabError::failed(Part::Proxy, "a directory for the node agents", e)
                    })?,
            ),
            Mode::Loopback => None,
        };
        for (node, addr) in [("node-1", "127.0.11.1"), ("node-2", "127.0.11.2")] {
            if dataplane.ztunnel_on(node) {
                continue;
            }
            let settings = CoreSettings {
                bind_source_ip: mode == Mode::Loopback,
                ..CoreSettings::for_node(node)
            };
            // Fed by istiod: nothing known until its first push.
            let core = match istiod {
                Some(istiod) => {
                    let empty = registry_from(std::iter::empty(), node).map_err(|e| {
                        LabError::failed(Part::Proxy, format!("assembling {node}"), e)
                    })?;
                    let core = ProxyCore::with_ca(
                        settings,
                        Arc::new(empty),
                        MeshAuthorization::pushed(ROOT_NAMESPACE, Vec::new()),
                        &istiod.ca_access(node, options.renewal.clone(), options.key_log.clone()),
                    );
                    if let Ok(core) = &core {
                        core.set_waiting_for(Some("istiod".into()));
                    }
                    core
                }
                None => ProxyCore::with_ca(
                    settings,
                    registry.clone(),
                    policies.istio.clone(),
                    &ca.access,
                ),
            }
            .map_err(|e| LabError::failed(Part::Proxy, format!("assembling {node}"), e))?;
            let core = Arc::new(core);
            let at = |port| Some(SocketAddr::new(ip(addr), port));
            let in_pod = mode == Mode::Netns;
            let listeners = Listeners {
                socks5: at(0),
                metrics: at(0),
                admin: at(0),
                readiness: at(0),
                pod_outbound_port: in_pod.then_some(15001),
                plaintext_port: in_pod.then_some(15006),
                ..Listeners::default()
            };
            let agent = match &agent_dir {
                Some(dir) => Some(HboneNodeAgent::start(&core, registry, dir.path())?),
                None => None,
            };
            nodes.push(
                ProxyHandle::start(core.clone(), &listeners)
                    .await
                    .map_err(|e| LabError::failed(Part::Proxy, format!("starting {node}"), e))?,
            );
            if let Some(istiod) = &istiod {
                let (tx, rx) = watch::channel(XdsStatus::default());
                tokio::spawn(follow(
                    core,
                    istiod.xds_settings(node),
                    tx,
                    follow_stop.clone(),
                ));
                wait_synced(node, rx.clone()).await?;
                xds_status.push((node.to_string(), rx));
            }
            if let Some(agent) = agent {
                agent.wait_served(node).await?;
                node_agents.push(agent);
            }
        }
        Ok(HboneNodes {
            nodes,
            node_agents,
            agent_dir,
            xds_status,
        })
    }
}

/// The ztunnels of a lab, when it has any.
#[derive(Default)]
struct Ztunnels {
    ztunnels: Vec<ZtunnelNode>,
    xds: Option<Arc<XdsState>>,
    dir: Option<tempfile::TempDir>,
}

/// What the ztunnels start on.
struct ZtunnelsOn<'a> {
    binary: &'a Path,
    plumbing: &'a NetnsPlumbing,
    dataplane: Dataplane,
    registry: &'a Arc<Registry>,
    policies: &'a PolicySet,
    ca: &'a LabCa,
    istiod: Option<&'a IstiodPlane>,
}

impl ZtunnelsOn<'_> {
    /// One shared-mode ztunnel per node the data plane gives it, fed by
    /// hbone-lab's control plane or by istiod.
    async fn start(self) -> Result<Ztunnels, LabError> {
        let ZtunnelsOn {
            binary,
            plumbing,
            dataplane,
            registry,
            policies,
            ca,
            istiod,
        } = self;
        let mut ztunnels = Vec::new();
        let state = istiod
            .is_none()
            .then(|| XdsState::new(&mesh(registry, &policies.istio), Some(ca.tokens.clone())));
        let dir = tempfile::Builder::new()
            .prefix("hbone-lab-ztunnel-")
            .tempdir()
            .map_err(|e| LabError::failed(Part::Proxy, "a directory for ztunnel", e))?;
        for node in ["node-1", "node-2"]
            .into_iter()
            .filter(|n| dataplane.ztunnel_on(n))
        {
            let token_file;
            let spec = ZtunnelNodeSpec {
                node,
                netns: &plumbing.nodes[node],
                binary,
                registry,
                dir: dir.path(),
                root_pem: ca.authority.root_pem(),
                credential: match istiod {
                    Some(istiod) => {
                        token_file = istiod.tokens[node].path.clone();
                        NodeCredential::TokenFile(&token_file)
                    }
                    None => NodeCredential::Token(NODE_TOKEN),
                },
                secret_ttl: Some(ZTUNNEL_SECRET_TTL),
                log_level: "info",
            };
            ztunnels.push(match (istiod, &state) {
                (Some(istiod), _) => {
                    ZtunnelNode::start_on_istiod(spec, istiod.control.istiod_ports.secure_grpc)
                        .await?
                }
                (None, Some(state)) => {
                    ZtunnelNode::start(spec, ca.service.clone(), state.clone()).await?
                }
                (None, None) => {
                    unreachable!("a state is made when istiod does not feed the lab")
                }
            });
        }
        Ok(Ztunnels {
            ztunnels,
            xds: state,
            dir: Some(dir),
        })
    }
}

/// Loads the lab's policies, both layers (`policies/`, compiled in).
pub fn lab_policies() -> Result<PolicySet, LabError> {
    let loaded = lab_resources()
        .map_err(|e| LabError::failed(Part::Policies, "loading the lab's policies", e))?;
    Ok(PolicySet::from_loaded(&loaded))
}

/// The lab's workloads and services as the proxies' registry (PostgreSQL
/// on its usual port, no namespaces attached).
pub fn lab_registry(mode: Mode) -> Result<Registry, LabError> {
    registry(mode, POSTGRES_PORT, &|_| None)
}

fn registry(
    mode: Mode,
    pg_port: u16,
    netns: &dyn Fn(&str) -> Option<PathBuf>,
) -> Result<Registry, LabError> {
    let workloads = PODS
        .iter()
        .map(|p| Workload {
            name: p.name.into(),
            namespace: "demo".into(),
            service_account: p.service_account.into(),
            labels: p.label_map().into(),
            ips: Box::new([p.addr(mode)]),
            node: p.node.into(),
            protocol: Protocol::Hbone,
            netns: netns(p.name).map(PathBuf::into_boxed_path),
            ..Workload::default()
        })
        .collect();
    let service = |name: &str, vip: &str, port: u16, target: u16| Service {
        name: name.into(),
        namespace: "demo".into(),
        hostname: None,
        vips: vec![ip(vip)],
        ports: BTreeMap::from([(port, target)]),
        selector: Some(BTreeMap::from([("app".to_string(), name.to_string())]).into()),
    };
    let (hello_vip, postgres_vip) = mode.vips();
    Registry::from_file(RegistryFile {
        trust_domain: "cluster.local".into(),
        nodes: ["node-1", "node-2"]
            .map(|n| Node { name: n.into() })
            .to_vec(),
        workloads,
        services: vec![
            service("hello-app", hello_vip, HELLO_PORT, HELLO_PORT),
            service("postgres", postgres_vip, POSTGRES_PORT, pg_port),
        ],
    })
    .map_err(|e| LabError::refused(Part::Workload, format!("registry {e}")))
}

/// A pod's own way out in netns mode: sockets made inside its namespace,
/// so the pod's iptables capture them exactly as they would an unmodified
/// client's. Names resolve from a fixed table, like the pod's DNS would.
#[derive(Debug)]
struct InPod {
    /// The pod's namespace, or why it could not be opened (said on connect).
    netns: Result<Netns, Arc<NetnsError>>,
    names: BTreeMap<String, IpAddr>,
}

impl Connect for InPod {
    fn connect(&self, addr: SocketAddr) -> BoxedConnect {
        let netns = self.netns.clone();
        Box::pin(async move {
            let netns = netns.map_err(|e| std::io::Error::other(e.to_string()))?;
            let socket =
                tcp_socket(Some(&netns), addr, None, None).map_err(std::io::Error::other)?;
            socket.connect(addr).await
        })
    }

    fn resolve(&self, host: &str) -> Option<IpAddr> {
        self.names.get(host).copied()
    }
}

async fn start_postgres(
    mode: Mode,
    netns: Option<PathBuf>,
) -> Result<(Option<PgServer>, Option<String>), LabError> {
    let pg_ip = lab_pod("postgres").addr(mode);
    // Its own address, so the usual port: policies name 5432.
    let started = tokio::task::spawn_blocking(move || {
        PgServer::start_in(
            netns.as_deref(),
            pg_ip,
            POSTGRES_PORT,
            "hello",
            "hello",
            "hellodb",
        )
    })
    .await
    .map_err(|e| LabError::failed(Part::Workload, "starting PostgreSQL", e))?;
    match started {
        Ok(pg) => Ok((Some(pg), None)),
        Err(e @ PgError::NotInstalled) => Ok((None, Some(e.to_string()))),
        Err(e) => Err(LabError::failed(Part::Workload, "PostgreSQL", e)),
    }
}

impl Lab {
    /// hbone-lab's proxy of `node`; `None` when ztunnel runs there.
    pub fn node(&self, node: &str) -> Option<&ProxyHandle> {
        self.nodes.iter().find(|p| p.core.node == node)
    }

    /// The ztunnel of `node`, when ztunnel runs there.
    pub fn ztunnel(&self, node: &str) -> Option<&ZtunnelNode> {
        self.ztunnels.iter().find(|z| z.node == node)
    }

    /// Serves `policies` to every node proxy — swapped into hbone-lab's
    /// proxies, pushed over xDS to the ztunnels (and waited for until they
    /// have answered) — and returns how many open streams hbone-lab's
    /// proxies closed.
    pub async fn apply_policies(&self, policies: &IstioPolicies) -> usize {
        if let Some(istiod) = &self.istiod {
            let before = self.revoked();
            if let Err(e) = istiod.sync_policies(policies).await {
                tracing::warn!(error = %e, "the policies did not reach the API server");
            }
            self.wait_pushed(policies).await;
            return self.revoked() - before;
        }
        if let Some(xds) = &self.xds {
            xds.update(&mesh(&self.registry, policies));
            if !xds.wait_answered(Duration::from_secs(10)).await {
                tracing::warn!("a ztunnel did not answer the policy push within 10 s");
            }
        }
        self.nodes
            .iter()
            .map(|node| node.core.replace_policies(policies.clone()).len())
            .sum()
    }

    /// Open streams hbone-lab's proxies have closed for a policy change, so far.
    fn revoked(&self) -> usize {
        self.nodes
            .iter()
            .map(|n| {
                n.core
                    .metrics
                    .refusal_count(Direction::Inbound, Reason::PolicyRevoked)
                    as usize
            })
            .sum()
    }

    /// Waits (up to 10 s) until every node proxy holds `policies` as
    /// istiod pushed them: the same policy names as their translation.
    async fn wait_pushed(&self, policies: &IstioPolicies) {
        let mut want: Vec<String> = policies
            .translated()
            .policies()
            .iter()
            .map(|p| p.key())
            .collect();
        want.sort();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        for node in &self.nodes {
            loop {
                let mut held: Vec<String> = node
                    .core
                    .policies()
                    .policies()
                    .iter()
                    .map(|p| p.key())
                    .collect();
                held.sort();
                if held == want {
                    break;
                }
                if tokio::time::Instant::now() > deadline {
                    tracing::warn!(node = %node.core.node, ?held, ?want, "istiod's push did not arrive within 10 s");
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        for z in &self.ztunnels {
            let pushed = z
                .ztunnel
                .wait_for_dump("hold istiod's push", Duration::from_secs(10), |d| {
                    d["policies"].as_array().map_or(0, Vec::len) == want.len()
                })
                .await;
            if let Err(e) = pushed {
                tracing::warn!(node = %z.node, error = %e, "istiod's push did not reach ztunnel");
            }
        }
    }

    /// The pod's workload entry.
    pub fn pod(&self, name: &str) -> &Workload {
        self.registry
            .workloads
            .iter()
            .find(|w| &*w.name == name)
            .expect("a lab pod")
    }

    /// The handle on the pod namespace at `path` (netns mode): the
    /// plumbing's own, so its socket thread is shared; one opened here if
    /// the plumbing does not hold it.
    fn pod_netns(&self, path: &Path) -> Result<Netns, NetnsError> {
        let held = self.plumbing.as_ref().and_then(|p| {
            p.pods
                .values()
                .find(|ns| ns.path() == path)
                .map(|ns| ns.sockets().clone())
        });
        held.map_or_else(|| Netns::open(path), Ok)
    }

    /// How a pod reaches the mesh: in loopback mode its node's SOCKS5 from
    /// its own address; in netns mode a plain socket in its namespace, which
    /// the pod's iptables redirect to the proxy.
    pub fn dialer(&self, pod: &str) -> Dialer {
        let w = self.pod(pod);
        match &w.netns {
            Some(netns) => {
                let (hello_vip, postgres_vip) = self.mode.vips();
                let names = [
                    (HELLO_HOST, hello_vip),
                    (POSTGRES_HOST, postgres_vip),
                    ("api.github.com", GITHUB_IP),
                    ("api.cloudflare.com", CLOUDFLARE_IP),
                ]
                .into_iter()
                .map(|(name, addr)| (name.to_string(), ip(addr)))
                .collect();
                Dialer::Custom(Arc::new(InPod {
                    netns: self.pod_netns(netns).map_err(Arc::new),
                    names,
                }))
            }
            None => Dialer::Socks5 {
                proxy: self
                    .node(&w.node)
                    .and_then(|n| n.addrs.socks5)
                    .expect("loopback mode runs hbone-lab's proxies with socks5"),
                source: Some(w.ips[0]),
            },
        }
    }

    /// Starts the lab, in its order: the options checked, the namespaces
    /// (netns mode), PostgreSQL (its port goes into the registry), the CA,
    /// the control plane (istiod, when it feeds the lab), hbone-lab's node
    /// proxies, the ztunnels, then — once every workload has its
    /// certificate — the outside world's stand-ins and the applications.
    pub async fn start(options: LabOptions) -> Result<Self, LabError> {
        let (mode, dataplane) = (options.mode, options.dataplane);
        let ztunnel_binary = check_options(&options)?;
        let policies = Arc::new(lab_policies()?);
        let plumbing = start_plumbing(mode, &policies).await?;
        let netns_of = |pod: &str| plumbing.as_ref().map(|p| p.pod_path(pod));
        let (postgres, postgres_missing) = start_postgres(mode, netns_of("postgres")).await?;
        let pg_port = postgres
            .as_ref()
            .map(|p| p.addr.port())
            .unwrap_or(POSTGRES_PORT);
        let registry = Arc::new(registry(mode, pg_port, &netns_of)?);
        let ca = LabCa::start(&options, ztunnel_binary.is_some()).await?;
        let istiod = match &options.istiod {
            Some(given) => {
                Some(IstiodPlane::start(given, &ca.plugin, &registry, &policies.istio).await?)
            }
            None => None,
        };
        let follow_stop = tokio_util::sync::CancellationToken::new();
        let hbone = HboneNodes::start(
            &options,
            &registry,
            &policies,
            &ca,
            istiod.as_ref(),
            &follow_stop,
        )
        .await?;
        let zt = match (&ztunnel_binary, &plumbing) {
            (Some(binary), Some(plumbing)) => {
                let on = ZtunnelsOn {
                    binary,
                    plumbing,
                    dataplane,
                    registry: &registry,
                    policies: &policies,
                    ca: &ca,
                    istiod: istiod.as_ref(),
                };
                on.start().await?
            }
            _ => Ztunnels::default(),
        };
        let hello = SocketAddr::new(lab_pod("hello-app").addr(mode), HELLO_PORT);
        let gateway = match mode {
            Mode::Loopback => options.gateway_listen,
            Mode::Netns => SocketAddr::new(lab_pod("hello-gateway").addr(mode), 80),
        };
        let mut lab = Lab {
            mode,
            ca: ca.running,
            ca_metrics: ca.metrics,
            authority: ca.authority,
            registry,
            policies,
            nodes: hbone.nodes,
            dataplane,
            ztunnels: zt.ztunnels,
            xds: zt.xds,
            ztunnel_dir: zt.dir,
            node_agents: hbone.node_agents,
            _agent_dir: hbone.agent_dir,
            postgres,
            postgres_missing,
            gateway,
            hello,
            plumbing,
            public_ca: None,
            xds_status: hbone.xds_status,
            _xds_follow: Some(follow_stop.drop_guard()),
            istiod,
        };
        lab.wait_for_certificates().await?;
        if lab.plumbing.is_some() {
            lab.start_world().await?;
        }
        lab.start_apps().await?;
        Ok(lab)
    }

    async fn wait_for_certificates(&self) -> Result<(), LabError> {
        // Through istiod, the first certificates take a TokenReview and a
        // pod lookup each: allow more than the lab's own CA needs.
        let within = if self.istiod.is_some() { 30 } else { 10 };
        for w in &self.registry.workloads {
            // ztunnel fetches its pods' certificates on its own.
            let Some(node) = self.node(&w.node) else {
                continue;
            };
            let certs = &node.core.certs;
            tokio::time::timeout(Duration::from_secs(within), certs.get(w.identity()))
                .await
                .map_err(|_| {
                    LabError::refused(
                        Part::Ca,
                        format!("no certificate for {} in {within} s", w.identity()),
                    )
                })?
                .map_err(|e| {
                    LabError::failed(Part::Ca, format!("a certificate for {}", w.identity()), e)
                })?;
        }
        Ok(())
    }

    /// A listener for a pod: inside its namespace in netns mode.
    fn listen(&self, pod: &str, addr: SocketAddr) -> Result<TcpListener, LabError> {
        let netns = self.pod(pod).netns.as_deref().map(|p| self.pod_netns(p));
        let netns = netns
            .transpose()
            .map_err(|e| LabError::failed(Part::Workload, format!("{pod}'s namespace"), e))?;
        let std = bind_listener(netns.as_ref(), addr).map_err(|e| {
            LabError::failed(Part::Workload, format!("{pod} cannot listen on {addr}"), e)
        })?;
        TcpListener::from_std(std).map_err(|e| {
            LabError::failed(Part::Workload, format!("{pod} cannot listen on {addr}"), e)
        })
    }

    /// Netns mode: the outside world's stand-ins and the nodes' SNI relays.
    async fn start_world(&mut self) -> Result<(), LabError> {
        let public = PublicCa::generate()
            .map_err(|e| LabError::failed(Part::Workload, "the public APIs' stand-in CA", e))?;
        let Some(plumbing) = self.plumbing.as_mut() else {
            return Ok(());
        };
        let world = plumbing.world.sockets().clone();
        for (name, addr, answer) in [
            ("api.github.com", GITHUB_IP, StandIn::github()),
            ("api.cloudflare.com", CLOUDFLARE_IP, StandIn::cloudflare()),
        ] {
            let tls = public.server_config(&[name]).map_err(|e| {
                LabError::failed(Part::Workload, format!("{name}'s certificate"), e)
            })?;
            let listen = format!("{name}'s stand-in on {addr}:443");
            let std = bind_listener(Some(&world), SocketAddr::new(ip(addr), 443))
                .map_err(|e| LabError::failed(Part::Netns, listen.clone(), e))?;
            let listener =
                TcpListener::from_std(std).map_err(|e| LabError::failed(Part::Netns, listen, e))?;
            tokio::spawn(public_api::serve(listener, tls, answer));
        }
        plumbing
            .start_sni_relays(&topology_for(Mode::Netns))
            .await?;
        self.public_ca = Some(public);
        Ok(())
    }

    async fn start_apps(&mut self) -> Result<(), LabError> {
        // hello-app: reaches postgres through the mesh by its service name.
        let db = Database::new(
            DbConfig::new(POSTGRES_HOST, POSTGRES_PORT, "hello", "hello", "hellodb"),
            self.dialer("hello-app"),
        );
        let mut config = HelloConfig::from_env(self.hello);
        config.identity = Some(self.pod("hello-app").identity().to_string());
        config.check_timeout = Duration::from_secs(2);
        if let Some(ca) = &self.public_ca {
            config.extra_ca_pem = Some(ca.pem().to_string());
        }
        let listener = self.listen("hello-app", self.hello)?;
        tokio::spawn(serve_hello(
            config,
            db,
            self.dialer("hello-app"),
            listener,
            std::future::pending(),
        ));

        // The gateway: plain HTTP from people, into the mesh as hello-gateway-istio.
        let listener =
            match self.mode {
                Mode::Loopback => TcpListener::bind(self.gateway).await.map_err(|source| {
                    LabError::GatewayListen {
                        addr: self.gateway,
                        source,
                    }
                })?,
                Mode::Netns => self.listen("hello-gateway", self.gateway)?,
            };
        self.gateway = listener
            .local_addr()
            .map_err(|e| LabError::failed(Part::Workload, "the gateway's address", e))?;
        let config = GatewayConfig {
            upstream_host: HELLO_HOST.into(),
            upstream_port: HELLO_PORT,
            identity: Some(self.pod("hello-gateway").identity().to_string()),
        };
        tokio::spawn(serve_gateway(
            listener,
            config,
            self.dialer("hello-gateway"),
        ));
        Ok(())
    }

    /// Stops the proxies, the CA and PostgreSQL, then removes the namespaces
    /// (and with them every veth and iptables rule of netns mode).
    pub async fn shutdown(mut self) {
        for node in self.nodes.drain(..) {
            node.shutdown(Duration::from_secs(1)).await;
        }
        self.node_agents.clear();
        for node in self.ztunnels.drain(..) {
            node.shutdown().await;
        }
        self.ca.shutdown().await;
        if let Some(mut pg) = self.postgres.take() {
            let _ = tokio::task::spawn_blocking(move || pg.stop()).await;
        }
        if let Some(plumbing) = self.plumbing.take() {
            let _ = tokio::task::spawn_blocking(move || drop(plumbing)).await;
        }
        self._xds_follow.take();
        if let Some(istiod) = self.istiod.take() {
            // Stopping the programs waits for them: not on a runtime thread.
            let _ = tokio::task::spawn_blocking(move || drop(istiod)).await;
        }
    }
}

/// Waits until a proxy following istiod has both types of its first push.
async fn wait_synced(node: &str, mut status: watch::Receiver<XdsStatus>) -> Result<(), LabError> {
    let synced = tokio::time::timeout(
        Duration::from_secs(30),
        status.wait_for(|s| s.synced && s.workloads > 0),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    if synced {
        return Ok(());
    }
    let last = status.borrow().clone();
    Err(LabError::refused(
        Part::ControlPlane,
        format!(
            "hbone-lab on {node} had no push from istiod within 30 s ({} connections, last error: {})",
            last.connects,
            last.last_error.as_deref().unwrap_or("none")
        ),
    ))
}
