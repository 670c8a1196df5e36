//! Translated policies as text, in the two shapes people compare them in.
//!
//! - istiod's: what its golden test files hold (`protomarshal.ToYAML`):
//!   proto-JSON names with istiod's levels `groups` → `rules` → `matches`,
//!   enum names, zero values left out (ALLOW, GLOBAL, `dryRun: false`, an
//!   empty namespace), bytes in base64, `google.protobuf.Empty` as `{}`,
//!   keys in alphabetical order. Diff it against istiod's output.
//! - ztunnel's local config (`LOCAL_XDS_PATH`): camelCase keys, all six
//!   policy keys present, `rules` as lists of clauses of matches, scope and
//!   action as `Global`/`Allow`, IPs as CIDR strings, string matches as
//!   YAML tags (`!Exact x`, `!Presence []`).

use base64::Engine;
use ipnet::IpNet;
use serde_yaml::value::{Tag, TaggedValue};
use serde_yaml::{Mapping, Value};

use super::{Action, Authorization, Match, Scope, ServiceAccountMatch, StringMatch, ip_bytes};

/// A mapping with its keys sorted and empty values left out.
fn sorted(entries: Vec<(&str, Option<Value>)>) -> Value {
    let mut entries: Vec<(&str, Value)> = entries
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    let mut map = Mapping::new();
    for (k, v) in entries {
        map.insert(Value::String(k.to_string()), v);
    }
    Value::Mapping(map)
}

fn list<T>(items: &[T], f: impl Fn(&T) -> Value) -> Option<Value> {
    (!items.is_empty()).then(|| Value::Sequence(items.iter().map(f).collect()))
}

fn text(s: &str) -> Option<Value> {
    (!s.is_empty()).then(|| Value::String(s.to_string()))
}

fn istiod_string(m: &StringMatch) -> Value {
    let (key, value) = match m {
        StringMatch::Exact(x) => ("exact", Value::String(x.clone())),
        StringMatch::Prefix(x) => ("prefix", Value::String(x.clone())),
        StringMatch::Suffix(x) => ("suffix", Value::String(x.clone())),
        StringMatch::Presence => ("presence", Value::Mapping(Mapping::new())),
    };
    sorted(vec![(key, Some(value))])
}

fn istiod_address(net: &IpNet) -> Value {
    let encoded = base64::engine::general_purpose::STANDARD.encode(ip_bytes(net.addr()));
    let length = net.prefix_len();
    sorted(vec![
        ("address", Some(Value::String(encoded))),
        (
            "length",
            (length != 0).then(|| Value::Number(length.into())),
        ),
    ])
}

fn istiod_account(s: &ServiceAccountMatch) -> Value {
    sorted(vec![
        ("namespace", text(&s.namespace)),
        ("serviceAccount", text(&s.service_account)),
    ])
}

fn port(p: &u32) -> Value {
    Value::Number((*p).into())
}

/// One match with istiod's JSON names.
fn istiod_match(m: &Match) -> Value {
    sorted(vec![
        ("namespaces", list(&m.namespaces, istiod_string)),
        ("notNamespaces", list(&m.not_namespaces, istiod_string)),
        ("principals", list(&m.principals, istiod_string)),
        ("notPrincipals", list(&m.not_principals, istiod_string)),
        ("sourceIps", list(&m.source_ips, istiod_address)),
        ("notSourceIps", list(&m.not_source_ips, istiod_address)),
        ("destinationIps", list(&m.destination_ips, istiod_address)),
        (
            "notDestinationIps",
            list(&m.not_destination_ips, istiod_address),
        ),
        ("destinationPorts", list(&m.destination_ports, port)),
        ("notDestinationPorts", list(&m.not_destination_ports, port)),
        ("serviceAccounts", list(&m.service_accounts, istiod_account)),
        (
            "notServiceAccounts",
            list(&m.not_service_accounts, istiod_account),
        ),
    ])
}

