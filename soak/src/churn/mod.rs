//! `hbone-lab soak --churn`: connections, pods and control-plane
//! connections coming and going for a long time, and whether anything is
//! left behind.
//!
//! Both meshes run as deployed — one proxy per node, pods handed over by
//! ZDS, workloads, policies and certificates from a control plane over xDS
//! — on the benchmark's two pods. Client loops end their connections every
//! way a peer can ([`ways`]); the load pauses longer than the pools' idle
//! timeout, so pooled connections are released; pods are added and removed
//! over ZDS; the control planes restart. Each second the subject's
//! processes are read ([`samples`]). The verdict compares the idle reading
//! after warm-up with the one after the load stops, and fits the growth
//! during the churn. With a ztunnel, it goes through the same run after
//! hbone-lab, for comparison.

pub mod report;
pub mod samples;
pub mod schedule;
pub mod ways;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hbone_bench::subjects::{
    ExtraPod, Running, Shared, Subject, ZtunnelMode, own_loopback, start_fed_by_xds,
};
use hbone_bench::topology::{SERVER_IP, Topology};
use hbone_harness::netns::NetNs;
use hbone_workloads::peers::echo;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::{SoakError, SoakProgress};
use report::{ChurnReport, SubjectChurn};
use samples::Sample;
use schedule::{Event, Plan};
use ways::{BLACKHOLE_PORT, ECHO_PORT, LINGER_PORT, RESET_PORT, Tallies};

/// Both meshes' connect timeout towards a destination: an abandoned
/// tunnel's dial ends by then.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long, after the drain, descriptors may take to come back.
const BACK_WITHIN: Duration = Duration::from_secs(30);
/// Warm-up: one load of this length (and a pod) before the baseline.
const WARM_UP: Duration = Duration::from_secs(10);

/// What a churn run does.
#[derive(Debug, Clone)]
pub struct ChurnSettings {
    /// The churn's length, per subject (warm-up and drain come on top).
    pub duration: Duration,
    /// Client loops at once.
    pub clients: usize,
    /// Both meshes' pool idle timeout.
    pub pool_idle: Duration,
    /// The payloads' seed.
    pub seed: u64,
    /// The hbone-lab binary whose proxies churn.
    pub proxy_exe: PathBuf,
    /// A ztunnel to put through the same run.
    pub ztunnel: Option<PathBuf>,
}

impl ChurnSettings {
    /// `duration` of churn with 16 clients and pools releasing after 5 s.
    pub fn new(duration: Duration, proxy_exe: PathBuf) -> Self {
        ChurnSettings {
            duration,
            clients: 16,
            pool_idle: Duration::from_secs(5),
            seed: 1,
            proxy_exe,
            ztunnel: None,
        }
    }
}

/// Runs the churn (as root) for hbone-lab, then for ztunnel if given.
pub async fn run(
    settings: ChurnSettings,
    progress: &mut dyn SoakProgress,
) -> Result<ChurnReport, SoakError> {
    let topology = Topology::create()?;
    let echo_listener = topology.server_listener(ECHO_PORT)?;
    let servers = [
        tokio::spawn(async move {
            let _ = echo(echo_listener).await;
        }),
        tokio::spawn(ways::linger_server(topology.server_listener(LINGER_PORT)?)),
        tokio::spawn(ways::reset_server(topology.server_listener(RESET_PORT)?)),
    ];
    let port = BLACKHOLE_PORT.to_string();
    topology.server.exec(
        "iptables",
        &["-A", "INPUT", "-p", "tcp", "--dport", &port, "-j", "DROP"],
    )?;
    let mut shared = Shared::new(
        &topology,
        settings.proxy_exe.clone(),
        settings.ztunnel.is_some(),
    )
    .await?;
    shared.pool_idle = Some(settings.pool_idle);
    let plan = Plan::for_run(settings.duration, CONNECT_TIMEOUT, settings.pool_idle);
    let mut subjects = vec![Subject::HboneLab];
    if let Some(binary) = &settings.ztunnel {
        subjects.push(Subject::Ztunnel {
            binary: binary.clone(),
            mode: ZtunnelMode::Shared,
        });
    }
    let mut churned = Vec::new();
    for subject in &subjects {
        progress.say(&format!(
            "{}: warm-up, then {:?} of churn",
            subject.name(),
            settings.duration
        ));
        let running = start_fed_by_xds(subject, &topology, &shared).await?;
        let mut run = SubjectRun::new(subject, running, &topology, &settings);
        let result = run.go(&mut shared, &plan, progress).await;
        run.running.stop();
        churned.push(result?);
    }
    for server in servers {
        server.abort();
    }
    let _ = topology.capture(false);
    shared.shutdown().await;
    Ok(ChurnReport {
        clients: settings.clients,
        seed: settings.seed,
        pool_idle_s: settings.pool_idle.as_secs_f64(),
        plan,
        subjects: churned,
    })
}

