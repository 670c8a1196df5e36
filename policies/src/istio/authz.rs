//! Istio's L4 authorization as ztunnel enforces it on the receiving side.
//!
//! The order of evaluation:
//! 1. PeerAuthentication: under STRICT, a connection without a peer identity
//!    (plaintext) is refused before any AuthorizationPolicy is looked at.
//! 2. Any matching DENY policy refuses.
//! 3. With no ALLOW policy selecting the workload, the connection is allowed.
//! 4. Otherwise some ALLOW policy must match; if none does, it is refused.
//!
//! A policy matches if any of its rules matches; a rule needs all of its
//! `from`, `to` and `when` parts; a part needs any one of its entries; in an
//! entry every listed field needs a positive hit and no negative (`not…`)
//! hit. A policy with no rules never matches (an ALLOW with no rules still
//! switches the workload into default deny). ztunnel sees no HTTP, so a rule
//! that needs L7 attributes (methods, paths, hosts, request principals,
//! remote IP blocks, L7 `when` keys) never matches in an ALLOW policy and
//! always matches in a DENY policy — failing closed both ways.
//! Policies that attach with `targetRef(s)` belong to waypoints, and CUSTOM
//! (external authorization) needs a waypoint too: ztunnel skips both.

use std::collections::BTreeMap;
use std::net::IpAddr;

pub use crate::decision::Decision;
use ipnet::IpNet;

use super::types::{
    Action, AuthorizationPolicy, Condition, MtlsMode, Operation, PeerAuthentication, Rule, Source,
};

/// The workload a connection arrives at.
#[derive(Debug, Clone)]
pub struct TargetWorkload<'a> {
    pub namespace: &'a str,
    pub labels: &'a BTreeMap<String, String>,
}

/// What the receiving side knows of a connection.
#[derive(Debug, Clone)]
pub struct ConnectionAttrs<'a> {
    /// The peer's principal without `spiffe://` (`cluster.local/ns/demo/sa/x`);
    /// `None` for plaintext.
    pub principal: Option<&'a str>,
    pub src_ip: IpAddr,
    pub dst_ip: IpAddr,
    pub dst_port: u16,
}

impl ConnectionAttrs<'_> {
    /// ztunnel derives the source namespace from the identity.
    fn namespace(&self) -> Option<&str> {
        self.principal
            .and_then(|p| principal_parts(p).map(|(ns, _)| ns))
    }

    fn service_account(&self) -> Option<String> {
        self.principal
            .and_then(principal_parts)
            .map(|(ns, sa)| format!("{ns}/{sa}"))
    }
}

/// `td/ns/<ns>/sa/<sa>` → (ns, sa)
fn principal_parts(principal: &str) -> Option<(&str, &str)> {
    let segments: Vec<&str> = principal.split('/').collect();
    match segments.as_slice() {
        [_, "ns", ns, "sa", sa] => Some((ns, sa)),
        _ => None,
    }
}

/// The effective PeerAuthentication mode for one workload port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MtlsDecision {
    /// STRICT or PERMISSIVE (DISABLE is ignored by ztunnel and so reads as PERMISSIVE).
    pub mode: MtlsMode,
    pub policy: Option<String>,
}

/// The Istio policies of a mesh, ready to evaluate.
#[derive(Debug, Clone, Default)]
pub struct IstioPolicies {
    /// Policies here without a selector apply mesh-wide (Istio's default: `istio-system`).
    pub root_namespace: String,
    pub authorization: Vec<AuthorizationPolicy>,
    pub peer_authentication: Vec<PeerAuthentication>,
}

fn full_name(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or("default"),
        meta.name.as_deref().unwrap_or("<unnamed>")
    )
}

