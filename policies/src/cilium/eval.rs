//! Cilium's L3/L4 verdict for one flow, in one direction, as its datapath
//! decides it.
//!
//! For an endpoint and a direction:
//! 1. The rules that select the endpoint are gathered: a CiliumNetworkPolicy
//!    only selects endpoints of its own namespace, a clusterwide one any.
//! 2. A matching deny rule (`ingressDeny`/`egressDeny`) refuses, whatever
//!    else allows.
//! 3. If no selecting rule has a section for this direction (or every such
//!    rule says `enableDefaultDeny: false`), the direction is not enforced:
//!    everything passes. Otherwise a matching allow rule is needed.
//!
//! A rule matches when its peer part (endpoints, entities, CIDRs, FQDNs)
//! and its port part (`toPorts`) both do. A rule with ports but no peer part
//! matches every peer; a rule with neither (`{}`) matches nothing and only
//! switches default deny on. Endpoint selectors in a namespaced policy
//! implicitly add the policy's namespace unless they name
//! `io.kubernetes.pod.namespace`. CIDR rules only ever match peers outside
//! the cluster. `toFQDNs` only works when a DNS rule (`toPorts[].rules.dns`)
//! lets Cilium's DNS proxy see the answers; without one it matches nothing.
//! `serverNames` is checked by Cilium's Envoy on the TLS ClientHello: a
//! flow without the right SNI does not match.
//!
//! Fields without an L3/L4 meaning here (`toServices`, `toGroups`,
//! `toNodes`, `to/fromRequires`, `authentication`) never match, and
//! [`CiliumPolicies::warnings`] says so rather than guessing.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use super::types::{
    CiliumClusterwideNetworkPolicy, CiliumNetworkPolicy, EgressRule, EndpointSelector, Entity,
    FqdnSelector, IngressRule, L4Protocol, LabelOperator, PolicyRule, PortRule,
};
use crate::decision::Decision;
use crate::topology::LabWorkload;

/// The label that carries a pod's namespace in Cilium's identities.
pub const NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";
/// The label that carries a pod's service account.
pub const SERVICE_ACCOUNT_LABEL: &str = "io.cilium.k8s.policy.serviceaccount";

/// A pod as Cilium knows it.
#[derive(Debug, Clone)]
pub struct EndpointInfo<'a> {
    /// The pod's namespace, seen by selectors as `io.kubernetes.pod.namespace`.
    pub namespace: &'a str,
    /// The pod's own labels, matched by endpoint selectors.
    pub labels: &'a BTreeMap<String, String>,
    /// The pod's service account, seen by selectors as `io.cilium.k8s.policy.serviceaccount`.
    pub service_account: &'a str,
    /// Named container ports, for `port: http`-style rules.
    pub named_ports: &'a BTreeMap<String, u16>,
}

impl EndpointInfo<'_> {
    fn label(&self, key: &str) -> Option<&str> {
        let key = key
            .strip_prefix("k8s:")
            .or_else(|| key.strip_prefix("any:"))
            .unwrap_or(key);
        match key {
            NAMESPACE_LABEL => Some(self.namespace),
            SERVICE_ACCOUNT_LABEL => Some(self.service_account),
            _ => self.labels.get(key).map(String::as_str),
        }
    }
}

impl<'a> From<&'a LabWorkload> for EndpointInfo<'a> {
    fn from(w: &'a LabWorkload) -> Self {
        EndpointInfo {
            namespace: &w.namespace,
            labels: &w.labels,
            service_account: &w.service_account,
            named_ports: &w.named_ports,
        }
    }
}

/// The other side of a flow.
#[derive(Debug, Clone)]
pub enum Peer<'a> {
    /// A pod of the cluster, matched by endpoint selectors.
    Endpoint(EndpointInfo<'a>),
    /// Outside the cluster, with the DNS name the client used, if any.
    World {
        /// Its address, for CIDR rules; `None` when not known.
        ip: Option<IpAddr>,
        /// The DNS name the client looked up, for `toFQDNs` rules.
        name: Option<&'a str>,
    },
    /// The local node (entity `host`).
    Host,
    /// Another node of the cluster (entity `remote-node`).
    RemoteNode,
    /// The Kubernetes API server (entity `kube-apiserver`).
    KubeApiserver,
}

