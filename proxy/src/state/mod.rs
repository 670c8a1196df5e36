//! What every listener of a proxy shares: the registry, the policies, the
//! certificates, the mesh trust, the metrics and the settings — and the TLS
//! configurations built from them, cached per certificate.

pub mod own_addrs;
pub mod pod_netns;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use hbone_ca::Identity;
use hbone_ca::client::{CaClient, ClientError};
use hbone_ca::manager::{CertificateManager, FetchError, RenewalPolicy, Svid};
use hbone_policies::authorization::MeshAuthorization;
use thiserror::Error;

use crate::authorize::open_streams::{Established, Revoked};
use crate::config::H2Settings;
use crate::observe::metrics::ProxyMetrics;
use crate::observe::refusal::{Direction, Reason};
use crate::registry::Registry;
use crate::state::pod_netns::PodNetns;
use crate::tls::{MeshTrust, TlsSetupError};

/// Why the proxy's shared state, or a TLS configuration from it, could not be set up.
#[derive(Debug, Error)]
pub enum CoreError {
    /// A workload's certificate could not be had from the CA.
    #[error(transparent)]
    Certificate(#[from] FetchError),
    /// A TLS configuration could not be built from the roots or a certificate.
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    /// The CA client could not be made: its address or root is unusable.
    #[error("the CA client: {0}")]
    CaClient(#[from] ClientError),
    /// The TLS key log file could not be opened.
    #[error("cannot open the TLS key log {}: {source}", path.display())]
    KeyLog {
        /// The key log file's path.
        path: PathBuf,
        /// The open error.
        #[source]
        source: std::io::Error,
    },
    /// The CA's revocation list could not be read.
    #[error(transparent)]
    Crl(#[from] crate::crl::CrlError),
}

/// A CA server to ask for certificates, the root to trust peers by, and
/// what else the mesh trust carries: the one way every proxy that talks to
/// a CA is put together ([`ProxyCore::with_ca`]).
#[derive(Debug, Clone)]
pub struct CaAccess {
    /// `https://host:15012`.
    pub address: String,
    /// The mesh root (PEM): verifies the CA, and peers.
    pub root_pem: String,
    /// How the proxy proves itself to the CA.
    pub token: CaToken,
    /// What lifetime to ask for, and when to renew and retry.
    pub renewal: RenewalPolicy,
    /// Where to write the mesh connections' TLS secrets, if anywhere.
    pub key_log: Option<PathBuf>,
    /// The CA's revocation list (PEM), whose revoked certificates peers may
    /// not use ([`crate::crl`]).
    pub crl: Option<PathBuf>,
}

/// The bearer token the CA checks.
#[derive(Debug, Clone)]
pub enum CaToken {
    /// This token, as given.
    Value(String),
    /// Read from the file before each request (a projected token rotates).
    File(PathBuf),
}

type ConfigCache<C> = Mutex<HashMap<Identity, (Arc<Svid>, Arc<C>)>>;

/// The settings the data path reads.
#[derive(Debug, Clone)]
pub struct CoreSettings {
    /// The node whose workloads this proxy serves.
    pub node: String,
    /// HTTP/2 tuning of the HBONE client and server.
    pub h2: H2Settings,
    /// Port peers listen for HBONE on (15008).
    pub hbone_port: u16,
    /// Dial HBONE from the source workload's IP.
    pub bind_source_ip: bool,
}

impl CoreSettings {
    /// A proxy of `node` with every setting at its default: HTTP/2 as
    /// ztunnel's, HBONE on 15008, dialing from the node (not the pod's IP).
    pub fn for_node(node: &str) -> Self {
        CoreSettings {
            node: node.into(),
            h2: H2Settings::default(),
            hbone_port: 15008,
            bind_source_ip: false,
        }
    }
}

/// The shared state of one proxy.
pub struct ProxyCore {
    /// The node whose workloads this proxy serves.
    pub node: String,
    /// HTTP/2 tuning of the HBONE client and server.
    pub h2: H2Settings,
    /// Port peers listen for HBONE on (15008).
    pub hbone_port: u16,
    /// Dial HBONE from the source workload's IP instead of the node's.
    pub bind_source_ip: bool,
    /// Benchmarks only: a lower rung of the cost ladder instead of HBONE.
    #[cfg(feature = "bench-rungs")]
    pub bench_tunnel: Option<crate::config::BenchTunnel>,
    /// Swapped whole when the registry's source changes (file, cluster, xDS).
    registry: ArcSwap<Registry>,
    /// Counts registry swaps, so the local workloads' listeners can follow.
    registry_version: tokio::sync::watch::Sender<u64>,
    /// The translated policies (what ztunnel would be sent), swapped whole
    /// when their source changes; see [`Self::replace_policies`].
    policies: ArcSwap<MeshAuthorization>,
    /// The inbound streams being carried, re-judged on a policy change.
    pub established: Arc<Established>,
    /// The local workloads' certificates, fetched and renewed.
    pub certs: Arc<CertificateManager>,
    /// The mesh roots and trust domain peers are verified against.
    pub trust: MeshTrust,
    /// The proxy's metrics, served on `/metrics`.
    pub metrics: Arc<ProxyMetrics>,
    server_configs: ConfigCache<rustls::ServerConfig>,
    waiting_for: Mutex<Option<String>>,
    /// Pods' namespaces handed over by a node agent (shared mode).
    pub pods: PodNetns,
    /// The connections open now and the most recent finished ones.
    pub connections: crate::observe::connection_log::ConnectionLog,
    /// The cap on connections open at once across the data listeners.
    pub limit: Arc<hbone_listen::ConnectionLimit>,
    /// Where no connection may be carried: the proxy's own listeners, its
    /// CA and control plane ([`own_addrs`]).
    pub own: own_addrs::OwnAddrs,
    /// The uids of the local workloads whose listeners are open.
    served: tokio::sync::watch::Sender<std::collections::BTreeSet<String>>,
}

impl ProxyCore {
    /// A proxy of `settings` resolving against `registry` and judging by
    /// `policies`, with `certs` for its workloads and peers verified by
    /// `trust`.
    pub fn new(
        settings: CoreSettings,
        registry: Arc<Registry>,
        policies: impl Into<MeshAuthorization>,
        certs: Arc<CertificateManager>,
        trust: MeshTrust,
    ) -> Self {
        ProxyCore {
            node: settings.node,
            h2: settings.h2,
            hbone_port: settings.hbone_port,
            bind_source_ip: settings.bind_source_ip,
            #[cfg(feature = "bench-rungs")]
            bench_tunnel: None,
            registry: ArcSwap::new(registry),
            registry_version: tokio::sync::watch::Sender::new(0),
            policies: ArcSwap::new(Arc::new(policies.into())),
            established: Arc::default(),
            certs,
            trust,
            metrics: Arc::new(ProxyMetrics::default()),
            server_configs: Mutex::new(HashMap::new()),
            waiting_for: Mutex::new(None),
            pods: PodNetns::default(),
            connections: Default::default(),
            limit: Arc::default(),
            own: Default::default(),
            served: tokio::sync::watch::Sender::new(Default::default()),
        }
    }

    /// A proxy whose certificates come from the CA server in `ca`, trusting
    /// its root for the registry's trust domain.
    pub fn with_ca(
        settings: CoreSettings,
        registry: Arc<Registry>,
        policies: impl Into<MeshAuthorization>,
        ca: &CaAccess,
    ) -> Result<Self, CoreError> {
        let client = match &ca.token {
            CaToken::Value(token) => CaClient::new(&ca.address, &ca.root_pem, token.clone())?,
            CaToken::File(path) => CaClient::with_token_file(&ca.address, &ca.root_pem, path)?,
        };
        let certs = Arc::new(CertificateManager::new(
            Arc::new(client),
            ca.renewal.clone(),
        ));
        let mut trust = MeshTrust::from_pem(&ca.root_pem, &registry.trust_domain)?;
        if let Some(path) = &ca.key_log {
            let writer =
                crate::keylog::KeyLogWriter::open(path).map_err(|source| CoreError::KeyLog {
                    path: path.clone(),
                    source,
                })?;
            trust = trust.with_key_log(writer);
        }
        if let Some(path) = &ca.crl {
            trust = trust.with_revocations(crate::crl::Revocations::load(path)?);
        }
        let core = ProxyCore::new(settings, registry, policies, certs, trust);
        core.own.add(address_of(&ca.address));
        Ok(core)
    }

    /// A proxy whose certificates are signed in this process by
    /// `authority`, trusting its root (tests and the labs that run their
    /// CA in-process): no CA server, no token.
    pub fn with_authority(
        settings: CoreSettings,
        registry: Arc<Registry>,
        policies: impl Into<MeshAuthorization>,
        authority: Arc<hbone_ca::SigningAuthority>,
    ) -> Result<Self, CoreError> {
        let trust = MeshTrust::from_pem(authority.root_pem(), authority.trust_domain())?;
        let certs = Arc::new(CertificateManager::new(
            authority,
            hbone_ca::manager::RenewalPolicy::default(),
        ));
        Ok(ProxyCore::new(settings, registry, policies, certs, trust))
    }

    /// Benchmarks only: carry connections between proxies on `tunnel`
    /// instead of HBONE ([`crate::bench_tunnel`]).
    #[cfg(feature = "bench-rungs")]
    pub fn with_bench_tunnel(mut self, tunnel: Option<crate::config::BenchTunnel>) -> Self {
        self.bench_tunnel = tunnel;
        self
    }

    /// The report of a connection `direction` from `src` to `dst` (each
    /// where known): its metrics, connection log entry and log lines.
    pub fn report(
        &self,
        direction: Direction,
        src: Option<std::net::SocketAddr>,
        dst: Option<std::net::SocketAddr>,
    ) -> crate::observe::report::ConnectionReport<'_> {
        crate::observe::report::ConnectionReport::new(
            &self.metrics,
            &self.connections,
            direction,
            src,
            dst,
        )
    }

    /// What a data listener's connections count against: the connection
    /// cap, counted under `direction` when it refuses.
    pub(crate) fn gate(&self, direction: Direction) -> crate::net::listen::Gate {
        crate::net::listen::Gate {
            limit: self.limit.clone(),
            metrics: self.metrics.clone(),
            direction,
        }
    }

    /// Dials `addr` as a socket of `from` would: inside the network
    /// namespace it is served in ([`pod_netns`]), marked with
    /// [`crate::net::pod_sockets::PACKET_MARK`] so capture rules let it
    /// pass, from `bind_ip` if given.
    pub async fn connect(
        &self,
        from: Option<&crate::registry::Workload>,
        bind_ip: Option<std::net::IpAddr>,
        addr: std::net::SocketAddr,
    ) -> std::io::Result<tokio::net::TcpStream> {
        let netns = match from {
            Some(w) => self.pods.of(w).map_err(std::io::Error::other)?,
            None => None,
        };
        let mark = netns.as_ref().map(|_| crate::net::pod_sockets::PACKET_MARK);
        tracing::debug!(?netns, %addr, ?bind_ip, "dialing");
        let socket = crate::net::pod_sockets::tcp_socket(netns.as_ref(), addr, bind_ip, mark)
            .map_err(std::io::Error::other)?;
        socket.connect(addr).await
    }

    /// The registry as it is now. Hold the `Arc` for as long as answers from
    /// it are used; a newer registry may replace it at any time.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.load_full()
    }

    /// Replaces the registry: new connections see the new one, established
    /// ones keep what they resolved.
    pub fn replace_registry(&self, registry: Registry) {
        self.pods.prune(&registry);
        self.registry.store(Arc::new(registry));
        self.registry_version.send_modify(|v| *v += 1);
    }

    /// Tells the local workloads' listeners that the handed-over pods
    /// changed (they follow registry changes, and this is one for them).
    pub fn pods_changed(&self) {
        self.registry_version.send_modify(|v| *v += 1);
    }

    /// Whether this proxy serves `w`: it runs on this node and, in shared
    /// mode, the node agent has handed its pod over.
    pub fn serves(&self, w: &crate::registry::Workload) -> bool {
        *w.node == *self.node && (!self.pods.shared_mode() || self.pods.handed_over(&w.uid))
    }

    /// Records which local workloads (by uid) have their listeners open.
    pub fn set_served(&self, uids: std::collections::BTreeSet<String>) {
        self.served.send_if_modified(|s| {
            let changed = *s != uids;
            *s = uids;
            changed
        });
    }

    /// Waits up to `limit` until the workload `uid`'s listeners are open.
    pub async fn wait_served(&self, uid: &str, limit: std::time::Duration) -> bool {
        let mut served = self.served.subscribe();
        let waited = tokio::time::timeout(limit, served.wait_for(|s| s.contains(uid))).await;
        matches!(waited, Ok(Ok(_)))
    }

    /// Wakes on every registry swap.
    pub fn registry_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.registry_version.subscribe()
    }

