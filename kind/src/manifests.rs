//! Reading the kind lab's manifests strictly.
//!
//! Core kinds go into k8s-openapi's types. Those types ignore fields they do
//! not know (as the API server's decoder would, with a warning), so a typo
//! such as `serviceAcountName` would silently fall away; here every document
//! is typed, serialized back, and any field of the original that did not
//! survive the trip is reported as unknown, with its path. Gateway API
//! resources are checked against their upstream CRD schemas first.

use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use thiserror::Error;

use crate::gateway_api::{Gateway, HTTPRoute};

#[derive(Debug, Error)]
pub enum ManifestError {
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

/// One typed manifest.
#[derive(Debug, Clone)]
pub enum Manifest {
    Namespace(Box<Namespace>),
    ServiceAccount(Box<ServiceAccount>),
    Secret(Box<Secret>),
    Deployment(Box<Deployment>),
    Service(Box<Service>),
    Pod(Box<Pod>),
    Gateway(Box<Gateway>),
    HTTPRoute(Box<HTTPRoute>),
    ConfigMap(Box<ConfigMap>),
    ClusterRole(Box<ClusterRole>),
    ClusterRoleBinding(Box<ClusterRoleBinding>),
}

impl Manifest {
    /// The Kubernetes kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Manifest::Namespace(_) => "Namespace",
            Manifest::ServiceAccount(_) => "ServiceAccount",
            Manifest::Secret(_) => "Secret",
            Manifest::Deployment(_) => "Deployment",
            Manifest::Service(_) => "Service",
            Manifest::Pod(_) => "Pod",
            Manifest::Gateway(_) => "Gateway",
            Manifest::HTTPRoute(_) => "HTTPRoute",
            Manifest::ConfigMap(_) => "ConfigMap",
            Manifest::ClusterRole(_) => "ClusterRole",
            Manifest::ClusterRoleBinding(_) => "ClusterRoleBinding",
        }
    }
}

/// A manifest and where it came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub file: String,
    pub doc: usize,
    pub manifest: Manifest,
}

const GATEWAY_SCHEMA: &str = include_str!("../crds/gateway.networking.k8s.io_v1_gateway.json");
const HTTPROUTE_SCHEMA: &str = include_str!("../crds/gateway.networking.k8s.io_v1_httproute.json");

/// The first path present in `original` but missing from `typed`.
pub fn dropped_field(original: &Value, typed: &Value, path: &str) -> Option<String> {
    match (original, typed) {
        (Value::Object(o), Value::Object(t)) => o.iter().find_map(|(k, v)| {
            let here = match path.is_empty() {
                true => k.clone(),
                false => format!("{path}.{k}"),
            };
            match t.get(k) {
                None if !v.is_null() => Some(here),
                None => None,
                Some(tv) => dropped_field(v, tv, &here),
            }
        }),
        (Value::Array(o), Value::Array(t)) => o
            .iter()
            .zip(t)
            .enumerate()
            .find_map(|(i, (ov, tv))| dropped_field(ov, tv, &format!("{path}[{i}]"))),
        _ => None,
    }
}

fn strict<T: DeserializeOwned + Serialize>(value: &Value) -> Result<T, (String, String)> {
    let typed: T = serde_path_to_error::deserialize(value)
        .map_err(|e| (e.path().to_string(), e.into_inner().to_string()))?;
    let back = serde_json::to_value(&typed).map_err(|e| (".".to_string(), e.to_string()))?;
    if let Some(field) = dropped_field(value, &back, "") {
        let name = field.rsplit('.').next().unwrap_or(&field).to_string();
        return Err((field, format!("unknown field `{name}`")));
    }
    Ok(typed)
}

fn schema_checked<T: DeserializeOwned + Serialize>(
    value: &Value,
    schema: &str,
) -> Result<T, (String, String)> {
    let schema: Value = serde_json::from_str(schema).expect("a committed schema");
    let spec = value.get("spec").cloned().unwrap_or(Value::Null);
    hbone_policies::schema::validate_spec_with(&schema, &spec).map_err(|e| (e.path, e.message))?;
    serde_path_to_error::deserialize(value)
        .map_err(|e| (e.path().to_string(), e.into_inner().to_string()))
}

/// Parses every document of a manifest file; `file` names it in errors.
pub fn parse_documents(text: &str, file: &str) -> Result<Vec<Loaded>, ManifestError> {
    let mut out = Vec::new();
    for (i, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let doc = i + 1;
        let yaml: serde_yaml::Value =
            serde::Deserialize::deserialize(document).map_err(|e| ManifestError::Yaml {
                file: file.into(),
                doc,
                message: e.to_string(),
            })?;
        if yaml.is_null() {
            continue;
        }
        let value = serde_json::to_value(&yaml).map_err(|e| ManifestError::Yaml {
            file: file.into(),
            doc,
            message: e.to_string(),
        })?;
        let text_at = |p: &str| value.pointer(p).and_then(Value::as_str).unwrap_or("");
        let (api_version, kind) = (text_at("/apiVersion"), text_at("/kind"));
        let what = format!(
            " ({kind} {}/{})",
            text_at("/metadata/namespace"),
            text_at("/metadata/name")
        );
        let field_err = |(field, message): (String, String)| ManifestError::Field {
            file: file.into(),
            doc,
            what: what.clone(),
            field,
            message,
        };
        let manifest = match (api_version, kind) {
            ("v1", "Namespace") => {
                Manifest::Namespace(Box::new(strict(&value).map_err(field_err)?))
            }
            ("v1", "ServiceAccount") => {
                Manifest::ServiceAccount(Box::new(strict(&value).map_err(field_err)?))
            }
            ("v1", "Secret") => Manifest::Secret(Box::new(strict(&value).map_err(field_err)?)),
            ("v1", "Service") => Manifest::Service(Box::new(strict(&value).map_err(field_err)?)),
            ("v1", "Pod") => Manifest::Pod(Box::new(strict(&value).map_err(field_err)?)),
            ("v1", "ConfigMap") => {
                Manifest::ConfigMap(Box::new(strict(&value).map_err(field_err)?))
            }
            ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
                Manifest::ClusterRole(Box::new(strict(&value).map_err(field_err)?))
            }
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                Manifest::ClusterRoleBinding(Box::new(strict(&value).map_err(field_err)?))
            }
            ("apps/v1", "Deployment") => {
                Manifest::Deployment(Box::new(strict(&value).map_err(field_err)?))
            }
            ("gateway.networking.k8s.io/v1", "Gateway") => Manifest::Gateway(Box::new(
                schema_checked(&value, GATEWAY_SCHEMA).map_err(field_err)?,
            )),
            ("gateway.networking.k8s.io/v1", "HTTPRoute") => Manifest::HTTPRoute(Box::new(
                schema_checked(&value, HTTPROUTE_SCHEMA).map_err(field_err)?,
            )),
            _ => {
                return Err(field_err((
                    "kind".into(),
                    format!("{api_version} {kind} is not a kind the lab's manifests use"),
                )));
            }
        };
        out.push(Loaded {
            file: file.into(),
            doc,
            manifest,
        });
    }
    Ok(out)
}

/// Every manifest under `dir` (`*.yaml`, in name order).
pub fn load_dir(dir: &Path) -> Result<Vec<Loaded>, ManifestError> {
    let read_err = |source| ManifestError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(read_err)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).map_err(|source| ManifestError::Read {
            path: path.clone(),
            source,
        })?;
        out.extend(parse_documents(&text, &path.display().to_string())?);
    }
    Ok(out)
}
