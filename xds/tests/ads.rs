//! The delta ADS server over real gRPC and TLS, with the client side as
//! ztunnel speaks it: first answers (even empty), ACKs, deltas of exactly
//! what changed, removals, NACKs, reconnects with held versions, tokens.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use hbone_ca::metrics::CaMetrics;
use hbone_ca::server::CaService;
use hbone_ca::tokens::TokenFile;
use hbone_ca::{AuthorityConfig, SigningAuthority};
use hbone_policies::load::{istio_policies, parse_documents};
use hbone_xds::client::{AdsClient, ClientError};
use hbone_xds::proto::discovery::DeltaDiscoveryResponse;
use hbone_xds::proto::security::TYPE_URL as AUTHORIZATION;
use hbone_xds::proto::workload::{ADDRESS_TYPE_URL as ADDRESS, Address, AddressType};
use hbone_xds::{Mesh, MeshWorkload, XdsState};
use prost::Message;

const ALLOW: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: allow-gw, namespace: demo}\nspec:\n  selector: {matchLabels: {app: echo}}\n  rules: [{from: [{source: {principals: [cluster.local/ns/demo/sa/gw]}}]}]\n";
const DENY: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-other, namespace: demo}\nspec:\n  action: DENY\n  rules: [{from: [{source: {notNamespaces: [demo]}}]}]\n";

fn workload(name: &str, ip: &str, app: &str) -> MeshWorkload {
    MeshWorkload::pod("demo", name, name, ip.parse().unwrap(), app, "node-a")
}

fn mesh(policies: &str) -> Mesh {
    let loaded = parse_documents(policies, "test.yaml").unwrap();
    Mesh {
        workloads: vec![
            workload("echo-0", "10.0.0.2", "echo"),
            workload("gw-0", "10.0.0.3", "gw"),
        ],
        services: vec![],
        policies: istio_policies(&loaded, "istio-system"),
    }
}

struct Server {
    xds: Arc<XdsState>,
    url: String,
    root: String,
    _running: hbone_xds::RunningControlPlane,
}

async fn server(first: &Mesh) -> Server {
    let authority =
        Arc::new(SigningAuthority::generate(AuthorityConfig::new("cluster.local")).unwrap());
    let tokens = "tokens:\n  - token: node-token\n    identities: [\"spiffe://cluster.local/*\"]\n";
    let authenticator = Arc::new(TokenFile::parse(tokens, "tokens.yaml").unwrap());
    let ca = Arc::new(CaService::new(
        authority.clone(),
        authenticator.clone(),
        Arc::new(CaMetrics::default()),
    ));
    let xds = XdsState::new(first, Some(authenticator));
    let running = hbone_xds::serve(ca, xds.clone(), "127.0.0.1:0".parse().unwrap(), &[])
        .await
        .unwrap();
    Server {
        xds,
        url: running.url(),
        root: authority.root_pem().to_string(),
        _running: running,
    }
}

async fn client(s: &Server, token: Option<&str>) -> Result<AdsClient, ClientError> {
    AdsClient::connect(
        &s.url,
        &s.root,
        token,
        hbone_xds::client::node(
            "ztunnel~10.0.0.1~test.ns~ns.svc.cluster.local",
            &Default::default(),
        ),
    )
    .await
}

async fn receive(c: &mut AdsClient) -> DeltaDiscoveryResponse {
    tokio::time::timeout(Duration::from_secs(5), c.receive())
        .await
        .expect("a response within 5 s")
        .unwrap()
}

fn names(r: &DeltaDiscoveryResponse) -> Vec<String> {
    let mut n: Vec<String> = r.resources.iter().map(|r| r.name.clone()).collect();
    n.sort();
    n
}

fn versions(r: &DeltaDiscoveryResponse) -> HashMap<String, String> {
    r.resources
        .iter()
        .map(|r| (r.name.clone(), r.version.clone()))
        .collect()
}

fn policy_list(r: &DeltaDiscoveryResponse, uid: &str) -> Vec<String> {
    let resource = r.resources.iter().find(|x| x.name == uid).unwrap();
    let address = Address::decode(&resource.resource.as_ref().unwrap().value[..]).unwrap();
    match address.r#type {
        Some(AddressType::Workload(w)) => w.authorization_policies,
        other => panic!("not a workload: {other:?}"),
    }
}