    /// The authorization policies as they are now, translated.
    pub fn policies(&self) -> Arc<MeshAuthorization> {
        self.policies.load_full()
    }

    /// Replaces the policies: new streams are judged by them, and so is
    /// every stream already open; those now denied are closed. Returns them.
    pub fn replace_policies(&self, policies: impl Into<MeshAuthorization>) -> Vec<Revoked> {
        let policies = Arc::new(policies.into());
        self.policies.store(policies.clone());
        let revoked = self.established.recheck(&policies, &self.registry());
        for r in &revoked {
            self.metrics
                .refused(Direction::Inbound, Reason::PolicyRevoked);
            tracing::warn!(
                peer = %r.peer,
                dst = %r.target,
                reason = %r.reason,
                "open HBONE stream closed: the changed policies deny it"
            );
        }
        revoked
    }

    /// Closes every open stream whose peer's certificate the revocation
    /// lists now revoke (after a new edition); returns them.
    pub fn close_revoked(&self) -> Vec<Revoked> {
        let check = self.trust.revocation_check();
        let revoked = self.established.recheck_certificates(&check);
        for r in &revoked {
            tracing::warn!(peer = %r.peer, target = %r.target, "open stream closed: the peer's certificate was revoked");
        }
        revoked
    }

    /// Judges every open stream again with the policies and registry as
    /// they are now (after a workload's listed policies changed); closes
    /// those now denied and returns them.
    pub fn rejudge(&self) -> Vec<Revoked> {
        self.replace_policies(self.policies().as_ref().clone())
    }

