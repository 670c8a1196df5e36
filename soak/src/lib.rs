//! `hbone-lab soak`: faults under load, and nothing lost.
//!
//! On the benchmark's two-pod path (client pod on node-c, server pod on
//! node-s, each node with its own hbone-lab proxy process, pods handed over
//! by a node agent as istio-cni does), client loops carry byte-checked
//! payloads to an echo server while [`schedule`] stops the CA, hands the
//! server-side proxy over to a new process, kills and restarts it, and
//! applies a DENY policy; certificates are short-lived throughout, so they
//! rotate on both sides. The [`report`] says what failed, when and why, and
//! whether any byte came back wrong.
//!
//! The hand-over is the one ztunnel promises for its own upgrades: the new
//! process binds the pod's listeners with SO_REUSEPORT while the old still
//! listens (with `net.ipv4.tcp_migrate_req` set in the pod, so connections
//! queued on the old listener move over), the old one sends GOAWAY and
//! drains, and the client side sends a stream the old one did not take
//! again on a fresh connection.

#![forbid(unsafe_code)]

pub mod churn;
pub mod load;
pub mod report;
pub mod schedule;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hbone_ca::metrics::CaMetrics;
use hbone_ca::server::{CaService, RunningCa, ServerError, serve_listener};
use hbone_ca::tokens::TokenFile;
use hbone_ca::{AuthorityConfig, SigningAuthority};
use hbone_harness::netns::NetnsError;
use hbone_harness::ztunnel::http_get;
use hbone_proxy::registry::Registry;
use hbone_standalone::lab::dataplane::node_pods;
use hbone_workloads::peers::echo;
use hbone_xds::zds::{NodeAgent, ZdsError};
use thiserror::Error;
use tokio::time::Instant;

use churn::samples::open_fds;
use hbone_bench::proc_stats::rss_bytes;
use hbone_bench::subjects::{
    BENCH_POLICIES, SubjectError, TOKEN, own_loopback, registry_yaml, spawn_proxy, wait_http_ready,
};
use hbone_bench::topology::{SERVER_IP, Topology};
use load::{LoadSettings, Tally};
use report::{FaultRecord, ProxyPeak, SoakReport, summarize_failures};
use schedule::{Fault, Window, Windows, faults};

/// The echo server's port in the server pod.
pub const ECHO_PORT: u16 = 5203;

