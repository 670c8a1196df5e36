//! `istio.workload.zds`: how istio-cni hands pods to a shared-mode ztunnel
//! over a SOCK_SEQPACKET unix socket, one message per datagram.

/// `Version.V1`.
pub const VERSION_V1: i32 = 1;

/// ztunnel's first message.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ZdsHello {
    /// The protocol version the proxy speaks; the agent accepts only `VERSION_V1`.
    #[prost(int32, tag = "1")]
    pub version: i32,
}

/// Who a pod is, sent with its network namespace.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WorkloadInfo {
    /// The pod's name in Kubernetes.
    #[prost(string, tag = "1")]
    pub name: String,
    /// The namespace the pod runs in.
    #[prost(string, tag = "2")]
    pub namespace: String,
    /// The service account the pod runs as, which its identity derives from.
    #[prost(string, tag = "3")]
    pub service_account: String,
}

/// Carries the pod's network namespace as one `SCM_RIGHTS` descriptor.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AddWorkload {
    /// The pod's uid, the same as its xDS workload's.
    #[prost(string, tag = "1")]
    pub uid: String,
    /// The pod's name, namespace and service account.
    #[prost(message, optional, tag = "2")]
    pub workload_info: Option<WorkloadInfo>,
}

/// Tells the proxy that a pod it held before reconnecting is still there.
#[derive(Clone, PartialEq, prost::Message)]
pub struct KeepWorkload {
    /// The uid of the pod to keep.
    #[prost(string, tag = "1")]
    pub uid: String,
}

/// Takes a pod back: the proxy stops serving it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DelWorkload {
    /// The uid of the pod removed (tag 2 on the wire).
    #[prost(string, tag = "2")]
    pub uid: String,
}

/// Marks the end of the replay of every current pod after a connect.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SnapshotSent {}

/// One request from the node agent; the proxy answers each with a `WorkloadResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WorkloadRequest {
    /// What the agent asks; a request without a payload is refused.
    #[prost(oneof = "Payload", tags = "1, 5, 2, 3")]
    pub payload: Option<Payload>,
}

/// The requests the node agent can make.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Payload {
    /// Start serving a pod (its netns arrives as an `SCM_RIGHTS` descriptor).
    #[prost(message, tag = "1")]
    Add(AddWorkload),
    /// A pod held from before a reconnect is still there.
    #[prost(message, tag = "5")]
    Keep(KeepWorkload),
    /// Stop serving a pod.
    #[prost(message, tag = "2")]
    Del(DelWorkload),
    /// Every current pod has been sent.
    #[prost(message, tag = "3")]
    SnapshotSent(SnapshotSent),
}

/// An empty `error` acknowledges; anything else refuses.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Ack {
    #[prost(string, tag = "1")]
    /// Empty when the request was accepted; otherwise why the proxy refused it.
    pub error: String,
}

/// The proxy's answer to one `WorkloadRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WorkloadResponse {
    /// The answer; a response without one counts as a refusal.
    #[prost(oneof = "ResponsePayload", tags = "1")]
    pub payload: Option<ResponsePayload>,
}

/// The answers the proxy can give (only an ack).
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum ResponsePayload {
    /// An acknowledgement, or a refusal with its reason.
    #[prost(message, tag = "1")]
    Ack(Ack),
}
