//! The fortio cross-check (`bench --fortio`): the request/response figures
//! measured a second time, in the same run, by a load generator the field
//! already trusts — so a reader need not take hbone-lab's own generator on
//! faith, and one who trusts fortio can reproduce the headline.
//!
//! What is measured, and why this way:
//!
//! - **The scenario** is the one `rr_unthrottled` and `rr_1000` measure:
//!   one TCP connection from the client pod to the server pod, 1 KiB
//!   requests each answered by 1 KiB, closed loop (the next request as soon
//!   as the answer is in) and at 1000 requests/s. fortio drives it as
//!   `fortio load -c 1 -qps 0` and `-qps 1000` against a `tcp://` target,
//!   its TCP echo mode: it writes its payload (`-payload-size 1024`) and
//!   reads the same bytes back, comparing them. Both generators time a
//!   request from its actual send (neither corrects for coordinated
//!   omission here) and both catch up after a late request.
//! - **The target** is not the request/response server the own scenarios
//!   use ([`crate::runner::RR_PORT`]): it answers a fixed pattern, and
//!   fortio would count every answer a mismatch and drop the connection.
//!   Nor `fortio server`'s TCP echo: a second server (Go's) would turn the
//!   direct-path comparison from "two generators, one server" into "two
//!   generators, two servers", and a disagreement could no longer be
//!   pinned on either. It is an echo ([`hbone_workloads::peers::echo`],
//!   on [`ECHO_PORT`]) in the same process and tokio runtime as the own
//!   server, 1 KiB each way: only the load generator differs.
//! - **The path**: fortio runs in the client pod's namespace (`ip netns
//!   exec`, [`hbone_harness::netns::NetNs::command`]), its sockets
//!   unmarked, so the pod's capture rules send its connection through each
//!   subject exactly as they send the own generator's.
//! - **Interleaved**: in each repetition every subject is started and
//!   warmed once, then measured by the own generator at both loads and by
//!   fortio at both loads, then stopped, before the next subject — drift on
//!   a shared machine lands on both generators and every subject alike.
//! - **Judged on the direct path**, where no proxy is involved: requests/s
//!   closed loop and p50 at 1000/s must agree within [`AGREEMENT`]. p99 is
//!   printed, not judged: at one connection it is a handful of requests per
//!   second of either runtime's scheduler, not the path. When the figures
//!   do not agree the printed reason is computed from the run: each
//!   generator's round trip and the time it spends between round trips,
//!   and the context switches and CPU each process spends per request
//!   (fortio's from the kernel's account of reaped children, the bench
//!   process's from /proc). The own generator runs in the bench process,
//!   in the same tokio runtime as the servers it talks to; fortio is a
//!   process of its own, as a real client is.
//! - **Histogram resolution**: fortio's histogram is bucketed, not HDR, its
//!   lowest buckets `-r` seconds wide (default 1 ms, which would put every
//!   round trip of this path into one bucket). [`RESOLUTION_S`] is 1 µs:
//!   buckets of 5 µs around the direct path's ~50 µs, 20–100 µs around the
//!   proxies' 0.1–1 ms; fortio interpolates inside a bucket.
//!
//! fortio itself is a pinned Go module (`benches/peers.env`), built by
//! [`BUILD_SCRIPT`] into the cache the control plane's programs use, or
//! given with `--fortio PATH` / `FORTIO_BIN`. Each of its JSON results is
//! kept in `<out>/fortio/`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use hbone_workloads::peers::{Latencies, echo};
use nix::sys::resource::{UsageWho, getrusage};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::figures::median;
use crate::figures::{Sample, Summary};
use crate::proc_stats::{context_switches, cpu_times};
use crate::runner::{BenchSettings, Servers, start_warm, summarize};
use crate::subjects::{Shared, Subject, SubjectError};
use crate::topology::{SERVER_IP, Topology};

/// `benches/peers.env`, where fortio's version is pinned (the build script reads it too).
const PEERS_ENV: &str = include_str!("../peers.env");

/// The script that builds fortio, named in every "not found" error.
pub const BUILD_SCRIPT: &str = "scripts/bench-peers.sh";
/// The environment variable that names a fortio binary the user supplies.
pub const FORTIO_BIN_ENV: &str = "FORTIO_BIN";
/// The server pod's echo, fortio's target.
pub const ECHO_PORT: u16 = 5203;
/// The fixed load, requests per second: `rr_1000`'s.
pub const FIXED_QPS: f64 = 1000.0;
/// Connections each load runs over: the own scenarios' one.
pub const CONNECTIONS: usize = 1;
/// Bytes of each request and each answer, as in the own scenarios.
pub const MESSAGE: usize = 1024;
/// fortio's `-r`: the width of its histogram's lowest buckets, in seconds.
pub const RESOLUTION_S: &str = "0.000001";
/// How far apart fortio's figure and the own generator's may be on the
/// direct path (as a fraction of the own figure) and still agree.
pub const AGREEMENT: f64 = 0.10;
/// The percentiles asked of fortio (`-p`).
const PERCENTILES: [f64; 4] = [50.0, 90.0, 99.0, 99.9];

