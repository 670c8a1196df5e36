//! Shared mode, as ztunnel runs on a node: one proxy process for every pod
//! the node agent (istio-cni, or hbone-lab's stand-in) hands it over ZDS.
//! Each pod's network namespace arrives as a descriptor; the proxy holds
//! it ([`crate::state::pod_netns`]), the pod's workload record (from the registry
//! or the control plane) is then served inside it — its listeners (15008,
//! 15006, 15001) opened there, before the add is acknowledged, as ztunnel
//! acknowledges once the pod's proxy runs — and closed again when the agent
//! deletes the pod. After a reconnect the agent replays its pods and sends the end
//! of its snapshot: the pods it did not name are let go.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hbone_xds::zds::ZdsError;
use hbone_xds::zds_client::{ZdsClient, ZdsEvent};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::state::ProxyCore;

/// How long an add waits for the pod's listeners before it is refused.
const LISTENERS_WITHIN: Duration = Duration::from_secs(5);

/// What the follower has seen, for tests and logs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ZdsStatus {
    /// Connections made to the node agent.
    pub connects: u64,
    /// Pods held now.
    pub pods: usize,
    /// Snapshots the node agent finished sending (each ending a resync).
    pub snapshots: u64,
    /// Why the last connection ended, or failed to open.
    pub last_error: Option<String>,
}

/// Follows the node agent at `socket` until `shutdown`, reconnecting (with
/// backoff up to `max_backoff`) when the connection ends. Shared mode is on
/// from this call: a local workload not handed over is not served.
pub fn follow(
    core: Arc<ProxyCore>,
    socket: PathBuf,
    max_backoff: Duration,
    status: watch::Sender<ZdsStatus>,
    shutdown: CancellationToken,
) -> impl Future<Output = ()> + Send + 'static {
    core.pods.enable();
    core.pods_changed();
    follow_agent(core, socket, max_backoff, status, shutdown)
}

async fn follow_agent(
    core: Arc<ProxyCore>,
    socket: PathBuf,
    max_backoff: Duration,
    status: watch::Sender<ZdsStatus>,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let ended = tokio::select! {
            e = connection(&core, &socket, &status) => e,
            _ = shutdown.cancelled() => return,
        };
        if status.borrow().snapshots > 0 {
            backoff = Duration::from_millis(100);
        }
        warn!(socket = %socket.display(), error = %ended, retry_in = ?backoff, "ZDS connection ended; serving the pods held and reconnecting");
        status.send_modify(|s| s.last_error = Some(ended.to_string()));
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.cancelled() => return,
        }
        backoff = (backoff * 2).min(max_backoff);
    }
}

async fn connection(
    core: &ProxyCore,
    socket: &std::path::Path,
    status: &watch::Sender<ZdsStatus>,
) -> ZdsError {
    let client = match ZdsClient::connect(socket).await {
        Ok(c) => c,
        Err(e) => return e,
    };
    status.send_modify(|s| s.connects += 1);
    info!(socket = %socket.display(), "connected to the node agent");
    let mut named = HashSet::new();
    loop {
        let event = match client.next().await {
            Ok(e) => e,
            Err(e) => return e,
        };
        let refusal = match event {
            ZdsEvent::Add { uid, info, netns } => {
                let who = info.map(|i| format!("{}/{}", i.namespace, i.name));
                core.pods.insert(&uid, netns);
                core.pods_changed();
                named.insert(uid.clone());
                let ours = core
                    .registry()
                    .workloads
                    .iter()
                    .any(|w| *w.uid == *uid && *w.node == *core.node);
                if !ours {
                    // Served once the registry (or control plane) knows it.
                    info!(%uid, pod = ?who, "pod handed over before its workload record is known; held");
                    None
                } else if core.wait_served(&uid, LISTENERS_WITHIN).await {
                    info!(%uid, pod = ?who, "pod handed over: its listeners are open inside its namespace");
                    None
                } else {
                    Some(format!(
                        "the pod's listeners did not open inside its namespace within {LISTENERS_WITHIN:?} (see the proxy's log)"
                    ))
                }
            }
            ZdsEvent::Keep { uid } => {
                let held = core.pods.uids().contains(&uid);
                named.insert(uid.clone());
                (!held).then(|| format!("cannot keep {uid}: its namespace is not held"))
            }
            ZdsEvent::Del { uid } => {
                named.remove(&uid);
                if core.pods.remove(&uid) {
                    core.pods_changed();
                    info!(%uid, "pod taken back: its listeners are closed");
                }
                None
            }
            ZdsEvent::SnapshotSent => {
                let gone = core.pods.retain(&named);
                if !gone.is_empty() {
                    core.pods_changed();
                    info!(pods = ?gone, "pods not in the node agent's snapshot are let go");
                }
                status.send_modify(|s| s.snapshots += 1);
                None
            }
        };
        if let Err(e) = client.answer(refusal.as_deref()).await {
            return e;
        }
        status.send_modify(|s| s.pods = core.pods.uids().len());
    }
}
