//! The three subjects: no proxy, hbone-lab's proxies, and a real ztunnel —
//! each started on the same topology, measured, and stopped, so they can run
//! interleaved. Both meshes get their certificates from one hbone-lab CA.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hbone_ca::metrics::CaMetrics;
use hbone_ca::server::{CaService, RunningCa, serve_listener};
use hbone_ca::tokens::TokenFile;
use hbone_ca::{AuthorityConfig, SigningAuthority};
use hbone_harness::netns::NetNs;
use hbone_harness::ztunnel::{Ztunnel, http_get};
use hbone_policies::load::{istio_policies, parse_documents};
use hbone_proxy::bench_tunnel::BenchTunnel;
use hbone_proxy::net::pod_sockets::bind_listener;
use hbone_proxy::registry::Registry;
use hbone_standalone::lab::dataplane::{
    NodeCredential, ZtunnelNodeSpec, mesh, node_pods, serve_node_control_plane,
    start_shared_ztunnel,
};
use hbone_xds::zds::NodeAgent;
use hbone_xds::{Mesh, RunningControlPlane, XdsState};
use thiserror::Error;

use crate::topology::{CLIENT_IP, SERVER_IP, Topology};

#[derive(Debug, Error)]
/// Why a subject could not be set up or started.
pub enum SubjectError {
    #[error("setup: {0}")]
    /// A setup step failed.
    Setup(String),
    /// A step of the lab's own (a node's control plane, a shared-mode
    /// ztunnel), its cause kept.
    #[error(transparent)]
    Lab(#[from] hbone_standalone::lab::topology::LabError),
    #[error("{what} did not become ready in {secs} s; its log:\n{log}")]
    /// A process did not become ready in time.
    NotReady {
        /// What was waited for.
        what: String,
        /// How long.
        secs: u64,
        /// The tail of its log.
        log: String,
    },
}

fn setup<E: std::fmt::Display>(e: E) -> SubjectError {
    SubjectError::Setup(e.to_string())
}

#[derive(Debug, Clone, PartialEq, Eq)]
/// Who is measured.
pub enum Subject {
    /// No proxy: the client talks to the server.
    Direct,
    /// hbone-lab's proxies, this binary.
    HboneLab,
    /// Another hbone-lab binary (say, `main` before a change), measured in
    /// the same run so that a change's effect is not lost in the drift.
    Baseline(PathBuf),
    /// A real ztunnel.
    Ztunnel {
        /// Its binary.
        binary: PathBuf,
        /// How it is run.
        mode: ZtunnelMode,
    },
    /// A lower rung of the cost ladder: hbone-lab's proxies with
    /// `benchTunnel` set (a TCP relay, or mTLS without HTTP/2), no policy.
    Rung(BenchTunnel),
}

/// How ztunnel is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ZtunnelMode {
    /// As deployed: one ztunnel per node, pods handed over by ZDS, config
    /// and policies over xDS from hbone-lab's control plane.
    #[default]
    Shared,
    /// One ztunnel inside each pod's namespace with a local config file
    /// (how runs before 2026-12 measured it).
    Dedicated,
}

impl Subject {
    /// The subject's name in tables, JSON and charts.
    pub fn name(&self) -> &'static str {
        match self {
            Subject::Direct => "direct",
            Subject::HboneLab => "hbone-lab",
            Subject::Baseline(_) => "baseline",
            Subject::Ztunnel { .. } => "ztunnel",
            Subject::Rung(BenchTunnel::Plain) => "bench-relay",
            Subject::Rung(BenchTunnel::Mtls) => "bench-mtls",
        }
    }
}

/// The cost ladder, bottom up: no proxy, a TCP relay between the two
/// proxies, mTLS without HTTP/2, HBONE.
pub fn ladder() -> [Subject; 4] {
    [
        Subject::Direct,
        Subject::Rung(BenchTunnel::Plain),
        Subject::Rung(BenchTunnel::Mtls),
        Subject::HboneLab,
    ]
}

