//! hbone-xds: hbone-lab in the roles istiod and istio-cni play for a node
//! proxy, so a real ztunnel (or hbone-lab's own proxy) can run in the lab.
//!
//! From the bottom up:
//! - [`proto`]: the wire messages (delta ADS, workload API, authorization, ZDS).
//! - [`mesh`]: what is served — workloads, services, Istio policies.
//! - [`convert`]: the lab's data as workload-API messages, as istiod builds them.
//! - [`local_config`]: the same, as ztunnel's `LOCAL_XDS_PATH` file.
//! - [`snapshot`]: one consistent state of the mesh, encoded, with per-resource versions.
//! - [`server`]: the delta ADS server (ACK/NACK, deltas on change).
//! - [`receive`]: those messages read back, refusing what a proxy cannot use.
//! - [`client`]: the client side of delta ADS (as ztunnel speaks it).
//! - [`control_plane`]: the CA and xDS on one TLS port, as istiod serves them.
//! - [`zds`]: istio-cni's node agent, handing pods' network namespaces to a shared-mode proxy.
//! - [`zds_client`]: the shared-mode proxy's side of ZDS.
//!
//! The policies are translated by `hbone-policies` (the same translation
//! hbone-lab's own proxy decides on), so ztunnel and hbone-lab enforce one
//! set of `Authorization` resources.

// Unsafe code is denied but in one place, which says why it is sound:
// zds_client.rs, where descriptors arrive over SCM_RIGHTS.
#![deny(unsafe_code)]

pub mod client;
pub mod control_plane;
pub mod convert;
pub mod local_config;
pub mod mesh;
pub mod proto;
pub mod receive;
pub mod server;
pub mod snapshot;
pub mod zds;
pub mod zds_client;

pub use control_plane::{RunningControlPlane, serve, serve_on};
pub use mesh::{Mesh, MeshService, MeshWorkload};
pub use server::{ClientStatus, XdsState};
