//! Transparent capture: outbound on 15001 and plaintext inbound on 15006.
//!
//! iptables REDIRECT rewrites a connection's destination to the proxy's
//! port; the kernel remembers the original, and `SO_ORIGINAL_DST` gives it
//! back. Outbound, the source workload is the one owning the client's IP.
//! Inbound plaintext is what PeerAuthentication governs: under STRICT it is
//! refused, under PERMISSIVE it is authorized without a peer identity.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::authorization::decide;
use crate::connection_log::{ConnectionRecord, Outcome};
use crate::core::ProxyCore;
use crate::listen::Gate;
use crate::metrics::{ConnectionGuard, ConnectionLabels};
use crate::outbound::Outbound;
use crate::refusal::{Direction, Reason};
use crate::registry::Workload;

/// The destination before iptables REDIRECT, or `None` when the connection was not redirected.
pub fn original_destination(tcp: &TcpStream) -> Option<SocketAddr> {
    let sock = socket2::SockRef::from(tcp);
    let original = sock
        .original_dst_v4()
        .ok()
        .or_else(|| sock.original_dst_v6().ok())?;
    let original = original.as_socket()?;
    let local = tcp.local_addr().ok()?;
    (original != local).then_some(original)
}

/// 15001: redirected outbound connections.
pub async fn serve_outbound(
    core: Arc<ProxyCore>,
    outbound: Arc<Outbound>,
    listener: TcpListener,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    crate::listen::accept_loop(
        listener,
        shutdown,
        tasks,
        "outbound",
        Gate::new(&core, Direction::Outbound),
        move |tcp, peer| {
            let (core, outbound) = (core.clone(), outbound.clone());
            async move {
                let refuse = |reason: Reason, detail: String| {
                    core.metrics.refused(Direction::Outbound, reason);
                    warn!(%reason, error = %detail, "outbound connection refused");
                };
                let Some(dst) = original_destination(&tcp) else {
                    return refuse(
                        Reason::NotRedirected,
                        "no SO_ORIGINAL_DST: the connection was not redirected here".into(),
                    );
                };
                let Some(source) = core
                    .registry()
                    .workload_by_ip(peer.ip())
                    .filter(|w| w.node == core.node)
                    .cloned()
                else {
                    return refuse(
                        Reason::UnknownSource,
                        format!("{} is not a workload on node {}", peer.ip(), core.node),
                    );
                };
                match outbound.open(&source, peer, dst).await {
                    Ok((upstream, route)) => {
                        outbound.relay(tcp, peer, &source, upstream, route).await
                    }
                    Err(e) => outbound.record_failure(Direction::Outbound, &source, dst, &e),
                }
            }
        },
    )
    .await
}

/// 15006: plaintext arriving for a local workload.
pub async fn serve_plaintext(
    core: Arc<ProxyCore>,
    listener: TcpListener,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    crate::listen::accept_loop(
        listener,
        shutdown,
        tasks,
        "plaintext",
        Gate::new(&core, Direction::Plaintext),
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
