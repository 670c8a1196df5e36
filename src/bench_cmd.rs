//! `hbone-lab bench`: direct vs hbone-lab vs ztunnel, one table.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use hbone_bench::fortio::{self, CrossCheck};
use hbone_bench::instructions::{self, InstructionSettings};
use hbone_bench::report::{markdown, table};
use hbone_bench::runner::{
    BenchSettings, LADDER_SCENARIOS, Progress, SCENARIOS, Sample, Summary, run, summarize,
};
use hbone_bench::subjects::{Shared, Subject, ZtunnelMode};
use hbone_bench::sweep::{self, SweepReport, SweepSettings};
use hbone_bench::topology::Topology;
use hbone_bench::{chart, scale, scaling, targets};

/// Measure hbone-lab's proxy against no proxy and a real ztunnel, on the same
/// two-pod network-namespace path (needs root), interleaved, with medians and
/// ratios from one run.
///
/// Scenarios: throughput_1 (one stream), throughput_n (parallel streams),
/// rr_unthrottled (requests/s on one connection), rr_1000 (1 KiB at 1000/s,
/// p50…p99.9), crr (new connections/s), idle_memory (RSS per idle connection),
/// idle_memory_used (the same after a 256 KiB transfer on each, once the
/// allocator's 10 s decay has passed).
/// Writes bench.json, bench.md and bench.svg (a chart; when ztunnel ran,
/// its first panel is hbone-lab's advantage over ztunnel on every figure)
/// into --out. --ladder adds the cost ladder's rungs, --instructions counts
/// instead of timing, --scale draws the scale curves (scale.svg), --sweep
/// steps an open-loop rate past the slowest proxy's limit (sweep.svg),
/// --scaling measures throughput and connections/s over 1, 2, 4 and 8
/// parallel streams and connection loops (curves: does it use the cores?),
/// --worker-threads N runs every proxy with N async worker threads,
/// --fortio drives the request/response scenario with fortio too (an
/// independent load generator) and sets its figures beside the own ones.
///
/// The binary that runs the bench is the hbone-lab measured: build it with
/// `cargo build --profile perf` (fat LTO, one codegen unit, as ztunnel's
/// release build) to compare like for like.
#[derive(Args)]
#[command(verbatim_doc_comment)]
pub struct BenchArgs {
    /// A ztunnel binary to compare against (or ZTUNNEL_BIN); without it ztunnel is not measured.
    #[arg(long, env = "ZTUNNEL_BIN")]
    ztunnel: Option<PathBuf>,
    /// How ztunnel runs: shared (as deployed — one per node, pods handed
    /// over by ZDS, workloads and policies over xDS from hbone-lab's control
    /// plane) or dedicated (one inside each pod with a local config, as
    /// runs before 2026-12 measured it). Both meshes enforce the same
    /// policies either way: STRICT and one ALLOW by identity.
    #[arg(long, default_value = "shared", value_parser = ["shared", "dedicated"])]
    ztunnel_mode: String,
    /// Another hbone-lab binary (for example `main` before your change),
    /// measured as subject `baseline`, interleaved in the same run: on a
    /// shared machine, the way to see what a change did.
    #[arg(long, value_name = "HBONE_LAB_BINARY")]
    baseline: Option<PathBuf>,
    /// About a minute: 1 s per measurement, one repetition.
    #[arg(long)]
    quick: bool,
    /// Repetitions (default 3, or 1 with --quick).
    #[arg(long)]
    reps: Option<usize>,
    /// Seconds per measurement (default 5, or 1 with --quick).
    #[arg(long)]
    seconds: Option<f64>,
    /// Only these scenarios (comma-separated).
    #[arg(long, value_delimiter = ',')]
    scenarios: Vec<String>,
    /// Where to write bench.json, bench.md and bench.svg.
    #[arg(long, default_value = "bench-out")]
    out: PathBuf,
    /// Count instructions instead of timing: each proxy process runs under
    /// valgrind's callgrind while a fixed number of requests (3000, or 300
    /// with --quick), of new connections (300, or 30) and of MiB on one
    /// stream (256, or 16) go through; prints and writes instructions per
    /// request, per connection and per MiB, both proxies together
    /// (scenarios instructions_rr, instructions_crr, instructions_bulk),
    /// and system calls per the same, counted by strace. Exact
    /// where timings drift; needs valgrind. Each process's profile is kept
    /// in --out (`callgrind_annotate --inclusive=yes <file>` shows where
    /// the instructions go).
    #[arg(long)]
    instructions: bool,
    /// How the cost grows, three curves for hbone-lab and ztunnel, written
    /// to bench.json under "scale" (pick some with --scenarios):
    /// scale_workloads — RSS of an idle proxy whose registry holds 1 000,
    /// 10 000 and 100 000 workloads (100, 1 000, 5 000 with --quick), a
    /// service per ten, as bytes per workload;
    /// scale_policies — new connections/s and their p99 with 1, 100 and
    /// 1 000 AuthorizationPolicies selecting the destination, all but the
    /// last not matching (1, 10, 100);
    /// scale_connections — 1 000 and 10 000 open idle connections (100,
    /// 500): bytes per connection, and how long a DENY served over xDS
    /// takes to close them all (rejudge_ms). The file-descriptor limit is
    /// raised for it.
    #[arg(long)]
    scale: bool,
    /// The cost ladder: add two subjects below HBONE on the same path —
    /// bench-relay (the proxies relay TCP to each other, no TLS) and
    /// bench-mtls (one mutual-TLS connection per proxied connection, no
    /// HTTP/2) — so direct → relay → +mTLS → +HTTP/2 (hbone-lab) shows what
    /// each layer costs. Neither rung enforces policy; they are benchmark
    /// modes (`benchTunnel` in the proxy's config), not a mesh. Scenarios
    /// default to throughput_1, rr_unthrottled, rr_1000 and crr.
    #[arg(long)]
    ladder: bool,
    /// The rate sweep: latency against load, open loop (wrk2's model: a
    /// fixed arrival rate, each request timed from when it was due, so a
    /// stall counts for every request due during it). First each subject's
    /// maximum (closed-loop requests/s over --connections), then steps of
    /// 10, 25, 50, 75, 90, 100 and 110 % of the slowest proxy's maximum
    /// (--quick: 10, 50, 90, 110 %, 1 s each; or --steps), every subject in
    /// turn at each step. Per step: offered and achieved rate, p50, p99,
    /// p99.9 and max, and both proxies' user and system CPU per request;
    /// each subject's knee (the highest step it carried: ≥ 95 % of the
    /// offered rate, nothing lost, p99 ≤ 3× its lowest step's) marked.
    /// Writes bench.json (`sweep`) and sweep.svg; --seconds sets a step's length.
    #[arg(long)]
    sweep: bool,
    /// The scaling curves: throughput over 1, 2, 4 and 8 parallel streams
    /// (scenarios throughput_x1 … throughput_x8) and new connections/s over
    /// 1, 2, 4 and 8 parallel connection loops (crr_x1 … crr_x8), every
    /// subject interleaved as in the other scenarios. Printed as a table
    /// (a row per subject and curve, a column per point) and written to
    /// bench.json under "scaling"; pick points with --scenarios.
    #[arg(long)]
    scaling: bool,
    /// Async worker threads for every proxy process: hbone-lab's and the
    /// baseline's (HBONE_WORKER_THREADS) and ztunnel's
    /// (ZTUNNEL_WORKER_THREADS). Default: each its own — hbone-lab one per
    /// core, ztunnel 2. Recorded in bench.json's settings.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    worker_threads: Option<u16>,
    /// The fortio cross-check: the request/response scenario (one
    /// connection, 1 KiB each way) measured by hbone-lab's own generator
    /// (rr_unthrottled, rr_1000) and by fortio (`fortio load -c 1`, at
    /// -qps 0 and -qps 1000, against a TCP echo in the server pod), every
    /// subject interleaved. Prints both side by side, whether they agree
    /// within 10 % on the direct path (and why not, when they do not) and
    /// hbone-lab ÷ ztunnel by each; bench.json's `fortio` holds both
    /// generators' figures, and fortio's own JSON results are kept in
    /// `<out>/fortio/`. Which fortio: the value given here, else FORTIO_BIN,
    /// else what scripts/bench-peers.sh built (pinned in benches/peers.env).
    #[arg(long, value_name = "FORTIO_BINARY", num_args = 0..=1)]
    fortio: Option<Option<PathBuf>>,
    /// Connections the sweep's load is spread over.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=1024))]
    connections: u16,
    /// The sweep's steps, in % of the slowest proxy's maximum (comma-separated, ascending).
    #[arg(long, value_delimiter = ',')]
    steps: Vec<f64>,
    /// Measure nothing: redraw bench.md and bench.svg (or, for a --scale
    /// run, scale.svg; for a --sweep run, sweep.svg) into --out from a
    /// bench.json written earlier (no root needed).
    #[arg(long, value_name = "BENCH_JSON")]
    replot: Option<PathBuf>,
}

