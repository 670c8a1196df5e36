//! `hbone-lab demo` end to end (loopback mode): every scenario matches the
//! policies, `--explain` names the real values of its run, and nothing is
//! left behind.

use std::process::Command;

fn leftover_pg_dirs() -> Vec<String> {
    std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("hbone-lab-pg-"))
        .collect()
}

#[test]
fn demo_runs_every_scenario_explains_and_cleans_up() {
    let before = leftover_pg_dirs();
    let out = Command::new(env!("CARGO_BIN_EXE_hbone-lab"))
        .args([
            "demo",
            "--json",
            "--explain",
            "--gateway-listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");

    let json_end = stdout.find("\n]\n").expect("a JSON array first") + 3;
    let results: serde_json::Value = serde_json::from_str(&stdout[..json_end]).unwrap();
    let names: Vec<&str> = results
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "gateway → hello-app",
            "test-pod → hello-app",
            "test-pod → postgres",
            "hello-app → postgres",
            "plaintext → hello-app (STRICT)",
            "certificate rotated mid-connection"
        ]
    );
    for r in results.as_array().unwrap() {
        assert_eq!(r["expected"], r["observed"], "{r}");
    }
    let verdicts: Vec<&str> = results
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["observed"].as_str().unwrap())
        .collect();
    let have_pg = !stderr.contains("running without the database");
    assert_eq!(verdicts[..3], ["allow", "deny", "deny"]);
    assert_eq!(verdicts[3], if have_pg { "allow" } else { "deny" });
    assert_eq!(verdicts[4..], ["deny", "allow"]);
    assert!(
        results[1]["reason"]
            .as_str()
            .unwrap()
            .contains("demo/hello-app-policy")
    );

    let story = &stdout[json_end..];
    for needle in [
        "spiffe://cluster.local/ns/demo/sa/hello-gateway-istio",
        "spiffe://cluster.local/ns/demo/sa/hello-app",
        "version TLSv1_3",
        "ALPN \"h2\"",
        ":authority = 127.0.12.3:8000",
        "forwarded = for=",
        "ALLOW policy demo/hello-app-policy rules[0] matches",
        "HTTP/1.1 200 OK",
    ] {
        assert!(
            story.contains(needle),
            "the story lacks {needle:?}:\n{story}"
        );
    }

    // Nothing left behind: no PostgreSQL data directory, no listener on the lab's addresses.
    assert_eq!(leftover_pg_dirs(), before, "temp dirs left behind");
    assert!(
        std::net::TcpStream::connect("127.0.12.3:15008").is_err(),
        "a proxy is still listening"
    );
    assert!(
        std::net::TcpStream::connect("127.0.12.4:5432").is_err(),
        "PostgreSQL is still running"
    );
}
