//! `istio.workload`: workloads and services, wrapped in `Address`.

use std::collections::HashMap;

pub const ADDRESS_TYPE_URL: &str = "type.googleapis.com/istio.workload.Address";

/// The xDS payload of type `Address`: one workload or one service.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Address {
    #[prost(oneof = "AddressType", tags = "1, 2")]
    pub r#type: Option<AddressType>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum AddressType {
    #[prost(message, boxed, tag = "1")]
    Workload(Box<Workload>),
    #[prost(message, tag = "2")]
    Service(Service),
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Workload {
    /// The resource name: unique, opaque (istiod: `<cluster>//Pod/<ns>/<name>`).
    #[prost(string, tag = "20")]
    pub uid: String,
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub namespace: String,
    /// Raw IPs, 4 or 16 bytes each.
    #[prost(bytes = "vec", repeated, tag = "3")]
    pub addresses: Vec<Vec<u8>>,
    #[prost(string, tag = "21")]
    pub hostname: String,
    #[prost(string, tag = "4")]
    pub network: String,
    /// NONE = 0, HBONE = 1 (LEGACY_ISTIO_MTLS = 2 is refused by ztunnel).
    #[prost(int32, tag = "5")]
    pub tunnel_protocol: i32,
    #[prost(string, tag = "6")]
    pub trust_domain: String,
    #[prost(string, tag = "7")]
    pub service_account: String,
    #[prost(string, tag = "9")]
    pub node: String,
    #[prost(string, tag = "10")]
    pub canonical_name: String,
    #[prost(string, tag = "11")]
    pub canonical_revision: String,
    /// DEPLOYMENT = 0, CRONJOB = 1, POD = 2, JOB = 3.
    #[prost(int32, tag = "12")]
    pub workload_type: i32,
    #[prost(string, tag = "13")]
    pub workload_name: String,
    /// `namespace/hostname` → the ports this workload serves for that service.
    #[prost(map = "string, message", tag = "22")]
    pub services: HashMap<String, PortList>,
    /// Keys of the selector-scoped Authorization resources that apply.
    #[prost(string, repeated, tag = "16")]
    pub authorization_policies: Vec<String>,
    /// HEALTHY = 0, UNHEALTHY = 1.
    #[prost(int32, tag = "17")]
    pub status: i32,
    #[prost(string, tag = "18")]
    pub cluster_id: String,
}

pub const TUNNEL_NONE: i32 = 0;
pub const TUNNEL_HBONE: i32 = 1;
pub const WORKLOAD_TYPE_POD: i32 = 2;

#[derive(Clone, PartialEq, prost::Message)]
pub struct PortList {
    #[prost(message, repeated, tag = "1")]
    pub ports: Vec<Port>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Port {
    #[prost(uint32, tag = "1")]
    pub service_port: u32,
    #[prost(uint32, tag = "2")]
    pub target_port: u32,
    #[prost(int32, tag = "3")]
    pub app_protocol: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Service {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub namespace: String,
    #[prost(string, tag = "3")]
    pub hostname: String,
    #[prost(message, repeated, tag = "4")]
    pub addresses: Vec<NetworkAddress>,
    #[prost(message, repeated, tag = "5")]
    pub ports: Vec<Port>,
    #[prost(string, repeated, tag = "6")]
    pub subject_alt_names: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct NetworkAddress {
    #[prost(string, tag = "1")]
    pub network: String,
    #[prost(bytes = "vec", tag = "2")]
    pub address: Vec<u8>,
    /// Absent or full length: a host address; otherwise a CIDR VIP.
    #[prost(uint32, optional, tag = "3")]
    pub length: Option<u32>,
}
