//! The lab's own policy files parse, and say what the lab claims.

use std::collections::BTreeMap;
use std::path::Path;

use hbone_policies::istio::{ConnectionAttrs, TargetWorkload};
use hbone_policies::load::{istio_policies, load_dir};

fn dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("istio")
}

#[test]
fn the_lab_istio_policies_decide_as_documented() {
    let loaded = load_dir(&dir()).unwrap();
    assert_eq!(loaded.len(), 3);
    let p = istio_policies(&loaded, "istio-system");
    let labels = |app: &str| BTreeMap::from([("app".to_string(), app.to_string())]);
    let (hello, pg) = (labels("hello-app"), labels("postgres"));
    let at = |l| TargetWorkload {
        namespace: "demo",
        labels: l,
    };
    let conn = |principal, port| ConnectionAttrs {
        principal,
        src_ip: "10.0.0.1".parse().unwrap(),
        dst_ip: "10.0.0.2".parse().unwrap(),
        dst_port: port,
    };
    let gw = Some("cluster.local/ns/demo/sa/hello-gateway-istio");
    let app = Some("cluster.local/ns/demo/sa/hello-app");
    let test_pod = Some("cluster.local/ns/demo/sa/test-pod");
    assert!(p.evaluate(&at(&hello), &conn(gw, 8000)).allowed);
    assert!(!p.evaluate(&at(&hello), &conn(gw, 9090)).allowed);
    assert!(!p.evaluate(&at(&hello), &conn(test_pod, 8000)).allowed);
    assert!(p.evaluate(&at(&pg), &conn(app, 5432)).allowed);
    assert!(
        p.evaluate(
            &at(&pg),
            &conn(Some("cluster.local/ns/demo/sa/worker-app"), 5432)
        )
        .allowed
    );
    assert!(!p.evaluate(&at(&pg), &conn(test_pod, 5432)).allowed);
    let plaintext = p.evaluate(&at(&hello), &conn(None, 8000));
    assert!(
        !plaintext.allowed && plaintext.reason.contains("STRICT"),
        "{plaintext}"
    );
}