/// Why the cross-check could not run or its result could not be read.
#[derive(Debug, Error)]
pub enum FortioError {
    /// Neither given nor built.
    #[error(
        "no fortio binary: give --fortio PATH or set {FORTIO_BIN_ENV}, or build it from its Go module with {BUILD_SCRIPT} (needs `go` and the Go module proxy, under a minute; it lands in {})",
        .expected.display()
    )]
    NotFound {
        /// Where the build script would have put it.
        expected: PathBuf,
    },
    /// Given, but not an executable file.
    #[error("fortio binary {}: not an executable file", .path.display())]
    NotExecutable {
        /// The path given.
        path: PathBuf,
    },
    /// fortio could not be started.
    #[error("cannot start `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// fortio ran and failed.
    #[error("`{command}` exited with {status}: {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// How it ended.
        status: ExitStatus,
        /// The end of what it printed on stderr.
        stderr: String,
    },
    /// fortio did not finish in time.
    #[error("{subject}: fortio at load {load} did not finish within {limit:?}")]
    Stalled {
        /// Who was measured.
        subject: String,
        /// Which load.
        load: String,
        /// How long it was given.
        limit: Duration,
    },
    /// A file of the run could not be read or written.
    #[error("{}: {source}", .path.display())]
    File {
        /// Which file or folder.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// fortio's result is not the JSON it writes.
    #[error("fortio's JSON result is not as expected: {0}")]
    Json(#[from] serde_json::Error),
    /// fortio's result lacks a percentile that was asked for.
    #[error("fortio's result has no p{0} (asked for with -p)")]
    MissingPercentile(f64),
    /// Every request of a fortio run failed.
    #[error("fortio had no request answered ({errors} failed: {failures})")]
    NothingAnswered {
        /// How many failed.
        errors: u64,
        /// fortio's failure counts by cause.
        failures: String,
    },
    /// Starting, warming or measuring a subject failed.
    #[error(transparent)]
    Subject(#[from] SubjectError),
}

/// The pinned fortio version (`v1.68.2`), as `benches/peers.env` has it.
pub fn pinned_version() -> &'static str {
    PEERS_ENV
        .lines()
        .find_map(|line| line.trim().strip_prefix("FORTIO_VERSION="))
        .map_or("", str::trim)
}

/// Where the build script puts fortio: the peers cache
/// (`$HBONE_PEERS_DIR`, or `hbone-lab/peers` under `$XDG_CACHE_HOME` or
/// `~/.cache`), then `fortio-<version>/fortio`.
pub fn built_path() -> PathBuf {
    let set = |key: &str| {
        std::env::var_os(key)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let root = match set("HBONE_PEERS_DIR") {
        Some(dir) => dir,
        None => set("XDG_CACHE_HOME")
            .or_else(|| Some(set("HOME")?.join(".cache")))
            .unwrap_or_else(std::env::temp_dir)
            .join("hbone-lab/peers"),
    };
    root.join(format!("fortio-{}", pinned_version()))
        .join("fortio")
}

/// The fortio to run: `explicit` (`--fortio PATH`), else `FORTIO_BIN`,
/// else what the build script built.
pub fn find(explicit: Option<&Path>) -> Result<PathBuf, FortioError> {
    let given = explicit.map(Path::to_path_buf).or_else(|| {
        std::env::var_os(FORTIO_BIN_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    });
    let executable = |path: &Path| {
        use std::os::unix::fs::PermissionsExt as _;
        path.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    match given {
        Some(path) if executable(&path) => Ok(path),
        Some(path) => Err(FortioError::NotExecutable { path }),
        None => {
            let built = built_path();
            match executable(&built) {
                true => Ok(built),
                false => Err(FortioError::NotFound { expected: built }),
            }
        }
    }
}

/// The two loads, each the fortio twin of an own scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Load {
    /// As fast as answers come back (`-qps 0`): `rr_unthrottled`.
    Max,
    /// [`FIXED_QPS`] requests per second: `rr_1000`.
    Fixed,
}

impl Load {
    /// Both, in the order they run.
    pub const BOTH: [Load; 2] = [Load::Max, Load::Fixed];

    /// The own generator's scenario that measures the same.
    pub fn own_scenario(self) -> &'static str {
        match self {
            Load::Max => "rr_unthrottled",
            Load::Fixed => "rr_1000",
        }
    }

    /// fortio's `-qps`.
    fn qps(self) -> f64 {
        match self {
            Load::Max => 0.0,
            Load::Fixed => FIXED_QPS,
        }
    }

    /// Its name in tables and file names.
    pub fn label(self) -> String {
        match self {
            Load::Max => "max".into(),
            Load::Fixed => format!("{FIXED_QPS}/s"),
        }
    }
}

/// fortio's arguments for one measurement of `seconds` at `load`, its JSON
/// result written to `json`.
pub fn load_args(load: Load, seconds: f64, json: &Path) -> Vec<String> {
    let percentiles: Vec<String> = PERCENTILES.iter().map(f64::to_string).collect();
    let millis = (seconds * 1000.0).round().max(1.0);
    [
        "load",
        "-quiet",
        "-c",
        &CONNECTIONS.to_string(),
        "-qps",
        &load.qps().to_string(),
        "-t",
        &format!("{millis}ms"),
        "-payload-size",
        &MESSAGE.to_string(),
        "-r",
        RESOLUTION_S,
        "-p",
        &percentiles.join(","),
        "-json",
        &json.display().to_string(),
        &format!("tcp://{SERVER_IP}:{ECHO_PORT}"),
    ]
    .map(String::from)
    .to_vec()
}

/// What one fortio run reports, read from its JSON result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FortioFigures {
    /// fortio's version, as it reports it.
    pub version: String,
    /// Requests answered with their echo (`RetCodes.OK`).
    pub answered: u64,
    /// Requests that failed (every other `RetCodes` entry).
    pub errors: u64,
    /// Answered requests per second of the run.
    pub per_s: f64,
    /// fortio's `ActualQPS` (failed requests count in it too).
    pub actual_qps: f64,
    /// Connections (`NumThreads`).
    pub connections: usize,
    /// Sockets opened (one per connection when nothing failed).
    pub sockets: u64,
    /// The mean round trip, in ms.
    pub avg_ms: f64,
    /// The round trips' percentiles (fortio's `DurationHistogram`).
    #[serde(flatten)]
    pub latency: Latencies,
}

/// The part of fortio's TCP result read here (its field names).
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TcpResult {
    version: String,
    #[serde(rename = "ActualQPS")]
    actual_qps: f64,
    /// Nanoseconds.
    actual_duration: u64,
    num_threads: usize,
    socket_count: u64,
    ret_codes: BTreeMap<String, u64>,
    duration_histogram: Histogram,
}

/// fortio's histogram: seconds.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Histogram {
    max: f64,
    avg: f64,
    #[serde(default)]
    percentiles: Vec<Percentile>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Percentile {
    percentile: f64,
    value: f64,
}

/// The own measurements' figure: the bench process's CPU per request, µs.
const OWN_CPU: &str = "bench_process_cpu_us_per_request";
/// The own measurements' figure: the bench process's context switches per request.
const OWN_SWITCHES: &str = "bench_process_switches_per_request";

/// fortio's name for an answered request in `RetCodes`.
const ANSWERED: &str = "OK";

/// Reads fortio's JSON result of a `tcp://` load.
pub fn parse(json: &str) -> Result<FortioFigures, FortioError> {
    let r: TcpResult = serde_json::from_str(json)?;
    let answered = r.ret_codes.get(ANSWERED).copied().unwrap_or(0);
    let errors: u64 = r
        .ret_codes
        .iter()
        .filter(|(code, _)| *code != ANSWERED)
        .map(|(_, n)| n)
        .sum();
    if answered == 0 {
        let failures = format!("{:?}", r.ret_codes);
        return Err(FortioError::NothingAnswered { errors, failures });
    }
    let ms = |seconds: f64| seconds * 1000.0;
    let at = |p: f64| {
        r.duration_histogram
            .percentiles
            .iter()
            .find(|q| (q.percentile - p).abs() < 1e-9)
            .map(|q| ms(q.value))
            .ok_or(FortioError::MissingPercentile(p))
    };
    let seconds = r.actual_duration as f64 / 1e9;
    Ok(FortioFigures {
        version: r.version,
        answered,
        errors,
        per_s: answered as f64 / seconds,
        actual_qps: r.actual_qps,
        connections: r.num_threads,
        sockets: r.socket_count,
        avg_ms: ms(r.duration_histogram.avg),
        latency: Latencies {
            p50_ms: at(50.0)?,
            p90_ms: at(90.0)?,
            p99_ms: at(99.0)?,
            p999_ms: at(99.9)?,
            max_ms: ms(r.duration_histogram.max),
        },
    })
}

/// One fortio measurement of one subject.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FortioRun {
    /// Who was measured.
    pub subject: String,
    /// At which load.
    pub load: Load,
    /// Which repetition, from 0.
    pub repetition: usize,
    /// fortio's JSON result, as it wrote it.
    pub result_file: PathBuf,
    /// What it reports.
    #[serde(flatten)]
    pub figures: FortioFigures,
    /// What fortio's process spent per answered request.
    pub fortio_cost: Cost,
    /// What the bench process (the echo, the idle control plane) spent
    /// meanwhile, per answered request.
    pub bench_process_cost: Cost,
}

