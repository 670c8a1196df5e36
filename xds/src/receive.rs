//! Workload-API messages back into the lab's data, as a node proxy fed over
//! xDS must read them: the inverse of [`crate::convert`]. A message that
//! cannot be used (an address of 5 bytes, an action ztunnel does not know,
//! a match with no match type) is refused with the field and the reason,
//! so the proxy can NACK it and keep what it had.

use std::net::IpAddr;

use hbone_policies::authorization::{
    self as authz, Action, Authorization, Clause, Rule, Scope, StringMatch,
};
use ipnet::IpNet;
use thiserror::Error;

use crate::mesh::{MeshService, MeshWorkload};
use crate::proto::security as pb;
use crate::proto::workload::{self as wl, AddressType};

/// Why a resource was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{resource}: {field}: {reason}")]
pub struct Rejected {
    /// The resource's name.
    pub resource: String,
    /// Where in it (`rules[0].clauses[1].matches[0].sourceIps[2]`).
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

/// A workload as its record describes it, with the policy keys it lists.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedWorkload {
    /// The workload; its labels are empty, as the workload API does not carry them.
    pub workload: MeshWorkload,
    /// Its selector-scoped policies (`authorization_policies`).
    pub policies: Vec<String>,
}

/// One `Address` resource: a workload or a service.
#[derive(Debug, Clone, PartialEq)]
pub enum ReceivedAddress {
    /// The resource held a workload.
    Workload(ReceivedWorkload),
    /// The resource held a service.
    Service(MeshService),
}

/// Errors carry the resource's name; the walk below builds the field path.
struct Reader<'a> {
    resource: &'a str,
}

impl Reader<'_> {
    fn reject(&self, field: impl Into<String>, reason: impl Into<String>) -> Rejected {
        Rejected {
            resource: self.resource.to_string(),
            field: field.into(),
            reason: reason.into(),
        }
    }

    fn ip(&self, field: &str, bytes: &[u8]) -> Result<IpAddr, Rejected> {
        match bytes.len() {
            4 => Ok(IpAddr::from(<[u8; 4]>::try_from(bytes).expect("4 bytes"))),
            16 => Ok(IpAddr::from(<[u8; 16]>::try_from(bytes).expect("16 bytes"))),
            n => Err(self.reject(field, format!("an address has 4 or 16 bytes, not {n}"))),
        }
    }

    fn net(&self, field: &str, a: &pb::Address) -> Result<IpNet, Rejected> {
        let ip = self.ip(field, &a.address)?;
        let length = u8::try_from(a.length).unwrap_or(u8::MAX);
        IpNet::new(ip, length).map_err(|_| {
            self.reject(
                field,
                format!("prefix length {} is too long for {ip}", a.length),
            )
        })
    }

    fn string(&self, field: &str, m: &pb::StringMatch) -> Result<StringMatch, Rejected> {
        Ok(match &m.match_type {
            Some(pb::MatchType::Exact(x)) => StringMatch::Exact(x.clone()),
            Some(pb::MatchType::Prefix(x)) => StringMatch::Prefix(x.clone()),
            Some(pb::MatchType::Suffix(x)) => StringMatch::Suffix(x.clone()),
            Some(pb::MatchType::Presence(())) => StringMatch::Presence,
            None => return Err(self.reject(field, "a string match without a match type")),
        })
    }

    fn one_match(&self, at: &str, m: &pb::Match) -> Result<authz::Match, Rejected> {
        let strings = |name: &str, l: &[pb::StringMatch]| {
            l.iter()
                .enumerate()
                .map(|(i, s)| self.string(&format!("{at}.{name}[{i}]"), s))
                .collect::<Result<Vec<_>, _>>()
        };
        let nets = |name: &str, l: &[pb::Address]| {
            l.iter()
                .enumerate()
                .map(|(i, a)| self.net(&format!("{at}.{name}[{i}]"), a))
                .collect::<Result<Vec<_>, _>>()
        };
        let accounts = |l: &[pb::ServiceAccountMatch]| {
            l.iter()
                .map(|s| authz::ServiceAccountMatch {
                    namespace: s.namespace.clone(),
                    service_account: s.service_account.clone(),
                })
                .collect()
        };
        Ok(authz::Match {
            namespaces: strings("namespaces", &m.namespaces)?,
            not_namespaces: strings("notNamespaces", &m.not_namespaces)?,
            principals: strings("principals", &m.principals)?,
            not_principals: strings("notPrincipals", &m.not_principals)?,
            source_ips: nets("sourceIps", &m.source_ips)?,
            not_source_ips: nets("notSourceIps", &m.not_source_ips)?,
            destination_ips: nets("destinationIps", &m.destination_ips)?,
            not_destination_ips: nets("notDestinationIps", &m.not_destination_ips)?,
            destination_ports: m.destination_ports.clone(),
            not_destination_ports: m.not_destination_ports.clone(),
            service_accounts: accounts(&m.service_accounts),
            not_service_accounts: accounts(&m.not_service_accounts),
        })
    }
}

