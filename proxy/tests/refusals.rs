//! Bad input on every listener: each is refused with its reason, counted,
//! and the proxy keeps serving.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hbone_ca::manager::Svid;
use hbone_ca::plugin::PluginCerts;
use hbone_ca::{AuthorityConfig, SigningAuthority};
use hbone_proxy::config::H2Settings;
use hbone_proxy::observe::connection_log::Outcome;
use hbone_proxy::observe::refusal::{Direction, Reason};
use hbone_proxy::tls::MeshTrust;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Test-only: a client that accepts any server, to probe the server's own checks.
#[derive(Debug)]
struct AcceptAnyServer;

impl ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::aws_lc_rs::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

struct Probe {
    versions: &'static [&'static rustls::SupportedProtocolVersion],
    svid: Option<Svid>,
    alpn: Vec<Vec<u8>>,
}

impl Probe {
    fn config(&self) -> Arc<rustls::ClientConfig> {
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_protocol_versions(self.versions)
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServer));
        let mut config = match &self.svid {
            Some(svid) => builder
                .with_client_auth_cert(
                    svid.chain[..svid.chain.len() - 1].to_vec(),
                    PrivateKeyDer::Pkcs8(svid.key.clone_key()),
                )
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = self.alpn.clone();
        Arc::new(config)
    }

    /// Handshakes and then reads until the server closes; the server decides after our Finished.
    async fn run(&self, addr: SocketAddr) {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let connector = tokio_rustls::TlsConnector::from(self.config());
        if let Ok(mut tls) = connector
            .connect(ServerName::IpAddress(addr.ip().into()), tcp)
            .await
        {
            let _ = tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
            let mut buf = [0u8; 64];
            let _ = tokio::time::timeout(Duration::from_secs(2), tls.read(&mut buf)).await;
        }
    }
}

static TLS12: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];
static TLS13: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

