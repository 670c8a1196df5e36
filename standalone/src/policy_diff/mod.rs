//! `policy diff`: the same policies, the same connections, through a real
//! ztunnel and through hbone-lab's proxy, compared with hbone-lab's
//! prediction — case by case, so any difference in Istio semantics between
//! the two implementations shows up with the policy and connection that
//! caused it.
//!
//! Two identical, isolated worlds (root only): a client namespace holding
//! the sources' addresses and a target pod namespace with an echo server
//! on each port and ambient's inbound capture (plaintext → 15006, HBONE on
//! 15008). In one world the target's proxy is ztunnel (dedicated mode, fed
//! over xDS by hbone-lab's control plane); in the other, hbone-lab's. Each
//! policy set is pushed to both (to ztunnel as an xDS delta, waited for
//! until ACKed), then every source tries every port: over HBONE with its
//! own certificate (a CONNECT answered 200 or refused), or as plaintext
//! (echoed, or closed).

pub mod generate;
pub mod istiod;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use generate::{PORTS, SOURCES, Source, TARGET_APP, TARGET_IP, TARGET_NAMESPACE, policy_set};
use hbone_ca::metrics::CaMetrics;
use hbone_ca::server::CaService;
use hbone_ca::tokens::TokenFile;
use hbone_ca::{
    AuthorityConfig, CertificateManager, Identity, IdentityPattern, RenewalPolicy, SigningAuthority,
};
use hbone_policies::istio::{ConnectionAttrs, IstioPolicies, TargetWorkload};
use hbone_policies::load::{istio_policies, parse_documents};
use hbone_proxy::ProxyHandle;
use hbone_proxy::config::Listeners;
use hbone_proxy::core::{CoreSettings, ProxyCore};
use hbone_proxy::netns::{
    NetNs, bind_listener, inbound_capture_rules, install_rules, jump_to, tcp_socket, veth,
};
use hbone_proxy::registry::{Node, Protocol, Registry, RegistryFile, Workload};
use hbone_proxy::tls::MeshTrust;
use hbone_xds::{Mesh, MeshWorkload, RunningControlPlane, XdsState};
use serde::Serialize;
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::ztunnel::{Mode, Settings, Ztunnel};

const TOKEN: &str = "policy-diff-token";

#[derive(Debug, Error)]
pub enum DiffError {
    #[error("policy diff needs root (network namespaces, iptables)")]
    NotRoot,
    #[error("setting up the differential lab: {0}")]
    Setup(String),
    #[error("generated policy set {set} does not load: {message}\n{yaml}")]
    Policies {
        set: u64,
        message: String,
        yaml: String,
    },
    #[error("ztunnel did not take policy set {set} within 10 s: {detail}")]
    NotApplied { set: u64, detail: String },
}

fn setup(e: impl std::fmt::Display) -> DiffError {
    DiffError::Setup(e.to_string())
}

/// What a proxy did with one connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "outcome", content = "detail")]
pub enum Observed {
    Allowed,
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
    pub set: u64,
    pub source: String,
    pub port: u16,
    pub predicted: bool,
    pub reason: String,
    pub ztunnel: Observed,
    pub hbone_lab: Observed,
}

impl Case {
    /// Does every side agree with the prediction?
    pub fn agrees(&self) -> bool {
        self.ztunnel.allowed() == Some(self.predicted)
            && self.hbone_lab.allowed() == Some(self.predicted)
    }
}

/// The run's options.
#[derive(Debug, Clone)]
pub struct DiffOptions {
    pub ztunnel: PathBuf,
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
            echo_server(&target.path(), SocketAddr::new(ip(TARGET_IP), port))?;
        }
        Ok(World { client, target })
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("a literal address")
}

fn echo_server(netns: &Path, addr: SocketAddr) -> Result<(), DiffError> {
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
            "node-a",
        )],
        services: Vec::new(),
        policies: policies.clone(),
    }
}

/// Everything running for one comparison.
struct Lab {
    zt: World,
    hb: World,
    xds: Arc<XdsState>,
    _control: RunningControlPlane,
    ztunnel: Ztunnel,
    proxy: ProxyHandle,
    clients: Arc<CertificateManager>,
    trust: MeshTrust,
}

