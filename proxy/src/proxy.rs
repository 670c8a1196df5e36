//! Starting a proxy: bind every listener, run the accept loops, and drain on
//! shutdown (stop accepting, let streams finish within a grace period).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use crate::admin::{self, Endpoints};
use crate::config::Listeners;
use crate::core::ProxyCore;
use crate::outbound::Outbound;
use crate::pool::Pool;
use crate::{capture, inbound, socks5};

#[derive(Debug, Error)]
pub enum StartError {
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        addr: SocketAddr,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// The addresses actually bound (ports resolved when 0 was asked).
#[derive(Debug, Clone, Default)]
pub struct BoundAddrs {
    pub hbone: Vec<SocketAddr>,
    pub plaintext: Vec<SocketAddr>,
    pub socks5: Option<SocketAddr>,
    pub outbound: Option<SocketAddr>,
    /// In-pod outbound listeners: (workload name, address inside its namespace).
    pub pod_outbound: Vec<(String, SocketAddr)>,
    pub metrics: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
    pub readiness: Option<SocketAddr>,
}

/// A running proxy.
pub struct ProxyHandle {
    pub core: Arc<ProxyCore>,
    pub outbound: Arc<Outbound>,
    pub addrs: BoundAddrs,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

async fn bind(addr: SocketAddr, what: &'static str) -> Result<TcpListener, StartError> {
    bind_in(None, addr, what)
}

/// Binds inside a network namespace (in-pod mode) or here.
fn bind_in(
    netns: Option<&std::path::Path>,
    addr: SocketAddr,
    what: &'static str,
) -> Result<TcpListener, StartError> {
    let std = crate::netns::bind_listener(netns, addr).map_err(|e| StartError::Bind {
        addr,
        what,
        source: std::io::Error::other(e),
    })?;
    TcpListener::from_std(std).map_err(|source| StartError::Bind { addr, what, source })
}

impl ProxyHandle {
    /// Binds the listeners and starts serving. HBONE (and plaintext) listeners
    /// are bound on each local workload's IP.
    pub async fn start(core: Arc<ProxyCore>, listeners: &Listeners) -> Result<Self, StartError> {
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let pool = Pool::new(core.clone());
        let outbound = Arc::new(Outbound::new(core.clone(), pool));
        let mut addrs = BoundAddrs::default();
        let local: Vec<_> = core
            .registry()
            .local_workloads(&core.node)
            .cloned()
            .collect();
        for workload in &local {
            let netns = workload.netns.as_deref();
            for ip in &workload.ips {
                let l = bind_in(
                    netns,
                    SocketAddr::new(*ip, listeners.hbone_port),
                    "HBONE inbound",
                )?;
                addrs.hbone.push(l.local_addr().expect("bound"));
                tasks.spawn(inbound::serve(
                    core.clone(),
                    l,
                    shutdown.clone(),
                    tasks.clone(),
                ));
                if let Some(port) = listeners.plaintext_port {
                    let l = bind_in(netns, SocketAddr::new(*ip, port), "plaintext inbound")?;
                    addrs.plaintext.push(l.local_addr().expect("bound"));
                    tasks.spawn(capture::serve_plaintext(
                        core.clone(),
                        l,
                        shutdown.clone(),
                        tasks.clone(),
                    ));
                }
            }
            if let (Some(port), Some(ns)) = (listeners.pod_outbound_port, netns) {
                let any = SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), port);
                let l = bind_in(Some(ns), any, "in-pod outbound capture")?;
                addrs
                    .pod_outbound
                    .push((workload.name.clone(), l.local_addr().expect("bound")));
                tasks.spawn(capture::serve_outbound(
                    core.clone(),
                    outbound.clone(),
                    l,
                    shutdown.clone(),
                    tasks.clone(),
                ));
            }
        }
        if let Some(addr) = listeners.socks5 {
            let l = bind(addr, "SOCKS5").await?;
            addrs.socks5 = Some(l.local_addr().expect("bound"));
            tasks.spawn(socks5::serve(
                core.clone(),
                outbound.clone(),
                l,
                shutdown.clone(),
                tasks.clone(),
            ));
        }
        if let Some(addr) = listeners.outbound {
            let l = bind(addr, "outbound capture").await?;
            addrs.outbound = Some(l.local_addr().expect("bound"));
            tasks.spawn(capture::serve_outbound(
                core.clone(),
                outbound.clone(),
                l,
                shutdown.clone(),
                tasks.clone(),
            ));
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
                    l,
                    shutdown.clone(),
                    tasks.clone(),
                ));
            }
        }
        // Ask for every local workload's certificate now rather than on first use.
        for w in core.registry().local_workloads(&core.node) {
            core.certs.watch(w.identity());
        }
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
