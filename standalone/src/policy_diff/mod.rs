//! `policy diff`: the same policies, the same connections, through a real
//! ztunnel and through hbone-lab's proxy, compared with hbone-lab's
//! prediction — case by case, so any difference in Istio semantics between
//! the two implementations shows up with the policy and connection that
//! caused it.
//!
//! Two identical, isolated worlds (root only): a client namespace holding
//! the sources' addresses and a target pod namespace with an echo server
//! on each port and ambient's inbound capture (plaintext → 15006, HBONE on
//! 15008). In one world the target's proxy is ztunnel (dedicated mode); in
//! the other, hbone-lab's. Each policy set is pushed to both, then every
//! source tries every port: over HBONE with its own certificate (a CONNECT
//! answered 200 or refused), or as plaintext (echoed, or closed).
//!
//! Who feeds ztunnel ([`ZtunnelFeed`]): hbone-lab's control plane, with
//! hbone-lab's translation (an xDS delta, waited for until ACKed) — then a
//! difference is one of data planes only; or the real istiod, which reads
//! the set from a real API server and translates it itself (ztunnel holds
//! the target pod's own pod-bound token) — then a translation bug shows
//! as a connection one side allows and the other refuses.

pub mod generate;
pub mod istiod;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use generate::{PORTS, SOURCES, Source, TARGET_APP, TARGET_IP, TARGET_NAMESPACE, policy_set};
use hbone_ca::metrics::CaMetrics;
use hbone_ca::plugin::PluginCerts;
use hbone_ca::server::CaService;
use hbone_ca::tokens::TokenFile;
use hbone_ca::{
    AuthorityConfig, CertificateManager, Identity, IdentityPattern, RenewalPolicy, SigningAuthority,
};
use hbone_control_plane::tokens::PodToken;
use hbone_control_plane::world::{self, WorldPod};
use hbone_control_plane::{ControlPlane, Given};
use hbone_harness::netns::{NetNs, inbound_capture_rules, install_rules, jump_to, veth};
use hbone_policies::istio::{ConnectionAttrs, IstioPolicies, TargetWorkload};
use hbone_policies::load::{istio_policies, parse_documents};
use hbone_proxy::ProxyHandle;
use hbone_proxy::config::Listeners;
use hbone_proxy::net::pod_sockets::{Netns, bind_listener, tcp_socket};
use hbone_proxy::registry::{Node, Protocol, Registry, RegistryFile, Workload};
use hbone_proxy::state::{CoreSettings, ProxyCore};
use hbone_proxy::tls::MeshTrust;
use hbone_xds::{Mesh, MeshWorkload, RunningControlPlane, XdsState};
use serde::Serialize;
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::lab::istiod::{NodeRelay, start_signing_with};
use hbone_harness::ztunnel::{Mode, Settings, Ztunnel};

const TOKEN: &str = "policy-diff-token";

/// Why `policy diff` could not run, or stopped.
#[derive(Debug, Error)]
pub enum DiffError {
    /// Not run as root: the two worlds need network namespaces and iptables.
    #[error("policy diff needs root (network namespaces, iptables)")]
    NotRoot,
    /// Building the worlds, the CA, a proxy or a control plane failed; the message says what.
    #[error("setting up the differential lab: {0}")]
    Setup(String),
    /// A generated set did not load as Istio policies (a generator bug).
    #[error("generated policy set {set} does not load: {message}\n{yaml}")]
    Policies {
        /// The set's number under the seed.
        set: u64,
        /// The loader's complaint.
        message: String,
        /// The set as generated.
        yaml: String,
    },
    /// ztunnel refused (NACKed) the set over xDS, or did not acknowledge it within 10 s.
    #[error("ztunnel did not take policy set {set} within 10 s: {detail}")]
    NotApplied {
        /// The set's number under the seed.
        set: u64,
        /// ztunnel's last NACK, or the end of its log.
        detail: String,
    },
    /// The API server would not take the set (when istiod feeds ztunnel).
    #[error("the API server refused policy set {set}: {detail}\n{yaml}")]
    Refused {
        /// The set's number under the seed.
        set: u64,
        /// The API server's error.
        detail: String,
        /// The set as sent.
        yaml: String,
    },
}

fn setup(e: impl std::fmt::Display) -> DiffError {
    DiffError::Setup(e.to_string())
}

