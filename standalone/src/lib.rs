//! hbone-standalone: the whole lab on one Linux machine, without Kubernetes.
//!
//! - [`topology`]: CA, two node proxies, PostgreSQL, hello-app and the gateway, on loopback addresses.
//! - [`scenarios`]: the lab's connections, predicted by the policies and then tried for real.
//! - [`explain`]: one connection's story with the real values of the run.
//!
//! The benchmarks reuse the topology.

pub mod explain;
pub mod scenarios;
pub mod topology;
