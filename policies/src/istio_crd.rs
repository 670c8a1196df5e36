//! Istio's security resources (security.istio.io/v1) as typed Rust, field
//! for field as in the upstream CRDs. Every struct refuses unknown fields, so
//! a typo such as `principal:` for `principals:` is an error, not a rule that
//! silently matches everyone.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// An AuthorizationPolicy's `spec`: which workloads it covers, its action, and its rules.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "security.istio.io",
    version = "v1",
    kind = "AuthorizationPolicy",
    namespaced,
    derive = "PartialEq"
)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthorizationPolicySpec {
    /// Workloads it applies to; without one, its namespace (the mesh, in the root namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// A resource (gateway, service) the policy is attached to; such policies are for waypoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<PolicyTargetReference>,
    /// Several resources the policy is attached to; as `target_ref`, for waypoints only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<PolicyTargetReference>,
    /// ORed rules; none at all means the policy matches nothing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
    /// What happens when a rule matches; ALLOW by default.
    #[serde(default)]
    pub action: Action,
    /// The external authorizer a CUSTOM policy delegates to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<ExtensionProvider>,
}

/// An AuthorizationPolicy's action.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum Action {
    /// Accept matching requests; once an ALLOW applies, everything else is refused.
    #[default]
    Allow,
    /// Refuse matching requests, whatever ALLOW policies say.
    Deny,
    /// Only mark matching requests for auditing; ztunnel ignores the policy.
    Audit,
    /// Delegate the decision to `provider`; ztunnel ignores the policy.
    Custom,
}

/// Selects workloads by their labels.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadSelector {
    /// Labels a workload must all carry with these values; empty selects every workload.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

/// A Kubernetes resource a policy is attached to instead of workloads.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicyTargetReference {
    /// API group of the resource; empty for the core group.
    #[serde(default)]
    pub group: String,
    /// Kind of the resource, e.g. `Gateway` or `Service`.
    pub kind: String,
    /// Name of the resource.
    pub name: String,
    /// Namespace of the resource; defaults to the policy's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// Names an extension provider from the mesh configuration.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtensionProvider {
    /// The provider's name, as configured in the mesh.
    pub name: String,
}

/// One rule: its sources (`from`), operations (`to`) and conditions (`when`) must all hold.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Sources, one of which must match; empty means any source.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<From>,
    /// Operations, one of which must match; empty means any operation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<To>,
    /// Extra conditions, all of which must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub when: Vec<Condition>,
}

/// One `from` entry.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct From {
    /// The peer attributes this entry requires.
    pub source: Source,
}

/// One `to` entry.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct To {
    /// The request attributes this entry requires.
    pub operation: Operation,
}

/// Attributes of the sending peer; every list that is set must hold.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Source {
    /// Peer identities (`td/ns/x/sa/y`, `*` patterns allowed), one of which must match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<String>,
    /// Peer identities none of which may match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_principals: Vec<String>,
    /// JWT principals (`iss/sub`), one of which must match; L7 only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_principals: Vec<String>,
    /// JWT principals none of which may match; L7 only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_request_principals: Vec<String>,
    /// Source namespaces (from the peer identity), one of which must match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Source namespaces none of which may match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_namespaces: Vec<String>,
    /// Source service accounts (`ns/sa`, or `sa` in the policy's namespace); one must match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_accounts: Vec<String>,
    /// Source service accounts none of which may match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_service_accounts: Vec<String>,
    /// Addresses or CIDRs of the connection's source, one of which must match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_blocks: Vec<String>,
    /// Addresses or CIDRs none of which may contain the source.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ip_blocks: Vec<String>,
    /// Client addresses from `X-Forwarded-For`, one of which must match; L7 only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remote_ip_blocks: Vec<String>,
    /// Client addresses from `X-Forwarded-For` none of which may match; L7 only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_remote_ip_blocks: Vec<String>,
}

/// Attributes of what is asked for; every list that is set must hold.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Operation {
    /// HTTP hosts (`Host`/authority), one of which must match; L7 only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// HTTP hosts none of which may match; L7 only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_hosts: Vec<String>,
    /// Destination ports as decimal strings, one of which must match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    /// Destination ports none of which may match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ports: Vec<String>,
    /// HTTP methods, one of which must match; L7 only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// HTTP methods none of which may match; L7 only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_methods: Vec<String>,
    /// HTTP paths (`*` patterns allowed), one of which must match; L7 only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// HTTP paths none of which may match; L7 only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_paths: Vec<String>,
}

/// A `when` condition on one attribute.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Condition {
    /// The attribute tested, e.g. `source.ip`; keys other than a few L4 ones are L7 only.
    pub key: String,
    /// Values, one of which the attribute must have.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    /// Values none of which the attribute may have.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_values: Vec<String>,
}

/// A PeerAuthentication's `spec`: which mTLS mode applies to which workloads and ports.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "security.istio.io",
    version = "v1",
    kind = "PeerAuthentication",
    namespaced,
    derive = "PartialEq"
)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PeerAuthenticationSpec {
    /// Workloads it applies to; without one, its namespace (the mesh, in the root namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// The mode for every port of the selected workloads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<MutualTls>,
    /// Per-port overrides of `mtls`, keyed by the workload's port; honoured only with a selector.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub port_level_mtls: BTreeMap<u32, MutualTls>,
}

/// An mTLS setting.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MutualTls {
    /// Whether plaintext is accepted; UNSET by default.
    #[serde(default)]
    pub mode: MtlsMode,
}

/// Whether a workload accepts plaintext as well as mTLS.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum MtlsMode {
    /// Take the mode of the parent policy (namespace, then mesh); PERMISSIVE when none sets one.
    #[default]
    Unset,
    /// mTLS not required; for ztunnel the same as PERMISSIVE.
    Disable,
    /// Both mTLS and plaintext are accepted.
    Permissive,
    /// Only mTLS: connections without a peer identity are refused.
    Strict,
}
