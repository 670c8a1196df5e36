//! The Cilium → iptables compiler: what each rule kind becomes in a pod's chains.

use std::collections::BTreeMap;

use hbone_policies::cilium::iptables::{Addressing, EGRESS_CHAIN, INGRESS_CHAIN, compile};
use hbone_policies::load::{cilium_policies, parse_documents};
use hbone_policies::topology::{ExternalHost, LabNode, LabTopology, LabWorkload, MeshMode};

fn pod(name: &str, ip: &str, node: &str) -> LabWorkload {
    LabWorkload {
        name: name.into(),
        namespace: "demo".into(),
        service_account: name.into(),
        labels: BTreeMap::from([("app".to_string(), name.to_string())]),
        ip: Some(ip.parse().unwrap()),
        ports: vec![],
        named_ports: BTreeMap::new(),
        mesh: MeshMode::Ambient,
        node: Some(node.into()),
    }
}

fn topology() -> LabTopology {
    LabTopology {
        trust_domain: "cluster.local".into(),
        workloads: vec![
            pod("web", "10.1.1.10", "n1"),
            pod("db", "10.1.2.10", "n2"),
            pod("other", "10.1.1.11", "n1"),
        ],
        nodes: vec![
            LabNode {
                name: "n1".into(),
                ip: "10.1.1.1".parse().unwrap(),
            },
            LabNode {
                name: "n2".into(),
                ip: "10.1.2.1".parse().unwrap(),
            },
        ],
        externals: vec![ExternalHost {
            name: "api.example.com".into(),
            port: 443,
            ip: Some("192.0.2.5".parse().unwrap()),
            tls: true,
        }],
        outside_clients: vec![],
    }
}

/// The rules of `pod` as `iptables -S`-like lines.
fn rules(policy: &str, pod_name: &str) -> (Vec<String>, Vec<String>) {
    let policies = cilium_policies(&parse_documents(policy, "p.yaml").unwrap());
    let topology = topology();
    let w = topology
        .workloads
        .iter()
        .find(|w| w.name == pod_name)
        .unwrap();
    let addressing = Addressing {
        cluster: "10.0.0.0/8".parse().unwrap(),
        interface: "eth0".into(),
    };
    let fw = compile(&policies, &topology, w, &addressing);
    let lines: Vec<String> = fw.commands.iter().map(|c| c.join(" ")).collect();
    let sni: Vec<String> = fw
        .sni
        .iter()
        .map(|s| {
            format!(
                "{} {:?} {} {}",
                s.rule,
                s.ports,
                s.destination.join(" "),
                s.server_names.join(",")
            )
        })
        .collect();
    (lines, sni)
}

const HEAD: &str = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: demo}\nspec:\n";

fn has(lines: &[String], want: &str) {
    assert!(
        lines.iter().any(|l| l == want),
        "missing `{want}` in\n{}",
        lines.join("\n")
    );
}

#[test]
fn chains_hook_the_pod_interface_and_skip_its_own_redirects() {
    let (lines, _) = rules(
        &format!("{HEAD}  endpointSelector: {{matchLabels: {{app: web}}}}\n  egressDeny: [{{}}]\n"),
        "web",
    );
    has(
        &lines,
        &format!("-A OUTPUT -o eth0 -m conntrack ! --ctstate DNAT -j {EGRESS_CHAIN}"),
    );
    has(&lines, &format!("-A INPUT -i eth0 -j {INGRESS_CHAIN}"));
    // `{}` allows and denies nothing: only the default deny remains.
    assert!(
        !lines.iter().any(|l| l.contains("egressDeny[0]")),
        "{lines:#?}"
    );
    has(
        &lines,
        &format!("-A {EGRESS_CHAIN} -m comment --comment default deny (cnp demo/p) -j DROP"),
    );
    // Ingress is not enforced by an egress-only policy.
    assert!(
        !lines
            .iter()
            .any(|l| l.starts_with(&format!("-A {INGRESS_CHAIN} -m comment"))),
        "{lines:#?}"
    );
}

