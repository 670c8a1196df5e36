//! The real control plane, end to end: etcd, kube-apiserver and istiod
//! started here; a node proxy's pod-bound token; istiod's CA granting (and
//! refusing) impersonated certificates; istiod's delta ADS serving the
//! lab's world as `Address` resources.
//!
//! These need the programs `scripts/control-plane-peers.sh` builds (or
//! ETCD_BIN, KUBE_APISERVER_BIN, ISTIOD_BIN), so they are ignored unless
//! asked for, and show as skipped where they cannot run; `scripts/test.sh`
//! asks for them once the programs are built.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hbone_ca::authority::{AuthorityConfig, SigningAuthority};
use hbone_ca::client::CaClient;
use hbone_ca::identity::Identity;
use hbone_ca::manager::new_key_and_csr;
use hbone_ca::metrics::CaMetrics;
use hbone_ca::placement::ApiServerPods;
use hbone_ca::server::{CaService, RunningCa, serve};
use hbone_ca::token_review::{KubeTokenReviewer, TokenReviewAuthenticator};
use hbone_control_plane::tokens;
use hbone_control_plane::world::{self, World, WorldPod, WorldService};
use hbone_control_plane::{ControlPlane, ControlPlaneOptions, Given, Programs};
use hbone_xds::client::{AdsClient, node};
use hbone_xds::receive::{ReceivedAddress, address};

const NEEDS: &str = "needs etcd, kube-apiserver and istiod (scripts/control-plane-peers.sh)";
const ADDRESS: &str = "type.googleapis.com/istio.workload.Address";
const AUTHORIZATION: &str = "type.googleapis.com/istio.security.Authorization";

/// One control plane at a time in this binary: three at once on two
/// cores would only measure the machine.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn start() -> ControlPlane {
    ControlPlane::start_found()
        .await
        .unwrap_or_else(|e| panic!("{NEEDS}: {e}"))
}

fn pod(name: &str, ip: &str, node: &str) -> WorldPod {
    WorldPod::captured("demo", name, ip.parse().unwrap(), node)
}

fn small_world() -> World {
    World {
        nodes: vec!["node-1".into(), "node-2".into()],
        pods: vec![
            pod("test-pod", "10.244.1.11", "node-1"),
            pod("hello-app", "10.244.2.10", "node-2"),
        ],
        services: vec![WorldService {
            name: "hello-app".into(),
            namespace: "demo".into(),
            vip: "10.96.0.10".parse().unwrap(),
            ports: vec![(8080, 8080)],
            named_targets: Vec::new(),
            selector: BTreeMap::from([("app".to_string(), "hello-app".to_string())]),
        }],
    }
}

/// What ztunnel on `node` introduces itself as.
fn ztunnel_node(node_name: &str) -> hbone_xds::proto::discovery::Node {
    node(
        &world::node_proxy_id(node_name, "10.250.0.1".parse().unwrap()),
        &world::node_proxy_metadata(node_name),
    )
}

/// hbone-lab's CA in a cluster (`ca serve --token-review`): TokenReviews
/// and the pods on a node from `control`'s API server.
async fn hbone_lab_ca(control: &ControlPlane) -> RunningCa {
    let authority =
        Arc::new(SigningAuthority::generate(AuthorityConfig::new("cluster.local")).unwrap());
    let reviewer = KubeTokenReviewer::new(control.client.clone(), vec![tokens::AUDIENCE.into()]);
    let authenticator = TokenReviewAuthenticator::new(
        reviewer,
        "cluster.local",
        vec!["istio-system/ztunnel".into()],
    );
    let service = CaService::new(
        authority,
        Arc::new(authenticator),
        Arc::new(CaMetrics::default()),
    )
    .with_placement(Arc::new(ApiServerPods::new(
        control.client.clone(),
        "cluster.local",
    )));
    serve(Arc::new(service), "127.0.0.1:0".parse().unwrap(), &[])
        .await
        .unwrap()
}

async fn certificate_for(ca: &CaClient, spiffe: &str) -> Result<Vec<String>, String> {
    let identity: Identity = spiffe.parse().unwrap();
    let (_key, csr) = new_key_and_csr(&identity).unwrap();
    ca.create_certificate(&csr, Duration::from_secs(3600), Some(&identity))
        .await
        .map_err(|e| e.to_string())
}