/// What every subject shares: the CA (reachable from the host and from the
/// pods), the workloads and the policies every mesh subject enforces, and
/// — for a shared-mode ztunnel — a node namespace per pod with hbone-lab's
/// control plane in it.
pub struct Shared {
    /// Where the shared files live (root, token, registry, policies).
    pub dir: tempfile::TempDir,
    /// The hbone-lab binary the mesh subjects run.
    pub proxy_exe: PathBuf,
    cas: Vec<RunningCa>,
    pub(crate) root_file: PathBuf,
    pub(crate) token_file: PathBuf,
    pub(crate) host_ca: SocketAddr,
    pub(crate) pod_ca: SocketAddr,
    root_pem: String,
    pub(crate) registry: Registry,
    mesh: Mesh,
    /// What the control planes serve: every subject fed over xDS reads it.
    xds: Arc<XdsState>,
    /// The control plane on the host (CA and xDS), for hbone-lab's proxies
    /// when they are fed over xDS as ztunnel is.
    host_control: RunningControlPlane,
    nodes: Vec<(NetNs, RunningControlPlane)>,
    /// Async worker threads every proxy process runs with (hbone-lab's
    /// `HBONE_WORKER_THREADS`, ztunnel's `ZTUNNEL_WORKER_THREADS`); `None`
    /// leaves each at its own default (one per core; ztunnel 2).
    pub worker_threads: Option<usize>,
    /// How long both meshes keep an unused pooled HBONE connection
    /// (hbone-lab's `poolIdleTimeout`, ztunnel's `POOL_UNUSED_RELEASE_TIMEOUT`);
    /// `None` leaves each at its default (5 minutes).
    pub pool_idle: Option<Duration>,
    /// The CA every control plane serves, to serve it again after a restart.
    service: Arc<CaService>,
    /// The policies every mesh subject enforces, as last set.
    policies: String,
    /// The registry's two benchmark pods, as [`registry_yaml`] wrote them.
    base_registry: String,
    /// Pods added beside the two ([`Shared::add_pod`]), by name.
    extra_pods: std::collections::BTreeMap<String, ExtraPod>,
}

/// A pod beyond the benchmark's two, added and removed while a run goes
/// on (the churn soak's pods that come and go): no traffic, only its
/// listeners, its certificate and its place in every proxy's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtraPod {
    /// Its name (and uid) in namespace `bench`, service account `churn`.
    pub name: String,
    /// Its address, configured inside `netns`.
    pub ip: std::net::IpAddr,
    /// `node-c` or `node-s`.
    pub node: &'static str,
    /// Its network namespace.
    pub netns: PathBuf,
}

impl ExtraPod {
    fn registry_line(&self) -> String {
        format!(
            "  - {{name: {}, namespace: bench, serviceAccount: churn, labels: {{app: churn}}, ips: [{}], node: {}, netns: {}}}\n",
            self.name,
            self.ip,
            self.node,
            self.netns.display()
        )
    }
}

/// The variable hbone-lab's runtime reads its worker-thread count from.
pub const HBONE_WORKER_THREADS: &str = "HBONE_WORKER_THREADS";
/// The variable ztunnel reads its worker-thread count from.
pub const ZTUNNEL_WORKER_THREADS: &str = "ZTUNNEL_WORKER_THREADS";
/// The variable ztunnel reads its pool's idle timeout from.
const POOL_UNUSED_RELEASE_TIMEOUT: &str = "POOL_UNUSED_RELEASE_TIMEOUT";

/// `var=threads` for a child's environment, or nothing for its default.
fn worker_env(var: &'static str, threads: Option<usize>) -> Option<(&'static str, String)> {
    threads.map(|n| (var, n.to_string()))
}

/// The bearer token every benchmark proxy and ztunnel presents to the benchmark's CA.
pub const TOKEN: &str = "bench-token";
/// What both meshes enforce on every connection: STRICT, and one ALLOW by
/// identity — the per-connection authorization work a real deployment does.
pub const BENCH_POLICIES: &str = "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: bench}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-client, namespace: bench}
spec:
  selector: {matchLabels: {app: server}}
  rules: [{from: [{source: {principals: [cluster.local/ns/bench/sa/client]}}]}]
";
const NODES: [(&str, &str); 2] = [("node-c", "client"), ("node-s", "server")];

