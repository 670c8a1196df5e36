//! Certificate revocation at the mesh handshake (issue 31): a CRL from
//! `ca revoke`'s code path, read by the proxy's verifiers in both
//! directions; a new edition applies to the next handshake without
//! rebuilding configs; a broken file leaves the lists in force.

use std::sync::Arc;
use std::time::Duration;

use hbone_ca::manager::{RenewalPolicy, Svid, assemble_svid};
use hbone_ca::revocation::RevocationList;
use hbone_ca::{AuthorityConfig, Identity, SigningAuthority};
use hbone_proxy::crl::Revocations;
use hbone_proxy::observe::refusal::Reason;
use hbone_proxy::tls::{MeshTrust, handshake_failure_reason};
use rustls::pki_types::ServerName;

mod support;

const CLIENT: &str = "spiffe://cluster.local/ns/demo/sa/client";
const SERVER: &str = "spiffe://cluster.local/ns/demo/sa/server";

/// A certificate for `id` and its serial.
fn svid(ca: &SigningAuthority, id: &str) -> (Svid, Vec<u8>) {
    let identity: Identity = id.parse().unwrap();
    let (key, issued) = ca.issue_with_new_key(&identity, None).unwrap();
    let serial = issued.serial.clone();
    let svid = assemble_svid(&identity, &key, issued.chain_pem, &RenewalPolicy::default()).unwrap();
    (svid, serial)
}

/// A CRL of `ca` revoking `serials`, as PEM.
fn crl(ca: &SigningAuthority, serials: &[&[u8]]) -> String {
    let mut list = RevocationList::default();
    for serial in serials {
        list.revoke(serial, None);
    }
    ca.sign_revocation_list(&list, Duration::from_secs(3600))
        .unwrap()
        .0
}

/// One handshake over a pipe: the server's result and the client's.
async fn handshake(
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
) -> (std::io::Result<()>, std::io::Result<()>) {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let accept = async move {
        tokio_rustls::TlsAcceptor::from(server)
            .accept(a)
            .await
            .map(|_| ())
    };
    let connect = async move {
        tokio_rustls::TlsConnector::from(client)
            .connect(
                ServerName::IpAddress(std::net::IpAddr::from([127, 0, 0, 1]).into()),
                b,
            )
            .await
            .map(|_| ())
    };
    tokio::join!(accept, connect)
}

#[tokio::test]
async fn a_revoked_peer_is_refused_in_both_directions_and_editions_apply_at_once() {
    let ca = SigningAuthority::generate(AuthorityConfig::new("cluster.local")).unwrap();
    let (client, client_serial) = svid(&ca, CLIENT);
    let (server, server_serial) = svid(&ca, SERVER);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("crl.pem");
    std::fs::write(&file, crl(&ca, &[&client_serial])).unwrap();

    let revocations = Revocations::load(&file).unwrap();
    assert_eq!(revocations.len(), 1);
    let trust = MeshTrust::from_pem(ca.root_pem(), "cluster.local")
        .unwrap()
        .with_revocations(revocations.clone());
    let plain = MeshTrust::from_pem(ca.root_pem(), "cluster.local").unwrap();
    let server_config = trust.server_config(&server).unwrap();
    let expected = vec![SERVER.parse::<Identity>().unwrap()];

    // Inbound: the server refuses the revoked client, named as such.
    let (accepted, _) = handshake(
        server_config.clone(),
        plain.client_config(&client, expected.clone()).unwrap(),
    )
    .await;
    let error = accepted.expect_err("a revoked client was accepted");
    assert_eq!(
        handshake_failure_reason(&error),
        Reason::CertificateRevoked,
        "{error}"
    );

    // Another client of the same CA is accepted.
    let (other, _) = svid(&ca, "spiffe://cluster.local/ns/demo/sa/other");
    let (accepted, connected) = handshake(
        server_config.clone(),
        plain.client_config(&other, expected.clone()).unwrap(),
    )
    .await;
    accepted.unwrap();
    connected.unwrap();

    // Outbound: a client given a list revoking the server refuses it.
    std::fs::write(&file, crl(&ca, &[&client_serial, &server_serial])).unwrap();
    revocations.reload(&file).unwrap();
    let (_, connected) = handshake(
        plain.server_config(&server).unwrap(),
        trust.client_config(&other, expected.clone()).unwrap(),
    )
    .await;
    let error = connected.expect_err("a revoked server was accepted");
    assert_eq!(
        handshake_failure_reason(&error),
        Reason::CertificateRevoked,
        "{error}"
    );

    // A broken edition: refused, and the lists in force stay in force.
    std::fs::write(
        &file,
        "-----BEGIN X509 CRL-----\nnot base64\n-----END X509 CRL-----\n",
    )
    .unwrap();
    assert!(revocations.reload(&file).is_err());
    let (accepted, _) = handshake(
        server_config.clone(),
        plain.client_config(&client, expected.clone()).unwrap(),
    )
    .await;
    assert!(accepted.is_err(), "a broken file un-revoked the client");

    // An edition without the client: the same server config accepts it now.
    std::fs::write(&file, crl(&ca, &[])).unwrap();
    revocations.reload(&file).unwrap();
    let (accepted, connected) = handshake(
        server_config,
        plain.client_config(&client, expected).unwrap(),
    )
    .await;
    accepted.unwrap();
    connected.unwrap();
}