/// What a process spent per request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Cost {
    /// CPU, user and system, in µs.
    pub cpu_us: f64,
    /// Context switches, voluntary and not: how often it slept or was put aside.
    pub switches: f64,
}

/// CPU seconds and context switches used so far.
#[derive(Debug, Clone, Copy)]
struct Counters {
    cpu_s: f64,
    switches: f64,
}

impl Counters {
    /// This process, every thread (from /proc).
    fn this_process() -> Counters {
        let pid = [std::process::id()];
        Counters {
            cpu_s: cpu_times(&pid).total(),
            switches: context_switches(&pid) as f64,
        }
    }

    /// This process's children that have ended and been waited for (fortio
    /// is gone from /proc by the time its result is read; the kernel keeps
    /// its account here).
    fn reaped_children() -> Counters {
        let Ok(u) = getrusage(UsageWho::RUSAGE_CHILDREN) else {
            return Counters {
                cpu_s: 0.0,
                switches: 0.0,
            };
        };
        let seconds = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
        Counters {
            cpu_s: seconds(u.user_time()) + seconds(u.system_time()),
            switches: (u.voluntary_context_switches() + u.involuntary_context_switches()) as f64,
        }
    }

    /// What was spent since `before`, per request, rounded as figures are.
    fn per_request(self, before: Counters, requests: f64) -> Cost {
        let round = |v: f64| (v * 1000.0).round() / 1000.0;
        Cost {
            cpu_us: round((self.cpu_s - before.cpu_s) * 1e6 / requests),
            switches: round((self.switches - before.switches) / requests),
        }
    }
}

/// Runs fortio once in the client pod and reads its result.
async fn drive(
    topology: &Topology,
    fortio: &Path,
    args: &[String],
    json: &Path,
) -> Result<(FortioFigures, Cost, Cost), FortioError> {
    let program = fortio.display().to_string();
    let mut command = topology.client.command(&program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    let mut command = tokio::process::Command::from(command);
    command.kill_on_drop(true);
    let shown = format!("{program} {}", args.join(" "));
    let (children_before, own_before) = (Counters::reaped_children(), Counters::this_process());
    let out = command
        .output()
        .await
        .map_err(|source| FortioError::Spawn {
            command: shown.clone(),
            source,
        })?;
    let (children, own) = (Counters::reaped_children(), Counters::this_process());
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(10).collect();
        return Err(FortioError::Failed {
            command: shown,
            status: out.status,
            stderr: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        });
    }
    let text = std::fs::read_to_string(json).map_err(|source| FortioError::File {
        path: json.to_path_buf(),
        source,
    })?;
    let figures = parse(&text)?;
    let requests = figures.answered as f64;
    let fortio_cost = children.per_request(children_before, requests);
    let own_cost = own.per_request(own_before, requests);
    Ok((figures, fortio_cost, own_cost))
}