impl Shared {
    /// With `ztunnel_nodes`, node namespaces and their control planes are
    /// made for a shared-mode ztunnel.
    pub async fn new(
        topology: &Topology,
        proxy_exe: PathBuf,
        ztunnel_nodes: bool,
    ) -> Result<Self, SubjectError> {
        let dir = tempfile::Builder::new()
            .prefix("hbone-lab-bench-")
            .tempdir()
            .map_err(setup)?;
        let authority = Arc::new(
            SigningAuthority::generate(AuthorityConfig::new("cluster.local")).map_err(setup)?,
        );
        let tokens = format!(
            "tokens:\n  - token: {TOKEN}\n    identities: [\"spiffe://cluster.local/ns/bench/sa/*\"]\n"
        );
        let tokens = Arc::new(TokenFile::parse(&tokens, "bench tokens").map_err(setup)?);
        let service = Arc::new(CaService::new(
            authority.clone(),
            tokens.clone(),
            Arc::new(CaMetrics::default()),
        ));
        // One CA, two doors: on loopback for hbone-lab's proxies, inside the server pod for ztunnel.
        let host = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(setup)?;
        let pod_addr: SocketAddr = format!("{SERVER_IP}:15012").parse().expect("literal");
        let pod = bind_listener(Some(topology.server.sockets()), pod_addr).map_err(setup)?;
        let pod = tokio::net::TcpListener::from_std(pod).map_err(setup)?;
        let host_ca = serve_listener(service.clone(), host, &[])
            .await
            .map_err(setup)?;
        let pod_ca = serve_listener(service.clone(), pod, &[])
            .await
            .map_err(setup)?;
        let root_file = dir.path().join("root.pem");
        std::fs::write(&root_file, authority.root_pem()).map_err(setup)?;
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, TOKEN).map_err(setup)?;
        let registry_text = registry_yaml(topology);
        std::fs::write(dir.path().join("registry.yaml"), &registry_text).map_err(setup)?;
        std::fs::write(dir.path().join("policies.yaml"), BENCH_POLICIES).map_err(setup)?;
        let registry = Registry::parse(&registry_text, "registry.yaml").map_err(setup)?;
        let loaded = parse_documents(BENCH_POLICIES, "policies.yaml").map_err(setup)?;
        let mesh = mesh(&registry, &istio_policies(&loaded, "istio-system"));
        let mut nodes = Vec::new();
        let xds = XdsState::new(&mesh, Some(tokens));
        let host_control = hbone_xds::control_plane::serve(
            service.clone(),
            xds.clone(),
            own_loopback(3, 15012),
            &[],
        )
        .await
        .map_err(setup)?;
        if ztunnel_nodes {
            let tag = std::process::id() % 100_000;
            for (node, _) in NODES {
                let ns = NetNs::create(&format!("hlb-{node}-{tag}")).map_err(setup)?;
                let control =
                    serve_node_control_plane(node, &ns, service.clone(), xds.clone()).await?;
                nodes.push((ns, control));
            }
        }
        Ok(Shared {
            proxy_exe,
            root_file,
            token_file,
            host_ca: host_ca.addr,
            pod_ca: pod_ca.addr,
            cas: vec![host_ca, pod_ca],
            root_pem: authority.root_pem().to_string(),
            registry,
            mesh,
            xds,
            host_control,
            nodes,
            dir,
            worker_threads: None,
            pool_idle: None,
            service,
            policies: BENCH_POLICIES.to_string(),
            base_registry: registry_text,
            extra_pods: Default::default(),
        })
    }

    /// Rebuilds the registry and the mesh from the pods and policies held,
    /// and serves the result to every subject fed over xDS.
    fn rebuild(&mut self) -> Result<(), SubjectError> {
        let mut text = self.base_registry.clone();
        for pod in self.extra_pods.values() {
            text.push_str(&pod.registry_line());
        }
        let loaded = parse_documents(&self.policies, "policies.yaml").map_err(setup)?;
        self.registry = Registry::parse(&text, "registry.yaml").map_err(setup)?;
        self.mesh = mesh(&self.registry, &istio_policies(&loaded, "istio-system"));
        self.xds.update(&self.mesh);
        Ok(())
    }

    /// Adds `pod` to what the control planes serve; its node agent hands it
    /// over separately ([`Shared::zds_pod`]).
    pub fn add_pod(&mut self, pod: ExtraPod) -> Result<(), SubjectError> {
        self.extra_pods.insert(pod.name.clone(), pod);
        self.rebuild()
    }

    /// The pod named `name` as its node agent hands it over.
    pub fn zds_pod(&self, name: &str) -> Option<hbone_xds::zds::ZdsPod> {
        let node = &self.extra_pods.get(name)?.node;
        node_pods(&self.registry, node)
            .into_iter()
            .find(|p| p.name == name)
    }

    /// Takes the pod named `name` out of what the control planes serve.
    pub fn remove_pod(&mut self, name: &str) -> Result<(), SubjectError> {
        self.extra_pods.remove(name);
        self.rebuild()
    }

    /// Restarts every control plane (the host's and the nodes'), as a
    /// rolling istiod does: open xDS streams end, the server stops, and a
    /// new one serves the same state on the same address; every proxy must
    /// reconnect and resubscribe.
    pub async fn restart_control_planes(&mut self) -> Result<(), SubjectError> {
        const GRACE: Duration = Duration::from_secs(5);
        self.xds.disconnect_clients();
        self.host_control.server.stop_within(GRACE).await;
        let addr = self.host_control.server.addr;
        let mut tries = 0;
        self.host_control = loop {
            match hbone_xds::control_plane::serve(self.service.clone(), self.xds.clone(), addr, &[])
                .await
            {
                Ok(control) => break control,
                // The old listener's address may take a moment to come free.
                Err(e) if tries < 50 => {
                    tries += 1;
                    tracing::debug!(error = %e, "the control plane's address is not free yet");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => {
                    return Err(setup(format!(
                        "restarting the control plane on {addr}: {e}"
                    )));
                }
            }
        };
        for ((node, _), (ns, control)) in NODES.iter().zip(self.nodes.iter_mut()) {
            control.server.stop_within(GRACE).await;
            *control =
                serve_node_control_plane(node, ns, self.service.clone(), self.xds.clone()).await?;
        }
        Ok(())
    }

    /// Replaces the policies every mesh subject enforces: the file
    /// hbone-lab's proxies read when they start, the local config a
    /// dedicated ztunnel reads, and what the control planes serve (subjects
    /// fed over xDS get it at once, open connections included).
    pub fn set_policies(&mut self, text: &str) -> Result<(), SubjectError> {
        parse_documents(text, "policies.yaml").map_err(setup)?;
        std::fs::write(self.dir.path().join("policies.yaml"), text).map_err(setup)?;
        self.policies = text.to_string();
        self.rebuild()
    }

    /// Stops the CAs and the control plane.
    pub async fn shutdown(self) {
        for ca in self.cas {
            ca.shutdown().await;
        }
        self.host_control.shutdown().await;
        for (_, control) in self.nodes {
            control.server.shutdown().await;
        }
    }
}

