//! The loopback lab: every pod and node proxy on its own 127.x address, the
//! mesh reached through each node proxy's SOCKS5 port (nothing is
//! redirected, no privileges needed).
//!
//! ```text
//!  node-1 (proxy 127.0.11.1)              node-2 (proxy 127.0.11.2)
//!   gateway    127.0.12.1 ──HBONE─────────▶ hello-app 127.0.12.3:8000
//!   test-pod   127.0.12.2                    postgres  127.0.12.4:5432
//!   worker-app 127.0.12.5
//!  CA 127.0.10.1 (gRPC, TLS)     services: hello-app 127.0.13.1:8000, postgres 127.0.13.2:5432
//! ```

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hbone_ca::client::CaClient;
use hbone_ca::metrics::CaMetrics;
use hbone_ca::server::{CaService, RunningCa, serve};
use hbone_ca::tokens::TokenFile;
use hbone_ca::{
    AuthorityConfig, CertificateManager, IdentityPattern, RenewalPolicy, SigningAuthority,
};
use hbone_policies::istio::IstioPolicies;
use hbone_policies::lab::lab_resources;
use hbone_policies::matrix::PolicySet;
use hbone_policies::topology::{
    ExternalHost, KUBELET_PROBE_IP, LabTopology, LabWorkload, MeshMode, OutsideClient,
};
use hbone_proxy::ProxyHandle;
use hbone_proxy::config::{H2Settings, Listeners};
use hbone_proxy::core::{CoreSettings, ProxyCore};
use hbone_proxy::registry::{Node, Protocol, Registry, RegistryFile, Service, Workload};
use hbone_proxy::tls::MeshTrust;
use hbone_workloads::db::{Database, DbConfig};
use hbone_workloads::dial::Dialer;
use hbone_workloads::gateway::{GatewayConfig, serve as serve_gateway};
use hbone_workloads::hello::{HelloConfig, serve as serve_hello};
use hbone_workloads::pgserver::{PgError, PgServer};
use thiserror::Error;
use tokio::net::TcpListener;

const NODE_TOKEN: &str = "standalone-lab-node-token";

#[derive(Debug, Error)]
pub enum LabError {
    #[error("the certificate authority: {0}")]
    Ca(String),
    #[error("a node proxy: {0}")]
    Proxy(String),
    #[error("policies: {0}")]
    Policies(String),
    #[error("a workload: {0}")]
    Workload(String),
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("a literal address")
}

/// One pod of the loopback lab, labelled as in the kind lab so that the
/// same policies select it.
#[derive(Debug, Clone, Copy)]
pub struct LabPod {
    pub name: &'static str,
    pub service_account: &'static str,
    pub labels: &'static [(&'static str, &'static str)],
    pub ip: &'static str,
    pub node: &'static str,
    pub mesh: MeshMode,
    /// The ports it serves.
    pub ports: &'static [u16],
}

/// The lab's pods. The test pod runs as the namespace's `default` service
/// account: it has a mesh identity, but not one any policy names.
pub const PODS: &[LabPod] = &[
    LabPod {
        name: "hello-gateway",
        service_account: "hello-gateway-istio",
        labels: &[("gateway.networking.k8s.io/gateway-name", "hello-gateway")],
        ip: "127.0.12.1",
        node: "node-1",
        mesh: MeshMode::HboneClient,
        ports: &[80],
    },
    LabPod {
        name: "test-pod",
        service_account: "default",
        labels: &[("run", "test-pod")],
        ip: "127.0.12.2",
        node: "node-1",
        mesh: MeshMode::Ambient,
        ports: &[],
    },
    LabPod {
        name: "hello-app",
        service_account: "hello-app",
        labels: &[("app", "hello-app")],
        ip: "127.0.12.3",
        node: "node-2",
        mesh: MeshMode::Ambient,
        ports: &[HELLO_PORT],
    },
    LabPod {
        name: "postgres",
        service_account: "postgres",
        labels: &[("app", "postgres")],
        ip: "127.0.12.4",
        node: "node-2",
        mesh: MeshMode::Ambient,
        ports: &[5432],
    },
    LabPod {
        name: "worker-app",
        service_account: "worker-app",
        labels: &[("app", "worker-app")],
        ip: "127.0.12.5",
        node: "node-1",
        mesh: MeshMode::Ambient,
        ports: &[],
    },
];

/// The pod called `name`.
pub fn lab_pod(name: &str) -> &'static LabPod {
    PODS.iter()
        .find(|p| p.name == name)
        .expect("a pod of the lab")
}