/// One generator's figures for one subject and load (medians over the repetitions).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Side {
    /// Requests answered per second.
    pub per_s: f64,
    /// Median round trip, in ms.
    pub p50_ms: f64,
    /// 99th percentile, in ms.
    pub p99_ms: f64,
    /// 99.9th percentile, in ms.
    pub p999_ms: f64,
    /// What the bench process spent per request: for the own generator,
    /// the generator and the servers; during fortio's run, the echo alone.
    pub bench_process_cost: Cost,
    /// What fortio's process spent per request (fortio's side only).
    pub fortio_cost: Option<Cost>,
}

/// Both generators' figures for one subject and load, side by side.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// Who was measured.
    pub subject: String,
    /// At which load.
    pub load: Load,
    /// The own scenario measuring the same.
    pub own_scenario: String,
    /// hbone-lab's own generator.
    pub own: Side,
    /// fortio.
    pub fortio: Side,
    /// fortio's requests/s ÷ the own generator's.
    pub per_s_ratio: f64,
    /// fortio's p50 ÷ the own generator's.
    pub p50_ratio: f64,
    /// fortio's p99 ÷ the own generator's.
    pub p99_ratio: f64,
    /// Requests fortio saw fail, every repetition together.
    pub fortio_errors: u64,
}

/// One figure judged on the direct path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    /// Which figure.
    pub figure: String,
    /// The own generator's.
    pub own: f64,
    /// fortio's.
    pub fortio: f64,
    /// fortio ÷ own.
    pub ratio: f64,
    /// Within [`AGREEMENT`].
    pub within: bool,
}

/// Whether the generators agree on the direct path, and if not, why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Agreement {
    /// Every check within [`AGREEMENT`].
    pub within: bool,
    /// The figures judged.
    pub checks: Vec<Check>,
    /// When not within: what the run says the difference comes from.
    pub reason: Option<String>,
}

/// hbone-lab ÷ ztunnel on one figure, as each generator measured it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Headline {
    /// Which figure.
    pub figure: String,
    /// By the own generator.
    pub own_ratio: f64,
    /// By fortio.
    pub fortio_ratio: f64,
}

/// The whole cross-check, as bench.json's `fortio` holds it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CrossCheck {
    /// fortio's version, as it reported it.
    pub fortio_version: String,
    /// Connections of every load.
    pub connections: usize,
    /// The fixed load, requests/s.
    pub fixed_qps: f64,
    /// Bytes each way.
    pub message_bytes: usize,
    /// fortio's histogram resolution (`-r`), seconds.
    pub resolution_s: String,
    /// Seconds per measurement.
    pub seconds: f64,
    /// Measurements per subject, generator and load.
    pub repetitions: usize,
    /// fortio's command for the closed-loop load (run in the client pod).
    pub command: String,
    /// Every fortio measurement.
    pub runs: Vec<FortioRun>,
    /// Every own-generator measurement.
    pub own_samples: Vec<Sample>,
    /// The own generator's medians and ratios, as the timed run reports them.
    pub own: Vec<Summary>,
    /// Per subject and load, both generators side by side.
    pub comparisons: Vec<Comparison>,
    /// The verdict on the direct path (when direct ran).
    pub direct_agreement: Option<Agreement>,
    /// hbone-lab ÷ ztunnel by each generator (when both ran).
    pub headline: Vec<Headline>,
}

/// Runs the cross-check: per repetition and subject, the own generator's
/// `rr_unthrottled` and `rr_1000`, then fortio at both loads; fortio's
/// results are kept in `out/fortio/`.
pub async fn run(
    subjects: &[Subject],
    settings: &BenchSettings,
    fortio: &Path,
    topology: &Topology,
    shared: &Shared,
    out: &Path,
    say: &mut dyn FnMut(&str),
) -> Result<CrossCheck, FortioError> {
    let results = out.join("fortio");
    std::fs::create_dir_all(&results).map_err(|source| FortioError::File {
        path: results.clone(),
        source,
    })?;
    let servers = Servers::start(topology)?;
    // fortio's target: an echo beside the own generator's server, on the
    // same runtime, so that on the direct path only the generator differs.
    servers.spawn(echo(servers.listen(topology, ECHO_PORT)?));
    let limit = Duration::from_secs_f64(settings.seconds * 3.0 + 30.0);
    let mut own_samples = Vec::new();
    let mut runs = Vec::new();
    for repetition in 0..settings.repetitions {
        for subject in subjects {
            let name = subject.name();
            let running = start_warm(subject, topology, shared).await?;
            for load in Load::BOTH {
                let scenario = load.own_scenario();
                say(&format!(
                    "{name} · own generator · {scenario} · repetition {}",
                    repetition + 1
                ));
                let before = Counters::this_process();
                let mut figures = servers
                    .measure(scenario, subject, &running, topology, settings)
                    .await?;
                let requests = figures.get("rps").copied().unwrap_or(0.0) * settings.seconds;
                if requests > 0.0 {
                    let cost = Counters::this_process().per_request(before, requests);
                    figures.insert(OWN_CPU.into(), cost.cpu_us);
                    figures.insert(OWN_SWITCHES.into(), cost.switches);
                }
                own_samples.push(Sample {
                    subject: name.into(),
                    scenario: scenario.into(),
                    repetition,
                    figures,
                });
            }
            for load in Load::BOTH {
                say(&format!(
                    "{name} · fortio · {} · repetition {}",
                    load.label(),
                    repetition + 1
                ));
                let file = results.join(format!(
                    "{name}-{}-{}.json",
                    load.own_scenario(),
                    repetition + 1
                ));
                let args = load_args(load, settings.seconds, &file);
                let (figures, fortio_cost, bench_process_cost) =
                    tokio::time::timeout(limit, drive(topology, fortio, &args, &file))
                        .await
                        .map_err(|_| FortioError::Stalled {
                            subject: name.into(),
                            load: load.label(),
                            limit,
                        })??;
                runs.push(FortioRun {
                    subject: name.into(),
                    load,
                    repetition,
                    result_file: file,
                    figures,
                    fortio_cost,
                    bench_process_cost,
                });
            }
            running.stop();
        }
    }
    drop(servers);
    let _ = topology.capture(false);
    let example = results.join("result.json");
    let command = format!(
        "ip netns exec {} fortio {}",
        topology.client.name(),
        load_args(Load::Max, settings.seconds, &example).join(" ")
    );
    Ok(cross_check(settings, command, runs, own_samples))
}

