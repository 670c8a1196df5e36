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

/// Why a policy file or directory could not be loaded.
#[derive(Debug, Error)]
pub enum LoadError {
    /// A file or directory could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// What could not be read.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A document is not valid YAML.
    #[error("{file}: document {doc}: not valid YAML: {message}")]
    Yaml {
        /// The file, as shown in messages.
        file: String,
        /// 1-based index of the document within the file.
        doc: usize,
        /// The YAML parser's message.
        message: String,
    },
    /// A document is YAML but no valid resource: a field unknown, missing, ill-typed or off-schema.
    #[error("{file}: document {doc}{what}: field `{field}`: {message}")]
    Field {
        /// The file, as shown in messages.
        file: String,
        /// 1-based index of the document within the file.
        doc: usize,
        /// ` (Kind namespace/name)` of the resource, or empty when unknown.
        what: String,
        /// Path to the offending field, e.g. `spec.rules[0].from[0].source`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
}

/// One resource read from a file, typed.
#[derive(Debug, Clone)]
pub enum Resource {
    /// An Istio AuthorizationPolicy.
    AuthorizationPolicy(Box<AuthorizationPolicy>),
    /// An Istio PeerAuthentication.
    PeerAuthentication(Box<PeerAuthentication>),
    /// A namespaced CiliumNetworkPolicy.
    CiliumNetworkPolicy(Box<CiliumNetworkPolicy>),
    /// A CiliumClusterwideNetworkPolicy.
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
    /// The file it was read from, as shown in messages.
    pub file: String,
    /// 1-based index of its document within the file.
    pub doc: usize,
    /// The typed resource.
    pub resource: Resource,
}

const TOP_LEVEL: &[&str] = &["apiVersion", "kind", "metadata", "spec", "specs", "status"];

/// A field of a document that is wrong, and why — what a reader of one
/// document reports, before the file and document are known around it
/// ([`LoadError::Field`]). The proxy's own YAML files report the same way.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("field `{field}`: {message}")]
pub struct FieldError {
    /// The field's path, like `spec.rules[0].from[1].source` (`.` for the
    /// whole document).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl FieldError {
    /// `field` is wrong because of `message`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The head of one YAML document: what it is, for dispatch and for errors.
#[derive(Debug, Clone)]
pub struct DocumentHead {
    /// The document's `apiVersion`, or empty.
    pub api_version: String,
    /// The document's `kind`, or empty.
    pub kind: String,
    /// ` (Kind namespace/name)`, as errors show it.
    pub what: String,
}

/// Splits a multi-document YAML text and hands each non-empty document, as
/// JSON, with its head, to `read`. A [`FieldError`] from `read` becomes
/// an error naming the file, the document, the resource and the field. The
/// kind lab's manifests are read with this too.
pub fn read_documents<T>(
    text: &str,
    file: &str,
    mut read: impl FnMut(serde_json::Value, &DocumentHead) -> Result<T, FieldError>,
) -> Result<Vec<(usize, T)>, LoadError> {
    check_nesting(text).map_err(|message| LoadError::Yaml {
        file: file.to_string(),
        doc: 1,
        message,
    })?;
    let mut out = Vec::new();
    for (i, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let doc = i + 1;
        let yaml_err = |message: String| LoadError::Yaml {
            file: file.to_string(),
            doc,
            message,
        };
        let yaml: serde_yaml::Value =
            serde::Deserialize::deserialize(document).map_err(|e| yaml_err(e.to_string()))?;
        if yaml.is_null() {
            continue;
        }
        let value = serde_json::to_value(&yaml).map_err(|e| yaml_err(e.to_string()))?;
        let text_at = |p: &str| value.pointer(p).and_then(|v| v.as_str()).unwrap_or("");
        let head = DocumentHead {
            api_version: text_at("/apiVersion").to_string(),
            kind: text_at("/kind").to_string(),
            what: format!(
                " ({} {}/{})",
                text_at("/kind"),
                text_at("/metadata/namespace"),
                text_at("/metadata/name")
            ),
        };
        if !value.is_object() {
            return Err(LoadError::Field {
                file: file.to_string(),
                doc,
                what: String::new(),
                field: ".".into(),
                message: "a document must be a mapping".into(),
            });
        }
        let item =
            read(value, &head).map_err(|FieldError { field, message }| LoadError::Field {
                file: file.to_string(),
                doc,
                what: head.what.clone(),
                field,
                message,
            })?;
        out.push((doc, item));
    }
    Ok(out)
}

/// Parses every document of a YAML text; `file` names it in errors.
pub fn parse_documents(text: &str, file: &str) -> Result<Vec<Loaded>, LoadError> {
    let resources = read_documents(text, file, |value, head| {
        let map = value.as_object().expect("read_documents checked");
        if let Some(key) = map.keys().find(|k| !TOP_LEVEL.contains(&k.as_str())) {
            return Err(FieldError::new(
                key.clone(),
                format!("unknown field `{key}`, expected one of {TOP_LEVEL:?}"),
            ));
        }
        let schema_kind = match (head.api_version.as_str(), head.kind.as_str()) {
            ("security.istio.io/v1" | "security.istio.io/v1beta1", "AuthorizationPolicy") => {
                SchemaKind::AuthorizationPolicy
            }
            ("security.istio.io/v1" | "security.istio.io/v1beta1", "PeerAuthentication") => {
                SchemaKind::PeerAuthentication
            }
            ("cilium.io/v2", "CiliumNetworkPolicy" | "CiliumClusterwideNetworkPolicy") => {
                SchemaKind::Cilium
            }
            (api_version, kind) => {
                return Err(FieldError::new(
                    "kind",
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
            return Err(FieldError::new("specs", message));
        }
        let empty = serde_json::Value::Object(Default::default());
        let spec = map.get("spec").unwrap_or(&empty);
        validate_spec(schema_kind, spec).map_err(|e| FieldError::new(e.path, e.message))?;
        Ok(match head.kind.as_str() {
            "AuthorizationPolicy" => {
                let policy: AuthorizationPolicy = typed(&value)?;
                crd_rules(&policy)?;
                Resource::AuthorizationPolicy(Box::new(policy))
            }
            "PeerAuthentication" => Resource::PeerAuthentication(Box::new(typed(&value)?)),
            "CiliumNetworkPolicy" => Resource::CiliumNetworkPolicy(Box::new(typed(&value)?)),
            _ => Resource::CiliumClusterwideNetworkPolicy(Box::new(typed(&value)?)),
        })
    })?;
    Ok(resources
        .into_iter()
        .map(|(doc, resource)| Loaded {
            file: file.to_string(),
            doc,
            resource,
        })
        .collect())
}

/// The rules Istio's CRD states beside its schema (`x-kubernetes-validations`,
/// CEL), which the API server enforces and a structural schema check does
/// not: a source may not set `serviceAccounts` (or `notServiceAccounts`)
/// together with `principals`, `notPrincipals`, `namespaces` or
/// `notNamespaces`. Found by applying generated policies to a real API
/// server, which refused them.
fn crd_rules(policy: &AuthorizationPolicy) -> Result<(), FieldError> {
    for (i, rule) in policy.spec.rules.iter().enumerate() {
        for (j, from) in rule.from.iter().enumerate() {
            let s = &from.source;
            let accounts = !s.service_accounts.is_empty() || !s.not_service_accounts.is_empty();
            let others = !s.principals.is_empty()
                || !s.not_principals.is_empty()
                || !s.namespaces.is_empty()
                || !s.not_namespaces.is_empty();
            if accounts && others {
                return Err(FieldError::new(
                    format!("spec.rules[{i}].from[{j}].source"),
                    "Cannot set serviceAccounts with namespaces or principals (a rule of Istio's \
                     CRD: the API server refuses this policy); write the identities as principals, \
                     or split the source",
                ));
            }
        }
    }
    Ok(())
}

/// Deserializes into `T`, naming the field path of the first mismatch.
pub fn typed<T: DeserializeOwned>(value: &serde_json::Value) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(value)
        .map_err(|e| FieldError::new(e.path().to_string(), e.into_inner().to_string()))
}

/// Reads one file.
pub fn load_file(path: &Path) -> Result<Vec<Loaded>, LoadError> {
    parse_documents(&read_text(path)?, &path.display().to_string())
}

/// Reads every `.yaml`/`.yml` file under `dir` (recursively, in name order).
pub fn load_dir(dir: &Path) -> Result<Vec<Loaded>, LoadError> {
    let mut out = Vec::new();
    for file in yaml_files(dir)? {
        out.extend(load_file(&file)?);
    }
    Ok(out)
}

/// Every `.yaml`/`.yml` file under `dir`, recursively, in name order.
pub fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let mut files = Vec::new();
    collect_yaml(dir, &mut files)?;
    files.sort();
    Ok(files)
}

/// The largest YAML document file hbone-lab reads (policies, registries,
/// configs): far above any real one, far below what would stall a proxy
/// (a 100 MB policy file took 5 GB to parse).
pub const MAX_FILE_BYTES: u64 = 16 << 20;

/// Reads a regular file of at most `max` bytes as text. Anything else — a
/// device such as `/dev/zero`, a FIFO, a file that is or grows too large —
/// is refused before its contents are held, with the reason.
pub fn read_bounded(path: &Path, max: u64) -> std::io::Result<String> {
    use std::io::Read;
    let refused = |why: String| std::io::Error::new(std::io::ErrorKind::InvalidData, why);
    let file = std::fs::File::open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(refused("not a regular file".into()));
    }
    let too_big = || {
        refused(format!(
            "larger than {max} bytes, the most read from one file"
        ))
    };
    if meta.len() > max {
        return Err(too_big());
    }
    let mut text = String::new();
    file.take(max + 1).read_to_string(&mut text)?;
    if text.len() as u64 > max {
        return Err(too_big());
    }
    Ok(text)
}

/// The deepest nesting of `[` and `{` a YAML text may have. No policy,
/// registry or config comes near it; the YAML parser's time grows with the
/// square of the depth (100 000 levels took 19 s of CPU to refuse).
pub const MAX_NESTING: usize = 64;

/// Refuses a YAML text whose flow collections (`[`, `{`) nest deeper than
/// [`MAX_NESTING`], before the parser sees it, naming the line. Brackets in
/// quoted strings and comments do not count; one in a plain scalar does,
/// which errs on the side of refusing only texts that are absurd anyway.
/// (Block nesting needs its indentation written out, so the file size
/// limit bounds it.)
pub fn check_nesting(text: &str) -> Result<(), String> {
    let (mut depth, mut line) = (0usize, 1usize);
    let mut quote: Option<char> = None;
    let mut comment = false;
    let mut previous = '\n';
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\n' {
            line += 1;
            comment = false;
        } else if comment {
            continue;
        } else if let Some(q) = quote {
            if c == '\\' && q == '"' {
                chars.next();
            } else if c == q {
                quote = None;
            }
        } else {
            match c {
                // A quote opens a scalar only where a token starts (`don't`
                // is plain text).
                '\'' | '"' if previous.is_whitespace() || ":,[{-".contains(previous) => {
                    quote = Some(c)
                }
                '#' if previous.is_whitespace() => comment = true,
                '[' | '{' => {
                    depth += 1;
                    if depth > MAX_NESTING {
                        return Err(format!(
                            "line {line}: collections nested deeper than {MAX_NESTING} levels"
                        ));
                    }
                }
                ']' | '}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        previous = c;
    }
    Ok(())
}

/// Reads a file's text ([`read_bounded`] by [`MAX_FILE_BYTES`]), naming it
/// in the error.
pub fn read_text(path: &Path) -> Result<String, LoadError> {
    read_bounded(path, MAX_FILE_BYTES).map_err(|source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    })
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
            Resource::AuthorizationPolicy(p) => policies.add_authorization((**p).clone()),
            Resource::PeerAuthentication(p) => policies.add_peer_authentication((**p).clone()),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Nesting past the limit is refused at once with its line, in every
    /// form the parser would see; brackets in quotes and comments do not
    /// count, nor does a quote inside a plain word hide real ones.
    #[test]
    fn deep_nesting_is_refused_before_parsing() {
        let deep = format!("a: 1\nb: {}", "[".repeat(100_000));
        let started = std::time::Instant::now();
        let err = check_nesting(&deep).unwrap_err();
        assert!(err.starts_with("line 2:"), "{err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        let at_limit = format!("{}{}", "[".repeat(MAX_NESTING), "]".repeat(MAX_NESTING));
        assert!(check_nesting(&at_limit).is_ok());
        let hidden = format!(
            "x: '{}'\ny: \"{}\" # {}\n",
            "[".repeat(100),
            "{".repeat(100),
            "[".repeat(100)
        );
        assert!(
            check_nesting(&hidden).is_ok(),
            "quoted and commented brackets"
        );
        let sneaky = format!("a: don't {}\n", "[".repeat(100));
        assert!(
            check_nesting(&sneaky).is_err(),
            "an apostrophe in a word hid brackets"
        );
        let err = parse_documents(&deep, "deep.yaml").unwrap_err().to_string();
        assert!(
            err.contains("deep.yaml") && err.contains("nested deeper"),
            "{err}"
        );
    }

    /// A device, or a file over the limit, is refused before its contents
    /// are held (a registry of `/dev/zero` grew a proxy to 20 GB).
    #[test]
    fn only_regular_files_within_the_limit_are_read() {
        let err = read_text(Path::new("/dev/zero")).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.yaml");
        std::fs::write(&file, "x".repeat(100)).unwrap();
        assert_eq!(read_bounded(&file, 100).unwrap().len(), 100);
        let err = read_bounded(&file, 99).unwrap_err();
        assert!(err.to_string().contains("larger than 99 bytes"), "{err}");
        assert!(read_bounded(dir.path(), 99).is_err(), "a folder is no file");
    }
}