/// Redraws the Markdown table and the chart from a saved run.
fn replot(json_path: &std::path::Path, out: &std::path::Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(json_path)
        .with_context(|| format!("cannot read {}", json_path.display()))?;
    let saved: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not JSON", json_path.display()))?;
    if saved.get("sweep").is_some() {
        let report: SweepReport = serde_json::from_value(saved["sweep"].clone())
            .with_context(|| format!("{}: `sweep` is not a sweep's report", json_path.display()))?;
        return write_sweep(&report, out, None);
    }
    if saved.get("fortio").is_some() {
        let report: CrossCheck =
            serde_json::from_value(saved["fortio"].clone()).with_context(|| {
                format!(
                    "{}: `fortio` is not a fortio cross-check",
                    json_path.display()
                )
            })?;
        print!("{}", fortio::table(&report.judged()));
        return Ok(());
    }
    if saved.get("scale").is_some() {
        let rows: Vec<hbone_bench::runner::Sample> = serde_json::from_value(saved["scale"].clone())
            .with_context(|| {
                format!("{}: `scale` is not a scale run's rows", json_path.display())
            })?;
        std::fs::create_dir_all(out)?;
        std::fs::write(out.join("scale.svg"), chart::scale_svg(&rows)?)?;
        print!("{}", scale::table(&rows));
        println!("wrote {}", out.join("scale.svg").display());
        return Ok(());
    }
    let summaries: Vec<hbone_bench::runner::Summary> =
        serde_json::from_value(saved["results"].clone()).with_context(|| {
            format!(
                "{}: `results` is not a benchmark's results",
                json_path.display()
            )
        })?;
    let names: Vec<String> = serde_json::from_value(saved["subjects"].clone())
        .with_context(|| format!("{}: `subjects` is missing", json_path.display()))?;
    // Runs written before the samples were kept judge no targets.
    let samples: Vec<Sample> = serde_json::from_value(saved["samples"].clone()).unwrap_or_default();
    let judged = targets::judge(&samples);
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("bench.md"), with_targets(&summaries, &judged))?;
    std::fs::write(out.join("bench.svg"), chart::svg(&summaries, &names)?)?;
    println!("{}", table(&summaries));
    print_targets(&judged);
    println!(
        "wrote {} and {}",
        out.join("bench.md").display(),
        out.join("bench.svg").display()
    );
    Ok(())
}

