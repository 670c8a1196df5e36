//! Cilium's network policy resources (cilium.io/v2) as typed Rust.
//!
//! CiliumNetworkPolicy is namespaced: its selectors only ever see endpoints
//! of its own namespace unless they name `io.kubernetes.pod.namespace`.
//! CiliumClusterwideNetworkPolicy has the same rule shape and sees the
//! whole cluster. Both refuse unknown fields. Fields this lab does not
//! evaluate (ICMP, L7 HTTP/Kafka, groups, services, TLS contexts) are kept as
//! raw JSON so a valid policy still loads; the upstream schema
//! ([`crate::schema`]) has already checked their shape.

use std::collections::BTreeMap;
use std::ops::Deref;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One Cilium policy rule: whom it selects, and what it allows or denies in
/// each direction. A CiliumNetworkPolicy's `spec` is one of these.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "cilium.io",
    version = "v2",
    kind = "CiliumNetworkPolicy",
    namespaced
)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CiliumNetworkPolicySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_selector: Option<EndpointSelector>,
    /// Selects nodes (host policies); such a rule never selects pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<EndpointSelector>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<IngressRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress_deny: Vec<IngressRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<EgressRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress_deny: Vec<EgressRule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_default_deny: Option<DefaultDeny>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<Value>,
}

/// The rule shape both kinds share.
pub type PolicyRule = CiliumNetworkPolicySpec;

/// A CiliumClusterwideNetworkPolicy's `spec`: the same rule, cluster-wide.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "cilium.io",
    version = "v2",
    kind = "CiliumClusterwideNetworkPolicy"
)]
#[serde(transparent)]
pub struct CiliumClusterwideNetworkPolicySpec(pub PolicyRule);

impl Deref for CiliumClusterwideNetworkPolicySpec {
    type Target = PolicyRule;
    fn deref(&self) -> &PolicyRule {
        &self.0
    }
}

/// `enableDefaultDeny`: whether a rule with an ingress/egress section puts
/// the endpoints it selects into default deny for that direction (the
/// default), or only adds to what they may do (`false`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DefaultDeny {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<bool>,
}

/// A Kubernetes label selector as Cilium reads it. An empty selector
/// selects every endpoint in scope.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EndpointSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelExpression>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LabelExpression {
    pub key: String,
    pub operator: LabelOperator,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum LabelOperator {
    #[default]
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

/// Cilium's reserved identities, as named in `fromEntities`/`toEntities`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Entity {
    /// Everything, inside and outside the cluster.
    All,
    /// Anything outside the cluster (including SNAT-ed kubelet probes in ambient).
    World,
    /// Everything inside the cluster: pods, nodes, the API server.
    Cluster,
    /// The local node.
    Host,
    /// Other nodes of the cluster.
    RemoteNode,
    KubeApiserver,
    Init,
    Ingress,
    Unmanaged,
    Health,
    None,
}

/// One ingress (or ingressDeny) rule: who may send, and to which ports.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IngressRule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_endpoints: Vec<EndpointSelector>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_requires: Vec<EndpointSelector>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_entities: Vec<Entity>,
    #[serde(default, rename = "fromCIDR", skip_serializing_if = "Vec::is_empty")]
    pub from_cidr: Vec<String>,
    #[serde(default, rename = "fromCIDRSet", skip_serializing_if = "Vec::is_empty")]
    pub from_cidr_set: Vec<CidrRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_nodes: Vec<EndpointSelector>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_groups: Vec<Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub icmps: Vec<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication: Option<Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to_ports: Vec<PortRule>,
}

/// One egress (or egressDeny) rule: where the endpoint may send, and on which ports.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EgressRule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to_endpoints: Vec<EndpointSelector>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to_requires: Vec<EndpointSelector>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to_entities: Vec<Entity>,
    #[serde(default, rename = "toCIDR", skip_serializing_if = "Vec::is_empty")]
    pub to_cidr: Vec<String>,
    #[serde(default, rename = "toCIDRSet", skip_serializing_if = "Vec::is_empty")]
    pub to_cidr_set: Vec<CidrRule>,
    #[serde(default, rename = "toFQDNs", skip_serializing_if = "Vec::is_empty")]
    pub to_fqdns: Vec<FqdnSelector>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to_services: Vec<Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to_nodes: Vec<EndpointSelector>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to_groups: Vec<Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub icmps: Vec<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication: Option<Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to_ports: Vec<PortRule>,
}

/// A CIDR, minus exceptions (or a reference to a CiliumCIDRGroup).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CidrRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub except: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr_group_ref: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr_group_selector: Option<EndpointSelector>,
}

/// A DNS name or pattern (`toFQDNs`, and DNS rules in `toPorts[].rules.dns`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FqdnSelector {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_pattern: Option<String>,
}

/// `toPorts[]`: ports, and optionally what Cilium's L7 proxy checks on them.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PortRule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortProtocol>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<L7Rules>,
    /// TLS SNI names (`*.` one label, `**.` any depth), checked by Cilium's Envoy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub server_names: Vec<String>,
    #[serde(
        default,
        rename = "originatingTLS",
        skip_serializing_if = "Option::is_none"
    )]
    pub originating_tls: Option<Value>,
    #[serde(
        default,
        rename = "terminatingTLS",
        skip_serializing_if = "Option::is_none"
    )]
    pub terminating_tls: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener: Option<Value>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PortProtocol {
    /// A number (`"5432"`, `"0"` for every port) or a named container port.
    pub port: String,
    #[serde(default, rename = "endPort", skip_serializing_if = "Option::is_none")]
    pub end_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<L4Protocol>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum L4Protocol {
    Tcp,
    Udp,
    Sctp,
    Any,
}

/// L7 rules on a port; Cilium sends such traffic through its proxy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct L7Rules {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kafka: Vec<Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<FqdnSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l7proto: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub l7: Vec<Value>,
}