/// The cross-check's comparisons, verdict and headline, from its measurements.
pub fn cross_check(
    settings: &BenchSettings,
    command: String,
    runs: Vec<FortioRun>,
    own_samples: Vec<Sample>,
) -> CrossCheck {
    CrossCheck {
        fortio_version: runs
            .first()
            .map_or_else(|| pinned_version().into(), |r| r.figures.version.clone()),
        connections: CONNECTIONS,
        fixed_qps: FIXED_QPS,
        message_bytes: MESSAGE,
        resolution_s: RESOLUTION_S.into(),
        seconds: settings.seconds,
        repetitions: settings.repetitions,
        command,
        runs,
        own_samples,
        own: Vec::new(),
        comparisons: Vec::new(),
        direct_agreement: None,
        headline: Vec::new(),
    }
    .judged()
}

impl CrossCheck {
    /// The medians, comparisons, verdict and headline worked out afresh
    /// from the measurements (`runs`, `own_samples`): how a run ends, and
    /// how `--replot` reads a saved one with today's judgement.
    pub fn judged(mut self) -> CrossCheck {
        self.own = summarize(&self.own_samples);
        self.comparisons = compare(&self.own, &self.runs);
        self.direct_agreement = agreement(&self.comparisons);
        self.headline = headline(&self.comparisons);
        self
    }
}

/// fortio's medians for one subject and load.
fn fortio_side(runs: &[&FortioRun]) -> Side {
    let of = |f: &dyn Fn(&FortioRun) -> f64| median(runs.iter().map(|r| f(r)).collect());
    Side {
        per_s: of(&|r| r.figures.per_s),
        p50_ms: of(&|r| r.figures.latency.p50_ms),
        p99_ms: of(&|r| r.figures.latency.p99_ms),
        p999_ms: of(&|r| r.figures.latency.p999_ms),
        bench_process_cost: Cost {
            cpu_us: of(&|r| r.bench_process_cost.cpu_us),
            switches: of(&|r| r.bench_process_cost.switches),
        },
        fortio_cost: Some(Cost {
            cpu_us: of(&|r| r.fortio_cost.cpu_us),
            switches: of(&|r| r.fortio_cost.switches),
        }),
    }
}

/// The own generator's medians, as the summary has them.
fn own_side(summary: &Summary) -> Side {
    let get = |key: &str| summary.figures.get(key).copied().unwrap_or(0.0);
    Side {
        per_s: get("rps"),
        p50_ms: get("p50_ms"),
        p99_ms: get("p99_ms"),
        p999_ms: get("p999_ms"),
        bench_process_cost: Cost {
            cpu_us: get(OWN_CPU),
            switches: get(OWN_SWITCHES),
        },
        fortio_cost: None,
    }
}

/// `a ÷ b` rounded to three decimals; 0 where `b` is (a figure missing).
fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 {
        return 0.0;
    }
    (a / b * 1000.0).round() / 1000.0
}

/// Per subject (in the order they ran) and load: both generators' medians.
pub fn compare(own: &[Summary], runs: &[FortioRun]) -> Vec<Comparison> {
    let mut rows = Vec::new();
    for summary in own {
        let Some(load) = Load::BOTH
            .into_iter()
            .find(|l| l.own_scenario() == summary.scenario)
        else {
            continue;
        };
        let theirs: Vec<&FortioRun> = runs
            .iter()
            .filter(|r| r.subject == summary.subject && r.load == load)
            .collect();
        if theirs.is_empty() {
            continue;
        }
        let (own, fortio) = (own_side(summary), fortio_side(&theirs));
        rows.push(Comparison {
            subject: summary.subject.clone(),
            load,
            own_scenario: summary.scenario.clone(),
            per_s_ratio: ratio(fortio.per_s, own.per_s),
            p50_ratio: ratio(fortio.p50_ms, own.p50_ms),
            p99_ratio: ratio(fortio.p99_ms, own.p99_ms),
            fortio_errors: theirs.iter().map(|r| r.figures.errors).sum(),
            own,
            fortio,
        });
    }
    rows
}

fn row<'a>(rows: &'a [Comparison], subject: &str, load: Load) -> Option<&'a Comparison> {
    rows.iter().find(|c| c.subject == subject && c.load == load)
}