struct Bar;

impl Progress for Bar {
    fn step(&mut self, done: usize, total: usize, what: &str) {
        let width = 30;
        let filled = done * width / total.max(1);
        eprint!(
            "\r[{}{}] {done}/{total} {what:<60}",
            "#".repeat(filled),
            ".".repeat(width - filled)
        );
        if done == total {
            eprintln!();
        }
        let _ = std::io::stderr().flush();
    }
}

pub async fn run_bench(args: BenchArgs) -> anyhow::Result<()> {
    if let Some(json) = &args.replot {
        return replot(json, &args.out);
    }
    let sweep_settings = sweep_settings(&args)?;
    anyhow::ensure!(
        !(args.fortio.is_some()
            && (args.ladder || args.instructions || args.scale || args.sweep || args.scaling)),
        "--fortio is a run of its own; it does not go with --ladder, --instructions, --scale, --sweep or --scaling"
    );
    anyhow::ensure!(
        args.fortio.is_none() || args.scenarios.is_empty(),
        "--fortio measures rr_unthrottled and rr_1000 (and fortio's twin of each); --scenarios does not apply"
    );
    // Before anything needs root: a missing fortio is named with its script.
    let fortio_bin = match &args.fortio {
        Some(given) => Some(fortio::find(given.as_deref())?),
        None => None,
    };
    anyhow::ensure!(
        hbone_harness::netns::can_create(),
        "the benchmark builds two pod network namespaces: run it as root (iproute2 and iptables installed)"
    );
    anyhow::ensure!(
        !(args.ladder && (args.instructions || args.scale)),
        "--ladder is a timed run; it does not go with --instructions or --scale"
    );
    anyhow::ensure!(
        !(args.sweep && (args.ladder || args.instructions || args.scale)),
        "--sweep is a run of its own; it does not go with --ladder, --instructions or --scale"
    );
    anyhow::ensure!(
        !(args.scaling && (args.ladder || args.instructions || args.scale || args.sweep)),
        "--scaling is a timed run of its own; it does not go with --ladder, --instructions, --scale or --sweep"
    );
    let settings = settings(&args);
    let subjects = subjects(&args)?;
    let scenarios = scenarios(&args)?;
    println!("{}", header(&args));
    let topology = Topology::create().context("creating the benchmark namespaces")?;
    let shared_ztunnel = subjects.iter().any(|s| {
        matches!(
            s,
            Subject::Ztunnel {
                mode: ZtunnelMode::Shared,
                ..
            }
        )
    });
    let mut shared = Shared::new(&topology, std::env::current_exe()?, shared_ztunnel).await?;
    shared.worker_threads = args.worker_threads.map(usize::from);
    // Ctrl-C or SIGTERM stops the run; the subjects' processes, the CA and
    // the namespaces are cleaned up on the way out either way.
    if args.scale {
        return run_scale(&args, &scenarios, &subjects, &topology, shared).await;
    }
    if args.sweep {
        return run_sweep(&args, &sweep_settings, &subjects, &topology, shared).await;
    }
    if let Some(fortio_bin) = &fortio_bin {
        return run_fortio(&args, &settings, &subjects, fortio_bin, &topology, shared).await;
    }
    let mut bar = Bar;
    let counts = if args.quick {
        InstructionSettings::quick()
    } else {
        InstructionSettings::full()
    };
    let mut say = |line: &str| eprintln!("{line}");
    let measured = async {
        if args.instructions {
            instructions::run(&subjects, &topology, &shared, counts, &args.out, &mut say).await
        } else {
            run(
                &subjects, &scenarios, &settings, &topology, &shared, &mut bar,
            )
            .await
        }
    };
    let samples = tokio::select! {
        samples = measured => Some(samples),
        _ = crate::proxy_cmd::wait_for_stop() => None,
    };
    shared.shutdown().await;
    let Some(samples) = samples else {
        drop(topology);
        anyhow::bail!("interrupted: the benchmark's processes and namespaces were removed");
    };
    write_results(&args, &settings, &subjects, &samples?)
}