#[tokio::test]
#[ignore = "needs etcd, kube-apiserver and istiod (scripts/control-plane-peers.sh)"]
async fn istiod_impersonates_for_pods_on_the_callers_node_only_and_serves_addresses() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let control = start().await;
    let applied = world::apply(&control.client, &small_world()).await.unwrap();
    let token = control.node_token(&applied, "node-1").await.unwrap();

    let ca =
        CaClient::with_token_file(&control.istiod_url(), &control.root_pem, &token.path).unwrap();
    // A pod on node-1: granted, chaining to the mesh root.
    let chain = certificate_for(&ca, "spiffe://cluster.local/ns/demo/sa/test-pod")
        .await
        .unwrap_or_else(|e| {
            panic!(
                "istiod refused node-1's own pod: {e}\n{}",
                control.programs()[2].log_tail(20)
            )
        });
    assert!(!chain.is_empty());
    // A pod on node-2: refused, as istiod's node authorizer says.
    let refused = certificate_for(&ca, "spiffe://cluster.local/ns/demo/sa/hello-app").await;
    assert!(
        refused.is_err(),
        "istiod granted node-1 a certificate for node-2's pod"
    );
    // No such pod anywhere: refused.
    let nobody = certificate_for(&ca, "spiffe://cluster.local/ns/demo/sa/nobody").await;
    assert!(nobody.is_err());

    // hbone-lab's CA, reviewing the same token with the same API server,
    // decides each request as istiod did (issue 30: node-scoped tokens).
    let ours = hbone_lab_ca(&control).await;
    let our_client = CaClient::with_token_file(
        &ours.url(),
        ours.service.authority().root_pem(),
        &token.path,
    )
    .unwrap();
    for (spiffe, istiod_granted) in [
        ("spiffe://cluster.local/ns/demo/sa/test-pod", true),
        ("spiffe://cluster.local/ns/demo/sa/hello-app", false),
        ("spiffe://cluster.local/ns/demo/sa/nobody", false),
    ] {
        let answer = certificate_for(&our_client, spiffe).await;
        assert_eq!(
            answer.is_ok(),
            istiod_granted,
            "hbone-lab's CA and istiod disagree on node-1's request for {spiffe}: {answer:?}"
        );
        if let Err(refusal) = answer {
            assert!(refusal.contains("identity_not_on_node"), "{refusal}");
        }
    }
    ours.shutdown().await;

    // xDS: the stream is accepted with the same token, and the world arrives.
    let bearer = std::fs::read_to_string(&token.path).unwrap();
    let mut ads = AdsClient::connect(
        &control.istiod_url(),
        &control.root_pem,
        Some(bearer.trim()),
        ztunnel_node("node-1"),
    )
    .await
    .unwrap();
    ads.subscribe(ADDRESS, HashMap::new()).await.unwrap();
    ads.subscribe(AUTHORIZATION, HashMap::new()).await.unwrap();
    let mut received = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while received
        .iter()
        .filter(|a| matches!(a, ReceivedAddress::Workload(_)))
        .count()
        < 2
    {
        let response = tokio::time::timeout_at(deadline, ads.receive())
            .await
            .expect("istiod sent the lab's workloads within 20 s")
            .unwrap();
        ads.ack(&response).await.unwrap();
        if response.type_url != ADDRESS {
            continue;
        }
        for resource in &response.resources {
            let any = resource.resource.as_ref().unwrap();
            let decoded: hbone_xds::proto::workload::Address =
                prost::Message::decode(any.value.as_slice()).unwrap();
            received.push(address(&resource.name, &decoded).unwrap());
        }
    }
    let workload = received
        .iter()
        .find_map(|a| match a {
            ReceivedAddress::Workload(w) if w.workload.name == "hello-app" => Some(&w.workload),
            _ => None,
        })
        .expect("hello-app among the workloads");
    assert_eq!(workload.node, "node-2");
    assert_eq!(workload.service_account, "hello-app");
    assert!(
        workload.hbone,
        "the annotated pod is sent with tunnel protocol HBONE"
    );
    assert_eq!(
        workload.ips,
        vec!["10.244.2.10".parse::<std::net::IpAddr>().unwrap()]
    );
    assert!(
        received
            .iter()
            .any(|a| matches!(a, ReceivedAddress::Service(s) if s.name == "hello-app")),
        "the hello-app Service is among the addresses: {received:?}"
    );
    drop(ads);
    drop(token);
}

#[tokio::test]
#[ignore = "needs etcd, kube-apiserver and istiod (scripts/control-plane-peers.sh)"]
async fn istiod_control_plane_stops_cleanly_and_leaves_nothing_behind() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let control = start().await;
    let dir = control.dir.clone();
    let pids: Vec<u32> = control.programs().iter().map(|p| p.pid()).collect();
    let ports = [control.api_server, control.istiod_ports.secure_grpc];
    assert!(dir.join("kubeconfig").is_file());
    drop(control);
    assert!(!dir.exists(), "{} is left behind", dir.display());
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} outlived the control plane"
        );
    }
    for port in ports {
        assert!(
            tokio::net::TcpStream::connect(port).await.is_err(),
            "something still listens on {port}"
        );
    }
}

#[tokio::test]
#[ignore = "needs etcd, kube-apiserver and istiod (scripts/control-plane-peers.sh)"]
async fn istiod_a_second_control_plane_in_the_same_folder_is_refused() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let programs = Programs::find(&Given::default()).unwrap_or_else(|e| panic!("{NEEDS}: {e}"));
    let dir = tempfile::tempdir().unwrap();
    let mut options = ControlPlaneOptions::new(programs);
    options.dir = Some(dir.path().to_path_buf());
    let first = ControlPlane::start(options.clone()).await.unwrap();
    let second = ControlPlane::start(options).await.unwrap_err();
    let text = second.to_string();
    assert!(text.contains("already running"), "{text}");
    assert!(text.contains(&std::process::id().to_string()), "{text}");
    drop(first);
}