/// What Cilium sees of a flow: the destination port and protocol, and the
/// TLS SNI when the client sends one.
#[derive(Debug, Clone, Copy)]
pub struct Flow<'a> {
    /// Destination port as Cilium sees it on the wire.
    pub port: u16,
    /// Transport protocol of the flow, matched against `toPorts[].ports[].protocol`.
    pub protocol: L4Protocol,
    /// The SNI of the TLS ClientHello, for `serverNames`; `None` without TLS or SNI.
    pub sni: Option<&'a str>,
}

/// One loaded policy: its display name, scope and rule.
#[derive(Debug, Clone)]
pub struct PolicyEntry {
    /// `cnp demo/allow-dns` or `ccnp allow-ambient-hostprobes`.
    pub name: String,
    /// `None` for clusterwide policies.
    pub namespace: Option<String>,
    /// The policy's spec: whom it selects and its rules per direction.
    pub rule: PolicyRule,
}

/// The Cilium policies of a cluster, ready to evaluate.
#[derive(Debug, Clone, Default)]
pub struct CiliumPolicies {
    /// Every policy: namespaced ones first, then clusterwide ones, each in the order given.
    pub entries: Vec<PolicyEntry>,
}

/// Which way a flow crosses the selected endpoint, and so which rule sections decide it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Traffic arriving at the endpoint (`ingress`, `ingressDeny`).
    Ingress,
    /// Traffic leaving the endpoint (`egress`, `egressDeny`).
    Egress,
}

impl Direction {
    /// Lower-case name (`ingress` or `egress`), for messages.
    pub fn name(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

/// A direction-neutral view of an ingress or egress rule.
pub(crate) struct PeerRule<'r> {
    pub(crate) endpoints: &'r [EndpointSelector],
    pub(crate) entities: &'r [Entity],
    pub(crate) cidrs: Vec<(&'r str, &'r [String])>,
    pub(crate) fqdns: &'r [FqdnSelector],
    pub(crate) unevaluated: bool,
    pub(crate) icmps: bool,
    pub(crate) ports: &'r [PortRule],
}

impl<'r> From<&'r IngressRule> for PeerRule<'r> {
    fn from(r: &'r IngressRule) -> Self {
        PeerRule {
            endpoints: &r.from_endpoints,
            entities: &r.from_entities,
            cidrs: cidrs(&r.from_cidr, &r.from_cidr_set),
            fqdns: &[],
            unevaluated: !(r.from_requires.is_empty()
                && r.from_nodes.is_empty()
                && r.from_groups.is_empty()
                && r.from_cidr_set.iter().all(|c| c.cidr.is_some())),
            icmps: !r.icmps.is_empty(),
            ports: &r.to_ports,
        }
    }
}

impl<'r> From<&'r EgressRule> for PeerRule<'r> {
    fn from(r: &'r EgressRule) -> Self {
        PeerRule {
            endpoints: &r.to_endpoints,
            entities: &r.to_entities,
            cidrs: cidrs(&r.to_cidr, &r.to_cidr_set),
            fqdns: &r.to_fqdns,
            unevaluated: !(r.to_requires.is_empty()
                && r.to_nodes.is_empty()
                && r.to_groups.is_empty()
                && r.to_services.is_empty()
                && r.to_cidr_set.iter().all(|c| c.cidr.is_some())),
            icmps: !r.icmps.is_empty(),
            ports: &r.to_ports,
        }
    }
}

fn cidrs<'r>(
    plain: &'r [String],
    sets: &'r [super::types::CidrRule],
) -> Vec<(&'r str, &'r [String])> {
    plain
        .iter()
        .map(|c| (c.as_str(), &[][..]))
        .chain(
            sets.iter()
                .filter_map(|s| s.cidr.as_deref().map(|c| (c, s.except.as_slice()))),
        )
        .collect()
}

impl PeerRule<'_> {
    pub(crate) fn has_peer_part(&self) -> bool {
        !(self.endpoints.is_empty()
            && self.entities.is_empty()
            && self.cidrs.is_empty()
            && self.fqdns.is_empty())
            || self.unevaluated
    }
}

