//! `hbone-lab soak` for 20 s: every fault of the schedule happens once,
//! and nothing is lost — no corrupted byte, no failure a fault does not
//! excuse, no failed new connection while the server-side proxy is handed
//! over to a new process. Needs root (the two pod namespaces).

use std::process::Command;

/// `hbone-lab soak <args> --clients 8` (no ztunnel): it passed; its
/// standard output and JSON report.
fn soak(args: &[&str]) -> (String, serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    let json_path = dir.path().join("soak.json");
    let out = Command::new(env!("CARGO_BIN_EXE_hbone-lab"))
        .arg("soak")
        .args(args)
        .args(["--clients", "8", "--json"])
        .arg(&json_path)
        .env("RUST_LOG", "warn")
        .env_remove("ZTUNNEL_BIN")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let report = serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    (stdout, report)
}

#[test]
#[ignore = "needs root: it builds two pod network namespaces (test.sh runs it as root)"]
fn a_short_soak_loses_nothing_through_every_fault() {
    let (stdout, report) = soak(&["--duration", "20s"]);
    let count = |key: &str| {
        report[key]
            .as_u64()
            .unwrap_or_else(|| panic!("{key} in {report}"))
    };
    assert_eq!(count("bytes_corrupted"), 0, "{stdout}");
    assert_eq!(
        count("failed_new_connections_during_handover"),
        0,
        "{stdout}"
    );
    assert_eq!(count("unexcused_failures"), 0, "{stdout}");
    assert!(count("connections_attempted") > 100, "{stdout}");
    assert!(count("bytes_verified") > 0 && count("bytes_verified") <= count("bytes_sent"));
    assert!(report["connections_failed"].is_object());
    let faults: Vec<&str> = report["faults"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["fault"].as_str().unwrap())
        .collect();
    assert_eq!(
        faults,
        [
            "ca_stop", "ca_start", "handover", "kill", "restart", "deny_on", "deny_off"
        ]
    );
    let handover = &report["faults"][2]["detail"];
    assert!(
        handover.as_str().unwrap().contains("drained and exited"),
        "{handover}"
    );
    // Certificates rotated: more were issued than the two proxies' first ones.
    assert!(count("certificates_issued") > 4, "{stdout}");
    // The DENY was enforced: the client-side proxy saw policy refusals.
    assert!(
        report["client_proxy_refusals"]["policy_denied"].as_u64() > Some(0),
        "{stdout}"
    );
    assert!(report["proxies"]["node-s"]["processes"].as_u64() == Some(3));
}

/// `hbone-lab soak --churn` for 30 s (hbone-lab only): every way of ending
/// a connection, pods coming and going, a control-plane restart — and once
/// the load stops, descriptors and tasks back at the idle baseline.
#[test]
#[ignore = "needs root: it builds two pod network namespaces (test.sh runs it as root)"]
fn a_short_churn_leaves_no_descriptor_or_task_behind() {
    let (stdout, report) = soak(&["--churn", "--duration", "30s"]);
    let subjects = report["subjects"].as_array().unwrap();
    assert_eq!(subjects.len(), 1, "{stdout}");
    let s = &subjects[0];
    assert_eq!(s["subject"], "hbone-lab");
    assert!(s["fds_left_over"].as_i64().unwrap() <= 0, "{stdout}");
    assert!(s["tasks_left_over"].as_i64().unwrap() <= 0, "{stdout}");
    assert!(s["fds_back_after_s"].is_number(), "{stdout}");
    // The churn happened: every way, pods, a restart; and the load showed
    // in the readings (the peak above the baseline).
    for way in [
        "clean",
        "client_reset",
        "server_reset",
        "half_closed",
        "abandoned",
    ] {
        let tally = &s["ways"][way];
        assert!(tally["attempted"].as_u64() > Some(20), "{way}: {stdout}");
        assert_eq!(
            tally["attempted"], tally["ended_as_meant"],
            "{way}: {stdout}"
        );
    }
    assert!(s["pods_added"].as_u64() >= Some(5), "{stdout}");
    assert_eq!(s["pod_errors"], 0, "{stdout}");
    assert_eq!(s["control_plane_restarts"], 1, "{stdout}");
    assert!(
        s["peak"]["fds"].as_u64() > s["baseline"]["fds"].as_u64(),
        "{stdout}"
    );
    assert!(s["samples"].as_array().unwrap().len() > 30, "{stdout}");
}