/// A peer that presents its leaf alone (ztunnel does, when the CA's chain
/// ends at the root that signed the leaf) is judged by a list the root
/// signed: the list's signer is found among the mesh's roots.
#[tokio::test]
async fn a_peer_sending_its_leaf_alone_is_judged_by_the_roots_list() {
    // A CA that signs leaves with the root itself: the generated
    // intermediate made the root (a trust anchor need not be self-signed).
    let generated = hbone_ca::plugin::PluginCerts::generate("cluster.local").unwrap();
    let root_signs = hbone_ca::plugin::PluginCerts {
        root_cert_pem: generated.ca_cert_pem.clone(),
        cert_chain_pem: generated.ca_cert_pem.clone(),
        ..generated
    };
    let ca =
        SigningAuthority::from_plugin(&root_signs, AuthorityConfig::new("cluster.local")).unwrap();
    let (mut client, client_serial) = svid(&ca, CLIENT);
    let (server, _) = svid(&ca, SERVER);
    client.chain.truncate(1);
    let revocations = Arc::new(Revocations::default());
    revocations
        .replace(crl(&ca, &[&client_serial]).as_bytes(), "test")
        .unwrap();
    let trust = MeshTrust::from_pem(ca.root_pem(), "cluster.local")
        .unwrap()
        .with_revocations(revocations);
    let plain = MeshTrust::from_pem(ca.root_pem(), "cluster.local").unwrap();
    let expected = vec![SERVER.parse::<Identity>().unwrap()];
    let (accepted, _) = handshake(
        trust.server_config(&server).unwrap(),
        plain.client_config(&client, expected).unwrap(),
    )
    .await;
    let error = accepted.expect_err("a revoked leaf-only client was accepted");
    assert_eq!(
        handshake_failure_reason(&error),
        Reason::CertificateRevoked,
        "{error}"
    );
}

/// Another CA's list, naming the same serial, revokes nothing here: a list
/// counts only for certificates its issuer signed.
#[tokio::test]
async fn a_list_counts_only_for_its_own_issuer() {
    let ca = SigningAuthority::generate(AuthorityConfig::new("cluster.local")).unwrap();
    let stranger = SigningAuthority::generate(AuthorityConfig::new("cluster.local")).unwrap();
    let (client, client_serial) = svid(&ca, CLIENT);
    let (server, _) = svid(&ca, SERVER);
    let revocations = Revocations::none();
    revocations
        .replace(
            crl(&stranger, &[&client_serial]).as_bytes(),
            "stranger's list",
        )
        .unwrap();
    let trust = MeshTrust::from_pem(ca.root_pem(), "cluster.local")
        .unwrap()
        .with_revocations(revocations);
    let (accepted, connected) = handshake(
        trust.server_config(&server).unwrap(),
        trust
            .client_config(&client, vec![SERVER.parse().unwrap()])
            .unwrap(),
    )
    .await;
    accepted.unwrap();
    connected.unwrap();
}

