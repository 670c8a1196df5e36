//! A two-node loopback lab for the proxy tests: a real CA over gRPC + TLS,
//! two proxies, and real TCP servers, each test on its own 127.x range.
#![allow(dead_code)]

use std::collections::hash_map::DefaultHasher;
use std::hash::Hasher;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use hbone_ca::metrics::CaMetrics;
use hbone_ca::server::{CaService, RunningCa, serve};
use hbone_ca::tokens::TokenFile;
use hbone_ca::{AuthorityConfig, IdentityPattern, RenewalPolicy, SigningAuthority};
use hbone_policies::load::{istio_policies, parse_documents};
use hbone_proxy::ProxyHandle;
use hbone_proxy::config::{H2Settings, Listeners};
use hbone_proxy::registry::Registry;
use hbone_proxy::state::{CaAccess, CaToken, CoreSettings, ProxyCore};
use hbone_proxy::tls::MeshTrust;
use hbone_workloads::http_get::Get;
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

pub const TOKEN: &str = "lab-node-token";

/// Captured log lines of this test process.
pub fn logs() -> &'static Mutex<Vec<u8>> {
    static LOGS: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();
    LOGS.get_or_init(|| Mutex::new(Vec::new()))
}

struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if std::env::var_os("HBONE_TEST_LOG_STDERR").is_some() {
            eprint!("{}", String::from_utf8_lossy(buf));
        }
        logs().lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub fn capture_logs() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                std::env::var("HBONE_TEST_LOG")
                    .unwrap_or_else(|_| "info".into())
                    .as_str(),
            )
            .with_ansi(false)
            .with_writer(|| LogWriter)
            .try_init();
    });
}

pub fn log_text() -> String {
    String::from_utf8_lossy(&logs().lock().unwrap()).into_owned()
}

/// The registry of a test: nodes n1 and n2 on `127.<net>.x.y` addresses.
pub fn registry_yaml(net: u8) -> String {
    format!(
        "
nodes: [{{name: n1}}, {{name: n2}}]
workloads:
  - {{name: client, namespace: demo, serviceAccount: client, ips: [127.{net}.1.1], node: n1}}
  - {{name: stranger, namespace: demo, serviceAccount: stranger, ips: [127.{net}.1.2], node: n1}}
  - {{name: echo, namespace: demo, serviceAccount: echo, labels: {{app: echo}}, ips: [127.{net}.2.1], node: n2}}
  - {{name: legacy, namespace: demo, serviceAccount: legacy, ips: [127.{net}.2.9], node: n2, protocol: TCP}}
services:
  - {{name: echo, namespace: demo, vips: [127.{net}.3.1], ports: {{80: 9000}}, selector: {{app: echo}}}}
"
    )
}

