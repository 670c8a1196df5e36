//! The two Gateway API kinds the lab uses (gateway.networking.k8s.io/v1),
//! with the fields it reads. Their full shape — every field the upstream
//! API knows, and nothing else — is checked against the upstream schemas
//! before these types are filled (see [`crate::manifests`]).

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1",
    kind = "Gateway",
    namespaced
)]
#[serde(rename_all = "camelCase")]
/// A Gateway's spec: the fields the lab writes (gateway.networking.k8s.io/v1).
pub struct GatewaySpec {
    /// The GatewayClass (`istio`).
    pub gateway_class_name: String,
    /// Where the gateway listens.
    pub listeners: Vec<Listener>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Left as written.
    pub infrastructure: Option<serde_json::Value>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
/// One port a Gateway listens on.
pub struct Listener {
    /// Its name, unique in the Gateway.
    pub name: String,
    /// The port.
    pub port: u16,
    /// `HTTP`, `HTTPS`, `TLS`, `TCP` or `UDP`.
    pub protocol: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// The host name it answers for, if only one.
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Which routes may attach (left as written).
    pub allowed_routes: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// TLS settings (left as written).
    pub tls: Option<serde_json::Value>,
}

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1",
    kind = "HTTPRoute",
    namespaced
)]
#[serde(rename_all = "camelCase")]
/// An HTTPRoute's spec: where it attaches and where it sends requests.
pub struct HTTPRouteSpec {
    #[serde(default)]
    /// The Gateways it attaches to.
    pub parent_refs: Vec<ParentRef>,
    #[serde(default)]
    /// The host names it matches.
    pub hostnames: Vec<String>,
    #[serde(default)]
    /// Its rules, in order.
    pub rules: Vec<RouteRule>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
/// A Gateway a route attaches to.
pub struct ParentRef {
    /// The Gateway's name.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Its namespace, if not the route's.
    pub namespace: Option<String>,
    #[serde(flatten)]
    /// Every other field, kept as written.
    pub other: BTreeMap<String, serde_json::Value>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
/// One rule of a route: what it matches and where it sends it.
pub struct RouteRule {
    #[serde(default)]
    /// The request matches (left as written).
    pub matches: Vec<serde_json::Value>,
    #[serde(default)]
    /// The Services requests go to.
    pub backend_refs: Vec<BackendRef>,
    #[serde(flatten)]
    /// Every other field, kept as written.
    pub other: BTreeMap<String, serde_json::Value>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
/// A Service a rule sends requests to.
pub struct BackendRef {
    /// The Service's name.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Its namespace, if not the route's.
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Its port.
    pub port: Option<u16>,
    #[serde(flatten)]
    /// Every other field, kept as written.
    pub other: BTreeMap<String, serde_json::Value>,
}

/// The service account (and deployment) Istio creates for a Gateway.
pub fn istio_gateway_service_account(gateway: &str) -> String {
    format!("{gateway}-istio")
}

/// The label Istio puts on a Gateway's pods.
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";
