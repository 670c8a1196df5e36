//! `hbone-lab bench --quick` produces the report's structure (not its numbers).
//! Needs root for the two pod namespaces: ignored (shown as skipped) unless run as test.sh runs it.

use std::process::Command;

/// Runs `hbone-lab bench <args> --out <a new directory>` without ztunnel,
/// asserts it succeeded, and returns its stdout and the bench.json it wrote.
fn bench_ok(args: &[&str]) -> (String, serde_json::Value, tempfile::TempDir) {
    let out_dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_hbone-lab"))
        .arg("bench")
        .args(args)
        .arg("--out")
        .arg(out_dir.path())
        .env_remove("ZTUNNEL_BIN")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json = bench_json(out_dir.path());
    (stdout, json, out_dir)
}

/// The `bench.json` a run wrote into `dir`.
fn bench_json(dir: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("bench.json")).unwrap()).unwrap()
}

#[test]
#[ignore = "needs root: the benchmark builds two pod network namespaces (test.sh runs it as root)"]
fn quick_bench_writes_table_json_and_markdown() {
    let out_dir = tempfile::tempdir().unwrap();
    let bench = Command::new(env!("CARGO_BIN_EXE_hbone-lab"))
        .args(["bench", "--quick", "--seconds", "0.3", "--out"])
        .arg(out_dir.path())
        .env_remove("ZTUNNEL_BIN")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The namespaces of this run are tagged with its pid (others may run beside it).
    let tag = bench.id() % 100_000;
    let out = bench.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("ztunnel is not measured"));
    assert!(
        stdout.contains("÷ direct") && stdout.contains("hbone-lab"),
        "{stdout}"
    );

    let json = bench_json(out_dir.path());
    assert_eq!(json["subjects"], serde_json::json!(["direct", "hbone-lab"]));
    let results = json["results"].as_array().unwrap();
    assert_eq!(results.len(), 14, "7 scenarios × 2 subjects");
    let find = |subject: &str, scenario: &str| {
        results
            .iter()
            .find(|r| r["subject"] == subject && r["scenario"] == scenario)
            .unwrap_or_else(|| panic!("{subject} {scenario}"))
    };
    for (scenario, key) in [
        ("throughput_1", "throughput_gbps"),
        ("rr_unthrottled", "rps"),
        ("rr_1000", "p99_ms"),
        ("crr", "conn_per_s"),
    ] {
        assert!(
            find("direct", scenario)[key].as_f64().is_some(),
            "{scenario} {key}"
        );
        let mesh = find("hbone-lab", scenario);
        assert!(mesh[key].as_f64().is_some(), "{scenario} {key}");
        assert!(
            mesh["ratio_vs_direct"][key].as_f64().is_some(),
            "{scenario} ratio"
        );
    }
    assert!(
        find("hbone-lab", "idle_memory")["bytes_per_idle_conn"]
            .as_f64()
            .is_some()
    );
    assert!(
        find("hbone-lab", "idle_memory_used")["bytes_per_used_idle_conn"]
            .as_f64()
            .is_some()
    );
    for scenario in ["rr_unthrottled", "crr"] {
        assert!(
            find("hbone-lab", scenario)["context_switches_per_request"]
                .as_f64()
                .is_some(),
            "{scenario}"
        );
    }
    assert!(
        find("hbone-lab", "throughput_1")["proxy_cpu_s_per_gib"]
            .as_f64()
            .is_some()
    );
    let svg = std::fs::read_to_string(out_dir.path().join("bench.svg")).unwrap();
    assert!(
        svg.contains("<svg") && svg.contains("÷ direct") && svg.contains("hbone-lab"),
        "{svg}"
    );
    assert!(svg.matches("<rect").count() > 6, "bars were drawn");
    let md = std::fs::read_to_string(out_dir.path().join("bench.md")).unwrap();
    assert!(md.starts_with("| scenario |"), "{md}");
    let leftover = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let leftover = String::from_utf8_lossy(&leftover.stdout);
    assert!(
        !leftover.contains(&format!("hlb-c-{tag}")) && !leftover.contains(&format!("hlb-s-{tag}")),
        "namespaces left behind: {leftover}"
    );
}