async fn settle() {
    tokio::time::sleep(Duration::from_millis(150)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_level_refusals_on_15008() {
    let lab = Lab::start(51).await;
    echo_server(SocketAddr::new(lab.ip("2.1"), 9000)).await;
    let hbone = SocketAddr::new(lab.ip("2.1"), 15008);
    let m = &lab.b.core.metrics;

    // Plaintext: an HTTP/1 request where a TLS ClientHello belongs.
    let mut tcp = TcpStream::connect(hbone).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), tcp.read_to_end(&mut buf)).await;
    settle().await;
    assert_eq!(m.refusal_count(Direction::Inbound, Reason::NotTls), 1);

    let (tls12, tls13) = (TLS12, TLS13);
    let h2 = vec![b"h2".to_vec()];
    Probe {
        versions: tls12,
        svid: Some(good(&lab)),
        alpn: h2.clone(),
    }
    .run(hbone)
    .await;
    settle().await;
    assert_eq!(
        m.refusal_count(Direction::Inbound, Reason::TlsVersion),
        1,
        "TLS 1.2"
    );

    Probe {
        versions: tls13,
        svid: None,
        alpn: h2.clone(),
    }
    .run(hbone)
    .await;
    settle().await;
    assert_eq!(m.refusal_count(Direction::Inbound, Reason::NoClientCert), 1);

    let stranger_ca = SigningAuthority::generate(AuthorityConfig::new("cluster.local")).unwrap();
    let foreign_root = svid_from(
        &stranger_ca,
        "spiffe://cluster.local/ns/demo/sa/client",
        None,
    );
    Probe {
        versions: tls13,
        svid: Some(foreign_root),
        alpn: h2.clone(),
    }
    .run(hbone)
    .await;
    settle().await;
    assert_eq!(
        m.refusal_count(Direction::Inbound, Reason::UntrustedCertificate),
        1,
        "another root"
    );

    let expired = svid_from(
        &lab.authority,
        "spiffe://cluster.local/ns/demo/sa/client",
        Some(Duration::from_secs(1)),
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    Probe {
        versions: tls13,
        svid: Some(expired),
        alpn: h2.clone(),
    }
    .run(hbone)
    .await;
    settle().await;
    assert_eq!(
        m.refusal_count(Direction::Inbound, Reason::ExpiredCertificate),
        1
    );

    Probe {
        versions: tls13,
        svid: Some(good(&lab)),
        alpn: vec![b"http/1.1".to_vec()],
    }
    .run(hbone)
    .await;
    Probe {
        versions: tls13,
        svid: Some(good(&lab)),
        alpn: vec![],
    }
    .run(hbone)
    .await;
    settle().await;
    assert_eq!(
        m.refusal_count(Direction::Inbound, Reason::Alpn),
        2,
        "wrong ALPN and no ALPN"
    );

    // Each connection-level refusal is in the connection log too, with the
    // client's address and its reason (one report per connection).
    let (_, recent) = lab.b.core.connections.snapshot();
    let refused: Vec<_> = recent
        .iter()
        .filter(|r| r.outcome == Outcome::Refused)
        .collect();
    for reason in [
        "not_tls",
        "tls_version",
        "no_client_cert",
        "untrusted_certificate",
        "expired_certificate",
        "alpn",
    ] {
        let entry = refused
            .iter()
            .find(|r| r.detail.as_deref().is_some_and(|d| d.starts_with(reason)))
            .unwrap_or_else(|| panic!("no {reason} refusal in the connection log: {recent:#?}"));
        assert!(entry.src_addr.starts_with("127."), "{entry:?}");
        assert_eq!(entry.dst_addr, hbone.to_string(), "{entry:?}");
    }
    assert!(log_text().contains("connection refused"));

    still_serving(&lab).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_trust_domain_under_the_same_root_is_refused() {
    // A chain can verify and still name another trust domain (several trust
    // domains may share a root). The server trusts both roots here, so only
    // its trust-domain check stands between the impostor and the workload.
    let lab = Lab::start(52).await;
    let evil = SigningAuthority::from_plugin(
        &PluginCerts::generate("evil.example").unwrap(),
        AuthorityConfig::new("evil.example"),
    )
    .unwrap();
    let impostor = svid_from(&evil, "spiffe://evil.example/ns/demo/sa/client", None);
    let trust = MeshTrust::new(
        &[lab.root.clone(), impostor.root().clone()],
        "cluster.local",
    )
    .unwrap();
    let server = trust.server_config(&good(&lab)).unwrap();
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let acceptor = tokio_rustls::TlsAcceptor::from(server);
    let probe = Probe {
        versions: TLS13,
        svid: Some(impostor),
        alpn: vec![b"h2".to_vec()],
    };
    let connector = tokio_rustls::TlsConnector::from(probe.config());
    let client = tokio::spawn(async move {
        let mut tls = connector
            .connect(ServerName::try_from("x").unwrap(), client_io)
            .await?;
        tls.write_all(b"x").await?;
        let mut b = [0u8; 1];
        tls.read(&mut b).await
    });
    let Err(err) = acceptor.accept(server_io).await else {
        panic!("the impostor was accepted")
    };
    assert_eq!(
        hbone_proxy::tls::handshake_failure_reason(&err),
        Reason::ForeignTrustDomain,
        "{err}"
    );
    assert!(err.to_string().contains("evil.example"), "{err}");
    let _ = client.await;
}

async fn ask(
    send: &mut h2::client::SendRequest<Bytes>,
    method: http::Method,
    uri: &str,
) -> (u16, String, h2::SendStream<Bytes>) {
    let request = http::Request::builder()
        .method(method)
        .uri(uri)
        .body(())
        .unwrap();
    let mut ready = send.clone().ready().await.unwrap();
    let (response, stream) = ready.send_request(request, false).unwrap();
    let response = response.await.unwrap();
    let reason = response
        .headers()
        .get("hbone-lab-refusal")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    *send = ready;
    (response.status().as_u16(), reason, stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_level_refusals() {
    let lab = Lab::start(53).await;
    echo_server(SocketAddr::new(lab.ip("2.1"), 9000)).await;
    let hbone = SocketAddr::new(lab.ip("2.1"), 15008);
    let m = &lab.b.core.metrics;
    let mut send = h2_session(&lab, hbone).await;
    let (app, legacy) = (lab.ip("2.1"), lab.ip("2.9"));
    // (method, target, expected status, expected reason; "" for success)
    let cases = [
        (
            http::Method::GET,
            format!("http://{app}:9000/"),
            400,
            "not_connect",
        ),
        (
            http::Method::CONNECT,
            "not-an-ip:9000".to_string(),
            400,
            "bad_authority",
        ),
        (
            http::Method::CONNECT,
            format!("{legacy}:9000"),
            400,
            "authority_mismatch",
        ),
        (
            http::Method::CONNECT,
            format!("{app}:15008"),
            503,
            "proxy_port",
        ),
        (http::Method::CONNECT, format!("{app}:9000"), 200, ""),
        // Port 9001 is not in the policy.
        (
            http::Method::CONNECT,
            format!("{app}:9001"),
            401,
            "policy_denied",
        ),
    ];
    // The header names the reason's class and nothing more: not which
    // policy refused the stream (the proxy's own log keeps that).
    for (method, target, want_status, want_reason) in cases {
        let (status, reason, _) = ask(&mut send, method, &target).await;
        assert_eq!(status, want_status, "{target}: {reason}");
        assert_eq!(reason, want_reason, "{target}");
    }
    assert!(log_text().contains("demo/echo-clients"));

    for reason in [
        Reason::NotConnect,
        Reason::BadAuthority,
        Reason::AuthorityMismatch,
        Reason::ProxyPort,
        Reason::PolicyDenied,
    ] {
        assert_eq!(m.refusal_count(Direction::Inbound, reason), 1, "{reason}");
    }
    still_serving(&lab).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_streams_than_allowed_are_refused() {
    let h2 = H2Settings {
        server_max_streams: 2,
        ..H2Settings::default()
    };
    let lab = Lab::start_with(54, h2).await;
    echo_server(SocketAddr::new(lab.ip("2.1"), 9000)).await;
    let mut send = h2_session(&lab, SocketAddr::new(lab.ip("2.1"), 15008)).await;
    let target = format!("{}:9000", lab.ip("2.1"));
    let (a, _, _held_a) = ask(&mut send, http::Method::CONNECT, &target).await;
    let (b, _, _held_b) = ask(&mut send, http::Method::CONNECT, &target).await;
    let (c, reason, _) = ask(&mut send, http::Method::CONNECT, &target).await;
    assert_eq!((a, b, c), (200, 200, 503), "{reason}");
    assert!(reason.starts_with("too_many_streams"), "{reason}");
    assert_eq!(
        lab.b
            .core
            .metrics
            .refusal_count(Direction::Inbound, Reason::TooManyStreams),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socks5_garbage_is_refused() {
    let lab = Lab::start(55).await;
    echo_server(SocketAddr::new(lab.ip("2.1"), 9000)).await;
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(lab.ip("1.1"), 0)).unwrap();
    let mut tcp = socket.connect(lab.a.addrs.socks5.unwrap()).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), tcp.read_to_end(&mut buf)).await;
    settle().await;
    assert_eq!(
        lab.a
            .core
            .metrics
            .refusal_count(Direction::Socks5, Reason::NotSocks5),
        1
    );
    assert!(log_text().contains("not a SOCKS5 greeting (first byte 0x47"));
    let (_, recent) = lab.a.core.connections.snapshot();
    assert!(
        recent.iter().any(|r| r.direction == "socks5"
            && r.outcome == Outcome::Refused
            && r.detail
                .as_deref()
                .is_some_and(|d| d.starts_with("not_socks5"))),
        "the SOCKS5 refusal is in the connection log: {recent:#?}"
    );

    // A source that is no workload of this node.
    let refused = socks5_connect(
        lab.a.addrs.socks5.unwrap(),
        lab.ip("9.9"),
        SocketAddr::new(lab.ip("2.1"), 9000),
    )
    .await;
    assert_eq!(refused.err(), Some(0x02));
    assert_eq!(
        lab.a
            .core
            .metrics
            .refusal_count(Direction::Socks5, Reason::UnknownSource),
        1
    );
    still_serving(&lab).await;
}

/// Slow and half-open clients: a TCP connection to 15008 that never starts
/// TLS, one that completes TLS (with a good certificate) and never sends
/// the HTTP/2 preface, and a SOCKS5 client that never sends its request —
/// each is cut after the handshake timeout and counted by its reason, while
/// the proxy serves others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_clients_are_cut_after_the_handshake_timeout() {
    let h2 = H2Settings {
        handshake_timeout: Duration::from_millis(300),
        ..H2Settings::default()
    };
    let lab = Lab::start_with(64, h2).await;
    echo_server(SocketAddr::new(lab.ip("2.1"), 9000)).await;
    let hbone = SocketAddr::new(lab.ip("2.1"), 15008);

    let mut no_tls = TcpStream::connect(hbone).await.unwrap();
    let tcp = TcpStream::connect(hbone).await.unwrap();
    let probe = Probe {
        versions: TLS13,
        svid: Some(good(&lab)),
        alpn: vec![b"h2".to_vec()],
    };
    let connector = tokio_rustls::TlsConnector::from(probe.config());
    let mut no_preface = connector
        .connect(ServerName::IpAddress(hbone.ip().into()), tcp)
        .await
        .expect("TLS completes");
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(lab.ip("1.1"), 0)).unwrap();
    let mut no_request = socket.connect(lab.a.addrs.socks5.unwrap()).await.unwrap();
    no_request.write_all(&[0x05, 0x01, 0x00]).await.unwrap();

    still_serving(&lab).await;
    let limit = Duration::from_secs(3);
    assert!(closed_within(&mut no_tls, limit).await, "no TLS: cut");
    assert!(
        closed_within(&mut no_preface, limit).await,
        "no preface: cut"
    );
    assert!(
        closed_within(&mut no_request, limit).await,
        "no SOCKS5 request: cut"
    );
    settle().await;
    let (b, a) = (&lab.b.core.metrics, &lab.a.core.metrics);
    assert_eq!(
        b.refusal_count(Direction::Inbound, Reason::HandshakeTimeout),
        1
    );
    assert_eq!(
        b.refusal_count(Direction::Inbound, Reason::ClientTimeout),
        1
    );
    assert_eq!(a.refusal_count(Direction::Socks5, Reason::ClientTimeout), 1);
    still_serving(&lab).await;
}

/// The admin port shows certificates and configuration, never a private key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_port_shows_no_private_key() {
    let lab = Lab::start(65).await;
    echo_server(SocketAddr::new(lab.ip("2.1"), 9000)).await;
    still_serving(&lab).await;
    for path in ["/config_dump", "/certs", "/debug/connections", "/"] {
        let (status, body) = http_get(lab.b.addrs.admin.unwrap(), path).await;
        assert_eq!(status, 200, "{path}");
        assert!(!body.contains("PRIVATE KEY"), "{path} shows a key: {body}");
    }
    // Read-only ports answer GET only: other methods are refused, not
    // served as if they were GET.
    for (port, path) in [
        (lab.b.addrs.admin.unwrap(), "/config_dump"),
        (lab.b.addrs.metrics.unwrap(), "/metrics"),
    ] {
        for method in ["POST", "DELETE", "TRACE"] {
            let mut tcp = TcpStream::connect(port).await.unwrap();
            let request = format!(
                "{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
            tcp.write_all(request.as_bytes()).await.unwrap();
            let mut answer = String::new();
            let _ =
                tokio::time::timeout(Duration::from_secs(2), tcp.read_to_string(&mut answer)).await;
            assert!(
                answer.starts_with("HTTP/1.1 405"),
                "{method} {path}: {answer}"
            );
            assert!(
                answer.to_ascii_lowercase().contains("allow: get"),
                "{answer}"
            );
        }
    }
    let (_, certs) = http_get(lab.b.addrs.admin.unwrap(), "/certs").await;
    assert!(
        certs.contains("spiffe://cluster.local/ns/demo/sa/echo"),
        "{certs}"
    );
    let svid = lab
        .b
        .core
        .certs
        .get(&"spiffe://cluster.local/ns/demo/sa/echo".parse().unwrap())
        .await
        .unwrap();
    let der = svid.key.secret_pkcs8_der();
    let hex: String = der[der.len() - 16..]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    for path in ["/config_dump", "/certs"] {
        let (_, body) = http_get(lab.b.addrs.admin.unwrap(), path).await;
        assert!(
            !body.to_lowercase().contains(&hex),
            "{path} holds key bytes"
        );
    }
    let defaults = hbone_proxy::config::Listeners::default();
    assert!(
        defaults.admin.is_none_or(|a| a.ip().is_loopback()),
        "the admin port is not opened to the network by default"
    );
}

/// HTTP/2 rapid reset from a peer with a valid certificate: thousands of
/// CONNECTs each cancelled at once. The proxy's h2 limits bound it — at
/// most `serverMaxStreams` concurrent streams advertised and enforced, and
/// h2's cap on streams reset before they are accepted, past which the
/// connection is closed (GOAWAY) — every stream's resources are released,
/// and other connections are served throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_is_bounded_and_harms_no_other_connection() {
    let lab = Lab::start(67).await;
    echo_server(SocketAddr::new(lab.ip("2.1"), 9000)).await;
    let hbone = SocketAddr::new(lab.ip("2.1"), 15008);
    let target = format!("{}:9000", lab.ip("2.1"));
    let mut send = h2_session(&lab, hbone).await;
    let mut sent = 0;
    let mut ended = None;
    for _ in 0..5000 {
        let mut ready = match send.clone().ready().await {
            Ok(r) => r,
            Err(e) => {
                ended = Some(e);
                break;
            }
        };
        let request = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri(&target)
            .body(())
            .unwrap();
        let mut stream = match ready.send_request(request, false) {
            Ok((_, stream)) => stream,
            Err(e) => {
                ended = Some(e);
                break;
            }
        };
        stream.send_reset(h2::Reason::CANCEL);
        send = ready;
        sent += 1;
    }
    still_serving(&lab).await;
    // Everything the attack opened is let go.
    let mut released = false;
    for _ in 0..100 {
        if lab.b.core.established.is_empty() {
            released = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        released,
        "{} streams still held",
        lab.b.core.established.len()
    );
    // Whether h2's guard fires depends on whether the peer's resets outrun
    // the proxy's accepts. When it does, the proxy sends GOAWAY
    // ENHANCE_YOUR_CALM (the peer may see only the closed socket, or nothing
    // before its last send), logs and counts it — once.
    settle().await;
    let counted = lab
        .b
        .core
        .metrics
        .refusal_count(Direction::Inbound, Reason::H2Abuse);
    assert!(counted <= 1, "{counted}");
    assert_eq!(
        counted == 1,
        log_text().contains("the peer abused HTTP/2"),
        "counted and logged together ({sent} resets sent, the client saw {ended:?})"
    );
}

/// A workload cannot use its node proxy to reach another workload's proxy
/// ports: each CONNECT aimed at 15000, 15001, 15006, 15008, 15020, 15021 or
/// 15080 of a meshed workload is refused by the receiving proxy with its
/// reason (as ztunnel refuses them), so no request loops through a proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_cannot_reach_another_workloads_proxy_ports() {
    let lab = Lab::start(68).await;
    echo_server(SocketAddr::new(lab.ip("2.1"), 9000)).await;
    let ports = [15000, 15001, 15006, 15008, 15020, 15021, 15080];
    for port in ports {
        let dst = SocketAddr::new(lab.ip("2.1"), port);
        let refused = socks5_connect(lab.a.addrs.socks5.unwrap(), lab.ip("1.1"), dst).await;
        assert!(refused.is_err(), "{dst} is a proxy port");
    }
    settle().await;
    assert_eq!(
        lab.b
            .core
            .metrics
            .refusal_count(Direction::Inbound, Reason::ProxyPort),
        ports.len() as u64,
        "each refused by the receiving proxy, by reason"
    );
    still_serving(&lab).await;
}

/// `listeners.maxConnections`: past the limit a new connection is closed as
/// soon as it is accepted, counted as `too_many_connections`, while the
/// connections already open go on; once one closes, the next is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_limit_closes_new_connections_and_spares_open_ones() {
    let lab = Lab::start(74).await;
    echo_server(SocketAddr::new(lab.ip("2.1"), 9000)).await;
    let hbone = SocketAddr::new(lab.ip("2.1"), 15008);
    lab.b.core.limit.set_max(2);
    // Node A's pooled HBONE connection to B is one; a peer's TLS session two.
    still_serving(&lab).await;
    let held = mesh_tls(&lab, hbone).await;
    let mut extra = TcpStream::connect(hbone).await.unwrap();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(2), extra.read(&mut byte)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the third connection is closed at once: {read:?}"
    );
    let m = &lab.b.core.metrics;
    assert_eq!(
        m.refusal_count(Direction::Inbound, Reason::TooManyConnections),
        1
    );
    assert!(log_text().contains("listeners.maxConnections"));
    still_serving(&lab).await;
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut next = TcpStream::connect(hbone).await.unwrap();
    let waited = tokio::time::timeout(Duration::from_millis(500), next.read(&mut byte)).await;
    assert!(
        waited.is_err(),
        "a place was free again: the proxy waits for its ClientHello"
    );
    assert_eq!(lab.b.core.limit.open(), 2);
}

