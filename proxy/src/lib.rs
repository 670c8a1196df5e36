//! hbone-proxy: the HBONE node proxy, wire-compatible with ztunnel.
//!
//! Layers, bottom up (lower modules never import higher ones):
//! - [`config`], [`registry`]: what the proxy is told (settings, workloads, services).
//! - [`tls`]: mutual TLS with SPIFFE identities.
//! - [`metrics`]: ztunnel's metric names and labels.
//! - [`core`]: the state every listener shares, TLS configs cached per certificate.
//! - [`copy`]: the byte-moving hot path between TCP and HTTP/2 streams.
//! - [`pool`]: the HBONE client and its connection pool.
//! - [`established`]: the streams being carried, judged again when policies change.
//! - [`authorization`]: the one adapter from a connection to the policies' decision.
//! - [`inbound`]: HBONE on 15008, where policy is enforced.
//! - [`outbound`], [`socks5`], [`capture`]: ways into the mesh (15080, 15001) and plaintext in (15006).
//! - [`file_watch`], [`registry_watch`], [`policy_watch`]: following the registry and policy files.
//! - [`admin`]: metrics (15020), readiness (15021), admin (15000).
//! - [`proxy`]: binding it all, and draining on shutdown.

pub mod admin;
pub mod authorization;
pub mod capture;
pub mod config;
pub mod copy;
pub mod core;
pub mod established;
pub mod file_watch;
pub mod inbound;
pub mod keepalive;
pub mod kube_registry;
mod listen;
pub mod metrics;
pub mod netns;
pub mod outbound;
pub mod policy_watch;
pub mod pool;
pub mod proxy;
pub mod registry;
pub mod registry_watch;
pub mod socks5;
pub mod tls;

pub use proxy::{BoundAddrs, ProxyHandle};
