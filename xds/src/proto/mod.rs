//! The messages ztunnel and istiod exchange, written out by hand with prost
//! (as the CA's are), so no protoc is needed. Field numbers and names are
//! those of the upstream protos: Envoy's trimmed delta ADS
//! (`envoy.service.discovery.v3`), the workload API (`istio.workload`), its
//! authorization (`istio.security`) and istio-cni's ZDS
//! (`istio.workload.zds`). Only the fields hbone-lab sets or reads are here;
//! prost skips unknown fields when decoding, as protobuf requires.

pub mod discovery;
pub mod security;
pub mod workload;
pub mod zds;
