//! Plaintext inbound on 15006: what PeerAuthentication governs. iptables
//! REDIRECT sends a pod's incoming non-HBONE connections here; under
//! STRICT they are refused, under PERMISSIVE authorized without a peer
//! identity and passed on to the workload.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;

use crate::authorize::decide;
use crate::net::listen::Listening;
use crate::net::original_dst::original_destination;
use crate::observe::metrics::ConnectionLabels;
use crate::observe::refusal::{Direction, Reason};
use crate::state::ProxyCore;

/// 15006: plaintext arriving for a local workload.
pub async fn serve(core: Arc<ProxyCore>, on: Listening) {
    let gate = core.gate(Direction::Plaintext);
    on.accept("plaintext", gate, move |tcp, peer| {
        plaintext(core.clone(), tcp, peer)
    })
    .await
}

async fn plaintext(core: Arc<ProxyCore>, mut tcp: TcpStream, peer: SocketAddr) {
    let mut report = core.report(Direction::Plaintext, Some(peer), None);
    let Some(dst) = original_destination(&tcp) else {
        return report.refuse(
            Reason::NotRedirected,
            "plaintext inbound needs the original destination (iptables REDIRECT)",
        );
    };
    report.record().dst_addr = Some(dst);
    if core.own.contains(dst) {
        return report.refuse(Reason::ProxyPort, format_args!("{dst} is the proxy's own"));
    }
    let Some(workload) = core.local_workload(dst.ip()) else {
        return report.refuse(
            Reason::NoLocalWorkload,
            format_args!("{dst} is not a workload on node {}", core.node),
        );
    };
    report.record().dst_workload = Some(workload.clone());
    let decision = Arc::new(decide(&core.policies(), &workload, None, peer.ip(), dst));
    report.record().decision = Some(decision.clone());
    if !decision.allowed {
        return report.refuse(Reason::PolicyDenied, &decision.reason);
    }
    let mut upstream = match core.connect(Some(&workload), None, dst).await {
        Ok(s) => s,
        Err(e) => return report.refuse(Reason::UpstreamUnreachable, format_args!("{dst}: {e}")),
    };
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
    let open = report.open(labels);
    match tokio::io::copy_bidirectional(&mut tcp, &mut upstream).await {
        Ok((up, down)) => open.finish(down, up, false, None),
        Err(e) => open.finish(0, 0, false, Some(&e)),
    }
}
