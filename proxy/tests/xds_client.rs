//! The proxy fed over xDS by hbone-lab's own control plane (CA and delta
//! ADS on one TLS port, as istiod serves them), end to end on loopback:
//! the workloads arrive and their listeners open, traffic flows through a
//! service VIP, a new DENY closes an open stream, a workload removed takes
//! its listener with it, an unusable resource is NACKed while the rest
//! applies, and a restarted server is rejoined with the versions held.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hbone_ca::metrics::CaMetrics;
use hbone_ca::server::CaService;
use hbone_ca::tokens::TokenFile;
use hbone_ca::{AuthorityConfig, IdentityPattern, RenewalPolicy, SigningAuthority};
use hbone_policies::load::{istio_policies, parse_documents};
use hbone_proxy::ProxyHandle;
use hbone_proxy::sources::xds::{XdsSettings, XdsStatus};
use hbone_proxy::state::{CaAccess, CaToken};
use hbone_xds::{Mesh, MeshService, MeshWorkload, RunningControlPlane, XdsState};
use support::{DENY_CLIENT, POLICY, TOKEN, echo_server, ip, socks5_connect};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const NET: u8 = 61;

fn pod(name: &str, host: &str, node: &str) -> MeshWorkload {
    let mut w = MeshWorkload::pod("demo", name, name, ip(NET, host), name, node);
    if name == "echo" {
        w.services
            .insert("demo/echo.demo.svc.cluster.local".into(), vec![(80, 9000)]);
    }
    w
}

fn mesh(workloads: Vec<MeshWorkload>, policies: &str) -> Mesh {
    Mesh {
        workloads,
        services: vec![MeshService {
            name: "echo".into(),
            namespace: "demo".into(),
            hostname: "echo.demo.svc.cluster.local".into(),
            vips: vec![ip(NET, "3.1")],
            ports: vec![(80, 9000)],
        }],
        policies: istio_policies(
            &parse_documents(policies, "policies.yaml").unwrap(),
            "istio-system",
        ),
    }
}

