//! Interop with a real ztunnel. Ignored unless run with `--run-ignored all`
//! (scripts/test.sh does when ZTUNNEL_BIN is set); needs root.
//!
//! Two pod namespaces joined by a veth: `zt` holds a dedicated-mode ztunnel
//! and an echo server; `hb` holds hbone-lab's proxy (in-pod), hbone-lab's CA
//! and another echo server. ztunnel gets its certificate from hbone-lab's CA,
//! so both sides chain to one root. Then bytes flow both ways:
//! hbone-lab → ztunnel (captured client in `hb`) and ztunnel → hbone-lab
//! (client through ztunnel's SOCKS5 in `zt`).

mod support;

use std::net::SocketAddr;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::Duration;

use hbone_ca::metrics::CaMetrics;
use hbone_ca::revocation::RevocationList;
use hbone_ca::server::{CaService, serve_listener};
use hbone_ca::tokens::TokenFile;
use hbone_ca::{AuthorityConfig, SigningAuthority};
use hbone_harness::netns::{NetNs, can_create, veth};
use hbone_policies::istio::IstioPolicies;
use hbone_proxy::ProxyHandle;
use hbone_proxy::config::Listeners;
use hbone_proxy::net::pod_sockets::{bind_listener, tcp_socket};
use hbone_proxy::registry::Registry;
use hbone_proxy::state::{CoreSettings, ProxyCore};
use support::{echo_roundtrip, echo_server_in};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ZT_IP: &str = "10.252.0.2";
const HB_IP: &str = "10.252.0.3";

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ztunnel_config() -> String {
    let workload = |name: &str, sa: &str, ip: &str, node: &str| {
        format!(
            "- uid: cluster1//v1/Pod/demo/{name}\n  name: {name}\n  namespace: demo\n  serviceAccount: {sa}\n  workloadIps: [\"{ip}\"]\n  protocol: HBONE\n  node: {node}\n  trustDomain: cluster.local\n  network: \"\"\n  services: {{}}\n"
        )
    };
    format!(
        "workloads:\n{}{}policies: []\nservices: []\n",
        workload("zt-pod", "zt-sa", ZT_IP, "zt-node"),
        workload("hb-pod", "hb-sa", HB_IP, "hb-node")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs ZTUNNEL_BIN and root"]
async fn hbone_lab_and_ztunnel_carry_bytes_both_ways() {
    let ztunnel = std::env::var_os("ZTUNNEL_BIN").expect("ZTUNNEL_BIN names a ztunnel binary");
    assert!(
        can_create(),
        "the interop test needs root for network namespaces"
    );
    support::capture_logs();
    let tag = std::process::id() % 10_000;
    let zt = NetNs::create(&format!("hlzt-{tag}")).unwrap();
    let hb = NetNs::create(&format!("hlhb-{tag}")).unwrap();
    veth(
        &zt,
        "eth0",
        &format!("{ZT_IP}/24"),
        &hb,
        "eth0",
        &format!("{HB_IP}/24"),
    )
    .unwrap();

    // hbone-lab's CA, listening inside `hb`, trusted by both.
    let authority =
        Arc::new(SigningAuthority::generate(AuthorityConfig::new("cluster.local")).unwrap());
    let tokens =
        "tokens:\n  - token: zt-token\n    identities: [spiffe://cluster.local/ns/demo/sa/zt-sa]\n";
    let ca_metrics = Arc::new(CaMetrics::default());
    let service = Arc::new(CaService::new(
        authority.clone(),
        Arc::new(TokenFile::parse(tokens, "tokens.yaml").unwrap()),
        ca_metrics.clone(),
    ));
    let ca_addr: SocketAddr = format!("{HB_IP}:15012").parse().unwrap();
    let ca_listener =
        tokio::net::TcpListener::from_std(bind_listener(Some(hb.sockets()), ca_addr).unwrap())
            .unwrap();
    let ca = serve_listener(service, ca_listener, &[]).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let root_file = dir.path().join("root.pem");
    std::fs::write(&root_file, authority.root_pem()).unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "zt-token").unwrap();
    let config_file = dir.path().join("ztunnel.yaml");
    std::fs::write(&config_file, ztunnel_config()).unwrap();
    // The CA's revocation list, empty for now (step 3 fills it).
    let crl_file = dir.path().join("crl.pem");
    let empty = authority
        .sign_revocation_list(&RevocationList::default(), Duration::from_secs(3600))
        .unwrap()
        .0;
    std::fs::write(&crl_file, empty).unwrap();

    // ztunnel: dedicated mode for zt-pod, certificates from hbone-lab's CA.
    let log_file = std::fs::File::create(dir.path().join("ztunnel.log")).unwrap();
    let child = zt
        .command(ztunnel.to_str().unwrap())
        .env("XDS_ADDRESS", "")
        .env("LOCAL_XDS_PATH", &config_file)
        .env("PROXY_MODE", "dedicated")
        .env("PROXY_WORKLOAD_INFO", "demo/zt-pod/zt-sa")
        .env("CA_ADDRESS", format!("https://{ca_addr}"))
        .env("CA_ROOT_CA", &root_file)
        .env("AUTH_TOKEN", &token_file)
        .env("CRL_PATH", &crl_file)
        .env("UNSTABLE_ENABLE_SOCKS5", "true")
        .env("ENABLE_ORIG_SRC", "false")
        .env("RUST_LOG", "info")
        .stdout(Stdio::from(log_file.try_clone().unwrap()))
        .stderr(Stdio::from(log_file))
        .spawn()
        .unwrap();
    let _ztunnel = KillOnDrop(child);

    // hbone-lab's proxy for hb-pod, in-pod, with capture of hb-pod's outbound traffic.
    let registry = format!(
        "nodes: [{{name: hb-node}}, {{name: zt-node}}]\nworkloads:\n  - {{name: hb-pod, namespace: demo, serviceAccount: hb-sa, ips: [{HB_IP}], node: hb-node, netns: {}}}\n  - {{name: zt-pod, namespace: demo, serviceAccount: zt-sa, ips: [{ZT_IP}], node: zt-node}}\n",
        hb.path().display()
    );
    let registry = Arc::new(Registry::parse(&registry, "registry.yaml").unwrap());
    let core = Arc::new(
        ProxyCore::with_authority(
            CoreSettings::for_node("hb-node"),
            registry,
            IstioPolicies::new("istio-system"),
            authority.clone(),
        )
        .unwrap(),
    );
    let proxy = ProxyHandle::start(
        core.clone(),
        &Listeners {
            pod_outbound_port: Some(15001),
            ..Listeners::default()
        },
    )
    .await
    .unwrap();
    for rule in [
        "-t nat -A OUTPUT -p tcp -m mark --mark 0x539/0xfff -j RETURN",
        "-t nat -A OUTPUT -p tcp -o lo -j RETURN",
        "-t nat -A OUTPUT -p tcp -d 10.252.0.2 --dport 9000 -j REDIRECT --to-ports 15001",
    ] {
        hb.exec("iptables", &rule.split(' ').collect::<Vec<_>>())
            .unwrap();
    }
    echo_server_in(Some(zt.sockets()), format!("{ZT_IP}:9000").parse().unwrap());
    echo_server_in(Some(hb.sockets()), format!("{HB_IP}:9000").parse().unwrap());

    // Wait for ztunnel to be ready (its readiness port, inside `zt`).
    let ready: SocketAddr = format!("{ZT_IP}:15021").parse().unwrap();
    let mut ok = false;
    for _ in 0..100 {
        if let Ok(socket) = tcp_socket(Some(zt.sockets()), ready, None, None)
            && let Ok(Ok(mut tcp)) =
                tokio::time::timeout(Duration::from_secs(1), socket.connect(ready)).await
        {
            let _ = tcp.write_all(b"GET /healthz/ready HTTP/1.0\r\n\r\n").await;
            let mut out = String::new();
            let _ = tcp.read_to_string(&mut out).await;
            if out.starts_with("HTTP/1.1 200") || out.starts_with("HTTP/1.0 200") {
                ok = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ztlog = || std::fs::read_to_string(dir.path().join("ztunnel.log")).unwrap_or_default();
    assert!(ok, "ztunnel never became ready:\n{}", ztlog());

    // 1. hbone-lab → ztunnel: an unmodified client in hb-pod dials zt-pod's echo.
    let target: SocketAddr = format!("{ZT_IP}:9000").parse().unwrap();
    let tcp = tcp_socket(Some(hb.sockets()), target, None, None)
        .unwrap()
        .connect(target)
        .await
        .unwrap();
    let (sent, received, n) = echo_roundtrip(tcp, 4 * 1024 * 1024).await;
    assert_eq!(
        (n, sent == received),
        (4 * 1024 * 1024, true),
        "hbone-lab → ztunnel:\n{}",
        ztlog()
    );
    assert_eq!(proxy.outbound.pool().dials(), 1, "it went over HBONE");

    // 2. ztunnel → hbone-lab: a client in zt-pod through ztunnel's SOCKS5.
    let tcp = socks5_via_ztunnel(&zt)
        .await
        .unwrap_or_else(|code| panic!("ztunnel's SOCKS5 refused ({code}):\n{}", ztlog()));
    let (sent, received, n) = echo_roundtrip(tcp, 4 * 1024 * 1024).await;
    assert_eq!(
        (n, sent == received),
        (4 * 1024 * 1024, true),
        "ztunnel → hbone-lab:\n{}",
        ztlog()
    );

    // ztunnel's certificate came from hbone-lab's CA, and our inbound saw its identity.
    assert!(
        ca_metrics.issued() >= 1,
        "ztunnel obtained a certificate from hbone-lab's CA"
    );
    // The inbound side reports when the stream ends, which ztunnel's close
    // may bring a moment after the echo is back: wait for it, boundedly.
    let seen = "src.identity=\"spiffe://cluster.local/ns/demo/sa/zt-sa\"";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !support::log_text().contains(seen) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let logs = support::log_text();
    assert!(logs.contains(seen), "no inbound report from zt-sa:\n{logs}");

    // 3. Revocation the other way (issue 31): a list naming ztunnel's
    // certificate (its serial from its config dump, printed in decimal),
    // given to hbone-lab's proxy while ztunnel holds a tunnel through it:
    // the held tunnel ends, the next one carries nothing, counted as
    // certificate_revoked. ztunnel sends its leaf and intermediate.
    let mut held = socks5_via_ztunnel(&zt)
        .await
        .unwrap_or_else(|code| panic!("ztunnel's SOCKS5 refused ({code}):\n{}", ztlog()));
    held.write_all(b"ping").await.unwrap();
    let mut pong = [0u8; 4];
    held.read_exact(&mut pong).await.unwrap();
    let zt_serial = ztunnel_serial(&zt, "spiffe://cluster.local/ns/demo/sa/zt-sa").await;
    let mut list = RevocationList::default();
    list.revoke(&zt_serial, None);
    let (pem, _) = authority
        .sign_revocation_list(&list, Duration::from_secs(3600))
        .unwrap();
    core.trust
        .revocations()
        .replace(pem.as_bytes(), "test")
        .unwrap();
    core.close_revoked();
    assert!(
        support::closed_within(&mut held, Duration::from_secs(5)).await,
        "hbone-lab kept ztunnel's tunnel open after revoking its certificate"
    );
    if let Ok(mut again) = socks5_via_ztunnel(&zt).await {
        let _ = again.write_all(b"through?").await;
        let mut back = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(3), again.read_to_end(&mut back)).await;
        assert!(back.is_empty(), "bytes crossed from a revoked ztunnel");
    }
    let revoked = core.metrics.refusal_count(
        hbone_proxy::observe::refusal::Direction::Inbound,
        hbone_proxy::observe::refusal::Reason::CertificateRevoked,
    );
    assert!(revoked >= 1, "hbone-lab counted no certificate_revoked");
    // Lifted again: ztunnel's tunnels work before step 4 revokes ours.
    let (pem, _) = authority
        .sign_revocation_list(&RevocationList::default(), Duration::from_secs(3600))
        .unwrap();
    core.trust
        .revocations()
        .replace(pem.as_bytes(), "test")
        .unwrap();

    // 4. Revocation (issue 31): the list `ca revoke` writes, naming
    // hbone-lab's certificate for hb-pod, given to ztunnel (CRL_PATH,
    // which it watches): ztunnel refuses hb-pod's tunnels from then on.
    let hb_id: hbone_ca::Identity = "spiffe://cluster.local/ns/demo/sa/hb-sa".parse().unwrap();
    let held = core.certs.get(&hb_id).await.unwrap();
    let facts = hbone_ca::inspect::read_cert_facts(held.chain[0].as_ref()).unwrap();
    let mut list = RevocationList::default();
    list.revoke(
        &hbone_ca::revocation::parse_serial(&facts.serial_hex).unwrap(),
        None,
    );
    let (pem, _) = authority
        .sign_revocation_list(&list, Duration::from_secs(3600))
        .unwrap();
    std::fs::write(&crl_file, pem).unwrap();
    let mut tries = 0;
    let mut last = None;
    // ztunnel's watcher debounces: give it a few seconds to take the list.
    while tries < 10 {
        last = refused_once(&hb, target).await;
        if last == Some(true) {
            break;
        }
        tries += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        last,
        Some(true),
        "ztunnel still carried hb-pod's bytes with its certificate revoked:\n{}",
        ztlog()
    );
    assert!(
        ztlog().to_lowercase().contains("revoked"),
        "ztunnel's log says nothing of the revocation:\n{}",
        ztlog()
    );

    proxy.shutdown(Duration::from_secs(1)).await;
    ca.shutdown().await;
}

/// A tunnel from zt-pod to hb-pod's echo through ztunnel's SOCKS5, or the
/// SOCKS5 reply code it refused with.
async fn socks5_via_ztunnel(zt: &NetNs) -> Result<tokio::net::TcpStream, u8> {
    let socks: SocketAddr = "127.0.0.1:15080".parse().unwrap();
    let mut tcp = tcp_socket(Some(zt.sockets()), socks, None, None)
        .unwrap()
        .connect(socks)
        .await
        .unwrap();
    tcp.write_all(&[5, 1, 0]).await.unwrap();
    let mut choice = [0u8; 2];
    tcp.read_exact(&mut choice).await.unwrap();
    let mut req = vec![5, 1, 0, 1, 10, 252, 0, 3];
    req.extend_from_slice(&9000u16.to_be_bytes());
    tcp.write_all(&req).await.unwrap();
    let mut reply = [0u8; 10];
    if tcp.read_exact(&mut reply).await.is_err() {
        return Err(0xff);
    }
    match reply[1] {
        0 => Ok(tcp),
        code => Err(code),
    }
}

/// The serial of the leaf ztunnel holds for `identity`, from its config
/// dump (where it is decimal), as bytes.
async fn ztunnel_serial(zt: &NetNs, identity: &str) -> Vec<u8> {
    let admin: SocketAddr = "127.0.0.1:15000".parse().unwrap();
    let (status, body) =
        hbone_harness::ztunnel::http_get(Some(zt.sockets()), admin, "/config_dump")
            .await
            .unwrap();
    assert_eq!(status, 200, "{body}");
    let dump: serde_json::Value = serde_json::from_str(&body).unwrap();
    let decimal = dump["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["identity"] == identity)
        .and_then(|c| c["certChain"][0]["serialNumber"].as_str())
        .unwrap_or_else(|| panic!("no certificate for {identity} in {dump}"));
    hbone_ca::revocation::parse_decimal_serial(decimal).unwrap()
}

/// One connection from hb-pod to `target` through hbone-lab: whether no
/// byte came back (`None` when the connection could not even be made).
async fn refused_once(hb: &NetNs, target: SocketAddr) -> Option<bool> {
    let tcp = tcp_socket(Some(hb.sockets()), target, None, None)
        .ok()?
        .connect(target)
        .await
        .ok()?;
    let (mut r, mut w) = tcp.into_split();
    let _ = w.write_all(b"through?").await;
    let mut back = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), r.read_to_end(&mut back)).await;
    Some(back.is_empty())
}