    /// What the proxy still waits for before it is ready besides its
    /// workloads' certificates (a control plane's first answer).
    pub fn waiting_for(&self) -> Option<String> {
        self.waiting_for.lock().expect("waiting lock").clone()
    }

    /// Sets what readiness still waits for (`None` once nothing); see [`Self::waiting_for`].
    pub fn set_waiting_for(&self, what: Option<String>) {
        *self.waiting_for.lock().expect("waiting lock") = what;
    }

    /// The workload at `ip`, if it runs on this proxy's node.
    pub fn local_workload(&self, ip: std::net::IpAddr) -> Option<Arc<crate::registry::Workload>> {
        self.registry
            .load()
            .workload_by_ip(ip)
            .filter(|w| *w.node == *self.node)
            .cloned()
    }

    /// The TLS server config for a local workload, rebuilt only when its certificate changes.
    pub async fn server_config(
        &self,
        identity: &Identity,
    ) -> Result<Arc<rustls::ServerConfig>, CoreError> {
        let svid = self.certs.get(identity).await?;
        if let Some((cached_svid, config)) = self
            .server_configs
            .lock()
            .expect("cache lock")
            .get(identity)
            && Arc::ptr_eq(cached_svid, &svid)
        {
            return Ok(config.clone());
        }
        let config = self.trust.server_config(&svid)?;
        self.server_configs
            .lock()
            .expect("cache lock")
            .insert(identity.clone(), (svid, config.clone()));
        Ok(config)
    }
}

/// The `ip:port` of a URL such as `https://127.0.0.1:15012`, when it names
/// an IP (a host name is resolved by whoever dials it, not here).
pub fn address_of(url: &str) -> Option<std::net::SocketAddr> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    rest.split('/').next()?.parse().ok()
}
