//! hbone-proxy: the HBONE node proxy, wire-compatible with ztunnel.
//!
//! Layers, bottom up (lower modules never import higher ones):
//! - [`config`], [`registry`]: what the proxy is told (settings, workloads, services).
//! - [`netns`]: network namespaces, in-pod sockets and capture rules.
//! - [`pod_netns`]: the pods' namespaces a node agent handed over (shared mode), by uid.
//! - [`refusal`]: how a refusal is named to the client.
//! - [`keylog`]: TLS secrets in the NSS key log format, when asked for (to decrypt a capture).
//! - [`tls`]: mutual TLS with SPIFFE identities.
//! - [`metrics`]: ztunnel's metric names and labels.
//! - [`connection_log`]: the recent and open connections, one by one (`/debug/connections`).
//! - [`authorization`]: the one adapter from a connection to the policies' decision.
//! - [`established`]: the streams being carried, judged again when policies change.
//! - [`core`]: the state every listener shares, TLS configs cached per certificate.
//! - `listen`: binding a listener, and the accept loop every listener shares.
//! - [`copy`]: the byte-moving hot path between TCP and HTTP/2 streams.
//! - [`keepalive`]: HTTP/2 PINGs on pooled connections.
//! - [`pool`]: the HBONE client and its connection pool.
//! - [`inbound`]: HBONE on 15008, where policy is enforced.
//! - [`outbound`], [`socks5`], [`capture`]: ways into the mesh (15080, 15001) and plaintext in (15006).
//! - [`bench_tunnel`]: benchmark-only tunnels below HBONE (a TCP relay, mTLS alone), for the cost ladder.
//! - [`workload_listeners`]: each local workload's listeners, opened and closed as the registry changes.
//! - [`file_watch`], [`registry_watch`], [`policy_watch`]: following the registry and policy files.
//! - [`kube_registry`]: following a Kubernetes cluster's pods, services and policies instead.
//! - [`xds_registry`]: or following a control plane over delta ADS, as ztunnel follows istiod.
//! - [`zds_pods`]: shared mode — following the node agent that hands over pods (ZDS).
//! - [`admin`]: metrics (15020), readiness (15021), admin (15000).
//! - [`proxy`]: binding it all, and draining on shutdown.
//! - [`assemble`]: from a config to a running node proxy and the tasks that follow its sources.

pub mod admin;
pub mod assemble;
pub mod authorization;
pub mod bench_tunnel;
pub mod capture;
pub mod config;
pub mod connection_limit;
pub mod connection_log;
pub mod copy;
pub mod core;
pub mod established;
pub mod file_watch;
pub mod inbound;
pub mod keepalive;
pub mod keylog;
pub mod kube_registry;
mod listen;
pub mod metrics;
pub mod netns;
pub mod outbound;
pub mod pod_netns;
pub mod policy_watch;
pub mod pool;
pub mod proxy;
pub mod refusal;
pub mod registry;
pub mod registry_watch;
pub mod socks5;
pub mod tls;
pub mod workload_listeners;
pub mod xds_registry;
pub mod zds_pods;

pub use proxy::{BoundAddrs, ProxyHandle};