fn labels_match(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

impl IstioPolicies {
    pub fn new(root_namespace: impl Into<String>) -> Self {
        IstioPolicies {
            root_namespace: root_namespace.into(),
            ..Default::default()
        }
    }

    fn applies(
        &self,
        meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
        selector: Option<&BTreeMap<String, String>>,
        target: &TargetWorkload<'_>,
    ) -> bool {
        let ns = meta.namespace.as_deref().unwrap_or("default");
        if ns != target.namespace && ns != self.root_namespace {
            return false;
        }
        selector.is_none_or(|s| labels_match(s, target.labels))
    }

    /// AuthorizationPolicies that ztunnel would enforce for `target`.
    pub fn selecting<'p>(
        &'p self,
        target: &TargetWorkload<'_>,
    ) -> impl Iterator<Item = &'p AuthorizationPolicy> {
        self.authorization.iter().filter(move |p| {
            let spec = &p.spec;
            spec.target_ref.is_none()
                && spec.target_refs.is_empty()
                && !matches!(spec.action, Action::Custom | Action::Audit)
                && self.applies(
                    &p.metadata,
                    spec.selector.as_ref().map(|s| &s.match_labels),
                    target,
                )
        })
    }

    /// The PeerAuthentication mode for `target` on `port`: the workload-level
    /// policy (with its port-level override) wins over the namespace policy,
    /// which wins over the mesh-wide one; UNSET inherits; the default is PERMISSIVE.
    pub fn mtls_mode(&self, target: &TargetWorkload<'_>, port: u16) -> MtlsDecision {
        let mut workload = None;
        let mut namespace = None;
        let mut mesh = None;
        for pa in &self.peer_authentication {
            let ns = pa.metadata.namespace.as_deref().unwrap_or("default");
            match &pa.spec.selector {
                Some(sel)
                    if ns == target.namespace && labels_match(&sel.match_labels, target.labels) =>
                {
                    workload.get_or_insert(pa);
                }
                None if ns == target.namespace => {
                    namespace.get_or_insert(pa);
                }
                None if ns == self.root_namespace => {
                    mesh.get_or_insert(pa);
                }
                _ => {}
            }
        }
        for pa in [workload, namespace, mesh].into_iter().flatten() {
            let port_mode = pa
                .spec
                .port_level_mtls
                .get(&u32::from(port))
                .map(|m| m.mode)
                .filter(|_| pa.spec.selector.is_some());
            let mode = port_mode
                .filter(|m| *m != MtlsMode::Unset)
                .or_else(|| pa.spec.mtls.as_ref().map(|m| m.mode))
                .unwrap_or(MtlsMode::Unset);
            match mode {
                MtlsMode::Unset => continue,
                MtlsMode::Strict => {
                    return MtlsDecision {
                        mode: MtlsMode::Strict,
                        policy: Some(full_name(&pa.metadata)),
                    };
                }
                MtlsMode::Permissive | MtlsMode::Disable => {
                    return MtlsDecision {
                        mode: MtlsMode::Permissive,
                        policy: Some(full_name(&pa.metadata)),
                    };
                }
            }
        }
        MtlsDecision {
            mode: MtlsMode::Permissive,
            policy: None,
        }
    }

    /// The full receiving-side decision for one connection.
    pub fn evaluate(&self, target: &TargetWorkload<'_>, conn: &ConnectionAttrs<'_>) -> Decision {
        let mtls = self.mtls_mode(target, conn.dst_port);
        if mtls.mode == MtlsMode::Strict && conn.principal.is_none() {
            let name = mtls.policy.clone().unwrap_or_default();
            return Decision::deny(format!(
                "PeerAuthentication {name} is STRICT: a connection without a peer identity (plaintext) is refused"
            ))
            .by(name, Some("mtls STRICT".into()));
        }
        let policies: Vec<&AuthorizationPolicy> = self.selecting(target).collect();
        for p in policies.iter().filter(|p| p.spec.action == Action::Deny) {
            if let Some(i) = matching_rule(&p.spec.rules, Action::Deny, conn) {
                let name = full_name(&p.metadata);
                return Decision::deny(format!("DENY policy {name} rules[{i}] matches"))
                    .by(name, Some(format!("rules[{i}]")));
            }
        }
        let allows: Vec<&&AuthorizationPolicy> = policies
            .iter()
            .filter(|p| p.spec.action == Action::Allow)
            .collect();
        if allows.is_empty() {
            return Decision::allow(
                "no ALLOW policy selects this workload, so it is open by default",
            );
        }
        for p in &allows {
            if let Some(i) = matching_rule(&p.spec.rules, Action::Allow, conn) {
                let name = full_name(&p.metadata);
                return Decision::allow(format!("ALLOW policy {name} rules[{i}] matches"))
                    .by(name, Some(format!("rules[{i}]")));
            }
        }
        let names: Vec<String> = allows.iter().map(|p| full_name(&p.metadata)).collect();
        let who = conn.principal.unwrap_or("a peer without identity");
        Decision::deny(format!(
            "no rule of ALLOW policy {} matches {who} on port {}",
            names.join(", "),
            conn.dst_port
        ))
        .by(names[0].clone(), None)
    }
}

