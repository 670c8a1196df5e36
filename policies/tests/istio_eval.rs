//! Table-driven tests of Istio L4 evaluation: each field, allow and deny.

use std::collections::BTreeMap;
use std::net::IpAddr;

use hbone_policies::istio::{ConnectionAttrs, IstioPolicies, MtlsMode, TargetWorkload};
use hbone_policies::load::{istio_policies, parse_documents};

fn policies(yaml: &str) -> IstioPolicies {
    istio_policies(&parse_documents(yaml, "test.yaml").unwrap(), "istio-system")
}

fn app_labels() -> BTreeMap<String, String> {
    BTreeMap::from([("app".to_string(), "hello-app".to_string())])
}

const GW: &str = "cluster.local/ns/demo/sa/hello-gateway-istio";
const APP: &str = "cluster.local/ns/demo/sa/hello-app";
const OTHER_NS: &str = "cluster.local/ns/other/sa/client";

struct Case {
    name: &'static str,
    principal: Option<&'static str>,
    src_ip: &'static str,
    port: u16,
    allowed: bool,
    reason_has: &'static str,
}

fn case(
    name: &'static str,
    principal: Option<&'static str>,
    port: u16,
    allowed: bool,
    reason_has: &'static str,
) -> Case {
    Case {
        name,
        principal,
        src_ip: "10.0.0.1",
        port,
        allowed,
        reason_has,
    }
}

fn run(yaml: &str, cases: &[Case]) {
    let p = policies(yaml);
    let labels = app_labels();
    let target = TargetWorkload {
        namespace: "demo",
        labels: &labels,
    };
    for c in cases {
        let conn = ConnectionAttrs {
            principal: c.principal,
            src_ip: c.src_ip.parse::<IpAddr>().unwrap(),
            dst_ip: "10.0.1.5".parse().unwrap(),
            dst_port: c.port,
        };
        let d = p.evaluate(&target, &conn);
        assert_eq!(d.allowed, c.allowed, "{}: {d}", c.name);
        assert!(
            d.reason.contains(c.reason_has),
            "{}: {:?} lacks {:?}",
            c.name,
            d.reason,
            c.reason_has
        );
    }
}

fn allow_policy(rules: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: demo}}\nspec:\n  selector: {{matchLabels: {{app: hello-app}}}}\n  action: ALLOW\n  rules:\n{rules}"
    )
}

#[test]
fn no_policy_means_open() {
    run(
        "",
        &[case(
            "anyone",
            Some(OTHER_NS),
            8000,
            true,
            "open by default",
        )],
    );
}

#[test]
fn principals_exact_prefix_suffix_any_and_not() {
    run(
        &allow_policy(&format!(
            "  - from: [{{source: {{principals: [\"{GW}\"]}}}}]\n"
        )),
        &[
            case(
                "gateway",
                Some(GW),
                8000,
                true,
                "ALLOW policy demo/p rules[0]",
            ),
            case(
                "app",
                Some(APP),
                8000,
                false,
                "no rule of ALLOW policy demo/p",
            ),
            case("plaintext", None, 8000, false, "without identity"),
        ],
    );
    run(
        &allow_policy("  - from: [{source: {principals: [\"cluster.local/ns/demo/*\"]}}]\n"),
        &[
            case("prefix in", Some(APP), 1, true, "rules[0]"),
            case("prefix out", Some(OTHER_NS), 1, false, "no rule"),
        ],
    );
    run(
        &allow_policy("  - from: [{source: {principals: [\"*/sa/hello-app\"]}}]\n"),
        &[
            case("suffix in", Some(APP), 1, true, "rules[0]"),
            case("suffix out", Some(GW), 1, false, "no rule"),
        ],
    );
    run(
        &allow_policy("  - from: [{source: {principals: [\"*\"]}}]\n"),
        &[
            case("any identity", Some(OTHER_NS), 1, true, "rules[0]"),
            case("no identity", None, 1, false, "no rule"),
        ],
    );
    run(
        &allow_policy("  - from: [{source: {notPrincipals: [\"cluster.local/ns/other/*\"]}}]\n"),
        &[
            case("not excluded", Some(APP), 1, true, "rules[0]"),
            case("excluded", Some(OTHER_NS), 1, false, "no rule"),
        ],
    );
    // istiod passes the pattern through as written and ztunnel compares it
    // with the identity stripped of spiffe://, so the spiffe:// form never matches.
    run(
        &allow_policy(&format!(
            "  - from: [{{source: {{principals: [\"spiffe://{APP}\"]}}}}]\n"
        )),
        &[case("with scheme", Some(APP), 1, false, "no rule")],
    );
}

