//! hbone-lab's proxy fed by the real istiod, end to end on loopback: two
//! node proxies take their certificates (impersonated, with pod-bound
//! tokens of `istio-system/ztunnel`) and their world (delta ADS) from
//! istiod running on a real kube-apiserver; traffic flows through a
//! Service VIP; an AuthorizationPolicy applied through the API server is
//! pushed by istiod and refuses the next connection.
//!
//! Needs the programs `scripts/control-plane-peers.sh` builds, so it is
//! ignored unless asked for (and shows as skipped where it cannot run).

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use hbone_ca::RenewalPolicy;
use hbone_control_plane::ControlPlane;
use hbone_control_plane::tokens::PodToken;
use hbone_control_plane::world::{self, World, WorldPod, WorldService};
use hbone_proxy::ProxyHandle;
use hbone_proxy::sources::xds::{XdsSettings, XdsStatus};
use hbone_proxy::state::{CaAccess, CaToken};
use support::{DENY_CLIENT, POLICY, echo_server, ip};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const NET: u8 = 62;
/// The Service's VIP: inside the API server's service range.
const VIP: &str = "10.96.0.62";

fn pod(name: &str, host: &str, node: &str) -> WorldPod {
    WorldPod::captured("demo", name, ip(NET, host), node)
}

struct Node {
    proxy: ProxyHandle,
    status: watch::Receiver<XdsStatus>,
    _token: PodToken,
    _stop: tokio_util::sync::DropGuard,
}

/// A node proxy as ztunnel runs against istiod: its pod's token, its
/// node id naming that pod in `istio-system`, CA and xDS at istiod.
async fn node(control: &ControlPlane, applied: &world::Applied, name: &str, host: &str) -> Node {
    let token = control.node_token(applied, name).await.unwrap();
    let ca = CaAccess {
        address: control.istiod_url(),
        root_pem: control.root_pem.clone(),
        token: CaToken::File(token.path.clone()),
        renewal: RenewalPolicy::default(),
        key_log: None,
        crl: None,
    };
    let settings = XdsSettings {
        address: control.istiod_url(),
        root_pem: control.root_pem.clone(),
        token_file: Some(token.path.clone()),
        node_id: world::node_proxy_id(name, ip(NET, host)),
        metadata: world::node_proxy_metadata(name),
        root_namespace: "istio-system".into(),
        max_backoff: Duration::from_millis(500),
    };
    let stop = CancellationToken::new();
    let (proxy, status) =
        support::proxy_following(name, &ca, ip(NET, host), settings, stop.clone()).await;
    Node {
        proxy,
        status,
        _token: token,
        _stop: stop.drop_guard(),
    }
}

async fn wait_for(node: &mut Node, what: &str, f: impl Fn(&XdsStatus) -> bool) -> XdsStatus {
    support::wait_for_status(&mut node.status, what, Duration::from_secs(20), f).await
}

/// Echoes a few bytes from the client's IP to `dst` through node 1's SOCKS5.
async fn reaches(n1: &Node, dst: SocketAddr) -> bool {
    support::echoes_through(n1.proxy.addrs.socks5.unwrap(), ip(NET, "1.1"), dst).await
}

