//! SPIFFE identities in the shape Istio gives workloads.
//!
//! Istio names a workload `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
//! Generic SPIFFE syntax (scheme, trust-domain characters, path segments) is
//! checked by the `spiffe` crate; this module adds Istio's shape on top, so
//! that everything above it can rely on a namespace and a service account
//! being present.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

/// Why a string is not an Istio workload identity.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum IdentityError {
    /// The string fails generic SPIFFE ID syntax.
    #[error("{input:?} is not a SPIFFE ID: {source}")]
    Spiffe {
        /// The string that was parsed.
        input: String,
        /// What the `spiffe` crate found wrong.
        #[source]
        source: spiffe::SpiffeIdError,
    },
    /// A valid SPIFFE ID whose path is not `/ns/<namespace>/sa/<service-account>`, or a pattern whose `*` does not follow a `/`.
    #[error(
        "{input:?} is a SPIFFE ID but not in Istio's workload form \
         spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>"
    )]
    NotIstioShape {
        /// The string that was parsed.
        input: String,
    },
    /// The name is not a valid SPIFFE trust domain.
    #[error("{input:?} is not a valid trust domain: {source}")]
    TrustDomain {
        /// The name as given.
        input: String,
        /// What the `spiffe` crate found wrong.
        #[source]
        source: spiffe::SpiffeIdError,
    },
}

/// A workload identity: trust domain, namespace and service account.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

impl Identity {
    /// Builds an identity from its parts, validating each as a SPIFFE ID would.
    pub fn new(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, IdentityError> {
        format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}").parse()
    }

    /// The trust domain, e.g. `cluster.local`.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The Kubernetes namespace the workload runs in.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The Kubernetes service account the workload runs as.
    pub fn service_account(&self) -> &str {
        &self.service_account
    }

    /// The form Istio policies use for principals: the SPIFFE ID without `spiffe://`.
    pub fn principal(&self) -> String {
        format!(
            "{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }

    /// The full URI, as it appears in the certificate's URI SAN.
    pub fn uri(&self) -> String {
        format!("spiffe://{}", self.principal())
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}", self.principal())
    }
}

impl FromStr for Identity {
    type Err = IdentityError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let id = spiffe::SpiffeId::new(input).map_err(|source| IdentityError::Spiffe {
            input: input.to_string(),
            source,
        })?;
        let segments: Vec<&str> = id.path().trim_start_matches('/').split('/').collect();
        match segments.as_slice() {
            ["ns", namespace, "sa", service_account] => Ok(Identity {
                trust_domain: id.trust_domain_name().to_string(),
                namespace: namespace.to_string(),
                service_account: service_account.to_string(),
            }),
            _ => Err(IdentityError::NotIstioShape {
                input: input.to_string(),
            }),
        }
    }
}

/// Validates a trust domain name (for example `cluster.local`) and returns it
/// in canonical lower case.
pub fn validate_trust_domain(name: &str) -> Result<String, IdentityError> {
    spiffe::TrustDomain::new(name)
        .map(|td| td.as_str().to_string())
        .map_err(|source| IdentityError::TrustDomain {
            input: name.to_string(),
            source,
        })
}

/// An identity, or a family of identities written with a trailing `/*`
/// (`spiffe://cluster.local/ns/demo/sa/*` = every service account in `demo`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityPattern {
    /// Exactly this one identity.
    Exact(Identity),
    /// Every identity whose URI starts with this text: the pattern without its `*`, ending in `/`.
    Prefix(String),
}

impl IdentityPattern {
    /// Whether `identity` is the exact one, or its URI starts with the prefix.
    pub fn matches(&self, identity: &Identity) -> bool {
        match self {
            IdentityPattern::Exact(exact) => exact == identity,
            IdentityPattern::Prefix(prefix) => identity.uri().starts_with(prefix.as_str()),
        }
    }
}

impl FromStr for IdentityPattern {
    type Err = IdentityError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        match input.strip_suffix('*') {
            // The fixed part must end at a segment boundary and be a SPIFFE ID by itself
            // (`spiffe://cluster.local/ns/demo/sa/` → `spiffe://cluster.local/ns/demo/sa`).
            Some(prefix) if prefix.ends_with('/') => {
                spiffe::SpiffeId::new(prefix.trim_end_matches('/')).map_err(|source| {
                    IdentityError::Spiffe {
                        input: input.to_string(),
                        source,
                    }
                })?;
                Ok(IdentityPattern::Prefix(prefix.to_string()))
            }
            Some(_) => Err(IdentityError::NotIstioShape {
                input: input.to_string(),
            }),
            None => Ok(IdentityPattern::Exact(input.parse()?)),
        }
    }
}

impl fmt::Display for IdentityPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdentityPattern::Exact(id) => write!(f, "{id}"),
            IdentityPattern::Prefix(prefix) => write!(f, "{prefix}*"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_istio_identity() {
        let id: Identity = "spiffe://cluster.local/ns/demo/sa/hello-app"
            .parse()
            .unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.namespace(), "demo");
        assert_eq!(id.service_account(), "hello-app");
        assert_eq!(id.principal(), "cluster.local/ns/demo/sa/hello-app");
        assert_eq!(
            id.to_string(),
            "spiffe://cluster.local/ns/demo/sa/hello-app"
        );
    }

    #[test]
    fn refuses_bad_ids_with_reason() {
        let cases = [
            ("", "cannot be empty"),
            ("https://cluster.local/ns/demo/sa/x", "scheme"),
            ("spiffe://cluster.local/ns/demo", "Istio's workload form"),
            (
                "spiffe://cluster.local/ns/demo/sa/x/extra",
                "Istio's workload form",
            ),
            (
                "spiffe://clu$ter/ns/demo/sa/x",
                "trust domain may only contain",
            ),
            ("spiffe://cluster.local/ns//sa/x", "empty segments"),
        ];
        for (input, reason) in cases {
            let err = input.parse::<Identity>().unwrap_err().to_string();
            assert!(err.contains(reason), "{input:?}: {err:?} lacks {reason:?}");
        }
    }

    #[test]
    fn patterns_match_families() {
        let ns: IdentityPattern = "spiffe://cluster.local/ns/demo/sa/*".parse().unwrap();
        let all: IdentityPattern = "spiffe://cluster.local/ns/*".parse().unwrap();
        let exact: IdentityPattern = "spiffe://cluster.local/ns/demo/sa/a".parse().unwrap();
        let a: Identity = "spiffe://cluster.local/ns/demo/sa/a".parse().unwrap();
        let b: Identity = "spiffe://cluster.local/ns/other/sa/a".parse().unwrap();
        assert!(ns.matches(&a) && !ns.matches(&b));
        assert!(all.matches(&a) && all.matches(&b));
        assert!(exact.matches(&a) && !exact.matches(&b));
        assert!(
            "spiffe://cluster.local/ns/demo/sa/ab*"
                .parse::<IdentityPattern>()
                .is_err()
        );
    }
}