/// What a matching rule had to say about the flow.
struct RuleMatch {
    detail: Vec<String>,
}

/// Facts about the source that some rules need.
struct Context<'a> {
    policy_namespace: Option<&'a str>,
    /// Whether Cilium's DNS proxy sees the source's lookups (needed by toFQDNs).
    dns_visible: bool,
}

impl CiliumPolicies {
    /// Collects both kinds; a namespaced policy lacking a namespace is put in `default`.
    pub fn new(
        namespaced: impl IntoIterator<Item = CiliumNetworkPolicy>,
        clusterwide: impl IntoIterator<Item = CiliumClusterwideNetworkPolicy>,
    ) -> Self {
        let mut entries = Vec::new();
        for p in namespaced {
            let ns = p
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into());
            entries.push(PolicyEntry {
                name: format!("cnp {ns}/{}", p.metadata.name.as_deref().unwrap_or("?")),
                namespace: Some(ns),
                rule: p.spec,
            });
        }
        for p in clusterwide {
            entries.push(PolicyEntry {
                name: format!("ccnp {}", p.metadata.name.as_deref().unwrap_or("?")),
                namespace: None,
                rule: p.spec.0,
            });
        }
        CiliumPolicies { entries }
    }

    /// What this evaluator cannot decide and therefore treats as "no match".
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for e in &self.entries {
            let rules = e
                .rule
                .ingress
                .iter()
                .chain(&e.rule.ingress_deny)
                .map(PeerRule::from)
                .chain(
                    e.rule
                        .egress
                        .iter()
                        .chain(&e.rule.egress_deny)
                        .map(PeerRule::from),
                );
            if rules.into_iter().any(|r| r.unevaluated) {
                out.push(format!(
                    "{}: uses services, groups, nodes, requires or CIDR groups, which this lab does not evaluate (treated as matching nothing)",
                    e.name
                ));
            }
            if e.rule.node_selector.is_some() {
                out.push(format!(
                    "{}: a nodeSelector policy governs hosts, not pods (not evaluated)",
                    e.name
                ));
            }
        }
        out
    }

    pub(crate) fn selecting<'p>(
        &'p self,
        ep: &'p EndpointInfo<'_>,
    ) -> impl Iterator<Item = &'p PolicyEntry> {
        self.entries.iter().filter(move |e| {
            let in_scope = e.namespace.as_deref().is_none_or(|ns| ns == ep.namespace);
            in_scope
                && e.rule
                    .endpoint_selector
                    .as_ref()
                    .is_some_and(|s| selector_matches(s, ep))
        })
    }

    /// May `src` send this flow to `dst`? (Decided at the source.)
    pub fn egress(&self, src: &EndpointInfo<'_>, dst: &Peer<'_>, flow: &Flow<'_>) -> Decision {
        let dns_visible = self.dns_visible(src);
        self.decide(Direction::Egress, src, dst, flow, dns_visible)
    }

    /// May `dst` receive this flow from `src`? (Decided at the destination.)
    pub fn ingress(&self, dst: &EndpointInfo<'_>, src: &Peer<'_>, flow: &Flow<'_>) -> Decision {
        self.decide(Direction::Ingress, dst, src, flow, false)
    }

    /// Whether Cilium's DNS proxy sees `src`'s lookups (what toFQDNs needs).
    pub fn dns_visible(&self, src: &EndpointInfo<'_>) -> bool {
        self.selecting(src).any(|e| {
            e.rule.egress.iter().any(|r| {
                r.to_ports
                    .iter()
                    .any(|p| p.rules.as_ref().is_some_and(|l7| !l7.dns.is_empty()))
            })
        })
    }

    pub(crate) fn rules_of(
        entry: &PolicyEntry,
        direction: Direction,
        deny: bool,
    ) -> Vec<(String, PeerRule<'_>)> {
        let r = &entry.rule;
        let (section, list): (&str, Vec<PeerRule<'_>>) = match (direction, deny) {
            (Direction::Ingress, false) => ("ingress", r.ingress.iter().map(Into::into).collect()),
            (Direction::Ingress, true) => (
                "ingressDeny",
                r.ingress_deny.iter().map(Into::into).collect(),
            ),
            (Direction::Egress, false) => ("egress", r.egress.iter().map(Into::into).collect()),
            (Direction::Egress, true) => {
                ("egressDeny", r.egress_deny.iter().map(Into::into).collect())
            }
        };
        list.into_iter()
            .enumerate()
            .map(|(i, rule)| (format!("{section}[{i}]"), rule))
            .collect()
    }

    /// Does this policy put the endpoints it selects into default deny for `direction`?
    pub fn enforces(entry: &PolicyEntry, direction: Direction) -> bool {
        let r = &entry.rule;
        let (has_section, switch) = match direction {
            Direction::Ingress => (
                !(r.ingress.is_empty() && r.ingress_deny.is_empty()),
                r.enable_default_deny.as_ref().and_then(|d| d.ingress),
            ),
            Direction::Egress => (
                !(r.egress.is_empty() && r.egress_deny.is_empty()),
                r.enable_default_deny.as_ref().and_then(|d| d.egress),
            ),
        };
        has_section && switch != Some(false)
    }

    fn decide(
        &self,
        direction: Direction,
        ep: &EndpointInfo<'_>,
        peer: &Peer<'_>,
        flow: &Flow<'_>,
        dns_visible: bool,
    ) -> Decision {
        let selecting: Vec<&PolicyEntry> = self.selecting(ep).collect();
        let dir = direction.name();
        let mut hints = Vec::new();
        for deny in [true, false] {
            for entry in &selecting {
                let ctx = Context {
                    policy_namespace: entry.namespace.as_deref(),
                    dns_visible,
                };
                for (rule_name, rule) in Self::rules_of(entry, direction, deny) {
                    let Some(m) = rule_matches(&rule, peer, flow, &ctx, &mut hints) else {
                        continue;
                    };
                    let detail = match m.detail.is_empty() {
                        true => String::new(),
                        false => format!(" ({})", m.detail.join("; ")),
                    };
                    let decision = match deny {
                        true => Decision::deny(format!(
                            "{dir}: denied by {} {rule_name}{detail}",
                            entry.name
                        )),
                        false => Decision::allow(format!(
                            "{dir}: allowed by {} {rule_name}{detail}",
                            entry.name
                        )),
                    };
                    return decision.by(entry.name.clone(), Some(rule_name));
                }
            }
        }
        let enforcing: Vec<&str> = selecting
            .iter()
            .filter(|e| Self::enforces(e, direction))
            .map(|e| e.name.as_str())
            .collect();
        let Some(first) = enforcing.first() else {
            return Decision::allow(format!(
                "{dir}: not enforced (no policy puts this endpoint into {dir} default deny)"
            ));
        };
        hints.sort();
        hints.dedup();
        let hint = match hints.is_empty() {
            true => String::new(),
            false => format!("; note: {}", hints.join("; ")),
        };
        let switched_on_by = match enforcing.len() {
            1 => first.to_string(),
            n => format!("{first} and {} more", n - 1),
        };
        Decision::deny(format!(
            "{dir}: default deny (switched on by {switched_on_by}); no {dir} rule allows {} on {}/{}{hint}",
            describe_peer(peer),
            flow.port,
            protocol_name(flow.protocol),
        ))
        .by(first.to_string(), None)
    }
}