#[test]
fn namespaces_and_service_accounts() {
    run(
        &allow_policy("  - from: [{source: {namespaces: [demo]}}]\n"),
        &[
            case("same ns", Some(APP), 1, true, "rules[0]"),
            case("other ns", Some(OTHER_NS), 1, false, "no rule"),
        ],
    );
    run(
        &allow_policy("  - from: [{source: {notNamespaces: [demo]}}]\n"),
        &[
            case("other ns", Some(OTHER_NS), 1, true, "rules[0]"),
            case("demo", Some(APP), 1, false, "no rule"),
        ],
    );
    run(
        &allow_policy("  - from: [{source: {serviceAccounts: [demo/hello-app]}}]\n"),
        &[
            case("sa", Some(APP), 1, true, "rules[0]"),
            case("other sa", Some(GW), 1, false, "no rule"),
        ],
    );
}

#[test]
fn ports_and_not_ports() {
    run(
        &allow_policy("  - to: [{operation: {ports: [\"8000\"]}}]\n"),
        &[
            case("8000", Some(APP), 8000, true, "rules[0]"),
            case("9000", Some(APP), 9000, false, "port 9000"),
        ],
    );
    run(
        &allow_policy("  - to: [{operation: {notPorts: [\"9000\"]}}]\n"),
        &[
            case("8000", Some(APP), 8000, true, "rules[0]"),
            case("9000", Some(APP), 9000, false, "no rule"),
        ],
    );
}

#[test]
fn ip_blocks() {
    let p =
        allow_policy("  - from: [{source: {ipBlocks: [10.0.0.0/24], notIpBlocks: [10.0.0.9]}}]\n");
    let mut inside = case("inside", Some(APP), 1, true, "rules[0]");
    inside.src_ip = "10.0.0.1";
    let mut excluded = case("excluded", Some(APP), 1, false, "no rule");
    excluded.src_ip = "10.0.0.9";
    let mut outside = case("outside", Some(APP), 1, false, "no rule");
    outside.src_ip = "10.0.5.1";
    run(&p, &[inside, excluded, outside]);
}

#[test]
fn when_conditions_at_l4() {
    run(
        &allow_policy(
            "  - when: [{key: source.namespace, values: [demo]}, {key: destination.port, notValues: [\"22\"]}]\n",
        ),
        &[
            case("both hold", Some(APP), 8000, true, "rules[0]"),
            case("port excluded", Some(APP), 22, false, "no rule"),
            case("wrong ns", Some(OTHER_NS), 8000, false, "no rule"),
        ],
    );
    run(
        &allow_policy(
            "  - when: [{key: source.ip, values: [10.0.0.0/8]}, {key: destination.ip, values: [10.0.1.5]}]\n",
        ),
        &[case("ips", Some(APP), 1, true, "rules[0]")],
    );
}

#[test]
fn deny_wins_over_allow() {
    let yaml = format!(
        "{}---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: d, namespace: demo}}\nspec:\n  action: DENY\n  rules:\n  - from: [{{source: {{principals: [\"{GW}\"]}}}}]\n    to: [{{operation: {{ports: [\"9090\"]}}}}]\n",
        allow_policy("  - {}\n")
    );
    run(
        &yaml,
        &[
            case(
                "denied port",
                Some(GW),
                9090,
                false,
                "DENY policy demo/d rules[0]",
            ),
            case("other port", Some(GW), 8000, true, "ALLOW policy demo/p"),
        ],
    );
}

