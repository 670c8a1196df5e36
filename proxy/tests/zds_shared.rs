//! Shared mode (root only): one proxy process serves every pod a node
//! agent hands it over ZDS — hbone-lab's own agent here. Until a pod's
//! namespace arrives the proxy serves nothing of it; once both pods are
//! handed over, an unmodified client in one reaches the other through
//! capture and HBONE, each listener opened inside its pod; a pod taken back
//! loses its listeners; after the agent restarts, the pods it no longer
//! names are let go.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hbone_ca::{AuthorityConfig, SigningAuthority};
use hbone_harness::netns::{NetNs, install_rules, jump_to, outbound_capture_rules, veth};
use hbone_policies::load::{istio_policies, parse_documents};
use hbone_proxy::ProxyHandle;
use hbone_proxy::config::Listeners;
use hbone_proxy::net::pod_sockets::tcp_socket;
use hbone_proxy::registry::Registry;
use hbone_proxy::sources::zds::{ZdsStatus, follow};
use hbone_proxy::state::{CoreSettings, ProxyCore};
use hbone_xds::MeshWorkload;
use hbone_xds::zds::{NodeAgent, ZdsPod};
use support::{POLICY, echo_server_in};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const CLIENT: &str = "10.251.9.1";
const ECHO: &str = "10.251.9.2";

fn pod(ns: &NetNs, name: &str) -> ZdsPod {
    ZdsPod {
        uid: MeshWorkload::pod_uid("demo", name),
        name: name.into(),
        namespace: "demo".into(),
        service_account: name.into(),
        netns: ns.path(),
    }
}

async fn wait_for(
    status: &mut watch::Receiver<ZdsStatus>,
    what: &str,
    f: impl Fn(&ZdsStatus) -> bool,
) {
    let waited = tokio::time::timeout(Duration::from_secs(10), status.wait_for(|s| f(s)))
        .await
        .map(|r| r.is_ok());
    assert_eq!(
        waited,
        Ok(true),
        "timed out waiting for {what}: {:?}",
        *status.borrow()
    );
}

/// One exchange from the client pod to the echo pod, as an unmodified
/// client makes it: true if the bytes come back.
async fn exchange(client_ns: &NetNs) -> bool {
    let echo = SocketAddr::new(ECHO.parse().unwrap(), 9000);
    let socket = tcp_socket(Some(client_ns.sockets()), echo, None, None).unwrap();
    let attempt = async {
        let mut tcp = socket.connect(echo).await.ok()?;
        let sent: Vec<u8> = (0..16 * 1024).map(|i| (i % 251) as u8).collect();
        tcp.write_all(&sent).await.ok()?;
        let mut back = vec![0u8; sent.len()];
        tcp.read_exact(&mut back).await.ok()?;
        Some(back == sent)
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(3), attempt).await,
        Ok(Some(true))
    )
}

