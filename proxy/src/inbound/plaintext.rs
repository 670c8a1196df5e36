//! Plaintext inbound on 15006: what PeerAuthentication governs. iptables
//! REDIRECT sends a pod's incoming non-HBONE connections here; under
//! STRICT they are refused, under PERMISSIVE authorized without a peer
//! identity and passed on to the workload.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::authorize::decide;
use crate::net::original_dst::original_destination;
use crate::observe::connection_log::{ConnectionRecord, Outcome};
use crate::observe::metrics::{ConnectionGuard, ConnectionLabels};
use crate::observe::refusal::{Direction, Reason};
use crate::registry::Workload;
use crate::state::ProxyCore;

/// 15006: plaintext arriving for a local workload.
pub async fn serve(
    core: Arc<ProxyCore>,
    listener: TcpListener,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    crate::net::listen::accept_loop(
        listener,
        shutdown,
        tasks,
        "plaintext",
        Some(core.gate(Direction::Plaintext)),
        move |tcp, peer| {
            let core = core.clone();
            async move { plaintext(core, tcp, peer).await }
        },
    )
    .await
}

async fn plaintext(core: Arc<ProxyCore>, mut tcp: TcpStream, peer: SocketAddr) {
    let record = |dst: Option<SocketAddr>, workload: Option<&Arc<Workload>>| {
        let mut r = ConnectionRecord::new(Direction::Plaintext, Some(peer), dst);
        r.dst_workload = workload.cloned();
        r
    };
    let refuse = |reason: Reason, detail: String, r: ConnectionRecord| {
        core.metrics.refused(Direction::Plaintext, reason);
        warn!(%reason, error = %detail, "plaintext connection refused");
        core.connections.refused(r, format!("{reason}: {detail}"));
    };
    let Some(dst) = original_destination(&tcp) else {
        return refuse(
            Reason::NotRedirected,
            "plaintext inbound needs the original destination (iptables REDIRECT)".into(),
            record(None, None),
        );
    };
    let Some(workload) = core.local_workload(dst.ip()) else {
        return refuse(
            Reason::NoLocalWorkload,
            format!("{dst} is not a workload on node {}", core.node),
            record(Some(dst), None),
        );
    };
    let decision = decide(&core.policies(), &workload, None, peer.ip(), dst);
    let mut logged = record(Some(dst), Some(&workload));
    let decision = Arc::new(decision);
    logged.decision = Some(decision.clone());
    if !decision.allowed {
        return refuse(Reason::PolicyDenied, decision.reason.clone(), logged);
    }
    let mut upstream = match core.connect(Some(&workload), None, dst).await {
        Ok(s) => s,
        Err(e) => {
            return refuse(Reason::UpstreamUnreachable, format!("{dst}: {e}"), logged);
        }
    };
    let logged = core.connections.open(logged);
    let registry = core.registry();
    let source = registry.workload_by_ip(peer.ip());
    let labels = ConnectionLabels::new(
        "destination",
        source.map(Arc::as_ref),
        None,
        Some(&workload),
        None,
        false,
    );
    let mut guard = ConnectionGuard::open(&core.metrics, labels);
    let result = tokio::io::copy_bidirectional(&mut tcp, &mut upstream).await;
    match &result {
        Ok((up, down)) => {
            guard.received = *up;
            guard.sent = *down;
            core.connections
                .close(logged, Outcome::Closed, *down, *up, None);
        }
        Err(e) => {
            guard.failed = true;
            core.connections
                .close(logged, Outcome::Failed, 0, 0, Some(e.to_string()));
        }
    }
    info!(dst.addr = %dst, dst.workload = %workload.name, policy = %decision.reason, "connection complete");
}
