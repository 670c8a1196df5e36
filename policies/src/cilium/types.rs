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
    /// Free text for people; not evaluated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The pods the rule applies to; without one (a host policy) it selects no pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_selector: Option<EndpointSelector>,
    /// Selects nodes (host policies); such a rule never selects pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<EndpointSelector>,
    /// Allow rules for traffic to the selected pods; this or `ingressDeny` turns on default deny.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<IngressRule>,
    /// Deny rules for traffic to the selected pods; they win over every allow.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress_deny: Vec<IngressRule>,
    /// Allow rules for traffic from the selected pods; this or `egressDeny` turns on default deny.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<EgressRule>,
    /// Deny rules for traffic from the selected pods; they win over every allow.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress_deny: Vec<EgressRule>,
    /// Per direction, whether the rule's sections switch on default deny; unset means they do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_default_deny: Option<DefaultDeny>,
    /// Labels that name the rule itself (raw JSON); not evaluated.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<Value>,
    /// Policy logging settings (raw JSON); not evaluated.
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
    /// `false`: ingress sections only add allowances, without default deny.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<bool>,
    /// `false`: egress sections only add allowances, without default deny.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<bool>,
}

/// A Kubernetes label selector as Cilium reads it. An empty selector
/// selects every endpoint in scope.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EndpointSelector {
    /// Labels an endpoint must all carry with exactly these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    /// Further conditions on labels, all of which must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelExpression>,
}

/// One `matchExpressions` entry: a condition on one label.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LabelExpression {
    /// The label the condition is about (a `k8s:` or `any:` prefix is ignored).
    pub key: String,
    /// How the label's value is tested.
    pub operator: LabelOperator,
    /// Values for `In` and `NotIn`; unused by the other operators.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// How a label expression tests its label.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum LabelOperator {
    /// The label is set to one of the values.
    #[default]
    In,
    /// The label is unset or set to none of the values.
    NotIn,
    /// The label is set, to any value.
    Exists,
    /// The label is not set.
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
    /// The cluster's Kubernetes API server.
    KubeApiserver,
    /// Endpoints whose identity Cilium has not resolved yet; never matched here.
    Init,
    /// Cilium's own ingress proxy; never matched here.
    Ingress,
    /// Pods Cilium does not manage; never matched here.
    Unmanaged,
    /// Cilium's health-check endpoints; never matched here.
    Health,
    /// No peer at all; never matches.
    None,
}

/// One ingress (or ingressDeny) rule: who may send, and to which ports.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IngressRule {
    /// Pods that may send, by label; namespaced policies add their own namespace unless one is
    /// named.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_endpoints: Vec<EndpointSelector>,
    /// Labels every sender must also carry; never matched, with a warning.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_requires: Vec<EndpointSelector>,
    /// Reserved identities that may send (`world`, `host`, …).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_entities: Vec<Entity>,
    /// Source CIDRs outside the cluster that may send.
    #[serde(default, rename = "fromCIDR", skip_serializing_if = "Vec::is_empty")]
    pub from_cidr: Vec<String>,
    /// Source CIDRs with exceptions, or CIDR-group references (the latter not evaluated).
    #[serde(default, rename = "fromCIDRSet", skip_serializing_if = "Vec::is_empty")]
    pub from_cidr_set: Vec<CidrRule>,
    /// Nodes that may send, by label; never matched, with a warning.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_nodes: Vec<EndpointSelector>,
    /// Cloud-provider groups that may send (raw JSON); never matched, with a warning.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_groups: Vec<Value>,
    /// ICMP types allowed (raw JSON); a rule with these and no ports matches no TCP/UDP flow.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub icmps: Vec<Value>,
    /// Mutual authentication required of the peer (raw JSON); not evaluated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication: Option<Value>,
    /// Ports the rule applies to, with optional L7 checks; empty means every port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to_ports: Vec<PortRule>,
}

