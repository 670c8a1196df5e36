//! A pod-bound token, as the kubelet projects one into a pod: a
//! TokenRequest for the pod's ServiceAccount, audience `istio-ca`, bound to
//! the Pod, written to a file the proxy reads before every request — and
//! re-issued at half its lifetime, as the kubelet rotates it. A node
//! proxy's is `istio-system/ztunnel`'s, bound to its ztunnel Pod; a
//! dedicated ztunnel's is its workload's own.
//!
//! istiod checks it with a TokenReview: the signature, the audience, and
//! that the bound Pod still exists with the same UID. A recreated Pod needs
//! a new token.

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::PostParams;
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;

use crate::cluster::{ControlPlane, ControlPlaneError, ISTIO_SYSTEM, ZTUNNEL_ACCOUNT};
use crate::world::{Applied, WorldPod};

/// The audience istiod's CA and xDS accept (`TOKEN_AUDIENCES`' default).
pub const AUDIENCE: &str = "istio-ca";
/// How long a token lives: an hour (the API server's minimum is 10 minutes).
pub const LIFETIME: Duration = Duration::from_secs(3600);

/// Whose token: a ServiceAccount, and the Pod (running as it) the token is
/// bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundAccount {
    /// The namespace of both.
    pub namespace: String,
    /// The ServiceAccount the token speaks for.
    pub service_account: String,
    /// The Pod it is bound to.
    pub pod: String,
    /// That Pod's Kubernetes UID.
    pub uid: String,
}

impl BoundAccount {
    /// A node proxy's: `istio-system/ztunnel`, bound to its Pod `pod`.
    pub fn node_proxy(pod: &str, uid: &str) -> BoundAccount {
        BoundAccount {
            namespace: ISTIO_SYSTEM.into(),
            service_account: ZTUNNEL_ACCOUNT.into(),
            pod: pod.into(),
            uid: uid.into(),
        }
    }
}

/// Asks the API server for a token of `bound`'s ServiceAccount bound to
/// its Pod.
pub async fn request(
    client: &Client,
    bound: &BoundAccount,
    lifetime: Duration,
) -> Result<String, ControlPlaneError> {
    let BoundAccount {
        namespace,
        service_account,
        pod,
        uid,
    } = bound;
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![AUDIENCE.into()],
            expiration_seconds: Some(lifetime.as_secs() as i64),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(pod.clone()),
                uid: Some(uid.clone()),
            }),
        },
        ..TokenRequest::default()
    };
    let answer = api
        .create_token_request(service_account, &PostParams::default(), &request)
        .await
        .map_err(|source| ControlPlaneError::Api {
            step: format!("a token for {namespace}/{service_account} bound to pod {pod}"),
            source,
        })?;
    answer
        .status
        .map(|s| s.token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ControlPlaneError::Api {
            step: format!("a token bound to pod {pod}"),
            source: kube::Error::Service("the answer holds no token".into()),
        })
}

/// Writes `token` to `path` whole: a reader sees the old token or the new
/// one, never half of one.
fn write_atomically(path: &Path, token: &str) -> Result<(), ControlPlaneError> {
    let partial = path.with_extension("partial");
    hbone_ca::plugin::write_with_mode(&partial, token, 0o600)
        .and_then(|_| std::fs::rename(&partial, path))
        .map_err(|source| ControlPlaneError::Io {
            what: "cannot write the token",
            path: path.to_path_buf(),
            source,
        })
}

/// A token file kept fresh until dropped.
#[derive(Debug)]
pub struct PodToken {
    /// The file the proxy reads the token from.
    pub path: PathBuf,
    _refresh: tokio_util::sync::DropGuard,
}

impl PodToken {
    /// Writes a token of `bound` to `path` and re-issues it every half
    /// `lifetime`.
    pub async fn start(
        client: &Client,
        bound: BoundAccount,
        lifetime: Duration,
        path: PathBuf,
    ) -> Result<PodToken, ControlPlaneError> {
        write_atomically(&path, &request(client, &bound, lifetime).await?)?;
        let stop = CancellationToken::new();
        let (client, file) = (client.clone(), path.clone());
        let cancelled = stop.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(lifetime / 2) => {}
                    _ = cancelled.cancelled() => return,
                }
                match request(&client, &bound, lifetime).await {
                    Ok(token) => {
                        if let Err(e) = write_atomically(&file, &token) {
                            tracing::warn!(pod = %bound.pod, error = %e, "pod token not renewed");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(pod = %bound.pod, error = %e, "pod token not renewed; the old one serves until it expires")
                    }
                }
            }
        });
        Ok(PodToken {
            path,
            _refresh: stop.drop_guard(),
        })
    }
}

/// The tokens a control plane's pods hold (kept here, beside the token
/// files, so that the cluster module need not know the lab's world).
impl ControlPlane {
    /// A pod-bound token for `node`'s proxy, kept fresh in a file of the
    /// state folder (`applied` names the node proxy pods [`crate::world::apply`] made).
    pub async fn node_token(
        &self,
        applied: &Applied,
        node: &str,
    ) -> Result<PodToken, ControlPlaneError> {
        let (pod, uid) = applied
            .node_proxies
            .get(node)
            .ok_or_else(|| ControlPlaneError::UnknownNode(node.to_string()))?;
        PodToken::start(
            &self.client,
            BoundAccount::node_proxy(pod, uid),
            LIFETIME,
            self.dir.join(format!("{node}.token")),
        )
        .await
    }

    /// A lab pod's own token (its ServiceAccount, bound to it), kept fresh
    /// in a file of the state folder: what a dedicated ztunnel inside that
    /// pod presents. `applied` holds the pod's UID.
    pub async fn workload_token(
        &self,
        applied: &Applied,
        pod: &WorldPod,
    ) -> Result<PodToken, ControlPlaneError> {
        let key = format!("{}/{}", pod.namespace, pod.name);
        let uid = applied
            .pod_uids
            .get(&key)
            .ok_or_else(|| ControlPlaneError::UnknownPod(key.clone()))?;
        PodToken::start(
            &self.client,
            BoundAccount {
                namespace: pod.namespace.clone(),
                service_account: pod.service_account.clone(),
                pod: pod.name.clone(),
                uid: uid.clone(),
            },
            LIFETIME,
            self.dir
                .join(format!("{}.{}.token", pod.namespace, pod.name)),
        )
        .await
    }
}