/// `--replot` redraws the table and chart of a saved run without measuring
/// (and without root): here, the run recorded in benches/RESULTS.md.
#[test]
fn replot_redraws_a_saved_run() {
    let saved = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("benches/results/full-2026-11-25.json");
    let out_dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_hbone-lab"))
        .args(["bench", "--replot"])
        .arg(&saved)
        .arg("--out")
        .arg(out_dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("throughput_1") && stdout.contains("ztunnel"),
        "{stdout}"
    );
    let svg = std::fs::read_to_string(out_dir.path().join("bench.svg")).unwrap();
    for subject in ["direct", "hbone-lab", "ztunnel"] {
        assert!(svg.contains(subject), "{subject} missing from the chart");
    }
    let md = std::fs::read_to_string(out_dir.path().join("bench.md")).unwrap();
    let (results, targets) = md
        .split_once("## Issue 28's targets")
        .expect("the targets are judged from the saved samples");
    // The header row, then 6 scenarios × 3 subjects.
    assert_eq!(
        results.lines().filter(|l| l.starts_with("| ")).count(),
        1 + 18,
        "{md}"
    );
    // The header row, then a row for each target the six scenarios measure.
    assert_eq!(
        targets.lines().filter(|l| l.starts_with("| ")).count(),
        1 + 6,
        "{md}"
    );
    assert!(
        targets.contains("| requests/s, one connection | 4804–4968–5143 | 5216–5357–5490 | 0.93× | apart, behind |"),
        "{targets}"
    );

    let broken = out_dir.path().join("broken.json");
    std::fs::write(&broken, "{\"results\": 3}").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_hbone-lab"))
        .args(["bench", "--replot"])
        .arg(&broken)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("`results` is not a benchmark's results")
    );
}

#[test]
#[ignore = "needs root: the benchmark builds two pod network namespaces (test.sh runs it as root)"]
fn a_baseline_build_is_measured_as_its_own_subject() {
    let exe = env!("CARGO_BIN_EXE_hbone-lab");
    let missing = Command::new(exe)
        .args(["bench", "--baseline", "/nonexistent/hbone-lab"])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr)
            .contains("--baseline /nonexistent/hbone-lab is not a file"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );

    let out_dir = tempfile::tempdir().unwrap();
    let out = Command::new(exe)
        .args([
            "bench",
            "--quick",
            "--seconds",
            "0.3",
            "--scenarios",
            "rr_unthrottled",
        ])
        .arg("--baseline")
        .arg(exe)
        .arg("--out")
        .arg(out_dir.path())
        .env_remove("ZTUNNEL_BIN")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json = bench_json(out_dir.path());
    assert_eq!(
        json["subjects"],
        serde_json::json!(["direct", "hbone-lab", "baseline"])
    );
    let baseline = json["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["subject"] == "baseline")
        .expect("a row for the baseline");
    assert!(baseline["rps"].as_f64().unwrap() > 0.0, "{baseline}");
    assert!(
        baseline["ratio_vs_direct"]["rps"].as_f64().is_some(),
        "{baseline}"
    );
}

/// `bench --instructions --quick`: instructions (callgrind) and system
/// calls (strace) per request, per new connection and per MiB of a bulk
/// stream, as three scenarios with their figures in bench.json (their
/// values are not checked).
#[test]
#[ignore = "needs root (the two pod namespaces), valgrind and strace; test.sh runs it as root"]
fn instruction_counts_are_reported_per_request_and_per_connection() {
    let (_, json, out_dir) = bench_ok(&["--instructions", "--quick"]);
    let results = json["results"].as_array().unwrap();
    assert_eq!(results.len(), 3, "{results:?}");
    for (scenario, keys) in [
        (
            "instructions_rr",
            ["instructions_per_request", "syscalls_per_request"],
        ),
        (
            "instructions_crr",
            ["instructions_per_connection", "syscalls_per_connection"],
        ),
        (
            "instructions_bulk",
            ["instructions_per_mib", "syscalls_per_mib"],
        ),
    ] {
        let r = results
            .iter()
            .find(|r| r["subject"] == "hbone-lab" && r["scenario"] == scenario)
            .unwrap_or_else(|| panic!("{scenario}"));
        for key in keys {
            assert!(
                r[key].as_f64().is_some_and(|v| v > 0.0),
                "{scenario} {key}: {r}"
            );
        }
    }
    // Each proxy's profile is kept for callgrind_annotate.
    let profiles = std::fs::read_dir(out_dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".callgrind")
        })
        .count();
    assert_eq!(profiles, 6, "2 proxies × 3 scenarios");
}

