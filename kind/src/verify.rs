//! `hbone-lab kind verify`: is the running kind lab the lab the files
//! describe? It checks what the lab's own verification steps check — pods
//! ready, every policy from `policies/` present, the gateway's service a
//! ClusterIP, PeerAuthentication STRICT — and then runs the connectivity
//! matrix for real: for each row whose source is a pod, a short-lived probe
//! pod with that source's service account and labels (so Cilium and ztunnel
//! both take it for that workload) tries the destination, and the outcome is
//! compared with what `policy check` predicts.
//!
//! The cluster is reached through [`Cluster`], so the logic is tested
//! against [`crate::fake_cluster::FakeCluster`]; [`crate::kube_cluster`]
//! is the real one.

use std::collections::BTreeMap;

use hbone_policies::load::{Loaded, Resource};
use hbone_policies::matrix::{PolicySet, Row, Verdict, matrix};
use hbone_policies::topology::{LabTopology, LabWorkload, MeshMode};
use thiserror::Error;

use crate::gateway_api::istio_gateway_service_account;
use crate::node_proxy::{self, NodeInfo, NodeProxies};
use hbone_policies::selector::labels_match;

#[derive(Debug, Error)]
/// Why `verify` could not look at the cluster.
pub enum VerifyError {
    #[error("the Kubernetes API: {0}")]
    /// The API server's error.
    Api(String),
    #[error("probe pod {pod}: {message}")]
    /// A probe pod did not run to an end.
    Probe {
        /// The probe pod.
        pod: String,
        /// What went wrong.
        message: String,
    },
}

/// A pod as `verify` needs to see it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PodInfo {
    /// The pod's name.
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Whether all its containers are ready.
    pub ready: bool,
    /// The node it runs on, once scheduled.
    pub node: Option<String>,
}

/// A policy resource by kind, namespace (None: cluster-scoped) and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ResourceRef {
    /// `AuthorizationPolicy`, `CiliumNetworkPolicy`, …
    pub kind: String,
    /// Its namespace; `None` when cluster-scoped.
    pub namespace: Option<String>,
    /// Its name.
    pub name: String,
}

/// A short-lived pod that tries one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSpec {
    /// The pod's name.
    pub pod_name: String,
    /// Its namespace.
    pub namespace: String,
    /// The service account it runs as (its mesh identity).
    pub service_account: String,
    /// Its labels (what policies select it by).
    pub labels: BTreeMap<String, String>,
    /// hbone-lab's image.
    pub image: String,
    /// `hbone-lab` arguments: `app probe <target> --kind <kind> --timeout 5s`.
    pub args: Vec<String>,
    /// The node to run on (with hbone-lab as a node's proxy: one served by
    /// the other implementation than the destination's).
    pub node: Option<String>,
}

/// How a probe pod ended: its exit code (0 answered, 1 refused, 2 no
/// answer) and its log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeRun {
    /// 0 answered, 1 refused, 2 no answer.
    pub exit_code: i32,
    /// What it printed.
    pub log: String,
}

/// What `verify` asks of a cluster.
pub trait Cluster {
    /// The pods of `namespace`.
    fn pods(&self, namespace: &str) -> impl Future<Output = Result<Vec<PodInfo>, VerifyError>>;
    /// Whether `resource` exists.
    fn exists(&self, resource: &ResourceRef) -> impl Future<Output = Result<bool, VerifyError>>;
    /// The type of Service `namespace/name`, if it exists.
    fn service_type(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<String>, VerifyError>>;
    /// The mode of PeerAuthentication `namespace/name`, if it exists.
    fn peer_authentication_mode(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<String>, VerifyError>>;
    /// Runs a probe pod to its end.
    fn run_probe(&self, spec: &ProbeSpec) -> impl Future<Output = Result<ProbeRun, VerifyError>>;
    /// The cluster's nodes.
    fn nodes(&self) -> impl Future<Output = Result<Vec<NodeInfo>, VerifyError>>;
}

/// One check and its outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    /// What was checked.
    pub name: String,
    /// Whether it held.
    pub ok: bool,
    /// What was seen.
    pub detail: String,
}

/// One connectivity row, predicted and observed.
#[derive(Debug, Clone)]
pub struct Observed {
    /// The predicted row of the matrix.
    pub row: Row,
    /// What the probe saw; `None` when it could not tell.
    pub observed: Option<Verdict>,
    /// The probe's own words.
    pub detail: String,
}

impl Observed {
    /// True when the cluster did what the matrix predicts.
    pub fn matches(&self) -> bool {
        self.observed == Some(self.row.verdict)
    }
}

#[derive(Debug, Clone, Default)]
/// Everything `verify` found.
pub struct Report {
    /// The checks of what is installed.
    pub checks: Vec<CheckResult>,
    /// The connectivity rows, when probed.
    pub connectivity: Vec<Observed>,
}

impl Report {
    /// True when every check held and every row matched.
    pub fn ok(&self) -> bool {
        self.checks.iter().all(|c| c.ok) && self.connectivity.iter().all(Observed::matches)
    }

