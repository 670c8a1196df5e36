//! What the standalone lab is made of: its pods (labelled as in the kind
//! lab, so the same policies select them), their addresses in each mode,
//! the services, and the lab as `policy check` sees it.
//!
//! Loopback mode — every pod and node proxy on its own 127.x address, the
//! mesh reached through each node proxy's SOCKS5 port (nothing is
//! redirected, no privileges needed):
//!
//! ```text
//!  node-1 (proxy 127.0.11.1)              node-2 (proxy 127.0.11.2)
//!   gateway    127.0.12.1 ──HBONE─────────▶ hello-app 127.0.12.3:8000
//!   test-pod   127.0.12.2                    postgres  127.0.12.4:5432
//!   worker-app 127.0.12.5
//!  CA 127.0.10.1 (gRPC, TLS)     services: hello-app 127.0.13.1:8000, postgres 127.0.13.2:5432
//! ```
//!
//! Netns mode — pods and nodes are network namespaces (see
//! [`crate::lab::plumbing`]); pods on `10.244.<node>.x`, services on `10.96.0.x`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use hbone_policies::topology::{LabNode, LabTopology, LabWorkload, MeshMode, lab_outside};
use thiserror::Error;

/// Where the netns lab's stand-ins for the public APIs listen (the `world` namespace).
pub const GITHUB_IP: &str = "203.0.113.10";
/// Where the stand-in for api.cloudflare.com listens (the `world` namespace).
pub const CLOUDFLARE_IP: &str = "203.0.113.20";

/// What went wrong underneath a lab step, kept whole (its own sources too).
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The part of the lab a step belongs to, as the error names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The lab's certificate authority.
    Ca,
    /// A node proxy (hbone-lab's or ztunnel) or its node agent.
    Proxy,
    /// Loading the lab's policies.
    Policies,
    /// An application: PostgreSQL, hello-app or the gateway.
    Workload,
    /// Netns mode's namespaces, capture rules and the outside world's stand-ins.
    Netns,
    /// The real Istio control plane (etcd, kube-apiserver, istiod).
    ControlPlane,
}

impl std::fmt::Display for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Part::Ca => "the certificate authority",
            Part::Proxy => "a node proxy",
            Part::Policies => "policies",
            Part::Workload => "a workload",
            Part::Netns => "network namespaces",
            Part::ControlPlane => "the Istio control plane (istiod)",
        })
    }
}

/// Why the lab, or one of its steps, could not run.
#[derive(Debug, Error)]
pub enum LabError {
    /// A step failed; `cause` says why (shown by `{:#}` and anyhow's chain).
    #[error("{part}: {what}")]
    Step {
        /// The part of the lab the step belongs to.
        part: Part,
        /// What was being done or, when refused, why it could not be.
        what: String,
        /// The underlying error; `None` when the step was refused.
        #[source]
        cause: Option<Cause>,
    },
    /// The loopback gateway could not bind its listening address (taken, say).
    #[error("the gateway cannot listen on {addr}")]
    GatewayListen {
        /// The address asked for (`LabOptions::gateway_listen`).
        addr: std::net::SocketAddr,
        /// The bind error.
        #[source]
        source: std::io::Error,
    },
}

impl LabError {
    /// `what` failed in `part`, because of `cause`.
    pub fn failed(part: Part, what: impl Into<String>, cause: impl Into<Cause>) -> Self {
        LabError::Step {
            part,
            what: what.into(),
            cause: Some(cause.into()),
        }
    }

    /// A step of `part` cannot be taken, for the reason `what` gives (a
    /// missing precondition, not an underlying error).
    pub fn refused(part: Part, what: impl Into<String>) -> Self {
        LabError::Step {
            part,
            what: what.into(),
            cause: None,
        }
    }

    /// Which part of the lab failed.
    pub fn part(&self) -> Option<Part> {
        match self {
            LabError::Step { part, .. } => Some(*part),
            LabError::GatewayListen { .. } => None,
        }
    }
}

pub(crate) fn ip(s: &str) -> IpAddr {
    s.parse().expect("a literal address")
}

