//! `istio.workload`: workloads and services, wrapped in `Address`.

use std::collections::HashMap;

/// The type URL of `Address` resources, the first type ztunnel subscribes to.
pub const ADDRESS_TYPE_URL: &str = "type.googleapis.com/istio.workload.Address";

/// The xDS payload of type `Address`: one workload or one service.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Address {
    /// The workload or service this resource holds; `None` is refused on receipt.
    #[prost(oneof = "AddressType", tags = "1, 2")]
    pub r#type: Option<AddressType>,
}

/// What an `Address` resource holds (the `type` oneof).
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum AddressType {
    /// A workload (tag 1), boxed because it is far larger than a service.
    #[prost(message, boxed, tag = "1")]
    Workload(Box<Workload>),
    /// A service with its virtual IPs and ports (tag 2).
    #[prost(message, tag = "2")]
    Service(Service),
}

/// One workload (a pod, or an endpoint istiod knows without a pod): its
/// addresses, identity, node, and the services and policies it belongs to.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Workload {
    /// The resource name: unique, opaque (istiod: `<cluster>//Pod/<ns>/<name>`).
    #[prost(string, tag = "20")]
    pub uid: String,
    /// The pod's name in Kubernetes.
    #[prost(string, tag = "1")]
    pub name: String,
    /// The pod's namespace; required, as the workload's identity is built from it.
    #[prost(string, tag = "2")]
    pub namespace: String,
    /// Raw IPs, 4 or 16 bytes each.
    #[prost(bytes = "vec", repeated, tag = "3")]
    pub addresses: Vec<Vec<u8>>,
    /// A DNS name for a workload reached by name rather than IP; hbone-lab leaves it empty.
    #[prost(string, tag = "21")]
    pub hostname: String,
    /// The network its addresses belong to; empty means the default network.
    #[prost(string, tag = "4")]
    pub network: String,
    /// NONE = 0, HBONE = 1 (LEGACY_ISTIO_MTLS = 2 is refused by ztunnel).
    #[prost(int32, tag = "5")]
    pub tunnel_protocol: i32,
    /// The trust domain of its SPIFFE identity; empty is read as `cluster.local`.
    #[prost(string, tag = "6")]
    pub trust_domain: String,
    /// The service account it runs as; empty is read as `default`.
    #[prost(string, tag = "7")]
    pub service_account: String,
    /// The node it runs on, so a node proxy can tell its own pods from others'.
    #[prost(string, tag = "9")]
    pub node: String,
    /// The canonical service name for telemetry: the `app` label, else the pod name.
    #[prost(string, tag = "10")]
    pub canonical_name: String,
    /// The canonical revision for telemetry; hbone-lab sends `latest`.
    #[prost(string, tag = "11")]
    pub canonical_revision: String,
    /// DEPLOYMENT = 0, CRONJOB = 1, POD = 2, JOB = 3.
    #[prost(int32, tag = "12")]
    pub workload_type: i32,
    /// The name of the workload owning the pod; hbone-lab sends the pod's own name.
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
    /// The cluster it belongs to; hbone-lab sends istiod's default, `Kubernetes`.
    #[prost(string, tag = "18")]
    pub cluster_id: String,
}

/// `Workload::tunnel_protocol` for a plaintext workload outside the mesh.
pub const TUNNEL_NONE: i32 = 0;
/// `Workload::tunnel_protocol` for a meshed workload, reached over HBONE.
pub const TUNNEL_HBONE: i32 = 1;
/// `Workload::workload_type` for a Kubernetes pod.
pub const WORKLOAD_TYPE_POD: i32 = 2;

/// The ports a workload serves for one service (a message, as a map value must be).
#[derive(Clone, PartialEq, prost::Message)]
pub struct PortList {
    /// One entry per service port.
    #[prost(message, repeated, tag = "1")]
    pub ports: Vec<Port>,
}

/// A service port and the workload port its traffic goes to.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Port {
    /// The port clients dial on the service's virtual IP.
    #[prost(uint32, tag = "1")]
    pub service_port: u32,
    /// The port on the workload that traffic for `service_port` is sent to.
    #[prost(uint32, tag = "2")]
    pub target_port: u32,
    /// The application protocol as an enum number; hbone-lab sends 0 (unknown).
    #[prost(int32, tag = "3")]
    pub app_protocol: i32,
}

/// A Kubernetes service: its hostname, virtual IPs and ports.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Service {
    /// The Service object's name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// The namespace of the Service object.
    #[prost(string, tag = "2")]
    pub namespace: String,
    /// Its fully qualified DNS name; with the namespace, the resource's name (`<ns>/<hostname>`).
    #[prost(string, tag = "3")]
    pub hostname: String,
    /// The virtual IPs clients dial to reach it.
    #[prost(message, repeated, tag = "4")]
    pub addresses: Vec<NetworkAddress>,
    /// Its ports, each with the target port on the workloads behind it.
    #[prost(message, repeated, tag = "5")]
    pub ports: Vec<Port>,
    /// Identities its backends may present besides their own; hbone-lab sends none.
    #[prost(string, repeated, tag = "6")]
    pub subject_alt_names: Vec<String>,
}

/// An IP address together with the network it is reachable on.
#[derive(Clone, PartialEq, prost::Message)]
pub struct NetworkAddress {
    /// The network of the address; empty for the default network.
    #[prost(string, tag = "1")]
    pub network: String,
    /// The raw IP, 4 or 16 bytes.
    #[prost(bytes = "vec", tag = "2")]
    pub address: Vec<u8>,
    /// Absent or full length: a host address; otherwise a CIDR VIP.
    #[prost(uint32, optional, tag = "3")]
    pub length: Option<u32>,
}
