//! A real ztunnel fed by the real istiod: shared mode in a node namespace,
//! its pod handed over by hbone-lab's ZDS node agent, istiod reached
//! through the node's relay on 127.0.0.1:15012 with a pod-bound token of
//! `istio-system/ztunnel`. ztunnel holds an impersonated certificate for
//! its pod, istiod's workloads and policies, and follows a policy applied
//! through the API server.
//!
//! Needs ZTUNNEL_BIN, root, and the programs scripts/control-plane-peers.sh
//! builds; ignored otherwise.

use std::time::Duration;

use hbone_control_plane::ControlPlane;
use hbone_control_plane::world::{self, World, WorldPod};
use hbone_harness::netns::NetNs;
use hbone_harness::ztunnel::{Mode, Settings, Ztunnel, find_binary};
use hbone_standalone::lab::istiod::NodeRelay;
use hbone_xds::MeshWorkload;
use hbone_xds::zds::{NodeAgent, ZdsPod};

const ALLOW: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: allow-gw, namespace: demo}\nspec:\n  selector: {matchLabels: {app: echo}}\n  rules: [{from: [{source: {principals: [cluster.local/ns/demo/sa/gw]}}]}]\n";
const DENY: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-other, namespace: demo}\nspec:\n  action: DENY\n  rules: [{from: [{source: {notNamespaces: [demo]}}]}]\n";

/// A pod on node-a whose service account and `app` label are `app`.
fn pod(name: &str, app: &str, ip: &str) -> WorldPod {
    WorldPod {
        name: name.into(),
        ..WorldPod::captured("demo", app, ip.parse().unwrap(), "node-a")
    }
}

fn names(dump: &serde_json::Value, section: &str, key: &str) -> Vec<String> {
    let mut out: Vec<String> = dump[section]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|i| i[key].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs ZTUNNEL_BIN, root, and etcd, kube-apiserver and istiod (scripts/control-plane-peers.sh)"]
async fn ztunnel_istiod_feeds_a_real_ztunnel_certificates_workloads_and_policies() {
    assert!(hbone_harness::netns::can_create(), "this test needs root");
    let binary = find_binary(None).expect("ZTUNNEL_BIN names a ztunnel binary");
    let control = ControlPlane::start_found()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let applied = world::apply(
        &control.client,
        &World {
            nodes: vec!["node-a".into()],
            pods: vec![
                pod("echo-0", "echo", "10.253.0.2"),
                pod("gw-0", "gw", "10.253.0.3"),
            ],
            services: Vec::new(),
        },
    )
    .await
    .unwrap();
    world::apply_yaml(&control.client, ALLOW, "ALLOW")
        .await
        .unwrap();

    let tag = std::process::id() % 10_000;
    let node = NetNs::create(&format!("hlin-{tag}")).unwrap();
    let pod_ns = NetNs::create(&format!("hlip-{tag}")).unwrap();
    let _relay = NodeRelay::start("node-a", &node, control.istiod_ports.secure_grpc).unwrap();
    let token = control.node_token(&applied, "node-a").await.unwrap();
    let root = control.dir.join("root.pem");
    std::fs::write(&root, &control.root_pem).unwrap();
    let uds = control.dir.join("ztunnel.sock");
    let agent = NodeAgent::listen(
        &uds,
        vec![ZdsPod {
            uid: MeshWorkload::pod_uid("demo", "echo-0"),
            name: "echo-0".into(),
            namespace: "demo".into(),
            service_account: "echo".into(),
            netns: pod_ns.path(),
        }],
    )
    .unwrap();
    let ztunnel = Ztunnel::start(
        &node,
        Settings {
            name: "node-a".into(),
            binary,
            control_plane: NodeRelay::url(),
            root_ca: root,
            token_file: token.path.clone(),
            node: "node-a".into(),
            mode: Mode::Shared { inpod_uds: uds },
            log: control.dir.join("ztunnel.log"),
            log_level: "info".into(),
            secret_ttl: None,
            local_config: None,
        },
    )
    .unwrap();
    agent
        .wait_synced(Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", ztunnel.log_tail(20)));

    // istiod's world and policy, and a certificate istiod granted by
    // impersonation for the pod ztunnel serves.
    let dump = ztunnel
        .wait_for_dump(
            "hold istiod's world and its pod's certificate",
            Duration::from_secs(30),
            |d| {
                names(d, "workloads", "uid").len() >= 2
                    && names(d, "policies", "name").contains(&"allow-gw".to_string())
                    && d["certificates"].as_array().is_some_and(|c| {
                        c.iter().any(|c| {
                            c["identity"] == "spiffe://cluster.local/ns/demo/sa/echo"
                                && c["certChain"].as_array().is_some_and(|ch| !ch.is_empty())
                        })
                    })
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let uids = names(&dump, "workloads", "uid");
    assert!(
        uids.contains(&"Kubernetes//Pod/demo/echo-0".to_string()),
        "{uids:?}"
    );
    let echo = dump["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["uid"] == "Kubernetes//Pod/demo/echo-0")
        .unwrap();
    assert_eq!(echo["protocol"], "HBONE", "{echo:#}");
    assert_eq!(echo["node"], "node-a", "{echo:#}");

    // A DENY applied through the API server reaches ztunnel through istiod.
    world::apply_yaml(&control.client, DENY, "DENY")
        .await
        .unwrap();
    ztunnel
        .wait_for_dump(
            "show the DENY istiod pushed",
            Duration::from_secs(20),
            |d| names(d, "policies", "name").contains(&"deny-other".to_string()),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    drop(ztunnel);
    drop(agent);
}