/// The two pods, each on a node of its own, as a registry file says it.
pub fn registry_yaml(topology: &Topology) -> String {
    format!(
        "nodes: [{{name: node-c}}, {{name: node-s}}]\nworkloads:\n  - {{name: client, namespace: bench, serviceAccount: client, labels: {{app: client}}, ips: [{CLIENT_IP}], node: node-c, netns: {}}}\n  - {{name: server, namespace: bench, serviceAccount: server, labels: {{app: server}}, ips: [{SERVER_IP}], node: node-s, netns: {}}}\n",
        topology.client.path().display(),
        topology.server.path().display()
    )
}

/// A started subject; stopping kills its processes.
pub struct Running {
    children: Vec<Child>,
    /// Shared-mode ztunnels and the node agents that handed them their pods.
    ztunnels: Vec<(Ztunnel, NodeAgent)>,
    /// The node agents handing hbone-lab's shared-mode proxies their pods.
    agents: Vec<NodeAgent>,
}

impl Running {
    fn processes(children: Vec<Child>) -> Running {
        Running {
            children,
            ztunnels: Vec::new(),
            agents: Vec::new(),
        }
    }

    /// The node agents handing the subject's shared-mode proxies their
    /// pods, in node order (node-c, node-s); none for other subjects.
    pub fn node_agents(&self) -> Vec<&NodeAgent> {
        self.agents
            .iter()
            .chain(self.ztunnels.iter().map(|(_, agent)| agent))
            .collect()
    }