/// How long and how often each figure is measured.
fn settings(args: &BenchArgs) -> BenchSettings {
    let mut settings = if args.quick {
        BenchSettings::quick()
    } else {
        BenchSettings::full()
    };
    if let Some(r) = args.reps {
        settings.repetitions = r.max(1);
    }
    if let Some(s) = args.seconds {
        settings.seconds = s;
    }
    settings
}

/// Who is measured: direct and hbone-lab (or the ladder's rungs), then the
/// baseline and ztunnel when given.
fn subjects(args: &BenchArgs) -> anyhow::Result<Vec<Subject>> {
    let mut subjects = if args.ladder {
        hbone_bench::subjects::ladder().to_vec()
    } else {
        vec![Subject::Direct, Subject::HboneLab]
    };
    if let Some(exe) = &args.baseline {
        anyhow::ensure!(exe.is_file(), "--baseline {} is not a file", exe.display());
        subjects.push(Subject::Baseline(exe.clone()));
    }
    match &args.ztunnel {
        Some(bin) => {
            anyhow::ensure!(bin.is_file(), "--ztunnel {} is not a file", bin.display());
            let mode = match args.ztunnel_mode.as_str() {
                "dedicated" => ZtunnelMode::Dedicated,
                _ => ZtunnelMode::Shared,
            };
            subjects.push(Subject::Ztunnel {
                binary: bin.clone(),
                mode,
            });
        }
        None => eprintln!(
            "note: no --ztunnel / ZTUNNEL_BIN given, so ztunnel is not measured in this run"
        ),
    }
    Ok(subjects)
}

/// The scenarios (or, with --scale, the curves; with --scaling, the
/// points) asked for, every name checked.
fn scenarios(args: &BenchArgs) -> anyhow::Result<Vec<&str>> {
    let (known, what, flag) = match (args.scale, args.scaling) {
        (true, _) => (scale::CURVES, "curve", " for --scale"),
        (false, true) => (scaling::SCENARIOS, "scaling point", " for --scaling"),
        (false, false) => (SCENARIOS, "scenario", ""),
    };
    for s in &args.scenarios {
        anyhow::ensure!(
            known.contains(&s.as_str()),
            "unknown {what} {s:?}{flag}; known: {}",
            known.join(", ")
        );
    }
    Ok(if !args.scenarios.is_empty() {
        args.scenarios.iter().map(String::as_str).collect()
    } else if args.ladder && !args.scale && !args.scaling {
        LADDER_SCENARIOS.to_vec()
    } else {
        known.to_vec()
    })
}

