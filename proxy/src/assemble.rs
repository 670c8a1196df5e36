//! From a config to a running node proxy: the registry from its source
//! (a file, a Kubernetes cluster, or a control plane over xDS), the
//! policies, the CA client and the mesh trust, the listeners, and the tasks
//! that follow each source afterwards. `hbone-lab proxy` only parses its
//! flags into a [`ProxyConfig`] and calls [`NodeProxy::start`]; the lab and
//! the tests, which build their registries in memory, share the lower step
//! ([`ProxyCore::with_ca`]).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hbone_ca::RenewalPolicy;
use hbone_policies::authorization::MeshAuthorization;
use thiserror::Error;
use tokio_util::sync::CancellationToken;

use crate::config::ProxyConfig;
use crate::proxy::{BoundAddrs, ProxyHandle};
use crate::registry::{Registry, RegistryError};
use crate::sources::kube::{ClusterLister, KubeLister};
use crate::sources::xds::{XdsSettings, XdsStatus};
use crate::sources::zds::ZdsStatus;
use crate::state::{CaAccess, CaToken, CoreError, CoreSettings, ProxyCore};
use hbone_policies::load::LoadError;

/// How often the registry and policy files are looked at again.
const FILE_POLL: Duration = Duration::from_secs(2);

/// Why a node proxy could not be built from its config and started.
#[derive(Debug, Error)]
pub enum AssembleError {
    /// The config sets `benchTunnel`, but this build has no benchmark rungs.
    #[error(
        "benchTunnel: {0} is a benchmark rung, and this proxy was built without them (they come with the `bench-rungs` feature of hbone-proxy, which the hbone-lab binary turns on for its bench command)"
    )]
    BenchRungsNotBuilt(&'static str),
    /// The config names none of `registry`, `kubernetes` or `xds`.
    #[error("the config names no registry (registry:, kubernetes: or xds:)")]
    NoRegistry,
    /// The registry file could not be read or parsed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The Kubernetes API could not be reached or listed.
    #[error("the Kubernetes cluster: {0}")]
    Kubernetes(#[from] crate::sources::kube::KubeError),
    /// The cluster's pods and services do not make a valid registry.
    #[error("the registry from the Kubernetes cluster: {0}")]
    Workloads(#[from] crate::config::FieldError),
    /// The configured node is not among the registry's nodes.
    #[error("node {node:?} is not in the registry from {source_name} (nodes: {nodes})")]
    NodeMissing {
        /// The node the config names.
        node: String,
        /// Where the registry came from (a file, the cluster, the control plane).
        source_name: String,
        /// The node names the registry does list, comma-separated.
        nodes: String,
    },
    /// A policy file could not be read or parsed.
    #[error(transparent)]
    Policies(#[from] LoadError),
    /// The mesh root certificate (`ca.rootCert`) could not be read.
    #[error("cannot read ca.rootCert {}: {source}", path.display())]
    RootCert {
        /// The file `ca.rootCert` names.
        path: PathBuf,
        /// The read error.
        #[source]
        source: std::io::Error,
    },
    /// The CA bearer token file (`ca.tokenFile`) does not exist.
    #[error(
        "cannot read ca.tokenFile {}: no such file (the bearer token for the CA and the control plane)",
        path.display()
    )]
    TokenFile {
        /// The file `ca.tokenFile` names.
        path: PathBuf,
    },
    /// The CA client, the mesh trust or the key log could not be set up.
    #[error(transparent)]
    Core(#[from] CoreError),
    /// A listener could not be bound, or a workload's namespace entered.
    #[error(transparent)]
    Start(#[from] crate::proxy::StartError),
}

/// What the command line adds to a config.
#[derive(Debug, Clone, Default)]
pub struct Extras {
    /// Where to write the TLS secrets (`--keylog`, or `SSLKEYLOGFILE`).
    pub key_log: Option<PathBuf>,
    /// The xDS node id, instead of the one formed from the pod's variables.
    pub node_id: Option<String>,
}

/// A node proxy serving, and the tasks that keep its registry, policies
/// and pods current.
pub struct NodeProxy {
    /// The listeners, their bound addresses and the shared state.
    pub handle: ProxyHandle,
    followers: CancellationToken,
}

impl NodeProxy {
    /// Builds everything `config` names and opens the listeners.
    pub async fn start(config: &ProxyConfig, extras: &Extras) -> Result<NodeProxy, AssembleError> {
        let (registry, lister) = first_registry(config).await?;
        let policies = match config.xds {
            Some(_) => MeshAuthorization::pushed(&config.root_namespace, Vec::new()),
            None => crate::sources::policy_file::load_policies(
                &config.policies,
                &config.root_namespace,
            )?
            .into_translated(),
        };
        let root_pem = std::fs::read_to_string(&config.ca.root_cert).map_err(|source| {
            AssembleError::RootCert {
                path: config.ca.root_cert.clone(),
                source,
            }
        })?;
        if !config.ca.token_file.exists() {
            let path = config.ca.token_file.clone();
            return Err(AssembleError::TokenFile { path });
        }
        let key_log = crate::keylog::requested(extras.key_log.clone());
        let ca = CaAccess {
            address: config.ca.address.clone(),
            root_pem: root_pem.clone(),
            token: CaToken::File(config.ca.token_file.clone()),
            renewal: RenewalPolicy {
                ttl: config.ca.ttl,
                ..RenewalPolicy::default()
            },
            key_log: key_log.clone(),
            crl: config.ca.crl.clone(),
        };
        let settings = CoreSettings {
            node: config.node.clone(),
            h2: config.h2.clone(),
            hbone_port: config.listeners.hbone_port,
            bind_source_ip: config.bind_source_ip,
        };
        let core = ProxyCore::with_ca(settings, registry, policies, &ca)?;
        #[cfg(feature = "bench-rungs")]
        let core = crate::bench_tunnel::install(core, config.bench_tunnel);
        #[cfg(not(feature = "bench-rungs"))]
        if let Some(mode) = config.bench_tunnel {
            return Err(AssembleError::BenchRungsNotBuilt(mode.as_str()));
        }
        let core = Arc::new(core);
        if let Some(address) = &config.xds {
            core.own.add(crate::state::address_of(address));
            core.set_waiting_for(Some(format!("the control plane {address}")));
        }
        let followers = CancellationToken::new();
        if let Some(socket) = &config.zds {
            let (status, _) = tokio::sync::watch::channel(ZdsStatus::default());
            let every = Duration::from_secs(5);
            let follow = crate::sources::zds::follow(
                core.clone(),
                socket.clone(),
                every,
                status,
                followers.clone(),
            );
            tokio::spawn(follow);
        }
        let handle = ProxyHandle::start(core.clone(), &config.listeners).await?;
        if let Some(path) = &config.ca.crl {
            follow_crl(path.clone(), &core, followers.clone());
        }
        if let Some(path) = key_log {
            let every = Duration::from_secs(60);
            tokio::spawn(crate::keylog::keep_warning(path, every, followers.clone()));
        }
        follow_sources(config, extras, &core, root_pem, lister, &followers);
        Ok(NodeProxy { handle, followers })
    }

    /// The addresses the listeners were bound to.
    pub fn addrs(&self) -> &BoundAddrs {
        &self.handle.addrs
    }

    /// Stops following, closes the listeners and gives open connections
    /// `grace` to finish.
    pub async fn shutdown(self, grace: Duration) {
        self.followers.cancel();
        self.handle.shutdown(grace).await;
    }
}

/// Reads the CA's revocation list again whenever it changes: a new
/// edition applies to the next handshake; one that does not load is
/// reported and the last good one stays in force.
fn follow_crl(path: PathBuf, core: &Arc<ProxyCore>, stop: CancellationToken) {
    let revocations = core.trust.revocations().clone();
    let core = core.clone();
    let watched = path.clone();
    tokio::spawn(crate::sources::file_watch::on_change(
        Duration::from_secs(2),
        stop,
        move || crate::sources::file_watch::stamp(&watched),
        move || match revocations.reload(&path) {
            Ok(lists) => {
                let closed = core.close_revoked().len();
                tracing::info!(path = %path.display(), lists, closed, "revocation list reloaded");
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "the revocation list does not load; the last good one stays in force");
                false
            }
        },
    ));
}

/// The registry to start with, from wherever the config says it lives; a
/// cluster's client is kept to follow the cluster afterwards.
async fn first_registry(
    config: &ProxyConfig,
) -> Result<(Arc<Registry>, Option<KubeLister>), AssembleError> {
    let (registry, source_name, lister) = match (&config.registry, &config.kubernetes) {
        _ if config.xds.is_some() => {
            let empty = crate::sources::xds::registry_from(std::iter::empty(), &config.node)?;
            (empty, "the control plane".to_string(), None)
        }
        (Some(file), _) => (Registry::load(file)?, file.display().to_string(), None),
        (None, Some(k8s)) => {
            let lister = KubeLister::connect().await?;
            let snapshot = lister.snapshot().await?;
            let registry = crate::sources::kube::registry_from(&snapshot, &k8s.trust_domain)?;
            (registry, "the Kubernetes cluster".to_string(), Some(lister))
        }
        (None, None) => return Err(AssembleError::NoRegistry),
    };
    if !registry.nodes.iter().any(|n| n.name == config.node) {
        let nodes: Vec<&str> = registry.nodes.iter().map(|n| n.name.as_str()).collect();
        return Err(AssembleError::NodeMissing {
            node: config.node.clone(),
            source_name,
            nodes: nodes.join(", "),
        });
    }
    Ok((Arc::new(registry), lister))
}

/// The tasks that keep the registry and the policies current: the control
/// plane, or the files, or the cluster.
fn follow_sources(
    config: &ProxyConfig,
    extras: &Extras,
    core: &Arc<ProxyCore>,
    root_pem: String,
    lister: Option<KubeLister>,
    followers: &CancellationToken,
) {
    let stop = followers.clone();
    if let Some(address) = &config.xds {
        let pod = PodEnv::read(&config.node);
        let settings = XdsSettings {
            address: address.clone(),
            root_pem,
            token_file: Some(config.ca.token_file.clone()),
            node_id: extras.node_id.clone().unwrap_or_else(|| pod.node_id()),
            metadata: pod.metadata(&config.node),
            root_namespace: config.root_namespace.clone(),
            max_backoff: Duration::from_secs(15),
        };
        let (status, _) = tokio::sync::watch::channel(XdsStatus::default());
        tokio::spawn(crate::sources::xds::follow(
            core.clone(),
            settings,
            status,
            stop,
        ));
        return;
    }
    if !config.policies.is_empty() {
        tokio::spawn(crate::sources::policy_file::follow_policies(
            core.clone(),
            config.policies.clone(),
            config.root_namespace.clone(),
            FILE_POLL,
            stop.clone(),
        ));
    }
    match (&config.registry, &config.kubernetes, lister) {
        (Some(file), _, _) => {
            let follow = crate::sources::registry_file::follow_file(
                core.clone(),
                file.clone(),
                FILE_POLL,
                stop,
            );
            tokio::spawn(follow);
        }
        (None, Some(k8s), Some(lister)) => {
            tokio::spawn(crate::sources::kube::follow_cluster(
                core.clone(),
                lister,
                k8s.trust_domain.clone(),
                k8s.poll_interval,
                stop,
            ));
        }
        _ => {}
    }
}

/// Who the proxy says it is to a control plane, from the pod's
/// downward-API variables where they are set (as ztunnel reads them).
pub struct PodEnv {
    /// The proxy's pod name (`POD_NAME`, else the node's name).
    pub name: String,
    /// The proxy's pod namespace (`POD_NAMESPACE`, else `istio-system`).
    pub namespace: String,
    /// The proxy's pod IP (`INSTANCE_IP` or `POD_IP`, else `127.0.0.1`).
    pub ip: String,
}

impl PodEnv {
    /// `POD_NAME` (default: the node), `POD_NAMESPACE` (`istio-system`),
    /// `INSTANCE_IP` or `POD_IP` (`127.0.0.1`).
    pub fn read(node: &str) -> PodEnv {
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
    pub fn node_id(&self) -> String {
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
    pub fn metadata(&self, node: &str) -> BTreeMap<String, String> {
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
