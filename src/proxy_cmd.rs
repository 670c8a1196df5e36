//! `hbone-lab proxy`: run one node proxy from a config file.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use hbone_ca::client::CaClient;
use hbone_ca::{CertificateManager, RenewalPolicy};
use hbone_policies::authorization::MeshAuthorization;
use hbone_proxy::ProxyHandle;
use hbone_proxy::config::ProxyConfig;
use hbone_proxy::core::{CoreSettings, ProxyCore};
use hbone_proxy::keylog::KeyLogWriter;
use hbone_proxy::kube_registry::{self, ClusterLister, KubeLister, follow_cluster};
use hbone_proxy::policy_watch::{follow_policies, load_policies};
use hbone_proxy::registry::Registry;
use hbone_proxy::tls::MeshTrust;
use hbone_proxy::xds_registry::{XdsSettings, XdsStatus, follow, registry_from};
use hbone_proxy::zds_pods::ZdsStatus;

/// Run an HBONE node proxy (mTLS + HTTP/2 CONNECT on 15008), like ztunnel.
///
/// The config file (YAML) names the node, the workload registry, the Istio
/// policies, the CA and the listeners; see proxy/examples/node-1.yaml:
///
///   node: node-1
///   registry: registry.yaml
///   policies: [../../policies/istio]
///   ca: {address: "https://127.0.0.1:15012", rootCert: root.pem, tokenFile: node.token}
///   listeners: {hbonePort: 15008, socks5: "127.0.1.1:15080", metrics: "127.0.1.1:15020"}
///   h2: {streamWindow: 4194304, connectionWindow: 16777216, maxFrameSize: 1048576}
///
/// The registry and policy files are followed (checked every 2 s): a changed
/// registry serves new connections; changed policies also close the open
/// HBONE streams they now deny. An edit that does not parse is reported and
/// ignored. With `kubernetes:` instead of `registry:`, the workloads,
/// services and Istio policies come from the cluster's API server (policies
/// listed there replace those from files).
///
/// In ztunnel's place: with --xds (or `xds:` in the config) the workloads,
/// services and translated policies come from a control plane over delta
/// ADS, as ztunnel takes them from istiod — hbone-lab's own
/// (`hbone-lab ca serve --xds ...`) or a cluster's istiod. No config file
/// is needed then:
///
///   hbone-lab proxy --xds https://127.0.0.1:15012 --node node-2 \
///       --root-cert root.pem --token-file node-2.token --readiness 127.0.0.1:15021
///
/// Shared mode, one process per node as ztunnel runs: with --zds SOCKET the
/// proxy serves only the pods a node agent (istio-cni, or the lab's) hands
/// over, opening 15008, 15006 and 15001 inside each pod's namespace.
///
/// Readiness (15021) answers 200 once the control plane has answered and
/// every local workload has its certificate. A resource the proxy cannot use
/// is refused (NACK) with the reason, and its last good version kept.
///
/// SIGTERM or Ctrl-C drains: listeners close, open connections get drainGrace to finish.
#[derive(Args)]
#[command(verbatim_doc_comment)]
pub struct ProxyArgs {
    /// The proxy's YAML config (optional with --xds).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Follow this control plane (`https://host:15012`) over delta ADS
    /// instead of the config's registry and policy files.
    #[arg(long, value_name = "ADDRESS")]
    xds: Option<String>,
    /// Shared mode: serve the pods the node agent at this socket hands over
    /// (istio-cni's ZDS; its default is /var/run/ztunnel/ztunnel.sock), each
    /// inside its own network namespace on 15008, 15006 and 15001.
    #[arg(long, value_name = "SOCKET")]
    zds: Option<PathBuf>,
    /// The CA's address (default with --xds: the control plane's).
    #[arg(long, value_name = "ADDRESS")]
    ca: Option<String>,
    /// Override `ca.rootCert`: the mesh root, which also signs the control plane's certificate.
    #[arg(long, value_name = "PEM")]
    root_cert: Option<PathBuf>,
    /// Override `ca.tokenFile`: the bearer token for the CA and the control plane.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// The xDS node id (default, as ztunnel forms it:
    /// `ztunnel~$POD_IP~$POD_NAME.$POD_NAMESPACE~$POD_NAMESPACE.svc.cluster.local`).
    #[arg(long)]
    node_id: Option<String>,
    /// Override `node` (required without a config).
    #[arg(long)]
    node: Option<String>,
    /// Override `listeners.readiness`.
    #[arg(long)]
    readiness: Option<SocketAddr>,
    /// Write the mesh connections' TLS secrets to FILE (NSS key log format,
    /// as SSLKEYLOGFILE, which is read too), so that Wireshark can decrypt a
    /// capture. Anyone with the file can read the traffic: for learning only.
    #[arg(long, value_name = "FILE")]
    keylog: Option<PathBuf>,
    /// Override `listeners.socks5`.
    #[arg(long)]
    socks5: Option<SocketAddr>,
    /// Override `listeners.outbound` (transparent capture, 15001).
    #[arg(long)]
    outbound: Option<SocketAddr>,
    /// Override `listeners.metrics`.
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// Override `listeners.admin`.
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// Override `listeners.hbonePort`.
    #[arg(long)]
    hbone_port: Option<u16>,
}