impl Lab {
    async fn start(options: &DiffOptions) -> Result<Lab, DiffError> {
        let zt = World::create("zt")?;
        let hb = World::create("hb")?;
        let authority = Arc::new(
            SigningAuthority::generate(AuthorityConfig::new("cluster.local")).map_err(setup)?,
        );
        let everyone: IdentityPattern = "spiffe://cluster.local/*".parse().map_err(setup)?;
        let tokens = Arc::new(TokenFile::single(TOKEN, vec![everyone]));
        let ca = Arc::new(CaService::new(
            authority.clone(),
            tokens.clone(),
            Arc::new(CaMetrics::default()),
        ));
        let none = IstioPolicies::new("istio-system");
        let xds = XdsState::new(&mesh(&none), Some(tokens));
        let listener = bind_listener(Some(&zt.target.path()), ([127, 0, 0, 1], 15012).into())
            .map_err(setup)?;
        let listener = tokio::net::TcpListener::from_std(listener).map_err(setup)?;
        let control = hbone_xds::serve_on(ca, xds.clone(), listener, &[])
            .await
            .map_err(setup)?;
        std::fs::create_dir_all(&options.dir).map_err(setup)?;
        let root_ca = options.dir.join("root.pem");
        std::fs::write(&root_ca, authority.root_pem()).map_err(setup)?;
        let token_file = options.dir.join("token");
        std::fs::write(&token_file, TOKEN).map_err(setup)?;
        let ztunnel = Ztunnel::start(
            &zt.target,
            Settings {
                name: "target".into(),
                binary: options.ztunnel.clone(),
                control_plane: control.url(),
                root_ca,
                token_file,
                node: "node-a".into(),
                mode: Mode::Dedicated {
                    workload: format!("{TARGET_NAMESPACE}/{TARGET_APP}/{TARGET_APP}"),
                },
                log: options.dir.join("ztunnel.log"),
                log_level: "info".into(),
                secret_ttl: None,
                local_config: None,
            },
        )
        .map_err(setup)?;
        ztunnel
            .wait_ready(ip(TARGET_IP), Duration::from_secs(20))
            .await
            .map_err(setup)?;

        let trust = MeshTrust::from_pem(authority.root_pem(), "cluster.local").map_err(setup)?;
        let registry = Registry::from_file(RegistryFile {
            trust_domain: "cluster.local".into(),
            nodes: vec![Node {
                name: "node-a".into(),
            }],
            workloads: vec![Workload {
                name: TARGET_APP.into(),
                namespace: TARGET_NAMESPACE.into(),
                service_account: TARGET_APP.into(),
                labels: [("app".to_string(), TARGET_APP.to_string())].into(),
                ips: vec![ip(TARGET_IP)],
                node: "node-a".into(),
                protocol: Protocol::Hbone,
                netns: Some(hb.target.path()),
                ..Workload::default()
            }],
            services: Vec::new(),
        })
        .map_err(|(f, m)| setup(format!("{f}: {m}")))?;
        let core = Arc::new(
            ProxyCore::with_authority(
                CoreSettings::for_node("node-a"),
                Arc::new(registry),
                none,
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
            xds,
            _control: control,
            ztunnel,
            proxy,
            clients: Arc::new(CertificateManager::new(authority, RenewalPolicy::default())),
            trust,
        })
    }

    /// Serves `policies` to both proxies; waits until ztunnel has ACKed.
    async fn apply(&self, set: u64, policies: &IstioPolicies) -> Result<(), DiffError> {
        let nacks = |x: &XdsState| x.clients().iter().map(|c| c.nacks.len()).sum::<usize>();
        let before = nacks(&self.xds);
        self.xds.update(&mesh(policies));
        self.proxy.core.replace_policies(policies.clone());
        let answered = self.xds.wait_answered(Duration::from_secs(10)).await;
        if nacks(&self.xds) > before {
            let detail = self
                .xds
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

    async fn try_connection(&self, world: &World, source: &Source, port: u16) -> Observed {
        match source.identity {
            None => plaintext(&world.client.path(), source, port).await,
            Some((ns, sa)) => {
                let identity = match Identity::new("cluster.local", ns, sa) {
                    Ok(i) => i,
                    Err(e) => return Observed::Error(e.to_string()),
                };
                match self.clients.get(&identity).await {
                    Ok(svid) => match self.trust.client_config(&svid, vec![target_identity()]) {
                        Ok(tls) => hbone(&world.client.path(), source, port, tls).await,
                        Err(e) => Observed::Error(e.to_string()),
                    },
                    Err(e) => Observed::Error(e.to_string()),
                }
            }
        }
    }
}

/// Plaintext to the target's port: echoed back (allowed) or closed (denied).
async fn plaintext(netns: &Path, source: &Source, port: u16) -> Observed {
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
    netns: &Path,
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
    if !hbone_proxy::netns::can_create() {
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
        lab.apply(set, &policies).await?;
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
