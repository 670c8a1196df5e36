//! The workload API's `Authorization`: Istio policy in the form ztunnel
//! enforces it.
//!
//! istiod never sends AuthorizationPolicy or PeerAuthentication resources
//! to ztunnel. It translates them into `istio.security.Authorization`
//! messages (scope, action, rules of clauses of matches) and tells each
//! workload, in its own record, which selector-scoped ones it must apply.
//! This module does that translation the way istiod does ([`translate`],
//! [`peer_authn`]), evaluates the result the way ztunnel does ([`eval`]),
//! and writes it in the two text shapes people compare it in ([`render`]):
//! istiod's proto-JSON YAML (its golden test files) and ztunnel's
//! local-config YAML.
//!
//! hbone-lab's proxy and `policy check` decide on this translated form, not
//! on the CRDs, so that agreeing with ztunnel is a matter of one translation
//! (checked against istiod's own vectors) and one small evaluator (checked
//! against a real ztunnel by `policy diff`), instead of a second reading of
//! the CRDs' rules.
//!
//! Names: ztunnel's proto calls the levels `rules` → `clauses` → `matches`;
//! istiod's copy of the same wire message calls them `groups` → `rules` →
//! `matches`. The Rust types follow ztunnel ([`Rule`], [`Clause`],
//! [`Match`]); the istiod rendering uses istiod's names.

pub mod decide;
pub mod eval;
pub mod index;
pub mod peer_authn;
pub mod render;
pub mod translate;

pub use eval::{Connection, Verdict};
pub use index::{MeshAuthorization, WorkloadRef};

use std::net::IpAddr;

use ipnet::IpNet;

/// An address as the workload API carries it: 4 or 16 bytes.
pub fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// Which workloads a policy applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Every workload of the mesh (a policy without selector in the root namespace).
    Global,
    /// Every workload of the policy's namespace.
    Namespace,
    /// The workloads whose record lists the policy's key.
    WorkloadSelector,
}

impl Scope {
    /// The proto enum's name (`GLOBAL`, …).
    pub fn proto_name(self) -> &'static str {
        match self {
            Scope::Global => "GLOBAL",
            Scope::Namespace => "NAMESPACE",
            Scope::WorkloadSelector => "WORKLOAD_SELECTOR",
        }
    }

    /// The proto enum's number.
    pub fn number(self) -> i32 {
        match self {
            Scope::Global => 0,
            Scope::Namespace => 1,
            Scope::WorkloadSelector => 2,
        }
    }

    /// The scope of a proto enum number, if it is one.
    pub fn from_number(n: i32) -> Option<Scope> {
        [Scope::Global, Scope::Namespace, Scope::WorkloadSelector]
            .into_iter()
            .find(|s| s.number() == n)
    }
}

/// What a matching policy does. ztunnel knows no AUDIT or CUSTOM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// Accept the connection when one of the policy's rules matches.
    Allow,
    /// Refuse the connection when one of the policy's rules matches; checked before any ALLOW.
    Deny,
}

impl Action {
    /// The proto enum's name (`ALLOW` or `DENY`).
    pub fn proto_name(self) -> &'static str {
        match self {
            Action::Allow => "ALLOW",
            Action::Deny => "DENY",
        }
    }

    /// The proto enum's number.
    pub fn number(self) -> i32 {
        match self {
            Action::Allow => 0,
            Action::Deny => 1,
        }
    }

    /// The action of a proto enum number, if ztunnel knows it.
    pub fn from_number(n: i32) -> Option<Action> {
        [Action::Allow, Action::Deny]
            .into_iter()
            .find(|a| a.number() == n)
    }
}

/// One translated policy. Its xDS resource name is [`Authorization::key`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Authorization {
    /// The policy's name; the second half of its key.
    pub name: String,
    /// The namespace the policy lives in; NAMESPACE scope applies it there.
    pub namespace: String,
    /// Which workloads the policy applies to.
    pub scope: Scope,
    /// Whether a matching rule accepts or refuses the connection.
    pub action: Action,
    /// ORed; a policy without rules matches nothing.
    pub rules: Vec<Rule>,
    /// Logged, never enforced.
    pub dry_run: bool,
}

