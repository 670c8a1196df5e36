//! AuthorizationPolicy → `Authorization`, as istiod translates it for ztunnel.
//!
//! - `targetRef(s)` policies belong to waypoints: nothing is sent.
//! - AUDIT and CUSTOM: nothing is sent (ztunnel has neither).
//! - `istio.io/dry-run: "true"`: nothing is sent, because istiod's support
//!   for ambient dry-run is off by default.
//! - Scope: a selector → WORKLOAD_SELECTOR; none → NAMESPACE, or GLOBAL in
//!   the root namespace.
//! - Each rule becomes one [`Rule`] whose clauses are, in this order: one
//!   for all `to` entries, one for all `from` entries, one per `when`
//!   condition. Only L4 attributes carry over (ports, IP blocks,
//!   namespaces, principals, service accounts, and the `when` keys
//!   `source.ip`, `source.namespace`, `source.principal`, `destination.ip`,
//!   `destination.port`); an entry with only L7 content becomes an empty
//!   match, which ztunnel skips.
//! - In an ALLOW policy a rule with any L7 attribute is dropped whole
//!   (failing closed: it can only allow less). In a DENY policy the L7
//!   attributes are dropped and the rest kept, so the DENY covers more.
//! - Ports that are not numbers up to 65535 and IPs that do not parse are
//!   skipped, as istiod skips them.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;

use super::{Action, Authorization, Clause, Match, Rule, Scope, ServiceAccountMatch, StringMatch};
use crate::istio_crd::{self as crd, AuthorizationPolicy, Condition};

/// The annotation that asks for a dry run.
pub const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";

/// `when` keys that ztunnel can decide at L4.
pub const L4_CONDITION_KEYS: [&str; 5] = [
    "source.ip",
    "source.namespace",
    "source.principal",
    "destination.ip",
    "destination.port",
];

/// What istiod makes of one AuthorizationPolicy.
#[derive(Debug, Clone, PartialEq)]
pub struct Translation {
    /// What is sent to ztunnel; `None` when nothing is.
    pub authorization: Option<Authorization>,
    /// Why nothing is sent, or what was left out (istiod's status message).
    pub note: Option<String>,
}

/// Translates one policy; `root_namespace` decides GLOBAL scope.
pub fn translate_authorization_policy(
    policy: &AuthorizationPolicy,
    root_namespace: &str,
) -> Translation {
    let name = policy.metadata.name.clone().unwrap_or_default();
    let namespace = policy.metadata.namespace.clone().unwrap_or_default();
    let spec = &policy.spec;
    let nothing = |note: Option<String>| Translation {
        authorization: None,
        note,
    };
    let dry_run = policy
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(DRY_RUN_ANNOTATION))
        .is_some_and(|v| parse_go_bool(v));
    if dry_run {
        return nothing(Some(format!(
            "{namespace}/{name} asks for a dry run ({DRY_RUN_ANNOTATION}); istiod sends ambient dry-run policies only with AMBIENT_ENABLE_DRY_RUN_AUTHORIZATION_POLICY=true, so ztunnel never sees it"
        )));
    }
    if spec.target_ref.is_some() || !spec.target_refs.is_empty() {
        return nothing(None);
    }
    let action = match spec.action {
        crd::Action::Allow => Action::Allow,
        crd::Action::Deny => Action::Deny,
        crd::Action::Audit => {
            return nothing(Some("ztunnel does not support the AUDIT action".into()));
        }
        crd::Action::Custom => {
            return nothing(Some("ztunnel does not support the CUSTOM action".into()));
        }
    };
    let scope = match (&spec.selector, namespace == root_namespace) {
        (Some(_), _) => Scope::WorkloadSelector,
        (None, true) => Scope::Global,
        (None, false) => Scope::Namespace,
    };
    let mut l7_found = BTreeSet::new();
    let mut rules = Vec::new();
    for rule in &spec.rules {
        let (translated, l7) = translate_rule(rule, &namespace);
        // An ALLOW rule that needs HTTP is dropped whole; a DENY keeps its L4 part.
        if action == Action::Deny || l7.is_empty() {
            rules.push(translated);
        }
        l7_found.extend(l7);
    }
    let authorization = Authorization {
        name,
        namespace,
        scope,
        action,
        rules,
        dry_run: false,
    };
    let note = (!l7_found.is_empty()).then(|| {
        let found: Vec<&str> = l7_found.iter().map(String::as_str).collect();
        let effect = match action {
            Action::Allow => "in an ALLOW policy, rules with HTTP attributes are left out",
            Action::Deny if !has_effective_rules(&authorization.rules) => {
                "after leaving out the HTTP attributes, this DENY has nothing ztunnel can enforce and has no effect"
            }
            Action::Deny => {
                "the DENY is enforced without its HTTP attributes, so it refuses more than it says"
            }
        };
        format!(
            "ztunnel does not see HTTP attributes (found: {}); {effect}; a waypoint enforces them",
            found.join(", ")
        )
    });
    Translation {
        authorization: Some(authorization),
        note,
    }
}