/// What a proxy did with one connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "outcome", content = "detail")]
pub enum Observed {
    /// Through: echoed back (plaintext), or CONNECT answered 200 (HBONE).
    Allowed,
    /// Refused: the plaintext connection closed, or CONNECT refused or reset; how.
    Denied(String),
    /// Neither: the attempt failed in a way that says nothing about policy.
    Error(String),
}

impl Observed {
    fn allowed(&self) -> Option<bool> {
        match self {
            Observed::Allowed => Some(true),
            Observed::Denied(_) => Some(false),
            Observed::Error(_) => None,
        }
    }

    /// The outcome in words: `allow`, `deny (…)` or `error (…)`.
    pub fn word(&self) -> String {
        match self {
            Observed::Allowed => "allow".into(),
            Observed::Denied(d) => format!("deny ({d})"),
            Observed::Error(e) => format!("error ({e})"),
        }
    }
}

/// One connection under one policy set, as each side saw it.
#[derive(Debug, Clone, Serialize)]
pub struct Case {
    /// The policy set's number under the seed.
    pub set: u64,
    /// Who connected: its principal (or plaintext) and address.
    pub source: String,
    /// The target port it tried.
    pub port: u16,
    /// Whether hbone-lab's evaluation of the policies allows it.
    pub predicted: bool,
    /// Why, as that evaluation says.
    pub reason: String,
    /// What ztunnel did with it.
    pub ztunnel: Observed,
    /// What hbone-lab's proxy did with it.
    pub hbone_lab: Observed,
}

impl Case {
    /// Does every side agree with the prediction?
    pub fn agrees(&self) -> bool {
        self.ztunnel.allowed() == Some(self.predicted)
            && self.hbone_lab.allowed() == Some(self.predicted)
    }
}

/// Who feeds ztunnel its workloads and policies.
#[derive(Debug, Clone, Default)]
pub enum ZtunnelFeed {
    /// hbone-lab's control plane, serving hbone-lab's translation.
    #[default]
    HboneLab,
    /// The real istiod (these programs) on a real API server, translating
    /// the sets itself.
    Istiod(Given),
}

/// The run's options.
#[derive(Debug, Clone)]
pub struct DiffOptions {
    /// The ztunnel binary to run.
    pub ztunnel: PathBuf,
    /// Who feeds ztunnel (hbone-lab's proxy always takes hbone-lab's
    /// translation).
    pub feed: ZtunnelFeed,
    /// Seeds the generated policy sets: the same seed, the same sets.
    pub seed: u64,
    /// Connections to try in all (each policy set tries 8).
    pub cases: usize,
    /// Where ztunnel's log goes.
    pub dir: PathBuf,
}

/// One isolated world: clients, the target pod, its proxy.
struct World {
    client: NetNs,
    target: NetNs,
}