/// One egress (or egressDeny) rule: where the endpoint may send, and on which ports.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EgressRule {
    /// Pods that may be reached, by label; namespaced policies add their own namespace unless one
    /// is named.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to_endpoints: Vec<EndpointSelector>,
    /// Labels every destination must also carry; never matched, with a warning.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to_requires: Vec<EndpointSelector>,
    /// Reserved identities that may be reached (`world`, `kube-apiserver`, …).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to_entities: Vec<Entity>,
    /// Destination CIDRs outside the cluster that may be reached.
    #[serde(default, rename = "toCIDR", skip_serializing_if = "Vec::is_empty")]
    pub to_cidr: Vec<String>,
    /// Destination CIDRs with exceptions, or CIDR-group references (the latter not evaluated).
    #[serde(default, rename = "toCIDRSet", skip_serializing_if = "Vec::is_empty")]
    pub to_cidr_set: Vec<CidrRule>,
    /// DNS names that may be reached; needs a DNS rule so Cilium learns their addresses.
    #[serde(default, rename = "toFQDNs", skip_serializing_if = "Vec::is_empty")]
    pub to_fqdns: Vec<FqdnSelector>,
    /// Kubernetes services that may be reached (raw JSON); never matched, with a warning.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to_services: Vec<Value>,
    /// Nodes that may be reached, by label; never matched, with a warning.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to_nodes: Vec<EndpointSelector>,
    /// Cloud-provider groups that may be reached (raw JSON); never matched, with a warning.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to_groups: Vec<Value>,
    /// ICMP types allowed (raw JSON); a rule with these and no ports matches no TCP/UDP flow.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub icmps: Vec<Value>,
    /// Mutual authentication required of the peer (raw JSON); not evaluated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication: Option<Value>,
    /// Ports the rule applies to, with optional L7 checks; empty means every port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to_ports: Vec<PortRule>,
}

/// A CIDR, minus exceptions (or a reference to a CiliumCIDRGroup).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CidrRule {
    /// The network, e.g. `10.0.0.0/8`; `None` when a CIDR group is referenced instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<String>,
    /// Sub-networks of `cidr` that do not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub except: Vec<String>,
    /// Name of a CiliumCIDRGroup to use instead of `cidr`; not evaluated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr_group_ref: Option<String>,
    /// Selects CiliumCIDRGroups by label instead of `cidr`; not evaluated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr_group_selector: Option<EndpointSelector>,
}

/// A DNS name or pattern (`toFQDNs`, and DNS rules in `toPorts[].rules.dns`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FqdnSelector {
    /// An exact DNS name, compared case-insensitively.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_name: Option<String>,
    /// A DNS name with `*` wildcards; a lone `*` matches every name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_pattern: Option<String>,
}

/// `toPorts[]`: ports, and optionally what Cilium's L7 proxy checks on them.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PortRule {
    /// Ports and protocols matched; empty means every port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortProtocol>,
    /// L7 checks on these ports (DNS, HTTP, Kafka), done by Cilium's proxies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<L7Rules>,
    /// TLS SNI names (`*.` one label, `**.` any depth), checked by Cilium's Envoy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub server_names: Vec<String>,
    /// TLS settings for connections Cilium's proxy opens (raw JSON); not evaluated.
    #[serde(
        default,
        rename = "originatingTLS",
        skip_serializing_if = "Option::is_none"
    )]
    pub originating_tls: Option<Value>,
    /// TLS settings for connections Cilium's proxy terminates (raw JSON); not evaluated.
    #[serde(
        default,
        rename = "terminatingTLS",
        skip_serializing_if = "Option::is_none"
    )]
    pub terminating_tls: Option<Value>,
    /// A custom Envoy listener to send the traffic to (raw JSON); not evaluated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener: Option<Value>,
}

/// One port, or range of ports, and its protocol.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PortProtocol {
    /// A number (`"5432"`, `"0"` for every port) or a named container port.
    pub port: String,
    /// Last port of a range starting at `port`; ignored when below it.
    #[serde(default, rename = "endPort", skip_serializing_if = "Option::is_none")]
    pub end_port: Option<u16>,
    /// Transport protocol; unset means any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<L4Protocol>,
}

/// Transport protocols a port rule can name.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum L4Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
    /// Every protocol.
    Any,
}

/// L7 rules on a port; Cilium sends such traffic through its proxy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct L7Rules {
    /// HTTP request rules (raw JSON), checked by Cilium's Envoy; opened at L4 here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<Value>,
    /// Kafka message rules (raw JSON); opened at L4 here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kafka: Vec<Value>,
    /// DNS names the pod may look up; also lets `toFQDNs` learn addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<FqdnSelector>,
    /// Name of a generic L7 parser for `l7` rules; opened at L4 here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l7proto: Option<String>,
    /// Rules for the `l7proto` parser (raw JSON); opened at L4 here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub l7: Vec<Value>,
}
