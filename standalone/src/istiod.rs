//! The netns lab's side of the real Istio control plane: the lab's
//! registry as the Kubernetes objects istiod reads ([`world_of`]), and
//! istiod made reachable from inside a node's namespace ([`NodeRelay`]).
//!
//! istiod and the API server listen on the host's loopback (see
//! `hbone-control-plane`); a ztunnel runs inside its node's namespace,
//! where that loopback is not. Each node gets a relay on 127.0.0.1:15012
//! in its namespace — where ztunnel looks for istiod in a cluster — that
//! forwards to istiod. istiod's serving certificate carries 127.0.0.1
//! (`ISTIOD_CUSTOM_HOST`), so ztunnel checks it without `ALT_*_HOSTNAME`.

use std::net::SocketAddr;

use hbone_control_plane::world::{World, WorldPod, WorldService};
use hbone_proxy::netns::{NetNs, bind_listener};
use hbone_proxy::registry::{Protocol, Registry};
use tokio_util::sync::CancellationToken;

use crate::topology::{LabError, Part};

/// Where a node's ztunnel finds istiod, inside the node's namespace.
pub const ISTIOD_IN_NODE: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 15012);

/// The lab's registry as API objects: a pod per workload (HBONE ones
/// annotated as captured), a Service per service with its selector.
pub fn world_of(registry: &Registry) -> World {
    World {
        nodes: registry.nodes.iter().map(|n| n.name.clone()).collect(),
        pods: registry
            .workloads
            .iter()
            .filter_map(|w| {
                Some(WorldPod {
                    name: w.name.clone(),
                    namespace: w.namespace.clone(),
                    service_account: w.service_account.clone(),
                    labels: w.labels.clone(),
                    ip: *w.ips.first()?,
                    node: w.node.clone(),
                    captured: w.protocol == Protocol::Hbone,
                })
            })
            .collect(),
        services: registry
            .services
            .iter()
            .filter_map(|s| {
                Some(WorldService {
                    name: s.name.clone(),
                    namespace: s.namespace.clone(),
                    vip: *s.vips.first()?,
                    ports: s.ports.iter().map(|(p, t)| (*p, *t)).collect(),
                    selector: s.selector.clone().unwrap_or_default(),
                })
            })
            .collect(),
    }
}

/// A TCP relay from 127.0.0.1:15012 inside a node's namespace to istiod;
/// stops when dropped.
pub struct NodeRelay {
    _stop: tokio_util::sync::DropGuard,
}

impl NodeRelay {
    /// Listens in `netns` and forwards every connection to `istiod`.
    pub fn start(node: &str, netns: &NetNs, istiod: SocketAddr) -> Result<NodeRelay, LabError> {
        let what = format!("the relay to istiod in {node}");
        let listener = bind_listener(Some(&netns.path()), ISTIOD_IN_NODE)
            .map_err(|e| LabError::failed(Part::Proxy, what.clone(), e))?;
        let listener = tokio::net::TcpListener::from_std(listener)
            .map_err(|e| LabError::failed(Part::Proxy, what, e))?;
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = stopped.cancelled() => return,
                };
                let Ok((mut inbound, _)) = accepted else {
                    continue;
                };
                let stopped = stopped.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(istiod).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = stopped.cancelled() => {}
                    }
                });
            }
        });
        Ok(NodeRelay {
            _stop: stop.drop_guard(),
        })
    }

    /// The address a ztunnel in the node dials (`CA_ADDRESS`, `XDS_ADDRESS`).
    pub fn url() -> String {
        format!("https://{ISTIOD_IN_NODE}")
    }
}