/// `bench --scale --quick`: the three curves, a row per size for
/// hbone-lab in bench.json's `scale`, each with its figures (not their
/// values, except that a DENY closed every open connection).
#[test]
#[ignore = "needs root: the benchmark builds two pod network namespaces (test.sh runs it as root)"]
fn the_scale_curves_have_a_row_per_size() {
    let (stdout, json, _out_dir) = bench_ok(&["--scale", "--quick"]);
    // The run says how many worker threads it gave (none: the defaults).
    assert!(json["settings"]["worker_threads"].is_null(), "{json}");
    assert!(json["settings"]["policies"].is_string(), "{json}");
    let rows = json["scale"].as_array().unwrap();
    let curve = |scenario: &str, size: &str| -> Vec<f64> {
        rows.iter()
            .filter(|r| r["subject"] == "hbone-lab" && r["scenario"] == scenario)
            .map(|r| r["figures"][size].as_f64().unwrap())
            .collect()
    };
    assert_eq!(
        curve("scale_workloads", "workloads"),
        [100.0, 1000.0, 5000.0],
        "{rows:?}"
    );
    assert_eq!(curve("scale_policies", "policies"), [1.0, 10.0, 100.0]);
    assert_eq!(curve("scale_connections", "connections"), [100.0, 500.0]);
    for r in rows {
        let f = &r["figures"];
        match r["scenario"].as_str().unwrap() {
            "scale_workloads" => {
                assert!(f["bytes_per_workload"].as_f64().is_some(), "{r}");
                assert!(f["rss_bytes"].as_f64().unwrap() > 1e6, "{r}");
            }
            "scale_policies" => {
                assert!(f["conn_per_s"].as_f64().unwrap() > 0.0, "{r}");
                assert!(f["p99_ms"].as_f64().unwrap() > 0.0, "{r}");
            }
            "scale_connections" => {
                assert!(f["bytes_per_conn"].as_f64().is_some(), "{r}");
                assert_eq!(f["closed_by_change"], f["connections"], "{r}");
                assert!(f["rejudge_ms"].as_f64().unwrap() > 0.0, "{r}");
            }
            other => panic!("unexpected curve {other}: {r}"),
        }
    }
    for heading in ["bytes/workload", "conn/s", "rejudge ms"] {
        assert!(stdout.contains(heading), "{heading}: {stdout}");
    }
}
/// `bench --ladder`: the two rungs below HBONE are measured beside direct
/// and hbone-lab, in the ladder's order, and the chart is the ladder.
#[test]
#[ignore = "needs root: the benchmark builds two pod network namespaces (test.sh runs it as root)"]
fn the_cost_ladder_measures_each_rung() {
    let (_, json, out_dir) = bench_ok(&[
        "--ladder",
        "--quick",
        "--seconds",
        "0.3",
        "--scenarios",
        "rr_unthrottled,crr",
    ]);
    assert_eq!(
        json["subjects"],
        serde_json::json!(["direct", "bench-relay", "bench-mtls", "hbone-lab"])
    );
    let results = json["results"].as_array().unwrap();
    assert_eq!(results.len(), 8, "2 scenarios × 4 subjects: {results:?}");
    for rung in ["bench-relay", "bench-mtls"] {
        for (scenario, key) in [("rr_unthrottled", "rps"), ("crr", "conn_per_s")] {
            let r = results
                .iter()
                .find(|r| r["subject"] == rung && r["scenario"] == scenario)
                .unwrap_or_else(|| panic!("{rung} {scenario}"));
            assert!(r[key].as_f64().is_some_and(|v| v > 0.0), "{r}");
        }
    }
    let svg = std::fs::read_to_string(out_dir.path().join("bench.svg")).unwrap();
    assert!(svg.contains("cost ladder"), "the chart is not the ladder");
}

