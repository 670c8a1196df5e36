//! The CA server over real TLS on loopback: issuance in both of ztunnel's
//! modes, and every refusal with its gRPC status, log reason and metric.

use std::sync::Arc;
use std::time::Duration;

use hbone_ca::client::{CaClient, ClientError};
use hbone_ca::manager::new_key_and_csr;
use hbone_ca::metrics::CaMetrics;
use hbone_ca::placement::Placement;
use hbone_ca::server::{CaService, RunningCa, serve};
use hbone_ca::tokens::TokenFile;
use hbone_ca::{AuthorityConfig, Identity, SigningAuthority};

const TOKENS: &str = r#"
tokens:
  - token: node-token
    identities: ["spiffe://cluster.local/ns/demo/sa/*"]
  - token: gateway-token
    identities: ["spiffe://cluster.local/ns/demo/sa/hello-gateway-istio"]
  - token: node-1-token
    identities: ["spiffe://cluster.local/ns/demo/sa/*"]
    node: node-1
"#;

struct Lab {
    ca: RunningCa,
    root_pem: String,
}

impl Lab {
    async fn start() -> Lab {
        Lab::start_placing(None).await
    }

    async fn start_placing(placement: Option<Arc<Placement>>) -> Lab {
        Lab::start_with(|service| match placement {
            Some(placement) => service.with_placement(placement),
            None => service,
        })
        .await
    }

    /// The CA with `configure` applied to its service.
    async fn start_with(configure: impl FnOnce(CaService) -> CaService) -> Lab {
        let authority =
            Arc::new(SigningAuthority::generate(AuthorityConfig::new("cluster.local")).unwrap());
        let root_pem = authority.root_pem().to_string();
        let tokens = Arc::new(TokenFile::parse(TOKENS, "tokens.yaml").unwrap());
        let service = configure(CaService::new(
            authority,
            tokens,
            Arc::new(CaMetrics::default()),
        ));
        let ca = serve(Arc::new(service), "127.0.0.1:0".parse().unwrap(), &[])
            .await
            .unwrap();
        Lab { ca, root_pem }
    }

    fn client(&self, token: &str) -> CaClient {
        CaClient::new(&self.ca.url(), &self.root_pem, token).unwrap()
    }

    fn metrics(&self) -> &CaMetrics {
        self.ca.service.metrics()
    }
}

/// What the leaf of `app`'s certificate says, as the node token obtains
/// it on its behalf.
async fn node_issues(lab: &Lab, app: &Identity) -> hbone_ca::inspect::CertFacts {
    let (_, csr) = new_key_and_csr(app).unwrap();
    let chain = lab
        .client("node-token")
        .create_certificate(&csr, DAY, Some(app))
        .await
        .unwrap();
    leaf_facts(&chain)
}

/// What the leaf of a served `chain` (PEM, leaf first) says.
fn leaf_facts(chain: &[String]) -> hbone_ca::inspect::CertFacts {
    hbone_ca::inspect::read_cert_facts(hbone_ca::inspect::pem_certs(&chain[0]).unwrap()[0].as_ref())
        .unwrap()
}

fn id(s: &str) -> Identity {
    s.parse().unwrap()
}

const DAY: Duration = Duration::from_secs(24 * 3600);

#[tokio::test]
async fn issues_in_dedicated_and_shared_mode() {
    let lab = Lab::start().await;
    let gateway = id("spiffe://cluster.local/ns/demo/sa/hello-gateway-istio");
    let (_, csr) = new_key_and_csr(&gateway).unwrap();

    // Dedicated mode: no metadata, the identity is the CSR's SAN.
    let chain = lab
        .client("gateway-token")
        .create_certificate(&csr, DAY, None)
        .await
        .unwrap();
    assert_eq!(chain.len(), 3);
    assert_eq!(chain.last().unwrap(), &lab.root_pem);

    // Shared mode: a node proxy asks on the workload's behalf.
    let app = id("spiffe://cluster.local/ns/demo/sa/hello-app");
    let facts = node_issues(&lab, &app).await;
    assert_eq!(facts.uri_sans, vec![app.uri()]);
    assert_eq!(lab.metrics().issued(), 2);
    assert!(
        lab.metrics()
            .encode()
            .contains("hbone_ca_certificates_issued_total 2")
    );
    lab.ca.shutdown().await;
}

type Outcome = Result<Vec<String>, ClientError>;

