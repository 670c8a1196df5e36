//! kind's cluster configuration (kind.x-k8s.io/v1alpha4), the fields the lab
//! uses, with unknown fields refused.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
/// A kind cluster's configuration.
pub struct KindCluster {
    /// `Cluster`.
    pub kind: String,
    /// `kind.x-k8s.io/v1alpha4`.
    pub api_version: String,
    /// The cluster's name (its kubectl context is `kind-<name>`).
    pub name: String,
    /// Pod and service networking.
    pub networking: Networking,
    /// The nodes, control plane first.
    pub nodes: Vec<KindNode>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
/// The cluster's networking.
pub struct Networking {
    #[serde(rename = "disableDefaultCNI", default)]
    /// No kindnet: Cilium is installed instead.
    pub disable_default_cni: bool,
    #[serde(default)]
    /// `none` when Cilium replaces kube-proxy.
    pub kube_proxy_mode: Option<String>,
    #[serde(default)]
    /// The pods' CIDR.
    pub pod_subnet: Option<String>,
    #[serde(default)]
    /// The services' CIDR.
    pub service_subnet: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
/// One node of the cluster.
pub struct KindNode {
    /// `control-plane` or `worker`.
    pub role: String,
    #[serde(default)]
    /// The node image (pins the Kubernetes version).
    pub image: Option<String>,
    #[serde(default)]
    /// Host ports forwarded into the node.
    pub extra_port_mappings: Vec<PortMapping>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
/// A host port forwarded into a node.
pub struct PortMapping {
    /// The port inside the node.
    pub container_port: u16,
    /// The port on the host.
    pub host_port: u16,
    #[serde(default)]
    /// The host address it binds (all by default).
    pub listen_address: Option<String>,
    #[serde(default)]
    /// `TCP` (default), `UDP` or `SCTP`.
    pub protocol: Option<String>,
}

/// Parses a kind config, naming the field of any mistake.
pub fn parse(text: &str, file: &str) -> Result<KindCluster, String> {
    let de = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de)
        .map_err(|e| format!("{file}: field `{}`: {}", e.path(), e.inner()))
}