fn protocol_name(p: L4Protocol) -> &'static str {
    match p {
        L4Protocol::Tcp => "TCP",
        L4Protocol::Udp => "UDP",
        L4Protocol::Sctp => "SCTP",
        L4Protocol::Any => "ANY",
    }
}

fn describe_peer(peer: &Peer<'_>) -> String {
    match peer {
        Peer::Endpoint(ep) => {
            let app = ep
                .labels
                .get("app")
                .map(|a| format!("app={a}"))
                .unwrap_or_else(|| format!("sa={}", ep.service_account));
            format!("endpoint {}/{app}", ep.namespace)
        }
        Peer::World { name: Some(n), .. } => format!("world ({n})"),
        Peer::World { ip: Some(ip), .. } => format!("world ({ip})"),
        Peer::World { .. } => "world".into(),
        Peer::Host => "host".into(),
        Peer::RemoteNode => "remote-node".into(),
        Peer::KubeApiserver => "kube-apiserver".into(),
    }
}

/// Does a Kubernetes label selector select this endpoint?
pub fn selector_matches(selector: &EndpointSelector, ep: &EndpointInfo<'_>) -> bool {
    selector
        .match_labels
        .iter()
        .all(|(k, v)| ep.label(k) == Some(v.as_str()))
        && selector.match_expressions.iter().all(|e| {
            let value = ep.label(&e.key);
            match e.operator {
                LabelOperator::In => value.is_some_and(|v| e.values.iter().any(|w| w == v)),
                LabelOperator::NotIn => value.is_none_or(|v| !e.values.iter().any(|w| w == v)),
                LabelOperator::Exists => value.is_some(),
                LabelOperator::DoesNotExist => value.is_none(),
            }
        })
}