fn matching_rule(rules: &[Rule], action: Action, conn: &ConnectionAttrs<'_>) -> Option<usize> {
    rules.iter().position(|rule| {
        if needs_l7(rule) {
            return action == Action::Deny;
        }
        (rule.from.is_empty() || rule.from.iter().any(|f| source_matches(&f.source, conn)))
            && (rule.to.is_empty()
                || rule
                    .to
                    .iter()
                    .any(|t| operation_matches(&t.operation, conn)))
            && rule.when.iter().all(|c| condition_matches(c, conn))
    })
}

/// `when` keys ztunnel can decide at L4.
pub const L4_CONDITION_KEYS: &[&str] = &[
    "source.ip",
    "source.namespace",
    "source.principal",
    "destination.ip",
    "destination.port",
];

/// True when the rule needs HTTP attributes that ztunnel cannot see.
pub fn needs_l7(rule: &Rule) -> bool {
    let source_l7 = rule.from.iter().any(|f| {
        let s = &f.source;
        !(s.request_principals.is_empty()
            && s.not_request_principals.is_empty()
            && s.remote_ip_blocks.is_empty()
            && s.not_remote_ip_blocks.is_empty())
    });
    let operation_l7 = rule.to.iter().any(|t| {
        let o = &t.operation;
        !(o.hosts.is_empty()
            && o.not_hosts.is_empty()
            && o.methods.is_empty()
            && o.not_methods.is_empty()
            && o.paths.is_empty()
            && o.not_paths.is_empty())
    });
    let when_l7 = rule
        .when
        .iter()
        .any(|c| !L4_CONDITION_KEYS.contains(&c.key.as_str()));
    source_l7 || operation_l7 || when_l7
}

/// Istio string matching: exact, `*` (anything present), `prefix*`, `*suffix`.
pub fn string_matches(pattern: &str, value: &str) -> bool {
    let pattern = pattern.strip_prefix("spiffe://").unwrap_or(pattern);
    if pattern == "*" {
        return true;
    }
    if let Some(prefix) = pattern.strip_suffix('*') {
        return value.starts_with(prefix);
    }
    if let Some(suffix) = pattern.strip_prefix('*') {
        return value.ends_with(suffix);
    }
    pattern == value
}

fn any_string(patterns: &[String], value: Option<&str>) -> bool {
    value.is_some_and(|v| patterns.iter().any(|p| string_matches(p, v)))
}

/// Parses an IP block: a CIDR or a single address.
pub fn parse_ip_block(block: &str) -> Option<IpNet> {
    block
        .parse::<IpNet>()
        .ok()
        .or_else(|| block.parse::<IpAddr>().ok().map(IpNet::from))
}

fn any_block(blocks: &[String], ip: IpAddr) -> bool {
    blocks
        .iter()
        .filter_map(|b| parse_ip_block(b))
        .any(|net| net.contains(&ip))
}

/// A field's verdict: listed positives must hit, listed negatives must not.
fn field(positive: &[String], negative: &[String], hit: impl Fn(&[String]) -> bool) -> bool {
    (positive.is_empty() || hit(positive)) && (negative.is_empty() || !hit(negative))
}

fn source_matches(s: &Source, conn: &ConnectionAttrs<'_>) -> bool {
    let sa = conn.service_account();
    field(&s.principals, &s.not_principals, |p| {
        any_string(p, conn.principal)
    }) && field(&s.namespaces, &s.not_namespaces, |p| {
        any_string(p, conn.namespace())
    }) && field(&s.service_accounts, &s.not_service_accounts, |p| {
        sa.as_deref().is_some_and(|sa| {
            p.iter().any(|want| match want.contains('/') {
                true => want == sa,
                false => sa.ends_with(&format!("/{want}")),
            })
        })
    }) && field(&s.ip_blocks, &s.not_ip_blocks, |b| {
        any_block(b, conn.src_ip)
    })
}

fn operation_matches(o: &Operation, conn: &ConnectionAttrs<'_>) -> bool {
    let port = conn.dst_port.to_string();
    field(&o.ports, &o.not_ports, |p| p.contains(&port))
}

fn condition_matches(c: &Condition, conn: &ConnectionAttrs<'_>) -> bool {
    let hit = |values: &[String]| -> bool {
        match c.key.as_str() {
            "source.ip" => any_block(values, conn.src_ip),
            "destination.ip" => any_block(values, conn.dst_ip),
            "destination.port" => values.iter().any(|v| *v == conn.dst_port.to_string()),
            "source.namespace" => any_string(values, conn.namespace()),
            "source.principal" => any_string(values, conn.principal),
            _ => false,
        }
    };
    field(&c.values, &c.not_values, hit)
}
