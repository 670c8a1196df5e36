//! Table-driven tests of Cilium L3/L4 evaluation: each rule kind, allowing
//! and denying, with the deciding policy and rule checked.

use std::collections::BTreeMap;

use hbone_policies::cilium::{CiliumPolicies, EndpointInfo, Flow, L4Protocol, Peer};
use hbone_policies::load::{cilium_policies, parse_documents};

fn policies(yaml: &str) -> CiliumPolicies {
    cilium_policies(&parse_documents(yaml, "test.yaml").unwrap())
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A pod to test against: namespace, labels, service account, named ports.
struct Pod {
    ns: &'static str,
    labels: BTreeMap<String, String>,
    sa: &'static str,
    named: BTreeMap<String, u16>,
}

impl Pod {
    fn new(ns: &'static str, app: &str) -> Self {
        Pod {
            ns,
            labels: labels(&[("app", app)]),
            sa: "default",
            named: BTreeMap::from([("http".to_string(), 8080)]),
        }
    }

    fn info(&self) -> EndpointInfo<'_> {
        EndpointInfo {
            namespace: self.ns,
            labels: &self.labels,
            service_account: self.sa,
            named_ports: &self.named,
        }
    }

    fn peer(&self) -> Peer<'_> {
        Peer::Endpoint(self.info())
    }
}

fn tcp(port: u16) -> Flow<'static> {
    Flow {
        port,
        protocol: L4Protocol::Tcp,
        sni: None,
    }
}

