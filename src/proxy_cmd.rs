//! `hbone-lab proxy`: run one node proxy from a config file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use hbone_ca::client::CaClient;
use hbone_ca::{CertificateManager, RenewalPolicy};
use hbone_proxy::ProxyHandle;
use hbone_proxy::config::ProxyConfig;
use hbone_proxy::core::{CoreSettings, ProxyCore};
use hbone_proxy::kube_registry::{ClusterLister, KubeLister, follow_cluster, registry_from};
use hbone_proxy::policy_watch::{follow_policies, load_policies};
use hbone_proxy::registry::Registry;
use hbone_proxy::tls::MeshTrust;

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
/// SIGTERM or Ctrl-C drains: listeners close, open connections get drainGrace to finish.
#[derive(Args)]
#[command(verbatim_doc_comment)]
pub struct ProxyArgs {
    /// The proxy's YAML config.
    #[arg(long)]
    config: PathBuf,
    /// Override `node`.
    #[arg(long)]
    node: Option<String>,
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

pub async fn run(args: ProxyArgs) -> anyhow::Result<()> {
    let mut config = ProxyConfig::load(&args.config)?;
    if let Some(node) = args.node {
        config.node = node;
    }
    let l = &mut config.listeners;
    l.socks5 = args.socks5.or(l.socks5);
    l.outbound = args.outbound.or(l.outbound);
    l.metrics = args.metrics.or(l.metrics);
    l.admin = args.admin.or(l.admin);
    l.hbone_port = args.hbone_port.unwrap_or(l.hbone_port);

    let (registry, source) = match (&config.registry, &config.kubernetes) {
        (Some(file), _) => (Registry::load(file)?, file.display().to_string()),
        (None, Some(k8s)) => {
            let lister = KubeLister::connect().await.map_err(anyhow::Error::msg)?;
            let snapshot = lister.snapshot().await.map_err(anyhow::Error::msg)?;
            let registry =
                registry_from(&snapshot, &k8s.trust_domain).map_err(anyhow::Error::msg)?;
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
    let policies = load_policies(&config.policies, &config.root_namespace)?;
    let root_pem = std::fs::read_to_string(&config.ca.root_cert)
        .with_context(|| format!("cannot read ca.rootCert {}", config.ca.root_cert.display()))?;
    let token = std::fs::read_to_string(&config.ca.token_file).with_context(|| {
        format!(
            "cannot read ca.tokenFile {}",
            config.ca.token_file.display()
        )
    })?;
    let client = CaClient::new(&config.ca.address, &root_pem, token.trim())?;
    let policy = RenewalPolicy {
        ttl: config.ca.ttl,
        ..RenewalPolicy::default()
    };
    let certs = Arc::new(CertificateManager::new(Arc::new(client), policy));
    let roots = hbone_ca::inspect::pem_certs(&root_pem)?;
    let trust = MeshTrust::new(&roots, &registry.trust_domain)?;
    let settings = CoreSettings {
        node: config.node.clone(),
        h2: config.h2.clone(),
        hbone_port: config.listeners.hbone_port,
        bind_source_ip: config.bind_source_ip,
    };
    let core = Arc::new(ProxyCore::new(settings, registry, policies, certs, trust));
    let proxy = ProxyHandle::start(core.clone(), &config.listeners).await?;
    println!("proxy for node {} running: {:?}", config.node, proxy.addrs);
    let stop_following = tokio_util::sync::CancellationToken::new();
    if !config.policies.is_empty() {
        tokio::spawn(follow_policies(
            core.clone(),
            config.policies.clone(),
            config.root_namespace.clone(),
            std::time::Duration::from_secs(2),
            stop_following.clone(),
        ));
    }
    match (&config.registry, &config.kubernetes) {
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
