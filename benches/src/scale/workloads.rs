//! `scale_workloads`: an idle proxy whose registry holds N workloads (and a
//! service per ten of them), none of them local, so nothing but the
//! registry grows. RSS is read once the proxy is ready and has settled,
//! for N = 0 and each size; bytes per workload is the growth over N = 0
//! divided by N. hbone-lab reads the registry from a file; ztunnel gets
//! the same workloads and services as its local config (the form of its
//! xDS state), in the server pod, beside the bench's own two workloads.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;

use hbone_policies::load::{istio_policies, parse_documents};
use hbone_proxy::registry::Registry;
use hbone_standalone::lab::dataplane::mesh;

use super::{Killed, settled_rss, setup};
use crate::runner::Sample;
use crate::subjects::{
    Shared, Subject, SubjectError, log_to, own_loopback, registry_yaml, spawn_proxy,
    wait_http_ready,
};
use crate::topology::Topology;

/// The bench's registry plus `n` workloads spread over 100 nodes (none of
/// them the proxy's) and a service for every ten.
fn registry_text(topology: &Topology, n: usize) -> String {
    scale_registry(&registry_yaml(topology), n)
}

/// `base` (a registry document that lists its nodes as a flow list, then
/// its workloads) plus `n` workloads in namespace `scale` spread over 100
/// nodes `scale-*`, a service account per hundred, one `app` label shared
/// by ten (as a ReplicaSet's pods share theirs) and a service selecting
/// each ten. The registry `scale_workloads` measures, and the micro-bench
/// `registry_heap` counts the bytes of.
pub fn scale_registry(base: &str, n: usize) -> String {
    let (nodes, workloads) = base
        .split_once("\nworkloads:\n")
        .expect("the bench registry lists nodes, then workloads");
    let mut out = String::with_capacity(200 * n + 1000);
    out.push_str(nodes.trim_end_matches(']'));
    for node in 0..100 {
        let _ = write!(out, ", {{name: scale-{node}}}");
    }
    out.push_str(", {name: idle-node}]\nworkloads:\n");
    out.push_str(workloads);
    for i in 0..n {
        let ip = 0x0a40_0000u32 + i as u32; // 10.64.0.0/10
        let _ = writeln!(
            out,
            "  - {{name: w{i}, namespace: scale, serviceAccount: sa{}, labels: {{app: app{}}}, ips: [{}], node: scale-{}}}",
            i % 100,
            i / 10,
            std::net::Ipv4Addr::from(ip),
            i % 100
        );
    }
    if n >= 10 {
        out.push_str("services:\n");
        for s in 0..n / 10 {
            let vip = 0x0ac8_0000u32 + s as u32; // 10.200.0.0/13
            let _ = writeln!(
                out,
                "  - {{name: svc{s}, namespace: scale, vips: [{}], ports: {{80: 8080}}, selector: {{app: app{s}}}}}",
                std::net::Ipv4Addr::from(vip)
            );
        }
    }
    out
}

/// An idle hbone-lab proxy on a node with no workloads, knowing `registry`.
async fn hbone_lab_rss(
    exe: &Path,
    shared: &Shared,
    registry: &Path,
    n: usize,
) -> Result<u64, SubjectError> {
    let dir = shared.dir.path();
    let ready = own_loopback(9, 15021);
    let config = format!(
        "node: idle-node\nregistry: {}\nca: {{address: \"https://{}\", rootCert: {}, tokenFile: {}}}\nlisteners:\n  readiness: \"{ready}\"\n",
        registry.display(),
        shared.host_ca,
        shared.root_file.display(),
        shared.token_file.display()
    );
    let file = dir.join(format!("scale-{n}.yaml"));
    let log = dir.join(format!("scale-hbone-lab-{n}.log"));
    let child = spawn_proxy(exe, &config, &file, &log)?;
    let child = Killed(child);
    let what = format!("hbone-lab with {n} workloads");
    wait_http_ready(None, ready, "/healthz/ready", &what, &log).await?;
    Ok(settled_rss(child.0.id()).await)
}

