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

/// Every YAML file under policies/istio and policies/cilium is compiled in,
/// and everything compiled in parses and passes the upstream schemas.
#[test]
fn the_compiled_in_list_is_the_directories() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut on_disk = Vec::new();
    for sub in ["istio", "cilium"] {
        for entry in std::fs::read_dir(root.join(sub)).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            if name.ends_with(".yaml") || name.ends_with(".yml") {
                on_disk.push(format!("{sub}/{name}"));
            }
        }
    }
    on_disk.sort();
    let mut compiled: Vec<String> = hbone_policies::lab::LAB_POLICY_FILES
        .iter()
        .map(|(f, _)| f.to_string())
        .collect();
    compiled.sort();
    assert_eq!(compiled, on_disk);
    let resources = hbone_policies::lab::lab_resources().unwrap();
    let kinds: Vec<String> = resources.iter().map(|l| l.resource.describe()).collect();
    assert!(
        kinds.contains(&"CiliumClusterwideNetworkPolicy allow-ambient-hostprobes".to_string()),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&"CiliumNetworkPolicy demo/default-deny".to_string()),
        "{kinds:?}"
    );
    let cilium = hbone_policies::load::cilium_policies(&resources);
    assert!(cilium.warnings().is_empty(), "{:?}", cilium.warnings());
}

/// Mesh traffic crosses the wire on 15008: no rule of the lab's Cilium
/// policies between pods of `demo` may name an application port instead.
#[test]
fn pod_to_pod_cilium_rules_name_the_hbone_port() {
    let resources = hbone_policies::lab::lab_resources().unwrap();
    let cilium = hbone_policies::load::cilium_policies(&resources);
    for entry in &cilium.entries {
        for rule in &entry.rule.egress {
            let to_demo_pods = rule.to_endpoints.iter().any(|s| {
                !s.match_labels
                    .keys()
                    .any(|k| k.ends_with("io.kubernetes.pod.namespace"))
            });
            if to_demo_pods {
                for ports in &rule.to_ports {
                    for p in &ports.ports {
                        assert_eq!(p.port, "15008", "{}: {rule:?}", entry.name);
                    }
                }
            }
        }
    }
}

/// A rule Istio's CRD states beside its schema, which the API server
/// enforces: serviceAccounts may not stand beside principals or namespaces.
/// The file, the document and the source are named.
#[test]
fn service_accounts_beside_principals_are_refused_as_the_api_server_refuses_them() {
    let yaml = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: demo}\nspec:\n  rules:\n  - from: [{source: {principals: [cluster.local/ns/demo/sa/a]}}, {source: {serviceAccounts: [demo/b], namespaces: [demo]}}]\n";
    let err = hbone_policies::load::parse_documents(yaml, "mine.yaml")
        .unwrap_err()
        .to_string();
    for part in [
        "mine.yaml",
        "spec.rules[0].from[1].source",
        "Cannot set serviceAccounts with namespaces or principals",
    ] {
        assert!(err.contains(part), "{err} lacks {part}");
    }
    let alone = yaml.replace(", namespaces: [demo]", "");
    assert!(hbone_policies::load::parse_documents(&alone, "mine.yaml").is_ok());
}