/// One subject's run: its processes, its clients' switch and tallies, and
/// the readings so far.
struct SubjectRun<'a> {
    name: &'static str,
    running: Running,
    topology: &'a Topology,
    settings: &'a ChurnSettings,
    started: Instant,
    samples: Arc<Mutex<Vec<Sample>>>,
    pids: Vec<u32>,
    metrics: Vec<SocketAddr>,
    load: watch::Sender<bool>,
    tallies: Tallies,
    pods: BTreeMap<u32, NetNs>,
    pods_added: u64,
    pod_errors: Vec<String>,
    restarts: u64,
}

impl<'a> SubjectRun<'a> {
    fn new(
        subject: &Subject,
        running: Running,
        topology: &'a Topology,
        settings: &'a ChurnSettings,
    ) -> Self {
        let metrics = match subject {
            Subject::HboneLab => vec![own_loopback(1, 15020), own_loopback(2, 15020)],
            _ => Vec::new(),
        };
        SubjectRun {
            name: subject.name(),
            pids: running.pids(),
            running,
            topology,
            settings,
            started: Instant::now(),
            samples: Arc::default(),
            metrics,
            load: watch::Sender::new(false),
            tallies: Arc::default(),
            pods: BTreeMap::new(),
            pods_added: 0,
            pod_errors: Vec::new(),
            restarts: 0,
        }
    }

    /// How long after the load stops every connection has ended: the
    /// abandoned dials time out, the pools release what went idle.
    fn drain(&self) -> Duration {
        CONNECT_TIMEOUT.max(self.settings.pool_idle * 3 / 2) + Duration::from_secs(3)
    }

    async fn read(&self) -> Sample {
        let t = self.started.elapsed().as_secs_f64();
        samples::read(t, &self.pids, &self.metrics).await
    }

