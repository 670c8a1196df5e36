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

use hbone_workloads::peers::{RrSettings, rr_client};

use crate::runner::{RR_PORT, Sample};
use crate::subjects::{Running, Shared, Subject, SubjectError};
use crate::topology::{SERVER_IP, Topology};

/// How much work is counted.
#[derive(Debug, Clone, Copy)]
pub struct InstructionSettings {
    /// Requests on one connection (1 KiB each way).
    pub requests: u64,
    /// New connections, one 1 KiB request each.
    pub connections: u64,
}

impl InstructionSettings {
    pub fn quick() -> Self {
        InstructionSettings {
            requests: 300,
            connections: 30,
        }
    }

    pub fn full() -> Self {
        InstructionSettings {
            requests: 3000,
            connections: 300,
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

/// The scenarios this counts, each with its figure: instructions (both
/// proxies together) per request on one connection, and per new connection.
pub const SCENARIOS: [(&str, &str); 2] = [
    ("instructions_rr", "instructions_per_request"),
    ("instructions_crr", "instructions_per_connection"),
];

/// Counts one running subject, scenario by scenario.
pub async fn count(
    running: &Running,
    topology: &Topology,
    dir: &Path,
    settings: InstructionSettings,
    keep: (&Path, &str),
) -> Result<Vec<(&'static str, BTreeMap<String, f64>)>, SubjectError> {
    let pids = running.pids();
    let dialer = topology.client_dialer();
    let mut counted = Vec::new();
    for ((scenario, key), (count, new_connection_each)) in SCENARIOS
        .into_iter()
        .zip([(settings.requests, false), (settings.connections, true)])
    {
        let rr = RrSettings {
            request: 1024,
            response: 1024,
            rate: None,
            max_requests: count,
            duration: Duration::from_secs(600),
            new_connection_each,
        };
        zero(&pids)?;
        let done = rr_client(&dialer, SERVER_IP, RR_PORT, &rr)
            .await
            .map_err(setup)?;
        let name = format!("{}-{scenario}", keep.1);
        let instructions = dump_total(&pids, dir, keep.0, &name)?;
        if done.requests < count {
            return Err(setup(format!(
                "only {} of {count} requests completed under callgrind",
                done.requests
            )));
        }
        let per = (instructions as f64 / count as f64).round();
        counted.push((scenario, BTreeMap::from([(key.to_string(), per)])));
    }
    Ok(counted)
}

/// Runs `rr` with strace counting the system calls of `pids` (all their
/// threads); returns the calls per request. strace slows what it traces,
/// so only the count is kept, never a time.
async fn syscalls_per(
    pids: &[u32],
    topology: &Topology,
    rr: &RrSettings,
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
    let done = rr_client(&topology.client_dialer(), SERVER_IP, RR_PORT, rr).await;
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
    let _ = child.wait();
    let done = done.map_err(setup)?;
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
    Ok(calls as f64 / done.requests.max(1) as f64)
}

/// System calls per request and per connection of a subject running
/// normally (not under valgrind), added to the counted scenarios' figures.
async fn count_syscalls(
    running: &Running,
    topology: &Topology,
    dir: &Path,
    settings: InstructionSettings,
    counted: &mut [(&'static str, BTreeMap<String, f64>)],
) -> Result<(), SubjectError> {
    let pids = running.pids();
    for ((_, figures), (count, new_connection_each, key)) in counted.iter_mut().zip([
        (settings.requests, false, "syscalls_per_request"),
        (settings.connections, true, "syscalls_per_connection"),
    ]) {
        let rr = RrSettings {
            request: 1024,
            response: 1024,
            rate: None,
            max_requests: count,
            duration: Duration::from_secs(120),
            new_connection_each,
        };
        let per = syscalls_per(&pids, topology, &rr, dir).await?;
        figures.insert(key.to_string(), (per * 10.0).round() / 10.0);
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
    let mut samples = Vec::new();
    for subject in subjects.iter().filter(|s| **s != Subject::Direct) {
        say(&format!(
            "{}: starting under callgrind (slow) and counting {} requests, then {} new connections",
            subject.name(),
            settings.requests,
            settings.connections
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
    let _ = topology.capture(false);
    Ok(samples)
}
