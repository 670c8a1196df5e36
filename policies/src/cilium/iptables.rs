//! Compiling the L3/L4 part of Cilium policies into iptables rules for one
//! pod's network namespace — how `hbone-lab demo --netns` makes the Cilium
//! layer real without Cilium.
//!
//! Cilium resolves label selectors to security identities and those to
//! addresses (its ipcache), then enforces per endpoint in eBPF. Here the
//! selectors are resolved against the lab's topology (the pods' addresses)
//! and the result is two chains in the pod's `filter` table:
//! `HBL_CILIUM_EGRESS` on what leaves `eth0` and `HBL_CILIUM_INGRESS` on
//! what arrives on it. In each: established flows pass, deny rules drop,
//! allow rules accept, and — if some selecting policy switches default deny
//! on — everything else is dropped, as Cilium drops it. Every rule carries
//! a comment naming its policy and rule, so `iptables -L -v` shows which rule
//! counted which packet.
//!
//! Ingress rules match the port the client dialed as Cilium sees it on the
//! wire: `--ctorigdstport`, the destination port before the pod's own
//! redirection (15006) rewrote it.
//!
//! What differs from Cilium's datapath (reported in [`PodFirewall::notes`]):
//! `serverNames` is enforced by an SNI-peeking relay on the node (Cilium
//! uses Envoy there too), returned as [`SniRule`]s for the caller to run;
//! HTTP/Kafka rules are not emulated (their ports are opened at L4); `world`
//! is "outside the cluster's address range"; named ports are not resolved.

use ipnet::IpNet;

use super::eval::{
    CiliumPolicies, Direction, EndpointInfo, PeerRule, names_namespace, selector_matches,
};
use super::types::{Entity, L4Protocol};
use crate::topology::{LabTopology, LabWorkload};

/// Chain in the pod's `filter` table for what leaves its interface.
pub const EGRESS_CHAIN: &str = "HBL_CILIUM_EGRESS";
/// Chain in the pod's `filter` table for what arrives on its interface.
pub const INGRESS_CHAIN: &str = "HBL_CILIUM_INGRESS";

/// An egress rule whose L7 part (`serverNames`) the node must enforce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SniRule {
    /// `cnp demo/hello-app-to-github egress[0]`
    pub rule: String,
    /// Destination ports the relay must watch for this rule; empty when the rule names none.
    pub ports: Vec<u16>,
    /// The rule's peer part as iptables address arguments (`! -d 10.0.0.0/8`
    /// for `world`), to select the same flows on the node.
    pub destination: Vec<String>,
    /// Allowed SNI patterns, as in the rule's `serverNames`.
    pub server_names: Vec<String>,
}

/// The iptables rules for one pod, ready to run in its namespace.
#[derive(Debug, Clone, Default)]
pub struct PodFirewall {
    /// Argument lists for `iptables`, in order.
    pub commands: Vec<Vec<String>>,
    /// `serverNames` rules the caller must enforce with an SNI relay on the node.
    pub sni: Vec<SniRule>,
    /// Where these rules differ from Cilium's datapath, one sentence each, sorted and deduplicated.
    pub notes: Vec<String>,
}

/// Where the compiled rules are to run.
#[derive(Debug, Clone)]
pub struct Addressing {
    /// Every address inside the cluster (pods and nodes); `world` is the rest.
    pub cluster: IpNet,
    /// The pod's interface towards its node.
    pub interface: String,
}