/// The worker threads every proxy runs with, as the run's header says it.
fn threads_said(args: &BenchArgs) -> String {
    match args.worker_threads {
        Some(n) => format!("{n} per proxy process"),
        None => "defaults (hbone-lab one per core, ztunnel 2)".into(),
    }
}

/// The line printed before measuring: what runs, and with how many threads.
fn header(args: &BenchArgs) -> String {
    let what = match (args.scaling, args.fortio.is_some()) {
        (true, _) => "scaling",
        (false, true) => "fortio cross-check",
        (false, false) => "bench",
    };
    let quick = if args.quick { " (quick)" } else { "" };
    format!(
        "hbone-lab {what}{quick}: worker threads {}",
        threads_said(args)
    )
}

/// The sweep's settings: --quick or full, then --seconds, --connections
/// and --steps (checked: positive and ascending).
fn sweep_settings(args: &BenchArgs) -> anyhow::Result<SweepSettings> {
    let mut s = match args.quick {
        true => SweepSettings::quick(),
        false => SweepSettings::full(),
    };
    if let Some(seconds) = args.seconds {
        s.seconds = seconds;
    }
    s.connections = args.connections.into();
    if !args.steps.is_empty() {
        anyhow::ensure!(
            args.steps.iter().all(|p| p.is_finite() && *p > 0.0)
                && args.steps.windows(2).all(|w| w[0] < w[1]),
            "--steps must be percentages above 0, ascending: {:?}",
            args.steps
        );
        s.percents = args.steps.clone();
    }
    Ok(s)
}

/// The rate sweep: measured, then printed and written (bench.json, sweep.svg).
async fn run_sweep(
    args: &BenchArgs,
    settings: &SweepSettings,
    subjects: &[Subject],
    topology: &Topology,
    shared: Shared,
) -> anyhow::Result<()> {
    let mut say = |line: &str| eprintln!("{line}");
    let measured = tokio::select! {
        report = sweep::run(subjects, settings, topology, &shared, &mut say) => Some(report),
        _ = crate::proxy_cmd::wait_for_stop() => None,
    };
    shared.shutdown().await;
    let Some(report) = measured else {
        anyhow::bail!("interrupted: the benchmark's processes and namespaces were removed");
    };
    let report = report?;
    let subjects: Vec<&str> = subjects.iter().map(|s| s.name()).collect();
    write_sweep(&report, &args.out, Some((&subjects, args.worker_threads)))
}

/// The sweep's table on stdout, sweep.svg, and (for a run, not a replot)
/// bench.json with the report whole, its subjects and worker threads.
fn write_sweep(
    report: &SweepReport,
    out: &std::path::Path,
    measured: Option<(&[&str], Option<u16>)>,
) -> anyhow::Result<()> {
    print!("{}", sweep::table(report));
    std::fs::create_dir_all(out)?;
    if let Some((subjects, worker_threads)) = measured {
        let json = serde_json::json!({
            "settings": {"connections": report.connections, "seconds": report.seconds, "worker_threads": worker_threads, "policies": hbone_bench::subjects::BENCH_POLICIES},
            "subjects": subjects,
            "sweep": report,
        });
        std::fs::write(out.join("bench.json"), serde_json::to_string_pretty(&json)?)?;
        println!("wrote {}", out.join("bench.json").display());
    }
    std::fs::write(out.join("sweep.svg"), chart::sweep_svg(report)?)?;
    println!("wrote {}", out.join("sweep.svg").display());
    Ok(())
}