/// One pod of the loopback lab, labelled as in the kind lab so that the
/// same policies select it.
#[derive(Debug, Clone, Copy)]
pub struct LabPod {
    /// The pod's name, in the `demo` namespace.
    pub name: &'static str,
    /// Its service account, which makes its SPIFFE ID.
    pub service_account: &'static str,
    /// Its labels, by which policies select it.
    pub labels: &'static [(&'static str, &'static str)],
    /// Its address in loopback mode.
    pub ip: &'static str,
    /// Its address in netns mode.
    pub netns_ip: &'static str,
    /// The node it runs on.
    pub node: &'static str,
    /// How it takes part in the mesh (captured, or an HBONE client only).
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
        netns_ip: "10.244.1.10",
        node: "node-1",
        mesh: MeshMode::HboneClient,
        ports: &[80],
    },
    LabPod {
        name: "test-pod",
        service_account: "default",
        labels: &[("run", "test-pod")],
        ip: "127.0.12.2",
        netns_ip: "10.244.1.11",
        node: "node-1",
        mesh: MeshMode::Ambient,
        ports: &[],
    },
    LabPod {
        name: "hello-app",
        service_account: "hello-app",
        labels: &[("app", "hello-app")],
        ip: "127.0.12.3",
        netns_ip: "10.244.2.10",
        node: "node-2",
        mesh: MeshMode::Ambient,
        ports: &[HELLO_PORT],
    },
    LabPod {
        name: "postgres",
        service_account: "postgres",
        labels: &[("app", "postgres")],
        ip: "127.0.12.4",
        netns_ip: "10.244.2.11",
        node: "node-2",
        mesh: MeshMode::Ambient,
        ports: &[5432],
    },
    LabPod {
        name: "worker-app",
        service_account: "worker-app",
        labels: &[("app", "worker-app")],
        ip: "127.0.12.5",
        netns_ip: "10.244.1.12",
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

/// How the lab is wired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// 127.x addresses and SOCKS5; no privileges.
    #[default]
    Loopback,
    /// Network namespaces, iptables capture, the Cilium layer (root).
    Netns,
}

impl Mode {
    /// `(hello-app VIP, postgres VIP)`
    pub fn vips(self) -> (&'static str, &'static str) {
        match self {
            Mode::Loopback => (HELLO_VIP, POSTGRES_VIP),
            Mode::Netns => ("10.96.0.10", "10.96.0.11"),
        }
    }
}

impl LabPod {
    /// Its address in `mode`.
    pub fn addr(&self, mode: Mode) -> IpAddr {
        ip(match mode {
            Mode::Loopback => self.ip,
            Mode::Netns => self.netns_ip,
        })
    }

    /// Its labels as an owned map, as the policy topology takes them.
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
    topology_for(Mode::Loopback)
}

/// The lab's topology with the addresses of `mode` (netns mode adds the
/// nodes and the stand-ins' addresses that the Cilium compiler needs).
pub fn topology_for(mode: Mode) -> LabTopology {
    let netns = mode == Mode::Netns;
    let (externals, outside_clients) = lab_outside(
        netns.then(|| ip(GITHUB_IP)),
        netns.then(|| ip(CLOUDFLARE_IP)),
    );
    LabTopology {
        trust_domain: "cluster.local".into(),
        workloads: PODS
            .iter()
            .map(|p| LabWorkload {
                name: p.name.into(),
                namespace: "demo".into(),
                service_account: p.service_account.into(),
                labels: p.label_map(),
                ip: Some(p.addr(mode)),
                ports: p.ports.to_vec(),
                named_ports: BTreeMap::new(),
                mesh: p.mesh,
                node: Some(p.node.into()),
            })
            .collect(),
        nodes: match netns {
            true => vec![
                LabNode {
                    name: "node-1".into(),
                    ip: ip("10.244.1.1"),
                },
                LabNode {
                    name: "node-2".into(),
                    ip: ip("10.244.2.1"),
                },
            ],
            false => Vec::new(),
        },
        externals,
        outside_clients,
    }
}

/// The port hello-app serves HTTP on.
pub const HELLO_PORT: u16 = 8000;
/// PostgreSQL's port, the usual one (policies name 5432).
pub const POSTGRES_PORT: u16 = 5432;
/// hello-app's service address in loopback mode.
pub const HELLO_VIP: &str = "127.0.13.1";
/// postgres's service address in loopback mode.
pub const POSTGRES_VIP: &str = "127.0.13.2";
/// The service hostnames clients use.
pub const HELLO_HOST: &str = "hello-app.demo.svc.cluster.local";
/// PostgreSQL's service hostname, as hello-app dials it.
pub const POSTGRES_HOST: &str = "postgres.demo.svc.cluster.local";
