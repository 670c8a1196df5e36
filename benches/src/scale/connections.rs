//! `scale_connections`: N concurrent idle proxied connections through one
//! proxy pair — what each costs in memory, and how long a policy change
//! takes to judge all of them again.
//!
//! Both proxies must hold N sockets each (and the bench 2 N: the clients
//! and the server), so the bench raises its file-descriptor limit first
//! (the proxies inherit it) and says which limit to raise when it cannot.
//! Memory per connection is the growth of both proxies' RSS once all N
//! have reached the server, divided by N. Then a DENY of the client is
//! served over xDS to both proxies at one instant, and `rejudge_ms` is the
//! time until the last of the N connections has been closed: the change
//! arriving, every open stream judged again, and each denied one torn down.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use tokio::io::AsyncReadExt as _;

use super::{Sizes, setup};
use crate::runner::{RR_PORT, Sample, wait_until_accepted, warm_up};
use crate::subjects::{
    BENCH_POLICIES, Running, Shared, Subject, SubjectError, rss_bytes, start_fed_by_xds,
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

/// Raises this process's file-descriptor limit (children inherit it) to
/// hold `connections` through the mesh.
pub fn raise_fd_limit(connections: usize) -> Result<(), SubjectError> {
    let needed = (3 * connections + 4096) as u64;
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(setup)?;
    if soft >= needed {
        return Ok(());
    }
    setrlimit(Resource::RLIMIT_NOFILE, needed, hard.max(needed)).map_err(|e| {
        setup(format!(
            "{connections} open connections need {needed} file descriptors, the limit is {soft} (hard {hard}) and could not be raised: {e}; run as root, or raise it first (ulimit -n {needed})"
        ))
    })
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
    accepted: &AtomicU64,
) -> Result<BTreeMap<String, f64>, SubjectError> {
    let running = start_fed_by_xds(subject, topology, shared).await?;
    let running: Running = warm_up(running, subject, topology).await?;
    let pids = running.pids();
    let before = rss_bytes(&pids);
    let reached = accepted.load(std::sync::atomic::Ordering::Relaxed);
    let held = open_idle(topology, n).await?;
    wait_until_accepted(accepted, reached, n as u64)
        .await
        .map_err(setup)?;
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
    let listener = topology.server_listener(RR_PORT).map_err(setup)?;
    let accepted = Arc::new(AtomicU64::new(0));
    let server = tokio::spawn(hbone_workloads::peers::rr_server_counting(
        listener,
        1024,
        1024,
        accepted.clone(),
    ));
    let mut samples = Vec::new();
    let mut outcome = Ok(());
    'curve: for &n in &sizes.connections {
        for subject in subjects.iter().filter(|s| **s != Subject::Direct) {
            say(&format!(
                "{}: {n} idle connections, then a DENY",
                subject.name()
            ));
            let measured = measure_one(subject, topology, shared, n, &accepted).await;
            let restored = shared.set_policies(BENCH_POLICIES);
            match measured.and_then(|f| restored.map(|()| f)) {
                Ok(figures) => samples.push(Sample {
                    subject: subject.name().into(),
                    scenario: "scale_connections".into(),
                    repetition: 0,
                    figures,
                }),
                Err(e) => {
                    outcome = Err(e);
                    break 'curve;
                }
            }
        }
    }
    server.abort();
    outcome.map(|()| samples)
}