/// Who the proxy says it is to a control plane, from the pod's
/// downward-API variables where they are set (as ztunnel reads them).
struct PodEnv {
    name: String,
    namespace: String,
    ip: String,
}

impl PodEnv {
    fn read(node: &str) -> PodEnv {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        PodEnv {
            name: var("POD_NAME").unwrap_or_else(|| node.to_string()),
            namespace: var("POD_NAMESPACE").unwrap_or_else(|| "istio-system".into()),
            ip: var("INSTANCE_IP")
                .or_else(|| var("POD_IP"))
                .unwrap_or_else(|| "127.0.0.1".into()),
        }
    }

    /// ztunnel's node id: `ztunnel~<ip>~<pod>.<namespace>~<namespace>.svc.cluster.local`.
    fn node_id(&self) -> String {
        let PodEnv {
            name,
            namespace,
            ip,
        } = self;
        format!("ztunnel~{ip}~{name}.{namespace}~{namespace}.svc.cluster.local")
    }

    /// ztunnel's node metadata: `NAME`, `NAMESPACE`, `INSTANCE_IPS`,
    /// `NODE_NAME`, every `ISTIO_META_*` variable with the prefix stripped,
    /// and `CLUSTER_ID` (default `Kubernetes`).
    fn metadata(&self, node: &str) -> BTreeMap<String, String> {
        let mut metadata: BTreeMap<String, String> = std::env::vars()
            .filter_map(|(k, v)| Some((k.strip_prefix("ISTIO_META_")?.to_string(), v)))
            .collect();
        metadata.insert("NAME".into(), self.name.clone());
        metadata.insert("NAMESPACE".into(), self.namespace.clone());
        metadata.insert("INSTANCE_IPS".into(), self.ip.clone());
        metadata.insert("NODE_NAME".into(), node.to_string());
        metadata
            .entry("CLUSTER_ID".into())
            .or_insert_with(|| std::env::var("CLUSTER_ID").unwrap_or_else(|_| "Kubernetes".into()));
        metadata
    }
}