/// The client reaches the echo pod (within a few tries, as listeners open
/// just after the agent's ack).
async fn client_reaches_echo(client_ns: &NetNs) -> bool {
    for _ in 0..20 {
        if exchange(client_ns).await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// The port is closed in the pod's namespace (the listener is gone).
async fn nothing_listens(ns: &NetNs, addr: SocketAddr) -> bool {
    for _ in 0..50 {
        let socket = tcp_socket(Some(ns.sockets()), addr, None, None).unwrap();
        if socket.connect(addr).await.is_err() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// A proxy in shared mode on node n1, following the node agent at `socket`.
struct SharedProxy {
    proxy: ProxyHandle,
    status: watch::Receiver<ZdsStatus>,
    stop: CancellationToken,
}

impl SharedProxy {
    async fn start(registry: &str, socket: &std::path::Path) -> SharedProxy {
        let registry = Arc::new(Registry::parse(registry, "registry.yaml").unwrap());
        let policies = istio_policies(
            &parse_documents(POLICY, "policy.yaml").unwrap(),
            "istio-system",
        );
        let authority =
            Arc::new(SigningAuthority::generate(AuthorityConfig::new("cluster.local")).unwrap());
        let core = Arc::new(
            ProxyCore::with_authority(CoreSettings::for_node("n1"), registry, policies, authority)
                .unwrap(),
        );
        let (tx, status) = watch::channel(ZdsStatus::default());
        let stop = CancellationToken::new();
        let backoff = Duration::from_millis(200);
        tokio::spawn(follow(
            core.clone(),
            socket.to_path_buf(),
            backoff,
            tx,
            stop.clone(),
        ));
        let listeners = Listeners {
            pod_outbound_port: Some(15001),
            ..Listeners::default()
        };
        let proxy = ProxyHandle::start(core, &listeners).await.unwrap();
        assert!(
            proxy.addrs.hbone.is_empty(),
            "nothing is served before the agent hands a pod over"
        );
        SharedProxy {
            proxy,
            status,
            stop,
        }
    }

    async fn stop(self) {
        self.stop.cancel();
        self.proxy.shutdown(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root (network namespaces)"]
async fn one_proxy_serves_the_pods_the_node_agent_hands_it() {
    support::capture_logs();
    let tag = std::process::id() % 10_000;
    let client_ns = NetNs::create(&format!("hlzc-{tag}")).unwrap();
    let echo_ns = NetNs::create(&format!("hlze-{tag}")).unwrap();
    veth(
        &client_ns,
        "eth0",
        &format!("{CLIENT}/24"),
        &echo_ns,
        "eth0",
        &format!("{ECHO}/24"),
    )
    .unwrap();
    let mut rules = outbound_capture_rules("HBL_OUTPUT", &[]);
    rules.push(jump_to("OUTPUT", "HBL_OUTPUT"));
    install_rules(&client_ns, &rules).unwrap();
    echo_server_in(
        Some(echo_ns.sockets()),
        SocketAddr::new(ECHO.parse().unwrap(), 9000),
    );

    // Both pods on one node, no namespaces in the registry: those come over ZDS.
    let registry = format!(
        "
nodes: [{{name: n1}}]
workloads:
  - {{name: client, namespace: demo, serviceAccount: client, ips: [{CLIENT}], node: n1}}
  - {{name: echo, namespace: demo, serviceAccount: echo, labels: {{app: echo}}, ips: [{ECHO}], node: n1}}
"
    );
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("ztunnel.sock");
    let mut shared = SharedProxy::start(&registry, &socket).await;
    let status = &mut shared.status;
    let agent = NodeAgent::listen(
        &socket,
        vec![pod(&client_ns, "client"), pod(&echo_ns, "echo")],
    )
    .unwrap();
    agent.wait_synced(Duration::from_secs(10)).await.unwrap();
    wait_for(status, "both pods", |s| s.pods == 2 && s.snapshots == 1).await;
    assert!(
        client_reaches_echo(&client_ns).await,
        "capture in the client pod, HBONE into the echo pod: {}",
        support::log_text()
    );
    let mut seen = false;
    for _ in 0..50 {
        seen = support::log_text().contains("direction=\"inbound\" src.addr=10.251.9.1");
        if seen {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        seen,
        "the echo pod's HBONE listener logged the client pod's address"
    );

    // The echo pod taken back: its HBONE listener closes, the client's connections fail.
    agent.remove(&MeshWorkload::pod_uid("demo", "echo"));
    wait_for(status, "the removal", |s| s.pods == 1).await;
    assert!(nothing_listens(&echo_ns, SocketAddr::new(ECHO.parse().unwrap(), 15008)).await);

    // The agent restarts knowing only the client pod: after its snapshot the proxy holds just that.
    drop(agent);
    let agent = NodeAgent::listen(
        &socket,
        vec![pod(&client_ns, "client"), pod(&echo_ns, "echo")],
    )
    .unwrap();
    wait_for(status, "the reconnect", |s| {
        s.connects >= 2 && s.snapshots >= 2 && s.pods == 2
    })
    .await;
    assert!(
        client_reaches_echo(&client_ns).await,
        "echo is served again after the agent's replay"
    );
    drop(agent);
    let agent = NodeAgent::listen(&socket, vec![pod(&client_ns, "client")]).unwrap();
    wait_for(status, "the second reconnect", |s| {
        s.connects >= 3 && s.snapshots >= 3 && s.pods == 1
    })
    .await;
    assert!(
        nothing_listens(&echo_ns, SocketAddr::new(ECHO.parse().unwrap(), 15008)).await,
        "a pod the agent no longer names is let go"
    );
    drop(agent);
    shared.stop().await;
}

/// ztunnel's own example node agent (`examples/inpodserver.rs`, built with
/// ztunnel): beside `ZTUNNEL_BIN`, or named by `ZTUNNEL_INPODSERVER`.
fn inpodserver() -> Option<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("ZTUNNEL_INPODSERVER") {
        return Some(p.into());
    }
    let ztunnel = std::path::PathBuf::from(std::env::var_os("ZTUNNEL_BIN")?);
    let beside = ztunnel.parent()?.join("examples/inpodserver");
    beside.exists().then_some(beside)
}

/// A peer neither side wrote for this: ztunnel's example in-pod server
/// hands one pod (uid `uid-0`) to hbone-lab's proxy, which opens that pod's
/// HBONE listener inside the namespace it received.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs ZTUNNEL_BIN (with its examples/inpodserver) and root"]
async fn ztunnel_inpodserver_hands_a_pod_to_hbone_lab() {
    support::capture_logs();
    let server = inpodserver().expect(
        "ztunnel's examples/inpodserver beside ZTUNNEL_BIN (cargo build --example inpodserver), or ZTUNNEL_INPODSERVER",
    );
    let tag = std::process::id() % 10_000;
    let echo_ns = NetNs::create(&format!("hlzi-{tag}")).unwrap();
    echo_ns.ip(&["link", "set", "lo", "up"]).unwrap();
    echo_ns
        .ip(&["addr", "add", "10.251.10.2/32", "dev", "lo"])
        .unwrap();
    let registry = "
nodes: [{name: n1}]
workloads:
  - {name: echo, namespace: demo, serviceAccount: echo, ips: [10.251.10.2], node: n1, uid: uid-0}
";
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("ztunnel.sock");
    let mut agent = std::process::Command::new(&server)
        .arg(echo_ns.name())
        .env("INPOD_UDS", &socket)
        .env("PROXY_WORKLOAD_INFO", "demo/echo/echo")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..100 {
        if socket.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut shared = SharedProxy::start(registry, &socket).await;
    wait_for(&mut shared.status, "the pod", |s| {
        s.pods == 1 && s.snapshots == 1
    })
    .await;
    let hbone = SocketAddr::from(([10, 251, 10, 2], 15008));
    let mut open = false;
    for _ in 0..50 {
        let socket = tcp_socket(Some(echo_ns.sockets()), hbone, None, None).unwrap();
        if socket.connect(hbone).await.is_ok() {
            open = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = agent.kill();
    let _ = agent.wait();
    assert!(
        open,
        "the HBONE listener is open inside the pod ztunnel's agent handed over"
    );
    shared.stop().await;
}