/// The verdict on the direct path: requests/s closed loop and p50 at the
/// fixed load, each within [`AGREEMENT`]; `None` when direct did not run.
pub fn agreement(rows: &[Comparison]) -> Option<Agreement> {
    let max = row(rows, "direct", Load::Max)?;
    let fixed = row(rows, "direct", Load::Fixed)?;
    let check = |figure: String, own: f64, fortio: f64| {
        let r = ratio(fortio, own);
        Check {
            figure,
            own,
            fortio,
            ratio: r,
            within: (r - 1.0).abs() <= AGREEMENT,
        }
    };
    let checks = vec![
        check(
            "requests/s, closed loop (rr_unthrottled)".into(),
            max.own.per_s,
            max.fortio.per_s,
        ),
        check(
            format!("p50 ms at {FIXED_QPS}/s (rr_1000)"),
            fixed.own.p50_ms,
            fixed.fortio.p50_ms,
        ),
    ];
    let within = checks.iter().all(|c| c.within);
    Some(Agreement {
        within,
        reason: (!within).then(|| reason(max, fixed)),
        checks,
    })
}

/// Why the generators disagree on the direct path, in the run's own
/// figures. No proxy is on this path, so the difference is the
/// generators'. Closed loop on one connection a request leaves every
/// 1/rate, its mean cycle; a p50 above that mean says the round trips
/// come in two kinds, some far shorter than the median. How often each
/// process slept (context switches) and what CPU it spent per request, at
/// both loads, says where: the own generator shares its process and tokio
/// runtime with the servers, fortio does not.
fn reason(max: &Comparison, fixed: &Comparison) -> String {
    let us = |ms: f64| ms * 1000.0;
    let cycle = |side: &Side| 1e6 / side.per_s;
    let (own, fortio) = (&max.own, &max.fortio);
    let mut text = format!(
        "no proxy is on the direct path, so the difference is the load generators'. Closed loop on one connection a request leaves every {:.1} µs on average with fortio against {:.1} µs with the own generator, whose round trips have a p50 of {:.1} µs against fortio's {:.1} µs",
        cycle(fortio),
        cycle(own),
        us(own.p50_ms),
        us(fortio.p50_ms),
    );
    if us(own.p50_ms) > cycle(own) {
        text.push_str(
            " — a median above the mean cycle: the own generator's round trips are of two kinds, some far shorter than the median",
        );
    }
    let _ = write!(
        text,
        "; at {FIXED_QPS}/s, where the generator's speed does not set the rate, the own p50 is {:.1} µs against fortio's {:.1} µs. Context switches and CPU per request",
        us(fixed.own.p50_ms),
        us(fixed.fortio.p50_ms),
    );
    let mut fewer = true;
    for (row, label) in [(max, "closed loop"), (fixed, "at the fixed rate")] {
        let mine = row.own.bench_process_cost;
        let theirs = row.fortio.fortio_cost.unwrap_or_default();
        let echo = row.fortio.bench_process_cost;
        fewer &= mine.switches + 0.25 < theirs.switches + echo.switches;
        let _ = write!(
            text,
            ", {label}: the own generator's process (generator and servers) {:.2} and {:.1} µs, fortio's {:.2} and {:.1} µs plus the echo's {:.2} and {:.1} µs",
            mine.switches, mine.cpu_us, theirs.switches, theirs.cpu_us, echo.switches, echo.cpu_us,
        );
    }
    text.push('.');
    if fewer {
        text.push_str(
            " The own generator and its server share one tokio runtime: a request and its answer often pass between their tasks without a thread going to sleep, which a client in a process of its own — fortio, or any real workload — cannot do.",
        );
    }
    text
}

/// hbone-lab ÷ ztunnel by both generators: requests/s closed loop, and
/// p50 and p99 at the fixed load. Empty unless both meshes ran.
pub fn headline(rows: &[Comparison]) -> Vec<Headline> {
    let pair = |load| Some((row(rows, "hbone-lab", load)?, row(rows, "ztunnel", load)?));
    let (Some((hl_max, zt_max)), Some((hl_fixed, zt_fixed))) = (pair(Load::Max), pair(Load::Fixed))
    else {
        return Vec::new();
    };
    let line = |figure: String, of: fn(&Side) -> f64, hl: &Comparison, zt: &Comparison| Headline {
        figure,
        own_ratio: ratio(of(&hl.own), of(&zt.own)),
        fortio_ratio: ratio(of(&hl.fortio), of(&zt.fortio)),
    };
    vec![
        line(
            "requests/s, closed loop".into(),
            |s| s.per_s,
            hl_max,
            zt_max,
        ),
        line(
            format!("p50 at {FIXED_QPS}/s"),
            |s| s.p50_ms,
            hl_fixed,
            zt_fixed,
        ),
        line(
            format!("p99 at {FIXED_QPS}/s"),
            |s| s.p99_ms,
            hl_fixed,
            zt_fixed,
        ),
    ]
}