/// The config from the file and the flags that override it.
fn config(args: &ProxyArgs) -> anyhow::Result<ProxyConfig> {
    let mut config = match (&args.config, &args.xds) {
        (Some(file), _) => ProxyConfig::load(file)?,
        (None, Some(xds)) => match (&args.node, &args.root_cert, &args.token_file) {
            (Some(node), Some(root), Some(token)) => {
                ProxyConfig::for_control_plane(node, xds, root.clone(), token.clone())
            }
            _ => {
                let missing: Vec<&str> = [
                    ("--node", args.node.is_none()),
                    ("--root-cert", args.root_cert.is_none()),
                    ("--token-file", args.token_file.is_none()),
                ]
                .into_iter()
                .filter_map(|(flag, absent)| absent.then_some(flag))
                .collect();
                anyhow::bail!(
                    "--xds without --config needs --node, --root-cert and --token-file (missing: {})",
                    missing.join(", ")
                )
            }
        },
        (None, None) => anyhow::bail!(
            "give --config FILE (see proxy/examples/node-1.yaml), or --xds ADDRESS with --node, --root-cert and --token-file to follow a control plane"
        ),
    };
    if let Some(xds) = &args.xds {
        config.xds = Some(xds.clone());
        config.registry = None;
        config.kubernetes = None;
    }
    if let Some(node) = &args.node {
        config.node = node.clone();
    }
    if let Some(ca) = &args.ca {
        config.ca.address = ca.clone();
    }
    if let Some(root) = &args.root_cert {
        config.ca.root_cert = root.clone();
    }
    if let Some(token) = &args.token_file {
        config.ca.token_file = token.clone();
    }
    config.listeners.readiness = args.readiness.or(config.listeners.readiness);
    if let Some(zds) = &args.zds {
        config.zds = Some(zds.clone());
    }
    if config.zds.is_some() {
        let l = &mut config.listeners;
        l.plaintext_port = l.plaintext_port.or(Some(15006));
        l.pod_outbound_port = l.pod_outbound_port.or(Some(15001));
    }
    Ok(config)
}