/// `istioctl ztunnel-config … --file` reads hbone-lab's `/config_dump` as
/// it reads ztunnel's: every table names what the proxy holds.
async fn istioctl_reads_the_config_dump(node: &Node) {
    let istioctl = hbone_control_plane::peers::find(hbone_control_plane::Peer::Istioctl, None)
        .unwrap_or_else(|e| panic!("{e}"));
    let (status, dump) = support::http_get(node.proxy.addrs.admin.unwrap(), "/config_dump").await;
    assert_eq!(status, 200);
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &dump).unwrap();
    for (command, expect) in [
        ("workload", vec!["echo", "client", "HBONE", "n2"]),
        ("service", vec!["echo", VIP]),
        ("policy", vec!["echo-clients", "Allow", "WorkloadSelector"]),
        (
            "certificate",
            vec![
                "spiffe://cluster.local/ns/demo/sa/echo",
                "Leaf",
                "Root",
                "Available",
            ],
        ),
    ] {
        let out = std::process::Command::new(&istioctl)
            .args(["ztunnel-config", command, "--file"])
            .arg(file.path())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "istioctl zc {command}: {}\n{dump}",
            String::from_utf8_lossy(&out.stderr)
        );
        for word in expect {
            assert!(
                text.contains(word),
                "istioctl zc {command} lacks {word}:\n{text}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd, kube-apiserver and istiod (scripts/control-plane-peers.sh)"]
async fn istiod_feeds_hbone_lab_proxies_certificates_workloads_and_policies() {
    support::capture_logs();
    let control = ControlPlane::start_found()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let applied = world::apply(
        &control.client,
        &World {
            nodes: vec!["n1".into(), "n2".into()],
            pods: vec![
                pod("client", "1.1", "n1"),
                WorldPod {
                    named_ports: BTreeMap::from([("echo-port".to_string(), 9000)]),
                    ..pod("echo", "2.1", "n2")
                },
            ],
            // Port 81 targets the pod's port by name: istiod then sends
            // target 0 on the Service and the number on the workload.
            services: vec![WorldService {
                name: "echo".into(),
                namespace: "demo".into(),
                vip: VIP.parse().unwrap(),
                ports: vec![(80, 9000)],
                named_targets: vec![(81, "echo-port".into())],
                selector: BTreeMap::from([("app".to_string(), "echo".to_string())]),
            }],
        },
    )
    .await
    .unwrap();
    world::apply_yaml(&control.client, POLICY, "POLICY")
        .await
        .unwrap();

    let mut n1 = node(&control, &applied, "n1", "1.254").await;
    let mut n2 = node(&control, &applied, "n2", "2.254").await;
    echo_server(SocketAddr::new(ip(NET, "2.1"), 9000)).await;
    for n in [&mut n1, &mut n2] {
        let s = wait_for(n, "istiod's first push", |s| {
            s.synced && s.workloads >= 2 && s.services >= 1 && s.policies >= 1
        })
        .await;
        assert_eq!(s.nacks, 0, "{s:?}");
    }
    let echo = n2
        .proxy
        .core
        .registry()
        .workloads
        .iter()
        .find(|w| &*w.name == "echo")
        .cloned()
        .expect("istiod sent echo");
    assert_eq!(&*echo.node, "n2");
    assert_eq!(echo.authorization_policies(), ["demo/echo-clients"]);

    assert!(
        reaches(&n1, SocketAddr::new(VIP.parse().unwrap(), 80)).await,
        "client reaches echo through the Service VIP, both proxies holding istiod's certificates\n{}",
        control.programs()[2].log_tail(15)
    );

    assert!(
        reaches(&n1, SocketAddr::new(VIP.parse().unwrap(), 81)).await,
        "through the Service port whose target is the pod's port named echo-port"
    );
    istioctl_reads_the_config_dump(&n2).await;

    // A DENY applied through the API server: istiod pushes it, n2 refuses.
    let acks = n2.status.borrow().acks;
    world::apply_yaml(&control.client, DENY_CLIENT, "DENY_CLIENT")
        .await
        .unwrap();
    wait_for(&mut n2, "the DENY", |s| s.acks > acks && s.policies >= 2).await;
    assert!(
        !reaches(&n1, SocketAddr::new(ip(NET, "2.1"), 9000)).await,
        "the DENY pushed by istiod refuses the client"
    );
    // Removed again: allowed again.
    let acks = n2.status.borrow().acks;
    world::delete_yaml(&control.client, DENY_CLIENT, "DENY_CLIENT")
        .await
        .unwrap();
    wait_for(&mut n2, "the DENY's removal", |s| {
        s.acks > acks && s.policies == 1
    })
    .await;
    assert!(reaches(&n1, SocketAddr::new(ip(NET, "2.1"), 9000)).await);
}
