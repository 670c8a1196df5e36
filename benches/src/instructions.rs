//! Instructions per request and per new connection: the figure that does
//! not drift. This machine's timings move ±15 % between runs and it has no
//! hardware counters, so each proxy process runs under valgrind's callgrind
//! (an instruction-counting CPU), counts are zeroed once the mesh is warm,
//! a fixed number of requests (then of new connections) is carried, and
//! the counts are dumped and summed over both proxies of the path. Two runs
//! of the same build agree to within a fraction of a percent, so a change's
//! effect shows even when it is smaller than the timing noise.
//!
//! The subjects are wrapped, not changed: each binary is replaced by a
//! small script that `exec`s valgrind on it (same pid, same arguments,
//! same environment), so every subject starts exactly as in a timed run.
//! What runs under valgrind is ~50× slower; the counts, not the times, are
//! the result. The load generator and the servers run outside valgrind.
//!
//! Beside them, system calls per request and per connection: the same
//! work again with the subject running normally and strace counting its
//! calls (the kernel's side of the cost, which callgrind does not see).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use hbone_workloads::peers::{RrSettings, rr_client, source};

use crate::runner::{RR_PORT, SINK_PORT, Sample};
use crate::subjects::{Running, Shared, Subject, SubjectError};
use crate::topology::{SERVER_IP, Topology};

/// How much work is counted.
#[derive(Debug, Clone, Copy)]
pub struct InstructionSettings {
    /// Requests on one connection (1 KiB each way).
    pub requests: u64,
    /// New connections, one 1 KiB request each.
    pub connections: u64,
    /// MiB carried by one stream, one way.
    pub bulk_mib: u64,
}

impl InstructionSettings {
    /// `--quick`: 300 requests, 30 connections, 16 MiB.
    pub fn quick() -> Self {
        InstructionSettings {
            requests: 300,
            connections: 30,
            bulk_mib: 16,
        }
    }

    /// The full counts: 3000 requests, 300 connections, 256 MiB.
    pub fn full() -> Self {
        InstructionSettings {
            requests: 3000,
            connections: 300,
            bulk_mib: 256,
        }
    }
}

fn setup<E: std::fmt::Display>(e: E) -> SubjectError {
    SubjectError::Setup(e.to_string())
}

/// A script in `dir` that runs `binary` under callgrind, with its counts
/// written to `dir/callgrind.<name>.<pid>`.
pub fn under_callgrind(binary: &Path, dir: &Path, name: &str) -> Result<PathBuf, SubjectError> {
    use std::os::unix::fs::PermissionsExt;
    if Command::new("valgrind").arg("--version").output().is_err() {
        return Err(setup(
            "instruction counts need valgrind (Debian: apt-get install valgrind)",
        ));
    }
    let script = dir.join(format!("{name}-under-callgrind"));
    let out = dir.join(format!("callgrind.{name}.%p"));
    let text = format!(
        "#!/bin/sh\nexec valgrind --tool=callgrind --quiet --callgrind-out-file={} {} \"$@\"\n",
        out.display(),
        binary.display()
    );
    std::fs::write(&script, text).map_err(setup)?;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).map_err(setup)?;
    Ok(script)
}

/// The same subject, its binary run under callgrind.
pub fn wrapped(subject: &Subject, shared: &Shared) -> Result<Subject, SubjectError> {
    let dir = shared.dir.path();
    Ok(match subject {
        Subject::Direct => Subject::Direct,
        Subject::HboneLab => {
            Subject::Baseline(under_callgrind(&shared.proxy_exe, dir, "hbone-lab")?)
        }
        Subject::Baseline(exe) => Subject::Baseline(under_callgrind(exe, dir, "baseline")?),
        Subject::Rung(_) => {
            return Err(setup(
                "instruction counts are taken of hbone-lab, a baseline and ztunnel, not of a ladder rung",
            ));
        }
        Subject::Ztunnel { binary, mode } => Subject::Ztunnel {
            binary: under_callgrind(binary, dir, "ztunnel")?,
            mode: *mode,
        },
    })
}

