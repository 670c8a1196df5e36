//! A node proxy's pod-bound token, as the kubelet projects one into
//! ztunnel's pod: a TokenRequest for `istio-system/ztunnel`, audience
//! `istio-ca`, bound to the node proxy's Pod, written to a file both
//! proxies read before every request — and re-issued at half its lifetime,
//! as the kubelet rotates it.
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

use crate::cluster::{ControlPlaneError, ISTIO_SYSTEM, ZTUNNEL_ACCOUNT};

/// The audience istiod's CA and xDS accept (`TOKEN_AUDIENCES`' default).
pub const AUDIENCE: &str = "istio-ca";
/// How long a token lives: an hour (the API server's minimum is 10 minutes).
pub const LIFETIME: Duration = Duration::from_secs(3600);

/// Asks the API server for a token of the `ztunnel` ServiceAccount bound to
/// the Pod `istio-system/<pod>` whose UID is `uid`.
pub async fn request(
    client: &Client,
    pod: &str,
    uid: &str,
    lifetime: Duration,
) -> Result<String, ControlPlaneError> {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), ISTIO_SYSTEM);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![AUDIENCE.into()],
            expiration_seconds: Some(lifetime.as_secs() as i64),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(pod.into()),
                uid: Some(uid.into()),
            }),
        },
        ..TokenRequest::default()
    };
    let answer = api
        .create_token_request(ZTUNNEL_ACCOUNT, &PostParams::default(), &request)
        .await
        .map_err(|source| ControlPlaneError::Api {
            step: format!("a token for {ISTIO_SYSTEM}/{ZTUNNEL_ACCOUNT} bound to pod {pod}"),
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
pub struct NodeToken {
    /// The file both proxies read the token from.
    pub path: PathBuf,
    _refresh: tokio_util::sync::DropGuard,
}

impl NodeToken {
    /// Writes a token bound to `istio-system/<pod>` (UID `uid`) to `path`
    /// and re-issues it every half `lifetime`.
    pub async fn start(
        client: &Client,
        pod: &str,
        uid: &str,
        lifetime: Duration,
        path: PathBuf,
    ) -> Result<NodeToken, ControlPlaneError> {
        write_atomically(&path, &request(client, pod, uid, lifetime).await?)?;
        let stop = CancellationToken::new();
        let (client, pod, uid, file) = (
            client.clone(),
            pod.to_string(),
            uid.to_string(),
            path.clone(),
        );
        let cancelled = stop.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(lifetime / 2) => {}
                    _ = cancelled.cancelled() => return,
                }
                match request(&client, &pod, &uid, lifetime).await {
                    Ok(token) => {
                        if let Err(e) = write_atomically(&file, &token) {
                            tracing::warn!(error = %e, "node proxy token not renewed");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(%pod, error = %e, "node proxy token not renewed; the old one serves until it expires")
                    }
                }
            }
        });
        Ok(NodeToken {
            path,
            _refresh: stop.drop_guard(),
        })
    }
}