impl Authorization {
    /// `namespace/name`: the xDS resource name and the string workloads list.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Clauses that must all hold (istiod: a `Group` of `Rules`). No clauses = always.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Rule {
    /// ANDed: the rule matches only when every clause holds.
    pub clauses: Vec<Clause>,
}

/// Matches of which one must hold (istiod: `Rules.matches`). Empty matches
/// never hold; a clause with no matches at all always holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Clause {
    /// ORed: the clause holds when one non-empty match holds.
    pub matches: Vec<Match>,
}

/// Conditions on one connection; every populated field must hold. A
/// positive list needs one hit, a negative list must have none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Match {
    /// Source namespaces (taken from the peer identity), one of which must match.
    pub namespaces: Vec<StringMatch>,
    /// Source namespaces none of which may match.
    pub not_namespaces: Vec<StringMatch>,
    /// Peer identities (without `spiffe://`), one of which must match; plaintext matches none.
    pub principals: Vec<StringMatch>,
    /// Peer identities none of which may match; always holds for plaintext.
    pub not_principals: Vec<StringMatch>,
    /// Networks, one of which must contain the source address.
    pub source_ips: Vec<IpNet>,
    /// Networks none of which may contain the source address.
    pub not_source_ips: Vec<IpNet>,
    /// Networks, one of which must contain the destination address.
    pub destination_ips: Vec<IpNet>,
    /// Networks none of which may contain the destination address.
    pub not_destination_ips: Vec<IpNet>,
    /// Destination ports, one of which must be the connection's (u32 on the wire, compared as u16).
    pub destination_ports: Vec<u32>,
    /// Destination ports none of which may be the connection's.
    pub not_destination_ports: Vec<u32>,
    /// Source service accounts (from the peer identity), one of which must match.
    pub service_accounts: Vec<ServiceAccountMatch>,
    /// Source service accounts none of which may match.
    pub not_service_accounts: Vec<ServiceAccountMatch>,
}

impl Match {
    /// A match with no field set: ztunnel skips it.
    pub fn is_empty(&self) -> bool {
        *self == Match::default()
    }

    /// `notPrincipals: [presence]`: any connection without a peer identity.
    pub fn without_identity() -> Match {
        Match {
            not_principals: vec![StringMatch::Presence],
            ..Match::default()
        }
    }
}

/// How a string field is compared.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum StringMatch {
    /// The whole value equals the string.
    Exact(String),
    /// The value starts with the string (pattern `x*`).
    Prefix(String),
    /// The value ends with the string (pattern `*x`).
    Suffix(String),
    /// Any non-empty value.
    Presence,
}

impl StringMatch {
    /// Istio's pattern syntax: `*` → presence, `*x` → suffix, `x*` → prefix,
    /// anything else exact.
    pub fn from_pattern(pattern: &str) -> StringMatch {
        if pattern == "*" {
            StringMatch::Presence
        } else if let Some(suffix) = pattern.strip_prefix('*') {
            StringMatch::Suffix(suffix.to_string())
        } else if let Some(prefix) = pattern.strip_suffix('*') {
            StringMatch::Prefix(prefix.to_string())
        } else {
            StringMatch::Exact(pattern.to_string())
        }
    }

    /// Whether `value` passes this comparison.
    pub fn matches(&self, value: &str) -> bool {
        match self {
            StringMatch::Exact(x) => value == x,
            StringMatch::Prefix(x) => value.starts_with(x.as_str()),
            StringMatch::Suffix(x) => value.ends_with(x.as_str()),
            StringMatch::Presence => !value.is_empty(),
        }
    }
}

/// A service account, trust domain left out.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServiceAccountMatch {
    /// The namespace the service account belongs to.
    pub namespace: String,
    /// The service account's name within that namespace.
    pub service_account: String,
}
