//! In-cluster authentication: a Kubernetes TokenReview, as istiod does it.
//!
//! A workload (or ztunnel) sends its projected service-account token; the
//! API server says whether it is valid and whose it is
//! (`system:serviceaccount:<namespace>:<name>`). That service account may
//! obtain exactly its own identity. Node proxies — ztunnel's or hbone-lab's
//! own service account — ask on behalf of the workloads on their node; istiod
//! checks the pod's node for that, and this miniature CA lets the configured
//! node-proxy accounts obtain any identity in its trust domain instead (a
//! simplification, said here so nobody mistakes it for istiod's check).
//!
//! The API call sits behind [`TokenReviewApi`]: [`KubeTokenReviewer`] talks to
//! the real API server; tests use a fake of the trait.

use async_trait::async_trait;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};

use crate::identity::{Identity, IdentityPattern};
use crate::tokens::{AuthError, Authenticator, Grant};

/// Submits a TokenReview and returns its status.
#[async_trait]
pub trait TokenReviewApi: Send + Sync + 'static {
    /// Submits a TokenReview for `token` and returns its status; `Err` says why the call itself failed.
    async fn review(&self, token: &str) -> Result<TokenReviewStatus, String>;
}

/// The real API server, through `kube`.
pub struct KubeTokenReviewer {
    client: kube::Client,
    audiences: Vec<String>,
}

impl KubeTokenReviewer {
    /// Uses the in-cluster (or kubeconfig) client; `audiences` as istiod's (`istio-ca`).
    pub async fn connect(audiences: Vec<String>) -> Result<Self, kube::Error> {
        Ok(KubeTokenReviewer {
            client: kube::Client::try_default().await?,
            audiences,
        })
    }
}

#[async_trait]
impl TokenReviewApi for KubeTokenReviewer {
    async fn review(&self, token: &str) -> Result<TokenReviewStatus, String> {
        let api: kube::Api<TokenReview> = kube::Api::all(self.client.clone());
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: (!self.audiences.is_empty()).then(|| self.audiences.clone()),
            },
            ..Default::default()
        };
        let created = api
            .create(&kube::api::PostParams::default(), &review)
            .await
            .map_err(|e| e.to_string())?;
        created
            .status
            .ok_or_else(|| "the TokenReview came back without a status".to_string())
    }
}

/// Grants from TokenReviews.
pub struct TokenReviewAuthenticator<A> {
    api: A,
    trust_domain: String,
    /// `namespace/name` of service accounts that act for a whole node.
    node_proxies: Vec<String>,
}

impl<A: TokenReviewApi> TokenReviewAuthenticator<A> {
    /// An authenticator for `trust_domain`; `node_proxies` lists the `namespace/name` service accounts that may obtain any identity in it.
    pub fn new(api: A, trust_domain: impl Into<String>, node_proxies: Vec<String>) -> Self {
        TokenReviewAuthenticator {
            api,
            trust_domain: trust_domain.into(),
            node_proxies,
        }
    }
}

#[async_trait]
impl<A: TokenReviewApi> Authenticator for TokenReviewAuthenticator<A> {
    async fn authenticate(&self, token: &str) -> Result<Grant, AuthError> {
        let status = self.api.review(token).await.map_err(AuthError::Backend)?;
        if status.authenticated != Some(true) {
            return Err(AuthError::UnknownToken);
        }
        let username = status.user.and_then(|u| u.username).unwrap_or_default();
        let Some(account) = username.strip_prefix("system:serviceaccount:") else {
            return Err(AuthError::Backend(format!(
                "{username:?} is not a service account"
            )));
        };
        let Some((namespace, name)) = account.split_once(':') else {
            return Err(AuthError::Backend(format!(
                "{username:?} is not namespace:name"
            )));
        };
        let subject = format!("service account {namespace}/{name}");
        let identities = if self
            .node_proxies
            .iter()
            .any(|p| *p == format!("{namespace}/{name}"))
        {
            let everything = format!("spiffe://{}/*", self.trust_domain);
            vec![
                everything
                    .parse::<IdentityPattern>()
                    .map_err(|e| AuthError::Backend(e.to_string()))?,
            ]
        } else {
            let own = Identity::new(&self.trust_domain, namespace, name)
                .map_err(|e| AuthError::Backend(e.to_string()))?;
            vec![IdentityPattern::Exact(own)]
        };
        Ok(Grant {
            subject,
            identities,
            // Not scoped yet: the node is in a pod-bound token's review
            // (`user.extra`), but the workloads' placement would have to
            // come from the API server's pods.
            node: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::authentication::v1::UserInfo;

    /// A fake API server: it knows a fixed set of tokens (no Kubernetes runs here).
    struct FakeTokenReviewApi;

    #[async_trait]
    impl TokenReviewApi for FakeTokenReviewApi {
        async fn review(&self, token: &str) -> Result<TokenReviewStatus, String> {
            let user = |name: &str| TokenReviewStatus {
                authenticated: Some(true),
                user: Some(UserInfo {
                    username: Some(name.to_string()),
                    ..Default::default()
                }),
                ..Default::default()
            };
            match token {
                "hello-app-token" => Ok(user("system:serviceaccount:demo:hello-app")),
                "ztunnel-token" => Ok(user("system:serviceaccount:istio-system:ztunnel")),
                "human-token" => Ok(user("kubernetes-admin")),
                "down" => Err("connection refused".into()),
                _ => Ok(TokenReviewStatus {
                    authenticated: Some(false),
                    ..Default::default()
                }),
            }
        }
    }

    fn authenticator() -> TokenReviewAuthenticator<FakeTokenReviewApi> {
        TokenReviewAuthenticator::new(
            FakeTokenReviewApi,
            "cluster.local",
            vec!["istio-system/ztunnel".into()],
        )
    }

    #[tokio::test]
    async fn a_service_account_gets_its_own_identity_only() {
        let grant = authenticator()
            .authenticate("hello-app-token")
            .await
            .unwrap();
        assert!(
            grant.allows(
                &"spiffe://cluster.local/ns/demo/sa/hello-app"
                    .parse()
                    .unwrap()
            )
        );
        assert!(
            !grant.allows(
                &"spiffe://cluster.local/ns/demo/sa/postgres"
                    .parse()
                    .unwrap()
            )
        );
        assert_eq!(grant.subject, "service account demo/hello-app");
    }

    #[tokio::test]
    async fn a_node_proxy_acts_for_the_trust_domain() {
        let grant = authenticator().authenticate("ztunnel-token").await.unwrap();
        assert!(
            grant.allows(
                &"spiffe://cluster.local/ns/demo/sa/postgres"
                    .parse()
                    .unwrap()
            )
        );
        assert!(!grant.allows(&"spiffe://other.td/ns/demo/sa/postgres".parse().unwrap()));
    }

    #[tokio::test]
    async fn refusals() {
        let a = authenticator();
        assert_eq!(
            a.authenticate("forged").await.unwrap_err(),
            AuthError::UnknownToken
        );
        assert!(
            matches!(a.authenticate("human-token").await.unwrap_err(), AuthError::Backend(m) if m.contains("not a service account"))
        );
        assert!(
            matches!(a.authenticate("down").await.unwrap_err(), AuthError::Backend(m) if m.contains("refused"))
        );
    }
}
