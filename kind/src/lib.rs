//! hbone-kind: the kind lab, as far as it can be checked without a cluster.
//!
//! The lab itself is YAML and shell (`kind/manifests/`, `kind/up.sh`); this
//! crate reads it strictly and turns it into facts other parts use:
//!
//! - [`gateway_api`]: the Gateway API kinds the lab uses, typed.
//! - [`manifests`]: every manifest parsed into its type — k8s-openapi for the
//!   core kinds, with fields the type does not know refused; Gateway API
//!   resources checked against their upstream schemas.
//! - [`topology`]: the lab's workloads as `policy check` sees them.
//! - [`kind_config`]: the kind cluster configuration, typed.
//! - [`node_proxy`]: hbone-lab as one node's ambient proxy, and which proxy serves which node.
//! - [`verify`]: `kind verify` — the running lab against the files, through
//!   [`verify::Cluster`]: [`kube_cluster`] for real, [`fake_cluster`] in tests.

#![forbid(unsafe_code)]

pub mod fake_cluster;
pub mod gateway_api;
pub mod kind_config;
pub mod kube_cluster;
pub mod manifests;
pub mod node_proxy;
pub mod topology;
pub mod verify;