/// strconv.ParseBool's accepted spellings of true.
fn parse_go_bool(v: &str) -> bool {
    matches!(v, "1" | "t" | "T" | "TRUE" | "true" | "True")
}

/// True when some rule can fire at ztunnel: no clauses, or every clause has
/// a match with something in it.
pub fn has_effective_rules(rules: &[Rule]) -> bool {
    rules.iter().any(|r| {
        r.clauses
            .iter()
            .all(|c| c.matches.iter().any(|m| !m.is_empty()))
    })
}

/// One CRD rule → one rule, and the L7 attributes it named.
fn translate_rule(rule: &crd::Rule, namespace: &str) -> (Rule, Vec<String>) {
    let mut l7 = Vec::new();
    let mut clauses = Vec::new();
    if !rule.to.is_empty() {
        let matches = rule
            .to
            .iter()
            .map(|t| {
                let op = &t.operation;
                l7.extend(present(&[
                    ("hosts", &op.hosts),
                    ("notHosts", &op.not_hosts),
                    ("methods", &op.methods),
                    ("notMethods", &op.not_methods),
                    ("paths", &op.paths),
                    ("notPaths", &op.not_paths),
                ]));
                Match {
                    destination_ports: ports(&op.ports),
                    not_destination_ports: ports(&op.not_ports),
                    ..Match::default()
                }
            })
            .collect();
        clauses.push(Clause { matches });
    }
    if !rule.from.is_empty() {
        let matches = rule
            .from
            .iter()
            .map(|f| {
                let s = &f.source;
                l7.extend(present(&[
                    ("remoteIpBlocks", &s.remote_ip_blocks),
                    ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
                    ("requestPrincipals", &s.request_principals),
                    ("notRequestPrincipals", &s.not_request_principals),
                ]));
                Match {
                    source_ips: ips(&s.ip_blocks),
                    not_source_ips: ips(&s.not_ip_blocks),
                    namespaces: strings(&s.namespaces),
                    not_namespaces: strings(&s.not_namespaces),
                    service_accounts: service_accounts(&s.service_accounts, namespace),
                    not_service_accounts: service_accounts(&s.not_service_accounts, namespace),
                    principals: strings(&s.principals),
                    not_principals: strings(&s.not_principals),
                    ..Match::default()
                }
            })
            .collect();
        clauses.push(Clause { matches });
    }
    for condition in &rule.when {
        if !L4_CONDITION_KEYS.contains(&condition.key.as_str()) {
            l7.push(condition.key.clone());
        }
        clauses.push(Clause {
            matches: vec![condition_match(condition)],
        });
    }
    (Rule { clauses }, l7)
}

/// The names of the fields that are set.
fn present(fields: &[(&str, &Vec<String>)]) -> Vec<String> {
    fields
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(n, _)| n.to_string())
        .collect()
}

fn condition_match(c: &Condition) -> Match {
    let (pos, neg) = (&c.values, &c.not_values);
    let mut m = Match::default();
    match c.key.as_str() {
        "source.ip" => (m.source_ips, m.not_source_ips) = (ips(pos), ips(neg)),
        "source.namespace" => (m.namespaces, m.not_namespaces) = (strings(pos), strings(neg)),
        "source.principal" => (m.principals, m.not_principals) = (strings(pos), strings(neg)),
        "destination.ip" => (m.destination_ips, m.not_destination_ips) = (ips(pos), ips(neg)),
        "destination.port" => {
            (m.destination_ports, m.not_destination_ports) = (ports(pos), ports(neg))
        }
        _ => {}
    }
    m
}

fn strings(patterns: &[String]) -> Vec<StringMatch> {
    patterns
        .iter()
        .map(|p| StringMatch::from_pattern(p))
        .collect()
}

/// `ns/sa`, or a bare `sa` in the policy's namespace.
fn service_accounts(values: &[String], namespace: &str) -> Vec<ServiceAccountMatch> {
    values
        .iter()
        .map(|v| match v.split_once('/') {
            Some((ns, sa)) => ServiceAccountMatch {
                namespace: ns.to_string(),
                service_account: sa.to_string(),
            },
            None => ServiceAccountMatch {
                namespace: namespace.to_string(),
                service_account: v.clone(),
            },
        })
        .collect()
}

/// Decimal port numbers up to 65535; anything else is skipped.
fn ports(values: &[String]) -> Vec<u32> {
    values
        .iter()
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|v| v.parse::<u32>().ok())
        .filter(|p| *p <= 65535)
        .collect()
}

/// An address keeps its full length; a CIDR its prefix (host bits kept, as
/// istiod sends them); anything unparsable is skipped.
fn ips(values: &[String]) -> Vec<IpNet> {
    values
        .iter()
        .filter(|v| !v.is_empty())
        .filter_map(|v| {
            if v.contains('/') {
                v.parse::<IpNet>().ok()
            } else {
                v.parse::<IpAddr>().ok().map(IpNet::from)
            }
        })
        .collect()
}
