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
        let registry = Registry::load(&config.registry).unwrap();
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
