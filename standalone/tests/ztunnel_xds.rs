//! A real ztunnel fed by hbone-lab's control plane: it connects over TLS
//! with its bearer token, subscribes to both types, ACKs, shows the served
//! workloads and translated policies in its config dump, follows a policy
//! change within seconds, and NACKs a workload it cannot use.
//!
//! Needs a ztunnel binary (`ZTUNNEL_BIN`) and root (network namespaces);
//! ignored otherwise — run with `cargo nextest run --run-ignored all`, as
//! `scripts/test.sh` does when `ZTUNNEL_BIN` is set.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hbone_ca::metrics::CaMetrics;
use hbone_ca::server::CaService;
use hbone_ca::tokens::TokenFile;
use hbone_ca::{AuthorityConfig, SigningAuthority};
use hbone_harness::netns::NetNs;
use hbone_harness::ztunnel::{Mode, Settings, Ztunnel, find_binary};
use hbone_policies::load::{istio_policies, parse_documents};
use hbone_proxy::net::pod_sockets::bind_listener;
use hbone_xds::zds::{NodeAgent, ZdsPod};
use hbone_xds::{Mesh, MeshWorkload, XdsState};

const POLICY: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: allow-gw, namespace: demo}\nspec:\n  selector: {matchLabels: {app: echo}}\n  rules: [{from: [{source: {principals: [cluster.local/ns/demo/sa/gw]}}]}]\n";
const DENY_ALL_NS: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-other, namespace: demo}\nspec:\n  action: DENY\n  rules: [{from: [{source: {notNamespaces: [demo]}}]}]\n";

fn workload(name: &str, sa: &str, ip: &str, app: &str) -> MeshWorkload {
    MeshWorkload::pod("demo", name, sa, ip.parse().unwrap(), app, "node-a")
}

fn mesh(policies: &str) -> Mesh {
    let loaded = parse_documents(policies, "test.yaml").unwrap();
    Mesh {
        workloads: vec![
            workload("echo-0", "echo", "10.253.0.2", "echo"),
            workload("gw-0", "gw", "10.253.0.3", "gw"),
        ],
        services: vec![],
        policies: istio_policies(&loaded, "istio-system"),
    }
}

fn names(dump: &serde_json::Value, section: &str, key: &str) -> Vec<String> {
    let mut out: Vec<String> = match &dump[section] {
        serde_json::Value::Array(items) => items
            .iter()
            .filter_map(|i| i[key].as_str().map(String::from))
            .collect(),
        serde_json::Value::Object(map) => map.keys().cloned().collect(),
        _ => Vec::new(),
    };
    out.sort();
    out
}

