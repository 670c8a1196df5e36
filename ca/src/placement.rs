//! Where workloads run, so that a node's token obtains only the identities
//! of workloads on its own node — istiod's node authorization. A hostile
//! pass (issue 30, finding 8) had node-1's token obtain a certificate for a
//! workload on node-2: tokens granted identities, not nodes.
//!
//! A grant scoped to a node ([`crate::tokens::Grant::node`]) is checked
//! against a [`Places`]: standalone, a [`Placement`] map that whoever knows
//! the workloads keeps current (`ca serve --registry`, the lab); in a
//! cluster, [`ApiServerPods`], which asks the API server for the pods
//! scheduled on the node at the moment of the request, as istiod's node
//! authorizer consults its pod cache. Asking each time (certificates are
//! requested at start and every 12 hours) means a pod that moved or left
//! stops counting at once, with no cache to go stale.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use thiserror::Error;

use crate::identity::Identity;

/// Why the placement of workloads could not be learned.
#[derive(Debug, Error)]
pub enum PlacementError {
    /// The API server did not answer the list of pods on the node.
    #[error("listing the pods on node {node}: {source}")]
    ListPods {
        /// The node asked about.
        node: String,
        /// What the API server said.
        #[source]
        source: kube::Error,
    },
}

/// Knows whether a workload with a given identity runs on a node.
#[async_trait]
pub trait Places: Send + Sync + 'static {
    /// Whether a workload with `identity` runs on `node`.
    async fn places(&self, node: &str, identity: &Identity) -> Result<bool, PlacementError>;
}

/// Node → the identities of the workloads placed on it, replaced whole
/// whenever its source changes.
#[derive(Debug, Default)]
pub struct Placement(RwLock<Arc<HashMap<String, HashSet<Identity>>>>);

impl Placement {
    /// Replaces the whole map with `(node, identity)` pairs.
    pub fn replace(&self, pairs: impl IntoIterator<Item = (String, Identity)>) {
        let mut map: HashMap<String, HashSet<Identity>> = HashMap::new();
        for (node, identity) in pairs {
            map.entry(node).or_default().insert(identity);
        }
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(map);
    }

    /// Whether a workload with `identity` runs on `node`, by the map as it is now.
    pub fn contains(&self, node: &str, identity: &Identity) -> bool {
        let map = self.0.read().unwrap_or_else(|e| e.into_inner()).clone();
        map.get(node).is_some_and(|ids| ids.contains(identity))
    }
}

#[async_trait]
impl Places for Placement {
    async fn places(&self, node: &str, identity: &Identity) -> Result<bool, PlacementError> {
        Ok(self.contains(node, identity))
    }
}

/// The API server's pods: a workload runs on a node when a pod scheduled
/// there (`spec.nodeName`), not yet finished, runs as the identity's
/// service account in its namespace. The CA's service account needs
/// `list` on pods cluster-wide.
pub struct ApiServerPods {
    client: kube::Client,
    trust_domain: String,
}

impl ApiServerPods {
    /// Asks the API server behind `client`; identities outside `trust_domain` run nowhere.
    pub fn new(client: kube::Client, trust_domain: impl Into<String>) -> Self {
        ApiServerPods {
            client,
            trust_domain: trust_domain.into(),
        }
    }
}

/// Whether `pod` runs as `identity` (trust domain already checked).
fn runs_as(pod: &Pod, identity: &Identity) -> bool {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    let spec = pod.spec.as_ref();
    let account = spec
        .and_then(|s| s.service_account_name.as_deref())
        .unwrap_or("default");
    let finished = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|phase| phase == "Succeeded" || phase == "Failed");
    !finished && namespace == identity.namespace() && account == identity.service_account()
}

#[async_trait]
impl Places for ApiServerPods {
    async fn places(&self, node: &str, identity: &Identity) -> Result<bool, PlacementError> {
        if identity.trust_domain() != self.trust_domain {
            return Ok(false);
        }
        let pods: kube::Api<Pod> = kube::Api::namespaced(self.client.clone(), identity.namespace());
        let on_node = ListParams::default().fields(&format!("spec.nodeName={node}"));
        let list = pods
            .list(&on_node)
            .await
            .map_err(|source| PlacementError::ListPods {
                node: node.to_string(),
                source,
            })?;
        Ok(list.items.iter().any(|pod| runs_as(pod, identity)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodSpec, PodStatus};
    use kube::api::ObjectMeta;

    fn id(s: &str) -> Identity {
        s.parse().unwrap()
    }

    #[tokio::test]
    async fn an_identity_is_placed_only_on_its_nodes() {
        let placement = Placement::default();
        placement.replace([
            (
                "node-1".to_string(),
                id("spiffe://cluster.local/ns/demo/sa/a"),
            ),
            (
                "node-2".to_string(),
                id("spiffe://cluster.local/ns/demo/sa/b"),
            ),
        ]);
        let a = id("spiffe://cluster.local/ns/demo/sa/a");
        assert!(placement.places("node-1", &a).await.unwrap());
        assert!(!placement.contains("node-1", &id("spiffe://cluster.local/ns/demo/sa/b")));
        assert!(!placement.contains("node-3", &a));
        placement.replace([]);
        assert!(!placement.contains("node-1", &a));
    }

    #[test]
    fn a_pod_runs_as_its_namespace_and_service_account_until_it_finishes() {
        let pod = |namespace: &str, account: Option<&str>, phase: &str| Pod {
            metadata: ObjectMeta {
                namespace: Some(namespace.into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                service_account_name: account.map(str::to_string),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                ..Default::default()
            }),
        };
        let hello = id("spiffe://cluster.local/ns/demo/sa/hello-app");
        assert!(runs_as(&pod("demo", Some("hello-app"), "Running"), &hello));
        assert!(runs_as(&pod("demo", Some("hello-app"), "Pending"), &hello));
        assert!(!runs_as(
            &pod("demo", Some("hello-app"), "Succeeded"),
            &hello
        ));
        assert!(!runs_as(
            &pod("other", Some("hello-app"), "Running"),
            &hello
        ));
        assert!(!runs_as(&pod("demo", Some("postgres"), "Running"), &hello));
        // No service account named: the namespace's `default`.
        let default = id("spiffe://cluster.local/ns/demo/sa/default");
        assert!(runs_as(&pod("demo", None, "Running"), &default));
    }
}
