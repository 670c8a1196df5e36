//! Starting a proxy: bind every listener, run the accept loops, and drain on
//! shutdown (stop accepting, let streams finish within a grace period).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use crate::admin::{self, Endpoints};
use crate::config::Listeners;
use crate::net::listen::{Listening, bind_in};
use crate::outbound::Outbound;
use crate::outbound::pool::Pool;
use crate::outbound::{capture, socks5};
use crate::state::ProxyCore;
use crate::workload_listeners::WorkloadListeners;

pub use crate::net::listen::StartError;

/// The addresses actually bound (ports resolved when 0 was asked).
#[derive(Debug, Clone, Default)]
pub struct BoundAddrs {
    /// HBONE listeners (15008), one per local workload IP.
    pub hbone: Vec<SocketAddr>,
    /// Plaintext inbound listeners (15006), one per local workload IP.
    pub plaintext: Vec<SocketAddr>,
    /// The SOCKS5 listener (15080), if configured.
    pub socks5: Option<SocketAddr>,
    /// The captured-outbound listener (15001) on the host, if configured.
    pub outbound: Option<SocketAddr>,
    /// In-pod outbound listeners: (workload name, address inside its namespace).
    pub pod_outbound: Vec<(String, SocketAddr)>,
    /// The Prometheus metrics listener (15020), if configured.
    pub metrics: Option<SocketAddr>,
    /// The admin listener (15000), if configured.
    pub admin: Option<SocketAddr>,
    /// The readiness listener (15021), if configured.
    pub readiness: Option<SocketAddr>,
}

impl BoundAddrs {
    /// Every listener bound on the host, and each workload's HBONE and
    /// plaintext listener bound at start.
    fn node_listeners(&self) -> Vec<SocketAddr> {
        let singles = [
            self.socks5,
            self.outbound,
            self.metrics,
            self.admin,
            self.readiness,
        ];
        let pods = self.pod_outbound.iter().map(|(_, a)| *a);
        let workloads = self.hbone.iter().chain(&self.plaintext).copied();
        singles
            .into_iter()
            .flatten()
            .chain(pods)
            .chain(workloads)
            .collect()
    }
}

/// A running proxy.
pub struct ProxyHandle {
    /// The state every listener shares.
    pub core: Arc<ProxyCore>,
    /// The sending side, with its HBONE connection pool.
    pub outbound: Arc<Outbound>,
    /// Where each listener ended up bound.
    pub addrs: BoundAddrs,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

async fn bind(addr: SocketAddr, what: &'static str) -> Result<TcpListener, StartError> {
    bind_in(None, addr, what)
}

impl ProxyHandle {
    /// Binds the listeners and starts serving. HBONE (and plaintext) listeners
    /// are bound on each local workload's IP, and follow the registry:
    /// opened for a workload that arrives on this node, closed for one that leaves.
    pub async fn start(core: Arc<ProxyCore>, listeners: &Listeners) -> Result<Self, StartError> {
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        core.limit.set_max(listeners.max_connections.unwrap_or(0));
        let pool = Pool::new(core.clone());
        let outbound = Arc::new(Outbound::new(core.clone(), pool));
        let mut addrs = BoundAddrs::default();
        let workloads = Arc::new(WorkloadListeners::new(
            core.clone(),
            outbound.clone(),
            listeners.clone(),
            shutdown.clone(),
            tasks.clone(),
        ));
        let changes = core.registry_changes();
        let (opened, failed) = workloads.reconcile();
        if let Some(e) = failed.into_iter().next() {
            shutdown.cancel();
            return Err(e);
        }
        for (name, opened) in opened {
            addrs.hbone.extend(opened.hbone);
            addrs.plaintext.extend(opened.plaintext);
            addrs
                .pod_outbound
                .extend(opened.pod_outbound.map(|a| (name.clone(), a)));
        }
        tasks.spawn(workloads.follow(changes));
        let on = |listener| Listening {
            listener,
            shutdown: shutdown.clone(),
            tasks: tasks.clone(),
        };
        if let Some(addr) = listeners.socks5 {
            let l = bind(addr, "SOCKS5").await?;
            addrs.socks5 = Some(l.local_addr().expect("bound"));
            tasks.spawn(socks5::serve(core.clone(), outbound.clone(), on(l)));
        }
        if let Some(addr) = listeners.outbound {
            let l = bind(addr, "outbound capture").await?;
            addrs.outbound = Some(l.local_addr().expect("bound"));
            tasks.spawn(capture::serve(core.clone(), outbound.clone(), on(l)));
        }
        for (addr, what, endpoints, slot) in [
            (
                listeners.metrics,
                "metrics",
                Endpoints::Metrics,
                &mut addrs.metrics,
            ),
            (
                listeners.readiness,
                "readiness",
                Endpoints::Readiness,
                &mut addrs.readiness,
            ),
            (listeners.admin, "admin", Endpoints::Admin, &mut addrs.admin),
        ] {
            if let Some(addr) = addr {
                let l = bind(addr, what).await?;
                *slot = Some(l.local_addr().expect("bound"));
                tasks.spawn(admin::serve(
                    core.clone(),
                    endpoints,
                    hbone_listen::Bounds::ADMIN,
                    on(l),
                ));
            }
        }
        core.own.add(addrs.node_listeners());
        info!(node = %core.node, hbone = ?addrs.hbone, socks5 = ?addrs.socks5, outbound = ?addrs.outbound, "proxy started");
        Ok(ProxyHandle {
            core,
            outbound,
            addrs,
            shutdown,
            tasks,
        })
    }

    /// Stops accepting, waits up to `grace` for open connections, then returns.
    /// Returns true when everything finished within the grace period.
    pub async fn shutdown(self, grace: Duration) -> bool {
        self.shutdown.cancel();
        self.tasks.close();
        let finished = tokio::time::timeout(grace, self.tasks.wait()).await.is_ok();
        info!(node = %self.core.node, drained = finished, "proxy stopped");
        finished
    }
}
