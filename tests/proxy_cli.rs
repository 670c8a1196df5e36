//! `hbone-lab proxy --xds` in ztunnel's place, as processes: fed by
//! `hbone-lab ca serve --xds` (the registry's workloads and the translated
//! policies), it becomes ready, holds what the control plane serves, and
//! says so on its admin port. No root needed: everything is on loopback.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hbone_workloads::http_get::Get;
use support::{Running, hbone_lab, text};

fn spawn(args: &[&str]) -> Running {
    spawn_with(args, &[])
}

fn spawn_with(args: &[&str], env: &[(&str, &Path)]) -> Running {
    Running(
        Command::new(env!("CARGO_BIN_EXE_hbone-lab"))
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_os_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run hbone-lab"),
    )
}

/// A GET on loopback: (status, body), or None while nothing listens.
fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    runtime.block_on(async {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request = Get::once(addr, path);
        let get = hbone_workloads::http_get::get(&mut tcp, &request);
        let answer = tokio::time::timeout(Duration::from_secs(2), get)
            .await
            .ok()?
            .ok()?;
        Some((answer.status, answer.text()))
    })
}

fn wait_until<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn proxy_follows_ca_serve_xds_without_a_config_file() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root.pem");
    let token = dir.path().join("token");
    std::fs::write(&token, "node-2-example-token\n").unwrap();
    // SSLKEYLOGFILE is set for the CA: it never logs secrets all the same.
    let ca_keys = dir.path().join("ca-keys.log");
    let _server = spawn_with(
        &[
            "ca",
            "serve",
            "--xds",
            "--listen",
            "127.0.71.1:15012",
            "--registry",
            s(&repo.join("proxy/examples/registry.yaml")),
            "--policies",
            s(&repo.join("policies/istio")),
            "--tokens",
            s(&repo.join("proxy/examples/tokens.yaml")),
            "--write-root",
            s(&root),
        ],
        &[("SSLKEYLOGFILE", &ca_keys)],
    );
    wait_until(Duration::from_secs(20), "the CA's root", || {
        root.exists().then_some(())
    });
    let _proxy = spawn(&[
        "proxy",
        "--xds",
        "https://127.0.71.1:15012",
        "--node",
        "node-2",
        "--root-cert",
        s(&root),
        "--token-file",
        s(&token),
        "--hbone-port",
        "0",
        "--readiness",
        "127.0.71.2:15021",
        "--admin",
        "127.0.71.2:15000",
    ]);
    wait_until(Duration::from_secs(20), "readiness", || {
        get("127.0.71.2:15021", "/healthz/ready").filter(|(status, _)| *status == 200)
    });
    let (_, dump) = get("127.0.71.2:15000", "/config_dump").expect("admin answers");
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    let workloads = dump["workloads"].as_array().unwrap();
    assert_eq!(
        workloads.len(),
        4,
        "the registry's workloads, over xDS: {dump:#}"
    );
    let hello = workloads.iter().find(|w| w["name"] == "hello-app").unwrap();
    assert_eq!(hello["local"], true);
    let listed = hello["authorizationPolicies"].as_array().unwrap();
    assert!(
        !listed.is_empty(),
        "hello-app lists its selector-scoped policies: {hello:#}"
    );
    // Policies as ztunnel's dump lists them: objects with namespace and name.
    let policies: Vec<String> = dump["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            format!(
                "{}/{}",
                p["namespace"].as_str().unwrap(),
                p["name"].as_str().unwrap()
            )
        })
        .collect();
    for key in listed {
        let key = key.as_str().unwrap().to_string();
        assert!(
            policies.contains(&key),
            "{key} was pushed too: {policies:?}"
        );
    }
    assert!(dump["tlsKeyLog"].is_null(), "no key log unless asked for");
    assert!(
        !ca_keys.exists(),
        "the CA served TLS (certificates, xDS) without logging a secret"
    );
}

#[test]
fn proxy_without_a_source_says_what_it_needs() {
    let out = hbone_lab(&["proxy"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("--config") && err.contains("--xds"), "{err}");
    let out = hbone_lab(&["proxy", "--xds", "https://127.0.0.1:15012"]);
    let err = text(&out.stderr);
    assert!(
        err.contains("--node") && err.contains("--root-cert"),
        "{err}"
    );
}

/// The kind lab's node-proxy DaemonSet starts `hbone-lab proxy` with
/// arguments this build accepts: run with them (outside a cluster), it gets
/// past parsing to reading the root certificate the pod would have mounted.
#[test]
fn the_kind_node_proxy_arguments_are_ones_the_proxy_accepts() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest =
        std::fs::read_to_string(repo.join("kind/node-proxy/hbone-node-proxy.yaml")).unwrap();
    let doc: serde_yaml::Value = serde_yaml::from_str(&manifest).unwrap();
    let args: Vec<String> = doc["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| {
            a.as_str()
                .unwrap()
                .replace("$(NODE_NAME)", "ebpf-lab-worker2")
        })
        .collect();
    assert_eq!(args[0], "proxy");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = hbone_lab(&args);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("ca.rootCert") && err.contains("/var/run/secrets/istio/root-cert.pem"),
        "parsed, then stopped at the root the pod mounts: {err}"
    );
}
