//! Reading policy YAML: files with one or more documents, and directories of them.
//!
//! Every error names the file, the document and the field path, so a typo
//! points straight at the line to fix: `policies/istio/x.yaml: document 1
//! (AuthorizationPolicy demo/x): spec.rules[0].from[0].source: unknown field
//! `principal`, expected one of …`.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use thiserror::Error;

use crate::cilium::{CiliumClusterwideNetworkPolicy, CiliumNetworkPolicy, CiliumPolicies};
use crate::istio::{AuthorizationPolicy, IstioPolicies, PeerAuthentication};
use crate::schema::{SchemaKind, validate_spec};

#[derive(Debug, Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: document {doc}: not valid YAML: {message}")]
    Yaml {
        file: String,
        doc: usize,
        message: String,
    },
    #[error("{file}: document {doc}{what}: field `{field}`: {message}")]
    Field {
        file: String,
        doc: usize,
        what: String,
        field: String,
        message: String,
    },
}

/// One resource read from a file, typed.
#[derive(Debug, Clone)]
pub enum Resource {
    AuthorizationPolicy(Box<AuthorizationPolicy>),
    PeerAuthentication(Box<PeerAuthentication>),
    CiliumNetworkPolicy(Box<CiliumNetworkPolicy>),
    CiliumClusterwideNetworkPolicy(Box<CiliumClusterwideNetworkPolicy>),
}

impl Resource {
    /// `Kind namespace/name`, for listings.
    pub fn describe(&self) -> String {
        let (kind, meta) = match self {
            Resource::AuthorizationPolicy(p) => ("AuthorizationPolicy", &p.metadata),
            Resource::PeerAuthentication(p) => ("PeerAuthentication", &p.metadata),
            Resource::CiliumNetworkPolicy(p) => ("CiliumNetworkPolicy", &p.metadata),
            Resource::CiliumClusterwideNetworkPolicy(p) => {
                ("CiliumClusterwideNetworkPolicy", &p.metadata)
            }
        };
        let name = meta.name.as_deref().unwrap_or("?");
        match &meta.namespace {
            Some(ns) => format!("{kind} {ns}/{name}"),
            None => format!("{kind} {name}"),
        }
    }
}

/// A resource and where it came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub file: String,
    pub doc: usize,
    pub resource: Resource,
}

const TOP_LEVEL: &[&str] = &["apiVersion", "kind", "metadata", "spec", "specs", "status"];

/// Parses every document of a YAML text; `file` names it in errors.
pub fn parse_documents(text: &str, file: &str) -> Result<Vec<Loaded>, LoadError> {
    let mut out = Vec::new();
    for (i, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let doc = i + 1;
        let value: serde_yaml::Value =
            serde::Deserialize::deserialize(document).map_err(|e| LoadError::Yaml {
                file: file.to_string(),
                doc,
                message: e.to_string(),
            })?;
        if value.is_null() {
            continue;
        }
        let field_err = |what: String, field: String, message: String| LoadError::Field {
            file: file.to_string(),
            doc,
            what,
            field,
            message,
        };
        let map = value.as_mapping().ok_or_else(|| {
            field_err(
                String::new(),
                ".".into(),
                "a document must be a mapping".into(),
            )
        })?;
        let text_of = |key: &str| {
            map.get(key)
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_string()
        };
        let (api_version, kind) = (text_of("apiVersion"), text_of("kind"));
        let meta = map.get("metadata");
        let name_of = |key: &str| {
            meta.and_then(|m| m.get(key))
                .and_then(|v| v.as_str())
                .unwrap_or("")
        };
        let what = format!(" ({kind} {}/{})", name_of("namespace"), name_of("name"));
        for key in map.keys() {
            let key = key.as_str().unwrap_or("?");
            if !TOP_LEVEL.contains(&key) {
                return Err(field_err(
                    what,
                    key.into(),
                    format!("unknown field `{key}`, expected one of {TOP_LEVEL:?}"),
                ));
            }
        }
        let schema_kind = match (api_version.as_str(), kind.as_str()) {
            ("security.istio.io/v1" | "security.istio.io/v1beta1", "AuthorizationPolicy") => {
                SchemaKind::AuthorizationPolicy
            }
            ("security.istio.io/v1" | "security.istio.io/v1beta1", "PeerAuthentication") => {
                SchemaKind::PeerAuthentication
            }
            ("cilium.io/v2", "CiliumNetworkPolicy" | "CiliumClusterwideNetworkPolicy") => {
                SchemaKind::Cilium
            }
            _ => {
                return Err(field_err(
                    what,
                    "kind".into(),
                    format!("{api_version} {kind} is not a policy this lab reads"),
                ));
            }
        };
        if map.contains_key("specs") {
            let message = match schema_kind {
                SchemaKind::Cilium => {
                    "a list of rules under `specs` is valid Cilium, but this lab reads one rule \
                     per policy: split it into one document per rule, each with `spec`"
                }
                _ => "unknown field `specs` (did you mean `spec`?)",
            };
            return Err(field_err(what, "specs".into(), message.into()));
        }
        let spec = map
            .get("spec")
            .map(serde_json::to_value)
            .transpose()
            .map_err(|e| field_err(what.clone(), "spec".into(), e.to_string()))?
            .unwrap_or_else(|| serde_json::Value::Object(Default::default()));
        validate_spec(schema_kind, &spec)
            .map_err(|e| field_err(what.clone(), e.path, e.message))?;
        let resource = match kind.as_str() {
            "AuthorizationPolicy" => {
                Resource::AuthorizationPolicy(Box::new(typed(value, &field_err, &what)?))
            }
            "PeerAuthentication" => {
                Resource::PeerAuthentication(Box::new(typed(value, &field_err, &what)?))
            }
            "CiliumNetworkPolicy" => {
                Resource::CiliumNetworkPolicy(Box::new(typed(value, &field_err, &what)?))
            }
            _ => {
                Resource::CiliumClusterwideNetworkPolicy(Box::new(typed(value, &field_err, &what)?))
            }
        };
        out.push(Loaded {
            file: file.to_string(),
            doc,
            resource,
        });
    }
    Ok(out)
}