    /// Every failed check and every row that did not behave as predicted,
    /// with the rules involved.
    pub fn differences(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| format!("{}: {}", c.name, c.detail))
            .collect();
        for o in self.connectivity.iter().filter(|o| !o.matches()) {
            let seen = o.observed.map(Verdict::as_str).unwrap_or("unknown");
            out.push(format!(
                "{} → {}:{}: predicted {}, observed {seen} ({}); the rules: {}",
                o.row.src,
                o.row.dst,
                o.row.port,
                o.row.verdict.as_str(),
                o.detail,
                o.row.reasons.join("; ")
            ));
        }
        out
    }
}

/// Options of one verification.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// The lab's namespace.
    pub namespace: String,
    /// The image the probe pods run.
    pub image: String,
    /// Whether to probe the connectivity matrix (one pod per row).
    pub connectivity: bool,
}

fn check(name: impl Into<String>, ok: bool, detail: impl Into<String>) -> CheckResult {
    CheckResult {
        name: name.into(),
        ok,
        detail: detail.into(),
    }
}

fn selects(workload: &LabWorkload, pod: &PodInfo) -> bool {
    !workload.labels.is_empty() && labels_match(&workload.labels, &pod.labels)
}

/// The policy resources the lab applies, as references.
pub fn resource_refs(resources: &[Loaded]) -> Vec<ResourceRef> {
    resources
        .iter()
        .map(|l| {
            let (kind, meta) = match &l.resource {
                Resource::AuthorizationPolicy(p) => ("AuthorizationPolicy", &p.metadata),
                Resource::PeerAuthentication(p) => ("PeerAuthentication", &p.metadata),
                Resource::CiliumNetworkPolicy(p) => ("CiliumNetworkPolicy", &p.metadata),
                Resource::CiliumClusterwideNetworkPolicy(p) => {
                    ("CiliumClusterwideNetworkPolicy", &p.metadata)
                }
            };
            ResourceRef {
                kind: kind.into(),
                namespace: meta.namespace.clone(),
                name: meta.name.clone().unwrap_or_default(),
            }
        })
        .collect()
}

/// The probe for one row, or `None` when its source is not a pod.
pub fn probe_for(
    row: &Row,
    topology: &LabTopology,
    options: &VerifyOptions,
    index: usize,
) -> Option<ProbeSpec> {
    let src = topology.workloads.iter().find(|w| w.name == row.src)?;
    let (target, kind) = match topology.workloads.iter().find(|w| w.name == row.dst) {
        Some(dst) => {
            let service = match dst.mesh {
                MeshMode::HboneClient => istio_gateway_service_account(&dst.name),
                _ => dst.name.clone(),
            };
            let kind = if row.port == 5432 { "postgres" } else { "http" };
            (
                format!("{service}.{}.svc.cluster.local:{}", dst.namespace, row.port),
                kind,
            )
        }
        None => (format!("{}:{}", row.dst, row.port), "tls"),
    };
    let mut labels = src.labels.clone();
    labels.insert("hbone-lab.dev/probe".into(), "true".into());
    Some(ProbeSpec {
        pod_name: format!("hbl-probe-{index}-{}", src.name),
        namespace: src.namespace.clone(),
        service_account: src.service_account.clone(),
        labels,
        image: options.image.clone(),
        args: ["app", "probe", &target, "--kind", kind, "--timeout", "5s"]
            .map(String::from)
            .to_vec(),
        node: None,
    })
}

