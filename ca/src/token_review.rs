//! In-cluster authentication: a Kubernetes TokenReview, as istiod does it.
//!
//! A workload (or ztunnel) sends its projected service-account token; the
//! API server says whether it is valid and whose it is
//! (`system:serviceaccount:<namespace>:<name>`). That service account may
//! obtain exactly its own identity. Node proxies — ztunnel's or hbone-lab's
//! own service account — ask on behalf of the workloads on their node, and
//! get only those, as istiod's node authorizer grants them: the node is the
//! one the review of their pod-bound token names, and the CA's
//! [`crate::placement::Places`] (in a cluster the API server's pods) says
//! which identities run there. A node proxy whose token names no node
//! obtains nothing.
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
        Ok(Self::new(kube::Client::try_default().await?, audiences))
    }

    /// Reviews through `client`; `audiences` as istiod's (`istio-ca`).
    pub fn new(client: kube::Client, audiences: Vec<String>) -> Self {
        KubeTokenReviewer { client, audiences }
    }

    /// The API server client, to ask it more (the pods on a node).
    pub fn client(&self) -> &kube::Client {
        &self.client
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

/// Where the API server names the node of a pod-bound token's pod, in the
/// review's `user.extra` (Kubernetes 1.30 and newer).
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";

/// Grants from TokenReviews: a service account obtains its own identity; a
/// node proxy's account ([`TokenReviewAuthenticator::new`]'s `node_proxies`)
/// obtains identities of the workloads on its token's node, checked
/// against a [`crate::placement::Places`] (istiod's node authorization).
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
        let user = status.user.unwrap_or_default();
        let username = user.username.unwrap_or_default();
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
        let is_node_proxy = self
            .node_proxies
            .iter()
            .any(|p| *p == format!("{namespace}/{name}"));
        if !is_node_proxy {
            let own = Identity::new(&self.trust_domain, namespace, name)
                .map_err(|e| AuthError::Backend(e.to_string()))?;
            return Ok(Grant {
                subject,
                identities: vec![IdentityPattern::Exact(own)],
                node: None,
            });
        }
        // A node proxy acts for the workloads on its node, and only those:
        // the node is the one its token's pod is scheduled on, which the
        // API server names in the review of a pod-bound token.
        let node = user
            .extra
            .as_ref()
            .and_then(|extra| extra.get(NODE_NAME_EXTRA))
            .and_then(|names| names.first())
            .filter(|name| !name.is_empty())
            .ok_or_else(|| {
                AuthError::Backend(format!(
                    "{subject} is a node proxy, and its token names no node (`{NODE_NAME_EXTRA}`): \
                     give it a token bound to its pod (a projected service account token, Kubernetes 1.30 or newer)"
                ))
            })?
            .clone();
        let everything = format!("spiffe://{}/*", self.trust_domain);
        Ok(Grant {
            subject: format!("{subject} on node {node}"),
            identities: vec![
                everything
                    .parse::<IdentityPattern>()
                    .map_err(|e| AuthError::Backend(e.to_string()))?,
            ],
            node: Some(node),
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
                "ztunnel-token" => {
                    let mut status = user("system:serviceaccount:istio-system:ztunnel");
                    if let Some(user) = status.user.as_mut() {
                        user.extra = Some(
                            [(NODE_NAME_EXTRA.to_string(), vec!["node-1".to_string()])].into(),
                        );
                    }
                    Ok(status)
                }
                "unbound-ztunnel-token" => Ok(user("system:serviceaccount:istio-system:ztunnel")),
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
    async fn a_node_proxy_acts_for_the_trust_domain_on_its_tokens_node_only() {
        let grant = authenticator().authenticate("ztunnel-token").await.unwrap();
        assert_eq!(grant.node.as_deref(), Some("node-1"));
        assert!(grant.subject.contains("node-1"), "{}", grant.subject);
        let unbound = authenticator()
            .authenticate("unbound-ztunnel-token")
            .await
            .unwrap_err();
        assert!(
            matches!(&unbound, AuthError::Backend(m) if m.contains("names no node")),
            "{unbound:?}"
        );
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