/// The scale curves: measured, printed, written to bench.json and scale.svg.
async fn run_scale(
    args: &BenchArgs,
    curves: &[&str],
    subjects: &[Subject],
    topology: &Topology,
    mut shared: Shared,
) -> anyhow::Result<()> {
    let sizes = scale::sizes(args.quick);
    let mut say = |line: &str| eprintln!("{line}");
    let measured = scale::run(curves, subjects, topology, &mut shared, &sizes, &mut say).await;
    shared.shutdown().await;
    let rows = measured?;
    print!("{}", scale::table(&rows));
    std::fs::create_dir_all(&args.out)?;
    let json = serde_json::json!({
        "settings": {"worker_threads": args.worker_threads, "policies": hbone_bench::subjects::BENCH_POLICIES},
        "subjects": subjects.iter().map(|s| s.name()).collect::<Vec<_>>(),
        "scale": rows,
    });
    std::fs::write(
        args.out.join("bench.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    std::fs::write(args.out.join("scale.svg"), chart::scale_svg(&rows)?)?;
    println!(
        "wrote {} and {}",
        args.out.join("bench.json").display(),
        args.out.join("scale.svg").display()
    );
    Ok(())
}

/// The fortio cross-check: measured, printed, written to bench.json
/// (`fortio`; fortio's own results in `<out>/fortio/`).
async fn run_fortio(
    args: &BenchArgs,
    settings: &BenchSettings,
    subjects: &[Subject],
    fortio_bin: &std::path::Path,
    topology: &Topology,
    shared: Shared,
) -> anyhow::Result<()> {
    let mut say = |line: &str| eprintln!("{line}");
    let checking = fortio::run(
        subjects, settings, fortio_bin, topology, &shared, &args.out, &mut say,
    );
    let measured = tokio::select! {
        report = checking => Some(report),
        _ = crate::proxy_cmd::wait_for_stop() => None,
    };
    shared.shutdown().await;
    let Some(report) = measured else {
        anyhow::bail!("interrupted: the benchmark's processes and namespaces were removed");
    };
    let report = report?;
    println!("{}", header(args));
    print!("{}", fortio::table(&report));
    let json = serde_json::json!({
        "settings": {"seconds": settings.seconds, "repetitions": settings.repetitions, "ztunnel_mode": args.ztunnel_mode, "worker_threads": args.worker_threads, "policies": hbone_bench::subjects::BENCH_POLICIES, "fortio": fortio_bin},
        "subjects": subjects.iter().map(|s| s.name()).collect::<Vec<_>>(),
        "fortio": report,
    });
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(
        args.out.join("bench.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    println!("wrote {}", args.out.join("bench.json").display());
    Ok(())
}

/// The results' Markdown, followed by the targets judged from them.
fn with_targets(summaries: &[Summary], judged: &[targets::Judged]) -> String {
    let mut md = markdown(summaries);
    if !judged.is_empty() {
        md.push_str("\n## Issue 28's targets, hbone-lab ÷ ztunnel\n\n");
        md.push_str(&targets::markdown(judged));
    }
    md
}

/// The targets judged from this run, when ztunnel ran beside hbone-lab.
fn print_targets(judged: &[targets::Judged]) {
    if !judged.is_empty() {
        println!(
            "targets (issue 28), hbone-lab ÷ ztunnel, the medians' ratio; \"ranges\" says whether the repetitions overlap:"
        );
        println!("{}", targets::markdown(judged));
    }
}

/// The timed (or counted) run's table, bench.json, bench.md and bench.svg.
fn write_results(
    args: &BenchArgs,
    settings: &BenchSettings,
    subjects: &[Subject],
    samples: &[Sample],
) -> anyhow::Result<()> {
    let summaries = summarize(samples);
    let judged = targets::judge(samples);
    println!("{}", header(args));
    println!("{}", table(&summaries));
    print_targets(&judged);
    let curves = scaling::curves(&summaries);
    if args.scaling {
        print!("{}", scaling::table(&curves));
    }
    std::fs::create_dir_all(&args.out)?;
    let mut json = serde_json::json!({
        "settings": {"seconds": settings.seconds, "repetitions": settings.repetitions, "parallel_streams": settings.parallel_streams, "idle_connections": settings.idle_connections, "ztunnel_mode": args.ztunnel_mode, "worker_threads": args.worker_threads, "policies": hbone_bench::subjects::BENCH_POLICIES},
        "subjects": subjects.iter().map(|s| s.name()).collect::<Vec<_>>(),
        "results": summaries,
        "samples": samples,
    });
    if args.scaling {
        json["scaling"] = serde_json::to_value(&curves)?;
    }
    if !judged.is_empty() {
        json["targets"] = serde_json::to_value(&judged)?;
    }
    std::fs::write(
        args.out.join("bench.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    std::fs::write(args.out.join("bench.md"), with_targets(&summaries, &judged))?;
    let names: Vec<String> = subjects.iter().map(|s| s.name().to_string()).collect();
    std::fs::write(args.out.join("bench.svg"), chart::svg(&summaries, &names)?)?;
    println!(
        "wrote {}, {} and {}",
        args.out.join("bench.json").display(),
        args.out.join("bench.md").display(),
        args.out.join("bench.svg").display()
    );
    Ok(())
}