impl World {
    fn create(tag: &str) -> Result<World, DiffError> {
        let client = NetNs::create(&format!("hbd{}-{tag}-c", std::process::id())).map_err(setup)?;
        let target = NetNs::create(&format!("hbd{}-{tag}-t", std::process::id())).map_err(setup)?;
        veth(
            &client,
            "eth0",
            &format!("{}/16", SOURCES[0].ip),
            &target,
            "eth0",
            &format!("{TARGET_IP}/16"),
        )
        .map_err(setup)?;
        for s in &SOURCES[1..] {
            client
                .ip(&["addr", "add", &format!("{}/16", s.ip), "dev", "eth0"])
                .map_err(setup)?;
        }
        let mut rules = inbound_capture_rules("HBL_PREROUTING");
        rules.push(jump_to("PREROUTING", "HBL_PREROUTING"));
        install_rules(&target, &rules).map_err(setup)?;
        for port in PORTS {
            echo_server(target.sockets(), SocketAddr::new(ip(TARGET_IP), port))?;
        }
        Ok(World { client, target })
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("a literal address")
}

fn echo_server(netns: &Netns, addr: SocketAddr) -> Result<(), DiffError> {
    let listener =
        tokio::net::TcpListener::from_std(bind_listener(Some(netns), addr).map_err(setup)?)
            .map_err(setup)?;
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = tcp.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    Ok(())
}

fn target_identity() -> Identity {
    Identity::new("cluster.local", TARGET_NAMESPACE, TARGET_APP).expect("a literal identity")
}

fn mesh(policies: &IstioPolicies) -> Mesh {
    Mesh {
        workloads: vec![MeshWorkload::pod(
            TARGET_NAMESPACE,
            TARGET_APP,
            TARGET_APP,
            ip(TARGET_IP),
            TARGET_APP,
            NODE,
        )],
        services: Vec::new(),
        policies: policies.clone(),
    }
}

/// What serves ztunnel its policies.
enum Feeder {
    /// hbone-lab's control plane in the target's namespace.
    Lab {
        xds: Arc<XdsState>,
        _control: RunningControlPlane,
    },
    Istiod(Box<IstiodFeed>),
}

/// istiod serving the dedicated ztunnel, and the set it was last given.
struct IstiodFeed {
    /// The last set applied (deleted before the next is).
    applied: std::sync::Mutex<Option<String>>,
    _token: PodToken,
    _relay: NodeRelay,
    control: ControlPlane,
    _mesh_ca: tempfile::TempDir,
}

/// The node the target pod runs on.
const NODE: &str = "node-a";

impl Feeder {
    /// hbone-lab's control plane, listening where ztunnel looks for istiod
    /// in the target's namespace; ztunnel's token and root go to `dir`.
    async fn lab(
        zt: &World,
        authority: &Arc<SigningAuthority>,
        dir: &Path,
    ) -> Result<(Feeder, Settings), DiffError> {
        let everyone: IdentityPattern = "spiffe://cluster.local/*".parse().map_err(setup)?;
        let tokens = Arc::new(TokenFile::single(TOKEN, vec![everyone]));
        let ca = Arc::new(CaService::new(
            authority.clone(),
            tokens.clone(),
            Arc::new(CaMetrics::default()),
        ));
        let xds = XdsState::new(&mesh(&IstioPolicies::new("istio-system")), Some(tokens));
        let listener = bind_listener(Some(zt.target.sockets()), ([127, 0, 0, 1], 15012).into())
            .map_err(setup)?;
        let listener = tokio::net::TcpListener::from_std(listener).map_err(setup)?;
        let control = hbone_xds::serve_on(ca, xds.clone(), listener, &[])
            .await
            .map_err(setup)?;
        let token_file = dir.join("token");
        std::fs::write(&token_file, TOKEN).map_err(setup)?;
        let settings = ztunnel_settings(dir, control.url(), authority.root_pem(), token_file)?;
        let feeder = Feeder::Lab {
            xds,
            _control: control,
        };
        Ok((feeder, settings))
    }