fn control(pid: u32, flag: &str) -> Result<String, SubjectError> {
    let out = Command::new("callgrind_control")
        .arg(flag)
        .arg(pid.to_string())
        .output()
        .map_err(|e| setup(format!("callgrind_control: {e}")))?;
    if !out.status.success() {
        return Err(setup(format!(
            "callgrind_control {flag} {pid}: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The instructions counted since the last zeroing, summed over `pids`:
/// each process dumps its counts, and the newest dump's total is read.
/// The dump is kept as `<keep>/<name>.<pid>.callgrind`, for
/// `callgrind_annotate` to show where the instructions went.
fn dump_total(pids: &[u32], dir: &Path, keep: &Path, name: &str) -> Result<u64, SubjectError> {
    let mut total = 0;
    for pid in pids {
        control(*pid, "--dump")?;
        let suffix = format!(".{pid}");
        let newest = std::fs::read_dir(dir)
            .map_err(setup)?
            .filter_map(Result::ok)
            .filter(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.starts_with("callgrind.") && name.contains(&suffix)
            })
            .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
            .ok_or_else(|| setup(format!("no callgrind dump of process {pid}")))?;
        let text = std::fs::read_to_string(newest.path()).map_err(setup)?;
        std::fs::write(keep.join(format!("{name}.{pid}.callgrind")), &text).map_err(setup)?;
        let ir = text
            .lines()
            .find_map(|l| l.strip_prefix("totals: "))
            .and_then(|t| t.split_whitespace().next()?.parse::<u64>().ok())
            .ok_or_else(|| setup(format!("{}: no totals", newest.path().display())))?;
        total += ir;
    }
    Ok(total)
}

fn zero(pids: &[u32]) -> Result<(), SubjectError> {
    for pid in pids {
        control(*pid, "--zero")?;
    }
    Ok(())
}

/// What one counted scenario carries through the path.
#[derive(Debug, Clone, Copy)]
enum Work {
    /// 1 KiB requests answered by 1 KiB, on one connection or each on a new one.
    Requests {
        count: u64,
        new_connection_each: bool,
    },
    /// One stream of this many MiB, one way, into a sink.
    Bulk { mib: u64 },
}

impl Work {
    /// How many units (requests, connections, MiB) the figure is divided by.
    fn units(self) -> u64 {
        match self {
            Work::Requests { count, .. } => count,
            Work::Bulk { mib } => mib,
        }
    }

    /// Carries the work through the path; returns the units completed.
    async fn carry(self, topology: &Topology, limit: Duration) -> std::io::Result<u64> {
        let dialer = topology.client_dialer();
        match self {
            Work::Requests {
                count,
                new_connection_each,
            } => {
                let rr = RrSettings {
                    request: 1024,
                    response: 1024,
                    rate: None,
                    max_requests: count,
                    duration: limit,
                    new_connection_each,
                };
                Ok(rr_client(&dialer, SERVER_IP, RR_PORT, &rr).await?.requests)
            }
            Work::Bulk { mib } => {
                let sent = source(&dialer, SERVER_IP, SINK_PORT, mib << 20, limit).await?;
                Ok(sent.bytes >> 20)
            }
        }
    }
}

/// One counted scenario: its name, the figures it reports (instructions,
/// then system calls, each per unit), and the work for `settings`.
struct Counted {
    scenario: &'static str,
    instructions: &'static str,
    syscalls: &'static str,
    work: Work,
}

fn scenarios(settings: InstructionSettings) -> [Counted; 3] {
    [
        Counted {
            scenario: "instructions_rr",
            instructions: "instructions_per_request",
            syscalls: "syscalls_per_request",
            work: Work::Requests {
                count: settings.requests,
                new_connection_each: false,
            },
        },
        Counted {
            scenario: "instructions_crr",
            instructions: "instructions_per_connection",
            syscalls: "syscalls_per_connection",
            work: Work::Requests {
                count: settings.connections,
                new_connection_each: true,
            },
        },
        Counted {
            scenario: "instructions_bulk",
            instructions: "instructions_per_mib",
            syscalls: "syscalls_per_mib",
            work: Work::Bulk {
                mib: settings.bulk_mib,
            },
        },
    ]
}

/// The scenarios this counts, each with its instruction figure.
pub const SCENARIOS: [(&str, &str); 3] = [
    ("instructions_rr", "instructions_per_request"),
    ("instructions_crr", "instructions_per_connection"),
    ("instructions_bulk", "instructions_per_mib"),
];

fn incomplete(done: u64, work: Work) -> SubjectError {
    setup(format!(
        "only {done} of {} units of {work:?} completed",
        work.units()
    ))
}

/// Counts one running subject (under callgrind), scenario by scenario.
pub async fn count(
    running: &Running,
    topology: &Topology,
    dir: &Path,
    settings: InstructionSettings,
    keep: (&Path, &str),
) -> Result<Vec<(&'static str, BTreeMap<String, f64>)>, SubjectError> {
    let pids = running.pids();
    let mut counted = Vec::new();
    for c in scenarios(settings) {
        zero(&pids)?;
        let done = c
            .work
            .carry(topology, Duration::from_secs(600))
            .await
            .map_err(setup)?;
        let name = format!("{}-{}", keep.1, c.scenario);
        let instructions = dump_total(&pids, dir, keep.0, &name)?;
        if done < c.work.units() {
            return Err(incomplete(done, c.work));
        }
        let per = (instructions as f64 / done as f64).round();
        counted.push((
            c.scenario,
            BTreeMap::from([(c.instructions.to_string(), per)]),
        ));
    }
    Ok(counted)
}

/// Carries `work` with strace counting the system calls of `pids` (all
/// their threads); returns the calls per unit. strace slows what it
/// traces, so only the count is kept, never a time.
async fn syscalls_per(
    pids: &[u32],
    topology: &Topology,
    work: Work,
    dir: &Path,
) -> Result<f64, SubjectError> {
    let out = dir.join("strace.txt");
    let mut strace = Command::new("strace");
    strace.args(["-f", "-c", "-qq", "-o"]).arg(&out);
    for pid in pids {
        strace.arg("-p").arg(pid.to_string());
    }
    let mut child = strace
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| setup(format!("strace (Debian: apt-get install strace): {e}")))?;
    // strace attaches to every thread before it counts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let done = work.carry(topology, Duration::from_secs(120)).await;
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
    let _ = child.wait();
    let done = done.map_err(setup)?;
    if done < work.units() {
        return Err(incomplete(done, work));
    }
    let text = std::fs::read_to_string(&out).map_err(setup)?;
    // The summary's last line: "100.00  <seconds>  <usecs/call>  <calls>  <errors>  total".
    let calls = text
        .lines()
        .find(|l| l.trim_end().ends_with("total"))
        .and_then(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            fields.get(3)?.parse::<u64>().ok()
        })
        .ok_or_else(|| setup(format!("strace gave no total:\n{text}")))?;
    Ok(calls as f64 / done as f64)
}

/// System calls per unit of a subject running normally (not under
/// valgrind), added to the counted scenarios' figures.
async fn count_syscalls(
    running: &Running,
    topology: &Topology,
    dir: &Path,
    settings: InstructionSettings,
    counted: &mut [(&'static str, BTreeMap<String, f64>)],
) -> Result<(), SubjectError> {
    let pids = running.pids();
    for ((_, figures), c) in counted.iter_mut().zip(scenarios(settings)) {
        let per = syscalls_per(&pids, topology, c.work, dir).await?;
        figures.insert(c.syscalls.to_string(), (per * 10.0).round() / 10.0);
    }
    Ok(())
}

/// Progress of the counting, a line per subject.
pub type Say<'a> = &'a mut dyn FnMut(&str);

/// Counts every mesh subject in turn (direct has no proxy to count); the
/// profiles are kept in `keep`.
pub async fn run(
    subjects: &[Subject],
    topology: &Topology,
    shared: &Shared,
    settings: InstructionSettings,
    keep: &Path,
    say: Say<'_>,
) -> Result<Vec<Sample>, SubjectError> {
    std::fs::create_dir_all(keep).map_err(setup)?;
    let listener = topology.server_listener(RR_PORT).map_err(setup)?;
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let server = tokio::spawn(hbone_workloads::peers::rr_server_counting(
        listener, 1024, 1024, accepted,
    ));
    let sink_listener = topology.server_listener(SINK_PORT).map_err(setup)?;
    let sink = tokio::spawn(hbone_workloads::peers::sink(
        sink_listener,
        std::sync::Arc::default(),
    ));
    let mut samples = Vec::new();
    for subject in subjects.iter().filter(|s| **s != Subject::Direct) {
        say(&format!(
            "{}: starting under callgrind (slow) and counting {} requests, then {} new connections, then {} MiB",
            subject.name(),
            settings.requests,
            settings.connections,
            settings.bulk_mib
        ));
        let counted = wrapped(subject, shared)?;
        let running = crate::runner::start_warm(&counted, topology, shared).await?;
        let profiles = (keep, subject.name());
        let counted = count(&running, topology, shared.dir.path(), settings, profiles).await;
        running.stop();
        let mut counted = counted?;
        say(&format!(
            "{}: counting system calls (strace)",
            subject.name()
        ));
        let running = crate::runner::start_warm(subject, topology, shared).await?;
        let traced = count_syscalls(
            &running,
            topology,
            shared.dir.path(),
            settings,
            &mut counted,
        )
        .await;
        running.stop();
        traced?;
        for (scenario, figures) in counted {
            samples.push(Sample {
                subject: subject.name().into(),
                scenario: scenario.into(),
                repetition: 0,
                figures,
            });
        }
    }
    server.abort();
    sink.abort();
    let _ = topology.capture(false);
    Ok(samples)
}
