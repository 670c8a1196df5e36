//! Running the comparison: every scenario for every subject, interleaved
//! (direct, hbone-lab, ztunnel, direct, …) so drift on a shared machine hits
//! all subjects alike, then medians and ratios measured in the same run.
//! The servers, the warm start and the bounded measurement here are shared
//! with the rate sweep ([`crate::sweep`]), which interleaves the same way.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hbone_workloads::peers::{RrResult, RrSettings, rr_client, rr_server_counting, sink, source};

use crate::proc_stats::{context_switches, cpu_seconds, rss_bytes};
use crate::scaling;
use crate::subjects::{Running, Shared, Subject, SubjectError, start};
use crate::topology::{SERVER_IP, Topology};

/// The server pod's sink (throughput scenarios).
pub const SINK_PORT: u16 = 5201;
/// The server pod's request/response server.
pub const RR_PORT: u16 = 5202;

/// How long and how often.
#[derive(Debug, Clone)]
pub struct BenchSettings {
    /// Seconds per measurement.
    pub seconds: f64,
    /// Measurements per subject and scenario (their median is reported).
    pub repetitions: usize,
    /// Streams of the parallel throughput scenario.
    pub parallel_streams: usize,
    /// Idle connections held open for the memory scenario.
    pub idle_connections: usize,
}

impl BenchSettings {
    /// `--quick`: 1 s, one repetition.
    pub fn quick() -> Self {
        BenchSettings {
            seconds: 1.0,
            repetitions: 1,
            parallel_streams: 4,
            // Fewer and the RSS delta drowns in allocator noise.
            idle_connections: 400,
        }
    }

    /// The full run: 5 s, three repetitions.
    pub fn full() -> Self {
        BenchSettings {
            seconds: 5.0,
            repetitions: 3,
            parallel_streams: 4,
            idle_connections: 1000,
        }
    }
}

use crate::figures::median;
pub use crate::figures::{Sample, Summary};

/// Every timed scenario, in the order they run.
pub const SCENARIOS: &[&str] = &[
    "throughput_1",
    "throughput_n",
    "rr_unthrottled",
    "rr_1000",
    "crr",
    "idle_memory",
    "idle_memory_used",
];

/// What the cost ladder reports for each rung: throughput, requests/s,
/// p99 at a fixed rate, connections/s.
pub const LADDER_SCENARIOS: &[&str] = &["throughput_1", "rr_unthrottled", "rr_1000", "crr"];

/// What each connection of `idle_memory_used` carries before it idles.
const USED_BYTES: usize = 256 * 1024;
/// How long `idle_memory_used` waits after the transfer: past jemalloc's
/// decay (10 s), so memory the allocator would give back is given back.
const DECAY: Duration = Duration::from_secs(12);

fn figure(map: &mut BTreeMap<String, f64>, key: &str, value: f64) {
    map.insert(key.into(), (value * 1000.0).round() / 1000.0);
}

