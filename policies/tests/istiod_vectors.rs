//! istiod's own conversion vectors: every input translates to exactly the
//! `Authorization` istiod emits, byte for byte in its YAML shape.

use std::path::Path;

use hbone_policies::authorization::peer_authn::STATIC_STRICT_NAME;
use hbone_policies::authorization::render::istiod_yaml;
use hbone_policies::load::{istio_policies, load_file};

fn vectors() -> Vec<(String, std::path::PathBuf, std::path::PathBuf)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/istiod-vectors");
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?.to_string();
            let stem = name.strip_suffix("-in.yaml")?.to_string();
            let golden = dir.join(format!("{stem}.yaml"));
            Some((stem, p, golden))
        })
        .collect();
    out.sort();
    out
}

/// What istiod's converters print for the resources of one file.
fn translate(input: &Path) -> String {
    let loaded = load_file(input).unwrap();
    let crds = istio_policies(&loaded, "istio-system");
    let mesh = crds.translated();
    istiod_yaml(
        mesh.policies()
            .iter()
            .filter(|p| p.name != STATIC_STRICT_NAME),
    )
}

#[test]
fn every_istiod_vector_translates_exactly() {
    let cases = vectors();
    assert_eq!(cases.len(), 16, "the 16 vectors of istiod 86c9f01");
    let mut failures = Vec::new();
    for (name, input, golden) in &cases {
        let want = std::fs::read_to_string(golden).unwrap();
        let got = translate(input);
        if got != want {
            failures.push(format!(
                "== {name}\n-- istiod:\n{want}\n-- hbone-lab:\n{got}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} vectors differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
