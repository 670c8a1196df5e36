//! hbone-standalone: the whole lab on one Linux machine, without Kubernetes.
//!
//! - [`topology`]: what the lab is made of — pods, addresses per mode, the policy view.
//! - [`dataplane`]: hbone-lab's proxy, ztunnel or one of each on the nodes, and ztunnel's control plane.
//! - [`lab`]: the running lab — CA, two node proxies, PostgreSQL, hello-app and the gateway.
//! - [`netns_topology`]: netns mode's namespaces, in-pod capture and the Cilium layer.
//! - [`sni_relay`]: the node-side SNI check that stands in for Cilium's Envoy.
//! - [`scenarios`]: the lab's connections, predicted by the policies and then tried for real.
//! - [`explain`]: one connection's story with the real values of the run.
//! - [`policy_diff`]: the same policies and connections through ztunnel and hbone-lab, compared.
//! - [`istiod`]: the lab on the real istiod: its registry as API objects, istiod reachable from a node's namespace.
//!
//! The benchmarks reuse the topology.

#![forbid(unsafe_code)]

pub mod dataplane;
pub mod explain;
pub mod istiod;
pub mod lab;
pub mod netns_topology;
pub mod policy_diff;
pub mod scenarios;
pub mod sni_relay;
pub mod topology;
pub mod wire;