impl LabPod {
    pub fn label_map(&self) -> BTreeMap<String, String> {
        self.labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
}

/// The lab as `policy check` sees it: its pods, the two external APIs
/// hello-app calls, a person's browser and the kubelet's probes.
pub fn policy_topology() -> LabTopology {
    LabTopology {
        trust_domain: "cluster.local".into(),
        workloads: PODS
            .iter()
            .map(|p| LabWorkload {
                name: p.name.into(),
                namespace: "demo".into(),
                service_account: p.service_account.into(),
                labels: p.label_map(),
                ip: Some(ip(p.ip)),
                ports: p.ports.to_vec(),
                named_ports: BTreeMap::new(),
                mesh: p.mesh,
                node: Some(p.node.into()),
            })
            .collect(),
        nodes: Vec::new(),
        externals: ["api.github.com", "api.cloudflare.com"]
            .into_iter()
            .map(|name| ExternalHost {
                name: name.into(),
                port: 443,
                ip: None,
                tls: true,
            })
            .collect(),
        outside_clients: vec![
            OutsideClient {
                name: "browser".into(),
                ip: ip("203.0.113.10"),
                bypasses_mesh: false,
            },
            OutsideClient {
                name: "kubelet-probe".into(),
                ip: ip(KUBELET_PROBE_IP),
                bypasses_mesh: true,
            },
        ],
    }
}

pub const HELLO_PORT: u16 = 8000;
pub const HELLO_VIP: &str = "127.0.13.1";
pub const POSTGRES_VIP: &str = "127.0.13.2";

/// Options for starting the lab.
#[derive(Debug, Clone)]
pub struct LabOptions {
    /// Where the gateway listens for people (`curl http://…/`).
    pub gateway_listen: SocketAddr,
    pub renewal: RenewalPolicy,
}

impl Default for LabOptions {
    fn default() -> Self {
        LabOptions {
            gateway_listen: "127.0.0.1:0".parse().expect("literal"),
            renewal: RenewalPolicy::default(),
        }
    }
}

/// A running loopback lab.
pub struct LoopbackLab {
    pub ca: RunningCa,
    pub ca_metrics: Arc<CaMetrics>,
    pub authority: Arc<SigningAuthority>,
    pub registry: Arc<Registry>,
    pub policies: Arc<IstioPolicies>,
    pub nodes: Vec<ProxyHandle>,
    pub postgres: Option<PgServer>,
    /// Why there is no database, when there is none.
    pub postgres_missing: Option<String>,
    pub gateway: SocketAddr,
    pub hello: SocketAddr,
}

fn registry(pg_port: u16) -> Result<Registry, LabError> {
    let workloads = PODS
        .iter()
        .map(|p| Workload {
            name: p.name.to_string(),
            namespace: "demo".into(),
            service_account: p.service_account.to_string(),
            labels: p.label_map(),
            ips: vec![ip(p.ip)],
            node: p.node.to_string(),
            protocol: Protocol::Hbone,
            netns: None,
            identity: None,
        })
        .collect();
    let service = |name: &str, vip: &str, port: u16, target: u16| Service {
        name: name.into(),
        namespace: "demo".into(),
        hostname: None,
        vips: vec![ip(vip)],
        ports: BTreeMap::from([(port, target)]),
        selector: BTreeMap::from([("app".to_string(), name.to_string())]),
    };
    Registry::from_file(RegistryFile {
        trust_domain: "cluster.local".into(),
        nodes: vec![
            Node {
                name: "node-1".into(),
            },
            Node {
                name: "node-2".into(),
            },
        ],
        workloads,
        services: vec![
            service("hello-app", HELLO_VIP, HELLO_PORT, HELLO_PORT),
            service("postgres", POSTGRES_VIP, 5432, pg_port),
        ],
    })
    .map_err(|(field, message)| LabError::Workload(format!("registry {field}: {message}")))
}

/// Loads the lab's policies, both layers (`policies/`, compiled in).
pub fn lab_policies() -> Result<PolicySet, LabError> {
    let loaded = lab_resources().map_err(|e| LabError::Policies(e.to_string()))?;
    Ok(PolicySet::from_loaded(&loaded))
}

impl LoopbackLab {
    /// The proxy of `node`.
    pub fn node(&self, node: &str) -> &ProxyHandle {
        self.nodes
            .iter()
            .find(|p| p.core.node == node)
            .expect("a lab node")
    }

    /// The pod's workload entry.
    pub fn pod(&self, name: &str) -> &Workload {
        self.registry
            .workloads
            .iter()
            .find(|w| w.name == name)
            .expect("a lab pod")
    }

    /// How a pod reaches the mesh: its node's SOCKS5, from its own address.
    pub fn dialer(&self, pod: &str) -> Dialer {
        let w = self.pod(pod);
        Dialer::Socks5 {
            proxy: self.node(&w.node).addrs.socks5.expect("socks5 is on"),
            source: Some(w.ips[0]),
        }
    }