async fn control_plane(ca: Arc<CaService>, first: &Mesh) -> RunningControlPlane {
    let tokens: IdentityPattern = "spiffe://cluster.local/*".parse().unwrap();
    let xds = XdsState::new(
        first,
        Some(Arc::new(TokenFile::single(TOKEN, vec![tokens]))),
    );
    let listen = SocketAddr::new(ip(NET, "0.1"), 15012);
    for _ in 0..50 {
        match hbone_xds::serve(ca.clone(), xds.clone(), listen, &[]).await {
            Ok(running) => return running,
            // The previous server's port may take a moment to be free.
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    panic!("cannot serve on {listen}");
}

struct Node {
    proxy: ProxyHandle,
    status: watch::Receiver<XdsStatus>,
}

async fn node(
    name: &str,
    url: &str,
    root_pem: &str,
    token_file: &std::path::Path,
    host: &str,
) -> Node {
    let ca = CaAccess {
        address: url.into(),
        root_pem: root_pem.into(),
        token: CaToken::Value(TOKEN.into()),
        renewal: RenewalPolicy::default(),
        key_log: None,
        crl: None,
    };
    let settings = XdsSettings {
        address: url.into(),
        root_pem: root_pem.into(),
        token_file: Some(token_file.to_path_buf()),
        node_id: format!(
            "ztunnel~{}~{name}.demo~demo.svc.cluster.local",
            ip(NET, host)
        ),
        metadata: Default::default(),
        root_namespace: "istio-system".into(),
        max_backoff: Duration::from_millis(400),
    };
    let (proxy, status) =
        support::proxy_following(name, &ca, ip(NET, host), settings, CancellationToken::new())
            .await;
    Node { proxy, status }
}

async fn wait_for(node: &mut Node, what: &str, f: impl Fn(&XdsStatus) -> bool) -> XdsStatus {
    support::wait_for_status(&mut node.status, what, Duration::from_secs(10), f).await
}

/// Echoes a few bytes from the client's IP to `dst` through node 1's SOCKS5.
async fn reaches(n1: &Node, dst: SocketAddr) -> bool {
    support::echoes_through(n1.proxy.addrs.socks5.unwrap(), ip(NET, "1.1"), dst).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_follows_the_control_plane_over_delta_ads() {
    support::capture_logs();
    let authority =
        Arc::new(SigningAuthority::generate(AuthorityConfig::new("cluster.local")).unwrap());
    let everyone: IdentityPattern = "spiffe://cluster.local/*".parse().unwrap();
    let ca = Arc::new(CaService::new(
        authority.clone(),
        Arc::new(TokenFile::single(TOKEN, vec![everyone])),
        Arc::new(CaMetrics::default()),
    ));
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let root = authority.root_pem().to_string();

    let both = || vec![pod("client", "1.1", "n1"), pod("echo", "2.1", "n2")];
    let server = control_plane(ca.clone(), &mesh(both(), POLICY)).await;
    let url = server.url();
    let mut n1 = node("n1", &url, &root, &token_file, "1.254").await;
    let mut n2 = node("n2", &url, &root, &token_file, "2.254").await;
    echo_server(SocketAddr::new(ip(NET, "2.1"), 9000)).await;

    // Synced: both nodes hold both workloads, the service and the policy,
    // and n2 opened echo's listener, which was not there at start.
    for n in [&mut n1, &mut n2] {
        let s = wait_for(n, "the first sync", |s| s.synced && s.workloads == 2).await;
        assert_eq!((s.services, s.policies, s.nacks), (1, 1, 0), "{s:?}");
        assert!(n.proxy.core.waiting_for().is_none());
    }
    let echo = n2
        .proxy
        .core
        .registry()
        .workloads
        .iter()
        .find(|w| &*w.name == "echo")
        .cloned()
        .unwrap();
    assert_eq!(
        *echo.authorization_policies(),
        ["demo/echo-clients"],
        "the listed keys arrive with the workload"
    );
    assert!(
        reaches(&n1, SocketAddr::new(ip(NET, "3.1"), 80)).await,
        "through the service VIP"
    );

    // A DENY pushed: the open stream is closed, a new one refused.
    let mut held = socks5_connect(
        n1.proxy.addrs.socks5.unwrap(),
        ip(NET, "1.1"),
        SocketAddr::new(ip(NET, "2.1"), 9000),
    )
    .await
    .unwrap();
    held.write_all(b"ping").await.unwrap();
    let mut back = [0u8; 4];
    held.read_exact(&mut back).await.unwrap();
    let acks = n2.status.borrow().acks;
    server
        .xds
        .update(&mesh(both(), &format!("{POLICY}\n---\n{DENY_CLIENT}")));
    wait_for(&mut n2, "the DENY", |s| s.acks > acks && s.policies == 2).await;
    let mut buf = [0u8; 16];
    let closed = tokio::time::timeout(Duration::from_secs(3), held.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the open stream is closed: {closed:?}"
    );
    let again = reaches(&n1, SocketAddr::new(ip(NET, "2.1"), 9000)).await;
    assert!(
        !again,
        "a new stream on the pooled connection is refused too"
    );

    // An unusable workload (no namespace) is NACKed; the rest applies.
    let mut broken = both();
    broken[1].services.clear();
    let mut bad = pod("nameless", "2.7", "n2");
    bad.namespace.clear();
    broken.push(bad);
    server.xds.update(&mesh(broken, POLICY));
    let s = wait_for(&mut n2, "the NACK", |s| s.nacks == 1).await;
    assert!(
        s.last_nack
            .as_deref()
            .unwrap_or("")
            .contains("Kubernetes//Pod/demo/nameless"),
        "{s:?}"
    );
    assert_eq!(
        s.workloads, 2,
        "the good resources applied, the bad one left out"
    );
    assert!(server.xds.wait_answered(Duration::from_secs(5)).await);
    assert!(
        server
            .xds
            .clients()
            .iter()
            .any(|c| c.nacks.iter().any(|m| m.contains("namespace")))
    );
    wait_for(&mut n2, "the policies", |s| s.policies == 1).await;

    // The echo workload removed: n2 closes its listener.
    server
        .xds
        .update(&mesh(vec![pod("client", "1.1", "n1")], POLICY));
    wait_for(&mut n2, "the removal", |s| s.workloads == 1).await;
    let hbone = SocketAddr::new(ip(NET, "2.1"), 15008);
    let mut gone = false;
    for _ in 0..50 {
        if tokio::net::TcpStream::connect(hbone).await.is_err() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "echo's HBONE listener is closed once it leaves");

    // The server restarts with echo back: both reconnect, declare what they
    // hold, and get only what changed.
    server.shutdown().await;
    let server = control_plane(ca, &mesh(both(), POLICY)).await;
    for n in [&mut n1, &mut n2] {
        wait_for(n, "the reconnect", |s| s.connects >= 2 && s.workloads == 2).await;
    }
    // n2 reopens echo's listeners just after it swaps the registry in:
    // give it a moment rather than racing it.
    let mut back = false;
    for _ in 0..50 {
        if reaches(&n1, SocketAddr::new(ip(NET, "3.1"), 80)).await {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(back, "echo is back after the restart");
    let log = support::log_text();
    let subscriptions: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("xDS client subscribed") && l.contains("type=\"Address\""))
        .collect();
    assert_eq!(subscriptions.len(), 4, "{subscriptions:#?}");
    assert!(
        subscriptions[2..].iter().all(|l| l.contains("held=2")),
        "after the restart each node declares the two addresses it holds: {subscriptions:#?}"
    );
    assert!(server.xds.wait_answered(Duration::from_secs(5)).await);
    server.shutdown().await;
}
