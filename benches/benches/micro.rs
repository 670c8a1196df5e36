//! Micro-benchmarks of the pieces on hbone-lab's hot paths, each in
//! isolation (`cargo bench -p hbone-bench`):
//!
//! - an mTLS handshake between two SVIDs, as HBONE does it (TLS 1.3, ALPN h2,
//!   client certificate, SPIFFE checks on both sides), over an in-memory pipe;
//! - opening a CONNECT stream on an established HTTP/2 connection and getting
//!   its 200 — the per-connection cost once the pool holds a connection;
//! - an Istio and a Cilium policy decision with the lab's own policies;
//! - the CA signing a CSR.
#![allow(missing_docs)] // criterion_group! makes an undocumented public function

use std::collections::BTreeMap;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use hbone_ca::manager::{assemble_svid, new_key_and_csr};
use hbone_ca::{AuthorityConfig, Identity, RenewalPolicy, SigningAuthority};
use hbone_policies::cilium::{EndpointInfo, Flow, L4Protocol, Peer};
use hbone_policies::istio::{ConnectionAttrs, TargetWorkload};
use hbone_policies::lab::lab_resources;
use hbone_policies::matrix::PolicySet;
use hbone_proxy::tls::MeshTrust;
use tokio::runtime::Runtime;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn svid(authority: &SigningAuthority, sa: &str) -> hbone_ca::manager::Svid {
    let identity: Identity = format!("spiffe://cluster.local/ns/demo/sa/{sa}")
        .parse()
        .unwrap();
    let (key, csr) = new_key_and_csr(&identity).unwrap();
    let issued = authority.sign_csr(&csr, &identity, None).unwrap();
    assemble_svid(&identity, &key, issued.chain_pem, &RenewalPolicy::default()).unwrap()
}

fn tls_handshake(c: &mut Criterion) {
    let authority = SigningAuthority::generate(AuthorityConfig::new("cluster.local")).unwrap();
    let (client, server) = (svid(&authority, "client"), svid(&authority, "server"));
    let roots = hbone_ca::inspect::pem_certs(authority.root_pem()).unwrap();
    let trust = MeshTrust::new(&roots, "cluster.local").unwrap();
    let server_config = trust.server_config(&server).unwrap();
    let client_config = trust
        .client_config(&client, vec![server.identity.clone()])
        .unwrap();
    let rt = runtime();
    c.bench_function("mtls_handshake_svid_to_svid", |b| {
        b.iter(|| {
            rt.block_on(async {
                let (a, z) = tokio::io::duplex(64 * 1024);
                let accept = tokio_rustls::TlsAcceptor::from(server_config.clone()).accept(z);
                let connect = tokio_rustls::TlsConnector::from(client_config.clone()).connect(
                    rustls_pki_types::ServerName::IpAddress(
                        std::net::IpAddr::from([10, 0, 0, 2]).into(),
                    ),
                    a,
                );
                let (s, c) = tokio::join!(accept, connect);
                s.unwrap();
                c.unwrap();
            })
        })
    });
}

fn connect_stream(c: &mut Criterion) {
    let rt = runtime();
    let mut send = rt.block_on(async {
        let (a, z) = tokio::io::duplex(1 << 20);
        tokio::spawn(async move {
            let mut conn = h2::server::handshake(z).await.unwrap();
            while let Some(Ok((_request, mut respond))) = conn.accept().await {
                let response = http::Response::builder().status(200).body(()).unwrap();
                let _ = respond.send_response(response, true);
            }
        });
        let (send, conn) = h2::client::handshake(a).await.unwrap();
        tokio::spawn(conn);
        send
    });
    c.bench_function("connect_stream_on_pooled_h2_connection", |b| {
        b.iter(|| {
            rt.block_on(async {
                send = send.clone().ready().await.unwrap();
                let request = http::Request::builder()
                    .method(http::Method::CONNECT)
                    .uri("10.0.0.2:8000")
                    .body(())
                    .unwrap();
                let (response, _stream) = send.send_request(request, false).unwrap();
                let response = response.await.unwrap();
                assert_eq!(response.status(), 200);
            })
        })
    });
}

fn policy_decisions(c: &mut Criterion) {
    let policies = PolicySet::from_loaded(&lab_resources().unwrap());
    let labels = |app: &str| BTreeMap::from([("app".to_string(), app.to_string())]);
    let (hello, test_pod) = (labels("hello-app"), labels("test-pod"));
    let target = TargetWorkload {
        namespace: "demo",
        labels: &hello,
    };
    let attrs = |principal| ConnectionAttrs {
        principal: Some(principal),
        src_ip: "10.0.0.1".parse().unwrap(),
        dst_ip: "10.0.0.2".parse().unwrap(),
        dst_port: 8000,
    };
    let gateway = attrs("cluster.local/ns/demo/sa/hello-gateway-istio");
    let stranger = attrs("cluster.local/ns/demo/sa/default");
    c.bench_function("istio_decision_allow", |b| {
        b.iter(|| assert!(policies.istio.evaluate(&target, &gateway).allowed))
    });
    c.bench_function("istio_decision_deny", |b| {
        b.iter(|| assert!(!policies.istio.evaluate(&target, &stranger).allowed))
    });
    let no_ports = BTreeMap::new();
    let src = EndpointInfo {
        namespace: "demo",
        labels: &test_pod,
        service_account: "default",
        named_ports: &no_ports,
    };
    let dst = Peer::Endpoint(EndpointInfo {
        namespace: "demo",
        labels: &hello,
        service_account: "hello-app",
        named_ports: &no_ports,
    });
    let flow = Flow {
        port: 15008,
        protocol: L4Protocol::Tcp,
        sni: None,
    };
    c.bench_function("cilium_egress_decision", |b| {
        b.iter(|| assert!(policies.cilium.egress(&src, &dst, &flow).allowed))
    });
}

fn certificate_issuance(c: &mut Criterion) {
    let authority =
        Arc::new(SigningAuthority::generate(AuthorityConfig::new("cluster.local")).unwrap());
    let identity: Identity = "spiffe://cluster.local/ns/demo/sa/hello-app"
        .parse()
        .unwrap();
    let (_key, csr) = new_key_and_csr(&identity).unwrap();
    c.bench_function("ca_sign_csr", |b| {
        b.iter(|| authority.sign_csr(&csr, &identity, None).unwrap())
    });
    c.bench_function("workload_key_and_csr", |b| {
        b.iter(|| new_key_and_csr(&identity).unwrap())
    });
}

criterion_group!(
    benches,
    tls_handshake,
    connect_stream,
    policy_decisions,
    certificate_issuance
);
criterion_main!(benches);