    /// istiod signing with `plugin`, the target pod in its API server, a
    /// relay to it in the target's namespace, the target pod's own token.
    async fn istiod(
        zt: &World,
        given: &Given,
        plugin: &PluginCerts,
        dir: &Path,
    ) -> Result<(Feeder, Settings), DiffError> {
        // Push as soon as a change is seen: hundreds of sets follow.
        let fast = vec![("PILOT_DEBOUNCE_AFTER".to_string(), "10ms".to_string())];
        let (control, mesh_ca) = start_signing_with(given, plugin, fast)
            .await
            .map_err(setup)?;
        let pod = WorldPod::captured(TARGET_NAMESPACE, TARGET_APP, ip(TARGET_IP), NODE);
        let applied = world::apply(
            &control.client,
            &world::World {
                nodes: vec![NODE.into()],
                pods: vec![pod.clone()],
                services: Vec::new(),
            },
        )
        .await
        .map_err(setup)?;
        let token = control
            .workload_token(&applied, &pod)
            .await
            .map_err(setup)?;
        let relay = NodeRelay::start(TARGET_APP, &zt.target, control.istiod_ports.secure_grpc)
            .map_err(setup)?;
        let settings =
            ztunnel_settings(dir, NodeRelay::url(), &control.root_pem, token.path.clone())?;
        let feeder = Feeder::Istiod(Box::new(IstiodFeed {
            applied: std::sync::Mutex::new(None),
            _token: token,
            _relay: relay,
            control,
            _mesh_ca: mesh_ca,
        }));
        Ok((feeder, settings))
    }
}

/// The dedicated ztunnel's settings: `control_plane` for CA and xDS,
/// `root_pem` written to `dir` as its root.
fn ztunnel_settings(
    dir: &Path,
    control_plane: String,
    root_pem: &str,
    token_file: PathBuf,
) -> Result<Settings, DiffError> {
    let root_ca = dir.join("root.pem");
    std::fs::write(&root_ca, root_pem).map_err(setup)?;
    Ok(Settings {
        name: "target".into(),
        binary: PathBuf::new(),
        control_plane,
        root_ca,
        token_file,
        node: NODE.into(),
        mode: Mode::Dedicated {
            workload: format!("{TARGET_NAMESPACE}/{TARGET_APP}/{TARGET_APP}"),
        },
        log: dir.join("ztunnel.log"),
        log_level: "info".into(),
        secret_ttl: None,
        local_config: None,
    })
}

/// The policy keys (`namespace/name`) in ztunnel's config dump.
fn dumped_policy_keys(dump: &serde_json::Value) -> std::collections::BTreeSet<String> {
    dump["policies"]
        .as_array()
        .map(|policies| {
            policies
                .iter()
                .map(|p| {
                    format!(
                        "{}/{}",
                        p["namespace"].as_str().unwrap_or_default(),
                        p["name"].as_str().unwrap_or_default()
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Everything running for one comparison.
struct Lab {
    zt: World,
    hb: World,
    feeder: Feeder,
    ztunnel: Ztunnel,
    proxy: ProxyHandle,
    clients: Arc<CertificateManager>,
    trust: MeshTrust,
}

impl Lab {
    async fn start(options: &DiffOptions) -> Result<Lab, DiffError> {
        let zt = World::create("zt")?;
        let hb = World::create("hb")?;
        let plugin = PluginCerts::generate("cluster.local").map_err(setup)?;
        let authority = Arc::new(
            SigningAuthority::from_plugin(&plugin, AuthorityConfig::new("cluster.local"))
                .map_err(setup)?,
        );
        std::fs::create_dir_all(&options.dir).map_err(setup)?;
        let (feeder, mut settings) = match &options.feed {
            ZtunnelFeed::HboneLab => Feeder::lab(&zt, &authority, &options.dir).await?,
            ZtunnelFeed::Istiod(given) => Feeder::istiod(&zt, given, &plugin, &options.dir).await?,
        };
        settings.binary = options.ztunnel.clone();
        let ztunnel = Ztunnel::start(&zt.target, settings).map_err(setup)?;
        ztunnel
            .wait_ready(ip(TARGET_IP), Duration::from_secs(20))
            .await
            .map_err(setup)?;

        let trust = MeshTrust::from_pem(authority.root_pem(), "cluster.local").map_err(setup)?;
        let registry = Registry::from_file(RegistryFile {
            trust_domain: "cluster.local".into(),
            nodes: vec![Node { name: NODE.into() }],
            workloads: vec![Workload {
                name: TARGET_APP.into(),
                namespace: TARGET_NAMESPACE.into(),
                service_account: TARGET_APP.into(),
                labels: std::sync::Arc::new([("app".to_string(), TARGET_APP.to_string())].into()),
                ips: Box::new([ip(TARGET_IP)]),
                node: NODE.into(),
                protocol: Protocol::Hbone,
                netns: Some(hb.target.path().into()),
                ..Workload::default()
            }],
            services: Vec::new(),
        })
        .map_err(setup)?;
        let core = Arc::new(
            ProxyCore::with_authority(
                CoreSettings::for_node(NODE),
                Arc::new(registry),
                IstioPolicies::new("istio-system"),
                authority.clone(),
            )
            .map_err(setup)?,
        );
        let proxy = ProxyHandle::start(
            core,
            &Listeners {
                plaintext_port: Some(15006),
                ..Listeners::default()
            },
        )
        .await
        .map_err(setup)?;
        Ok(Lab {
            zt,
            hb,
            feeder,
            ztunnel,
            proxy,
            clients: Arc::new(CertificateManager::new(authority, RenewalPolicy::default())),
            trust,
        })
    }

    /// Serves set `set` (`yaml`, loaded as `policies`) to both proxies;
    /// waits until ztunnel holds it.
    async fn apply(&self, set: u64, yaml: &str, policies: &IstioPolicies) -> Result<(), DiffError> {
        self.proxy.core.replace_policies(policies.clone());
        match &self.feeder {
            Feeder::Lab { xds, .. } => self.apply_over_xds(set, xds, policies).await,
            Feeder::Istiod(feed) => self.apply_through_istiod(set, yaml, policies, feed).await,
        }
    }

    /// hbone-lab's translation as an xDS delta, waited for until ACKed.
    async fn apply_over_xds(
        &self,
        set: u64,
        xds: &XdsState,
        policies: &IstioPolicies,
    ) -> Result<(), DiffError> {
        let nacks = |x: &XdsState| x.clients().iter().map(|c| c.nacks_total).sum::<u64>();
        let before = nacks(xds);
        xds.update(&mesh(policies));
        let answered = xds.wait_answered(Duration::from_secs(10)).await;
        if nacks(xds) > before {
            let detail = xds
                .clients()
                .iter()
                .flat_map(|c| c.nacks.clone())
                .last()
                .unwrap_or_default();
            return Err(DiffError::NotApplied { set, detail });
        }
        if !answered {
            return Err(DiffError::NotApplied {
                set,
                detail: self.ztunnel.log_tail(10),
            });
        }
        Ok(())
    }

    /// The set into the API server (the previous one deleted first, and
    /// waited for until ztunnel holds no policy, so that a policy of the
    /// same name cannot be mistaken for its new version); then waits until
    /// ztunnel holds a policy by every key hbone-lab's translation has. If
    /// istiod translated to other keys, that is a translation difference:
    /// it is logged and the connections show what it does.
    async fn apply_through_istiod(
        &self,
        set: u64,
        yaml: &str,
        policies: &IstioPolicies,
        feed: &IstiodFeed,
    ) -> Result<(), DiffError> {
        let client = &feed.control.client;
        let previous = feed.applied.lock().map(|mut a| a.take()).unwrap_or(None);
        if let Some(previous) = previous {
            world::delete_yaml(client, &previous, "the previous set")
                .await
                .map_err(setup)?;
            self.wait_for_policies(set, &Default::default()).await;
        }
        if let Ok(mut applied) = feed.applied.lock() {
            *applied = Some(yaml.to_string());
        }
        let name = format!("set-{set}.yaml");
        if let Err(e) = world::apply_yaml(client, yaml, &name).await {
            return Err(DiffError::Refused {
                set,
                detail: e.to_string(),
                yaml: yaml.to_string(),
            });
        }
        let expect = policies
            .translated()
            .policies()
            .iter()
            .map(|p| p.key())
            .collect();
        self.wait_for_policies(set, &expect).await;
        Ok(())
    }

    /// Waits (10 s at most) until ztunnel's policy keys are `expect`.
    async fn wait_for_policies(&self, set: u64, expect: &std::collections::BTreeSet<String>) {
        let held = self
            .ztunnel
            .wait_for_dump("hold istiod's push", Duration::from_secs(10), |dump| {
                &dumped_policy_keys(dump) == expect
            })
            .await;
        if let Err(e) = held {
            tracing::warn!(set, ?expect, error = %e, "ztunnel's policies from istiod are not the keys hbone-lab's translation has");
        }
    }

    async fn try_connection(&self, world: &World, source: &Source, port: u16) -> Observed {
        match source.identity {
            None => plaintext(world.client.sockets(), source, port).await,
            Some((ns, sa)) => {
                let identity = match Identity::new("cluster.local", ns, sa) {
                    Ok(i) => i,
                    Err(e) => return Observed::Error(e.to_string()),
                };
                match self.clients.get(&identity).await {
                    Ok(svid) => match self.trust.client_config(&svid, vec![target_identity()]) {
                        Ok(tls) => hbone(world.client.sockets(), source, port, tls).await,
                        Err(e) => Observed::Error(e.to_string()),
                    },
                    Err(e) => Observed::Error(e.to_string()),
                }
            }
        }
    }
}

/// Plaintext to the target's port: echoed back (allowed) or closed (denied).
async fn plaintext(netns: &Netns, source: &Source, port: u16) -> Observed {
    let target = SocketAddr::new(ip(TARGET_IP), port);
    let attempt = async {
        let socket = tcp_socket(Some(netns), target, Some(ip(source.ip)), None)
            .map_err(|e| e.to_string())?;
        let mut tcp = socket.connect(target).await.map_err(|e| e.to_string())?;
        tcp.write_all(b"ping").await.map_err(|e| e.to_string())?;
        let mut back = [0u8; 4];
        match tcp.read_exact(&mut back).await {
            Ok(_) if &back == b"ping" => Ok(Observed::Allowed),
            Ok(_) => Ok(Observed::Error("garbled echo".into())),
            Err(e) => Ok(Observed::Denied(format!("closed: {}", e.kind()))),
        }
    };
    match tokio::time::timeout(Duration::from_secs(3), attempt).await {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => Observed::Error(e),
        Err(_) => Observed::Error("no answer within 3 s".into()),
    }
}

/// HBONE to the target's 15008 as the source's identity: CONNECT answered
/// 200 (allowed) or refused.
async fn hbone(
    netns: &Netns,
    source: &Source,
    port: u16,
    tls: Arc<rustls::ClientConfig>,
) -> Observed {
    let proxy = SocketAddr::new(ip(TARGET_IP), 15008);
    let attempt = async {
        let socket =
            tcp_socket(Some(netns), proxy, Some(ip(source.ip)), None).map_err(|e| e.to_string())?;
        let tcp = socket.connect(proxy).await.map_err(|e| e.to_string())?;
        let name = rustls::pki_types::ServerName::IpAddress(ip(TARGET_IP).into());
        let tls = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        let (mut client, connection) = h2::client::handshake(tls)
            .await
            .map_err(|e| format!("HTTP/2: {e}"))?;
        tokio::spawn(connection);
        let request = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri(format!("{TARGET_IP}:{port}"))
            .body(())
            .map_err(|e| e.to_string())?;
        let (response, mut body) = client
            .send_request(request, false)
            .map_err(|e| format!("CONNECT: {e}"))?;
        match response.await {
            Ok(r) if r.status() == http::StatusCode::OK => {
                let _ = body.send_data(bytes::Bytes::from_static(b"ping"), true);
                Ok(Observed::Allowed)
            }
            Ok(r) => Ok(Observed::Denied(format!("CONNECT answered {}", r.status()))),
            Err(e) => Ok(Observed::Denied(format!("stream reset: {e}"))),
        }
    };
    match tokio::time::timeout(Duration::from_secs(3), attempt).await {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => Observed::Error(e),
        Err(_) => Observed::Error("no answer within 3 s".into()),
    }
}

/// Runs policy sets until `options.cases` connections have been tried,
/// calling `each` after every case.
pub async fn run(
    options: &DiffOptions,
    mut each: impl FnMut(&Case, &str),
) -> Result<Vec<Case>, DiffError> {
    if !hbone_harness::netns::can_create() {
        return Err(DiffError::NotRoot);
    }
    let lab = Lab::start(options).await?;
    let mut cases = Vec::new();
    let mut set = 0;
    while cases.len() < options.cases {
        let yaml = policy_set(options.seed, set);
        let loaded = parse_documents(&yaml, &format!("set-{set}.yaml")).map_err(|e| {
            DiffError::Policies {
                set,
                message: e.to_string(),
                yaml: yaml.clone(),
            }
        })?;
        let policies = istio_policies(&loaded, "istio-system");
        lab.apply(set, &yaml, &policies).await?;
        let labels = [("app".to_string(), TARGET_APP.to_string())].into();
        let target = TargetWorkload {
            namespace: TARGET_NAMESPACE,
            labels: &labels,
        };
        for source in &SOURCES {
            for port in PORTS {
                if cases.len() >= options.cases {
                    break;
                }
                let principal = source.principal();
                let decision = policies.evaluate(
                    &target,
                    &ConnectionAttrs {
                        principal: principal.as_deref(),
                        src_ip: ip(source.ip),
                        dst_ip: ip(TARGET_IP),
                        dst_port: port,
                    },
                );
                let (ztunnel, hbone_lab) = tokio::join!(
                    lab.try_connection(&lab.zt, source, port),
                    lab.try_connection(&lab.hb, source, port)
                );
                let case = Case {
                    set,
                    source: source.describe(),
                    port,
                    predicted: decision.allowed,
                    reason: decision.reason,
                    ztunnel,
                    hbone_lab,
                };
                each(&case, &yaml);
                cases.push(case);
            }
        }
        set += 1;
    }
    lab.proxy.shutdown(Duration::from_millis(200)).await;
    drop(lab.ztunnel);
    Ok(cases)
}
