//! The lab's policies applied to the standalone lab's workloads give the
//! committed expected matrix, and the rows the lab is about say why.

use std::path::Path;

use hbone_policies::expect::{differences, load_expected};
use hbone_policies::lab::lab_resources;
use hbone_policies::matrix::{PolicySet, Row, Verdict, matrix};
use hbone_standalone::lab::topology::policy_topology;

fn rows() -> Vec<Row> {
    let policies = PolicySet::from_loaded(&lab_resources().unwrap());
    matrix(&policy_topology(), &policies)
}

fn find<'r>(rows: &'r [Row], src: &str, dst: &str) -> &'r Row {
    rows.iter()
        .find(|r| r.src == src && r.dst == dst)
        .unwrap_or_else(|| panic!("no row {src} → {dst}"))
}

#[test]
fn the_committed_expected_matrix_holds() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/expected-matrix.json");
    let expected = load_expected(&path).unwrap();
    let diffs = differences(&rows(), &expected);
    assert!(diffs.is_empty(), "{diffs:#?}");
}

#[test]
fn the_lab_scenarios_are_decided_by_the_rules_they_are_about() {
    let rows = rows();
    use Verdict::{Allow, Deny};
    // (src, dst, wire port, cilium, istio, text every reason list must hold)
    let cases = [
        (
            "hello-gateway",
            "hello-app",
            15008,
            Allow,
            Allow,
            "demo/hello-app-policy rules[0]",
        ),
        (
            "test-pod",
            "hello-app",
            15008,
            Allow,
            Deny,
            "no rule of ALLOW policy demo/hello-app-policy matches cluster.local/ns/demo/sa/default",
        ),
        (
            "test-pod",
            "postgres",
            15008,
            Deny,
            Deny,
            "cnp demo/default-deny",
        ),
        (
            "hello-app",
            "postgres",
            15008,
            Allow,
            Allow,
            "cnp demo/postgres-ingress ingress[0]",
        ),
        (
            "hello-app",
            "api.github.com",
            443,
            Allow,
            Allow,
            "SNI api.github.com is in serverNames",
        ),
        (
            "hello-app",
            "api.cloudflare.com",
            443,
            Deny,
            Allow,
            "SNI api.cloudflare.com is not in serverNames",
        ),
        ("browser", "hello-app", 8000, Deny, Deny, "STRICT"),
        (
            "kubelet-probe",
            "postgres",
            5432,
            Allow,
            Allow,
            "ccnp allow-ambient-hostprobes",
        ),
    ];
    for (src, dst, wire, cilium, istio, why) in cases {
        let r = find(&rows, src, dst);
        assert_eq!(
            (r.wire_port, r.cilium, r.istio),
            (wire, cilium, istio),
            "{src} → {dst}: {:#?}",
            r.reasons
        );
        assert_eq!(r.verdict.allowed(), cilium.allowed() && istio.allowed());
        assert!(
            r.reasons.iter().any(|reason| reason.contains(why)),
            "{src} → {dst}: `{why}` not in {:#?}",
            r.reasons
        );
    }
}
