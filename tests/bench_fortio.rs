//! `hbone-lab bench --fortio`, the cross-check against an independent load
//! generator: its structure, not its numbers. The run needs root (two pod
//! namespaces) and a fortio binary (scripts/bench-peers.sh builds one from
//! its Go module): ignored unless run as test.sh runs it, as root, and
//! skipped with the reason printed where fortio is missing. Kept apart from
//! tests/bench.rs so that one file is about one generator.

use std::path::PathBuf;
use std::process::Command;

use hbone_bench::fortio::BUILD_SCRIPT;

#[test]
#[ignore = "needs root: the benchmark builds two pod network namespaces (test.sh runs it as root)"]
fn the_fortio_cross_check_sets_both_generators_side_by_side() {
    if !hbone_harness::netns::can_create() {
        eprintln!("skipped: the cross-check builds two pod network namespaces: run as root");
        return;
    }
    // FORTIO_BIN, else what the build script built; the error names the script.
    let fortio = match hbone_bench::fortio::find(None) {
        Ok(path) => path,
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    let out_dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_hbone-lab"))
        .args(["bench", "--fortio"])
        .arg(&fortio)
        .args(["--quick", "--seconds", "0.3", "--out"])
        .arg(out_dir.path())
        .env_remove("ZTUNNEL_BIN")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("fortio req/s") && stdout.contains("direct path: the generators"),
        "{stdout}"
    );

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.path().join("bench.json")).unwrap())
            .unwrap();
    assert_eq!(json["subjects"], serde_json::json!(["direct", "hbone-lab"]));
    let check = &json["fortio"];
    assert!(
        check["fortio_version"]
            .as_str()
            .is_some_and(|v| !v.is_empty()),
        "{check}"
    );
    assert_eq!(check["connections"], 1);
    // Every subject × load: one fortio run (one repetition), read whole.
    let runs = check["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 4, "{check}");
    for run in runs {
        for key in [
            "per_s",
            "actual_qps",
            "p50_ms",
            "p90_ms",
            "p99_ms",
            "p999_ms",
            "max_ms",
        ] {
            assert!(run[key].as_f64().is_some(), "{key}: {run}");
        }
        for key in ["answered", "errors", "sockets"] {
            assert!(run[key].as_u64().is_some(), "{key}: {run}");
        }
        assert!(run["fortio_cost"]["cpu_us"].as_f64().is_some(), "{run}");
        let file = PathBuf::from(run["result_file"].as_str().unwrap());
        assert!(
            file.starts_with(out_dir.path().join("fortio")) && file.is_file(),
            "fortio's own result is kept: {run}"
        );
    }
    // Both generators side by side, for every subject and load.
    let rows = check["comparisons"].as_array().unwrap();
    let pairs: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r["subject"].as_str().unwrap(), r["load"].as_str().unwrap()))
        .collect();
    assert_eq!(
        pairs,
        [
            ("direct", "max"),
            ("direct", "fixed"),
            ("hbone-lab", "max"),
            ("hbone-lab", "fixed")
        ]
    );
    for row in rows {
        for side in ["own", "fortio"] {
            for key in ["per_s", "p50_ms", "p99_ms"] {
                assert!(row[side][key].as_f64().is_some(), "{side} {key}: {row}");
            }
        }
        assert!(row["per_s_ratio"].as_f64().is_some(), "{row}");
    }
    let direct_max = &rows[0];
    assert_eq!(direct_max["own_scenario"], "rr_unthrottled");
    assert!(
        direct_max["fortio"]["per_s"]
            .as_f64()
            .is_some_and(|r| r > 0.0),
        "fortio carried no request on the direct path: {direct_max}"
    );
    // The verdict: its checks, and a reason exactly when they disagree.
    let verdict = &check["direct_agreement"];
    let within = verdict["within"].as_bool().unwrap();
    assert_eq!(verdict["checks"].as_array().unwrap().len(), 2, "{verdict}");
    assert_eq!(verdict["reason"].is_string(), !within, "{verdict}");
    assert_eq!(
        check["headline"],
        serde_json::json!([]),
        "no ztunnel, no headline"
    );
    // The own figures are the timed run's, with their ratios.
    let own = check["own"].as_array().unwrap();
    assert!(
        own.iter()
            .any(|s| s["subject"] == "hbone-lab" && s["ratio_vs_direct"]["rps"].is_number()),
        "{own:?}"
    );

    let replot_dir = tempfile::tempdir().unwrap();
    let replot = Command::new(env!("CARGO_BIN_EXE_hbone-lab"))
        .args(["bench", "--replot"])
        .arg(out_dir.path().join("bench.json"))
        .arg("--out")
        .arg(replot_dir.path())
        .output()
        .unwrap();
    assert!(replot.status.success());
    assert!(String::from_utf8_lossy(&replot.stdout).contains("fortio req/s"));
}

/// Without a fortio the run stops before it starts anything, and says how
/// to get one (no root needed: it is checked first).
#[test]
fn a_missing_fortio_is_named_with_its_build_script() {
    let peers = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_hbone-lab"))
        .args(["bench", "--fortio", "--quick"])
        .env_remove("FORTIO_BIN")
        .env("HBONE_PEERS_DIR", peers.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(BUILD_SCRIPT) && stderr.contains("FORTIO_BIN"),
        "{stderr}"
    );

    let given = Command::new(env!("CARGO_BIN_EXE_hbone-lab"))
        .args(["bench", "--fortio", "/nonexistent/fortio", "--quick"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&given.stderr);
    assert!(
        !given.status.success() && stderr.contains("not an executable file"),
        "{stderr}"
    );
}

/// --fortio is a run of its own (no root needed: refused before anything starts).
#[test]
fn fortio_with_another_run_mode_is_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_hbone-lab"))
        .args(["bench", "--fortio", "/bin/true", "--sweep"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--fortio is a run of its own"), "{stderr}");
}
