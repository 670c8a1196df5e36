//! The combined verdict: for every source × destination × port of a lab,
//! what Cilium says (egress at the source, ingress at the destination, on
//! the port it actually sees on the wire), what Istio says (at the
//! receiving ztunnel), and the result — a connection needs both.

use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};

use crate::cilium::{CiliumPolicies, EndpointInfo, Flow, L4Protocol, Peer};
pub use crate::decision::{Decision, Verdict};
use crate::istio::IstioPolicies;
use crate::load::{Loaded, cilium_policies, istio_policies};
use crate::topology::{
    ExternalHost, HBONE_PORT, LabTopology, LabWorkload, MeshMode, OutsideClient,
};

/// Istio's default root namespace: policies there without a selector are mesh-wide.
pub const ROOT_NAMESPACE: &str = "istio-system";

/// Both layers' policies.
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    /// The AuthorizationPolicies and PeerAuthentications, decided at the receiving ztunnel.
    pub istio: IstioPolicies,
    /// The Cilium policies, decided at L3/L4 on both ends.
    pub cilium: CiliumPolicies,
}

impl PolicySet {
    /// Sorts loaded resources into the two layers, with `istio-system` as Istio's root namespace.
    pub fn from_loaded(loaded: &[Loaded]) -> Self {
        PolicySet {
            istio: istio_policies(loaded, ROOT_NAMESPACE),
            cilium: cilium_policies(loaded),
        }
    }
}

/// One cell of the matrix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row {
    /// Name of the client: a lab workload or an outside client.
    pub src: String,
    /// Name of the destination: a lab workload or an external host.
    pub dst: String,
    /// The port the client dials.
    pub port: u16,
    /// The port Cilium sees on the wire (15008 for meshed traffic).
    pub wire_port: u16,
    /// Cilium's verdict: allow only if both egress and ingress allow.
    pub cilium: Verdict,
    /// Istio's verdict at the receiving side.
    pub istio: Verdict,
    /// The outcome: allow only if both layers allow.
    pub verdict: Verdict,
    /// Each check's reason, in order: Cilium egress, Cilium ingress, Istio.
    pub reasons: Vec<String>,
    /// The same checks, each with its verdict and the policy and rule behind it.
    pub checks: Vec<Check>,
}

/// One of the three checks a connection passes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// `cilium egress`, `cilium ingress` or `istio`.
    pub layer: String,
    /// This check's verdict.
    pub verdict: Verdict,
    /// The policy and rule in a few words.
    pub by: String,
    /// Why, in a sentence for people.
    pub reason: String,
}

impl Check {
    fn new(layer: &str, d: &Decision) -> Self {
        Check {
            layer: layer.into(),
            verdict: Verdict::of(d.allowed),
            by: d.cite(),
            reason: d.reason.clone(),
        }
    }
}

impl Row {
    /// The checks that refused, or all of them when the connection is allowed.
    pub fn deciding(&self) -> Vec<&Check> {
        let refusing: Vec<&Check> = self
            .checks
            .iter()
            .filter(|c| !c.verdict.allowed())
            .collect();
        match refusing.is_empty() {
            true => self.checks.iter().collect(),
            false => refusing,
        }
    }
}