/// A dedicated-mode ztunnel in the server pod whose local config holds the
/// same workloads and services.
async fn ztunnel_rss(
    binary: &Path,
    topology: &Topology,
    shared: &Shared,
    registry: &Registry,
    n: usize,
) -> Result<u64, SubjectError> {
    let dir = shared.dir.path();
    let none = istio_policies(&parse_documents("", "none").map_err(setup)?, "istio-system");
    let config = dir.join(format!("scale-ztunnel-{n}.yaml"));
    std::fs::write(
        &config,
        hbone_xds::local_config::render(&mesh(registry, &none)),
    )
    .map_err(setup)?;
    let log = dir.join(format!("scale-ztunnel-{n}.log"));
    let (out, err) = log_to(&log)?;
    let child = topology
        .server
        .command(binary.to_str().unwrap_or("ztunnel"))
        .env("XDS_ADDRESS", "")
        .env("LOCAL_XDS_PATH", &config)
        .env("PROXY_MODE", "dedicated")
        .env("PROXY_WORKLOAD_INFO", "bench/server/server")
        .env("NODE_NAME", "node-s")
        .env("CA_ADDRESS", format!("https://{}", shared.pod_ca))
        .env("CA_ROOT_CA", &shared.root_file)
        .env("AUTH_TOKEN", &shared.token_file)
        .env("RUST_LOG", "warn")
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(setup)?;
    let child = Killed(child);
    let ready: SocketAddr = format!("{}:15021", topology.server_ip())
        .parse()
        .expect("an address");
    let what = format!("ztunnel with {n} workloads");
    wait_http_ready(Some(&topology.server), ready, "/healthz/ready", &what, &log).await?;
    Ok(settled_rss(child.0.id()).await)
}

/// `scale_workloads` for hbone-lab and (given) ztunnel: one sample per size
/// and subject, with `workloads`, `rss_bytes` and `bytes_per_workload`
/// (rows of a curve, not repetitions: they are reported as they are).
pub async fn workloads(
    subjects: &[Subject],
    topology: &Topology,
    shared: &Shared,
    sizes: &[usize],
    say: &mut dyn FnMut(&str),
) -> Result<Vec<Sample>, SubjectError> {
    topology.capture(false).map_err(setup)?;
    let mut samples = Vec::new();
    let mut all = vec![0];
    all.extend_from_slice(sizes);
    for subject in subjects {
        if matches!(subject, Subject::Direct | Subject::Rung(_)) {
            continue; // no registry to hold
        }
        let mut base = None;
        for &n in &all {
            let text = registry_text(topology, n);
            let path = shared.dir.path().join(format!("scale-registry-{n}.yaml"));
            std::fs::write(&path, &text).map_err(setup)?;
            say(&format!("{}: {n} workloads", subject.name()));
            let rss = match subject {
                Subject::HboneLab => hbone_lab_rss(&shared.proxy_exe, shared, &path, n).await?,
                Subject::Baseline(exe) => hbone_lab_rss(exe, shared, &path, n).await?,
                Subject::Ztunnel { binary, .. } => {
                    let registry = Registry::parse(&text, "scale registry").map_err(setup)?;
                    ztunnel_rss(binary, topology, shared, &registry, n).await?
                }
                Subject::Direct | Subject::Rung(_) => continue,
            };
            let Some(zero) = base else {
                base = Some(rss);
                continue;
            };
            let mut figures = BTreeMap::new();
            figures.insert("workloads".to_string(), n as f64);
            figures.insert("rss_bytes".to_string(), rss as f64);
            figures.insert(
                "bytes_per_workload".to_string(),
                (rss.saturating_sub(zero) as f64 / n as f64).round(),
            );
            samples.push(super::row(subject, "scale_workloads", figures));
        }
    }
    Ok(samples)
}