    pub async fn start(options: LabOptions) -> Result<Self, LabError> {
        // PostgreSQL first: its port goes into the registry.
        let pg_ip = ip(lab_pod("postgres").ip);
        let (postgres, postgres_missing) = match tokio::task::spawn_blocking(move || {
            PgServer::start(pg_ip, 5432, "hello", "hello", "hellodb")
        })
        .await
        {
            Ok(Ok(pg)) => (Some(pg), None),
            Ok(Err(e @ PgError::NotInstalled)) => (None, Some(e.to_string())),
            Ok(Err(e)) => return Err(LabError::Workload(format!("PostgreSQL: {e}"))),
            Err(e) => return Err(LabError::Workload(e.to_string())),
        };
        let pg_port = postgres.as_ref().map(|p| p.addr.port()).unwrap_or(5432);
        let registry = Arc::new(registry(pg_port)?);
        let policies = Arc::new(lab_policies()?.istio);

        let authority = Arc::new(
            SigningAuthority::generate(AuthorityConfig::new("cluster.local"))
                .map_err(|e| LabError::Ca(e.to_string()))?,
        );
        let everyone: IdentityPattern = "spiffe://cluster.local/ns/demo/sa/*"
            .parse()
            .map_err(|e: hbone_ca::identity::IdentityError| LabError::Ca(e.to_string()))?;
        let ca_metrics = Arc::new(CaMetrics::default());
        let service = Arc::new(CaService::new(
            authority.clone(),
            Arc::new(TokenFile::single(NODE_TOKEN, vec![everyone])),
            ca_metrics.clone(),
        ));
        let ca = serve(service, SocketAddr::new(ip("127.0.10.1"), 0), &[])
            .await
            .map_err(|e| LabError::Ca(e.to_string()))?;
        let root = hbone_ca::inspect::pem_certs(authority.root_pem())
            .map_err(|e| LabError::Ca(e.to_string()))?;

        let mut nodes = Vec::new();
        for (node, addr) in [("node-1", "127.0.11.1"), ("node-2", "127.0.11.2")] {
            let client = CaClient::new(&ca.url(), authority.root_pem(), NODE_TOKEN)
                .map_err(|e| LabError::Ca(e.to_string()))?;
            let certs = Arc::new(CertificateManager::new(
                Arc::new(client),
                options.renewal.clone(),
            ));
            let trust = MeshTrust::new(&root, "cluster.local")
                .map_err(|e| LabError::Proxy(e.to_string()))?;
            let settings = CoreSettings {
                node: node.into(),
                h2: H2Settings::default(),
                hbone_port: 15008,
                bind_source_ip: true,
            };
            let core = Arc::new(ProxyCore::new(
                settings,
                registry.clone(),
                policies.clone(),
                certs,
                trust,
            ));
            let at = |port| Some(SocketAddr::new(ip(addr), port));
            let listeners = Listeners {
                socks5: at(0),
                metrics: at(0),
                admin: at(0),
                readiness: at(0),
                ..Listeners::default()
            };
            nodes.push(
                ProxyHandle::start(core, &listeners)
                    .await
                    .map_err(|e| LabError::Proxy(e.to_string()))?,
            );
        }

        let mut lab = LoopbackLab {
            ca,
            ca_metrics,
            authority,
            registry,
            policies,
            nodes,
            postgres,
            postgres_missing,
            gateway: options.gateway_listen,
            hello: SocketAddr::new(ip(lab_pod("hello-app").ip), HELLO_PORT),
        };
        lab.wait_for_certificates().await?;
        lab.start_apps(options.gateway_listen).await?;
        Ok(lab)
    }

    async fn wait_for_certificates(&self) -> Result<(), LabError> {
        for w in &self.registry.workloads {
            let certs = &self.node(&w.node).core.certs;
            tokio::time::timeout(Duration::from_secs(10), certs.get(w.identity()))
                .await
                .map_err(|_| LabError::Ca(format!("no certificate for {} in 10 s", w.identity())))?
                .map_err(|e| LabError::Ca(e.to_string()))?;
        }
        Ok(())
    }

    async fn start_apps(&mut self, gateway_listen: SocketAddr) -> Result<(), LabError> {
        let app = |e: std::io::Error| LabError::Workload(e.to_string());
        // hello-app: reaches postgres through the mesh by its service name.
        let db = Database::new(
            DbConfig::new(
                "postgres.demo.svc.cluster.local",
                5432,
                "hello",
                "hello",
                "hellodb",
            ),
            self.dialer("hello-app"),
        );
        let mut config = HelloConfig::from_env(self.hello);
        config.identity = Some(self.pod("hello-app").identity().to_string());
        config.check_timeout = Duration::from_secs(2);
        let listener = TcpListener::bind(self.hello).await.map_err(app)?;
        tokio::spawn(serve_hello(
            config,
            db,
            self.dialer("hello-app"),
            listener,
            std::future::pending(),
        ));

        // The gateway: plain HTTP from people, into the mesh as hello-gateway-istio.
        let listener = TcpListener::bind(gateway_listen).await.map_err(app)?;
        self.gateway = listener.local_addr().map_err(app)?;
        let config = GatewayConfig {
            upstream_host: "hello-app.demo.svc.cluster.local".into(),
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

    /// Stops the proxies, the CA and PostgreSQL.
    pub async fn shutdown(mut self) {
        for node in self.nodes.drain(..) {
            node.shutdown(Duration::from_secs(1)).await;
        }
        self.ca.shutdown().await;
        if let Some(mut pg) = self.postgres.take() {
            let _ = tokio::task::spawn_blocking(move || pg.stop()).await;
        }
    }
}
