//! `kind verify` against a real kube-apiserver (the one
//! `hbone-control-plane` runs), instead of the fake cluster: the kind lab's
//! manifests and `policies/` applied as a user would apply them, its pods
//! made Running by a stand-in for what cannot run here, and the static
//! checks read back through `kube` from the real API.
//!
//! What needs a kubelet or a controller is not here: nothing turns a
//! Deployment into pods (no kube-controller-manager, no kubelet), so
//! `FakeKubeletWithDeploymentController` below creates one Running pod per
//! Deployment and says so in its name; the Gateway (istiod's gateway
//! controller and Envoy) and the probe pods of the connectivity matrix are
//! left out, and the checks that need them are named below.
//!
//! Needs the programs scripts/control-plane-peers.sh builds; ignored
//! otherwise.

use std::path::{Path, PathBuf};

use hbone_control_plane::ControlPlane;
use hbone_control_plane::world::{self, set_running};
use hbone_kind::kube_cluster::KubeCluster;
use hbone_kind::verify::{VerifyOptions, verify};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::{ListParams, ObjectMeta, PostParams};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Cilium's two policy CRDs, accepting any spec: Cilium's own CRDs come
/// with its operator, which does not run here, and `kind verify` only asks
/// whether each policy exists.
fn cilium_crd(kind: &str, plural: &str, scope: &str) -> CustomResourceDefinition {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{plural}.cilium.io")},
        "spec": {
            "group": "cilium.io",
            "scope": scope,
            "names": {"kind": kind, "plural": plural, "singular": kind.to_lowercase(), "listKind": format!("{kind}List")},
            "versions": [{"name": "v2", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}],
        },
    }))
    .unwrap()
}

/// What a kube-controller-manager and a kubelet would do for the lab's
/// Deployments, and no more: one pod per Deployment from its template, on
/// `node`, then Running and Ready with an address.
struct FakeKubeletWithDeploymentController;

impl FakeKubeletWithDeploymentController {
    async fn run_deployments(client: &kube::Client, namespace: &str, node: &str) {
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
        let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
        let list = deployments.list(&ListParams::default()).await.unwrap();
        for (i, d) in list.items.iter().enumerate() {
            let name = d.metadata.name.clone().unwrap();
            let template = d.spec.clone().unwrap().template;
            let mut spec = template.spec.unwrap();
            spec.node_name = Some(node.into());
            let pod = Pod {
                metadata: ObjectMeta {
                    name: Some(format!("{name}-fake0")),
                    namespace: Some(namespace.into()),
                    labels: template.metadata.and_then(|m| m.labels),
                    ..ObjectMeta::default()
                },
                spec: Some(spec),
                ..Pod::default()
            };
            pods.create(&PostParams::default(), &pod).await.unwrap();
            let ip = format!("10.244.9.{}", 10 + i).parse().unwrap();
            set_running(client, namespace, &format!("{name}-fake0"), ip)
                .await
                .unwrap();
        }
    }
}

/// Documents of `file` but the Gateway API's (no CRDs for them here).
fn without_gateway_api(text: &str) -> String {
    text.split("\n---")
        .filter(|doc| !doc.contains("apiVersion: gateway.networking.k8s.io"))
        .collect::<Vec<_>>()
        .join("\n---")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd, kube-apiserver and istiod (scripts/control-plane-peers.sh)"]
async fn istiod_control_plane_kind_verify_reads_a_real_api_server() {
    let control = ControlPlane::start_found()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let client = control.client.clone();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in [
        cilium_crd("CiliumNetworkPolicy", "ciliumnetworkpolicies", "Namespaced"),
        cilium_crd(
            "CiliumClusterwideNetworkPolicy",
            "ciliumclusterwidenetworkpolicies",
            "Cluster",
        ),
    ] {
        crds.create(&PostParams::default(), &crd).await.unwrap();
    }
    // The CRDs take a moment to be served.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;

    let manifests = repo().join("kind/manifests");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&manifests)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    for file in &files {
        let text = without_gateway_api(&std::fs::read_to_string(file).unwrap());
        let created = world::apply_yaml(&client, &text, &file.display().to_string()).await;
        created.unwrap_or_else(|e| panic!("{e}"));
    }
    // test-pod is a bare Pod: the kubelet would run it.
    set_running(&client, "demo", "test-pod", "10.244.9.2".parse().unwrap())
        .await
        .unwrap();
    FakeKubeletWithDeploymentController::run_deployments(&client, "demo", "kind-worker").await;
    for dir in ["policies/istio", "policies/cilium"] {
        let mut policy_files: Vec<PathBuf> = std::fs::read_dir(repo().join(dir))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .collect();
        policy_files.sort();
        for file in policy_files {
            let text = std::fs::read_to_string(&file).unwrap();
            world::apply_yaml(&client, &text, &file.display().to_string())
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
    }

    let loaded = hbone_kind::manifests::load_dir(&manifests).unwrap();
    let topology = hbone_kind::topology::topology(&loaded);
    let resources = hbone_policies::lab::lab_resources().unwrap();
    let report = verify(
        &KubeCluster::with_client(client),
        &topology,
        &resources,
        &VerifyOptions {
            namespace: "demo".into(),
            image: "hbone-lab:dev".into(),
            connectivity: false,
        },
    )
    .await
    .unwrap();
    // Istio's gateway controller and Envoy make the gateway's pod and
    // Service; they do not run here, so exactly those two checks fail.
    let failed: Vec<String> = report
        .checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| c.name.clone())
        .collect();
    assert_eq!(
        failed,
        [
            "pod hello-gateway ready",
            "service hello-gateway-istio is ClusterIP"
        ],
        "{:#?}",
        report.checks
    );
    let passed = report.checks.iter().filter(|c| c.ok).count();
    assert!(passed >= 20, "{:#?}", report.checks);
}