    /// Warm-up, baseline, churn, drain; then the verdict's figures.
    async fn go(
        &mut self,
        shared: &mut Shared,
        plan: &Plan,
        progress: &mut dyn SoakProgress,
    ) -> Result<SubjectChurn, SoakError> {
        let sampler = tokio::spawn(sample_every_second(
            self.samples.clone(),
            self.started,
            self.pids.clone(),
            self.metrics.clone(),
        ));
        let until = Instant::now()
            + WARM_UP
            + self.drain()
            + self.settings.duration
            + Duration::from_secs(5);
        let clients: Vec<_> = (0..self.settings.clients)
            .map(|i| {
                tokio::spawn(ways::client(
                    i,
                    self.topology.client_dialer(),
                    SERVER_IP.to_string(),
                    self.load.subscribe(),
                    until,
                    self.settings.seed,
                    self.tallies.clone(),
                ))
            })
            .collect();

        // Warm-up: every way, and one pod, before the idle baseline.
        self.load.send_replace(true);
        self.event(shared, Event::PodAdd(0)).await?;
        tokio::time::sleep(WARM_UP).await;
        self.event(shared, Event::PodRemove(0)).await?;
        self.load.send_replace(false);
        tokio::time::sleep(self.drain()).await;
        let baseline = self.read().await;
        progress.say(&format!(
            "{}: idle baseline {} fds, {:.1} MiB",
            self.name,
            baseline.fds,
            baseline.rss as f64 / 1048576.0
        ));
        self.tallies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.pods_added = 0;

        let churn_start = Instant::now();
        let from = self.started.elapsed().as_secs_f64();
        let mut after_pauses = Vec::new();
        for (at, event) in schedule::events(self.settings.duration, plan) {
            tokio::time::sleep_until(churn_start + at).await;
            if event == Event::LoadOn && !at.is_zero() {
                // The end of a pause: what the pools and tasks came back to.
                let now = self.read().await;
                progress.say(&format!(
                    "{}: {:>5.0} s  after a pause: {} fds, {:.1} MiB{}",
                    self.name,
                    churn_start.elapsed().as_secs_f64(),
                    now.fds,
                    now.rss as f64 / 1048576.0,
                    now.tasks
                        .map(|t| format!(", {t} tasks"))
                        .unwrap_or_default()
                ));
                after_pauses.push(now);
            }
            self.event(shared, event).await?;
        }
        let churn_seconds = churn_start.elapsed().as_secs_f64();
        self.load.send_replace(false);
        let to = self.started.elapsed().as_secs_f64();

        // The drain: abandoned dials time out, idle pools release.
        let stopped = Instant::now();
        let drain = self.drain();
        tokio::time::sleep(drain).await;
        let mut after = self.read().await;
        while after.fds > baseline.fds && stopped.elapsed() < drain + BACK_WITHIN {
            tokio::time::sleep(Duration::from_secs(1)).await;
            after = self.read().await;
        }
        let back = (after.fds <= baseline.fds).then(|| stopped.elapsed().as_secs_f64());
        sampler.abort();
        for client in clients {
            client.abort();
        }
        let samples = self
            .samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let during: Vec<Sample> = samples
            .iter()
            .filter(|s| s.t >= from && s.t <= to)
            .copied()
            .collect();
        let fit_from = from + (to - from) / 10.0;
        Ok(SubjectChurn {
            subject: self.name.to_string(),
            churn_seconds,
            ways: self
                .tallies
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            pods_added: self.pods_added,
            pod_errors: self.pod_errors.len() as u64,
            pod_error_examples: self.pod_errors.iter().take(5).cloned().collect(),
            control_plane_restarts: self.restarts,
            after_pauses,
            baseline,
            peak: peak(&during),
            after,
            fds_left_over: after.fds as i64 - baseline.fds as i64,
            fds_back_after_s: back,
            tasks_left_over: after
                .tasks
                .zip(baseline.tasks)
                .map(|(a, b)| a as i64 - b as i64),
            rss_mib_per_hour: samples::per_hour(&during, fit_from, |s| {
                Some(s.rss as f64 / 1048576.0)
            }),
            fds_per_hour: samples::per_hour(&during, fit_from, |s| Some(s.fds as f64)),
            tasks_per_hour: samples::per_hour(&during, fit_from, |s| s.tasks.map(|n| n as f64)),
            samples,
        })
    }

    /// Carries out one event; a pod the proxy does not take or let go in
    /// time is recorded, not fatal.
    async fn event(&mut self, shared: &mut Shared, event: Event) -> Result<(), SoakError> {
        match event {
            Event::LoadOn => {
                self.load.send_replace(true);
            }
            Event::LoadOff => {
                self.load.send_replace(false);
            }
            Event::Restart => {
                shared.restart_control_planes().await?;
                self.restarts += 1;
            }
            Event::PodAdd(n) => {
                let (pod, netns) = churn_pod(n)?;
                let name = pod.name.clone();
                let node = node_index(pod.node);
                shared.add_pod(pod)?;
                let zds = shared
                    .zds_pod(&name)
                    .ok_or_else(|| SoakError::Setup(format!("{name} is not in the registry")))?;
                self.pods.insert(n, netns);
                self.pods_added += 1;
                if let Some(agent) = self.running.node_agents().get(node) {
                    agent.add(zds);
                }
                self.synced(node, &name, "add").await;
            }
            Event::PodRemove(n) => {
                let name = pod_name(n);
                let node = node_index(pod_node(n));
                if let (Some(agent), Some(zds)) =
                    (self.running.node_agents().get(node), shared.zds_pod(&name))
                {
                    agent.remove(&zds.uid);
                }
                self.synced(node, &name, "removal").await;
                shared.remove_pod(&name)?;
                self.pods.remove(&n);
            }
        }
        Ok(())
    }

