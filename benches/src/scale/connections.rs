//! `scale_connections`: N concurrent idle proxied connections through one
//! proxy pair — what each costs in memory, and how long a policy change
//! takes to judge all of them again.
//!
//! Each proxy holds N sockets, the bench the N client ends, and the server
//! (a process of its own, `hbone-lab app rr-server` in the server pod) the
//! N server ends; so no process needs more than N and a few, and the bench
//! raises its soft file-descriptor limit (the others inherit it), saying
//! which limit to raise when it cannot. Memory per connection is the
//! growth of both proxies' RSS once all N have reached the server (the
//! server holds N more sockets), divided by N. Then a DENY of the client is
//! served over xDS to both proxies at one instant, and `rejudge_ms` is the
//! time until the last of the N connections has been closed: the change
//! arriving, every open stream judged again, and each denied one torn down.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use tokio::io::AsyncReadExt as _;

use super::{Killed, Sizes, setup};
use crate::proc_stats::rss_bytes;
use crate::runner::{RR_PORT, Sample, warm_up};
use crate::subjects::{
    BENCH_POLICIES, Running, Shared, Subject, SubjectError, log_to, start_fed_by_xds,
};
use crate::topology::{SERVER_IP, Topology};

/// How long the last connection may take to be closed after the change.
const REJUDGE_LIMIT: Duration = Duration::from_secs(60);
/// Connections opened at once while filling up.
const OPENING: usize = 64;

/// The bench's policies and a DENY of the client on top, for the whole
/// namespace (no selector). A DENY that selects the server by label would
/// do for hbone-lab, but not for ztunnel: ztunnel judges an open connection
/// again against the destination workload as it was when the connection
/// opened, and a selector's policies are listed on the workload (istiod
/// names them there), so a new selected policy never reaches connections
/// already open. Namespace-wide policies are looked up afresh.
fn deny_client() -> String {
    format!(
        "{BENCH_POLICIES}---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: deny-client, namespace: bench}}\nspec:\n  action: DENY\n  rules: [{{from: [{{source: {{principals: [cluster.local/ns/bench/sa/client]}}}}]}}]\n"
    )
}

/// Raises this process's soft file-descriptor limit (children inherit it)
/// so each process can hold `connections` sockets and some to spare.
pub fn raise_fd_limit(connections: usize) -> Result<(), SubjectError> {
    let needed = (connections + 4096) as u64;
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(setup)?;
    if soft >= needed {
        return Ok(());
    }
    let refused = |why: String| {
        setup(format!(
            "{connections} open connections need {needed} file descriptors per process; the limit is {soft} (hard {hard}): {why}; raise the hard limit first (as root: ulimit -Hn {needed})"
        ))
    };
    if hard < needed {
        return Err(refused("the hard limit is too low".into()));
    }
    setrlimit(Resource::RLIMIT_NOFILE, needed, hard).map_err(|e| refused(e.to_string()))
}

/// The request/response server in the server pod, a process of its own.
fn spawn_server(shared: &Shared, topology: &Topology) -> Result<Killed, SubjectError> {
    let log = shared.dir.path().join("scale-rr-server.log");
    let (out, err) = log_to(&log)?;
    let exe = shared.proxy_exe.to_str().unwrap_or("hbone-lab");
    let child = topology
        .server
        .command(exe)
        .args(["app", "rr-server", "--listen"])
        .arg(format!("{SERVER_IP}:{RR_PORT}"))
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| setup(format!("starting the rr server: {e}")))?;
    Ok(Killed(child))
}

/// Open file descriptors of `pid` (its sockets, here).
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

/// The server's descriptor count once it has stopped changing (the
/// warm-up's connections are closed by then), or after 5 s.
async fn settled_fds(pid: u32) -> usize {
    let mut last = open_fds(pid);
    let mut same = 0;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = open_fds(pid);
        same = if now == last { same + 1 } else { 0 };
        last = now;
        if same == 3 {
            break;
        }
    }
    last
}

