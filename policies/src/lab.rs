//! The lab's own policies, compiled into the binary from `policies/istio/`
//! and `policies/cilium/` — the one copy that the standalone lab, the kind
//! lab and `hbone-lab policy check` all read. A test checks that this list
//! and the directories agree, so a new file cannot be forgotten.

use crate::load::{LoadError, Loaded, parse_documents};

macro_rules! lab_file {
    ($path:literal) => {
        ($path, include_str!(concat!("../", $path)))
    };
}

/// `(path relative to policies/, text)`, in the order they are applied.
pub const LAB_POLICY_FILES: &[(&str, &str)] = &[
    lab_file!("istio/peer-authentication.yaml"),
    lab_file!("istio/hello-policy-l4.yaml"),
    lab_file!("istio/postgres-policy-l4.yaml"),
    lab_file!("cilium/00-base.yaml"),
    lab_file!("cilium/01-istio-ambient.yaml"),
    lab_file!("cilium/02-hello-app.yaml"),
    lab_file!("cilium/03-postgres.yaml"),
    lab_file!("cilium/04-gateway.yaml"),
    lab_file!("cilium/05-observability.yaml"),
];

/// Every resource of the lab's policies, parsed and checked.
pub fn lab_resources() -> Result<Vec<Loaded>, LoadError> {
    let mut out = Vec::new();
    for (file, text) in LAB_POLICY_FILES {
        out.extend(parse_documents(text, &format!("policies/{file}"))?);
    }
    Ok(out)
}