async fn refused(result: Outcome) -> (tonic::Code, String) {
    match result {
        Err(ClientError::Refused { code, message }) => (code, message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn every_refusal_has_a_status_a_reason_and_a_count() {
    let lab = Lab::start().await;
    let app = id("spiffe://cluster.local/ns/demo/sa/hello-app");
    let (_, app_csr) = new_key_and_csr(&app).unwrap();
    let node = lab.client("node-token");

    let cases: Vec<(&str, tonic::Code, Outcome)> = vec![
        (
            "unknown_token",
            tonic::Code::Unauthenticated,
            lab.client("who-am-i")
                .create_certificate(&app_csr, DAY, None)
                .await,
        ),
        (
            "missing_token",
            tonic::Code::Unauthenticated,
            lab.client("").create_certificate(&app_csr, DAY, None).await,
        ),
        (
            "malformed_csr",
            tonic::Code::InvalidArgument,
            node.create_certificate(
                "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
                DAY,
                None,
            )
            .await,
        ),
        (
            "san_mismatch",
            tonic::Code::InvalidArgument,
            node.create_certificate(
                &app_csr,
                DAY,
                Some(&id("spiffe://cluster.local/ns/demo/sa/postgres")),
            )
            .await,
        ),
        ("foreign_trust_domain", tonic::Code::PermissionDenied, {
            let foreign = id("spiffe://evil.example/ns/demo/sa/hello-app");
            let (_, csr) = new_key_and_csr(&foreign).unwrap();
            node.create_certificate(&csr, DAY, None).await
        }),
        (
            "identity_not_allowed",
            tonic::Code::PermissionDenied,
            lab.client("gateway-token")
                .create_certificate(&app_csr, DAY, None)
                .await,
        ),
        ("identity_not_allowed", tonic::Code::PermissionDenied, {
            let other_ns = id("spiffe://cluster.local/ns/prod/sa/db");
            let (_, csr) = new_key_and_csr(&other_ns).unwrap();
            node.create_certificate(&csr, DAY, Some(&other_ns)).await
        }),
        (
            "ttl_too_long",
            tonic::Code::InvalidArgument,
            node.create_certificate(&app_csr, DAY * 365, None).await,
        ),
    ];
    for (reason, code, result) in cases {
        let (got_code, message) = refused(result).await;
        assert_eq!(got_code, code, "{reason}: {message}");
        assert!(
            message.contains(reason),
            "{reason} not named in {message:?}"
        );
    }
    for reason in [
        "unknown_token",
        "missing_token",
        "malformed_csr",
        "san_mismatch",
        "foreign_trust_domain",
        "ttl_too_long",
    ] {
        assert_eq!(lab.metrics().refusals(reason), 1, "{reason}");
    }
    assert_eq!(lab.metrics().refusals("identity_not_allowed"), 2);
    assert_eq!(lab.metrics().issued(), 0);
    let text = lab.metrics().encode();
    assert!(
        text.contains(r#"hbone_ca_refusals_total{reason="san_mismatch"} 1"#),
        "{text}"
    );
    lab.ca.shutdown().await;
}

#[tokio::test]
async fn a_client_trusting_another_root_refuses_the_ca() {
    let lab = Lab::start().await;
    let stranger = SigningAuthority::generate(AuthorityConfig::new("cluster.local")).unwrap();
    let client = CaClient::new(&lab.ca.url(), stranger.root_pem(), "node-token").unwrap();
    let app = id("spiffe://cluster.local/ns/demo/sa/hello-app");
    let (_, csr) = new_key_and_csr(&app).unwrap();
    let err = client
        .create_certificate(&csr, DAY, None)
        .await
        .unwrap_err();
    assert!(
        err.is_transient() || matches!(err, ClientError::Refused { .. }),
        "{err}"
    );
    assert_eq!(
        lab.metrics().issued(),
        0,
        "no request may reach the CA over an untrusted TLS session"
    );
    lab.ca.shutdown().await;
}

#[test]
fn plaintext_addresses_are_refused_up_front() {
    let err = CaClient::new("http://127.0.0.1:15012", "", "t").unwrap_err();
    assert!(err.to_string().contains("https"), "{err}");
}

/// A token scoped to a node obtains only identities of workloads placed on
/// that node (istiod's node authorization): node-1's token gets the
/// gateway's certificate, not hello-app's, which runs on node-2; and a CA
/// that does not know where workloads run grants such a token nothing.
#[tokio::test]
async fn a_node_token_obtains_only_its_own_nodes_workloads() {
    let gateway = id("spiffe://cluster.local/ns/demo/sa/hello-gateway-istio");
    let app = id("spiffe://cluster.local/ns/demo/sa/hello-app");
    let placement = Arc::new(Placement::default());
    placement.replace([
        ("node-1".to_string(), gateway.clone()),
        ("node-2".to_string(), app.clone()),
    ]);
    let lab = Lab::start_placing(Some(placement)).await;
    let node_1 = lab.client("node-1-token");
    let (_, csr) = new_key_and_csr(&gateway).unwrap();
    node_1
        .create_certificate(&csr, DAY, Some(&gateway))
        .await
        .expect("node-1 runs the gateway");
    let (_, csr) = new_key_and_csr(&app).unwrap();
    let (code, message) = refused(node_1.create_certificate(&csr, DAY, Some(&app)).await).await;
    assert_eq!(code, tonic::Code::PermissionDenied, "{message}");
    assert!(message.contains("identity_not_on_node"), "{message}");
    assert_eq!(lab.metrics().refusals("identity_not_on_node"), 1);
    // An unscoped node token still obtains any workload's.
    lab.client("node-token")
        .create_certificate(&csr, DAY, Some(&app))
        .await
        .unwrap();
    lab.ca.shutdown().await;

    let blind = Lab::start().await;
    let (code, message) = refused(
        blind
            .client("node-1-token")
            .create_certificate(&csr, DAY, Some(&app))
            .await,
    )
    .await;
    assert_eq!(code, tonic::Code::FailedPrecondition, "{message}");
    assert!(message.contains("--registry"), "{message}");
    blind.ca.shutdown().await;
}

/// With a journal, every certificate served is recorded with its serial
/// and identity (what `ca revoke --identity` reads).
#[tokio::test]
async fn a_journal_records_every_certificate_served() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("issued.jsonl");
    let journal = hbone_ca::journal::Journal::open(&path, std::time::SystemTime::now()).unwrap();
    let lab = Lab::start_with(|service| service.with_journal(Arc::new(journal))).await;
    let app = id("spiffe://cluster.local/ns/demo/sa/hello-app");
    let facts = node_issues(&lab, &app).await;
    let entries = hbone_ca::journal::read(&path).unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].identity, app.to_string());
    assert_eq!(
        entries[0].serial_bytes(),
        hbone_ca::revocation::parse_serial(&facts.serial_hex).unwrap()
    );

    lab.ca.shutdown().await;
}
