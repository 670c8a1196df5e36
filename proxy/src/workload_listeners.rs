//! Each local workload's own listeners: HBONE (15008) and plaintext (15006)
//! on its IPs, and in-pod outbound capture (15001) inside its network
//! namespace. They open when the workload appears on this node and close
//! when it leaves (or moves to other IPs or another namespace), so a
//! registry that changes — a file edit, the cluster, a control plane over
//! xDS — brings its pods' listeners with it. Closing a listener stops new
//! connections only; those it accepted carry on to their end.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::Listeners;
use crate::inbound::{hbone, plaintext};
use crate::net::listen::{Listening, StartError, bind_workload};
use crate::net::pod_sockets::Netns;
use crate::outbound::Outbound;
use crate::outbound::capture;
use crate::registry::Workload;
use crate::state::ProxyCore;

/// What one workload's listeners were opened for; a change reopens them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Placement {
    ips: Vec<IpAddr>,
    /// The namespace handle (equal only to itself: a pod handed over
    /// again is a new namespace, even at the same path).
    netns: Option<Netns>,
}

struct Open {
    uid: String,
    placement: Placement,
    stop: CancellationToken,
}

/// The addresses one workload's listeners were bound to.
#[derive(Debug, Clone, Default)]
pub struct Opened {
    /// The HBONE listeners (15008), one per workload IP.
    pub hbone: Vec<SocketAddr>,
    /// The plaintext inbound listeners (15006), one per workload IP.
    pub plaintext: Vec<SocketAddr>,
    /// The in-pod outbound listener, inside the workload's namespace.
    pub pod_outbound: Option<SocketAddr>,
}

/// The listeners of every local workload, kept in step with the registry.
pub(crate) struct WorkloadListeners {
    core: Arc<ProxyCore>,
    outbound: Arc<Outbound>,
    ports: Listeners,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    open: Mutex<HashMap<(String, String), Open>>,
}

impl WorkloadListeners {
    pub(crate) fn new(
        core: Arc<ProxyCore>,
        outbound: Arc<Outbound>,
        ports: Listeners,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> Self {
        WorkloadListeners {
            core,
            outbound,
            ports,
            shutdown,
            tasks,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// Opens `w`'s listeners, all or none.
    fn open(
        &self,
        w: &Workload,
        netns: Option<&Netns>,
        stop: &CancellationToken,
    ) -> Result<Opened, StartError> {
        let mut bound = Vec::new();
        let mut opened = Opened::default();
        for ip in &w.ips {
            let l = bind_workload(
                netns,
                SocketAddr::new(*ip, self.ports.hbone_port),
                "HBONE inbound",
            )?;
            opened.hbone.push(l.local_addr().expect("bound"));
            bound.push((l, Kind::Hbone));
            if let Some(port) = self.ports.plaintext_port {
                let l = bind_workload(netns, SocketAddr::new(*ip, port), "plaintext inbound")?;
                opened.plaintext.push(l.local_addr().expect("bound"));
                bound.push((l, Kind::Plaintext));
            }
        }
        if let (Some(port), Some(ns)) = (self.ports.pod_outbound_port, netns) {
            let any = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port);
            let l = bind_workload(Some(ns), any, "in-pod outbound capture")?;
            opened.pod_outbound = Some(l.local_addr().expect("bound"));
            bound.push((l, Kind::PodOutbound));
        }
        for (listener, kind) in bound {
            let core = self.core.clone();
            let on = Listening {
                listener,
                shutdown: stop.clone(),
                tasks: self.tasks.clone(),
            };
            match kind {
                #[cfg(feature = "bench-rungs")]
                Kind::Hbone if core.bench_tunnel.is_some() => {
                    self.tasks.spawn(crate::bench_tunnel::serve(core, on))
                }
                Kind::Hbone => self.tasks.spawn(hbone::serve(core, on)),
                Kind::Plaintext => self.tasks.spawn(plaintext::serve(core, on)),
                Kind::PodOutbound => {
                    self.tasks
                        .spawn(capture::serve(core, self.outbound.clone(), on))
                }
            };
        }
        self.core.certs.watch(w.identity());
        Ok(opened)
    }

    /// Opens the listeners of local workloads that have none, closes those
    /// of workloads gone from this node. Returns what it opened, by
    /// workload name, and what it could not open.
    pub(crate) fn reconcile(&self) -> (Vec<(String, Opened)>, Vec<StartError>) {
        let registry = self.core.registry();
        let mut open = self.open.lock().expect("listeners lock");
        let mut wanted = HashMap::new();
        let mut failed = Vec::new();
        for w in registry.workloads.iter().filter(|w| self.core.serves(w)) {
            let netns = match self.core.pods.of(w) {
                Ok(netns) => netns,
                Err(source) => {
                    let workload = w.name.to_string();
                    failed.push(StartError::Netns { workload, source });
                    continue;
                }
            };
            let placement = Placement {
                ips: w.ips.to_vec(),
                netns,
            };
            wanted.insert(
                (w.namespace.to_string(), w.name.to_string()),
                (w, placement),
            );
        }
        open.retain(|key, o| {
            let keep = wanted.get(key).is_some_and(|(_, p)| *p == o.placement);
            if !keep {
                o.stop.cancel();
                info!(workload = %key.1, namespace = %key.0, "workload left this node (or moved): its listeners are closed");
            }
            keep
        });
        let mut opened = Vec::new();
        for (key, (w, placement)) in wanted {
            if open.contains_key(&key) {
                continue;
            }
            let stop = self.shutdown.child_token();
            match self.open(w, placement.netns.as_ref(), &stop) {
                Ok(addrs) => {
                    let uid = w.uid.to_string();
                    open.insert(
                        key,
                        Open {
                            uid,
                            placement,
                            stop,
                        },
                    );
                    opened.push((w.name.to_string(), addrs));
                }
                Err(e) => {
                    stop.cancel();
                    failed.push(e);
                }
            }
        }
        self.core
            .set_served(open.values().map(|o| o.uid.clone()).collect());
        (opened, failed)
    }

    /// Reconciles on every registry change until shutdown. A listener that
    /// cannot be bound (the one it replaces may not have let go of the
    /// address yet) is tried again shortly, then less and less often.
    pub(crate) async fn follow(self: Arc<Self>, mut changes: watch::Receiver<u64>) {
        let mut retry: Option<Duration> = None;
        loop {
            let wait = retry.unwrap_or(Duration::MAX);
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(wait), if retry.is_some() => {}
                _ = self.shutdown.cancelled() => return,
            }
            let (opened, failed) = self.reconcile();
            for (name, addrs) in opened {
                info!(workload = %name, hbone = ?addrs.hbone, "workload arrived on this node: its listeners are open");
            }
            retry = match (failed.is_empty(), retry) {
                (true, _) => None,
                (false, None) => Some(Duration::from_millis(50)),
                (false, Some(d)) => Some((d * 2).min(Duration::from_secs(5))),
            };
            for e in failed {
                warn!(error = %e, retry_in = ?retry, "a workload's listeners could not be opened; trying again");
            }
        }
    }
}

enum Kind {
    Hbone,
    Plaintext,
    PodOutbound,
}
