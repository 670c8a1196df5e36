//! Transparent capture in network namespaces (root only): an unmodified
//! client in its pod namespace dials the server pod; iptables REDIRECT sends
//! it to the proxy's in-pod 15001 listener; the proxy tunnels it over HBONE
//! to the server pod's 15008, which delivers it to the server.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;

use hbone_ca::{AuthorityConfig, SigningAuthority};
use hbone_harness::netns::{NetNs, install_rules, jump_to, outbound_capture_rules, veth};
use hbone_policies::load::{istio_policies, parse_documents};
use hbone_proxy::ProxyHandle;
use hbone_proxy::config::Listeners;
use hbone_proxy::net::pod_sockets::tcp_socket;
use hbone_proxy::registry::Registry;
use hbone_proxy::state::{CoreSettings, ProxyCore};
use support::{POLICY, echo_roundtrip, echo_server_in};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: network namespaces (test.sh runs it as root)"]
async fn redirected_traffic_crosses_namespaces_over_hbone() {
    support::capture_logs();
    let tag = std::process::id() % 10_000;
    let client_ns = NetNs::create(&format!("hlc-{tag}")).unwrap();
    let server_ns = NetNs::create(&format!("hls-{tag}")).unwrap();
    veth(
        &client_ns,
        "eth0",
        "10.251.7.1/24",
        &server_ns,
        "eth0",
        "10.251.7.2/24",
    )
    .unwrap();
    // ztunnel's in-pod rules, reduced: skip the proxy's own marked sockets and loopback, capture the rest.
    let mut rules = outbound_capture_rules("HBL_OUTPUT", &[]);
    rules.push(jump_to("OUTPUT", "HBL_OUTPUT"));
    install_rules(&client_ns, &rules).unwrap();

    let registry = format!(
        "
nodes: [{{name: n1}}, {{name: n2}}]
workloads:
  - {{name: client, namespace: demo, serviceAccount: client, ips: [10.251.7.1], node: n1, netns: {}}}
  - {{name: echo, namespace: demo, serviceAccount: echo, labels: {{app: echo}}, ips: [10.251.7.2], node: n2, netns: {}}}
",
        client_ns.path().display(),
        server_ns.path().display()
    );
    let registry = Arc::new(Registry::parse(&registry, "registry.yaml").unwrap());
    let policies = Arc::new(istio_policies(
        &parse_documents(POLICY, "policy.yaml").unwrap(),
        "istio-system",
    ));
    let authority =
        Arc::new(SigningAuthority::generate(AuthorityConfig::new("cluster.local")).unwrap());
    let mut proxies = Vec::new();
    for node in ["n1", "n2"] {
        let core = Arc::new(
            ProxyCore::with_authority(
                CoreSettings::for_node(node),
                registry.clone(),
                policies.as_ref().clone(),
                authority.clone(),
            )
            .unwrap(),
        );
        let listeners = Listeners {
            pod_outbound_port: Some(15001),
            ..Listeners::default()
        };
        proxies.push(ProxyHandle::start(core, &listeners).await.unwrap());
    }
    assert_eq!(proxies[0].addrs.pod_outbound.len(), 1);

    // The echo server lives in the server pod's namespace.
    let echo = SocketAddr::from(([10, 251, 7, 2], 9000));
    echo_server_in(Some(server_ns.sockets()), echo);

    // An unmodified client in the client pod: a plain connect to the server's address.
    let socket = tcp_socket(Some(client_ns.sockets()), echo, None, None).unwrap();
    let tcp = socket.connect(echo).await.unwrap();
    let total = 8 * 1024 * 1024 + 3;
    let (sent, received, n) = echo_roundtrip(tcp, total).await;
    assert_eq!(n, total);
    assert_eq!(sent, received, "intact through capture and HBONE");

    let a = &proxies[0];
    assert_eq!(
        a.outbound.pool().dials(),
        1,
        "the captured connection went over HBONE"
    );
    let b = &proxies[1];
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let metrics = b.core.metrics.encode();
    assert!(
        metrics.contains("source_principal=\"spiffe://cluster.local/ns/demo/sa/client\""),
        "the server side saw the client's identity:\n{metrics}"
    );
    let logs = support::log_text();
    assert!(
        logs.contains("src.addr=10.251.7.1"),
        "the server side saw the client pod's address: {logs}"
    );
    for p in proxies {
        p.shutdown(std::time::Duration::from_secs(1)).await;
    }
}
