//! hbone-ca: a miniature SPIFFE certificate authority that speaks Istio's CA
//! protocol, and the client side that keeps workload certificates fresh.
//!
//! How the modules fit, from the bottom up:
//! - [`identity`]: SPIFFE IDs in Istio's `ns/<ns>/sa/<sa>` shape.
//! - [`csr`]: reading a PKCS#10 request (key + SAN only).
//! - [`san`]: subject alternative names, read the same way everywhere.
//! - [`plugin`]: Istio's plug-in CA files, shared with istiod.
//! - [`authority`]: signs X.509-SVIDs (24 h by default).
//! - [`inspect`]: reads certificates back and explains them.
//! - [`revocation`]: revocation lists (CRLs) signed by the issuing certificate.
//! - [`tokens`]: which bearer token may obtain which identity; in a
//!   cluster, [`token_review`]; for node proxies, [`placement`] (which
//!   identities run on their node).
//! - [`grpc`]: serving one gRPC method without generated code.
//! - [`handshake`]: the CA port's TLS handshakes, each failure counted.
//! - [`proto`], [`server`], [`metrics`]: `IstioCertificateService/CreateCertificate` on 15012.
//! - [`client`], [`manager`]: obtaining certificates, renewing at half-life.

#![forbid(unsafe_code)]

pub mod authority;
pub mod client;
pub mod csr;
pub mod grpc;
pub mod handshake;
pub mod identity;
pub mod inspect;
pub mod journal;
pub mod manager;
pub mod metrics;
pub mod placement;
pub mod plugin;
pub mod proto;
pub mod revocation;
pub mod san;
pub mod server;
pub mod token_review;
pub mod tokens;

pub use authority::{AuthorityConfig, IssuedCertificate, SigningAuthority};
pub use identity::{Identity, IdentityPattern};
pub use manager::{CertState, CertificateManager, RenewalPolicy, Svid};
