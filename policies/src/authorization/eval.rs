//! ztunnel's evaluation of translated policies for one inbound connection.
//!
//! Of the policies that apply to the destination workload: dry-run ones
//! never decide; any matching DENY refuses; with no ALLOW the connection is
//! accepted; otherwise an ALLOW must match. A policy with no rules matches
//! nothing; rules are ORed, a rule's clauses ANDed (a clause without
//! matches holds), a clause's matches ORed with empty matches skipped, and
//! in a match every populated field must hold.
//!
//! What is compared: the peer identity `spiffe://td/ns/<ns>/sa/<sa>` with
//! `spiffe://` removed for principals (no identity matches no principal,
//! and so every `notPrincipals` list holds for plaintext); the namespace
//! and service account taken from that identity; the source address of the
//! inbound TCP connection; the destination address and port after HBONE
//! unwrapping.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use super::{Action, Authorization, Match, Rule};

/// What the receiving proxy knows of a connection.
#[derive(Debug, Clone, Copy)]
pub struct Connection<'a> {
    /// The peer's principal without `spiffe://` (`cluster.local/ns/demo/sa/x`);
    /// `None` for plaintext.
    pub principal: Option<&'a str>,
    /// Address the connection comes from, as the receiving proxy sees it.
    pub src_ip: IpAddr,
    /// Destination address after HBONE unwrapping: the workload's own address.
    pub dst_ip: IpAddr,
    /// Destination port after HBONE unwrapping: the port the client dialed.
    pub dst_port: u16,
}

impl Connection<'_> {
    /// (namespace, service account) of a well-formed identity.
    fn identity_parts(&self) -> Option<(&str, &str)> {
        let mut segments = self.principal?.split('/');
        match (
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
        ) {
            (Some(_td), Some("ns"), Some(ns), Some("sa"), Some(sa), None) => Some((ns, sa)),
            _ => None,
        }
    }
}

/// How a connection was decided, naming the policy and rule behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A DENY policy's rule matched.
    Denied {
        /// Key (`namespace/name`) of the DENY policy.
        policy: String,
        /// Index of its first matching rule.
        rule: usize,
    },
    /// An ALLOW policy's rule matched.
    Allowed {
        /// Key (`namespace/name`) of the ALLOW policy.
        policy: String,
        /// Index of its first matching rule.
        rule: usize,
    },
    /// ALLOW policies apply and none matched.
    NotAllowed {
        /// Keys of the ALLOW policies that applied.
        policies: Vec<String>,
    },
    /// No ALLOW policy applies (and no DENY matched): open by default.
    Open,
}

impl Verdict {
    /// Whether the connection may proceed: an ALLOW rule matched, or no ALLOW policy applies.
    pub fn allowed(&self) -> bool {
        matches!(self, Verdict::Allowed { .. } | Verdict::Open)
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Denied { policy, rule } => write!(f, "denied by {policy} rules[{rule}]"),
            Verdict::Allowed { policy, rule } => write!(f, "allowed by {policy} rules[{rule}]"),
            Verdict::NotAllowed { policies } => {
                write!(f, "no rule of ALLOW {} matches", policies.join(", "))
            }
            Verdict::Open => write!(f, "no ALLOW policy applies: open by default"),
        }
    }
}

/// Decides `conn` against the policies that apply to its destination.
pub fn evaluate<'p>(
    applying: impl IntoIterator<Item = &'p Authorization>,
    conn: &Connection<'_>,
) -> Verdict {
    let enforced: Vec<&Authorization> = applying.into_iter().filter(|p| !p.dry_run).collect();
    for p in enforced.iter().filter(|p| p.action == Action::Deny) {
        if let Some(rule) = matching_rule(p, conn) {
            return Verdict::Denied {
                policy: p.key(),
                rule,
            };
        }
    }
    let allows: Vec<&&Authorization> = enforced
        .iter()
        .filter(|p| p.action == Action::Allow)
        .collect();
    if allows.is_empty() {
        return Verdict::Open;
    }
    for p in &allows {
        if let Some(rule) = matching_rule(p, conn) {
            return Verdict::Allowed {
                policy: p.key(),
                rule,
            };
        }
    }
    Verdict::NotAllowed {
        policies: allows.iter().map(|p| p.key()).collect(),
    }
}

/// The index of the first rule of `policy` that matches.
pub fn matching_rule(policy: &Authorization, conn: &Connection<'_>) -> Option<usize> {
    policy.rules.iter().position(|r| rule_matches(r, conn))
}

fn rule_matches(rule: &Rule, conn: &Connection<'_>) -> bool {
    rule.clauses.iter().all(|clause| {
        clause.matches.is_empty()
            || clause
                .matches
                .iter()
                .any(|m| !m.is_empty() && match_holds(m, conn))
    })
}

/// Positive list: empty or one hit. Negative list: empty or no hit.
fn field<T>(positive: &[T], negative: &[T], hit: impl Fn(&T) -> bool) -> bool {
    (positive.is_empty() || positive.iter().any(&hit)) && !negative.iter().any(&hit)
}

fn match_holds(m: &Match, conn: &Connection<'_>) -> bool {
    let parts = conn.identity_parts();
    let namespace = parts.map_or("", |(ns, _)| ns);
    let contains = |ip: IpAddr| move |net: &IpNet| net.contains(&ip);
    field(
        &m.destination_ips,
        &m.not_destination_ips,
        contains(conn.dst_ip),
    ) && field(&m.source_ips, &m.not_source_ips, contains(conn.src_ip))
        && field(&m.destination_ports, &m.not_destination_ports, |p| {
            // ztunnel narrows the proto's u32 to u16.
            *p as u16 == conn.dst_port
        })
        && field(&m.service_accounts, &m.not_service_accounts, |s| {
            parts.is_some_and(|(ns, sa)| s.namespace == ns && s.service_account == sa)
        })
        && field(&m.principals, &m.not_principals, |p| {
            conn.principal.is_some_and(|id| p.matches(id))
        })
        && field(&m.namespaces, &m.not_namespaces, |p| p.matches(namespace))
}
