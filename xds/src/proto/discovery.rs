//! `envoy.service.discovery.v3`: delta ADS, the one RPC ztunnel uses.

use std::collections::HashMap;

/// The HTTP/2 path of the bidirectional stream.
pub const DELTA_ADS_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";
/// The gRPC service name.
pub const SERVICE: &str = "envoy.service.discovery.v3.AggregatedDiscoveryService";

/// `google.rpc.Status`, as Envoy's trimmed proto copies it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Status {
    /// A gRPC status code; hbone-lab's client NACKs with 3 (`INVALID_ARGUMENT`).
    #[prost(int32, tag = "1")]
    pub code: i32,
    /// Why the client refused the response, in words.
    #[prost(string, tag = "2")]
    pub message: String,
}

/// Who a client is: sent with its requests, so the server can tell clients apart.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Node {
    /// The client's node id (ztunnel: `ztunnel~<ip>~<pod>.<ns>~<ns>.svc.cluster.local`).
    #[prost(string, tag = "1")]
    pub id: String,
    /// The client's cluster name; hbone-lab's client leaves it empty.
    #[prost(string, tag = "2")]
    pub cluster: String,
    /// String metadata (`NAME`, `NAMESPACE`, `NODE_NAME`, `CLUSTER_ID`, …); absent when empty.
    #[prost(message, optional, tag = "3")]
    pub metadata: Option<prost_types::Struct>,
    /// A free-form build string of the client; hbone-lab's client leaves it empty.
    #[prost(string, tag = "5")]
    pub build_version: String,
}

/// A message from the client on the stream: a subscription, or an ACK or NACK.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DeltaDiscoveryRequest {
    /// The client's identity, sent with each subscription.
    #[prost(message, optional, tag = "1")]
    pub node: Option<Node>,
    /// The resource type the request is about.
    #[prost(string, tag = "2")]
    pub type_url: String,
    /// Resource names to start receiving; none on a type's first request
    /// means a wildcard subscription.
    #[prost(string, repeated, tag = "3")]
    pub resource_names_subscribe: Vec<String>,
    /// Resource names to stop receiving.
    #[prost(string, repeated, tag = "4")]
    pub resource_names_unsubscribe: Vec<String>,
    /// On a reconnect: every resource the client holds, name → version.
    #[prost(map = "string, string", tag = "5")]
    pub initial_resource_versions: HashMap<String, String>,
    /// Set on an ACK or NACK: the nonce of the response it answers.
    #[prost(string, tag = "6")]
    pub response_nonce: String,
    /// Set on a NACK: why some resources were refused.
    #[prost(message, optional, tag = "7")]
    pub error_detail: Option<Status>,
}

/// A push from the server: resources of one type that are new or changed, and names gone.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DeltaDiscoveryResponse {
    /// The server's version of its whole state (hbone-lab: the snapshot generation), for logs.
    #[prost(string, tag = "1")]
    pub system_version_info: String,
    /// The resources new or changed since what the client holds.
    #[prost(message, repeated, tag = "2")]
    pub resources: Vec<Resource>,
    /// The type of every resource in this response.
    #[prost(string, tag = "4")]
    pub type_url: String,
    /// Unique per response; the client's ACK or NACK echoes it as `response_nonce`.
    #[prost(string, tag = "5")]
    pub nonce: String,
    /// Names of resources the client holds that no longer exist.
    #[prost(string, repeated, tag = "6")]
    pub removed_resources: Vec<String>,
}

/// One named, versioned resource within a delta response.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Resource {
    /// Its version (hbone-lab: a hash of its encoded bytes); a reconnecting client sends it back.
    #[prost(string, tag = "1")]
    pub version: String,
    /// The payload, an `Address` or an `Authorization` packed as `Any`.
    #[prost(message, optional, tag = "2")]
    pub resource: Option<prost_types::Any>,
    /// Its name: a workload uid, a service's `<ns>/<hostname>` or a policy's `<ns>/<name>`.
    #[prost(string, tag = "3")]
    pub name: String,
    /// Other names for the same resource; hbone-lab sends none.
    #[prost(string, repeated, tag = "4")]
    pub aliases: Vec<String>,
}