/// One way a rule's peer part can match, as iptables address arguments.
fn peer_matches(
    rule: &PeerRule<'_>,
    direction: Direction,
    policy_ns: Option<&str>,
    pod: &LabWorkload,
    topology: &LabTopology,
    addressing: &Addressing,
    dns_visible: bool,
) -> Vec<Vec<String>> {
    let flag = match direction {
        Direction::Egress => "-d",
        Direction::Ingress => "-s",
    };
    let addr = |net: String| vec![flag.to_string(), net];
    if !rule.has_peer_part() {
        return vec![vec![]];
    }
    let mut out = Vec::new();
    for sel in rule.endpoints {
        for w in &topology.workloads {
            let ns_ok = match policy_ns {
                Some(ns) if !names_namespace(sel) => w.namespace == ns,
                _ => true,
            };
            if let Some(ip) = w.ip
                && ns_ok
                && selector_matches(sel, &EndpointInfo::from(w))
            {
                out.push(addr(format!("{ip}/32")));
            }
        }
    }
    let node_ip = |name: &str| topology.nodes.iter().find(|n| n.name == name).map(|n| n.ip);
    for entity in rule.entities {
        match entity {
            Entity::All => out.push(vec![]),
            Entity::World => out.push(vec![
                "!".into(),
                flag.into(),
                addressing.cluster.to_string(),
            ]),
            Entity::Cluster => out.push(addr(addressing.cluster.to_string())),
            Entity::Host => {
                if let Some(ip) = pod.node.as_deref().and_then(node_ip) {
                    out.push(addr(format!("{ip}/32")));
                }
            }
            Entity::RemoteNode => {
                for n in &topology.nodes {
                    if pod.node.as_deref() != Some(n.name.as_str()) {
                        out.push(addr(format!("{}/32", n.ip)));
                    }
                }
            }
            _ => {}
        }
    }
    for (cidr, except) in &rule.cidrs {
        // Exceptions need a RETURN before the ACCEPT; `except` is rare
        // enough that the compiler expands it into sibling rules instead.
        let Ok(net) = cidr.parse::<IpNet>() else {
            continue;
        };
        let excluded: Vec<IpNet> = except.iter().filter_map(|e| e.parse().ok()).collect();
        for piece in subtract(net, &excluded) {
            out.push(addr(piece.to_string()));
        }
    }
    if dns_visible && direction == Direction::Egress {
        for e in &topology.externals {
            if rule
                .fqdns
                .iter()
                .any(|f| super::eval::fqdn_matches(f, &e.name))
                && let Some(ip) = e.ip
            {
                out.push(addr(format!("{ip}/32")));
            }
        }
    }
    out
}

/// `net` minus `excluded`, as a list of CIDRs (splitting halves recursively).
fn subtract(net: IpNet, excluded: &[IpNet]) -> Vec<IpNet> {
    if excluded.iter().any(|x| x.contains(&net)) {
        return vec![];
    }
    if !excluded.iter().any(|x| net.contains(x)) {
        return vec![net];
    }
    match net.subnets(net.prefix_len() + 1) {
        Ok(halves) => halves.flat_map(|h| subtract(h, excluded)).collect(),
        Err(_) => vec![],
    }
}

fn protocols(p: Option<L4Protocol>) -> Vec<&'static str> {
    match p {
        Some(L4Protocol::Tcp) => vec!["tcp"],
        Some(L4Protocol::Udp) => vec!["udp"],
        Some(L4Protocol::Sctp) => vec!["sctp"],
        None | Some(L4Protocol::Any) => vec!["tcp", "udp"],
    }
}

/// The port part of a rule as iptables arguments, plus any SNI requirement.
fn port_matches(
    rule: &PeerRule<'_>,
    direction: Direction,
    notes: &mut Vec<String>,
    rule_name: &str,
) -> Vec<(Vec<String>, Vec<String>)> {
    if rule.ports.is_empty() {
        return match rule.icmps {
            true => vec![],
            false => vec![(vec![], vec![])],
        };
    }
    let mut out = Vec::new();
    for port_rule in rule.ports {
        if let Some(l7) = &port_rule.rules
            && (!l7.http.is_empty() || !l7.kafka.is_empty() || l7.l7proto.is_some())
        {
            notes.push(format!(
                "{rule_name}: its L7 rules are not emulated; the port is open at L4"
            ));
        }
        for p in &port_rule.ports {
            let Ok(start) = p.port.parse::<u16>() else {
                notes.push(format!(
                    "{rule_name}: named port `{}` is not resolved here",
                    p.port
                ));
                continue;
            };
            let range = match (start, p.end_port) {
                (0, _) => None,
                (s, Some(e)) if e > s => Some(format!("{s}:{e}")),
                (s, _) => Some(s.to_string()),
            };
            for proto in protocols(p.protocol) {
                let mut args = vec!["-p".to_string(), proto.to_string()];
                if let Some(range) = &range {
                    match direction {
                        Direction::Egress => args.extend(["--dport".into(), range.clone()]),
                        Direction::Ingress => args.extend([
                            "-m".into(),
                            "conntrack".into(),
                            "--ctorigdstport".into(),
                            range.clone(),
                        ]),
                    }
                }
                out.push((args, port_rule.server_names.clone()));
            }
        }
    }
    out
}