/// Through two running proxies: a tunnel from node A's `client` to node
/// B is open when B learns that `client`'s certificate is revoked. The
/// open tunnel is closed, the next one is refused (counted inbound as
/// `certificate_revoked`), and a later edition without the serial lets the
/// next one through, with no restart.
#[tokio::test]
async fn a_node_closes_and_refuses_a_workload_whose_certificate_is_revoked() {
    use std::net::SocketAddr;

    use hbone_proxy::observe::refusal::Direction;
    use support::{Lab, closed_within, echo_roundtrip, echo_server, socks5_connect};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let lab = Lab::start(78).await;
    let echo = SocketAddr::new(lab.ip("2.1"), 9000);
    let _server = echo_server(echo).await;
    let socks = lab.a.addrs.socks5.unwrap();
    let mut held = socks5_connect(socks, lab.ip("1.1"), echo)
        .await
        .expect("a tunnel before any revocation");
    held.write_all(b"ping").await.unwrap();
    let mut pong = [0u8; 4];
    held.read_exact(&mut pong).await.unwrap();

    // Beside node A's, an HBONE connection of a peer of our own whose
    // certificate is revoked with it, to watch the connection itself.
    let held_svid = support::good(&lab);
    let held_tls =
        support::mesh_tls_as(&lab, SocketAddr::new(lab.ip("2.1"), 15008), &held_svid).await;
    let (_send, h2_driver) = h2::client::handshake(held_tls).await.unwrap();
    let mut revoked_session = tokio::spawn(h2_driver);

    let serial_of = |der: &[u8]| {
        let facts = hbone_ca::inspect::read_cert_facts(der).unwrap();
        hbone_ca::revocation::parse_serial(&facts.serial_hex).unwrap()
    };
    let client: Identity = CLIENT.parse().unwrap();
    let certificate = lab.a.core.certs.get(&client).await.unwrap();
    let serial = serial_of(certificate.chain[0].as_ref());
    let own_serial = serial_of(held_svid.chain[0].as_ref());
    let revocations = lab.b.core.trust.revocations().clone();
    revocations
        .replace(
            crl(&lab.authority, &[&serial, &own_serial]).as_bytes(),
            "test",
        )
        .unwrap();
    // What following the file does after each new edition.
    let closed = lab.b.core.close_revoked();
    // The whole HBONE connection ends, not only its streams.
    assert!(
        tokio::time::timeout(Duration::from_secs(5), &mut revoked_session)
            .await
            .is_ok(),
        "node B kept the revoked client's HBONE connection open"
    );
    assert_eq!(closed.len(), 1, "{closed:?}");
    assert!(
        closed_within(&mut held, Duration::from_secs(5)).await,
        "the open tunnel outlived its certificate's revocation"
    );

    // The next tunnel, on A's pooled connection or a new one: refused.
    if let Ok(mut tcp) = socks5_connect(socks, lab.ip("1.1"), echo).await {
        let _ = tcp.write_all(b"through?").await;
        let mut back = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut back)).await;
        assert!(back.is_empty(), "bytes crossed with a revoked certificate");
    }
    let revoked = lab
        .b
        .core
        .metrics
        .refusal_count(Direction::Inbound, Reason::CertificateRevoked);
    assert!(
        revoked >= 1,
        "node B counted no certificate_revoked refusal"
    );
    // Node A, the client's side, names the reason too (not h2_error).
    let logs = support::log_text();
    assert!(
        logs.lines().any(|l| l.contains("127.78.1.1")
            && l.contains("direction=\"socks5\"")
            && l.contains("reason=certificate_revoked")),
        "node A did not name the revocation:\n{logs}"
    );

    revocations
        .replace(crl(&lab.authority, &[]).as_bytes(), "test")
        .unwrap();
    let tcp = match socks5_connect(socks, lab.ip("1.1"), echo).await {
        Ok(tcp) => tcp,
        Err(code) => panic!(
            "the next edition did not let the client through (SOCKS5 {code}):\n{}",
            support::log_text()
        ),
    };
    let (sent, received, n) = echo_roundtrip(tcp, 2048).await;
    assert_eq!((sent, n), (received, 2048));
}

/// Outbound: node A holds a pooled HBONE connection to node B's `echo`
/// when it learns that `echo`'s certificate is revoked. The next tunnel
/// does not ride that connection, and a new handshake is refused, so no
/// byte reaches the revoked server.
#[tokio::test]
async fn a_node_stops_using_a_pooled_connection_to_a_revoked_server() {
    use std::net::SocketAddr;

    use support::{Lab, echo_roundtrip, echo_server, socks5_connect};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let lab = Lab::start(79).await;
    let echo = SocketAddr::new(lab.ip("2.1"), 9000);
    let _server = echo_server(echo).await;
    let socks = lab.a.addrs.socks5.unwrap();
    let tcp = socks5_connect(socks, lab.ip("1.1"), echo)
        .await
        .expect("a tunnel before any revocation");
    let (sent, received, _) = echo_roundtrip(tcp, 512).await;
    assert_eq!(sent, received);

    let server: Identity = "spiffe://cluster.local/ns/demo/sa/echo".parse().unwrap();
    let certificate = lab.b.core.certs.get(&server).await.unwrap();
    let facts = hbone_ca::inspect::read_cert_facts(certificate.chain[0].as_ref()).unwrap();
    let serial = hbone_ca::revocation::parse_serial(&facts.serial_hex).unwrap();
    lab.a
        .core
        .trust
        .revocations()
        .replace(crl(&lab.authority, &[&serial]).as_bytes(), "test")
        .unwrap();

    if let Ok(mut tcp) = socks5_connect(socks, lab.ip("1.1"), echo).await {
        let _ = tcp.write_all(b"through?").await;
        let mut back = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut back)).await;
        assert!(
            back.is_empty(),
            "a tunnel rode the pooled connection to a revoked server"
        );
    }
    assert!(
        support::log_text().contains("CertificateRevoked")
            || support::log_text().contains("certificate_revoked"),
        "node A said nothing of the revoked server"
    );
}