#[derive(Debug, Error)]
/// Why the soak could not run.
pub enum SoakError {
    #[error("network namespaces: {0}")]
    /// A namespace or veth could not be made.
    Netns(#[from] NetnsError),
    #[error("the CA: {0}")]
    /// The CA could not be served.
    Ca(#[from] ServerError),
    #[error("the node agent: {0}")]
    /// The node agent failed.
    Zds(#[from] ZdsError),
    #[error(transparent)]
    /// A proxy could not be started.
    Subject(#[from] SubjectError),
    #[error("{what}: {source}")]
    /// A file or process could not be used.
    Io {
        /// What for.
        what: String,
        #[source]
        /// Why.
        source: std::io::Error,
    },
    #[error("{0}")]
    /// Something else in the setup failed.
    Setup(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SoakError {
    let what = what.into();
    move |source| SoakError::Io { what, source }
}

/// What a soak does.
#[derive(Debug, Clone)]
pub struct SoakSettings {
    /// How long the soak runs.
    pub duration: Duration,
    /// How the clients behave.
    pub load: LoadSettings,
    /// How long the CA stays away each cycle.
    pub ca_outage: Duration,
    /// The certificates' lifetime: they rotate at half of it.
    pub cert_ttl: Duration,
    /// How long a draining proxy gives its connections.
    pub drain_grace: Duration,
    /// The hbone-lab binary whose proxy is soaked.
    pub proxy_exe: PathBuf,
}

impl SoakSettings {
    /// A run of `duration`: 16 clients, payloads up to 64 KiB, the CA away
    /// 10 s a cycle (less in a short run), certificates living three times that.
    pub fn new(duration: Duration, proxy_exe: PathBuf) -> Self {
        let cycle = duration.min(Duration::from_secs(60));
        let ca_outage = Duration::from_secs(10).min(cycle / 6);
        SoakSettings {
            duration,
            load: LoadSettings {
                clients: 16,
                max_payload: 64 * 1024,
                max_payloads: 4,
                io_timeout: Duration::from_secs(10),
                seed: 1,
            },
            ca_outage,
            cert_ttl: (ca_outage * 3).max(Duration::from_secs(6)),
            drain_grace: Duration::from_secs(5),
            proxy_exe,
        }
    }
}

/// Progress as the run goes: each fault as it happens, and a line now and then.
pub trait SoakProgress {
    /// One line to show.
    fn say(&mut self, line: &str);
}

/// The CA, stoppable and restartable on the same address.
struct Ca {
    service: Arc<CaService>,
    metrics: Arc<CaMetrics>,
    addr: SocketAddr,
    running: Option<RunningCa>,
}

impl Ca {
    async fn start(&mut self) -> Result<(), SoakError> {
        let mut tries = 0;
        let listener = loop {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if tries < 50 => {
                    tries += 1;
                    tracing::debug!(error = %e, "the CA's address is not free yet");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(io(format!("rebinding the CA on {}", self.addr))(e)),
            }
        };
        self.running = Some(serve_listener(self.service.clone(), listener, &[]).await?);
        Ok(())
    }

    async fn stop(&mut self) {
        if let Some(ca) = self.running.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), ca.shutdown()).await;
        }
    }
}

/// One proxy process.
struct ProxyProcess {
    child: Child,
    readiness: SocketAddr,
    metrics: SocketAddr,
    log: PathBuf,
}

impl ProxyProcess {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, signal);
    }

    /// Waits up to `limit` for the process to exit; true if it did.
    async fn exited_within(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The live proxy processes by node, and the most each node's used.
#[derive(Default)]
struct Peaks {
    live: Vec<(&'static str, u32)>,
    peaks: BTreeMap<String, ProxyPeak>,
}

async fn sample_peaks(peaks: Arc<Mutex<Peaks>>) {
    loop {
        let live = peaks.lock().unwrap_or_else(|e| e.into_inner()).live.clone();
        let mut now: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
        for (node, pid) in live {
            let entry = now.entry(node).or_default();
            entry.0 += rss_bytes(&[pid]);
            entry.1 += open_fds(pid);
        }
        {
            let mut p = peaks.lock().unwrap_or_else(|e| e.into_inner());
            for (node, (rss, fds)) in now {
                let peak = p.peaks.entry(node.to_string()).or_default();
                peak.peak_rss_bytes = peak.peak_rss_bytes.max(rss);
                peak.peak_fds = peak.peak_fds.max(fds);
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Everything the soak runs on.
struct Mesh {
    dir: tempfile::TempDir,
    settings: SoakSettings,
    ca: Ca,
    root_file: PathBuf,
    token_file: PathBuf,
    agents: BTreeMap<&'static str, NodeAgent>,
    peaks: Arc<Mutex<Peaks>>,
    started: u32,
}

const DENY: &str = "---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: soak-deny, namespace: bench}
spec:
  selector: {matchLabels: {app: server}}
  action: DENY
  rules: [{from: [{source: {principals: [cluster.local/ns/bench/sa/client]}}]}]
";

impl Mesh {
    async fn new(topology: &Topology, settings: SoakSettings) -> Result<Self, SoakError> {
        let dir = tempfile::Builder::new()
            .prefix("hbone-lab-soak-")
            .tempdir()
            .map_err(io("a directory for the soak"))?;
        let authority = SigningAuthority::generate(AuthorityConfig::new("cluster.local"))
            .map_err(|e| SoakError::Setup(format!("the CA's root: {e}")))?;
        let authority = Arc::new(authority);
        let tokens = format!(
            "tokens:\n  - token: {TOKEN}\n    identities: [\"spiffe://cluster.local/ns/bench/sa/*\"]\n"
        );
        let tokens = TokenFile::parse(&tokens, "soak tokens")
            .map_err(|e| SoakError::Setup(format!("the CA's tokens: {e}")))?;
        let metrics = Arc::new(CaMetrics::default());
        let service = Arc::new(CaService::new(
            authority.clone(),
            Arc::new(tokens),
            metrics.clone(),
        ));
        let first = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(io("a loopback port for the CA"))?;
        let addr = first.local_addr().map_err(io("the CA's address"))?;
        drop(first);
        let mut ca = Ca {
            service,
            metrics,
            addr,
            running: None,
        };
        ca.start().await?;
        let root_file = dir.path().join("root.pem");
        std::fs::write(&root_file, authority.root_pem()).map_err(io("root.pem"))?;
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, TOKEN).map_err(io("the token file"))?;
        let registry_text = registry_yaml(topology);
        std::fs::write(dir.path().join("registry.yaml"), &registry_text)
            .map_err(io("registry.yaml"))?;
        let registry = Registry::parse(&registry_text, "registry.yaml")
            .map_err(|e| SoakError::Setup(e.to_string()))?;
        let mut agents = BTreeMap::new();
        for node in ["node-c", "node-s"] {
            let socket = dir.path().join(format!("{node}.sock"));
            agents.insert(
                node,
                NodeAgent::listen(&socket, node_pods(&registry, node))?,
            );
        }
        let mesh = Mesh {
            dir,
            settings,
            ca,
            root_file,
            token_file,
            agents,
            peaks: Arc::default(),
            started: 0,
        };
        mesh.write_policies(false)?;
        Ok(mesh)
    }

    /// Writes the policies both proxies follow (atomically: a proxy must
    /// never read half a file), with or without the DENY.
    fn write_policies(&self, deny: bool) -> Result<(), SoakError> {
        let text = if deny {
            format!("{BENCH_POLICIES}{DENY}")
        } else {
            BENCH_POLICIES.to_string()
        };
        let path = self.dir.path().join("policies.yaml");
        let next = self.dir.path().join("policies.yaml.next");
        std::fs::write(&next, text).map_err(io("policies.yaml"))?;
        std::fs::rename(&next, &path).map_err(io("policies.yaml"))
    }

    /// Starts a proxy for `node` and waits until it serves its pod.
    async fn start_proxy(&mut self, node: &'static str) -> Result<ProxyProcess, SoakError> {
        self.started += 1;
        let n = self.started;
        let host = n % 250 + 1;
        let (readiness, metrics) = (own_loopback(host, 15021), own_loopback(host, 15020));
        let dir = self.dir.path();
        let config = format!(
            "node: {node}\nregistry: registry.yaml\npolicies: [policies.yaml]\nca: {{address: \"https://{}\", rootCert: {}, tokenFile: {}, ttl: {}ms}}\nlisteners:\n  hbonePort: 15008\n  readiness: \"{readiness}\"\n  metrics: \"{metrics}\"\nzds: {}\nbindSourceIp: false\ndrainGrace: {}ms\n",
            self.ca.addr,
            self.root_file.display(),
            self.token_file.display(),
            self.settings.cert_ttl.as_millis(),
            dir.join(format!("{node}.sock")).display(),
            self.settings.drain_grace.as_millis(),
        );
        let file = dir.join(format!("{node}-{n}.yaml"));
        let log = dir.join(format!("{node}-{n}.log"));
        let child = spawn_proxy(&self.settings.proxy_exe, &config, &file, &log)?;
        let process = ProxyProcess {
            child,
            readiness,
            metrics,
            log,
        };
        wait_http_ready(
            None,
            process.readiness,
            "/healthz/ready",
            &format!("hbone-lab proxy {node} #{n}"),
            &process.log,
        )
        .await?;
        self.agents[node]
            .wait_synced(Duration::from_secs(20))
            .await
            .map_err(|e| SoakError::Setup(format!("{node} #{n} took its pod over ZDS: {e}")))?;
        let mut peaks = self.peaks.lock().unwrap_or_else(|e| e.into_inner());
        peaks.live.push((node, process.pid()));
        peaks.peaks.entry(node.to_string()).or_default().processes += 1;
        Ok(process)
    }

    fn retire(&self, process: &ProxyProcess) {
        let pid = process.pid();
        self.peaks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .live
            .retain(|(_, p)| *p != pid);
    }
}

/// The client-side proxy's refusals by reason, from its metrics.
async fn refusals(proxy: &ProxyProcess) -> BTreeMap<String, u64> {
    let Ok((200, body)) = http_get(None, proxy.metrics, "/metrics").await else {
        return BTreeMap::new();
    };
    let mut out = BTreeMap::new();
    for line in body
        .lines()
        .filter(|l| l.starts_with("hbone_refusals_total{"))
    {
        let reason = line
            .split("reason=\"")
            .nth(1)
            .and_then(|r| r.split('"').next());
        let count = line.rsplit(' ').next().and_then(|n| n.parse::<f64>().ok());
        if let (Some(reason), Some(count)) = (reason, count) {
            *out.entry(reason.to_string()).or_insert(0) += count as u64;
        }
    }
    out
}

/// Runs the soak (as root): builds the path, starts the proxies, drives the
/// load through the fault schedule, and reports.
pub async fn run(
    settings: SoakSettings,
    progress: &mut dyn SoakProgress,
) -> Result<SoakReport, SoakError> {
    let topology = Topology::create()?;
    // Connections still queued on a closing listener move to its successor.
    topology
        .server
        .exec("sysctl", &["-qw", "net.ipv4.tcp_migrate_req=1"])?;
    let echo_listener = topology.server_listener(ECHO_PORT)?;
    let echo_task = tokio::spawn(echo(echo_listener));
    topology.capture(true)?;
    let mut mesh = Mesh::new(&topology, settings.clone()).await?;
    let sampler = tokio::spawn(sample_peaks(mesh.peaks.clone()));
    let client_proxy = mesh.start_proxy("node-c").await?;
    let mut server_proxy = mesh.start_proxy("node-s").await?;
    progress.say(&format!(
        "proxies up; {} clients for {:?}, certificates of {:?}",
        settings.load.clients, settings.duration, settings.cert_ttl
    ));

    let tally = Arc::new(Tally::default());
    let start = Instant::now();
    let until = start + settings.duration;
    let clients: Vec<_> = (0..settings.load.clients)
        .map(|i| {
            tokio::spawn(load::client(
                i,
                topology.client_dialer(),
                (SERVER_IP.to_string(), ECHO_PORT),
                start,
                until,
                settings.load.clone(),
                tally.clone(),
            ))
        })
        .collect();

    let mut windows = Windows::default();
    let mut records = Vec::new();
    let mut opened: BTreeMap<Window, Duration> = BTreeMap::new();
    let settle = Duration::from_secs(1);
    for (at, fault) in faults(settings.duration, settings.ca_outage) {
        tokio::time::sleep_until(start + at).await;
        let began = start.elapsed();
        let detail = match fault {
            Fault::CaStop => {
                mesh.ca.stop().await;
                opened.insert(Window::CaOutage, began);
                format!("CA on {} stopped", mesh.ca.addr)
            }
            Fault::CaStart => {
                mesh.ca.start().await?;
                let from = opened.remove(&Window::CaOutage).unwrap_or(began);
                windows.add(Window::CaOutage, from, start.elapsed() + settle);
                "CA back".to_string()
            }
            Fault::Handover => {
                let mut old =
                    std::mem::replace(&mut server_proxy, mesh.start_proxy("node-s").await?);
                let successor_ready = start.elapsed();
                old.signal(nix::sys::signal::Signal::SIGTERM);
                let drained = old
                    .exited_within(settings.drain_grace + Duration::from_secs(5))
                    .await;
                mesh.retire(&old);
                windows.add(Window::Handover, began, start.elapsed() + settle);
                format!(
                    "successor ready after {} ms; the old one {}",
                    (successor_ready - began).as_millis(),
                    if drained {
                        "drained and exited"
                    } else {
                        "did not exit in time (killed)"
                    }
                )
            }
            Fault::Kill => {
                server_proxy.signal(nix::sys::signal::Signal::SIGKILL);
                let _ = server_proxy.exited_within(Duration::from_secs(5)).await;
                mesh.retire(&server_proxy);
                opened.insert(Window::Kill, began);
                format!("node-s proxy (pid {}) killed", server_proxy.pid())
            }
            Fault::Restart => {
                server_proxy = mesh.start_proxy("node-s").await?;
                let from = opened.remove(&Window::Kill).unwrap_or(began);
                windows.add(Window::Kill, from, start.elapsed() + settle);
                format!("node-s proxy restarted (pid {})", server_proxy.pid())
            }
            Fault::DenyOn => {
                mesh.write_policies(true)?;
                opened.insert(Window::Deny, began);
                "DENY for the client's identity applied".to_string()
            }
            Fault::DenyOff => {
                mesh.write_policies(false)?;
                let from = opened.remove(&Window::Deny).unwrap_or(began);
                // The proxies read the policy file every 2 s.
                windows.add(Window::Deny, from, start.elapsed() + Duration::from_secs(3));
                "DENY removed".to_string()
            }
        };
        let took = start.elapsed() - began;
        let failed = tally.failures.lock().map_or(0, |f| f.len());
        progress.say(&format!(
            "{:>6.1} s  {:<9} {detail}  ({} connections, {failed} failed so far)",
            began.as_secs_f64(),
            fault.as_str(),
            Tally::get(&tally.attempted),
        ));
        records.push(FaultRecord {
            at_s: (began.as_secs_f64() * 10.0).round() / 10.0,
            fault,
            took_ms: took.as_millis() as u64,
            detail,
        });
    }
    for client in clients {
        let limit = settings.load.io_timeout * 3 + Duration::from_secs(5);
        let _ = tokio::time::timeout_at(until + limit, client).await;
    }
    let client_proxy_refusals = refusals(&client_proxy).await;
    sampler.abort();
    echo_task.abort();
    let _ = topology.capture(false);
    drop((client_proxy, server_proxy));
    mesh.ca.stop().await;

    let failures = tally
        .failures
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let summary = summarize_failures(&failures, &windows);
    let proxies = mesh
        .peaks
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .peaks
        .clone();
    Ok(SoakReport {
        seconds: settings.duration.as_secs_f64(),
        clients: settings.load.clients,
        seed: settings.load.seed,
        cert_ttl_s: settings.cert_ttl.as_secs_f64(),
        ca_outage_s: settings.ca_outage.as_secs_f64(),
        connections_attempted: Tally::get(&tally.attempted),
        connections_succeeded: Tally::get(&tally.succeeded),
        connections_failed: summary.by_reason,
        failures: summary.groups,
        unexcused_failures: summary.unexcused,
        failed_new_connections_during_handover: summary.during_handover,
        bytes_sent: Tally::get(&tally.bytes_sent),
        bytes_verified: Tally::get(&tally.bytes_verified),
        bytes_corrupted: Tally::get(&tally.bytes_corrupted),
        faults: records,
        certificates_issued: mesh.ca.metrics.issued(),
        proxies,
        client_proxy_refusals,
    })
}
