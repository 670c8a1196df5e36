//! The three subjects: no proxy, hbone-lab's proxies, and a real ztunnel —
//! each started on the same topology, measured, and stopped, so they can run
//! interleaved. Both meshes get their certificates from one hbone-lab CA.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hbone_ca::metrics::CaMetrics;
use hbone_ca::server::{CaService, RunningCa, serve_listener};
use hbone_ca::tokens::TokenFile;
use hbone_ca::{AuthorityConfig, SigningAuthority};
use hbone_proxy::netns::{NetNs, bind_listener, tcp_socket};
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::topology::{CLIENT_IP, SERVER_IP, Topology};

#[derive(Debug, Error)]
pub enum SubjectError {
    #[error("setup: {0}")]
    Setup(String),
    #[error("{what} did not become ready in {secs} s; its log:\n{log}")]
    NotReady {
        what: String,
        secs: u64,
        log: String,
    },
}

fn setup<E: std::fmt::Display>(e: E) -> SubjectError {
    SubjectError::Setup(e.to_string())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    Direct,
    HboneLab,
    /// Another hbone-lab binary (say, `main` before a change), measured in
    /// the same run so that a change's effect is not lost in the drift.
    Baseline(PathBuf),
    Ztunnel(PathBuf),
}

impl Subject {
    pub fn name(&self) -> &'static str {
        match self {
            Subject::Direct => "direct",
            Subject::HboneLab => "hbone-lab",
            Subject::Baseline(_) => "baseline",
            Subject::Ztunnel(_) => "ztunnel",
        }
    }
}

/// What every subject shares: the CA (reachable from the host and from the pods) and files.
pub struct Shared {
    pub dir: tempfile::TempDir,
    pub proxy_exe: PathBuf,
    cas: Vec<RunningCa>,
    root_file: PathBuf,
    token_file: PathBuf,
    host_ca: SocketAddr,
    pod_ca: SocketAddr,
}

const TOKEN: &str = "bench-token";

impl Shared {
    pub async fn new(topology: &Topology, proxy_exe: PathBuf) -> Result<Self, SubjectError> {
        let dir = tempfile::Builder::new()
            .prefix("hbone-lab-bench-")
            .tempdir()
            .map_err(setup)?;
        let authority = Arc::new(
            SigningAuthority::generate(AuthorityConfig::new("cluster.local")).map_err(setup)?,
        );
        let tokens = format!(
            "tokens:\n  - token: {TOKEN}\n    identities: [\"spiffe://cluster.local/ns/bench/sa/*\"]\n"
        );
        let service = Arc::new(CaService::new(
            authority.clone(),
            Arc::new(TokenFile::parse(&tokens, "bench tokens").map_err(setup)?),
            Arc::new(CaMetrics::default()),
        ));
        // One CA, two doors: on loopback for hbone-lab's proxies, inside the server pod for ztunnel.
        let host = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(setup)?;
        let pod_addr: SocketAddr = format!("{SERVER_IP}:15012").parse().expect("literal");
        let pod = bind_listener(Some(&topology.server.path()), pod_addr).map_err(setup)?;
        let pod = tokio::net::TcpListener::from_std(pod).map_err(setup)?;
        let host_ca = serve_listener(service.clone(), host, &[])
            .await
            .map_err(setup)?;
        let pod_ca = serve_listener(service, pod, &[]).await.map_err(setup)?;
        let root_file = dir.path().join("root.pem");
        std::fs::write(&root_file, authority.root_pem()).map_err(setup)?;
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, TOKEN).map_err(setup)?;
        Ok(Shared {
            proxy_exe,
            root_file,
            token_file,
            host_ca: host_ca.addr,
            pod_ca: pod_ca.addr,
            cas: vec![host_ca, pod_ca],
            dir,
        })
    }

    pub async fn shutdown(self) {
        for ca in self.cas {
            ca.shutdown().await;
        }
    }
}

/// A started subject; stopping kills its processes.
pub struct Running {
    children: Vec<Child>,
}