    async fn synced(&mut self, node: usize, pod: &str, what: &str) {
        let agents = self.running.node_agents();
        let Some(agent) = agents.get(node) else {
            return;
        };
        let result = agent.wait_synced(Duration::from_secs(10)).await;
        let nack = agent.status().nacks.last().cloned();
        if let Err(e) = result {
            let why = nack.map_or(e.to_string(), |(_, why)| why);
            self.pod_errors.push(format!("{pod} ({what}): {why}"));
        }
    }
}

async fn sample_every_second(
    into: Arc<Mutex<Vec<Sample>>>,
    started: Instant,
    pids: Vec<u32>,
    metrics: Vec<SocketAddr>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let sample = samples::read(started.elapsed().as_secs_f64(), &pids, &metrics).await;
        into.lock().unwrap_or_else(|e| e.into_inner()).push(sample);
    }
}

/// The most of each quantity over `samples`.
fn peak(samples: &[Sample]) -> Sample {
    samples.iter().fold(Sample::default(), |m, s| Sample {
        t: if s.rss >= m.rss { s.t } else { m.t },
        rss: m.rss.max(s.rss),
        fds: m.fds.max(s.fds),
        threads: m.threads.max(s.threads),
        tasks: match (m.tasks, s.tasks) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        },
    })
}

fn pod_name(n: u32) -> String {
    format!("churn-{n}")
}

/// Pods alternate between the two nodes.
fn pod_node(n: u32) -> &'static str {
    if n.is_multiple_of(2) {
        "node-c"
    } else {
        "node-s"
    }
}

fn node_index(node: &str) -> usize {
    usize::from(node == "node-s")
}

/// Pod `n`'s namespace, made with its address on loopback (it carries no
/// traffic: the proxy binds its listeners there and lets them go).
fn churn_pod(n: u32) -> Result<(ExtraPod, NetNs), SoakError> {
    let tag = std::process::id() % 100_000;
    let netns = NetNs::create(&format!("hlb-k{n}-{tag}"))?;
    let ip = IpAddr::V4(Ipv4Addr::new(
        10,
        253,
        1 + (n / 250) as u8 % 4,
        (n % 250 + 1) as u8,
    ));
    netns.exec("ip", &["link", "set", "lo", "up"])?;
    netns.exec("ip", &["addr", "add", &format!("{ip}/32"), "dev", "lo"])?;
    let pod = ExtraPod {
        name: pod_name(n),
        ip,
        node: pod_node(n),
        netns: netns.path(),
    };
    Ok((pod, netns))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peak_is_each_quantitys_own_maximum() {
        let s = |t, rss, fds, tasks| Sample {
            t,
            rss,
            fds,
            threads: 3,
            tasks,
        };
        let p = peak(&[
            s(1.0, 10, 5, Some(2)),
            s(2.0, 30, 4, Some(9)),
            s(3.0, 20, 8, None),
        ]);
        assert_eq!((p.t, p.rss, p.fds, p.tasks), (2.0, 30, 8, Some(9)));
        assert_eq!(peak(&[]).tasks, None);
    }

    #[test]
    fn pods_alternate_between_the_nodes() {
        assert_eq!(
            [pod_node(0), pod_node(1), pod_node(2)],
            ["node-c", "node-s", "node-c"]
        );
        assert_eq!(node_index(pod_node(1)), 1);
    }
}