/// Waits until the server holds `n` more descriptors than `base`.
async fn wait_held(pid: u32, base: usize, n: usize) -> Result<(), SubjectError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let held = open_fds(pid).saturating_sub(base);
        if held >= n {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(setup(format!(
                "only {held} of {n} idle connections reached the server within 30 s"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Opens `n` connections to the server through the mesh.
async fn open_idle(
    topology: &Topology,
    n: usize,
) -> Result<Vec<tokio::net::TcpStream>, SubjectError> {
    let dialer = topology.client_dialer();
    let opened: Vec<_> = futures::stream::iter(0..n)
        .map(|_| dialer.connect(SERVER_IP, RR_PORT))
        .buffer_unordered(OPENING)
        .collect()
        .await;
    let total = opened.len();
    let mut held = Vec::with_capacity(total);
    for (i, c) in opened.into_iter().enumerate() {
        held.push(c.map_err(|e| setup(format!("connection {i} of {total}: {e}")))?);
    }
    Ok(held)
}

/// Serves the change, then waits for every connection to be closed; the
/// milliseconds until the last one, and how many were closed.
async fn time_rejudge(
    shared: &mut Shared,
    held: Vec<tokio::net::TcpStream>,
) -> Result<(f64, usize), SubjectError> {
    let n = held.len();
    let (closed_tx, mut closed) = tokio::sync::mpsc::unbounded_channel();
    for mut stream in held {
        let closed_tx = closed_tx.clone();
        tokio::spawn(async move {
            let mut byte = [0u8; 1];
            let _ = stream.read(&mut byte).await;
            let _ = closed_tx.send(Instant::now());
        });
    }
    drop(closed_tx);
    // Every reader is waiting before the change is served.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let changed = Instant::now();
    shared.set_policies(&deny_client())?;
    let mut count = 0;
    let mut last = changed;
    let deadline = tokio::time::Instant::now() + REJUDGE_LIMIT;
    while count < n {
        match tokio::time::timeout_at(deadline, closed.recv()).await {
            Ok(Some(at)) => {
                count += 1;
                last = last.max(at);
            }
            Ok(None) | Err(_) => break,
        }
    }
    Ok((last.duration_since(changed).as_secs_f64() * 1000.0, count))
}

async fn measure_one(
    subject: &Subject,
    topology: &Topology,
    shared: &mut Shared,
    n: usize,
    server: u32,
) -> Result<BTreeMap<String, f64>, SubjectError> {
    let running = start_fed_by_xds(subject, topology, shared).await?;
    let running: Running = warm_up(running, subject, topology).await?;
    let pids = running.pids();
    let before = rss_bytes(&pids);
    let base = settled_fds(server).await;
    let held = open_idle(topology, n).await?;
    wait_held(server, base, n).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_bytes(&pids);
    let (rejudge_ms, closed) = time_rejudge(shared, held).await?;
    running.stop();
    let mut figures = BTreeMap::from([
        ("connections".to_string(), n as f64),
        (
            "bytes_per_conn".to_string(),
            (after.saturating_sub(before) as f64 / n as f64).round(),
        ),
        ("closed_by_change".to_string(), closed as f64),
    ]);
    if closed == n {
        figures.insert("rejudge_ms".to_string(), (rejudge_ms * 10.0).round() / 10.0);
    }
    Ok(figures)
}

/// One row per subject and size. The bench's own policies are put back
/// after each measurement, whatever happened.
pub async fn connections(
    subjects: &[Subject],
    topology: &Topology,
    shared: &mut Shared,
    sizes: &Sizes,
    say: &mut dyn FnMut(&str),
) -> Result<Vec<Sample>, SubjectError> {
    raise_fd_limit(sizes.connections.iter().copied().max().unwrap_or(0))?;
    let server = spawn_server(shared, topology)?;
    wait_listening(&server, topology).await?;
    let server_pid = server.0.id();
    let mut samples = Vec::new();
    for &n in &sizes.connections {
        for subject in subjects.iter().filter(|s| **s != Subject::Direct) {
            say(&format!(
                "{}: {n} idle connections, then a DENY",
                subject.name()
            ));
            let measured = measure_one(subject, topology, shared, n, server_pid).await;
            let restored = shared.set_policies(BENCH_POLICIES);
            let figures = measured?;
            restored?;
            samples.push(super::row(subject, "scale_connections", figures));
        }
    }
    drop(server);
    Ok(samples)
}

/// Waits until the server answers a connection made in its own pod.
async fn wait_listening(server: &Killed, topology: &Topology) -> Result<(), SubjectError> {
    let addr = std::net::SocketAddr::new(topology.server_ip(), RR_PORT);
    let netns = topology.server.sockets();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let socket = hbone_proxy::net::pod_sockets::tcp_socket(Some(netns), addr, None, None)
            .map_err(setup)?;
        if socket.connect(addr).await.is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(setup(format!(
                "the rr server (pid {}) does not listen on {addr}",
                server.0.id()
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
