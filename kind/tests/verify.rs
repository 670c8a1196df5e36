//! `kind verify` against a fake of the Kubernetes API (no cluster can run
//! here): a healthy lab passes, and each failure it looks for is reported
//! with what and why.

use std::path::Path;

use hbone_kind::fake_cluster::FakeCluster;
use hbone_kind::verify::{PodInfo, Report, VerifyOptions, probe_for, resource_refs, verify};
use hbone_policies::lab::lab_resources;
use hbone_policies::load::Loaded;
use hbone_policies::matrix::{PolicySet, matrix};
use hbone_policies::topology::LabTopology;

fn lab() -> (LabTopology, Vec<Loaded>) {
    let manifests =
        hbone_kind::manifests::load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests"))
            .unwrap();
    (
        hbone_kind::topology::topology(&manifests),
        lab_resources().unwrap(),
    )
}

fn options() -> VerifyOptions {
    VerifyOptions {
        namespace: "demo".into(),
        image: "hbone-lab:dev".into(),
        connectivity: true,
    }
}

/// A cluster that is exactly the lab: every probe behaves as predicted
/// (refused by identity exits 1, dropped by Cilium exits 2).
fn healthy(topology: &LabTopology, resources: &[Loaded]) -> FakeCluster {
    let mut fake = FakeCluster {
        pods: topology
            .workloads
            .iter()
            .map(|w| PodInfo {
                name: format!("{}-7d9f", w.name),
                labels: w.labels.clone(),
                ready: true,
                node: None,
            })
            .collect(),
        resources: resource_refs(resources).into_iter().collect(),
        peer_authentication: Some("STRICT".into()),
        ..Default::default()
    };
    fake.service_types
        .insert("hello-gateway-istio".into(), "ClusterIP".into());
    let policies = PolicySet::from_loaded(resources);
    for (i, row) in matrix(topology, &policies).into_iter().enumerate() {
        if let Some(spec) = probe_for(&row, topology, &options(), i) {
            let code = match (row.verdict.allowed(), row.cilium.allowed()) {
                (true, _) => 0,
                (false, true) => 1,
                (false, false) => 2,
            };
            fake.probe_outcomes.insert(
                (spec.service_account.clone(), FakeCluster::target_of(&spec)),
                code,
            );
        }
    }
    fake
}

async fn run(fake: &FakeCluster, topology: &LabTopology, resources: &[Loaded]) -> Report {
    verify(fake, topology, resources, &options()).await.unwrap()
}

#[tokio::test]
async fn a_healthy_lab_passes_every_check_and_probes_as_each_source() {
    let (topology, resources) = lab();
    let fake = healthy(&topology, &resources);
    let report = run(&fake, &topology, &resources).await;
    assert!(report.ok(), "{:#?}", report.differences());
    assert!(report.checks.len() > 15, "{}", report.checks.len());
    // Every row whose source is a pod was probed: 5 pods × (3 ports + 2 outside) − 3 to themselves.
    assert_eq!(report.connectivity.len(), 22);
    let probes = fake.probes_run.lock().unwrap().clone();
    let test_pod_to_pg = probes
        .iter()
        .find(|p| {
            p.service_account == "default" && FakeCluster::target_of(p).starts_with("postgres.")
        })
        .unwrap();
    assert_eq!(
        test_pod_to_pg.labels["run"], "test-pod",
        "the probe wears the source's labels"
    );
    assert_eq!(test_pod_to_pg.labels["hbone-lab.dev/probe"], "true");
    assert_eq!(
        test_pod_to_pg.args,
        [
            "app",
            "probe",
            "postgres.demo.svc.cluster.local:5432",
            "--kind",
            "postgres",
            "--timeout",
            "5s"
        ]
    );
    assert!(
        probes
            .iter()
            .any(|p| p.service_account == "hello-gateway-istio"
                && FakeCluster::target_of(p) == "hello-app.demo.svc.cluster.local:8000"),
        "the gateway's identity is probed too"
    );
    assert!(
        probes
            .iter()
            .any(|p| FakeCluster::target_of(p) == "api.cloudflare.com:443" && p.args[4] == "tls")
    );
}