/// The cross-check as printed: both generators per subject and load, the
/// direct-path verdict (with its reason when they disagree) and the
/// headline by each generator.
pub fn table(c: &CrossCheck) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "fortio cross-check: fortio {}, {} connection, {} B each way, {} × {} s, medians",
        c.fortio_version, c.connections, c.message_bytes, c.repetitions, c.seconds
    );
    let _ = writeln!(
        t,
        "{:<12} {:>8} {:>11} {:>12} {:>7} {:>9} {:>11} {:>9} {:>11} {:>7}",
        "subject",
        "load",
        "own req/s",
        "fortio req/s",
        "ratio",
        "own p50",
        "fortio p50",
        "own p99",
        "fortio p99",
        "errors"
    );
    for row in &c.comparisons {
        let _ = writeln!(
            t,
            "{:<12} {:>8} {:>11.0} {:>12.0} {:>6.2}× {:>6.3} ms {:>8.3} ms {:>6.3} ms {:>8.3} ms {:>7}",
            row.subject,
            row.load.label(),
            row.own.per_s,
            row.fortio.per_s,
            row.per_s_ratio,
            row.own.p50_ms,
            row.fortio.p50_ms,
            row.own.p99_ms,
            row.fortio.p99_ms,
            row.fortio_errors
        );
    }
    match &c.direct_agreement {
        Some(a) => {
            let verdict = match a.within {
                true => "agree",
                false => "do NOT agree",
            };
            let _ = writeln!(
                t,
                "direct path: the generators {verdict} within {:.0} %",
                AGREEMENT * 100.0
            );
            for check in &a.checks {
                let _ = writeln!(
                    t,
                    "  {}: own {:.3}, fortio {:.3} (fortio ÷ own {:.2}×{})",
                    check.figure,
                    check.own,
                    check.fortio,
                    check.ratio,
                    if check.within { "" } else { ", outside" }
                );
            }
            if let Some(reason) = &a.reason {
                let _ = writeln!(t, "  why: {reason}");
            }
        }
        None => {
            let _ = writeln!(t, "direct did not run: no agreement to judge");
        }
    }
    for h in &c.headline {
        let _ = writeln!(
            t,
            "hbone-lab ÷ ztunnel, {}: own generator {:.2}×, fortio {:.2}×",
            h.figure, h.own_ratio, h.fortio_ratio
        );
    }
    let _ = writeln!(t, "fortio by hand (closed loop): {}", c.command);
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shaped like what `fortio load -json` writes for a `tcp://` target
    /// (fields trimmed to a few; values made up).
    const SAMPLE: &str = r#"{
      "RunType": "TCP",
      "Labels": "tcp://10.253.0.2:5203 , bench",
      "StartTime": "2026-12-05T17:10:55.48Z",
      "RequestedQPS": "max",
      "RequestedDuration": "5s",
      "ActualQPS": 20010.5,
      "ActualDuration": 5000000000,
      "NumThreads": 1,
      "Version": "1.68.2",
      "DurationHistogram": {
        "Count": 100050,
        "Min": 0.000031,
        "Max": 0.0021,
        "Sum": 4.9,
        "Avg": 0.000049,
        "StdDev": 0.00001,
        "Data": [{"Start": 0.000031, "End": 0.000035, "Percent": 10.0, "Count": 10005}],
        "Percentiles": [
          {"Percentile": 50, "Value": 0.000047},
          {"Percentile": 90, "Value": 0.000061},
          {"Percentile": 99, "Value": 0.00012},
          {"Percentile": 99.9, "Value": 0.0004}
        ]
      },
      "ErrorsDurationHistogram": {"Count": 50, "Min": 0, "Max": 0, "Sum": 0, "Avg": 0, "StdDev": 0, "Data": null},
      "Destination": "tcp://10.253.0.2:5203",
      "RetCodes": {"OK": 100000, "read not echoing writes": 50},
      "SocketCount": 51,
      "BytesSent": 102451200,
      "BytesReceived": 102451200
    }"#;

    #[test]
    fn fortio_json_is_read_into_answered_errors_rate_and_percentiles() {
        let f = parse(SAMPLE).unwrap();
        assert_eq!(f.version, "1.68.2");
        assert_eq!((f.answered, f.errors), (100_000, 50));
        assert!((f.per_s - 20_000.0).abs() < 1e-9, "{}", f.per_s);
        assert_eq!(f.actual_qps, 20010.5);
        assert_eq!((f.connections, f.sockets), (1, 51));
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(close(f.latency.p50_ms, 0.047), "{f:?}");
        assert!(close(f.latency.p90_ms, 0.061), "{f:?}");
        assert!(close(f.latency.p99_ms, 0.12), "{f:?}");
        assert!(close(f.latency.p999_ms, 0.4), "{f:?}");
        assert!(close(f.latency.max_ms, 2.1), "{f:?}");
        assert!(close(f.avg_ms, 0.049), "{f:?}");
    }

    #[test]
    fn a_run_without_an_answer_or_a_percentile_is_an_error() {
        let nothing = SAMPLE.replace(r#""OK": 100000, "#, "");
        assert!(
            matches!(
                parse(&nothing),
                Err(FortioError::NothingAnswered { errors: 50, .. })
            ),
            "{:?}",
            parse(&nothing)
        );
        let no_p999 = SAMPLE.replace(r#"{"Percentile": 99.9, "Value": 0.0004}"#, "");
        let no_p999 = no_p999.replace("0.00012},", "0.00012}");
        assert!(matches!(
            parse(&no_p999),
            Err(FortioError::MissingPercentile(p)) if p == 99.9
        ));
        assert!(matches!(parse("{}"), Err(FortioError::Json(_))));
    }

    #[test]
    fn the_arguments_name_the_load_the_echo_and_the_result_file() {
        let args = load_args(Load::Fixed, 0.5, Path::new("/tmp/r.json"));
        let after = |flag: &str| {
            let at = args.iter().position(|a| a == flag).unwrap();
            args[at + 1].clone()
        };
        assert_eq!(args[0], "load");
        assert_eq!(after("-c"), "1");
        assert_eq!(after("-qps"), "1000");
        assert_eq!(after("-t"), "500ms");
        assert_eq!(after("-payload-size"), "1024");
        assert_eq!(after("-p"), "50,90,99,99.9");
        assert_eq!(after("-json"), "/tmp/r.json");
        assert_eq!(args.last().unwrap(), "tcp://10.253.0.2:5203");
        let max = load_args(Load::Max, 5.0, Path::new("x"));
        assert!(max.windows(2).any(|w| w == ["-qps", "0"]), "{max:?}");
    }

    #[test]
    fn the_version_is_pinned_and_names_the_build_folder() {
        assert!(pinned_version().starts_with("v1."), "{}", pinned_version());
        let path = built_path();
        assert!(
            path.ends_with(format!("fortio-{}/fortio", pinned_version())),
            "{}",
            path.display()
        );
    }

    fn own(subject: &str, scenario: &str, rps: f64, p50: f64, p99: f64) -> Sample {
        let figures = [
            ("rps", rps),
            ("p50_ms", p50),
            ("p99_ms", p99),
            ("p999_ms", p99 * 2.0),
            (OWN_CPU, 30.0),
            (OWN_SWITCHES, 0.01),
        ];
        Sample {
            subject: subject.into(),
            scenario: scenario.into(),
            repetition: 0,
            figures: figures.map(|(k, v)| (k.to_string(), v)).into(),
        }
    }

    fn theirs(subject: &str, load: Load, per_s: f64, p50: f64, p99: f64) -> FortioRun {
        let mut figures = parse(SAMPLE).unwrap();
        figures.per_s = per_s;
        figures.latency.p50_ms = p50;
        figures.latency.p99_ms = p99;
        FortioRun {
            subject: subject.into(),
            load,
            repetition: 0,
            result_file: PathBuf::from("r.json"),
            figures,
            fortio_cost: Cost {
                cpu_us: 40.0,
                switches: 1.0,
            },
            bench_process_cost: Cost {
                cpu_us: 12.0,
                switches: 1.0,
            },
        }
    }

    fn check_of(direct_fortio_rps: f64, direct_fortio_p50: f64, with_meshes: bool) -> CrossCheck {
        let mut samples = vec![
            own("direct", "rr_unthrottled", 20_000.0, 0.045, 0.1),
            own("direct", "rr_1000", 1000.0, 0.05, 0.12),
        ];
        let mut runs = vec![
            theirs("direct", Load::Max, direct_fortio_rps, 0.047, 0.11),
            theirs("direct", Load::Fixed, 1000.0, direct_fortio_p50, 0.13),
        ];
        if with_meshes {
            samples.push(own("hbone-lab", "rr_unthrottled", 6000.0, 0.16, 0.3));
            samples.push(own("hbone-lab", "rr_1000", 1000.0, 0.2, 0.4));
            samples.push(own("ztunnel", "rr_unthrottled", 5000.0, 0.19, 0.35));
            samples.push(own("ztunnel", "rr_1000", 1000.0, 0.25, 0.5));
            runs.push(theirs("hbone-lab", Load::Max, 5800.0, 0.17, 0.31));
            runs.push(theirs("hbone-lab", Load::Fixed, 1000.0, 0.21, 0.42));
            runs.push(theirs("ztunnel", Load::Max, 4640.0, 0.2, 0.36));
            runs.push(theirs("ztunnel", Load::Fixed, 1000.0, 0.26, 0.5));
        }
        cross_check(
            &BenchSettings::quick(),
            "fortio load …".into(),
            runs,
            samples,
        )
    }

    #[test]
    fn each_subject_and_load_is_compared_and_direct_judged_within_ten_percent() {
        let c = check_of(19_000.0, 0.052, true);
        assert_eq!(c.comparisons.len(), 6);
        let max = row(&c.comparisons, "direct", Load::Max).unwrap();
        assert_eq!(max.own_scenario, "rr_unthrottled");
        assert_eq!(max.per_s_ratio, 0.95);
        assert_eq!(max.fortio_errors, 50);
        assert_eq!(max.fortio.fortio_cost.map(|c| c.cpu_us), Some(40.0));
        assert_eq!(max.own.fortio_cost, None);
        assert_eq!(max.own.bench_process_cost.switches, 0.01);
        let verdict = c.direct_agreement.as_ref().unwrap();
        assert!(verdict.within, "{verdict:?}");
        assert_eq!(verdict.checks.len(), 2);
        assert_eq!(verdict.reason, None);
        let figures: Vec<&str> = c.headline.iter().map(|h| h.figure.as_str()).collect();
        assert_eq!(
            figures,
            ["requests/s, closed loop", "p50 at 1000/s", "p99 at 1000/s"]
        );
        assert_eq!(c.headline[0].own_ratio, 1.2);
        assert_eq!(c.headline[0].fortio_ratio, 1.25);
        let printed = table(&c);
        assert!(printed.contains("agree within 10 %"), "{printed}");
        assert!(
            printed.contains("hbone-lab ÷ ztunnel, requests/s"),
            "{printed}"
        );
    }

    #[test]
    fn a_disagreement_on_the_direct_path_says_why() {
        let c = check_of(15_000.0, 0.06, false);
        assert!(c.headline.is_empty(), "no meshes ran");
        let verdict = c.direct_agreement.as_ref().unwrap();
        assert!(!verdict.within);
        assert!(verdict.checks.iter().all(|c| !c.within), "{verdict:?}");
        let why = verdict.reason.as_deref().unwrap();
        // 1/15 000 s = 66.7 µs a cycle.
        assert!(
            why.contains("every 66.7 µs on average with fortio against 50.0 µs"),
            "{why}"
        );
        assert!(!why.contains("two kinds"), "{why}");
        assert!(
            why.contains("own p50 is 50.0 µs against fortio's 60.0 µs"),
            "{why}"
        );
        assert!(
            why.contains("(generator and servers) 0.01 and 30.0 µs, fortio's 1.00 and 40.0 µs plus the echo's 1.00 and 12.0 µs"),
            "{why}"
        );
        assert!(why.contains("without a thread going to sleep"), "{why}");
        let printed = table(&c);
        assert!(
            printed.contains("do NOT agree") && printed.contains("why: "),
            "{printed}"
        );
    }

    #[test]
    fn the_cross_check_survives_json() {
        let c = check_of(19_000.0, 0.052, true);
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["runs"][0]["p50_ms"], 0.047);
        assert_eq!(json["runs"][0]["load"], "max");
        assert_eq!(json["comparisons"][0]["own"]["per_s"], 20_000.0);
        let back: CrossCheck = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(serde_json::to_value(&back).unwrap(), json);
    }
}
