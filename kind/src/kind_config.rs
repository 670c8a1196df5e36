//! kind's cluster configuration (kind.x-k8s.io/v1alpha4), the fields the lab
//! uses, with unknown fields refused.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KindCluster {
    pub kind: String,
    pub api_version: String,
    pub name: String,
    pub networking: Networking,
    pub nodes: Vec<KindNode>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Networking {
    #[serde(rename = "disableDefaultCNI", default)]
    pub disable_default_cni: bool,
    #[serde(default)]
    pub kube_proxy_mode: Option<String>,
    #[serde(default)]
    pub pod_subnet: Option<String>,
    #[serde(default)]
    pub service_subnet: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KindNode {
    pub role: String,
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub extra_port_mappings: Vec<PortMapping>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PortMapping {
    pub container_port: u16,
    pub host_port: u16,
    #[serde(default)]
    pub listen_address: Option<String>,
    #[serde(default)]
    pub protocol: Option<String>,
}

/// Parses a kind config, naming the field of any mistake.
pub fn parse(text: &str, file: &str) -> Result<KindCluster, String> {
    let de = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de)
        .map_err(|e| format!("{file}: field `{}`: {}", e.path(), e.inner()))
}
