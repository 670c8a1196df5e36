//! Who may obtain which identity.
//!
//! Every request to the CA carries a bearer token. An [`Authenticator`] turns
//! the token into a [`Grant`]: the identities its holder may obtain. Standalone,
//! the grants come from a YAML token file; in a cluster they would come from a
//! Kubernetes TokenReview (the service account behind the token, or for a node
//! proxy every workload on its node) — both sit behind the same trait.
//!
//! Token file:
//! ```yaml
//! tokens:
//!   - token: node-1-secret
//!     identities: ["spiffe://cluster.local/ns/demo/sa/*"]
//!     node: node-1     # only workloads placed on node-1 (crate::placement)
//!   - token: gateway-secret
//!     identities: ["spiffe://cluster.local/ns/demo/sa/hello-gateway-istio"]
//! ```

use std::collections::HashMap;
use std::path::Path;

use async_trait::async_trait;
use serde::Deserialize;
use thiserror::Error;

use crate::identity::{Identity, IdentityPattern};

/// What a token entitles its holder to.
#[derive(Debug, Clone)]
pub struct Grant {
    /// A name for logs (never the token itself).
    pub subject: String,
    /// The identities, or families of them, the holder may obtain.
    pub identities: Vec<IdentityPattern>,
    /// The node the holder is a proxy of: it may obtain only identities of
    /// workloads placed on that node ([`crate::placement`]).
    pub node: Option<String>,
}

impl Grant {
    /// Whether any of the grant's patterns matches `identity`.
    pub fn allows(&self, identity: &Identity) -> bool {
        self.identities.iter().any(|p| p.matches(identity))
    }
}

/// Why a bearer token yields no grant.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum AuthError {
    /// The token is not recognised, or the API server did not authenticate it.
    #[error("the token is not known to this CA")]
    UnknownToken,
    /// The token could not be checked, or its holder is not a usable service account; holds why.
    #[error("the token could not be checked: {0}")]
    Backend(String),
}

/// Turns a bearer token into a grant.
#[async_trait]
pub trait Authenticator: Send + Sync + 'static {
    /// The grant for `token`, or why there is none.
    async fn authenticate(&self, token: &str) -> Result<Grant, AuthError>;
}

/// Why a token file could not be loaded.
#[derive(Debug, Error)]
pub enum TokenFileError {
    /// The file could not be read.
    #[error("cannot read token file {file}: {source}")]
    Read {
        /// The file's path.
        file: String,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// One field of the file is invalid: bad YAML, an unknown key, a bad identity, or an empty or repeated token.
    #[error("{file}: field `{field}`: {message}")]
    Field {
        /// The file's name, as given to `parse`.
        file: String,
        /// Path of the offending field, e.g. `tokens[0].identities[1]`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFileDoc {
    tokens: Vec<TokenEntryDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntryDoc {
    token: String,
    identities: Vec<String>,
    #[serde(default)]
    node: Option<String>,
}

/// Grants read from a YAML token file.
#[derive(Debug, Clone, Default)]
pub struct TokenFile {
    grants: HashMap<String, Grant>,
}

impl TokenFile {
    /// Reads and parses the token file at `path`.
    pub fn load(path: &Path) -> Result<Self, TokenFileError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Read {
            file: file.clone(),
            source,
        })?;
        Self::parse(&text, &file)
    }

    /// Parses a token file; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, TokenFileError> {
        let field_error = |field: String, message: String| TokenFileError::Field {
            file: origin.to_string(),
            field,
            message,
        };
        let doc: TokenFileDoc = serde_path_to_error::deserialize(
            serde_yaml::Deserializer::from_str(text),
        )
        .map_err(|e| {
            let path = e.path().to_string();
            field_error(path, e.into_inner().to_string())
        })?;
        let mut grants = HashMap::new();
        for (i, entry) in doc.tokens.into_iter().enumerate() {
            if entry.token.trim().is_empty() {
                return Err(field_error(
                    format!("tokens[{i}].token"),
                    "must not be empty".into(),
                ));
            }
            let identities = entry
                .identities
                .iter()
                .enumerate()
                .map(|(j, s)| {
                    s.parse::<IdentityPattern>().map_err(|e| {
                        field_error(format!("tokens[{i}].identities[{j}]"), e.to_string())
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let grant = Grant {
                subject: format!("token #{} of {origin}", i + 1),
                identities,
                node: entry.node,
            };
            if grants.insert(entry.token, grant).is_some() {
                return Err(field_error(
                    format!("tokens[{i}].token"),
                    "the same token is listed twice".into(),
                ));
            }
        }
        Ok(TokenFile { grants })
    }

    /// The nodes its tokens are scoped to, if any is.
    pub fn nodes(&self) -> Vec<&str> {
        let mut nodes: Vec<&str> = self
            .grants
            .values()
            .filter_map(|g| g.node.as_deref())
            .collect();
        nodes.sort_unstable();
        nodes.dedup();
        nodes
    }

    /// A file granting one token a set of identity patterns (for the standalone lab).
    pub fn single(token: &str, patterns: Vec<IdentityPattern>) -> Self {
        let grant = Grant {
            subject: "built-in lab token".into(),
            identities: patterns,
            node: None,
        };
        TokenFile {
            grants: HashMap::from([(token.to_string(), grant)]),
        }
    }
}

#[async_trait]
impl Authenticator for TokenFile {
    async fn authenticate(&self, token: &str) -> Result<Grant, AuthError> {
        self.grants
            .get(token)
            .cloned()
            .ok_or(AuthError::UnknownToken)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn grants_by_pattern() {
        let yaml =
            "tokens:\n  - token: t1\n    identities: ['spiffe://cluster.local/ns/demo/sa/*']\n";
        let file = TokenFile::parse(yaml, "tokens.yaml").unwrap();
        let grant = file.authenticate("t1").await.unwrap();
        assert!(grant.allows(&"spiffe://cluster.local/ns/demo/sa/x".parse().unwrap()));
        assert!(!grant.allows(&"spiffe://cluster.local/ns/prod/sa/x".parse().unwrap()));
        assert_eq!(
            file.authenticate("t2").await.unwrap_err(),
            AuthError::UnknownToken
        );
    }

    #[test]
    fn errors_name_file_and_field() {
        let typo = "tokens:\n  - token: t1\n    identitys: []\n";
        let err = TokenFile::parse(typo, "tokens.yaml")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("tokens.yaml: field `tokens[0]"), "{err}");
        assert!(err.contains("identitys"), "{err}");

        let bad_id = "tokens:\n  - token: t1\n    identities: ['spiffe://cluster.local/ns/demo']\n";
        let err = TokenFile::parse(bad_id, "tokens.yaml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("field `tokens[0].identities[0]`"), "{err}");

        let dup = "tokens:\n  - {token: a, identities: []}\n  - {token: a, identities: []}\n";
        let err = TokenFile::parse(dup, "tokens.yaml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("tokens[1].token") && err.contains("twice"),
            "{err}"
        );
    }
}
