//! hbone-proxy: the HBONE node proxy, wire-compatible with ztunnel.
//!
//! The folders are the proxy's concerns, bottom up; a lower one never
//! imports a higher one (`tests/structure.rs` checks it at every depth):
//!
//! - [`config`], [`registry`]: what the proxy is told — its settings, and
//!   the workloads and services it resolves against.
//! - [`observe`]: what it tells — refusal reasons, ztunnel's metrics, the
//!   connection log.
//! - [`keylog`], [`tls`], [`crl`]: mutual TLS with SPIFFE identities, the
//!   key log that lets Wireshark decrypt it, and the CA's revocation lists
//!   every handshake is checked against.
//! - [`authorize`]: the one adapter from a connection to the policies'
//!   decision, and the open streams judged again when the policies change.
//! - [`net`]: sockets — inside pods' namespaces, the accept loop every
//!   listener shares, the connection cap, the byte-moving hot path.
//! - [`state`]: what every listener shares (registry, policies,
//!   certificates, metrics, the pods' namespaces a node agent handed over).
//! - [`inbound`]: HBONE on 15008 (where policy is enforced) and plaintext on
//!   15006.
//! - [`outbound`]: ways into the mesh — captured 15001, SOCKS5 15080 — the
//!   HBONE client and its connection pool.
//! - `bench_tunnel` (feature `bench-rungs`, which only the benchmark turns
//!   on): tunnels below HBONE (a TCP relay, mTLS alone), for the cost
//!   ladder; without the feature the data path is HBONE or passthrough.
//! - [`sources`]: where the registry and policies come from — files, a
//!   Kubernetes cluster, a control plane over xDS — and the node agent that
//!   hands over pods (ZDS).
//! - [`workload_listeners`], [`admin`], [`proxy`], [`assemble`]: the
//!   assembly — each local workload's listeners, metrics/readiness/admin,
//!   the node's listeners and draining, and a running proxy from a config.

#![forbid(unsafe_code)]

pub mod admin;
pub mod assemble;
pub mod authorize;
#[cfg(feature = "bench-rungs")]
pub mod bench_tunnel;
pub mod config;
pub mod crl;
pub mod inbound;
pub mod keylog;
pub mod net;
pub mod observe;
pub mod outbound;
pub mod proxy;
pub mod registry;
pub mod sources;
pub mod state;
pub mod tls;
pub mod workload_listeners;

pub use proxy::{BoundAddrs, ProxyHandle};
