//! Istio: AuthorizationPolicy and PeerAuthentication, typed and evaluated at L4.

//!
//! The CRDs' types live in [`crate::istio_crd`], below both this module and
//! [`crate::authorization`] (the translation), which this one decides on.

pub mod authz;

pub use crate::istio_crd::*;
pub use authz::{ConnectionAttrs, Decision, IstioPolicies, MtlsDecision, TargetWorkload};
