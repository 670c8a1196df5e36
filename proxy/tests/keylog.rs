//! TLS key logging: asked for, both proxies write every mesh connection's
//! TLS 1.3 secrets in the NSS key log format (the two sides of one
//! connection agree on its client random), to a file only its owner can
//! read, and the admin config dump says that keys are being logged.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;

use support::{Lab, echo_server, http_get};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asked_for_the_secrets_of_each_mesh_connection_are_logged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.log");
    let lab = Lab::start_logging_keys(62, &path).await;
    let echo = SocketAddr::new(lab.ip("2.1"), 9000);
    echo_server(echo).await;
    lab.echo_via_a(echo, 64 * 1024).await;

    let text = std::fs::read_to_string(&path).unwrap();
    let mut by_label: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        assert_eq!(fields.len(), 3, "LABEL CLIENT_RANDOM SECRET: {line}");
        assert_eq!(
            fields[1].len(),
            64,
            "32 bytes of client random, in hex: {line}"
        );
        assert!(fields[2].chars().all(|c| c.is_ascii_hexdigit()), "{line}");
        by_label.entry(fields[0]).or_default().push(fields[1]);
    }
    for label in [
        "CLIENT_HANDSHAKE_TRAFFIC_SECRET",
        "SERVER_HANDSHAKE_TRAFFIC_SECRET",
        "CLIENT_TRAFFIC_SECRET_0",
        "SERVER_TRAFFIC_SECRET_0",
    ] {
        let randoms = &by_label
            .get(label)
            .unwrap_or_else(|| panic!("no {label}: {text}"));
        assert_eq!(
            randoms.len(),
            2,
            "logged by the dialing and by the accepting proxy: {label}"
        );
        assert_eq!(randoms[0], randoms[1], "one connection, one client random");
    }
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "only its owner can read the secrets");

    let (status, dump) = http_get(lab.a.addrs.admin.unwrap(), "/config_dump").await;
    assert_eq!(status, 200);
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    assert_eq!(dump["tlsKeyLog"], path.display().to_string());
}
