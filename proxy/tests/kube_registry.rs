//! The registry built from a Kubernetes cluster's state, and a proxy
//! following it. The API server is replaced by a fake lister (no cluster
//! can run here); the proxy and the HBONE path are real.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hbone_policies::istio::AuthorizationPolicy;
use hbone_proxy::registry::Protocol;
use hbone_proxy::sources::kube::{
    ClusterLister, ClusterPolicies, ClusterSnapshot, KubeError, PodFacts, PolicyListError,
    ServiceFacts, TargetPort, follow_cluster, registry_file, registry_from,
};
use support::{DENY_CLIENT, Lab, POLICY, echo_server, socks5_connect};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn pod(name: &str, ns: &str, ip: &str, extra: &[(&str, &str)]) -> PodFacts {
    let mut l = labels(&[("app", name)]);
    l.extend(labels(extra));
    PodFacts {
        name: format!("{name}-abc12"),
        namespace: ns.into(),
        service_account: name.into(),
        labels: l,
        ip: ip.parse().ok(),
        node: Some("kind-worker".into()),
        named_ports: BTreeMap::from([("http".to_string(), 8000)]),
    }
}

fn snapshot() -> ClusterSnapshot {
    ClusterSnapshot {
        policies: None,
        namespaces: BTreeMap::from([
            (
                "demo".to_string(),
                labels(&[("istio.io/dataplane-mode", "ambient")]),
            ),
            ("hbone-demo".to_string(), BTreeMap::new()),
            ("other".to_string(), BTreeMap::new()),
        ]),
        pods: vec![
            pod("hello-app", "demo", "10.244.1.5", &[]),
            pod(
                "opted-out",
                "demo",
                "10.244.1.6",
                &[("istio.io/dataplane-mode", "none")],
            ),
            pod(
                "hello-app",
                "hbone-demo",
                "10.244.1.7",
                &[("hbone-lab.dev/proxy", "sidecar")],
            ),
            pod("plain", "other", "10.244.1.8", &[]),
            pod("pending", "other", "not-an-ip", &[]),
        ],
        services: vec![
            ServiceFacts {
                name: "hello-app".into(),
                namespace: "demo".into(),
                cluster_ip: "10.96.0.20".parse().ok(),
                ports: vec![
                    (8000, TargetPort::Name("http".into())),
                    (9000, TargetPort::Number(9001)),
                ],
                selector: labels(&[("app", "hello-app")]),
            },
            ServiceFacts {
                name: "headless".into(),
                namespace: "demo".into(),
                cluster_ip: None,
                ports: vec![(1, TargetPort::Number(1))],
                selector: labels(&[("app", "hello-app")]),
            },
        ],
    }
}

#[test]
fn pods_and_services_become_the_registry() {
    let file = registry_file(&snapshot(), "cluster.local");
    let protocol = |name: &str, ns: &str| {
        file.workloads
            .iter()
            .find(|w| w.name.starts_with(name) && &*w.namespace == ns)
            .map(|w| w.protocol)
    };
    assert_eq!(
        protocol("hello-app", "demo"),
        Some(Protocol::Hbone),
        "ambient namespace"
    );
    assert_eq!(
        protocol("opted-out", "demo"),
        Some(Protocol::Tcp),
        "opted out of ambient"
    );
    assert_eq!(
        protocol("hello-app", "hbone-demo"),
        Some(Protocol::Hbone),
        "hbone-lab sidecar"
    );
    assert_eq!(protocol("plain", "other"), Some(Protocol::Tcp));
    assert_eq!(
        protocol("pending", "other"),
        None,
        "a pod without an address is skipped"
    );
    let sidecar = file
        .workloads
        .iter()
        .find(|w| &*w.namespace == "hbone-demo")
        .unwrap();
    assert_eq!(
        *sidecar.node, *sidecar.name,
        "a sidecar serves its own pod: its node is the pod"
    );
    let nodes: Vec<&str> = file.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(nodes, ["hello-app-abc12", "kind-worker"]);
    assert_eq!(
        file.services.len(),
        1,
        "a headless service has no VIP to resolve"
    );
    assert_eq!(
        file.services[0].ports,
        BTreeMap::from([(8000, 8000), (9000, 9001)]),
        "named target ports resolve to the backing pods' container ports"
    );
    let registry = registry_from(&snapshot(), "cluster.local").unwrap();
    let w = registry
        .workload_by_ip("10.244.1.7".parse().unwrap())
        .unwrap();
    assert_eq!(
        w.identity().to_string(),
        "spiffe://cluster.local/ns/hbone-demo/sa/hello-app"
    );
}