    /// Every process of the subject, for memory and CPU accounting.
    pub fn pids(&self) -> Vec<u32> {
        self.children
            .iter()
            .map(Child::id)
            .chain(self.ztunnels.iter().map(|(z, _)| z.pid()))
            .collect()
    }

    /// Kills and reaps its processes.
    pub fn stop(mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.children.clear();
        self.ztunnels.clear();
        self.agents.clear();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// An address on a loopback range of this process's own, from its pid
/// (`127.<a>.<b>.<host>:<port>`): two benchmarks or soaks at once never
/// answer each other's readiness checks.
pub fn own_loopback(host: u32, port: u16) -> SocketAddr {
    let pid = std::process::id();
    format!("127.{}.{}.{host}:{port}", 60 + pid % 50, (pid / 50) % 250)
        .parse()
        .expect("a loopback address")
}

/// Writes `config` to `file` and starts `exe proxy --config <file>`, its
/// output going to `log`.
pub fn spawn_proxy(
    exe: &Path,
    config: &str,
    file: &Path,
    log: &Path,
) -> Result<Child, SubjectError> {
    spawn_proxy_with_threads(exe, config, file, log, None)
}

/// [`spawn_proxy`], the proxy's runtime given `threads` worker threads
/// (`None`: its default, one per core).
pub fn spawn_proxy_with_threads(
    exe: &Path,
    config: &str,
    file: &Path,
    log: &Path,
    threads: Option<usize>,
) -> Result<Child, SubjectError> {
    std::fs::write(file, config).map_err(setup)?;
    let (out, err) = log_to(log)?;
    Command::new(exe)
        .args(["proxy", "--config"])
        .arg(file)
        .env("RUST_LOG", "warn")
        .envs(worker_env(HBONE_WORKER_THREADS, threads))
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| setup(format!("starting {}: {e}", exe.display())))
}

pub(crate) fn log_to(path: &Path) -> Result<(Stdio, Stdio), SubjectError> {
    let file = std::fs::File::create(path).map_err(setup)?;
    Ok((
        Stdio::from(file.try_clone().map_err(setup)?),
        Stdio::from(file),
    ))
}

/// Waits (20 s at most) until `addr` answers `path` with 200, from inside `ns`
/// if given; else says `what` was not ready, with the end of its `log`.
pub async fn wait_http_ready(
    ns: Option<&NetNs>,
    addr: SocketAddr,
    path: &str,
    what: &str,
    log: &Path,
) -> Result<(), SubjectError> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let netns = ns.map(NetNs::sockets);
    while Instant::now() < deadline {
        if let Ok((200, _)) = http_get(netns, addr, path).await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(SubjectError::NotReady {
        what: what.into(),
        secs: 20,
        log: std::fs::read_to_string(log).unwrap_or_default(),
    })
}

/// Starts `subject` on `topology`.
pub async fn start(
    subject: &Subject,
    topology: &Topology,
    shared: &Shared,
) -> Result<Running, SubjectError> {
    match subject {
        Subject::Direct => {
            topology.capture(false).map_err(setup)?;
            Ok(Running::processes(Vec::new()))
        }
        Subject::HboneLab => {
            topology.capture(true).map_err(setup)?;
            start_hbone_lab(&shared.proxy_exe, shared, Feed::Files).await
        }
        Subject::Baseline(exe) => {
            topology.capture(true).map_err(setup)?;
            start_hbone_lab(exe, shared, Feed::Files).await
        }
        Subject::Rung(rung) => {
            topology.capture(true).map_err(setup)?;
            start_hbone_lab(&shared.proxy_exe, shared, Feed::Rung(*rung)).await
        }
        Subject::Ztunnel {
            binary,
            mode: ZtunnelMode::Dedicated,
        } => {
            topology.capture(true).map_err(setup)?;
            start_ztunnel(binary, topology, shared).await
        }
        Subject::Ztunnel {
            binary,
            mode: ZtunnelMode::Shared,
        } => {
            topology.capture(true).map_err(setup)?;
            start_shared_ztunnels(binary, shared).await
        }
    }
}

/// Starts `subject` as [`start`] does, hbone-lab's proxies fed over xDS by
/// the host's control plane (workloads, services and the translated
/// policies), as ztunnel in shared mode is: a policy change then reaches
/// both the same way, at the same moment ([`Shared::set_policies`]).
pub async fn start_fed_by_xds(
    subject: &Subject,
    topology: &Topology,
    shared: &Shared,
) -> Result<Running, SubjectError> {
    match subject {
        Subject::HboneLab => {
            topology.capture(true).map_err(setup)?;
            start_hbone_lab(&shared.proxy_exe, shared, Feed::Xds).await
        }
        Subject::Baseline(exe) => {
            topology.capture(true).map_err(setup)?;
            start_hbone_lab(exe, shared, Feed::Xds).await
        }
        other => start(other, topology, shared).await,
    }
}

/// Where hbone-lab's proxies learn the mesh from.
#[derive(Debug, Clone, Copy)]
enum Feed {
    /// The registry and policy files.
    Files,
    /// The same files, the proxies relaying on a lower rung of the ladder.
    Rung(BenchTunnel),
    /// The host's control plane (CA and xDS on one port).
    Xds,
}

/// Whether the hbone-lab build at `exe` runs in shared mode (`--zds`);
/// a baseline built before it does not.
fn knows_shared_mode(exe: &Path) -> bool {
    Command::new(exe)
        .args(["proxy", "--help"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("--zds"))
}

/// hbone-lab's proxy per node. In shared mode, as ztunnel is deployed: one
/// process per node, its pod handed over by a node agent (ZDS). A build
/// from before shared mode finds its pod's namespace in the registry, as
/// it was measured then.
async fn start_hbone_lab(exe: &Path, shared: &Shared, feed: Feed) -> Result<Running, SubjectError> {
    let dir = shared.dir.path();
    let mut children = Vec::new();
    let mut agents = Vec::new();
    let shared_mode = knows_shared_mode(exe);
    for (host, node) in [(1, "node-c"), (2, "node-s")] {
        let (ready, metrics) = (own_loopback(host, 15021), own_loopback(host, 15020));
        let (zds, pod_outbound) = if shared_mode {
            let socket = dir.join(format!("{node}-hbone-lab.sock"));
            let pods = node_pods(&shared.registry, node);
            agents.push(NodeAgent::listen(&socket, pods).map_err(setup)?);
            (format!("zds: {}\n", socket.display()), "")
        } else if node == "node-c" {
            (String::new(), "  podOutboundPort: 15001\n")
        } else {
            (String::new(), "")
        };
        let (source, ca) = match feed {
            Feed::Files => (
                "registry: registry.yaml\npolicies: [policies.yaml]\n".to_string(),
                shared.host_ca,
            ),
            Feed::Rung(rung) => (
                format!("registry: registry.yaml\nbenchTunnel: {}\n", rung.as_str()),
                shared.host_ca,
            ),
            Feed::Xds => {
                let control = shared.host_control.server.addr;
                (format!("xds: \"https://{control}\"\n"), control)
            }
        };
        let pool = match shared.pool_idle {
            Some(idle) => format!("h2: {{poolIdleTimeout: {}ms}}\n", idle.as_millis()),
            None => String::new(),
        };
        let config = format!(
            "node: {node}\n{source}ca: {{address: \"https://{ca}\", rootCert: {}, tokenFile: {}}}\nlisteners:\n  hbonePort: 15008\n  readiness: \"{ready}\"\n  metrics: \"{metrics}\"\n{pod_outbound}{zds}{pool}bindSourceIp: false\ndrainGrace: 1s\n",
            shared.root_file.display(),
            shared.token_file.display()
        );
        let file = dir.join(format!("{node}.yaml"));
        let log = dir.join(format!("hbone-lab-{node}.log"));
        children.push(spawn_proxy_with_threads(
            exe,
            &config,
            &file,
            &log,
            shared.worker_threads,
        )?);
        wait_http_ready(
            None,
            ready,
            "/healthz/ready",
            &format!("hbone-lab proxy {node}"),
            &log,
        )
        .await?;
    }
    for agent in &agents {
        agent
            .wait_synced(Duration::from_secs(20))
            .await
            .map_err(|e| setup(format!("hbone-lab took its pods over ZDS: {e}")))?;
    }
    Ok(Running {
        children,
        ztunnels: Vec::new(),
        agents,
    })
}

async fn start_ztunnel(
    bin: &Path,
    topology: &Topology,
    shared: &Shared,
) -> Result<Running, SubjectError> {
    let dir = shared.dir.path();
    let config = dir.join("ztunnel.yaml");
    std::fs::write(&config, hbone_xds::local_config::render(&shared.mesh)).map_err(setup)?;
    let mut children = Vec::new();
    for (ns, name, ip) in [
        (&topology.client, "client", CLIENT_IP),
        (&topology.server, "server", SERVER_IP),
    ] {
        let log = dir.join(format!("ztunnel-{name}.log"));
        let (out, err) = log_to(&log)?;
        let child = ns
            .command(bin.to_str().unwrap_or("ztunnel"))
            .env("XDS_ADDRESS", "")
            .env("LOCAL_XDS_PATH", &config)
            .env("PROXY_MODE", "dedicated")
            .env("PROXY_WORKLOAD_INFO", format!("bench/{name}/{name}"))
            .env("NODE_NAME", format!("node-{}", &name[..1]))
            .env("CA_ADDRESS", format!("https://{}", shared.pod_ca))
            .env("CA_ROOT_CA", &shared.root_file)
            .env("AUTH_TOKEN", &shared.token_file)
            .env("PACKET_MARK", "1337")
            .env("ENABLE_ORIG_SRC", "false")
            .env("RUST_LOG", "warn")
            .envs(worker_env(ZTUNNEL_WORKER_THREADS, shared.worker_threads))
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(setup)?;
        children.push(child);
        let ready: SocketAddr = format!("{ip}:15021").parse().expect("literal");
        wait_http_ready(
            Some(ns),
            ready,
            "/healthz/ready",
            &format!("ztunnel {name}"),
            &log,
        )
        .await?;
    }
    Ok(Running::processes(children))
}

/// One shared-mode ztunnel per node, its pod handed over by ZDS, fed over xDS.
async fn start_shared_ztunnels(binary: &Path, shared: &Shared) -> Result<Running, SubjectError> {
    let mut ztunnels = Vec::new();
    if shared.nodes.is_empty() {
        return Err(setup(
            "no node namespaces: Shared::new was told there is no shared-mode ztunnel",
        ));
    }
    // The lab starts shared-mode ztunnels with an environment of its own;
    // a script that `exec`s ztunnel (same pid) adds the thread count and
    // the pool's idle timeout.
    let env: Vec<(&str, String)> = worker_env(ZTUNNEL_WORKER_THREADS, shared.worker_threads)
        .into_iter()
        .chain(shared.pool_idle.map(|idle| {
            (
                POOL_UNUSED_RELEASE_TIMEOUT,
                format!("{}ms", idle.as_millis()),
            )
        }))
        .collect();
    let binary = if env.is_empty() {
        binary
    } else {
        &with_env(binary, &env, shared.dir.path())?
    };
    for ((node, _), (netns, control)) in NODES.iter().zip(&shared.nodes) {
        let spec = ZtunnelNodeSpec {
            node,
            netns,
            binary,
            registry: &shared.registry,
            dir: shared.dir.path(),
            root_pem: &shared.root_pem,
            credential: NodeCredential::Token(TOKEN),
            secret_ttl: None,
            log_level: "warn",
        };
        ztunnels.push(start_shared_ztunnel(&spec, control.url()).await?);
    }
    Ok(Running {
        children: Vec::new(),
        ztunnels,
        agents: Vec::new(),
    })
}

/// A script in `dir` that runs `binary` with `env` added to its
/// environment, `exec`ing it so that the pid measured is the binary's.
fn with_env(binary: &Path, env: &[(&str, String)], dir: &Path) -> Result<PathBuf, SubjectError> {
    use std::os::unix::fs::PermissionsExt;
    let assignments: Vec<String> = env
        .iter()
        .map(|(var, value)| format!("{var}={value}"))
        .collect();
    let script = dir.join(format!("ztunnel-{}.sh", assignments.join("-")));
    let text = format!(
        "#!/bin/sh\n{} exec '{}' \"$@\"\n",
        assignments.join(" "),
        binary.display()
    );
    std::fs::write(&script, text).map_err(setup)?;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).map_err(setup)?;
    Ok(script)
}
