//! The lab's data as workload-API messages, as istiod builds them.

use hbone_policies::authorization::{self as authz, Authorization, StringMatch, ip_bytes};
use ipnet::IpNet;

use crate::mesh::{MeshService, MeshWorkload};
use crate::proto::security as pb;
use crate::proto::workload::{self as wl, AddressType};

fn string_match(m: &StringMatch) -> pb::StringMatch {
    let match_type = match m {
        StringMatch::Exact(x) => pb::MatchType::Exact(x.clone()),
        StringMatch::Prefix(x) => pb::MatchType::Prefix(x.clone()),
        StringMatch::Suffix(x) => pb::MatchType::Suffix(x.clone()),
        StringMatch::Presence => pb::MatchType::Presence(()),
    };
    pb::StringMatch {
        match_type: Some(match_type),
    }
}

fn address(net: &IpNet) -> pb::Address {
    pb::Address {
        address: ip_bytes(net.addr()),
        length: u32::from(net.prefix_len()),
    }
}

fn accounts(list: &[authz::ServiceAccountMatch]) -> Vec<pb::ServiceAccountMatch> {
    list.iter()
        .map(|s| pb::ServiceAccountMatch {
            namespace: s.namespace.clone(),
            service_account: s.service_account.clone(),
        })
        .collect()
}

fn one_match(m: &authz::Match) -> pb::Match {
    let strings = |l: &[StringMatch]| l.iter().map(string_match).collect();
    let addresses = |l: &[IpNet]| l.iter().map(address).collect();
    pb::Match {
        namespaces: strings(&m.namespaces),
        not_namespaces: strings(&m.not_namespaces),
        principals: strings(&m.principals),
        not_principals: strings(&m.not_principals),
        source_ips: addresses(&m.source_ips),
        not_source_ips: addresses(&m.not_source_ips),
        destination_ips: addresses(&m.destination_ips),
        not_destination_ips: addresses(&m.not_destination_ips),
        destination_ports: m.destination_ports.clone(),
        not_destination_ports: m.not_destination_ports.clone(),
        service_accounts: accounts(&m.service_accounts),
        not_service_accounts: accounts(&m.not_service_accounts),
    }
}

/// A translated policy as the xDS message.
pub fn authorization(a: &Authorization) -> pb::Authorization {
    pb::Authorization {
        name: a.name.clone(),
        namespace: a.namespace.clone(),
        scope: a.scope.number(),
        action: a.action.number(),
        rules: a
            .rules
            .iter()
            .map(|r| pb::Rule {
                clauses: r
                    .clauses
                    .iter()
                    .map(|c| pb::Clause {
                        matches: c.matches.iter().map(one_match).collect(),
                    })
                    .collect(),
            })
            .collect(),
        dry_run: a.dry_run,
    }
}

fn ports(pairs: &[(u16, u16)]) -> Vec<wl::Port> {
    pairs
        .iter()
        .map(|&(service_port, target_port)| wl::Port {
            service_port: service_port.into(),
            target_port: target_port.into(),
            app_protocol: 0,
        })
        .collect()
}

/// A workload as the `Address` xDS payload; `policies` are the
/// selector-scoped keys it lists.
pub fn workload(w: &MeshWorkload, policies: Vec<String>) -> wl::Address {
    let record = wl::Workload {
        uid: w.uid.clone(),
        name: w.name.clone(),
        namespace: w.namespace.clone(),
        addresses: w.ips.iter().map(|ip| ip_bytes(*ip)).collect(),
        tunnel_protocol: if w.hbone {
            wl::TUNNEL_HBONE
        } else {
            wl::TUNNEL_NONE
        },
        trust_domain: w.trust_domain.clone(),
        service_account: w.service_account.clone(),
        node: w.node.clone(),
        canonical_name: w
            .labels
            .get("app")
            .cloned()
            .unwrap_or_else(|| w.name.clone()),
        canonical_revision: "latest".into(),
        workload_type: wl::WORKLOAD_TYPE_POD,
        workload_name: w.name.clone(),
        services: w
            .services
            .iter()
            .map(|(key, pairs)| {
                (
                    key.clone(),
                    wl::PortList {
                        ports: ports(pairs),
                    },
                )
            })
            .collect(),
        authorization_policies: policies,
        cluster_id: "Kubernetes".into(),
        ..wl::Workload::default()
    };
    wl::Address {
        r#type: Some(AddressType::Workload(Box::new(record))),
    }
}

/// A service as the `Address` xDS payload.
pub fn service(s: &MeshService) -> wl::Address {
    let record = wl::Service {
        name: s.name.clone(),
        namespace: s.namespace.clone(),
        hostname: s.hostname.clone(),
        addresses: s
            .vips
            .iter()
            .map(|ip| wl::NetworkAddress {
                network: String::new(),
                address: ip_bytes(*ip),
                length: None,
            })
            .collect(),
        ports: ports(&s.ports),
        subject_alt_names: Vec::new(),
    };
    wl::Address {
        r#type: Some(AddressType::Service(record)),
    }
}
