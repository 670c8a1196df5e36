//! Cilium: CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy, typed and
//! evaluated at L3/L4 (plus the SNI and FQDN checks that can be decided
//! from a flow's description).

pub mod eval;
pub mod iptables;
pub mod types;

pub use eval::{CiliumPolicies, EndpointInfo, Flow, Peer, PolicyEntry};
pub use types::*;