/// The admin, metrics and readiness ports answer before any identity, so
/// each is bounded on its own: requests that never finish their headers
/// fill the admin port's 64 places, the next connection is closed at once
/// and counted under direction `admin`, and readiness and real traffic go
/// on (before, 20 000 such requests held every descriptor of the process
/// and the node's traffic failed). A request whose headers do not arrive in
/// time is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_ports_are_bounded_against_unfinished_requests() {
    use hbone_listen::Bounds;
    use hbone_proxy::admin::{self, Endpoints};
    use hbone_proxy::net::listen::Listening;

    let lab = Lab::start(75).await;
    echo_server(SocketAddr::new(lab.ip("2.1"), 9000)).await;
    still_serving(&lab).await;
    let admin_addr = lab.b.addrs.admin.unwrap();
    let mut unfinished = Vec::new();
    for _ in 0..Bounds::ADMIN.max_connections {
        let mut tcp = TcpStream::connect(admin_addr).await.unwrap();
        tcp.write_all(b"GET /config_dump HTTP/1.1\r\nhost: x\r\n")
            .await
            .unwrap();
        unfinished.push(tcp);
    }
    let mut extra = TcpStream::connect(admin_addr).await.unwrap();
    assert!(
        closed_within(&mut extra, Duration::from_secs(3)).await,
        "a connection past the admin port's 64 was kept"
    );
    settle().await;
    assert_eq!(
        lab.b
            .core
            .metrics
            .refusal_count(Direction::Admin, Reason::TooManyConnections),
        1
    );
    let (status, _) = http_get(lab.b.addrs.readiness.unwrap(), "/healthz/ready").await;
    assert_eq!(status, 200, "readiness has places of its own");
    still_serving(&lab).await;
    drop(unfinished);

    // The header deadline, shortened here (10 s in a proxy).
    let listener = tokio::net::TcpListener::bind(SocketAddr::new(lab.ip("2.254"), 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let bounds = Bounds {
        first_bytes: Duration::from_millis(300),
        ..Bounds::ADMIN
    };
    let on = Listening {
        listener,
        shutdown: tokio_util::sync::CancellationToken::new(),
        tasks: tokio_util::task::TaskTracker::new(),
    };
    tokio::spawn(admin::serve(
        lab.b.core.clone(),
        Endpoints::Admin,
        bounds,
        on,
    ));
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /config_dump HTTP/1.1\r\n")
        .await
        .unwrap();
    assert!(
        closed_within(&mut slow, Duration::from_secs(3)).await,
        "a request without its headers' end was kept past the 300 ms deadline"
    );
}

/// No self-calls (issue 30, finding 5): a workload's SOCKS5 CONNECT to
/// any of its node proxy's own listeners — admin, metrics, readiness, the
/// SOCKS5 port itself — or to the CA the proxy uses is refused before any
/// lookup, also in its IPv4-mapped IPv6 form and through `0.0.0.0`,
/// counted as `proxy_port` (before, `/config_dump` and `/certs` answered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_cannot_reach_its_own_proxy_or_its_ca() {
    let lab = Lab::start(76).await;
    echo_server(SocketAddr::new(lab.ip("2.1"), 9000)).await;
    let a = &lab.a.addrs;
    let ca = hbone_proxy::state::address_of(&lab.ca.url()).unwrap();
    let mut targets = vec![
        a.admin.unwrap(),
        a.metrics.unwrap(),
        a.readiness.unwrap(),
        a.socks5.unwrap(),
        ca,
    ];
    let admin = a.admin.unwrap();
    let std::net::IpAddr::V4(v4) = admin.ip() else {
        panic!("the lab is IPv4")
    };
    targets.push(SocketAddr::new(v4.to_ipv6_mapped().into(), admin.port()));
    targets.push(SocketAddr::new([0, 0, 0, 0].into(), admin.port()));
    for dst in &targets {
        let refused = socks5_connect(a.socks5.unwrap(), lab.ip("1.1"), *dst).await;
        assert_eq!(refused.err(), Some(0x02), "{dst} is the proxy's own");
    }
    settle().await;
    assert_eq!(
        lab.a
            .core
            .metrics
            .refusal_count(Direction::Socks5, Reason::ProxyPort),
        targets.len() as u64
    );
    still_serving(&lab).await;
}

/// Keep-alive on the receiving side too (issue 30, finding 8): a peer
/// with a valid certificate that completes HTTP/2's handshake and then
/// never answers a PING is dropped once the PING goes unanswered, instead
/// of being held for as long as it likes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_answering_pings_is_dropped() {
    let h2 = H2Settings {
        keepalive_interval: Duration::from_millis(200),
        keepalive_timeout: Duration::from_millis(300),
        ..H2Settings::default()
    };
    let lab = Lab::start_with(77, h2).await;
    echo_server(SocketAddr::new(lab.ip("2.1"), 9000)).await;
    let hbone = SocketAddr::new(lab.ip("2.1"), 15008);
    let mut silent = mesh_tls(&lab, hbone).await;
    // The client preface and an empty SETTINGS frame, then nothing: what
    // arrives (SETTINGS, PINGs) is read and never answered.
    silent
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    assert!(
        closed_within(&mut silent, Duration::from_secs(5)).await,
        "a peer answering no PING was kept past 200 ms + 300 ms"
    );
    still_serving(&lab).await;
}