#[tokio::test]
async fn subscribe_ack_delta_remove_nack_and_reconnect() {
    let s = server(&mesh(ALLOW)).await;
    let mut c = client(&s, Some("node-token")).await.unwrap();
    c.subscribe(ADDRESS, HashMap::new()).await.unwrap();
    c.subscribe(AUTHORIZATION, HashMap::new()).await.unwrap();
    let addresses = receive(&mut c).await;
    let policies = receive(&mut c).await;
    assert_eq!(addresses.type_url, ADDRESS);
    assert_eq!(
        names(&addresses),
        ["Kubernetes//Pod/demo/echo-0", "Kubernetes//Pod/demo/gw-0"]
    );
    assert_eq!(
        policy_list(&addresses, "Kubernetes//Pod/demo/echo-0"),
        ["demo/allow-gw"]
    );
    assert_eq!(names(&policies), ["demo/allow-gw"]);
    assert_ne!(addresses.nonce, policies.nonce);
    c.ack(&addresses).await.unwrap();
    c.ack(&policies).await.unwrap();
    assert!(s.xds.wait_answered(Duration::from_secs(5)).await);
    let status = &s.xds.clients()[0];
    assert_eq!(
        status.node_id,
        "ztunnel~10.0.0.1~test.ns~ns.svc.cluster.local"
    );
    assert_eq!(status.acks.values().sum::<u64>(), 2);

    // A namespace-wide DENY: only that policy is sent; no workload changed.
    s.xds.update(&mesh(&format!("{ALLOW}---\n{DENY}")));
    let delta = receive(&mut c).await;
    assert_eq!(delta.type_url, AUTHORIZATION);
    assert_eq!(names(&delta), ["demo/deny-other"]);
    assert!(delta.removed_resources.is_empty());
    c.ack(&delta).await.unwrap();

    // The ALLOW goes: it is removed, and echo's record (its list) is resent alone.
    s.xds.update(&mesh(DENY));
    let mut got = [receive(&mut c).await, receive(&mut c).await];
    got.sort_by(|a, b| a.type_url.cmp(&b.type_url));
    let [policies_delta, addresses_delta] = &got;
    assert_eq!(policies_delta.type_url, AUTHORIZATION);
    assert_eq!(policies_delta.removed_resources, ["demo/allow-gw"]);
    assert!(policies_delta.resources.is_empty());
    assert_eq!(names(addresses_delta), ["Kubernetes//Pod/demo/echo-0"]);
    assert!(policy_list(addresses_delta, "Kubernetes//Pod/demo/echo-0").is_empty());
    c.ack(policies_delta).await.unwrap();
    c.nack(addresses_delta, "Kubernetes//Pod/demo/echo-0: not today")
        .await
        .unwrap();
    assert!(s.xds.wait_answered(Duration::from_secs(5)).await);
    assert_eq!(
        s.xds.clients()[0].nacks,
        ["Kubernetes//Pod/demo/echo-0: not today"]
    );

    // A reconnecting client says what it holds: unchanged resources are not
    // sent again, and a name that no longer exists is removed.
    let mut again = client(&s, Some("node-token")).await.unwrap();
    let mut held: HashMap<String, String> = versions(&delta);
    held.insert("demo/gone".into(), "stale".into());
    again.subscribe(AUTHORIZATION, held).await.unwrap();
    let resumed = receive(&mut again).await;
    assert!(resumed.resources.is_empty(), "{:?}", names(&resumed));
    assert_eq!(resumed.removed_resources, ["demo/gone"]);
}

#[tokio::test]
async fn an_empty_mesh_is_still_answered_and_tokens_are_checked() {
    let s = server(&Mesh::default()).await;
    // ztunnel opens no listener until both types are answered: empty answers count.
    let mut c = client(&s, Some("node-token")).await.unwrap();
    c.subscribe(ADDRESS, HashMap::new()).await.unwrap();
    c.subscribe(AUTHORIZATION, HashMap::new()).await.unwrap();
    for _ in 0..2 {
        let r = receive(&mut c).await;
        assert!(r.resources.is_empty() && !r.nonce.is_empty());
    }
    // The call is made on the first receive: that is where a refusal shows.
    for token in [None, Some("wrong-token")] {
        let mut c = client(&s, token).await.unwrap();
        c.subscribe(ADDRESS, HashMap::new()).await.unwrap();
        let refused = match c.receive().await {
            Err(ClientError::Refused(status)) => status,
            Err(other) => panic!("{other}"),
            Ok(_) => panic!("a stream without a valid token was answered"),
        };
        assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused}");
    }
}

/// What a client with a node token can make the server keep is bounded
/// (issue 30, finding 4): a NACK flood keeps the newest 16 reasons, each
/// cut at 1 KiB; a type that is not served ends the stream and leaves
/// nothing behind; the statuses of gone clients are forgotten past 64.
#[tokio::test]
async fn what_a_client_leaves_in_the_server_is_bounded() {
    use hbone_xds::server::{KEPT_GONE_CLIENTS, KEPT_NACKS, MAX_DETAIL_BYTES};
    let s = server(&mesh(ALLOW)).await;
    let mut c = client(&s, Some("node-token")).await.unwrap();
    c.subscribe(ADDRESS, HashMap::new()).await.unwrap();
    let first = receive(&mut c).await;
    let reason = "x".repeat(100 * 1024);
    for _ in 0..40 {
        c.nack(&first, &reason).await.unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while s.xds.clients()[0].nacks_total < 40 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = &s.xds.clients()[0];
    assert_eq!(status.nacks_total, 40);
    assert_eq!(status.nacks.len(), KEPT_NACKS);
    assert!(status.nacks.iter().all(|n| n.len() <= MAX_DETAIL_BYTES));

    let mut odd = client(&s, Some("node-token")).await.unwrap();
    odd.subscribe("type.googleapis.com/made.up.Type", HashMap::new())
        .await
        .unwrap();
    let refused = tokio::time::timeout(Duration::from_secs(5), odd.receive())
        .await
        .expect("an answer within 5 s");
    match refused {
        Err(ClientError::Refused(status)) => {
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}")
        }
        other => panic!("a type that is not served was answered: {other:?}"),
    }

    for _ in 0..KEPT_GONE_CLIENTS + 10 {
        let mut short = client(&s, Some("node-token")).await.unwrap();
        short.subscribe(ADDRESS, HashMap::new()).await.unwrap();
        receive(&mut short).await;
    }
    let most = KEPT_GONE_CLIENTS + 1;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while s.xds.clients().len() > most && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        s.xds.clients().len() <= most,
        "{} client statuses kept",
        s.xds.clients().len()
    );
    assert!(
        s.xds
            .clients()
            .iter()
            .any(|c| c.connected && c.nacks_total == 40),
        "the connected client's status is kept"
    );
}