async fn wait_until(what: &str, limit: Duration, done: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// hbone-lab's CA and xDS inside `ns`, and the files ztunnel needs.
struct ControlPlane {
    xds: Arc<XdsState>,
    running: hbone_xds::RunningControlPlane,
    dir: tempfile::TempDir,
}

impl ControlPlane {
    async fn start(ns: &NetNs, mesh: &Mesh) -> ControlPlane {
        let authority =
            Arc::new(SigningAuthority::generate(AuthorityConfig::new("cluster.local")).unwrap());
        let tokens =
            "tokens:\n  - token: node-a-token\n    identities: [\"spiffe://cluster.local/*\"]\n";
        let authenticator = Arc::new(TokenFile::parse(tokens, "tokens.yaml").unwrap());
        let ca = Arc::new(CaService::new(
            authority.clone(),
            authenticator.clone(),
            Arc::new(CaMetrics::default()),
        ));
        let xds = XdsState::new(mesh, Some(authenticator));
        let listener = tokio::net::TcpListener::from_std(
            bind_listener(Some(ns.sockets()), "127.0.0.1:15012".parse().unwrap()).unwrap(),
        )
        .unwrap();
        let running = hbone_xds::serve_on(ca, xds.clone(), listener, &[])
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("root.pem"), authority.root_pem()).unwrap();
        std::fs::write(dir.path().join("token"), "node-a-token").unwrap();
        ControlPlane { xds, running, dir }
    }

    fn settings(&self, mode: Mode) -> Settings {
        Settings {
            name: "node-a".into(),
            binary: find_binary(None).expect("ZTUNNEL_BIN names a ztunnel binary"),
            control_plane: self.running.url(),
            root_ca: self.dir.path().join("root.pem"),
            token_file: self.dir.path().join("token"),
            node: "node-a".into(),
            mode,
            log: self.dir.path().join("ztunnel.log"),
            log_level: "info".into(),
            secret_ttl: None,
            local_config: None,
        }
    }

    fn ztunnel(&self, ns: &NetNs, mode: Mode) -> Ztunnel {
        Ztunnel::start(ns, self.settings(mode)).unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs ZTUNNEL_BIN and root"]
async fn ztunnel_subscribes_acks_and_follows_changes() {
    assert!(hbone_harness::netns::can_create(), "this test needs root");
    let tag = std::process::id() % 10_000;
    let ns = NetNs::create(&format!("hlx-{tag}")).unwrap();
    let control = ControlPlane::start(&ns, &mesh(POLICY)).await;
    let xds = control.xds.clone();
    let ztunnel = control.ztunnel(
        &ns,
        Mode::Dedicated {
            workload: "demo/echo-0/echo".into(),
        },
    );

    // Both types answered and ACKed, no NACK.
    let acked = || {
        xds.clients()
            .iter()
            .any(|c| c.acks.len() == 2 && c.node_id.starts_with("ztunnel~") && c.nacks.is_empty())
    };
    wait_until("ztunnel to ACK both types", Duration::from_secs(20), acked).await;

    let dump = ztunnel
        .wait_for_dump("show both workloads", Duration::from_secs(10), |d| {
            names(d, "workloads", "uid").len() == 2
        })
        .await
        .unwrap();
    assert_eq!(
        names(&dump, "workloads", "uid"),
        ["Kubernetes//Pod/demo/echo-0", "Kubernetes//Pod/demo/gw-0"]
    );
    let listed = dump["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["uid"] == "Kubernetes//Pod/demo/echo-0")
        .unwrap()["authorizationPolicies"]
        .clone();
    assert_eq!(listed, serde_json::json!(["demo/allow-gw"]), "{dump:#}");
    assert_eq!(names(&dump, "policies", "name"), ["allow-gw"], "{dump:#}");

    // A policy added while running reaches ztunnel as a delta.
    xds.update(&mesh(&format!("{POLICY}---\n{DENY_ALL_NS}")));
    ztunnel
        .wait_for_dump("show the new DENY", Duration::from_secs(10), |d| {
            names(d, "policies", "name") == ["allow-gw", "deny-other"]
        })
        .await
        .unwrap();
    // And a policy removed is removed.
    xds.update(&mesh(DENY_ALL_NS));
    ztunnel
        .wait_for_dump("drop the removed ALLOW", Duration::from_secs(10), |d| {
            names(d, "policies", "name") == ["deny-other"]
        })
        .await
        .unwrap();

    // A workload ztunnel cannot use (a service key without '/') is NACKed
    // with its reason; the rest is still applied.
    let mut broken = mesh(DENY_ALL_NS);
    broken.workloads[1]
        .services
        .insert("no-slash".into(), vec![(80, 8080)]);
    xds.update(&broken);
    wait_until("a NACK", Duration::from_secs(10), || {
        xds.clients().iter().any(|c| !c.nacks.is_empty())
    })
    .await;
    let nack = xds
        .clients()
        .into_iter()
        .find_map(|c| c.nacks.first().cloned());
    assert!(
        nack.as_deref()
            .unwrap_or("")
            .contains("Kubernetes//Pod/demo/gw-0"),
        "{nack:?}"
    );
    drop(ztunnel);
    control.running.server.shutdown().await;
}

/// Is something listening on `port` inside `ns`?
async fn listening(ns: &NetNs, port: u16) -> bool {
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let socket =
        hbone_proxy::net::pod_sockets::tcp_socket(Some(ns.sockets()), addr, None, None).unwrap();
    matches!(
        tokio::time::timeout(Duration::from_secs(1), socket.connect(addr)).await,
        Ok(Ok(_))
    )
}

async fn wait_listening(ns: &NetNs, port: u16, want: bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while listening(ns, port).await != want {
        assert!(
            Instant::now() < deadline,
            "port {port} in {} should be {}",
            ns.name(),
            if want { "open" } else { "closed" }
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs ZTUNNEL_BIN and root"]
async fn shared_ztunnel_opens_listeners_in_the_pods_zds_hands_it() {
    assert!(hbone_harness::netns::can_create(), "this test needs root");
    let tag = std::process::id() % 10_000;
    let node = NetNs::create(&format!("hlxn-{tag}")).unwrap();
    let pod = NetNs::create(&format!("hlxp-{tag}")).unwrap();
    let control = ControlPlane::start(&node, &mesh(POLICY)).await;
    let uds = control.dir.path().join("ztunnel.sock");
    let echo = ZdsPod {
        uid: MeshWorkload::pod_uid("demo", "echo-0"),
        name: "echo-0".into(),
        namespace: "demo".into(),
        service_account: "echo".into(),
        netns: pod.path(),
    };
    let agent = NodeAgent::listen(&uds, vec![]).unwrap();
    let ztunnel = control.ztunnel(
        &node,
        Mode::Shared {
            inpod_uds: uds.clone(),
        },
    );
    // Connected with an empty snapshot: nothing listens in the pod yet.
    agent.wait_synced(Duration::from_secs(20)).await.unwrap();
    assert!(!listening(&pod, 15008).await);

    // Handed over: ztunnel's three listeners open inside the pod.
    agent.add(echo.clone());
    agent.wait_synced(Duration::from_secs(10)).await.unwrap();
    for port in [15001, 15006, 15008] {
        wait_listening(&pod, port, true).await;
    }
    assert!(agent.status().nacks.is_empty(), "{:?}", agent.status());

    // Taken back: they close.
    agent.remove(&echo.uid);
    agent.wait_synced(Duration::from_secs(10)).await.unwrap();
    wait_listening(&pod, 15008, false).await;

    // A ztunnel restart replays the pods the agent holds.
    agent.add(echo.clone());
    agent.wait_synced(Duration::from_secs(10)).await.unwrap();
    drop(ztunnel);
    wait_listening(&pod, 15008, false).await;
    let _again = control.ztunnel(&node, Mode::Shared { inpod_uds: uds });
    wait_listening(&pod, 15008, true).await;
    assert_eq!(agent.status().connections, 2, "{:?}", agent.status());
}

/// Policies that use every kind of match: istiod's own `allow-full` vector
/// (moved to `demo`), a DENY with not-forms and `when` keys, and port-level mTLS.
fn rich_policies() -> String {
    let vectors = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../policies/tests/istiod-vectors/allow-full-in.yaml");
    let allow_full = std::fs::read_to_string(vectors)
        .unwrap()
        .replace("namespace: cfg", "namespace: demo");
    format!(
        "{allow_full}---\n{DENY_ALL_NS}---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: deny-when, namespace: istio-system}}\nspec:\n  action: DENY\n  rules:\n  - from: [{{source: {{notIpBlocks: [10.0.0.0/8], serviceAccounts: [demo/gw]}}}}]\n    when: [{{key: destination.port, notValues: [\"8000\"]}}, {{key: source.principal, values: [\"*/sa/gw\"]}}]\n---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: ports, namespace: demo}}\nspec:\n  selector: {{matchLabels: {{app: echo}}}}\n  mtls: {{mode: STRICT}}\n  portLevelMtls: {{9090: {{mode: PERMISSIVE}}}}\n"
    )
}

fn sorted_policies(dump: &serde_json::Value) -> Vec<serde_json::Value> {
    let mut policies = dump["policies"].as_array().cloned().unwrap_or_default();
    policies.sort_by_key(|p| p.to_string());
    policies
}

/// `policy ztunnel-config`'s file and the xDS server describe one world:
/// a ztunnel reading the file and a ztunnel subscribing over xDS end up
/// with the same policies and the same policy lists on their workloads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs ZTUNNEL_BIN and root"]
async fn local_config_and_xds_give_ztunnel_the_same_state() {
    assert!(hbone_harness::netns::can_create(), "this test needs root");
    let tag = std::process::id() % 10_000;
    let over_xds = NetNs::create(&format!("hlxa-{tag}")).unwrap();
    let from_file = NetNs::create(&format!("hlxb-{tag}")).unwrap();
    let world = mesh(&rich_policies());
    let control = ControlPlane::start(&over_xds, &world).await;
    let file_control = ControlPlane::start(&from_file, &world).await;
    let file = file_control.dir.path().join("local.yaml");
    std::fs::write(&file, hbone_xds::local_config::render(&world)).unwrap();
    let dedicated = || Mode::Dedicated {
        workload: "demo/echo-0/echo".into(),
    };
    let a = control.ztunnel(&over_xds, dedicated());
    let b = Ztunnel::start(
        &from_file,
        Settings {
            local_config: Some(file),
            ..file_control.settings(dedicated())
        },
    )
    .unwrap();
    let want = world.policies.translated().policies().len();
    let full = |d: &serde_json::Value| {
        d["policies"].as_array().is_some_and(|p| p.len() == want)
            && names(d, "workloads", "uid").len() == 2
    };
    let dump_a = a
        .wait_for_dump("take the policies over xDS", Duration::from_secs(20), full)
        .await
        .unwrap();
    let dump_b = b
        .wait_for_dump("load the local config", Duration::from_secs(20), full)
        .await
        .unwrap();
    assert_eq!(sorted_policies(&dump_a), sorted_policies(&dump_b));
    let lists = |d: &serde_json::Value| -> Vec<serde_json::Value> {
        d["workloads"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["authorizationPolicies"].clone())
            .collect()
    };
    assert_eq!(lists(&dump_a), lists(&dump_b));
    // The converted PeerAuthentication is on echo's list, and present.
    assert!(
        dump_a
            .to_string()
            .contains("converted_peer_authentication_ports"),
        "{dump_a:#}"
    );
}