#[test]
fn l7_attributes_as_istiod_translates_them() {
    run(
        &allow_policy(&format!(
            "  - from: [{{source: {{principals: [\"{GW}\"]}}}}]\n    to: [{{operation: {{methods: [GET]}}}}]\n"
        )),
        &[case(
            "allow with methods never matches",
            Some(GW),
            8000,
            false,
            "no rule",
        )],
    );
    // A DENY keeps what is L4 and drops the rest: an entry with only L7
    // content becomes an empty match, which never holds, so the rule is a no-op.
    let deny_l7 = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: d7, namespace: demo}\nspec:\n  action: DENY\n  rules:\n  - to: [{operation: {paths: [/admin]}}]\n";
    run(
        deny_l7,
        &[case(
            "deny with only paths has no effect",
            Some(GW),
            8000,
            true,
            "open by default",
        )],
    );
    let deny_header = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: dh, namespace: demo}\nspec:\n  action: DENY\n  rules:\n  - when: [{key: \"request.headers[x-user]\", values: [bob]}]\n";
    run(
        deny_header,
        &[case(
            "deny with only an L7 when has no effect",
            Some(APP),
            1,
            true,
            "open by default",
        )],
    );
    // Ports beside methods: the methods go, the ports stay — it denies the whole port.
    let deny_mixed = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: dm, namespace: demo}\nspec:\n  action: DENY\n  rules:\n  - to: [{operation: {ports: [\"9090\"], methods: [POST]}}]\n";
    run(
        deny_mixed,
        &[
            case(
                "deny keeps the port",
                Some(APP),
                9090,
                false,
                "DENY policy demo/dm",
            ),
            case("other ports pass", Some(APP), 8000, true, "open by default"),
        ],
    );
}

#[test]
fn empty_rules_and_empty_rule() {
    let deny_all = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-all, namespace: demo}\nspec: {}\n";
    run(
        deny_all,
        &[case(
            "allow-nothing",
            Some(GW),
            8000,
            false,
            "demo/deny-all",
        )],
    );
    run(
        &allow_policy("  - {}\n"),
        &[case("allow-all rule", None, 8000, true, "rules[0]")],
    );
}

#[test]
fn scope_selector_root_namespace_and_waypoint_policies() {
    let other_selector = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: pg, namespace: demo}\nspec:\n  selector: {matchLabels: {app: postgres}}\n  rules: [{from: [{source: {principals: [x]}}]}]\n";
    run(
        other_selector,
        &[case(
            "selector elsewhere",
            Some(OTHER_NS),
            1,
            true,
            "open by default",
        )],
    );
    let other_ns = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: x, namespace: prod}\nspec: {}\n";
    run(
        other_ns,
        &[case(
            "other namespace",
            Some(OTHER_NS),
            1,
            true,
            "open by default",
        )],
    );
    let mesh_wide = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: mesh, namespace: istio-system}\nspec: {}\n";
    run(
        mesh_wide,
        &[case(
            "root namespace applies everywhere",
            Some(APP),
            1,
            false,
            "istio-system/mesh",
        )],
    );
    let waypoint = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: wp, namespace: demo}\nspec:\n  targetRefs: [{kind: Service, group: \"\", name: hello-app}]\n";
    run(
        waypoint,
        &[case(
            "targetRefs is for waypoints",
            Some(OTHER_NS),
            1,
            true,
            "open by default",
        )],
    );
}

#[test]
fn peer_authentication_levels_and_ports() {
    let p = policies(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: mesh, namespace: istio-system}\nspec: {mtls: {mode: STRICT}}\n---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: app, namespace: demo}\nspec:\n  selector: {matchLabels: {app: hello-app}}\n  mtls: {mode: STRICT}\n  portLevelMtls:\n    9090: {mode: PERMISSIVE}\n",
    );
    let labels = app_labels();
    let target = TargetWorkload {
        namespace: "demo",
        labels: &labels,
    };
    assert_eq!(p.mtls_mode(&target, 8000).mode, MtlsMode::Strict);
    assert_eq!(
        p.mtls_mode(&target, 8000).policy.as_deref(),
        Some("demo/app")
    );
    assert_eq!(p.mtls_mode(&target, 9090).mode, MtlsMode::Permissive);
    let plaintext = |port| ConnectionAttrs {
        principal: None,
        src_ip: "10.0.0.1".parse().unwrap(),
        dst_ip: "10.0.1.5".parse().unwrap(),
        dst_port: port,
    };
    let d = p.evaluate(&target, &plaintext(8000));
    assert!(!d.allowed && d.reason.contains("STRICT"), "{d}");
    assert!(p.evaluate(&target, &plaintext(9090)).allowed);

    // Another namespace falls back to the mesh-wide STRICT; a namespace PERMISSIVE overrides it.
    let none = BTreeMap::new();
    let prod = TargetWorkload {
        namespace: "prod",
        labels: &none,
    };
    assert_eq!(
        p.mtls_mode(&prod, 1).policy.as_deref(),
        Some("istio-system/mesh")
    );
    let p2 = policies(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: mesh, namespace: istio-system}\nspec: {mtls: {mode: STRICT}}\n---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: ns, namespace: prod}\nspec: {mtls: {mode: PERMISSIVE}}\n",
    );
    assert_eq!(p2.mtls_mode(&prod, 1).mode, MtlsMode::Permissive);
    // No PeerAuthentication at all: PERMISSIVE.
    assert_eq!(policies("").mtls_mode(&prod, 1).mode, MtlsMode::Permissive);
}

#[test]
fn typos_are_refused_with_file_and_field() {
    let typo = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: demo}\nspec:\n  rules:\n  - from:\n    - source:\n        principal: [x]\n";
    let err = parse_documents(typo, "policies/istio/p.yaml")
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("policies/istio/p.yaml: document 1 (AuthorizationPolicy demo/p)"),
        "{err}"
    );
    assert!(
        err.contains("spec.rules[0].from[0].source") && err.contains("unknown field `principal`"),
        "{err}"
    );

    let bad_action = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: demo}\nspec: {action: PERMIT}\n";
    let err = parse_documents(bad_action, "f.yaml")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("field `spec.action`") && err.contains("PERMIT"),
        "{err}"
    );

    let top = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p}\nspce: {}\n";
    let err = parse_documents(top, "f.yaml").unwrap_err().to_string();
    assert!(err.contains("unknown field `spce`"), "{err}");
}