/// With hbone-lab as a node's proxy: it runs there, ready, and ztunnel does not.
fn node_proxy_checks(proxies: &NodeProxies, system: &[PodInfo]) -> Vec<CheckResult> {
    let app = |p: &PodInfo, app: &str| p.labels.get("app").is_some_and(|a| a == app);
    let mut checks = Vec::new();
    for node in &proxies.hbone_lab {
        let on = |p: &&PodInfo| p.node.as_deref() == Some(node.as_str());
        let ours: Vec<&PodInfo> = system
            .iter()
            .filter(on)
            .filter(|p| app(p, node_proxy::DAEMONSET))
            .collect();
        checks.push(check(
            format!("hbone-lab is the node proxy of {node}"),
            ours.iter().any(|p| p.ready),
            match ours.len() {
                0 => format!("no {} pod there: kubectl apply -f kind/node-proxy/ (HBONE_NODE_PROXY=… kind/up.sh does)", node_proxy::DAEMONSET),
                n => format!("{n} pod(s), {} ready", ours.iter().filter(|p| p.ready).count()),
            },
        ));
        let ztunnels = system
            .iter()
            .filter(on)
            .filter(|p| app(p, node_proxy::ZTUNNEL_APP))
            .count();
        checks.push(check(
            format!("ztunnel is off {node}"),
            ztunnels == 0,
            if ztunnels == 0 {
                "istio-cni hands the node's pods to hbone-lab".to_string()
            } else {
                format!("{ztunnels} ztunnel pod(s) there: both would claim the node's pods")
            },
        ));
    }
    checks
}

/// Runs every check against `cluster`.
pub async fn verify<C: Cluster>(
    cluster: &C,
    topology: &LabTopology,
    resources: &[Loaded],
    options: &VerifyOptions,
) -> Result<Report, VerifyError> {
    let ns = options.namespace.as_str();
    let mut report = Report::default();
    let pods = cluster.pods(ns).await?;
    for w in topology.workloads.iter().filter(|w| w.namespace == ns) {
        let matching: Vec<&PodInfo> = pods.iter().filter(|p| selects(w, p)).collect();
        let ready = matching.iter().filter(|p| p.ready).count();
        report.checks.push(check(
            format!("pod {} ready", w.name),
            ready > 0,
            match (matching.len(), ready) {
                (0, _) => "no pod with its labels".to_string(),
                (n, 0) => format!("{n} pod(s), none ready"),
                (n, r) => format!("{r} of {n} ready"),
            },
        ));
    }
    for r in resource_refs(resources) {
        let present = cluster.exists(&r).await?;
        let at = match &r.namespace {
            Some(n) => format!("{n}/{}", r.name),
            None => r.name.clone(),
        };
        report.checks.push(check(
            format!("{} {at} present", r.kind),
            present,
            if present {
                "applied"
            } else {
                "missing: apply policies/ (kind/up.sh does)"
            },
        ));
    }
    for gw in topology
        .workloads
        .iter()
        .filter(|w| w.mesh == MeshMode::HboneClient)
    {
        let service = istio_gateway_service_account(&gw.name);
        let kind = cluster.service_type(&gw.namespace, &service).await?;
        report.checks.push(check(
            format!("service {service} is ClusterIP"),
            kind.as_deref() == Some("ClusterIP"),
            match kind {
                Some(k) => format!("type {k}"),
                None => "no such service".into(),
            },
        ));
    }
    let proxies = NodeProxies::from_nodes(&cluster.nodes().await?);
    if !proxies.hbone_lab.is_empty() {
        let system = cluster.pods(node_proxy::NAMESPACE).await?;
        report.checks.extend(node_proxy_checks(&proxies, &system));
    }
    let mode = cluster.peer_authentication_mode(ns, "default").await?;
    report.checks.push(check(
        format!("PeerAuthentication {ns}/default is STRICT"),
        mode.as_deref() == Some("STRICT"),
        format!("mode {}", mode.as_deref().unwrap_or("(none)")),
    ));
    if options.connectivity {
        let policies = PolicySet::from_loaded(resources);
        for (i, row) in matrix(topology, &policies).into_iter().enumerate() {
            let Some(mut spec) = probe_for(&row, topology, options, i) else {
                continue;
            };
            let dst_node = topology
                .workloads
                .iter()
                .find(|w| w.name == row.dst)
                .and_then(|dst| pods.iter().find(|p| selects(dst, p)))
                .and_then(|p| p.node.clone());
            spec.node = proxies.across(dst_node.as_deref());
            let crossing = spec.node.as_deref().map(|from| {
                let to = dst_node
                    .as_deref()
                    .map_or("outside the mesh", |n| proxies.proxy_of(n));
                format!("[{} → {to}] ", proxies.proxy_of(from))
            });
            let (observed, detail) = match cluster.run_probe(&spec).await {
                Ok(run) => (
                    Some(Verdict::of(run.exit_code == 0)),
                    format!("{}{}", crossing.unwrap_or_default(), run.log.trim()),
                ),
                Err(e) => (None, e.to_string()),
            };
            report.connectivity.push(Observed {
                row,
                observed,
                detail,
            });
        }
    }
    Ok(report)
}