async fn measure(
    scenario: &str,
    topology: &Topology,
    running: &Running,
    s: &BenchSettings,
    accepted: &AtomicU64,
    sunk: &AtomicU64,
) -> std::io::Result<BTreeMap<String, f64>> {
    let dialer = topology.client_dialer();
    let host = SERVER_IP;
    let time = Duration::from_secs_f64(s.seconds);
    let mut f = BTreeMap::new();
    match scenario {
        _ if streams(scenario, s).is_some() => {
            let streams = streams(scenario, s).unwrap_or(1);
            let cpu_before = cpu_seconds(&running.pids());
            let runs = (0..streams).map(|_| source(&dialer, host, SINK_PORT, u64::MAX, time));
            let results = futures::future::join_all(runs).await;
            let mut bytes = 0u64;
            let mut secs: f64 = 0.0;
            for r in results {
                let r = r?;
                bytes += r.bytes;
                secs = secs.max(r.seconds);
            }
            let cpu = cpu_seconds(&running.pids()) - cpu_before;
            figure(&mut f, "throughput_gbps", bytes as f64 * 8.0 / secs / 1e9);
            if !running.pids().is_empty() {
                figure(
                    &mut f,
                    "proxy_cpu_s_per_gib",
                    cpu / (bytes as f64 / (1u64 << 30) as f64),
                );
            }
        }
        _ if rr_loops(scenario).is_some() => {
            let new_connection_each = scenario == "crr" || scenario.starts_with("crr_x");
            let settings = RrSettings {
                request: 1024,
                response: 1024,
                rate: (scenario == "rr_1000").then_some(1000.0),
                max_requests: 10_000_000,
                duration: time,
                new_connection_each,
            };
            let loops = rr_loops(scenario).unwrap_or(1);
            let pids = running.pids();
            let switches_before = context_switches(&pids);
            let clients = (0..loops).map(|_| rr_client(&dialer, host, RR_PORT, &settings));
            let r = merge_loops(futures::future::join_all(clients).await)?;
            let switches = context_switches(&pids) - switches_before;
            let rate_key = if new_connection_each {
                "conn_per_s"
            } else {
                "rps"
            };
            if !pids.is_empty() && r.requests > 0 {
                // Both proxies' threads, per request (per connection for crr).
                figure(
                    &mut f,
                    "context_switches_per_request",
                    switches as f64 / r.requests as f64,
                );
            }
            figure(&mut f, rate_key, r.per_second);
            figure(&mut f, "p50_ms", r.latency.p50_ms);
            figure(&mut f, "p90_ms", r.latency.p90_ms);
            figure(&mut f, "p99_ms", r.latency.p99_ms);
            figure(&mut f, "p999_ms", r.latency.p999_ms);
        }
        "idle_memory" => {
            let pids = running.pids();
            let before = rss_bytes(&pids);
            let reached = accepted.load(Ordering::Relaxed);
            let mut held = Vec::new();
            for _ in 0..s.idle_connections {
                held.push(
                    dialer
                        .connect(host, RR_PORT)
                        .await
                        .map_err(std::io::Error::other)?,
                );
            }
            wait_until_accepted(accepted, reached, s.idle_connections as u64).await?;
            tokio::time::sleep(Duration::from_millis(300)).await;
            let after = rss_bytes(&pids);
            drop(held);
            if !pids.is_empty() {
                figure(
                    &mut f,
                    "bytes_per_idle_conn",
                    after.saturating_sub(before) as f64 / s.idle_connections as f64,
                );
            }
        }
        "idle_memory_used" => {
            // Used, then idle: each connection first carries a bulk
            // transfer (through the relay's large buffers), then waits.
            use tokio::io::AsyncWriteExt;
            let pids = running.pids();
            let before = rss_bytes(&pids);
            let sunk_before = sunk.load(Ordering::Relaxed);
            let payload = vec![0x5a_u8; USED_BYTES];
            let mut held = Vec::new();
            for _ in 0..s.idle_connections {
                let mut tcp = dialer
                    .connect(host, SINK_PORT)
                    .await
                    .map_err(std::io::Error::other)?;
                tcp.write_all(&payload).await?;
                held.push(tcp);
            }
            let want = (s.idle_connections * USED_BYTES) as u64;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while sunk.load(Ordering::Relaxed) - sunk_before < want {
                if tokio::time::Instant::now() >= deadline {
                    return Err(std::io::Error::other(
                        "the used connections' bytes did not all arrive within 30 s",
                    ));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tokio::time::sleep(DECAY).await;
            let after = rss_bytes(&pids);
            drop(held);
            if !pids.is_empty() {
                figure(
                    &mut f,
                    "bytes_per_used_idle_conn",
                    after.saturating_sub(before) as f64 / s.idle_connections as f64,
                );
            }
        }
        other => return Err(std::io::Error::other(format!("unknown scenario {other}"))),
    }
    Ok(f)
}

/// How many parallel streams a throughput scenario runs: one, the
/// settings' `parallel_streams`, or a scaling point's `N` (`throughput_xN`);
/// `None` for any other scenario.
fn streams(scenario: &str, s: &BenchSettings) -> Option<usize> {
    match scenario {
        "throughput_1" => Some(1),
        "throughput_n" => Some(s.parallel_streams),
        _ => scaling::parallelism(scenario, scaling::Kind::Throughput),
    }
}

/// How many request/response loops run at once: one for the classic
/// scenarios, `N` for a scaling point (`crr_xN`); `None` for any other.
fn rr_loops(scenario: &str) -> Option<usize> {
    match scenario {
        "rr_unthrottled" | "rr_1000" | "crr" => Some(1),
        _ => scaling::parallelism(scenario, scaling::Kind::Crr),
    }
}

/// Parallel request/response loops as one: their rates and counts added,
/// each percentile the worst loop's (a bound, not an exact merged quantile).
fn merge_loops(results: Vec<std::io::Result<RrResult>>) -> std::io::Result<RrResult> {
    let mut merged: Option<RrResult> = None;
    for r in results {
        let r = r?;
        merged = Some(match merged {
            None => r,
            Some(mut m) => {
                m.requests += r.requests;
                m.per_second += r.per_second;
                m.latency.p50_ms = m.latency.p50_ms.max(r.latency.p50_ms);
                m.latency.p90_ms = m.latency.p90_ms.max(r.latency.p90_ms);
                m.latency.p99_ms = m.latency.p99_ms.max(r.latency.p99_ms);
                m.latency.p999_ms = m.latency.p999_ms.max(r.latency.p999_ms);
                m
            }
        });
    }
    merged.ok_or_else(|| std::io::Error::other("no request/response loop ran"))
}

/// Waits until `count` connections beyond `since` have reached the server:
/// a proxy may accept a connection before its tunnel is open, and memory is
/// only comparable once every connection exists end to end.
async fn wait_until_accepted(accepted: &AtomicU64, since: u64, count: u64) -> std::io::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let arrived = accepted.load(Ordering::Relaxed).saturating_sub(since);
        if arrived >= count {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(std::io::Error::other(format!(
                "only {arrived} of {count} idle connections reached the server within 20 s"
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts a subject and sends a little traffic through it, so certificates
/// are fetched and connections pooled before anything is measured.
pub(crate) async fn start_warm(
    subject: &Subject,
    topology: &Topology,
    shared: &Shared,
) -> Result<Running, SubjectError> {
    let running = start(subject, topology, shared).await?;
    warm_up(running, subject, topology).await
}

/// Sends a little traffic through a started subject: certificates are
/// fetched and connections pooled on first use, not while measuring.
pub(crate) async fn warm_up(
    running: Running,
    subject: &Subject,
    topology: &Topology,
) -> Result<Running, SubjectError> {
    let warm = RrSettings {
        request: 1024,
        response: 1024,
        rate: None,
        max_requests: 20,
        duration: Duration::from_secs(5),
        new_connection_each: true,
    };
    let dialer = topology.client_dialer();
    let warm_up = rr_client(&dialer, SERVER_IP, RR_PORT, &warm);
    match tokio::time::timeout(Duration::from_secs(30), warm_up).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            return Err(SubjectError::Setup(format!(
                "{} does not carry traffic: {e}",
                subject.name()
            )));
        }
        Err(_) => {
            return Err(SubjectError::Setup(format!(
                "{} carried no traffic within 30 s",
                subject.name()
            )));
        }
    }
    Ok(running)
}

/// Progress of a run, for a progress bar.
pub trait Progress {
    /// `done` of `total` steps are done; `what` runs next.
    fn step(&mut self, done: usize, total: usize, what: &str);
}

/// The server pod's peers every timed scenario talks to — the sink and the
/// request/response server — with what they counted; stopped when dropped.
///
/// They run on a runtime of their own, on a thread of their own, as a
/// server in another process would: in the load generator's runtime, a
/// request and its answer could be handled by one worker without a
/// wake-up in between, and the direct path measured a floor no real
/// client sees (fortio disagreed with it by 1.17× on requests per second).
pub(crate) struct Servers {
    /// Bytes the sink has read.
    pub(crate) sunk: Arc<AtomicU64>,
    /// Connections the request/response server has accepted.
    pub(crate) accepted: Arc<AtomicU64>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Servers {
    /// Listens in the server pod on [`SINK_PORT`] and [`RR_PORT`] (1 KiB
    /// requests and responses).
    pub(crate) fn start(topology: &Topology) -> Result<Servers, SubjectError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("bench-servers")
            .enable_all()
            .build()
            .map_err(|e| SubjectError::Setup(format!("the servers' runtime: {e}")))?;
        let servers = Servers {
            sunk: Arc::new(AtomicU64::new(0)),
            accepted: Arc::new(AtomicU64::new(0)),
            runtime: Some(runtime),
        };
        let sink_listener = servers.listen(topology, SINK_PORT)?;
        let rr_listener = servers.listen(topology, RR_PORT)?;
        servers.spawn(sink(sink_listener, servers.sunk.clone()));
        servers.spawn(rr_server_counting(
            rr_listener,
            1024,
            1024,
            servers.accepted.clone(),
        ));
        Ok(servers)
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime.as_ref().expect("held until dropped")
    }

    /// A listener in the server pod on `port`, served by the servers' runtime.
    pub(crate) fn listen(
        &self,
        topology: &Topology,
        port: u16,
    ) -> Result<tokio::net::TcpListener, SubjectError> {
        let _inside = self.runtime().enter();
        topology
            .server_listener(port)
            .map_err(|e| SubjectError::Setup(format!("a server on {port}: {e}")))
    }

    /// Runs `server` on the servers' runtime until they are dropped.
    pub(crate) fn spawn<F>(&self, server: F)
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.runtime().spawn(server);
    }

    /// One measurement of `scenario` through the started `subject`, its
    /// figures by name (`rps`, `p50_ms`, …), given at most three times its
    /// length and 30 s more. The fortio cross-check ([`crate::fortio`])
    /// takes its own-generator figures from here too: the very figures
    /// this run reports.
    pub(crate) async fn measure(
        &self,
        scenario: &str,
        subject: &Subject,
        running: &Running,
        topology: &Topology,
        settings: &BenchSettings,
    ) -> Result<BTreeMap<String, f64>, SubjectError> {
        let limit = Duration::from_secs_f64(settings.seconds * 3.0 + 30.0);
        let measuring = measure(
            scenario,
            topology,
            running,
            settings,
            &self.accepted,
            &self.sunk,
        );
        bounded(subject, scenario, limit, measuring).await
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        // Dropped from async code, where blocking on the tasks is not allowed.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// One measurement of `subject` given at most `limit`: a stall or a
/// failure becomes an error naming the subject and `what` was measured.
pub(crate) async fn bounded<T, E: std::fmt::Display>(
    subject: &Subject,
    what: &str,
    limit: Duration,
    measuring: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, SubjectError> {
    let name = subject.name();
    tokio::time::timeout(limit, measuring)
        .await
        .map_err(|_| SubjectError::Setup(format!("{name} {what}: stalled for {limit:?}")))?
        .map_err(|e| SubjectError::Setup(format!("{name} {what}: {e}")))
}

/// Runs the whole comparison.
pub async fn run(
    subjects: &[Subject],
    scenarios: &[&str],
    settings: &BenchSettings,
    topology: &Topology,
    shared: &Shared,
    progress: &mut dyn Progress,
) -> Result<Vec<Sample>, SubjectError> {
    let servers = Servers::start(topology)?;
    let total = subjects.len() * scenarios.len() * settings.repetitions;
    let mut done = 0;
    let mut samples = Vec::new();
    for repetition in 0..settings.repetitions {
        for subject in subjects {
            let mut running = start_warm(subject, topology, shared).await?;
            for (index, scenario) in scenarios.iter().enumerate() {
                if scenario.starts_with("idle_memory") && index > 0 {
                    // A fresh process: memory freed by the earlier scenarios and
                    // kept by the allocator would otherwise absorb the new connections.
                    running.stop();
                    running = start_warm(subject, topology, shared).await?;
                }
                progress.step(
                    done,
                    total,
                    &format!(
                        "{} · {scenario} · repetition {}",
                        subject.name(),
                        repetition + 1
                    ),
                );
                let figures = servers
                    .measure(scenario, subject, &running, topology, settings)
                    .await?;
                samples.push(Sample {
                    subject: subject.name().into(),
                    scenario: scenario.to_string(),
                    repetition,
                    figures,
                });
                done += 1;
            }
            running.stop();
        }
    }
    progress.step(total, total, "done");
    drop(servers);
    let _ = topology.capture(false);
    Ok(samples)
}

/// Medians per subject × scenario, and ratios measured in the same run.
pub fn summarize(samples: &[Sample]) -> Vec<Summary> {
    let mut groups: BTreeMap<(String, String), BTreeMap<String, Vec<f64>>> = BTreeMap::new();
    let mut order: Vec<(String, String)> = Vec::new();
    for s in samples {
        let key = (s.scenario.clone(), s.subject.clone());
        if !order.contains(&key) {
            order.push(key.clone());
        }
        let g = groups.entry(key).or_default();
        for (k, v) in &s.figures {
            g.entry(k.clone()).or_default().push(*v);
        }
    }
    let medians: BTreeMap<(String, String), BTreeMap<String, f64>> = groups
        .into_iter()
        .map(|(k, g)| (k, g.into_iter().map(|(f, v)| (f, median(v))).collect()))
        .collect();
    order
        .into_iter()
        .map(|(scenario, subject)| {
            let figures = medians[&(scenario.clone(), subject.clone())].clone();
            let ratio = |against: &str| -> BTreeMap<String, f64> {
                let Some(base) = medians.get(&(scenario.clone(), against.to_string())) else {
                    return BTreeMap::new();
                };
                figures
                    .iter()
                    .filter_map(|(k, v)| {
                        base.get(k)
                            .filter(|b| **b != 0.0)
                            .map(|b| (k.clone(), (v / b * 100.0).round() / 100.0))
                    })
                    .collect()
            };
            Summary {
                ratio_vs_direct: if subject == "direct" {
                    BTreeMap::new()
                } else {
                    ratio("direct")
                },
                ratio_vs_ztunnel: if subject == "ztunnel" {
                    BTreeMap::new()
                } else {
                    ratio("ztunnel")
                },
                subject,
                scenario,
                figures,
            }
        })
        .collect()
}