pub const POLICY: &str = "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: echo-clients, namespace: demo}
spec:
  selector: {matchLabels: {app: echo}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/demo/sa/client]}}]
    to: [{operation: {ports: [\"9000\"]}}]
";

/// A DENY for the client workload, for the tests that change policies on
/// a running proxy.
pub const DENY_CLIENT: &str = "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-more-client, namespace: demo}
spec:
  selector: {matchLabels: {app: echo}}
  action: DENY
  rules:
  - from: [{source: {principals: [cluster.local/ns/demo/sa/client]}}]
";

pub struct Lab {
    pub net: u8,
    pub ca: RunningCa,
    pub authority: Arc<SigningAuthority>,
    pub root: CertificateDer<'static>,
    pub a: ProxyHandle,
    pub b: ProxyHandle,
}

pub fn ip(net: u8, host: &str) -> IpAddr {
    format!("127.{net}.{host}").parse().unwrap()
}

impl Lab {
    pub async fn start(net: u8) -> Lab {
        Self::start_with(net, H2Settings::default()).await
    }

    pub async fn start_with(net: u8, h2: H2Settings) -> Lab {
        Self::start_custom(net, h2, RenewalPolicy::default(), None).await
    }

    /// As [`Self::start`], both proxies logging TLS secrets to `key_log`.
    pub async fn start_logging_keys(net: u8, key_log: &std::path::Path) -> Lab {
        Self::start_custom(
            net,
            H2Settings::default(),
            RenewalPolicy::default(),
            Some(key_log),
        )
        .await
    }

    pub async fn start_custom(
        net: u8,
        h2: H2Settings,
        renewal: RenewalPolicy,
        key_log: Option<&std::path::Path>,
    ) -> Lab {
        capture_logs();
        let authority =
            Arc::new(SigningAuthority::generate(AuthorityConfig::new("cluster.local")).unwrap());
        let everyone: IdentityPattern = "spiffe://cluster.local/*".parse().unwrap();
        let service = Arc::new(CaService::new(
            authority.clone(),
            Arc::new(TokenFile::single(TOKEN, vec![everyone])),
            Arc::new(CaMetrics::default()),
        ));
        let ca = serve(service, SocketAddr::new(ip(net, "0.1"), 0), &[])
            .await
            .unwrap();
        let root = hbone_ca::inspect::pem_certs(authority.root_pem())
            .unwrap()
            .remove(0);
        let registry = Arc::new(Registry::parse(&registry_yaml(net), "registry.yaml").unwrap());
        let policies = Arc::new(istio_policies(
            &parse_documents(POLICY, "policy.yaml").unwrap(),
            "istio-system",
        ));
        let ca_access = CaAccess {
            address: ca.url(),
            root_pem: authority.root_pem().to_string(),
            token: CaToken::Value(TOKEN.into()),
            renewal: renewal.clone(),
            key_log: key_log.map(Into::into),
            crl: None,
        };
        let mut proxies = Vec::new();
        for node in ["n1", "n2"] {
            let settings = CoreSettings {
                h2: h2.clone(),
                bind_source_ip: true,
                ..CoreSettings::for_node(node)
            };
            let policies = policies.as_ref().clone();
            let core = ProxyCore::with_ca(settings, registry.clone(), policies, &ca_access);
            let core = Arc::new(core.unwrap());
            let host = if node == "n1" { "1.254" } else { "2.254" };
            let listeners = Listeners {
                socks5: Some(SocketAddr::new(ip(net, host), 0)),
                metrics: Some(SocketAddr::new(ip(net, host), 0)),
                readiness: Some(SocketAddr::new(ip(net, host), 0)),
                admin: Some(SocketAddr::new(ip(net, host), 0)),
                ..Listeners::default()
            };
            proxies.push(ProxyHandle::start(core, &listeners).await.unwrap());
        }
        let b = proxies.pop().unwrap();
        let a = proxies.pop().unwrap();
        let lab = Lab {
            net,
            ca,
            authority,
            root,
            a,
            b,
        };
        lab.wait_ready().await;
        lab
    }

    async fn wait_ready(&self) {
        for proxy in [&self.a, &self.b] {
            let addr = proxy.addrs.readiness.unwrap();
            for _ in 0..100 {
                if http_get(addr, "/healthz/ready").await.0 == 200 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    pub fn ip(&self, host: &str) -> IpAddr {
        ip(self.net, host)
    }
}

/// A minimal HTTP/1.0 GET, returning status and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let Ok(mut tcp) = TcpStream::connect(addr).await else {
        return (0, String::new());
    };
    let host = addr.to_string();
    let answer = hbone_workloads::http_get::get(&mut tcp, &Get::once(&host, path))
        .await
        .unwrap();
    (answer.status, answer.text())
}

/// An echo server: every byte back, until the client half-closes.
pub async fn echo_server(addr: SocketAddr) -> tokio::task::JoinHandle<()> {
    echo_server_in(None, addr)
}

/// The same, listening inside the network namespace at `netns` (or here).
pub fn echo_server_in(
    netns: Option<&hbone_proxy::net::pod_sockets::Netns>,
    addr: SocketAddr,
) -> tokio::task::JoinHandle<()> {
    let listener =
        TcpListener::from_std(hbone_proxy::net::pod_sockets::bind_listener(netns, addr).unwrap())
            .unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = tcp.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    })
}

/// Connects to `socks` from `source`, asks for `dst`; returns the stream or the SOCKS5 reply code.
pub async fn socks5_connect(
    socks: SocketAddr,
    source: IpAddr,
    dst: SocketAddr,
) -> Result<TcpStream, u8> {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    let mut tcp = socket.connect(socks).await.unwrap();
    tcp.write_all(&[0x05, 0x01, 0x00]).await.unwrap();
    let mut choice = [0u8; 2];
    tcp.read_exact(&mut choice).await.unwrap();
    assert_eq!(choice, [0x05, 0x00]);
    let mut req = vec![0x05, 0x01, 0x00];
    match dst.ip() {
        IpAddr::V4(v4) => {
            req.push(0x01);
            req.extend_from_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            req.push(0x04);
            req.extend_from_slice(&v6.octets());
        }
    }
    req.extend_from_slice(&dst.port().to_be_bytes());
    tcp.write_all(&req).await.unwrap();
    let mut reply = [0u8; 10];
    tcp.read_exact(&mut reply).await.unwrap();
    if reply[1] == 0 {
        Ok(tcp)
    } else {
        Err(reply[1])
    }
}

/// Sends `total` bytes of a deterministic pattern while reading the echo;
/// returns (hash sent, hash received, bytes received).
pub async fn echo_roundtrip(tcp: TcpStream, total: usize) -> (u64, u64, usize) {
    let (mut r, mut w) = tcp.into_split();
    let writer = tokio::spawn(async move {
        let mut hasher = DefaultHasher::new();
        let mut chunk = vec![0u8; 64 * 1024];
        let mut sent = 0usize;
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        while sent < total {
            let n = chunk.len().min(total - sent);
            for b in chunk[..n].iter_mut() {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                *b = seed as u8;
            }
            hasher.write(&chunk[..n]);
            w.write_all(&chunk[..n]).await.unwrap();
            sent += n;
        }
        w.shutdown().await.unwrap();
        hasher.finish()
    });
    let mut hasher = DefaultHasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut received = 0usize;
    loop {
        let n = r.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        hasher.write(&buf[..n]);
        received += n;
    }
    (writer.await.unwrap(), hasher.finish(), received)
}

impl Lab {
    /// Waits (up to 2 s) until proxy `a`'s registry lists the service `name`.
    pub async fn a_knows_service(&self, name: &str) -> bool {
        for _ in 0..100 {
            if self
                .a
                .core
                .registry()
                .services
                .iter()
                .any(|s| s.name == name)
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// Through proxy `a`'s SOCKS5, from the client workload, to `dst`:
    /// `len` bytes echoed back intact over HBONE.
    pub async fn echo_via_a(&self, dst: SocketAddr, len: usize) {
        let tcp = socks5_connect(self.a.addrs.socks5.unwrap(), self.ip("1.1"), dst)
            .await
            .unwrap_or_else(|code| panic!("{dst} refused with SOCKS5 reply {code}"));
        let (sent, received, n) = echo_roundtrip(tcp, len).await;
        assert_eq!((n, sent), (len, received), "every byte came back intact");
    }
}

/// Waits up to `limit` for the other side to close `tcp`.
pub async fn closed_within(tcp: &mut (impl AsyncReadExt + Unpin), limit: Duration) -> bool {
    let mut buf = [0u8; 256];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// A certificate for `id`, signed by the lab's CA, as a proxy would hold it.
pub fn svid_from(
    authority: &SigningAuthority,
    id: &str,
    ttl: Option<Duration>,
) -> hbone_ca::manager::Svid {
    let identity: hbone_ca::Identity = id.parse().unwrap();
    let (key, issued) = authority.issue_with_new_key(&identity, ttl).unwrap();
    hbone_ca::manager::assemble_svid(&identity, &key, issued.chain_pem, &RenewalPolicy::default())
        .unwrap()
}

/// A good client certificate (demo/client, which the lab's policies allow).
pub fn good(lab: &Lab) -> hbone_ca::manager::Svid {
    svid_from(
        &lab.authority,
        "spiffe://cluster.local/ns/demo/sa/client",
        None,
    )
}

/// Node A's SOCKS5 path to the echo server on 2.1:9000 still carries bytes.
pub async fn still_serving(lab: &Lab) {
    let echo = SocketAddr::new(lab.ip("2.1"), 9000);
    let tcp = socks5_connect(lab.a.addrs.socks5.unwrap(), lab.ip("1.1"), echo)
        .await
        .expect("still serving");
    let (sent, received, n) = echo_roundtrip(tcp, 2048).await;
    assert_eq!((n, sent), (2048, received));
}

/// An mTLS connection (ALPN h2) to node B's HBONE port `to` with the good
/// certificate, before any HTTP/2: a peer free to send any frame it likes.
pub async fn mesh_tls(lab: &Lab, to: SocketAddr) -> tokio_rustls::client::TlsStream<TcpStream> {
    mesh_tls_as(lab, to, &good(lab)).await
}

/// [`mesh_tls`] with the client certificate `svid`.
pub async fn mesh_tls_as(
    lab: &Lab,
    to: SocketAddr,
    svid: &hbone_ca::manager::Svid,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let trust = MeshTrust::new(std::slice::from_ref(&lab.root), "cluster.local").unwrap();
    let echo_id: hbone_ca::Identity = "spiffe://cluster.local/ns/demo/sa/echo".parse().unwrap();
    let config = trust.client_config(svid, vec![echo_id]).unwrap();
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(lab.ip("1.1"), 0)).unwrap();
    let tcp = socket.connect(to).await.unwrap();
    tokio_rustls::TlsConnector::from(config)
        .connect(
            rustls::pki_types::ServerName::IpAddress(to.ip().into()),
            tcp,
        )
        .await
        .unwrap()
}

/// An HTTP/2 session over [`mesh_tls`].
pub async fn h2_session(lab: &Lab, to: SocketAddr) -> h2::client::SendRequest<bytes::Bytes> {
    let (send, conn) = h2::client::handshake(mesh_tls(lab, to).await)
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

/// Waits up to `limit` until a proxy's xDS status satisfies `f`; panics
/// naming `what` and the last status otherwise.
pub async fn wait_for_status(
    status: &mut tokio::sync::watch::Receiver<hbone_proxy::sources::xds::XdsStatus>,
    what: &str,
    limit: std::time::Duration,
    f: impl Fn(&hbone_proxy::sources::xds::XdsStatus) -> bool,
) -> hbone_proxy::sources::xds::XdsStatus {
    let waited = tokio::time::timeout(limit, status.wait_for(|s| f(s)))
        .await
        .map(|r| r.map(|s| s.clone()));
    match waited {
        Ok(Ok(s)) => s,
        _ => panic!("timed out waiting for {what}: {:?}", *status.borrow()),
    }
}

/// Does `dst` echo 4 KiB sent from `source` through the SOCKS5 listener at `socks5`?
pub async fn echoes_through(socks5: SocketAddr, source: IpAddr, dst: SocketAddr) -> bool {
    match socks5_connect(socks5, source, dst).await {
        Ok(tcp) => {
            let (sent, got, n) = echo_roundtrip(tcp, 4096).await;
            sent == got && n == 4096
        }
        Err(_) => false,
    }
}

/// A node proxy that knows nothing until its control plane's first push:
/// certificates from `ca`, SOCKS5 and admin listeners on `host`, following
/// the control plane `settings` names until `stop`.
pub async fn proxy_following(
    name: &str,
    ca: &CaAccess,
    host: IpAddr,
    settings: hbone_proxy::sources::xds::XdsSettings,
    stop: tokio_util::sync::CancellationToken,
) -> (
    ProxyHandle,
    tokio::sync::watch::Receiver<hbone_proxy::sources::xds::XdsStatus>,
) {
    use hbone_proxy::sources::xds::{XdsStatus, follow, registry_from};
    let core_settings = CoreSettings {
        bind_source_ip: true,
        ..CoreSettings::for_node(name)
    };
    let registry = Arc::new(registry_from(std::iter::empty(), name).unwrap());
    let policies =
        hbone_policies::authorization::MeshAuthorization::pushed("istio-system", Vec::new());
    let core = Arc::new(ProxyCore::with_ca(core_settings, registry, policies, ca).unwrap());
    core.set_waiting_for(Some("the control plane".into()));
    let listeners = Listeners {
        socks5: Some(SocketAddr::new(host, 0)),
        admin: Some(SocketAddr::new(host, 0)),
        ..Listeners::default()
    };
    let proxy = ProxyHandle::start(core.clone(), &listeners).await.unwrap();
    let (tx, status) = tokio::sync::watch::channel(XdsStatus::default());
    tokio::spawn(follow(core, settings, tx, stop));
    (proxy, status)
}
