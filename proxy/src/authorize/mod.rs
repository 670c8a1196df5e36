//! Authorization: the one place the proxy asks the policies about a
//! connection — an HBONE stream as it is admitted (15008), a plaintext
//! connection on 15006, and every open stream again when the policies
//! change. It turns what the proxy knows of a connection (the peer's
//! verified identity, the address it came from, the target, the local
//! workload and the policy keys its record lists) into `hbone-policies`'
//! query on the translated policies, whose answer is ztunnel's decision.

pub mod open_streams;

use std::net::{IpAddr, SocketAddr};

use hbone_ca::Identity;
use hbone_policies::authorization::{Connection, MeshAuthorization, WorkloadRef};
use hbone_policies::decision::Decision;

use crate::registry::Workload;

/// The policies' verdict on a connection from `src_ip` (with a mesh
/// `principal`, or none for plaintext) to `target` on `workload`.
pub fn decide(
    policies: &MeshAuthorization,
    workload: &Workload,
    principal: Option<&str>,
    src_ip: IpAddr,
    target: SocketAddr,
) -> Decision {
    policies.decide(
        &WorkloadRef {
            namespace: &workload.namespace,
            labels: &workload.labels,
            listed: workload.authorization_policies(),
        },
        &Connection {
            principal,
            src_ip,
            dst_ip: target.ip(),
            dst_port: target.port(),
        },
    )
}

/// The policies' verdict on an HBONE stream from the verified `peer`.
pub fn decide_peer(
    policies: &MeshAuthorization,
    workload: &Workload,
    peer: &Identity,
    src_ip: IpAddr,
    target: SocketAddr,
) -> Decision {
    let principal = peer.principal();
    decide(policies, workload, Some(&principal), src_ip, target)
}