#[tokio::test]
async fn each_failure_is_reported_with_what_and_why() {
    let (topology, resources) = lab();
    type Break = fn(&mut FakeCluster);
    let cases: [(&str, Break, &str); 6] = [
        (
            "pod not ready",
            |f| {
                f.pods
                    .iter_mut()
                    .filter(|p| p.labels.get("app").is_some_and(|a| a == "hello-app"))
                    .for_each(|p| p.ready = false)
            },
            "pod hello-app ready: 1 pod(s), none ready",
        ),
        (
            "policy missing",
            |f| f.resources.retain(|r| r.name != "postgres-ingress"),
            "CiliumNetworkPolicy demo/postgres-ingress present: missing",
        ),
        (
            "gateway exposed",
            |f| {
                f.service_types
                    .insert("hello-gateway-istio".into(), "LoadBalancer".into());
            },
            "service hello-gateway-istio is ClusterIP: type LoadBalancer",
        ),
        (
            "mTLS permissive",
            |f| f.peer_authentication = Some("PERMISSIVE".into()),
            "PeerAuthentication demo/default is STRICT: mode PERMISSIVE",
        ),
        (
            "test pod reaches postgres",
            |f| {
                f.probe_outcomes.insert(
                    (
                        "default".into(),
                        "postgres.demo.svc.cluster.local:5432".into(),
                    ),
                    0,
                );
            },
            "test-pod → postgres:5432: predicted deny, observed allow (fake outcome 0); the rules: cilium egress: default deny",
        ),
        (
            "a probe cannot run",
            |f| {
                f.probe_outcomes
                    .remove(&("hello-app".into(), "api.github.com:443".into()));
            },
            "hello-app → api.github.com:443: predicted allow, observed unknown",
        ),
    ];
    for (name, break_it, expected) in cases {
        let mut fake = healthy(&topology, &resources);
        break_it(&mut fake);
        let report = run(&fake, &topology, &resources).await;
        assert!(!report.ok(), "{name}: not detected");
        let differences = report.differences();
        assert_eq!(differences.len(), 1, "{name}: {differences:#?}");
        assert!(
            differences[0].starts_with(expected),
            "{name}: {}",
            differences[0]
        );
    }
}

/// hbone-lab as the node proxy of one worker (HBONE_NODE_PROXY): hello-app
/// on its node, the rest on ztunnel's. verify checks the swap and runs each
/// probe from the node of the other implementation, saying which way it crossed.
#[tokio::test]
async fn with_hbone_lab_as_a_node_proxy_every_probe_crosses_implementations() {
    use hbone_kind::node_proxy::{self, NodeInfo};
    let (topology, resources) = lab();
    let mut fake = healthy(&topology, &resources);
    let node = |name: &str, labels: &[(&str, &str)]| NodeInfo {
        name: name.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    };
    fake.nodes = vec![
        node("cp", &[("node-role.kubernetes.io/control-plane", "")]),
        node("w1", &[]),
        node("w2", &[(node_proxy::LABEL, node_proxy::VALUE)]),
    ];
    for pod in &mut fake.pods {
        let on_hbone_lab = pod.labels.get("app").is_some_and(|a| a == "hello-app");
        pod.node = Some(if on_hbone_lab { "w2" } else { "w1" }.into());
    }
    let system = |app: &str, node: &str| PodInfo {
        name: format!("{app}-x"),
        labels: [("app".to_string(), app.to_string())].into(),
        ready: true,
        node: Some(node.into()),
    };
    fake.system_pods = vec![
        system(node_proxy::DAEMONSET, "w2"),
        system(node_proxy::ZTUNNEL_APP, "w1"),
    ];
    let report = run(&fake, &topology, &resources).await;
    assert!(report.ok(), "{:#?}", report.differences());
    assert!(
        report
            .checks
            .iter()
            .any(|c| c.name == "hbone-lab is the node proxy of w2" && c.ok)
    );
    let probes = fake.probes_run.lock().unwrap().clone();
    assert!(
        probes.iter().all(|p| p.node.is_some()),
        "every probe is placed"
    );
    for p in &probes {
        let to_hello = FakeCluster::target_of(p).starts_with("hello-app.");
        let want = if to_hello { "w1" } else { "w2" };
        assert_eq!(p.node.as_deref(), Some(want), "{p:?}");
    }
    let to_hello = report
        .connectivity
        .iter()
        .find(|o| o.row.dst == "hello-app" && o.row.port == 8000)
        .unwrap();
    assert!(
        to_hello.detail.starts_with("[ztunnel → hbone-lab]"),
        "{}",
        to_hello.detail
    );
    let to_pg = report
        .connectivity
        .iter()
        .find(|o| o.row.dst == "postgres")
        .unwrap();
    assert!(
        to_pg.detail.starts_with("[hbone-lab → ztunnel]"),
        "{}",
        to_pg.detail
    );

    // Both proxies on one node: reported, with what goes wrong.
    fake.system_pods.push(system(node_proxy::ZTUNNEL_APP, "w2"));
    fake.probes_run.lock().unwrap().clear();
    let report = run(&fake, &topology, &resources).await;
    let differences = report.differences().join("\n");
    assert!(
        differences.contains("ztunnel is off w2") && differences.contains("both would claim"),
        "{differences}"
    );
}