pub(crate) fn names_namespace(selector: &EndpointSelector) -> bool {
    let is_ns =
        |k: &str| k.trim_start_matches("k8s:").trim_start_matches("any:") == NAMESPACE_LABEL;
    selector.match_labels.keys().any(|k| is_ns(k))
        || selector.match_expressions.iter().any(|e| is_ns(&e.key))
}

fn entity_matches(entity: Entity, peer: &Peer<'_>) -> bool {
    match entity {
        Entity::All => true,
        Entity::World => matches!(peer, Peer::World { .. }),
        Entity::Cluster => !matches!(peer, Peer::World { .. }),
        Entity::Host => matches!(peer, Peer::Host),
        Entity::RemoteNode => matches!(peer, Peer::RemoteNode),
        Entity::KubeApiserver => matches!(peer, Peer::KubeApiserver),
        Entity::Init | Entity::Ingress | Entity::Unmanaged | Entity::Health | Entity::None => false,
    }
}

fn entity_name(entity: Entity) -> String {
    serde_json::to_value(entity)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// The peer part of a rule: which selector, entity, CIDR or name matched.
fn peer_matches(
    rule: &PeerRule<'_>,
    peer: &Peer<'_>,
    ctx: &Context<'_>,
    hints: &mut Vec<String>,
) -> Option<String> {
    if !rule.has_peer_part() {
        return Some("any peer".into());
    }
    if let Peer::Endpoint(ep) = peer {
        for sel in rule.endpoints {
            let ns_ok = match ctx.policy_namespace {
                Some(ns) if !names_namespace(sel) => ep.namespace == ns,
                _ => true,
            };
            if ns_ok && selector_matches(sel, ep) {
                return Some("endpoint selector".into());
            }
        }
    }
    if let Some(e) = rule.entities.iter().find(|e| entity_matches(**e, peer)) {
        return Some(format!("entity {}", entity_name(*e)));
    }
    if let Peer::World { ip, name } = peer {
        if let Some(ip) = ip {
            for (cidr, except) in &rule.cidrs {
                let within = |c: &str| c.parse::<IpNet>().is_ok_and(|n| n.contains(ip));
                if within(cidr) && !except.iter().any(|x| within(x)) {
                    return Some(format!("CIDR {cidr}"));
                }
            }
        }
        if let Some(name) = name
            && let Some(f) = rule.fqdns.iter().find(|f| fqdn_matches(f, name))
        {
            let what = f
                .match_name
                .as_deref()
                .or(f.match_pattern.as_deref())
                .unwrap_or("");
            if ctx.dns_visible {
                return Some(format!("toFQDNs {what}"));
            }
            hints.push(format!(
                "toFQDNs {what} names {name}, but no DNS rule (toPorts[].rules.dns) lets Cilium learn its addresses"
            ));
        }
    }
    None
}

fn rule_matches(
    rule: &PeerRule<'_>,
    peer: &Peer<'_>,
    flow: &Flow<'_>,
    ctx: &Context<'_>,
    hints: &mut Vec<String>,
) -> Option<RuleMatch> {
    if !rule.has_peer_part() && rule.ports.is_empty() {
        return None;
    }
    let who = peer_matches(rule, peer, ctx, hints)?;
    let mut detail = vec![who];
    if rule.ports.is_empty() {
        if rule.icmps {
            return None;
        }
        detail.push("all ports".into());
        return Some(RuleMatch { detail });
    }
    let named = match peer {
        Peer::Endpoint(ep) => Some(ep.named_ports),
        _ => None,
    };
    for port_rule in rule.ports {
        if !port_rule.ports.iter().any(|p| port_matches(p, flow, named))
            && !port_rule.ports.is_empty()
        {
            continue;
        }
        if !port_rule.server_names.is_empty() {
            match flow.sni {
                Some(sni) if port_rule.server_names.iter().any(|n| sni_matches(n, sni)) => {
                    detail.push(format!(
                        "SNI {sni} is in serverNames, checked by Cilium's Envoy"
                    ));
                }
                Some(sni) => {
                    hints.push(format!(
                        "SNI {sni} is not in serverNames [{}]: Cilium's Envoy resets the handshake",
                        port_rule.server_names.join(", ")
                    ));
                    continue;
                }
                None => {
                    hints.push("serverNames needs a TLS ClientHello with SNI".into());
                    continue;
                }
            }
        }
        if let Some(l7) = &port_rule.rules {
            if !l7.dns.is_empty() {
                detail.push("DNS queries filtered by Cilium's DNS proxy".into());
            }
            if !l7.http.is_empty() {
                detail.push("each HTTP request filtered by Cilium's Envoy".into());
            }
            if !l7.kafka.is_empty() || l7.l7proto.is_some() {
                detail.push("L7 rules apply per message".into());
            }
        }
        detail.push(format!("port {}", flow.port));
        return Some(RuleMatch { detail });
    }
    None
}

fn port_matches(
    p: &super::types::PortProtocol,
    flow: &Flow<'_>,
    named: Option<&BTreeMap<String, u16>>,
) -> bool {
    let proto_ok = match p.protocol {
        None | Some(L4Protocol::Any) => true,
        Some(proto) => proto == flow.protocol,
    };
    let port_ok = match p.port.parse::<u16>() {
        Ok(0) => true,
        Ok(start) => {
            let end = p.end_port.filter(|e| *e >= start).unwrap_or(start);
            (start..=end).contains(&flow.port)
        }
        Err(_) => named.and_then(|n| n.get(&p.port)) == Some(&flow.port),
    };
    proto_ok && port_ok
}

/// `matchName` is exact (case-insensitive); `matchPattern` takes `*` as
/// any run of DNS characters, and a lone `*` as every name.
pub fn fqdn_matches(f: &FqdnSelector, name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    if let Some(exact) = &f.match_name {
        return exact.trim_end_matches('.').eq_ignore_ascii_case(&name);
    }
    let Some(pattern) = &f.match_pattern else {
        return false;
    };
    let pattern = pattern.trim_end_matches('.').to_ascii_lowercase();
    if pattern == "*" {
        return true;
    }
    wildcard(&pattern, &name, |c| c != '.')
}

/// TLS server names: exact, `*.` for exactly one label, `**.` for one or more.
pub fn sni_matches(pattern: &str, sni: &str) -> bool {
    let sni = sni.to_ascii_lowercase();
    let pattern = pattern.to_ascii_lowercase();
    if let Some(suffix) = pattern.strip_prefix("**.") {
        return sni
            .strip_suffix(suffix)
            .and_then(|head| head.strip_suffix('.'))
            .is_some_and(|head| !head.is_empty());
    }
    if let Some(suffix) = pattern.strip_prefix("*.") {
        return sni
            .strip_suffix(suffix)
            .and_then(|head| head.strip_suffix('.'))
            .is_some_and(|head| !head.is_empty() && !head.contains('.'));
    }
    pattern == sni
}

/// Glob with `*` standing for any run of characters accepted by `fits`.
fn wildcard(pattern: &str, text: &str, fits: impl Fn(char) -> bool + Copy) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, tail)) => {
            let Some(rest) = text.strip_prefix(head) else {
                return false;
            };
            rest.char_indices()
                .map(|(i, _)| i)
                .chain([rest.len()])
                .take_while(|i| rest[..*i].chars().all(fits))
                .any(|i| wildcard(tail, &rest[i..], fits))
        }
    }
}