/// An `Authorization` resource named `name`.
pub fn authorization(name: &str, a: &pb::Authorization) -> Result<Authorization, Rejected> {
    let r = Reader { resource: name };
    let scope = Scope::from_number(a.scope)
        .ok_or_else(|| r.reject("scope", format!("unknown scope {}", a.scope)))?;
    let action = Action::from_number(a.action).ok_or_else(|| {
        r.reject(
            "action",
            format!("unknown action {} (ztunnel knows ALLOW and DENY)", a.action),
        )
    })?;
    let mut rules = Vec::with_capacity(a.rules.len());
    for (i, rule) in a.rules.iter().enumerate() {
        let mut clauses = Vec::with_capacity(rule.clauses.len());
        for (j, clause) in rule.clauses.iter().enumerate() {
            let matches = clause
                .matches
                .iter()
                .enumerate()
                .map(|(k, m)| r.one_match(&format!("rules[{i}].clauses[{j}].matches[{k}]"), m))
                .collect::<Result<_, _>>()?;
            clauses.push(Clause { matches });
        }
        rules.push(Rule { clauses });
    }
    let policy = Authorization {
        name: a.name.clone(),
        namespace: a.namespace.clone(),
        scope,
        action,
        rules,
        dry_run: a.dry_run,
    };
    if policy.key() != name {
        return Err(r.reject(
            "name",
            format!("the resource is named {name} but holds {}", policy.key()),
        ));
    }
    Ok(policy)
}

fn port_pairs(
    r: &Reader<'_>,
    field: &str,
    ports: &[wl::Port],
) -> Result<Vec<(u16, u16)>, Rejected> {
    ports
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let narrow = |n: u32, what: &str| {
                u16::try_from(n).map_err(|_| {
                    r.reject(format!("{field}[{i}].{what}"), format!("{n} is not a port"))
                })
            };
            Ok((
                narrow(p.service_port, "servicePort")?,
                narrow(p.target_port, "targetPort")?,
            ))
        })
        .collect()
}