pub async fn run(args: ProxyArgs) -> anyhow::Result<()> {
    let mut config = config(&args)?;
    let l = &mut config.listeners;
    l.socks5 = args.socks5.or(l.socks5);
    l.outbound = args.outbound.or(l.outbound);
    l.metrics = args.metrics.or(l.metrics);
    l.admin = args.admin.or(l.admin);
    l.hbone_port = args.hbone_port.unwrap_or(l.hbone_port);

    let (registry, source) = match (&config.registry, &config.kubernetes) {
        _ if config.xds.is_some() => (
            registry_from(std::iter::empty(), &config.node).map_err(anyhow::Error::msg)?,
            "the control plane".to_string(),
        ),
        (Some(file), _) => (Registry::load(file)?, file.display().to_string()),
        (None, Some(k8s)) => {
            let lister = KubeLister::connect().await.map_err(anyhow::Error::msg)?;
            let snapshot = lister.snapshot().await.map_err(anyhow::Error::msg)?;
            let registry = kube_registry::registry_from(&snapshot, &k8s.trust_domain)
                .map_err(anyhow::Error::msg)?;
            (registry, "the Kubernetes cluster".to_string())
        }
        (None, None) => anyhow::bail!("the config names no registry"),
    };
    let registry = Arc::new(registry);
    anyhow::ensure!(
        registry.nodes.iter().any(|n| n.name == config.node),
        "node {:?} is not in the registry from {} (nodes: {})",
        config.node,
        source,
        registry
            .nodes
            .iter()
            .map(|n| n.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let policies = match config.xds {
        Some(_) => MeshAuthorization::pushed(&config.root_namespace, Vec::new()),
        None => load_policies(&config.policies, &config.root_namespace)?.into_translated(),
    };
    let root_pem = std::fs::read_to_string(&config.ca.root_cert)
        .with_context(|| format!("cannot read ca.rootCert {}", config.ca.root_cert.display()))?;
    if !config.ca.token_file.exists() {
        anyhow::bail!(
            "cannot read ca.tokenFile {}: no such file (the bearer token for the CA and the control plane)",
            config.ca.token_file.display()
        );
    }
    let client = CaClient::with_token_file(&config.ca.address, &root_pem, &config.ca.token_file)?;
    let policy = RenewalPolicy {
        ttl: config.ca.ttl,
        ..RenewalPolicy::default()
    };
    let certs = Arc::new(CertificateManager::new(Arc::new(client), policy));
    let roots = hbone_ca::inspect::pem_certs(&root_pem)?;
    let mut trust = MeshTrust::new(&roots, &registry.trust_domain)?;
    let key_log = hbone_proxy::keylog::requested(args.keylog.clone());
    if let Some(path) = &key_log {
        let writer = KeyLogWriter::open(path)
            .with_context(|| format!("cannot open the TLS key log {}", path.display()))?;
        trust = trust.with_key_log(writer);
    }
    let settings = CoreSettings {
        node: config.node.clone(),
        h2: config.h2.clone(),
        hbone_port: config.listeners.hbone_port,
        bind_source_ip: config.bind_source_ip,
    };
    let core = ProxyCore::new(settings, registry, policies, certs, trust);
    if let Some(mode) = config.bench_tunnel {
        tracing::warn!(
            tunnel = mode.as_str(),
            "benchTunnel is set: connections between proxies are a benchmark rung ({}), not HBONE, and no policy is enforced — this is not a mesh",
            if mode == hbone_proxy::bench_tunnel::BenchTunnel::Plain {
                "a TCP relay"
            } else {
                "mutual TLS without HTTP/2"
            }
        );
    }
    let core = Arc::new(core.with_bench_tunnel(config.bench_tunnel));
    if let Some(address) = &config.xds {
        core.set_waiting_for(Some(format!("the control plane {address}")));
    }
    let stop_following = tokio_util::sync::CancellationToken::new();
    if let Some(socket) = &config.zds {
        let (status, _) = tokio::sync::watch::channel(ZdsStatus::default());
        tokio::spawn(hbone_proxy::zds_pods::follow(
            core.clone(),
            socket.clone(),
            std::time::Duration::from_secs(5),
            status,
            stop_following.clone(),
        ));
    }
    let proxy = ProxyHandle::start(core.clone(), &config.listeners).await?;
    println!("proxy for node {} running: {:?}", config.node, proxy.addrs);
    if let Some(path) = key_log {
        let every = std::time::Duration::from_secs(60);
        tokio::spawn(hbone_proxy::keylog::keep_warning(
            path,
            every,
            stop_following.clone(),
        ));
    }
    if let Some(address) = &config.xds {
        let pod = PodEnv::read(&config.node);
        let settings = XdsSettings {
            address: address.clone(),
            root_pem: root_pem.clone(),
            token_file: Some(config.ca.token_file.clone()),
            node_id: args.node_id.clone().unwrap_or_else(|| pod.node_id()),
            metadata: pod.metadata(&config.node),
            root_namespace: config.root_namespace.clone(),
            max_backoff: std::time::Duration::from_secs(15),
        };
        let (status, _) = tokio::sync::watch::channel(XdsStatus::default());
        tokio::spawn(follow(
            core.clone(),
            settings,
            status,
            stop_following.clone(),
        ));
    } else if !config.policies.is_empty() {
        tokio::spawn(follow_policies(
            core.clone(),
            config.policies.clone(),
            config.root_namespace.clone(),
            std::time::Duration::from_secs(2),
            stop_following.clone(),
        ));
    }
    match (&config.registry, &config.kubernetes) {
        _ if config.xds.is_some() => {}
        (Some(file), _) => {
            tokio::spawn(hbone_proxy::registry_watch::follow_file(
                core,
                file.clone(),
                std::time::Duration::from_secs(2),
                stop_following.clone(),
            ));
        }
        (None, Some(k8s)) => {
            let lister = KubeLister::connect().await.map_err(anyhow::Error::msg)?;
            tokio::spawn(follow_cluster(
                core,
                lister,
                k8s.trust_domain.clone(),
                k8s.poll_interval,
                stop_following.clone(),
            ));
        }
        (None, None) => {}
    }
    wait_for_stop().await?;
    stop_following.cancel();
    println!("draining (up to {:?})…", config.drain_grace);
    proxy.shutdown(config.drain_grace).await;
    Ok(())
}

/// Waits for SIGTERM or Ctrl-C.
pub async fn wait_for_stop() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    Ok(())
}