enum Source<'a> {
    Pod(&'a LabWorkload),
    Outside(&'a OutsideClient),
}

enum Destination<'a> {
    Pod(&'a LabWorkload),
    External(&'a ExternalHost),
}

/// Computes every row: each source (pods, then outside clients) against
/// each destination port (pods, then — for pods only — external hosts).
pub fn matrix(topology: &LabTopology, policies: &PolicySet) -> Vec<Row> {
    let sources = topology
        .workloads
        .iter()
        .map(Source::Pod)
        .chain(topology.outside_clients.iter().map(Source::Outside));
    let mut rows = Vec::new();
    for src in sources {
        let pod_targets = topology
            .workloads
            .iter()
            .flat_map(|w| w.ports.iter().map(move |p| (Destination::Pod(w), *p)));
        let external_targets = topology
            .externals
            .iter()
            .map(|e| (Destination::External(e), e.port))
            .filter(|_| matches!(src, Source::Pod(_)));
        for (dst, port) in pod_targets.chain(external_targets) {
            if let (Source::Pod(s), Destination::Pod(d)) = (&src, &dst)
                && s.name == d.name
            {
                continue;
            }
            rows.push(row(topology, policies, &src, &dst, port));
        }
    }
    rows
}

fn row(
    topology: &LabTopology,
    policies: &PolicySet,
    src: &Source<'_>,
    dst: &Destination<'_>,
    port: u16,
) -> Row {
    let src_sends_hbone = matches!(src, Source::Pod(w) if w.mesh.sends_hbone());
    let dst_ambient = matches!(dst, Destination::Pod(w) if w.mesh == MeshMode::Ambient);
    let wire_port = if src_sends_hbone && dst_ambient {
        HBONE_PORT
    } else {
        port
    };
    let sni = match dst {
        Destination::External(e) if e.tls => Some(e.name.as_str()),
        _ => None,
    };
    let flow = Flow {
        port: wire_port,
        protocol: L4Protocol::Tcp,
        sni,
    };
    let egress = match (src, dst) {
        (Source::Pod(s), _) => {
            policies
                .cilium
                .egress(&EndpointInfo::from(*s), &peer_of_dst(dst), &flow)
        }
        (Source::Outside(o), _) => Decision::allow(format!(
            "egress: {} is not a pod; no Cilium endpoint policy governs its sending",
            o.name
        )),
    };
    let ingress = match dst {
        Destination::Pod(d) => {
            policies
                .cilium
                .ingress(&EndpointInfo::from(*d), &peer_of_src(src), &flow)
        }
        Destination::External(e) => Decision::allow(format!(
            "ingress: {} is outside the cluster; no Cilium policy of ours receives it",
            e.name
        )),
    };
    let istio = istio_decision(topology, policies, src, dst, port);
    let cilium_ok = egress.allowed && ingress.allowed;
    Row {
        src: match src {
            Source::Pod(w) => w.name.clone(),
            Source::Outside(o) => o.name.clone(),
        },
        dst: match dst {
            Destination::Pod(w) => w.name.clone(),
            Destination::External(e) => e.name.clone(),
        },
        port,
        wire_port,
        cilium: Verdict::of(cilium_ok),
        istio: Verdict::of(istio.allowed),
        verdict: Verdict::of(cilium_ok && istio.allowed),
        reasons: vec![
            format!("cilium {}", egress.reason),
            format!("cilium {}", ingress.reason),
            format!("istio: {}", istio.reason),
        ],
        checks: vec![
            Check::new("cilium egress", &egress),
            Check::new("cilium ingress", &ingress),
            Check::new("istio", &istio),
        ],
    }
}

fn peer_of_dst<'a>(dst: &'a Destination<'a>) -> Peer<'a> {
    match dst {
        Destination::Pod(w) => Peer::Endpoint(EndpointInfo::from(*w)),
        Destination::External(e) => Peer::World {
            ip: e.ip,
            name: Some(&e.name),
        },
    }
}

fn peer_of_src<'a>(src: &'a Source<'a>) -> Peer<'a> {
    match src {
        Source::Pod(w) => Peer::Endpoint(EndpointInfo::from(*w)),
        Source::Outside(o) => Peer::World {
            ip: Some(o.ip),
            name: None,
        },
    }
}

fn istio_decision(
    topology: &LabTopology,
    policies: &PolicySet,
    src: &Source<'_>,
    dst: &Destination<'_>,
    port: u16,
) -> Decision {
    let target = match dst {
        Destination::Pod(w) if w.mesh == MeshMode::Ambient => w,
        Destination::Pod(w) => {
            return Decision::allow(format!(
                "{} is not captured by ztunnel, so no Istio L4 policy applies to what it receives",
                w.name
            ));
        }
        Destination::External(e) => {
            return Decision::allow(format!(
                "{} is outside the mesh: ztunnel passes the connection through and no AuthorizationPolicy applies",
                e.name
            ));
        }
    };
    let unspecified = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    let (principal, src_ip) = match src {
        Source::Outside(o) if o.bypasses_mesh => {
            return Decision::allow(format!(
                "{} ({}) bypasses ztunnel: ambient exempts the kubelet's SNAT-ed probes from capture",
                o.name, o.ip
            ));
        }
        Source::Outside(o) => (None, o.ip),
        Source::Pod(w) if w.mesh.sends_hbone() => (
            Some(w.principal(&topology.trust_domain)),
            w.ip.unwrap_or(unspecified),
        ),
        Source::Pod(w) => (None, w.ip.unwrap_or(unspecified)),
    };
    policies.istio.decide(
        &target.namespace,
        &target.labels,
        principal.as_deref(),
        src_ip,
        std::net::SocketAddr::new(target.ip.unwrap_or(unspecified), port),
    )
}