impl Running {
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }

    pub fn stop(mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.children.clear();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn log_to(path: &Path) -> Result<(Stdio, Stdio), SubjectError> {
    let file = std::fs::File::create(path).map_err(setup)?;
    Ok((
        Stdio::from(file.try_clone().map_err(setup)?),
        Stdio::from(file),
    ))
}

async fn wait_http_ready(
    ns: Option<&NetNs>,
    addr: SocketAddr,
    path: &str,
    what: &str,
    log: &Path,
) -> Result<(), SubjectError> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let socket =
            tcp_socket(ns.map(|n| n.path()).as_deref(), addr, None, None).map_err(setup)?;
        if let Ok(Ok(mut tcp)) =
            tokio::time::timeout(Duration::from_millis(500), socket.connect(addr)).await
        {
            let _ = tcp
                .write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
                .await;
            let mut out = String::new();
            let _ =
                tokio::time::timeout(Duration::from_secs(1), tcp.read_to_string(&mut out)).await;
            if out.starts_with("HTTP/1.1 200") || out.starts_with("HTTP/1.0 200") {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(SubjectError::NotReady {
        what: what.into(),
        secs: 20,
        log: std::fs::read_to_string(log).unwrap_or_default(),
    })
}

/// Starts `subject` on `topology`.
pub async fn start(
    subject: &Subject,
    topology: &Topology,
    shared: &Shared,
) -> Result<Running, SubjectError> {
    match subject {
        Subject::Direct => {
            topology.capture(false).map_err(setup)?;
            Ok(Running {
                children: Vec::new(),
            })
        }
        Subject::HboneLab => {
            topology.capture(true).map_err(setup)?;
            start_hbone_lab(&shared.proxy_exe, topology, shared).await
        }
        Subject::Baseline(exe) => {
            topology.capture(true).map_err(setup)?;
            start_hbone_lab(exe, topology, shared).await
        }
        Subject::Ztunnel(bin) => {
            topology.capture(true).map_err(setup)?;
            start_ztunnel(bin, topology, shared).await
        }
    }
}

async fn start_hbone_lab(
    exe: &Path,
    topology: &Topology,
    shared: &Shared,
) -> Result<Running, SubjectError> {
    let dir = shared.dir.path();
    let registry = format!(
        "nodes: [{{name: node-c}}, {{name: node-s}}]\nworkloads:\n  - {{name: client, namespace: bench, serviceAccount: client, ips: [{CLIENT_IP}], node: node-c, netns: {}}}\n  - {{name: server, namespace: bench, serviceAccount: server, ips: [{SERVER_IP}], node: node-s, netns: {}}}\n",
        topology.client.path().display(),
        topology.server.path().display()
    );
    std::fs::write(dir.join("registry.yaml"), registry).map_err(setup)?;
    let mut children = Vec::new();
    for (node, ready, extra) in [
        ("node-c", "127.0.0.1:15121", "  podOutboundPort: 15001\n"),
        ("node-s", "127.0.0.1:15221", ""),
    ] {
        let config = format!(
            "node: {node}\nregistry: registry.yaml\nca: {{address: \"https://{}\", rootCert: {}, tokenFile: {}}}\nlisteners:\n  hbonePort: 15008\n  readiness: \"{ready}\"\n{extra}bindSourceIp: false\ndrainGrace: 1s\n",
            shared.host_ca,
            shared.root_file.display(),
            shared.token_file.display()
        );
        let file = dir.join(format!("{node}.yaml"));
        std::fs::write(&file, config).map_err(setup)?;
        let log = dir.join(format!("hbone-lab-{node}.log"));
        let (out, err) = log_to(&log)?;
        let child = Command::new(exe)
            .args(["proxy", "--config"])
            .arg(&file)
            .env("RUST_LOG", "warn")
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(setup)?;
        children.push(child);
        wait_http_ready(
            None,
            ready.parse().expect("literal"),
            "/healthz/ready",
            &format!("hbone-lab proxy {node}"),
            &log,
        )
        .await?;
    }
    Ok(Running { children })
}

fn ztunnel_config() -> String {
    let workload = |name: &str, ip: &str| {
        format!(
            "- uid: cluster1//v1/Pod/bench/{name}\n  name: {name}\n  namespace: bench\n  serviceAccount: {name}\n  workloadIps: [\"{ip}\"]\n  protocol: HBONE\n  node: node-{name}\n  trustDomain: cluster.local\n  network: \"\"\n  services: {{}}\n"
        )
    };
    format!(
        "workloads:\n{}{}policies: []\nservices: []\n",
        workload("client", CLIENT_IP),
        workload("server", SERVER_IP)
    )
}

async fn start_ztunnel(
    bin: &Path,
    topology: &Topology,
    shared: &Shared,
) -> Result<Running, SubjectError> {
    let dir = shared.dir.path();
    let config = dir.join("ztunnel.yaml");
    std::fs::write(&config, ztunnel_config()).map_err(setup)?;
    let mut children = Vec::new();
    for (ns, name, ip) in [
        (&topology.client, "client", CLIENT_IP),
        (&topology.server, "server", SERVER_IP),
    ] {
        let log = dir.join(format!("ztunnel-{name}.log"));
        let (out, err) = log_to(&log)?;
        let child = ns
            .command(bin.to_str().unwrap_or("ztunnel"))
            .env("XDS_ADDRESS", "")
            .env("LOCAL_XDS_PATH", &config)
            .env("PROXY_MODE", "dedicated")
            .env("PROXY_WORKLOAD_INFO", format!("bench/{name}/{name}"))
            .env("CA_ADDRESS", format!("https://{}", shared.pod_ca))
            .env("CA_ROOT_CA", &shared.root_file)
            .env("AUTH_TOKEN", &shared.token_file)
            .env("PACKET_MARK", "1337")
            .env("ENABLE_ORIG_SRC", "false")
            .env("RUST_LOG", "warn")
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(setup)?;
        children.push(child);
        let ready: SocketAddr = format!("{ip}:15021").parse().expect("literal");
        wait_http_ready(
            Some(ns),
            ready,
            "/healthz/ready",
            &format!("ztunnel {name}"),
            &log,
        )
        .await?;
    }
    Ok(Running { children })
}

/// CPU seconds (user + system) used so far by `pids`, from /proc.
pub fn cpu_seconds(pids: &[u32]) -> f64 {
    let ticks = 100.0; // USER_HZ on Linux
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|stat| {
            let after = stat.rsplit_once(") ")?.1;
            let fields: Vec<&str> = after.split_whitespace().collect();
            let utime: f64 = fields.get(11)?.parse().ok()?;
            let stime: f64 = fields.get(12)?.parse().ok()?;
            Some((utime + stime) / ticks)
        })
        .sum()
}

/// Resident memory (bytes) of `pids`, from /proc.
pub fn rss_bytes(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .filter_map(|s| {
            let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .sum::<u64>()
        * 1024
}
