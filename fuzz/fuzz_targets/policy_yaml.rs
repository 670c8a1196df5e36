//! The policy loader (with the upstream CRD schemas) and both evaluators on
//! arbitrary text: never a panic; for policies that load, the lab's whole
//! matrix is decided the same way twice, and every decision names its
//! reasons.
#![no_main]

use std::collections::BTreeMap;

use hbone_policies::load::parse_documents;
use hbone_policies::matrix::{PolicySet, matrix};
use hbone_policies::topology::{LabTopology, LabWorkload, MeshMode, lab_outside};
use libfuzzer_sys::fuzz_target;

fn workload(name: &str, account: &str, ip: [u8; 4], ports: &[u16], mesh: MeshMode) -> LabWorkload {
    LabWorkload {
        name: name.into(),
        namespace: "demo".into(),
        service_account: account.into(),
        labels: BTreeMap::from([("app".to_string(), name.to_string())]),
        ip: Some(ip.into()),
        ports: ports.to_vec(),
        named_ports: BTreeMap::new(),
        mesh,
        node: None,
    }
}

fn topology() -> LabTopology {
    let (externals, outside_clients) = lab_outside(None, None);
    LabTopology {
        trust_domain: "cluster.local".into(),
        workloads: vec![
            workload(
                "hello-app",
                "hello-app",
                [10, 0, 0, 2],
                &[8000],
                MeshMode::Ambient,
            ),
            workload(
                "postgres",
                "postgres",
                [10, 0, 0, 3],
                &[5432],
                MeshMode::Ambient,
            ),
            workload(
                "hello-gateway",
                "hello-gateway-istio",
                [10, 0, 0, 4],
                &[80],
                MeshMode::HboneClient,
            ),
        ],
        nodes: Vec::new(),
        externals,
        outside_clients,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(loaded) = parse_documents(text, "fuzz.yaml") else {
        return;
    };
    let policies = PolicySet::from_loaded(&loaded);
    let lab = topology();
    let first = matrix(&lab, &policies);
    let again = matrix(&lab, &policies);
    assert_eq!(first.len(), again.len());
    for (a, b) in first.iter().zip(&again) {
        assert_eq!(
            (a.verdict, &a.reasons),
            (b.verdict, &b.reasons),
            "deterministic"
        );
        assert!(
            a.reasons.iter().all(|r| !r.is_empty()),
            "every check says why"
        );
    }
});