/// The policy as istiod's golden files print it.
pub fn istiod_value(a: &Authorization) -> Value {
    let groups = list(&a.rules, |rule| {
        sorted(vec![(
            "rules",
            list(&rule.clauses, |clause| {
                sorted(vec![("matches", list(&clause.matches, istiod_match))])
            }),
        )])
    });
    sorted(vec![
        ("name", text(&a.name)),
        ("namespace", text(&a.namespace)),
        (
            "scope",
            (a.scope != Scope::Global).then(|| Value::String(a.scope.proto_name().into())),
        ),
        (
            "action",
            (a.action != Action::Allow).then(|| Value::String(a.action.proto_name().into())),
        ),
        ("groups", groups),
        ("dryRun", a.dry_run.then_some(Value::Bool(true))),
    ])
}

/// Several policies as a YAML stream in istiod's shape; empty for none.
pub fn istiod_yaml<'a>(policies: impl IntoIterator<Item = &'a Authorization>) -> String {
    policies
        .into_iter()
        .map(|a| serde_yaml::to_string(&istiod_value(a)).expect("YAML values always serialize"))
        .collect::<Vec<_>>()
        .join("---\n")
}

fn tagged(tag: &str, value: Value) -> Value {
    Value::Tagged(Box::new(TaggedValue {
        tag: Tag::new(tag),
        value,
    }))
}

fn local_string(m: &StringMatch) -> Value {
    match m {
        StringMatch::Exact(x) => tagged("Exact", Value::String(x.clone())),
        StringMatch::Prefix(x) => tagged("Prefix", Value::String(x.clone())),
        StringMatch::Suffix(x) => tagged("Suffix", Value::String(x.clone())),
        StringMatch::Presence => tagged("Presence", Value::Sequence(Vec::new())),
    }
}

fn local_ip(net: &IpNet) -> Value {
    Value::String(net.to_string())
}

fn local_account(s: &ServiceAccountMatch) -> Value {
    sorted(vec![
        ("namespace", Some(Value::String(s.namespace.clone()))),
        (
            "serviceAccount",
            Some(Value::String(s.service_account.clone())),
        ),
    ])
}

fn local_port(p: &u32) -> Value {
    Value::Number((*p as u16).into())
}

fn local_match(m: &Match) -> Value {
    sorted(vec![
        ("namespaces", list(&m.namespaces, local_string)),
        ("notNamespaces", list(&m.not_namespaces, local_string)),
        ("principals", list(&m.principals, local_string)),
        ("notPrincipals", list(&m.not_principals, local_string)),
        ("sourceIps", list(&m.source_ips, local_ip)),
        ("notSourceIps", list(&m.not_source_ips, local_ip)),
        ("destinationIps", list(&m.destination_ips, local_ip)),
        ("notDestinationIps", list(&m.not_destination_ips, local_ip)),
        ("destinationPorts", list(&m.destination_ports, local_port)),
        (
            "notDestinationPorts",
            list(&m.not_destination_ports, local_port),
        ),
        ("serviceAccounts", list(&m.service_accounts, local_account)),
        (
            "notServiceAccounts",
            list(&m.not_service_accounts, local_account),
        ),
    ])
}

/// The policy as an entry of ztunnel's local config `policies:` list.
pub fn ztunnel_local_value(a: &Authorization) -> Value {
    let scope = match a.scope {
        Scope::Global => "Global",
        Scope::Namespace => "Namespace",
        Scope::WorkloadSelector => "WorkloadSelector",
    };
    let action = match a.action {
        Action::Allow => "Allow",
        Action::Deny => "Deny",
    };
    let rules = Value::Sequence(
        a.rules
            .iter()
            .map(|r| {
                Value::Sequence(
                    r.clauses
                        .iter()
                        .map(|c| Value::Sequence(c.matches.iter().map(local_match).collect()))
                        .collect(),
                )
            })
            .collect(),
    );
    sorted(vec![
        ("name", Some(Value::String(a.name.clone()))),
        ("namespace", Some(Value::String(a.namespace.clone()))),
        ("scope", Some(Value::String(scope.into()))),
        ("action", Some(Value::String(action.into()))),
        ("dryRun", Some(Value::Bool(a.dry_run))),
        ("rules", Some(rules)),
    ])
}
