//! `hbone-lab proxy`: run one node proxy from a config file.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use hbone_proxy::assemble::{Extras, NodeProxy};
use hbone_proxy::config::ProxyConfig;

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
    /// The CA's revocation list (PEM, from `hbone-lab ca revoke`); overrides
    /// `ca.crl`. Peers presenting a revoked certificate are refused, in both
    /// directions (`certificate_revoked`); the file is followed.
    #[arg(long, value_name = "FILE")]
    crl: Option<PathBuf>,
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
    if let Some(crl) = &args.crl {
        config.ca.crl = Some(crl.clone());
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
    let extras = Extras {
        key_log: args.keylog.clone(),
        node_id: args.node_id.clone(),
    };
    let proxy = NodeProxy::start(&config, &extras).await?;
    println!(
        "proxy for node {} running: {:?}",
        config.node,
        proxy.addrs()
    );
    wait_for_stop().await?;
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