/// `bench --sweep --quick`: each subject's maximum, then every step
/// (10, 50, 90, 110 % of hbone-lab's maximum) for every subject, ascending,
/// each with its figures, a knee field per subject, and a chart naming
/// each subject; `--replot` redraws the chart from bench.json. Structure
/// only: no figure's value is checked.
#[test]
#[ignore = "needs root: the benchmark builds two pod network namespaces (test.sh runs it as root)"]
fn the_sweep_has_every_step_for_every_subject() {
    let (stdout, json, out_dir) = bench_ok(&["--sweep", "--quick", "--worker-threads", "2"]);
    assert_eq!(json["settings"]["worker_threads"], 2, "{json}");
    assert_eq!(json["subjects"], serde_json::json!(["direct", "hbone-lab"]));
    let sweep = &json["sweep"];
    assert_eq!(sweep["reference_subject"], "hbone-lab", "{sweep}");
    let curves = sweep["subjects"].as_array().unwrap();
    assert_eq!(curves.len(), 2, "{sweep}");
    for (curve, subject) in curves.iter().zip(["direct", "hbone-lab"]) {
        assert_eq!(curve["subject"], subject);
        assert!(
            curve["max_per_s"].as_f64().is_some_and(|m| m > 0.0),
            "{curve}"
        );
        assert!(curve.get("knee").is_some(), "no knee field: {curve}");
        let steps = curve["steps"].as_array().unwrap();
        let percents: Vec<f64> = steps
            .iter()
            .map(|s| s["percent"].as_f64().unwrap())
            .collect();
        assert_eq!(percents, [10.0, 50.0, 90.0, 110.0], "{curve}");
        let offered: Vec<f64> = steps
            .iter()
            .map(|s| s["offered_per_s"].as_f64().unwrap())
            .collect();
        assert!(offered.windows(2).all(|w| w[0] < w[1]), "{offered:?}");
        for step in steps {
            for key in [
                "achieved_per_s",
                "p50_ms",
                "p90_ms",
                "p99_ms",
                "p999_ms",
                "max_ms",
            ] {
                assert!(step[key].as_f64().is_some(), "{subject} {key}: {step}");
            }
            for key in ["requests", "errors", "unfinished"] {
                assert!(step[key].as_u64().is_some(), "{subject} {key}: {step}");
            }
            for key in [
                "proxy_user_cpu_s_per_request",
                "proxy_system_cpu_s_per_request",
            ] {
                // The proxies' CPU: none for direct, which has no proxy.
                assert_eq!(
                    step[key].is_null(),
                    subject == "direct",
                    "{subject} {key}: {step}"
                );
            }
        }
        if let Some(knee) = curve["knee"].as_object() {
            assert!(
                percents.contains(&knee["percent"].as_f64().unwrap()),
                "{curve}"
            );
        }
    }
    assert!(
        stdout.contains("offered/s") && stdout.contains("sys µs/req"),
        "{stdout}"
    );
    let svg = std::fs::read_to_string(out_dir.path().join("sweep.svg")).unwrap();
    for label in ["direct p99", "hbone-lab p99", "hbone-lab p50"] {
        assert!(svg.contains(label), "{label} missing from the chart");
    }

    let again = tempfile::tempdir().unwrap();
    let replot = Command::new(env!("CARGO_BIN_EXE_hbone-lab"))
        .args(["bench", "--replot"])
        .arg(out_dir.path().join("bench.json"))
        .arg("--out")
        .arg(again.path())
        .output()
        .unwrap();
    assert!(
        replot.status.success(),
        "{}",
        String::from_utf8_lossy(&replot.stderr)
    );
    assert!(String::from_utf8_lossy(&replot.stdout).contains("offered/s"));
    assert!(again.path().join("sweep.svg").is_file());
}

/// The sweep's steps are checked before anything is started (no root needed).
#[test]
fn sweep_steps_out_of_order_are_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_hbone-lab"))
        .args(["bench", "--sweep", "--steps", "50,10"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--steps must be percentages above 0, ascending"),
        "{stderr}"
    );
}

#[test]
#[ignore = "needs root: the benchmark builds two pod network namespaces (test.sh runs it as root)"]
fn the_scaling_curves_have_every_point_for_every_subject() {
    let (stdout, json, _dir) = bench_ok(&[
        "--quick",
        "--seconds",
        "0.3",
        "--scaling",
        "--worker-threads",
        "2",
    ]);
    assert!(stdout.contains("worker threads 2"), "{stdout}");
    assert_eq!(json["settings"]["worker_threads"], 2);
    let subjects = ["direct", "hbone-lab"];
    assert_eq!(json["subjects"], serde_json::json!(subjects));
    let curves = json["scaling"].as_array().unwrap();
    assert_eq!(curves.len(), 4, "2 curves × 2 subjects: {curves:?}");
    for subject in subjects {
        for figure in ["throughput_gbps", "conn_per_s"] {
            let curve = curves
                .iter()
                .find(|c| c["subject"] == subject && c["figure"] == figure)
                .unwrap_or_else(|| panic!("{subject} {figure}"));
            for point in ["1", "2", "4", "8"] {
                assert!(
                    curve["points"][point].as_f64().is_some(),
                    "{subject} {figure} ×{point}: {curve}"
                );
            }
        }
    }
}