/// An `Address` resource named `name`.
pub fn address(name: &str, a: &wl::Address) -> Result<ReceivedAddress, Rejected> {
    let r = Reader { resource: name };
    match &a.r#type {
        Some(AddressType::Workload(w)) => {
            let ips = w
                .addresses
                .iter()
                .enumerate()
                .map(|(i, b)| r.ip(&format!("addresses[{i}]"), b))
                .collect::<Result<Vec<_>, _>>()?;
            let hbone = match w.tunnel_protocol {
                wl::TUNNEL_HBONE => true,
                wl::TUNNEL_NONE => false,
                n => return Err(r.reject("tunnelProtocol", format!("unknown protocol {n}"))),
            };
            if w.namespace.is_empty() {
                return Err(r.reject("namespace", "a workload needs a namespace for its identity"));
            }
            let mut services = std::collections::BTreeMap::new();
            for (key, list) in &w.services {
                let pairs = port_pairs(&r, &format!("services[{key}].ports"), &list.ports)?;
                services.insert(key.clone(), pairs);
            }
            let workload = MeshWorkload {
                uid: w.uid.clone(),
                name: w.name.clone(),
                namespace: w.namespace.clone(),
                // Kubernetes runs a pod without one as `default`, and
                // istiod sends none for endpoints it learns from an
                // EndpointSlice alone (the API server's own, for one):
                // ztunnel reads empty as `default` too.
                service_account: if w.service_account.is_empty() {
                    "default".into()
                } else {
                    w.service_account.clone()
                },
                trust_domain: if w.trust_domain.is_empty() {
                    "cluster.local".into()
                } else {
                    w.trust_domain.clone()
                },
                labels: Default::default(),
                ips,
                node: w.node.clone(),
                hbone,
                services,
            };
            Ok(ReceivedAddress::Workload(ReceivedWorkload {
                workload,
                policies: w.authorization_policies.clone(),
            }))
        }
        Some(AddressType::Service(s)) => {
            let vips = s
                .addresses
                .iter()
                .enumerate()
                .map(|(i, a)| r.ip(&format!("addresses[{i}].address"), &a.address))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(ReceivedAddress::Service(MeshService {
                name: s.name.clone(),
                namespace: s.namespace.clone(),
                hostname: s.hostname.clone(),
                vips,
                ports: port_pairs(&r, "ports", &s.ports)?,
            }))
        }
        None => Err(r.reject("type", "neither a workload nor a service")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert;
    use hbone_policies::istio::IstioPolicies;
    use hbone_policies::load::{istio_policies, load_dir};

    #[test]
    fn what_convert_writes_reads_back_the_same() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../policies/istio");
        let policies: IstioPolicies =
            istio_policies(&load_dir(dir.as_ref()).unwrap(), "istio-system");
        let translated = policies.translated().policies();
        assert!(translated.len() >= 3, "the lab's policies translate");
        for a in translated {
            let back = authorization(&a.key(), &convert::authorization(a)).unwrap();
            assert_eq!(&back, a);
        }
        let mut pod = MeshWorkload::pod(
            "demo",
            "hello",
            "hello-app",
            "127.0.2.2".parse().unwrap(),
            "hello-app",
            "node-2",
        );
        pod.services
            .insert("demo/hello.demo.svc.cluster.local".into(), vec![(80, 8000)]);
        let keys = vec!["demo/only-gateway".to_string()];
        match address(&pod.uid, &convert::workload(&pod, keys.clone())).unwrap() {
            ReceivedAddress::Workload(got) => {
                pod.labels.clear();
                assert_eq!(got.workload, pod);
                assert_eq!(got.policies, keys);
            }
            other => panic!("{other:?}"),
        }
    }

    /// What istiod sends for the API server's own endpoint (an
    /// EndpointSlice, no pod): no service account. Refusing it refused the
    /// whole Address push from a real istiod.
    #[test]
    fn a_workload_without_a_service_account_runs_as_default() {
        let pod = MeshWorkload::pod(
            "default",
            "kubernetes",
            "",
            "192.0.2.2".parse().unwrap(),
            "",
            "",
        );
        let mut message = convert::workload(&pod, Vec::new());
        if let Some(AddressType::Workload(w)) = &mut message.r#type {
            w.service_account.clear();
        }
        match address(
            "Kubernetes/discovery.k8s.io/EndpointSlice/default/kubernetes/192.0.2.2",
            &message,
        )
        .unwrap()
        {
            ReceivedAddress::Workload(got) => assert_eq!(got.workload.service_account, "default"),
            other => panic!("{other:?}"),
        }
        if let Some(AddressType::Workload(w)) = &mut message.r#type {
            w.namespace.clear();
        }
        assert_eq!(address("x", &message).unwrap_err().field, "namespace");
    }

    #[test]
    fn unusable_resources_are_refused_with_field_and_reason() {
        let mut a = pb::Authorization {
            name: "p".into(),
            namespace: "demo".into(),
            action: 7,
            ..pb::Authorization::default()
        };
        let err = authorization("demo/p", &a).unwrap_err();
        assert_eq!(
            (err.field.as_str(), err.resource.as_str()),
            ("action", "demo/p")
        );
        a.action = 1;
        a.rules = vec![pb::Rule {
            clauses: vec![pb::Clause {
                matches: vec![pb::Match {
                    source_ips: vec![pb::Address {
                        address: vec![1, 2, 3, 4, 5],
                        length: 32,
                    }],
                    ..pb::Match::default()
                }],
            }],
        }];
        let err = authorization("demo/p", &a).unwrap_err();
        assert_eq!(err.field, "rules[0].clauses[0].matches[0].sourceIps[0]");
        assert!(err.to_string().contains("4 or 16 bytes, not 5"), "{err}");
        a.rules.clear();
        assert!(
            authorization("demo/other", &a)
                .unwrap_err()
                .reason
                .contains("holds demo/p")
        );
        let err = address("x", &wl::Address { r#type: None }).unwrap_err();
        assert_eq!(err.field, "type");
    }
}
