//! What `policy check` needs to know about the lab's workloads: their
//! labels and identities (what policies select), how they take part in the
//! mesh (which decides the port Cilium sees), and the outside world they
//! talk to. The standalone lab and the kind lab's manifests both describe
//! themselves this way.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// How a workload takes part in the ambient mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MeshMode {
    /// Captured by ztunnel both ways: sends and receives HBONE on 15008, and
    /// its inbound is subject to PeerAuthentication and AuthorizationPolicy.
    Ambient,
    /// Speaks HBONE itself to meshed backends but is not captured inbound
    /// (an Istio gateway).
    HboneClient,
    /// Not in the mesh: plain TCP both ways.
    None,
}

impl MeshMode {
    /// Does this workload's outbound to a meshed pod travel as HBONE?
    pub fn sends_hbone(self) -> bool {
        matches!(self, MeshMode::Ambient | MeshMode::HboneClient)
    }
}

/// A pod of the lab.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabWorkload {
    /// The workload's name, as rows of the matrix show it.
    pub name: String,
    /// The namespace the pod runs in.
    pub namespace: String,
    /// The pod's service account, part of its mesh identity.
    pub service_account: String,
    /// The pod's labels, as policy selectors see them.
    pub labels: BTreeMap<String, String>,
    /// The pod's address, when known: what Istio's IP rules and the iptables rules see.
    #[serde(default)]
    pub ip: Option<IpAddr>,
    /// The application ports it serves (the ports clients dial).
    #[serde(default)]
    pub ports: Vec<u16>,
    /// Named container ports, for Cilium rules that give a port by name.
    #[serde(default)]
    pub named_ports: BTreeMap<String, u16>,
    /// How the pod takes part in the mesh.
    pub mesh: MeshMode,
    /// The node it runs on, when known (Cilium's `host` / `remote-node`).
    #[serde(default)]
    pub node: Option<String>,
}

/// A node of the cluster and its address.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabNode {
    /// The node's name, as workloads refer to it.
    pub name: String,
    /// The node's address.
    pub ip: IpAddr,
}

/// A destination outside the cluster, reached by name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExternalHost {
    /// The DNS name (also the TLS SNI when `tls`).
    pub name: String,
    /// The port clients dial.
    pub port: u16,
    /// An address it resolves to, when known, for CIDR rules.
    #[serde(default)]
    pub ip: Option<IpAddr>,
    /// Whether clients speak TLS to it, so that Cilium can see an SNI.
    #[serde(default)]
    pub tls: bool,
}

/// A client that is not a pod: a person's browser, the kubelet's probes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutsideClient {
    /// A name for the client, as rows of the matrix show it.
    pub name: String,
    /// The address its connections come from.
    pub ip: IpAddr,
    /// True for the kubelet's probes, which ambient SNATs to 169.254.7.127
    /// and lets past ztunnel, so no Istio policy sees them.
    #[serde(default)]
    pub bypasses_mesh: bool,
}

/// Everything `policy check` draws its matrix from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LabTopology {
    /// The mesh's trust domain, the first part of every principal.
    pub trust_domain: String,
    /// The lab's pods, both sources and destinations of the matrix.
    pub workloads: Vec<LabWorkload>,
    /// The cluster's nodes, which give Cilium's `host` and `remote-node` their addresses.
    #[serde(default)]
    pub nodes: Vec<LabNode>,
    /// Destinations outside the cluster, reached from pods.
    #[serde(default)]
    pub externals: Vec<ExternalHost>,
    /// Clients outside the cluster, reaching into pods.
    #[serde(default)]
    pub outside_clients: Vec<OutsideClient>,
}

impl LabWorkload {
    /// The principal Istio policies name: `<td>/ns/<ns>/sa/<sa>`.
    pub fn principal(&self, trust_domain: &str) -> String {
        format!(
            "{trust_domain}/ns/{}/sa/{}",
            self.namespace, self.service_account
        )
    }
}

/// The kubelet's probe address in ambient mode.
pub const KUBELET_PROBE_IP: &str = "169.254.7.127";
/// The port every meshed pod receives HBONE on.
pub const HBONE_PORT: u16 = 15008;

/// Where the lab's "browser outside the cluster" comes from (TEST-NET-3).
pub const BROWSER_IP: &str = "203.0.113.100";

/// What lies outside the lab's cluster, the same in every lab: the two APIs
/// hello-app calls (with their addresses when a lab knows them), a person's
/// browser, and the kubelet's probes.
pub fn lab_outside(
    github_ip: Option<IpAddr>,
    cloudflare_ip: Option<IpAddr>,
) -> (Vec<ExternalHost>, Vec<OutsideClient>) {
    let externals = [
        ("api.github.com", github_ip),
        ("api.cloudflare.com", cloudflare_ip),
    ]
    .into_iter()
    .map(|(name, ip)| ExternalHost {
        name: name.into(),
        port: 443,
        ip,
        tls: true,
    })
    .collect();
    let clients = vec![
        OutsideClient {
            name: "browser".into(),
            ip: BROWSER_IP.parse().expect("literal"),
            bypasses_mesh: false,
        },
        OutsideClient {
            name: "kubelet-probe".into(),
            ip: KUBELET_PROBE_IP.parse().expect("literal"),
            bypasses_mesh: true,
        },
    ];
    (externals, clients)
}
