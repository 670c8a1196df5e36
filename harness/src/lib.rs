//! hbone-harness: what the labs, the benchmarks and the tests use to build
//! a world around the proxies, and that no node proxy runs — so that
//! `hbone-proxy` holds only what a node proxy runs.
//!
//! - [`netns`]: named network namespaces, veth pairs, ambient's capture
//!   rules (iproute2 and iptables, as a user would type them).
//! - [`ztunnel`]: a real ztunnel (which the user supplies) found, started in
//!   a namespace, asked for its config dump, stopped.
//!
//! The real control plane's programs (etcd, kube-apiserver, istiod) are
//! started by `hbone-control-plane`, which owns their configuration too.

#![forbid(unsafe_code)]

pub mod netns;
pub mod ztunnel;
