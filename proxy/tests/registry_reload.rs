//! A proxy follows its registry file: a service added on disk becomes
//! reachable without a restart, and a broken edit is reported and ignored.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use hbone_proxy::sources::registry_file::follow_file;
use support::{Lab, echo_server, registry_yaml};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_registry_file_is_followed_and_a_broken_one_ignored() {
    let net = 47;
    let lab = Lab::start(net).await;
    echo_server(SocketAddr::new(lab.ip("2.1"), 9000)).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("registry.yaml");
    std::fs::write(&file, registry_yaml(net)).unwrap();
    let stop = CancellationToken::new();
    let core = lab.a.core.clone();
    let follower = tokio::spawn(follow_file(
        core.clone(),
        file.clone(),
        Duration::from_millis(50),
        stop.clone(),
    ));

    let new_vip = SocketAddr::new(lab.ip("3.2"), 8080);
    assert!(
        core.registry()
            .services
            .iter()
            .all(|s| s.name != "echo-alt")
    );
    // A second service for the echo workload, on a new VIP.
    let extended = format!(
        "{}  - {{name: echo-alt, namespace: demo, vips: [{}], ports: {{8080: 9000}}, selector: {{app: echo}}}}\n",
        registry_yaml(net),
        new_vip.ip()
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    std::fs::write(&file, extended).unwrap();
    assert!(
        lab.a_knows_service("echo-alt").await,
        "the new service was swapped in"
    );
    lab.echo_via_a(new_vip, 2048).await;

    // A broken edit: reported, and the proxy keeps what it had.
    tokio::time::sleep(Duration::from_millis(20)).await;
    std::fs::write(&file, "workloads: [{name: oops}\n").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        core.registry()
            .services
            .iter()
            .any(|s| s.name == "echo-alt")
    );
    assert!(
        support::log_text().contains("does not parse; keeping the previous one"),
        "the broken edit is reported"
    );
    stop.cancel();
    assert_eq!(follower.await.unwrap(), 1, "one version was swapped in");
}
