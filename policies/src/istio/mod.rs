//! Istio: AuthorizationPolicy and PeerAuthentication, typed and evaluated at L4.

pub mod authz;
pub mod types;

pub use authz::{ConnectionAttrs, Decision, IstioPolicies, MtlsDecision, TargetWorkload};
pub use types::*;
