//! Transparent outbound capture on 15001: iptables REDIRECT sends a pod's
//! outgoing connections here; the original destination says where they
//! were going, and the source workload is the one owning the client's IP.

use std::sync::Arc;

use std::net::SocketAddr;

use tokio::net::TcpStream;

use crate::net::listen::Listening;
use crate::net::original_dst::original_destination;
use crate::observe::refusal::{Direction, Reason};
use crate::outbound::Outbound;
use crate::state::ProxyCore;

/// 15001: redirected outbound connections.
pub async fn serve(core: Arc<ProxyCore>, outbound: Arc<Outbound>, on: Listening) {
    let gate = core.gate(Direction::Outbound);
    on.accept("outbound", gate, move |tcp, peer| {
        redirected(core.clone(), outbound.clone(), tcp, peer)
    })
    .await
}

/// One redirected connection: where it was going, from which local
/// workload, then on through the mesh (or refused).
async fn redirected(
    core: Arc<ProxyCore>,
    outbound: Arc<Outbound>,
    tcp: TcpStream,
    peer: SocketAddr,
) {
    let mut report = outbound.report(Direction::Outbound, peer);
    let Some(dst) = original_destination(&tcp) else {
        return report.refuse(
            Reason::NotRedirected,
            "no SO_ORIGINAL_DST: the connection was not redirected here",
        );
    };
    report.record().dst_addr = Some(dst);
    let Some(source) = core.local_workload(peer.ip()) else {
        return report.refuse(
            Reason::UnknownSource,
            format_args!("{} is not a workload on node {}", peer.ip(), core.node),
        );
    };
    report.record().src_workload = Some(source.clone());
    match outbound.open(&source, peer, dst).await {
        Ok((upstream, route)) => outbound.relay(report, tcp, &source, upstream, route).await,
        Err(e) => report.refuse(e.reason(), e),
    }
}
