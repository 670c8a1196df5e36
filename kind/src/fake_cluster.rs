//! A fake of the Kubernetes API for testing `kind verify` without a cluster
//! (none can run where hbone-lab is developed). It holds pods, resources,
//! services and a PeerAuthentication mode, and answers probe pods from a
//! table of outcomes keyed by `(source, target)`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use crate::node_proxy::NodeInfo;
use crate::verify::{Cluster, PodInfo, ProbeRun, ProbeSpec, ResourceRef, VerifyError};

#[derive(Debug, Default)]
/// A cluster made of fields, for testing `verify` where no API server runs (a fake, as its name says).
pub struct FakeCluster {
    /// Pods of the lab's namespace.
    pub pods: Vec<PodInfo>,
    /// The resources that exist.
    pub resources: BTreeSet<ResourceRef>,
    /// A Service's name → its type.
    pub service_types: BTreeMap<String, String>,
    /// The namespace-wide PeerAuthentication's mode, if one exists.
    pub peer_authentication: Option<String>,
    /// `(probe pod's service account, target argument)` → exit code.
    pub probe_outcomes: BTreeMap<(String, String), i32>,
    /// Every probe pod that was "run", for assertions.
    pub probes_run: Mutex<Vec<ProbeSpec>>,
    /// The cluster's nodes.
    pub nodes: Vec<NodeInfo>,
    /// Pods of the node proxies' namespace (istio-system).
    pub system_pods: Vec<PodInfo>,
}

impl FakeCluster {
    /// The target a probe pod was asked to try.
    pub fn target_of(spec: &ProbeSpec) -> String {
        spec.args.get(2).cloned().unwrap_or_default()
    }
}

impl Cluster for FakeCluster {
    async fn pods(&self, namespace: &str) -> Result<Vec<PodInfo>, VerifyError> {
        Ok(match namespace {
            crate::node_proxy::NAMESPACE => self.system_pods.clone(),
            _ => self.pods.clone(),
        })
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, VerifyError> {
        Ok(self.nodes.clone())
    }

    async fn exists(&self, resource: &ResourceRef) -> Result<bool, VerifyError> {
        Ok(self.resources.contains(resource))
    }

    async fn service_type(
        &self,
        _namespace: &str,
        name: &str,
    ) -> Result<Option<String>, VerifyError> {
        Ok(self.service_types.get(name).cloned())
    }

    async fn peer_authentication_mode(
        &self,
        _namespace: &str,
        _name: &str,
    ) -> Result<Option<String>, VerifyError> {
        Ok(self.peer_authentication.clone())
    }

    async fn run_probe(&self, spec: &ProbeSpec) -> Result<ProbeRun, VerifyError> {
        self.probes_run.lock().expect("lock").push(spec.clone());
        let key = (spec.service_account.clone(), Self::target_of(spec));
        match self.probe_outcomes.get(&key) {
            Some(code) => Ok(ProbeRun {
                exit_code: *code,
                log: format!("fake outcome {code}"),
            }),
            None => Err(VerifyError::Probe {
                pod: spec.pod_name.clone(),
                message: format!("the fake has no outcome for {key:?}"),
            }),
        }
    }
}
