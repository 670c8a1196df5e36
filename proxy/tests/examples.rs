//! The example configs under proxy/examples/ load, and their typos would be caught.

use std::path::Path;

use hbone_proxy::config::ProxyConfig;
use hbone_proxy::registry::Registry;

#[test]
fn example_configs_load() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    for node in ["node-1", "node-2"] {
        let config = ProxyConfig::load(&dir.join(format!("{node}.yaml"))).unwrap();
        assert_eq!(config.node, node);
        let registry = Registry::load(
            config
                .registry
                .as_ref()
                .expect("the examples use a registry file"),
        )
        .unwrap();
        assert!(registry.nodes.iter().any(|n| n.name == node));
        assert!(config.policies[0].join("hello-policy-l4.yaml").is_file());
        assert_eq!(config.h2.max_frame_size, 1024 * 1024);
    }
}

#[test]
fn a_misspelled_field_names_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, "node: n\nregistry: r.yaml\nca: {address: x, rootCert: r, tokenFile: t}\nh2: {streamWindo: 1}\n").unwrap();
    let err = ProxyConfig::load(&path).unwrap_err().to_string();
    assert!(
        err.contains("bad.yaml") && err.contains("h2") && err.contains("streamWindo"),
        "{err}"
    );
}

#[test]
fn the_registry_comes_from_exactly_one_source() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.yaml");
    let ca = "ca: {address: x, rootCert: r, tokenFile: t}\n";
    for (body, ok) in [
        ("registry: r.yaml\n", true),
        ("kubernetes: {pollInterval: 10s}\n", true),
        ("registry: r.yaml\nkubernetes: {}\n", false),
        ("", false),
    ] {
        std::fs::write(&path, format!("node: n\n{body}{ca}")).unwrap();
        match ProxyConfig::load(&path) {
            Ok(config) => {
                assert!(ok, "{body:?} was accepted");
                if let Some(k8s) = config.kubernetes {
                    assert_eq!(k8s.poll_interval, std::time::Duration::from_secs(10));
                    assert_eq!(k8s.trust_domain, "cluster.local");
                }
            }
            Err(e) => {
                assert!(!ok, "{body:?}: {e}");
                assert!(e.to_string().contains("exactly one of"), "{e}");
            }
        }
    }
}