#[test]
fn selectors_entities_cidrs_and_ports_become_addresses_and_ports() {
    let policy = format!(
        "{HEAD}  endpointSelector: {{matchLabels: {{app: web}}}}\n  egress:\n    - toEndpoints: [{{matchLabels: {{app: db}}}}]\n      toPorts: [{{ports: [{{port: \"15008\", protocol: TCP}}]}}]\n    - toEntities: [host, remote-node]\n    - toCIDRSet: [{{cidr: 198.51.100.0/24, except: [198.51.100.0/25]}}]\n      toPorts: [{{ports: [{{port: \"9000\", endPort: 9010}}]}}]\n  ingressDeny:\n    - fromEntities: [world]\n      toPorts: [{{ports: [{{port: \"8000\", protocol: TCP}}]}}]\n"
    );
    let (lines, _) = rules(&policy, "web");
    let c = |rule: &str| format!("-m comment --comment cnp demo/p {rule}");
    has(
        &lines,
        &format!(
            "-A {EGRESS_CHAIN} -d 10.1.2.10/32 -p tcp --dport 15008 {} -j ACCEPT",
            c("egress[0]")
        ),
    );
    has(
        &lines,
        &format!(
            "-A {EGRESS_CHAIN} -d 10.1.1.1/32 {} -j ACCEPT",
            c("egress[1]")
        ),
    );
    has(
        &lines,
        &format!(
            "-A {EGRESS_CHAIN} -d 10.1.2.1/32 {} -j ACCEPT",
            c("egress[1]")
        ),
    );
    // The exception is carved out; ANY protocol is TCP and UDP.
    has(
        &lines,
        &format!(
            "-A {EGRESS_CHAIN} -d 198.51.100.128/25 -p tcp --dport 9000:9010 {} -j ACCEPT",
            c("egress[2]")
        ),
    );
    has(
        &lines,
        &format!(
            "-A {EGRESS_CHAIN} -d 198.51.100.128/25 -p udp --dport 9000:9010 {} -j ACCEPT",
            c("egress[2]")
        ),
    );
    assert!(
        !lines.iter().any(|l| l.contains("198.51.100.0/")),
        "{lines:#?}"
    );
    // Ingress matches the port the client dialed, before the pod's redirect.
    has(
        &lines,
        &format!(
            "-A {INGRESS_CHAIN} ! -s 10.0.0.0/8 -p tcp -m conntrack --ctorigdstport 8000 {} -j DROP",
            c("ingressDeny[0]")
        ),
    );
    // Deny rules come before allow rules.
    let deny_at = lines
        .iter()
        .position(|l| l.contains("ingressDeny[0]"))
        .unwrap();
    let accept_established = lines
        .iter()
        .position(|l| l.starts_with(&format!("-A {INGRESS_CHAIN} -m conntrack --ctstate")))
        .unwrap();
    assert!(accept_established < deny_at);
}

#[test]
fn server_names_are_handed_to_the_node_and_fqdns_need_dns() {
    let policy = format!(
        "{HEAD}  endpointSelector: {{matchLabels: {{app: web}}}}\n  egress:\n    - toEntities: [world]\n      toPorts: [{{ports: [{{port: \"443\", protocol: TCP}}], serverNames: [api.example.com]}}]\n    - toFQDNs: [{{matchName: api.example.com}}]\n      toPorts: [{{ports: [{{port: \"8443\", protocol: TCP}}]}}]\n"
    );
    let (lines, sni) = rules(&policy, "web");
    has(
        &lines,
        &format!(
            "-A {EGRESS_CHAIN} ! -d 10.0.0.0/8 -p tcp --dport 443 -m comment --comment cnp demo/p egress[0] -j ACCEPT"
        ),
    );
    assert_eq!(
        sni,
        ["cnp demo/p egress[0] [443] ! -d 10.0.0.0/8 api.example.com"]
    );
    // Without a DNS rule Cilium never learns the name's addresses.
    assert!(!lines.iter().any(|l| l.contains("192.0.2.5")), "{lines:#?}");
    let with_dns = format!(
        "{policy}    - toEndpoints: [{{matchLabels: {{app: db}}}}]\n      toPorts: [{{ports: [{{port: \"53\", protocol: UDP}}], rules: {{dns: [{{matchPattern: \"*\"}}]}}}}]\n"
    );
    let (lines, _) = rules(&with_dns, "web");
    has(
        &lines,
        &format!(
            "-A {EGRESS_CHAIN} -d 192.0.2.5/32 -p tcp --dport 8443 -m comment --comment cnp demo/p egress[1] -j ACCEPT"
        ),
    );
}