fn typed<T: DeserializeOwned>(
    value: serde_yaml::Value,
    field_err: &dyn Fn(String, String, String) -> LoadError,
    what: &str,
) -> Result<T, LoadError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let field = e.path().to_string();
        field_err(what.to_string(), field, e.into_inner().to_string())
    })
}

/// Reads one file.
pub fn load_file(path: &Path) -> Result<Vec<Loaded>, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_documents(&text, &path.display().to_string())
}

/// Reads every `.yaml`/`.yml` file under `dir` (recursively, in name order).
pub fn load_dir(dir: &Path) -> Result<Vec<Loaded>, LoadError> {
    let mut files = Vec::new();
    collect_yaml(dir, &mut files)?;
    files.sort();
    let mut out = Vec::new();
    for file in files {
        out.extend(load_file(&file)?);
    }
    Ok(out)
}

fn collect_yaml(dir: &Path, files: &mut Vec<PathBuf>) -> Result<(), LoadError> {
    let read_err = |source| LoadError::Read {
        path: dir.to_path_buf(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(read_err)? {
        let path = entry.map_err(read_err)?.path();
        if path.is_dir() {
            collect_yaml(&path, files)?;
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            files.push(path);
        }
    }
    Ok(())
}

/// Gathers the Istio resources into an evaluator.
pub fn istio_policies(loaded: &[Loaded], root_namespace: &str) -> IstioPolicies {
    let mut policies = IstioPolicies::new(root_namespace);
    for l in loaded {
        match &l.resource {
            Resource::AuthorizationPolicy(p) => policies.authorization.push((**p).clone()),
            Resource::PeerAuthentication(p) => policies.peer_authentication.push((**p).clone()),
            Resource::CiliumNetworkPolicy(_) | Resource::CiliumClusterwideNetworkPolicy(_) => {}
        }
    }
    policies
}

/// Gathers the Cilium resources into an evaluator.
pub fn cilium_policies(loaded: &[Loaded]) -> CiliumPolicies {
    let mut namespaced = Vec::new();
    let mut clusterwide = Vec::new();
    for l in loaded {
        match &l.resource {
            Resource::CiliumNetworkPolicy(p) => namespaced.push((**p).clone()),
            Resource::CiliumClusterwideNetworkPolicy(p) => clusterwide.push((**p).clone()),
            Resource::AuthorizationPolicy(_) | Resource::PeerAuthentication(_) => {}
        }
    }
    CiliumPolicies::new(namespaced, clusterwide)
}