fn world(ip: &str, name: Option<&'static str>) -> Peer<'static> {
    Peer::World {
        ip: Some(ip.parse().unwrap()),
        name,
    }
}

/// Expect an ingress verdict at `dst` and a reason containing `has`.
fn ingress(
    p: &CiliumPolicies,
    dst: &Pod,
    src: &Peer<'_>,
    flow: Flow<'_>,
    allowed: bool,
    has: &str,
) {
    let d = p.ingress(&dst.info(), src, &flow);
    assert_eq!(d.allowed, allowed, "{d}");
    assert!(d.reason.contains(has), "expected `{has}` in: {d}");
}

fn egress(p: &CiliumPolicies, src: &Pod, dst: &Peer<'_>, flow: Flow<'_>, allowed: bool, has: &str) {
    let d = p.egress(&src.info(), dst, &flow);
    assert_eq!(d.allowed, allowed, "{d}");
    assert!(d.reason.contains(has), "expected `{has}` in: {d}");
}

const HEADER: &str =
    "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: demo}\n";

fn cnp(spec: &str) -> CiliumPolicies {
    policies(&format!("{HEADER}spec:\n{spec}"))
}

#[test]
fn nothing_is_enforced_until_a_policy_selects_the_endpoint() {
    let p = cnp(
        "  endpointSelector: {matchLabels: {app: db}}\n  ingress: [{fromEndpoints: [{matchLabels: {app: web}}]}]\n",
    );
    let (web, db, other) = (
        Pod::new("demo", "web"),
        Pod::new("demo", "db"),
        Pod::new("demo", "other"),
    );
    ingress(&p, &other, &web.peer(), tcp(1), true, "not enforced");
    ingress(
        &p,
        &db,
        &web.peer(),
        tcp(5432),
        true,
        "allowed by cnp demo/p ingress[0]",
    );
    ingress(
        &p,
        &db,
        &other.peer(),
        tcp(5432),
        false,
        "default deny (switched on by cnp demo/p)",
    );
    // An ingress-only policy leaves egress alone.
    egress(&p, &db, &other.peer(), tcp(1), true, "not enforced");
}

#[test]
fn selectors_match_labels_and_expressions() {
    let cases = [
        ("{matchLabels: {app: web}}", "web", true),
        ("{matchLabels: {app: web}}", "api", false),
        (
            "{matchExpressions: [{key: app, operator: In, values: [web, api]}]}",
            "api",
            true,
        ),
        (
            "{matchExpressions: [{key: app, operator: NotIn, values: [web]}]}",
            "web",
            false,
        ),
        (
            "{matchExpressions: [{key: app, operator: NotIn, values: [web]}]}",
            "api",
            true,
        ),
        (
            "{matchExpressions: [{key: app, operator: Exists}]}",
            "api",
            true,
        ),
        (
            "{matchExpressions: [{key: tier, operator: Exists}]}",
            "api",
            false,
        ),
        (
            "{matchExpressions: [{key: tier, operator: DoesNotExist}]}",
            "api",
            true,
        ),
        ("{matchLabels: {'k8s:app': web}}", "web", true),
        (
            "{matchLabels: {io.cilium.k8s.policy.serviceaccount: default}}",
            "web",
            true,
        ),
    ];
    let db = Pod::new("demo", "db");
    for (selector, app, allowed) in cases {
        let p = cnp(&format!(
            "  endpointSelector: {{matchLabels: {{app: db}}}}\n  ingress: [{{fromEndpoints: [{selector}]}}]\n"
        ));
        let src = Pod::new("demo", app);
        let d = p.ingress(&db.info(), &src.peer(), &tcp(5432));
        assert_eq!(d.allowed, allowed, "{selector} vs app={app}: {d}");
    }
}

#[test]
fn namespaced_policies_see_their_own_namespace_unless_told_otherwise() {
    let db = Pod::new("demo", "db");
    let web_demo = Pod::new("demo", "web");
    let web_other = Pod::new("other", "web");
    let implicit = cnp(
        "  endpointSelector: {matchLabels: {app: db}}\n  ingress: [{fromEndpoints: [{matchLabels: {app: web}}]}]\n",
    );
    ingress(
        &implicit,
        &db,
        &web_demo.peer(),
        tcp(1),
        true,
        "endpoint selector",
    );
    ingress(
        &implicit,
        &db,
        &web_other.peer(),
        tcp(1),
        false,
        "default deny",
    );
    let explicit = cnp(
        "  endpointSelector: {matchLabels: {app: db}}\n  ingress: [{fromEndpoints: [{matchLabels: {app: web, k8s:io.kubernetes.pod.namespace: other}}]}]\n",
    );
    ingress(
        &explicit,
        &db,
        &web_other.peer(),
        tcp(1),
        true,
        "endpoint selector",
    );
    ingress(
        &explicit,
        &db,
        &web_demo.peer(),
        tcp(1),
        false,
        "default deny",
    );
    // The policy selects only endpoints of its own namespace.
    let db_other = Pod::new("other", "db");
    ingress(
        &implicit,
        &db_other,
        &web_demo.peer(),
        tcp(1),
        true,
        "not enforced",
    );
    // An empty selector is the whole namespace.
    let all_ns =
        cnp("  endpointSelector: {matchLabels: {app: db}}\n  ingress: [{fromEndpoints: [{}]}]\n");
    ingress(
        &all_ns,
        &db,
        &web_demo.peer(),
        tcp(1),
        true,
        "endpoint selector",
    );
    ingress(
        &all_ns,
        &db,
        &web_other.peer(),
        tcp(1),
        false,
        "default deny",
    );
}

#[test]
fn clusterwide_policies_select_every_namespace() {
    let p = policies(
        "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: cw}\nspec:\n  endpointSelector: {matchLabels: {app: db}}\n  ingress: [{fromEndpoints: [{matchLabels: {app: web}}]}]\n",
    );
    let db_other = Pod::new("other", "db");
    let web_demo = Pod::new("demo", "web");
    ingress(
        &p,
        &db_other,
        &web_demo.peer(),
        tcp(1),
        true,
        "allowed by ccnp cw ingress[0]",
    );
}

#[test]
fn entities() {
    let pod = Pod::new("demo", "web");
    let cases: [(&str, Peer<'_>, bool); 12] = [
        ("world", world("8.8.8.8", None), true),
        ("world", pod.peer(), false),
        ("cluster", pod.peer(), true),
        ("cluster", Peer::Host, true),
        ("cluster", world("8.8.8.8", None), false),
        ("host", Peer::Host, true),
        ("host", Peer::RemoteNode, false),
        ("remote-node", Peer::RemoteNode, true),
        ("kube-apiserver", Peer::KubeApiserver, true),
        ("kube-apiserver", Peer::Host, false),
        ("all", world("8.8.8.8", None), true),
        ("all", Peer::KubeApiserver, true),
    ];
    let db = Pod::new("demo", "db");
    for (entity, peer, allowed) in cases {
        let p = cnp(&format!(
            "  endpointSelector: {{matchLabels: {{app: db}}}}\n  ingress: [{{fromEntities: [{entity}]}}]\n"
        ));
        let d = p.ingress(&db.info(), &peer, &tcp(80));
        assert_eq!(d.allowed, allowed, "{entity} vs {peer:?}: {d}");
        if allowed {
            assert!(d.reason.contains(&format!("entity {entity}")), "{d}");
        }
    }
}

#[test]
fn cidrs_with_exceptions_match_only_outside_the_cluster() {
    let p = cnp(
        "  endpointSelector: {matchLabels: {app: web}}\n  egress:\n    - toCIDR: [192.0.2.0/24]\n    - toCIDRSet: [{cidr: 10.0.0.0/8, except: [10.1.0.0/16]}]\n",
    );
    let web = Pod::new("demo", "web");
    egress(
        &p,
        &web,
        &world("192.0.2.7", None),
        tcp(1),
        true,
        "CIDR 192.0.2.0/24",
    );
    egress(
        &p,
        &web,
        &world("10.2.3.4", None),
        tcp(1),
        true,
        "CIDR 10.0.0.0/8",
    );
    egress(
        &p,
        &web,
        &world("10.1.3.4", None),
        tcp(1),
        false,
        "default deny",
    );
    egress(
        &p,
        &web,
        &world("198.51.100.1", None),
        tcp(1),
        false,
        "default deny",
    );
    // A pod is never matched by a CIDR, whatever its address.
    egress(
        &p,
        &web,
        &Pod::new("demo", "db").peer(),
        tcp(1),
        false,
        "default deny",
    );
}

#[test]
fn ports_ranges_protocols_and_names() {
    let spec = "  endpointSelector: {matchLabels: {app: db}}\n  ingress:\n    - toPorts:\n        - ports:\n            - {port: \"5432\", protocol: TCP}\n            - {port: \"9000\", endPort: 9010}\n            - {port: \"53\", protocol: UDP}\n            - {port: http}\n";
    let p = cnp(spec);
    let db = Pod::new("demo", "db");
    let web_pod = Pod::new("demo", "web");
    let web = web_pod.peer();
    let udp = |port| Flow {
        port,
        protocol: L4Protocol::Udp,
        sni: None,
    };
    let cases = [
        (tcp(5432), true),
        (tcp(5433), false),
        (udp(5432), false),
        (tcp(9005), true),
        (tcp(9011), false),
        (udp(53), true),
        (tcp(53), false),
    ];
    for (flow, allowed) in cases {
        let d = p.ingress(&db.info(), &web, &flow);
        assert_eq!(d.allowed, allowed, "{flow:?}: {d}");
        if allowed {
            assert!(
                d.reason.contains("any peer"),
                "ports-only rules match every peer: {d}"
            );
        }
    }
    // Named ports resolve against the destination's container ports.
    let p = cnp(
        "  endpointSelector: {matchLabels: {app: web}}\n  egress: [{toEndpoints: [{}], toPorts: [{ports: [{port: http}]}]}]\n",
    );
    let src = Pod::new("demo", "web");
    let dst = Pod::new("demo", "api");
    egress(&p, &src, &dst.peer(), tcp(8080), true, "port 8080");
    egress(&p, &src, &dst.peer(), tcp(8081), false, "default deny");
    // Port 0 is every port.
    let p = cnp(
        "  endpointSelector: {matchLabels: {app: web}}\n  egress: [{toEndpoints: [{}], toPorts: [{ports: [{port: \"0\", protocol: TCP}]}]}]\n",
    );
    egress(&p, &src, &dst.peer(), tcp(31337), true, "allowed");
}

#[test]
fn deny_rules_win_over_allow_rules() {
    let yaml = format!(
        "{HEADER}spec:\n  endpointSelector: {{matchLabels: {{app: db}}}}\n  ingress: [{{fromEntities: [all]}}]\n---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: no-web, namespace: demo}}\nspec:\n  endpointSelector: {{matchLabels: {{app: db}}}}\n  ingressDeny: [{{fromEndpoints: [{{matchLabels: {{app: web}}}}], toPorts: [{{ports: [{{port: \"5432\"}}]}}]}}]\n"
    );
    let p = policies(&yaml);
    let db = Pod::new("demo", "db");
    ingress(
        &p,
        &db,
        &Pod::new("demo", "web").peer(),
        tcp(5432),
        false,
        "denied by cnp demo/no-web ingressDeny[0]",
    );
    ingress(
        &p,
        &db,
        &Pod::new("demo", "web").peer(),
        tcp(5433),
        true,
        "allowed by cnp demo/p",
    );
    ingress(
        &p,
        &db,
        &Pod::new("demo", "api").peer(),
        tcp(5432),
        true,
        "allowed by cnp demo/p",
    );
}

#[test]
fn empty_rules_only_switch_default_deny_on() {
    let p = cnp("  endpointSelector: {}\n  ingressDeny: [{}]\n  egressDeny: [{}]\n");
    let db = Pod::new("demo", "db");
    let web = Pod::new("demo", "web");
    ingress(
        &p,
        &db,
        &web.peer(),
        tcp(1),
        false,
        "default deny (switched on by cnp demo/p)",
    );
    egress(&p, &db, &web.peer(), tcp(1), false, "no egress rule allows");
    // `ingress: [{}]` allows nothing either.
    let p = cnp("  endpointSelector: {}\n  ingress: [{}]\n");
    ingress(&p, &db, &web.peer(), tcp(1), false, "default deny");
}

#[test]
fn enable_default_deny_false_only_adds() {
    let p = policies(
        "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: probes}\nspec:\n  endpointSelector: {}\n  enableDefaultDeny: {ingress: false, egress: false}\n  ingress: [{fromCIDR: [169.254.7.127/32]}]\n",
    );
    let db = Pod::new("demo", "db");
    // Not in default deny: everything else still passes.
    ingress(
        &p,
        &db,
        &Pod::new("demo", "web").peer(),
        tcp(1),
        true,
        "not enforced",
    );
    ingress(
        &p,
        &db,
        &world("169.254.7.127", None),
        tcp(1),
        true,
        "ccnp probes ingress[0]",
    );
}

#[test]
fn icmp_only_rules_do_not_allow_tcp() {
    let p = cnp(
        "  endpointSelector: {matchLabels: {app: db}}\n  ingress: [{fromEntities: [all], icmps: [{fields: [{type: 8, family: IPv4}]}]}]\n",
    );
    ingress(
        &p,
        &Pod::new("demo", "db"),
        &Pod::new("demo", "web").peer(),
        tcp(1),
        false,
        "default deny",
    );
}

#[test]
fn server_names_need_a_matching_sni() {
    let p = cnp(
        "  endpointSelector: {matchLabels: {app: web}}\n  egress: [{toEntities: [world], toPorts: [{ports: [{port: \"443\", protocol: TCP}], serverNames: [api.github.com, \"*.example.com\", \"**.deep.example\"]}]}]\n",
    );
    let web = Pod::new("demo", "web");
    let tls = |sni| Flow {
        port: 443,
        protocol: L4Protocol::Tcp,
        sni: Some(sni),
    };
    let cases = [
        ("api.github.com", true),
        ("api.cloudflare.com", false),
        ("a.example.com", true),
        ("a.b.example.com", false),
        ("example.com", false),
        ("a.b.deep.example", true),
        ("deep.example", false),
    ];
    let dst = world("140.82.112.6", None);
    for (sni, allowed) in cases {
        let d = p.egress(&web.info(), &dst, &tls(sni));
        assert_eq!(d.allowed, allowed, "{sni}: {d}");
        if !allowed {
            assert!(d.reason.contains("not in serverNames"), "{d}");
        }
    }
    egress(
        &p,
        &web,
        &dst,
        tcp(443),
        false,
        "needs a TLS ClientHello with SNI",
    );
}

#[test]
fn fqdns_need_dns_visibility() {
    let rule = "  endpointSelector: {matchLabels: {app: web}}\n  egress:\n    - toFQDNs: [{matchName: api.github.com}, {matchPattern: \"*.githubusercontent.com\"}]\n      toPorts: [{ports: [{port: \"443\"}]}]\n";
    let web = Pod::new("demo", "web");
    let blind = cnp(rule);
    egress(
        &blind,
        &web,
        &world("140.82.112.6", Some("api.github.com")),
        tcp(443),
        false,
        "no DNS rule",
    );
    let dns = "    - toEndpoints: [{matchLabels: {k8s:io.kubernetes.pod.namespace: kube-system, k8s-app: kube-dns}}]\n      toPorts: [{ports: [{port: \"53\", protocol: UDP}], rules: {dns: [{matchPattern: \"*\"}]}}]\n";
    let seeing = cnp(&format!("{rule}{dns}"));
    egress(
        &seeing,
        &web,
        &world("140.82.112.6", Some("api.github.com")),
        tcp(443),
        true,
        "toFQDNs api.github.com",
    );
    egress(
        &seeing,
        &web,
        &world("185.199.108.133", Some("raw.githubusercontent.com")),
        tcp(443),
        true,
        "toFQDNs *.githubusercontent.com",
    );
    egress(
        &seeing,
        &web,
        &world("104.16.0.1", Some("api.cloudflare.com")),
        tcp(443),
        false,
        "default deny",
    );
    // The DNS rule itself: kube-dns on 53/UDP, seen by the DNS proxy.
    let kube_dns = Pod {
        ns: "kube-system",
        labels: labels(&[("k8s-app", "kube-dns")]),
        sa: "coredns",
        named: BTreeMap::new(),
    };
    let udp53 = Flow {
        port: 53,
        protocol: L4Protocol::Udp,
        sni: None,
    };
    egress(
        &seeing,
        &web,
        &kube_dns.peer(),
        udp53,
        true,
        "DNS queries filtered",
    );
}

#[test]
fn misspelled_cilium_policies_are_refused_with_file_and_field() {
    let cases = [
        (
            "  endpointSelector: {}\n  egress: [{toEndpoint: [{}]}]\n",
            "spec.egress[0].toEndpoint",
            "unknown field `toEndpoint`",
        ),
        (
            "  endpointSelector: {}\n  ingress: [{toPorts: [{ports: [{port: 5432}]}]}]\n",
            "spec.ingress[0].toPorts[0].ports[0].port",
            "quote it",
        ),
        (
            "  endpointSelector: {}\n  ingress: [{fromEntities: [internet]}]\n",
            "spec.ingress[0].fromEntities[0]",
            "is not one of",
        ),
        (
            "  endpointSelector: {}\n  ingressDeny: [{authentication: {mode: required}}]\n",
            "spec.ingressDeny[0].authentication",
            "unknown field",
        ),
    ];
    for (spec, field, message) in cases {
        let err = parse_documents(&format!("{HEADER}spec:\n{spec}"), "policies/cilium/x.yaml")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("policies/cilium/x.yaml: document 1 (CiliumNetworkPolicy demo/p)"),
            "{err}"
        );
        assert!(err.contains(&format!("field `{field}`")), "{err}");
        assert!(err.contains(message), "{err}");
    }
    let err = parse_documents(&format!("{HEADER}specs: []\n"), "x.yaml")
        .unwrap_err()
        .to_string();
    assert!(err.contains("one document per rule"), "{err}");
}
