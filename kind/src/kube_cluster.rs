//! The real [`Cluster`]: the Kubernetes API through `kube`, with the
//! current kubeconfig context (kind/up.sh selects `kind-ebpf-lab`).

use std::time::Duration;

use hbone_policies::cilium::{CiliumClusterwideNetworkPolicy, CiliumNetworkPolicy};
use hbone_policies::istio::{AuthorizationPolicy, PeerAuthentication};
use k8s_openapi::api::core::v1::{Container, Node, Pod, PodSpec, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, ListParams, LogParams, PostParams};
use kube::{Api, Client};

use crate::node_proxy::NodeInfo;
use crate::verify::{Cluster, PodInfo, ProbeRun, ProbeSpec, ResourceRef, VerifyError};

/// A real cluster, through the kubeconfig's current context.
pub struct KubeCluster {
    client: Client,
}

fn api_err(e: kube::Error) -> VerifyError {
    VerifyError::Api(e.to_string())
}

impl KubeCluster {
    /// Connects as kubectl would (kubeconfig, or in-cluster).
    pub async fn connect() -> Result<Self, VerifyError> {
        let client = Client::try_default().await.map_err(|e| {
            VerifyError::Api(format!(
                "cannot reach a Kubernetes API ({e}); bring the lab up with kind/up.sh, \
                 or select its context: kubectl config use-context kind-ebpf-lab"
            ))
        })?;
        Ok(KubeCluster { client })
    }

    /// Uses `client` (a kubeconfig of one's choosing, such as the one
    /// `hbone-lab control-plane` writes).
    pub fn with_client(client: Client) -> Self {
        KubeCluster { client }
    }

    async fn present<K>(&self, namespace: Option<&str>, name: &str) -> Result<bool, VerifyError>
    where
        K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
        K: kube::Resource<Scope = kube::core::NamespaceResourceScope>,
    {
        let api: Api<K> = match namespace {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::default_namespaced(self.client.clone()),
        };
        Ok(api.get_opt(name).await.map_err(api_err)?.is_some())
    }
}

impl Cluster for KubeCluster {
    async fn pods(&self, namespace: &str) -> Result<Vec<PodInfo>, VerifyError> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let list = api.list(&ListParams::default()).await.map_err(api_err)?;
        Ok(list
            .items
            .into_iter()
            .map(|p| PodInfo {
                name: p.metadata.name.clone().unwrap_or_default(),
                labels: p
                    .metadata
                    .labels
                    .clone()
                    .unwrap_or_default()
                    .into_iter()
                    .collect(),
                node: p.spec.as_ref().and_then(|s| s.node_name.clone()),
                ready: p
                    .status
                    .and_then(|s| s.conditions)
                    .into_iter()
                    .flatten()
                    .any(|c| c.type_ == "Ready" && c.status == "True"),
            })
            .collect())
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, VerifyError> {
        let api: Api<Node> = Api::all(self.client.clone());
        let list = api.list(&ListParams::default()).await.map_err(api_err)?;
        Ok(list
            .items
            .into_iter()
            .map(|n| NodeInfo {
                name: n.metadata.name.unwrap_or_default(),
                labels: n.metadata.labels.unwrap_or_default().into_iter().collect(),
            })
            .collect())
    }

    async fn exists(&self, r: &ResourceRef) -> Result<bool, VerifyError> {
        let ns = r.namespace.as_deref();
        match r.kind.as_str() {
            "AuthorizationPolicy" => self.present::<AuthorizationPolicy>(ns, &r.name).await,
            "PeerAuthentication" => self.present::<PeerAuthentication>(ns, &r.name).await,
            "CiliumNetworkPolicy" => self.present::<CiliumNetworkPolicy>(ns, &r.name).await,
            "CiliumClusterwideNetworkPolicy" => {
                let api: Api<CiliumClusterwideNetworkPolicy> = Api::all(self.client.clone());
                Ok(api.get_opt(&r.name).await.map_err(api_err)?.is_some())
            }
            other => Err(VerifyError::Api(format!("unknown kind {other}"))),
        }
    }

    async fn service_type(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<String>, VerifyError> {
        let api: Api<Service> = Api::namespaced(self.client.clone(), namespace);
        Ok(api
            .get_opt(name)
            .await
            .map_err(api_err)?
            .and_then(|s| s.spec)
            .and_then(|s| s.type_))
    }

    async fn peer_authentication_mode(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<String>, VerifyError> {
        let api: Api<PeerAuthentication> = Api::namespaced(self.client.clone(), namespace);
        Ok(api.get_opt(name).await.map_err(api_err)?.and_then(|pa| {
            let mode = serde_json::to_value(pa.spec.mtls?.mode).ok()?;
            mode.as_str().map(str::to_string)
        }))
    }

    async fn run_probe(&self, spec: &ProbeSpec) -> Result<ProbeRun, VerifyError> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &spec.namespace);
        let probe_err = |message: String| VerifyError::Probe {
            pod: spec.pod_name.clone(),
            message,
        };
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some(spec.pod_name.clone()),
                labels: Some(spec.labels.clone().into_iter().collect()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                service_account_name: Some(spec.service_account.clone()),
                node_name: spec.node.clone(),
                restart_policy: Some("Never".into()),
                containers: vec![Container {
                    name: "probe".into(),
                    image: Some(spec.image.clone()),
                    image_pull_policy: Some("Never".into()),
                    args: Some(spec.args.clone()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let _ = api.delete(&spec.pod_name, &DeleteParams::default()).await;
        api.create(&PostParams::default(), &pod)
            .await
            .map_err(api_err)?;
        let mut exit_code = None;
        for _ in 0..90 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now = api.get(&spec.pod_name).await.map_err(api_err)?;
            exit_code = now
                .status
                .and_then(|s| s.container_statuses)
                .into_iter()
                .flatten()
                .find_map(|c| c.state.and_then(|s| s.terminated).map(|t| t.exit_code));
            if exit_code.is_some() {
                break;
            }
        }
        let log = api
            .logs(&spec.pod_name, &LogParams::default())
            .await
            .unwrap_or_default();
        let _ = api.delete(&spec.pod_name, &DeleteParams::default()).await;
        let exit_code = exit_code.ok_or_else(|| probe_err("did not finish within 90 s".into()))?;
        Ok(ProbeRun { exit_code, log })
    }
}
