//! See the wire, end to end (root): the netns demo records the node-to-node
//! hop with the proxies' TLS key log; Wireshark's tshark decrypts it — and
//! finds the CONNECT to hello-app's pod address only with the key log —
//! and `hbone-lab wire` draws that run's connection with its real
//! identities, authority and first request line.

mod support;

use std::process::Command;

use support::{hbone_lab_ok, text};

#[test]
#[ignore = "needs root (network namespaces)"]
fn a_captured_hbone_connection_is_decrypted_and_drawn() {
    assert!(
        Command::new("tshark").arg("--version").output().is_ok(),
        "tshark is missing: scripts/test.sh installs it as root (apt-get install tshark)"
    );
    let dir = tempfile::tempdir().unwrap();
    let capture_dir = dir.path().to_str().unwrap();
    let demo = hbone_lab_ok(&["demo", "--netns", "--capture", capture_dir]);
    let said = text(&demo.stdout);
    assert!(
        said.contains("hbone-lab wire"),
        "the demo says how to decode: {said}"
    );
    let capture = ["mesh.pcapng", "mesh.pcap"]
        .iter()
        .map(|f| dir.path().join(f))
        .find(|p| p.exists())
        .expect("a capture file");
    let keys = dir.path().join("keys.log");

    // tshark itself: with the key log the CONNECT's :authority is readable, without it not.
    let hello = "10.244.2.10:8000";
    let connects = |with_keys: bool| {
        let mut tshark = Command::new("tshark");
        tshark
            .arg("-r")
            .arg(&capture)
            .args(["-d", "tcp.port==15008,tls"]);
        if with_keys {
            tshark
                .arg("-o")
                .arg(format!("tls.keylog_file:{}", keys.display()));
        }
        let filter = format!("http2.header.value == \"{hello}\"");
        let out = tshark
            .args(["-Y", &filter, "-T", "fields", "-e", "frame.number"])
            .output()
            .unwrap();
        text(&out.stdout).lines().count()
    };
    assert!(connects(true) > 0, "decrypted: a CONNECT to {hello}");
    assert_eq!(
        connects(false),
        0,
        "without the key log, nothing of HTTP/2 is readable"
    );

    let wire = hbone_lab_ok(&["wire", capture_dir]);
    let ladder = text(&wire.stdout);
    for needle in [
        "TCP SYN",
        "ClientHello (ALPN h2, no SNI",
        "Certificate [spiffe://cluster.local/ns/demo/sa/hello-app]",
        "Certificate [spiffe://cluster.local/ns/demo/sa/hello-gateway-istio]",
        "HTTP/2 preface",
        &format!(":method: CONNECT, :authority: {hello}"),
        "{ :status: 200 }",
        "\"GET /",
        "TLS decrypted with the key log",
    ] {
        assert!(
            ladder.contains(needle),
            "the ladder lacks {needle:?}:\n{ladder}"
        );
    }
    let svg = std::fs::read_to_string(dir.path().join("connection.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains(&format!("CONNECT {hello}")));
}
