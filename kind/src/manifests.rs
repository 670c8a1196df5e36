//! Reading the kind lab's manifests strictly.
//!
//! Core kinds go into k8s-openapi's types. Those types ignore fields they do
//! not know (as the API server's decoder would, with a warning), so a typo
//! such as `serviceAcountName` would silently fall away; here every document
//! is typed, serialized back, and any field of the original that did not
//! survive the trip is reported as unknown, with its path. Gateway API
//! resources are checked against their upstream CRD schemas first.

use std::path::Path;

use hbone_policies::load::{FieldError, read_documents, read_text, typed, yaml_files};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::gateway_api::{Gateway, HTTPRoute};

/// Manifests fail as policies do: naming file, document, resource and field.
pub use hbone_policies::load::LoadError as ManifestError;

/// One typed manifest.
#[derive(Debug, Clone)]
pub enum Manifest {
    /// A Namespace.
    Namespace(Box<Namespace>),
    /// A ServiceAccount.
    ServiceAccount(Box<ServiceAccount>),
    /// A Secret.
    Secret(Box<Secret>),
    /// A Deployment.
    Deployment(Box<Deployment>),
    /// A DaemonSet.
    DaemonSet(Box<DaemonSet>),
    /// A Service.
    Service(Box<Service>),
    /// A Pod.
    Pod(Box<Pod>),
    /// A Gateway (Gateway API).
    Gateway(Box<Gateway>),
    /// An HTTPRoute (Gateway API).
    HTTPRoute(Box<HTTPRoute>),
    /// A ConfigMap.
    ConfigMap(Box<ConfigMap>),
    /// A ClusterRole.
    ClusterRole(Box<ClusterRole>),
    /// A ClusterRoleBinding.
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
            Manifest::DaemonSet(_) => "DaemonSet",
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
    /// The file it was read from.
    pub file: String,
    /// Its document's index in the file, from 0.
    pub doc: usize,
    /// The manifest.
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

fn strict<T: DeserializeOwned + Serialize>(value: &Value) -> Result<T, FieldError> {
    let typed: T = typed(value)?;
    let back = serde_json::to_value(&typed).map_err(|e| FieldError::new(".", e.to_string()))?;
    if let Some(field) = dropped_field(value, &back, "") {
        let name = field.rsplit('.').next().unwrap_or(&field).to_string();
        return Err(FieldError::new(field, format!("unknown field `{name}`")));
    }
    Ok(typed)
}

fn schema_checked<T: DeserializeOwned + Serialize>(
    value: &Value,
    schema: &str,
) -> Result<T, FieldError> {
    let schema: Value = serde_json::from_str(schema).expect("a committed schema");
    let spec = value.get("spec").cloned().unwrap_or(Value::Null);
    hbone_policies::schema::validate_spec_with(&schema, &spec)
        .map_err(|e| FieldError::new(e.path, e.message))?;
    typed(value)
}

/// Parses every document of a manifest file; `file` names it in errors.
pub fn parse_documents(text: &str, file: &str) -> Result<Vec<Loaded>, ManifestError> {
    let manifests = read_documents(text, file, |value, head| {
        let value = &value;
        Ok(match (head.api_version.as_str(), head.kind.as_str()) {
            ("v1", "Namespace") => Manifest::Namespace(Box::new(strict(value)?)),
            ("v1", "ServiceAccount") => Manifest::ServiceAccount(Box::new(strict(value)?)),
            ("v1", "Secret") => Manifest::Secret(Box::new(strict(value)?)),
            ("v1", "Service") => Manifest::Service(Box::new(strict(value)?)),
            ("v1", "Pod") => Manifest::Pod(Box::new(strict(value)?)),
            ("v1", "ConfigMap") => Manifest::ConfigMap(Box::new(strict(value)?)),
            ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
                Manifest::ClusterRole(Box::new(strict(value)?))
            }
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                Manifest::ClusterRoleBinding(Box::new(strict(value)?))
            }
            ("apps/v1", "Deployment") => Manifest::Deployment(Box::new(strict(value)?)),
            ("apps/v1", "DaemonSet") => Manifest::DaemonSet(Box::new(strict(value)?)),
            ("gateway.networking.k8s.io/v1", "Gateway") => {
                Manifest::Gateway(Box::new(schema_checked(value, GATEWAY_SCHEMA)?))
            }
            ("gateway.networking.k8s.io/v1", "HTTPRoute") => {
                Manifest::HTTPRoute(Box::new(schema_checked(value, HTTPROUTE_SCHEMA)?))
            }
            (api_version, kind) => {
                return Err(FieldError::new(
                    "kind",
                    format!("{api_version} {kind} is not a kind the lab's manifests use"),
                ));
            }
        })
    })?;
    Ok(manifests
        .into_iter()
        .map(|(doc, manifest)| Loaded {
            file: file.to_string(),
            doc,
            manifest,
        })
        .collect())
}

/// Every manifest under `dir` (`*.yaml`, in name order).
pub fn load_dir(dir: &Path) -> Result<Vec<Loaded>, ManifestError> {
    let mut out = Vec::new();
    for path in yaml_files(dir)? {
        out.extend(parse_documents(
            &read_text(&path)?,
            &path.display().to_string(),
        )?);
    }
    Ok(out)
}
