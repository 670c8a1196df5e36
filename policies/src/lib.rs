//! hbone-policies: the lab's two layers of policy, typed and evaluated.
//!
//! A connection in the lab succeeds only when both layers allow it: Cilium
//! (L3/L4, on the wire) and Istio (identity, in ztunnel or hbone-lab's
//! proxy). This crate reads both kinds of policy from YAML into typed
//! resources (checked against the upstream CRD schemas, unknown fields
//! refused, naming file and field), evaluates each layer the way its data
//! plane does, and says which policy and rule decided.
//!
//! - [`istio_crd`]: AuthorizationPolicy and PeerAuthentication as written, typed.
//! - [`authorization`]: their translation as istiod sends it to ztunnel
//!   (the workload API's `Authorization`), and ztunnel's evaluation of it —
//!   the form every decision in hbone-lab is made on.
//! - [`istio`]: the CRDs of a mesh held together and decided on through
//!   that translation (`IstioPolicies`).
//! - [`cilium`]: CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy at L3/L4.
//! - [`schema`]: the upstream CRD schemas, checked before typing.
//! - [`load`]: reading multi-document YAML files and directories.
//! - [`decision`]: a verdict and the policy and rule behind it.
//! - [`selector`]: label selection.
//! - [`lab`]: the lab's own policy files, compiled in.
//! - [`topology`], [`matrix`], [`render`], [`expect`]: `policy check` — who
//!   may reach whom, in both layers, shown and compared with expectations.

#![forbid(unsafe_code)]

pub mod authorization;
pub mod cilium;
pub mod decision;
pub mod expect;
pub mod istio;
pub mod istio_crd;
pub mod lab;
pub mod load;
pub mod matrix;
pub mod render;
pub mod schema;
pub mod selector;
pub mod topology;