/// A lister whose answer the test changes.
#[derive(Clone)]
struct FakeLister(Arc<Mutex<Result<ClusterSnapshot, String>>>);

impl ClusterLister for FakeLister {
    async fn snapshot(&self) -> Result<ClusterSnapshot, KubeError> {
        self.0.lock().unwrap().clone().map_err(|e| KubeError::List {
            what: "the fake cluster",
            source: e.into(),
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_follows_the_cluster() {
    let net = 48;
    let lab = Lab::start(net).await;
    echo_server(SocketAddr::new(lab.ip("2.1"), 9000)).await;
    // The lab's own workloads, as the API server would list them, plus a new service.
    let as_pod = |w: &hbone_proxy::registry::Workload| PodFacts {
        name: w.name.to_string(),
        namespace: w.namespace.to_string(),
        service_account: w.service_account.to_string(),
        labels: (*w.labels).clone(),
        ip: Some(w.ips[0]),
        node: Some(w.node.to_string()),
        named_ports: BTreeMap::new(),
    };
    let core = lab.a.core.clone();
    let mut cluster = ClusterSnapshot {
        namespaces: BTreeMap::from([(
            "demo".to_string(),
            labels(&[("istio.io/dataplane-mode", "ambient")]),
        )]),
        pods: core
            .registry()
            .workloads
            .iter()
            .filter(|w| w.protocol == Protocol::Hbone)
            .map(|w| as_pod(w))
            .collect(),
        services: vec![],
        // The lab's policy, as the API server would list it.
        policies: Some(Ok(ClusterPolicies {
            authorization: vec![serde_yaml::from_str(POLICY).unwrap()],
            peer_authentication: vec![],
        })),
    };
    let lister = FakeLister(Arc::new(Mutex::new(Ok(cluster.clone()))));
    let stop = CancellationToken::new();
    // Taken before the follower starts, so its first swap cannot be missed.
    let started_with = core.registry();
    let follower = tokio::spawn(follow_cluster(
        core.clone(),
        lister.clone(),
        "cluster.local".into(),
        Duration::from_millis(50),
        stop.clone(),
    ));
    // The first listing replaces the registry the proxy started with.
    for _ in 0..500 {
        if !Arc::ptr_eq(&started_with, &core.registry()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        !Arc::ptr_eq(&started_with, &core.registry()),
        "the first listing was swapped in"
    );
    let vip = SocketAddr::new(lab.ip("3.7"), 7000);
    cluster.services.push(ServiceFacts {
        name: "echo-k8s".into(),
        namespace: "demo".into(),
        cluster_ip: Some(vip.ip()),
        ports: vec![(7000, TargetPort::Number(9000))],
        selector: labels(&[("app", "echo")]),
    });
    *lister.0.lock().unwrap() = Ok(cluster.clone());
    assert!(
        lab.a_knows_service("echo-k8s").await,
        "the cluster's new service reached the proxy"
    );
    lab.echo_via_a(vip, 1024).await;

    // A DENY for the client appears in the cluster: the open stream closes.
    let mut open = socks5_connect(lab.a.addrs.socks5.unwrap(), lab.ip("1.1"), vip)
        .await
        .unwrap();
    open.write_all(b"ping").await.unwrap();
    let mut back = [0u8; 4];
    open.read_exact(&mut back).await.unwrap();
    let echo_side = lab.b.core.clone();
    let deny: AuthorizationPolicy = serde_yaml::from_str(DENY_CLIENT).unwrap();
    if let Some(Ok(p)) = cluster.policies.as_mut() {
        p.authorization.push(deny);
    }
    // The echo workload's proxy follows the same cluster.
    let echo_follower = tokio::spawn(follow_cluster(
        echo_side.clone(),
        lister.clone(),
        "cluster.local".into(),
        Duration::from_millis(50),
        stop.clone(),
    ));
    *lister.0.lock().unwrap() = Ok(cluster.clone());
    let closed = tokio::time::timeout(Duration::from_secs(3), open.read(&mut back)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the open stream was closed: {closed:?}"
    );
    assert_eq!(echo_side.policies().policies().len(), 2);
    assert!(support::log_text().contains("the cluster's policies changed"));

    // A policy that does not parse: reported, and the proxy keeps the two.
    cluster.policies = Some(Err(PolicyListError::Parse {
        object: "AuthorizationPolicy demo/oops".into(),
        field: "spec.rules[0]".into(),
        message: "unknown field".into(),
    }));
    *lister.0.lock().unwrap() = Ok(cluster.clone());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(echo_side.policies().policies().len(), 2);
    assert!(support::log_text().contains("a policy in the cluster does not parse"));

    // The API server goes away: the proxy keeps what it has.
    *lister.0.lock().unwrap() = Err("connection refused".into());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        core.registry()
            .services
            .iter()
            .any(|s| s.name == "echo-k8s")
    );
    assert!(support::log_text().contains("cannot list the cluster; keeping the previous registry"));
    stop.cancel();
    // The first listing and the new service; the policy changes too, unless
    // one came and went between two of this follower's polls.
    let swapped = follower.await.unwrap();
    assert!(
        (3..=4).contains(&swapped),
        "{swapped} registries swapped in"
    );
    assert!(echo_follower.await.unwrap() >= 1);
}

/// The same lister against a real kube-apiserver (the one
/// `hbone-control-plane` runs): pods scheduled, running and addressed,
/// Services with selectors, an AuthorizationPolicy — the registry the
/// proxy would follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd, kube-apiserver and istiod (scripts/control-plane-peers.sh)"]
async fn istiod_control_plane_api_server_becomes_the_registry() {
    use hbone_control_plane::ControlPlane;
    use hbone_control_plane::world::{self, World, WorldPod, WorldService};
    use hbone_proxy::sources::kube::KubeLister;

    let control = ControlPlane::start_found()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    world::apply(
        &control.client,
        &World {
            nodes: vec!["kind-worker".into()],
            pods: vec![
                WorldPod::captured("demo", "echo", "10.244.1.2".parse().unwrap(), "kind-worker"),
                WorldPod::captured(
                    "demo",
                    "client",
                    "10.244.1.3".parse().unwrap(),
                    "kind-worker",
                ),
            ],
            services: vec![WorldService {
                name: "echo".into(),
                namespace: "demo".into(),
                vip: "10.96.0.20".parse().unwrap(),
                ports: vec![(80, 8000)],
                named_targets: Vec::new(),
                selector: labels(&[("app", "echo")]),
            }],
        },
    )
    .await
    .unwrap();
    world::apply_yaml(&control.client, POLICY, "POLICY")
        .await
        .unwrap();

    let snapshot = KubeLister::with_client(control.client.clone())
        .snapshot()
        .await
        .unwrap();
    let registry = registry_from(&snapshot, "cluster.local").unwrap();
    let echo = registry
        .workloads
        .iter()
        .find(|w| &*w.name == "echo")
        .expect("the echo pod is a workload");
    assert_eq!(
        (&*echo.namespace, &*echo.service_account, &*echo.node),
        ("demo", "echo", "kind-worker")
    );
    assert_eq!(
        *echo.ips,
        ["10.244.1.2".parse::<std::net::IpAddr>().unwrap()]
    );
    assert!(
        registry
            .workloads
            .iter()
            .all(|w| !w.name.starts_with("ztunnel-")),
        "the node proxies' pods have no address: not workloads"
    );
    let service = registry
        .services
        .iter()
        .find(|s| s.name == "echo")
        .expect("the echo Service");
    assert_eq!(
        service.vips,
        vec!["10.96.0.20".parse::<std::net::IpAddr>().unwrap()]
    );
    assert_eq!(service.ports, BTreeMap::from([(80, 8000)]));
    assert!(service.selects(echo));
    let policies = snapshot.policies.expect("Istio's CRDs are served").unwrap();
    assert_eq!(
        policies.authorization.len(),
        1,
        "{:?}",
        policies.authorization
    );
}
