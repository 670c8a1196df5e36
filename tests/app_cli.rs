//! `hbone-lab app …`: the load peers as processes, talking over loopback.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::Running;

#[test]
fn rr_server_and_client_report_latency() {
    let server = Command::new(env!("CARGO_BIN_EXE_hbone-lab"))
        .args(["app", "rr-server", "--listen", "127.63.0.1:18100"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let _server = Running(server);
    for _ in 0..50 {
        if std::net::TcpStream::connect("127.63.0.1:18100").is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = Command::new(env!("CARGO_BIN_EXE_hbone-lab"))
        .args([
            "app",
            "rr-client",
            "127.63.0.1:18100",
            "--rate",
            "500",
            "--duration",
            "400ms",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(r["requests"].as_u64().unwrap() > 100, "{r}");
    assert!(r["p99_ms"].as_f64().unwrap() >= r["p50_ms"].as_f64().unwrap());

    let bad = Command::new(env!("CARGO_BIN_EXE_hbone-lab"))
        .args(["app", "source", "no-port"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("is not host:port"));
}