/// Compiles the policies that select `pod` into its firewall.
pub fn compile(
    policies: &CiliumPolicies,
    topology: &LabTopology,
    pod: &LabWorkload,
    addressing: &Addressing,
) -> PodFirewall {
    let mut fw = PodFirewall::default();
    let ep = EndpointInfo::from(pod);
    let dns_visible = policies.dns_visible(&ep);
    let selecting: Vec<_> = policies.selecting(&ep).collect();
    let iface = addressing.interface.as_str();
    for (direction, chain, hook, iface_flag) in [
        (Direction::Egress, EGRESS_CHAIN, "OUTPUT", "-o"),
        (Direction::Ingress, INGRESS_CHAIN, "INPUT", "-i"),
    ] {
        let cmd = |parts: &[&str]| parts.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        fw.commands.push(cmd(&["-N", chain]));
        let mut hook_rule = cmd(&["-A", hook, iface_flag, iface]);
        if direction == Direction::Egress {
            // Connections the pod's own redirection sent to its proxy never
            // reach the wire; the proxy's onward connection is what Cilium sees.
            hook_rule.extend(cmd(&["-m", "conntrack", "!", "--ctstate", "DNAT"]));
        }
        hook_rule.extend(cmd(&["-j", chain]));
        fw.commands.push(hook_rule);
        fw.commands.push(cmd(&[
            "-A",
            chain,
            "-m",
            "conntrack",
            "--ctstate",
            "ESTABLISHED,RELATED",
            "-j",
            "ACCEPT",
        ]));
        for deny in [true, false] {
            for entry in &selecting {
                for (rule_name, rule) in CiliumPolicies::rules_of(entry, direction, deny) {
                    if !rule.has_peer_part() && rule.ports.is_empty() {
                        // `{}`: matches nothing; it only switched default deny on.
                        continue;
                    }
                    let name = format!("{} {rule_name}", entry.name);
                    let peers = peer_matches(
                        &rule,
                        direction,
                        entry.namespace.as_deref(),
                        pod,
                        topology,
                        addressing,
                        dns_visible,
                    );
                    let ports = port_matches(&rule, direction, &mut fw.notes, &name);
                    for peer in &peers {
                        for (port, server_names) in &ports {
                            let mut args = vec!["-A".to_string(), chain.to_string()];
                            args.extend(peer.iter().cloned());
                            args.extend(port.iter().cloned());
                            args.extend([
                                "-m".into(),
                                "comment".into(),
                                "--comment".into(),
                                name.clone(),
                            ]);
                            args.extend(["-j".into(), if deny { "DROP" } else { "ACCEPT" }.into()]);
                            fw.commands.push(args);
                            if !deny && direction == Direction::Egress && !server_names.is_empty() {
                                record_sni(&mut fw, &name, peer, port, server_names);
                            }
                        }
                    }
                }
            }
        }
        let enforcing: Vec<&str> = selecting
            .iter()
            .filter(|e| CiliumPolicies::enforces(e, direction))
            .map(|e| e.name.as_str())
            .collect();
        if let Some(first) = enforcing.first() {
            fw.commands.push(cmd(&[
                "-A",
                chain,
                "-m",
                "comment",
                "--comment",
                &format!("default deny ({first})"),
                "-j",
                "DROP",
            ]));
        }
    }
    if !fw.sni.is_empty() {
        fw.notes.push(
            "serverNames: enforced by hbone-lab's SNI relay on the node (Cilium uses its Envoy)"
                .into(),
        );
    }
    fw.notes.sort();
    fw.notes.dedup();
    fw
}

fn record_sni(
    fw: &mut PodFirewall,
    name: &str,
    peer: &[String],
    port: &[String],
    names: &[String],
) {
    let ports: Vec<u16> = port
        .windows(2)
        .filter(|w| w[0] == "--dport")
        .filter_map(|w| w[1].parse().ok())
        .collect();
    let destination = peer.to_vec();
    if let Some(existing) = fw
        .sni
        .iter_mut()
        .find(|s| s.rule == name && s.destination == destination)
    {
        for p in ports {
            if !existing.ports.contains(&p) {
                existing.ports.push(p);
            }
        }
        return;
    }
    fw.sni.push(SniRule {
        rule: name.to_string(),
        ports,
        destination,
        server_names: names.to_vec(),
    });
}
