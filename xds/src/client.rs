//! The client side of delta ADS, as ztunnel speaks it: one bidirectional
//! stream over TLS with a bearer token, a wildcard subscription per type
//! (carrying, after a reconnect, the versions still held), and an ACK or
//! NACK answering every response by its nonce.
//!
//! This is the low level: requests and responses as messages. It is how the
//! server is tested without a ztunnel, and what a proxy fed over xDS builds on.

use std::collections::{BTreeMap, HashMap};

use thiserror::Error;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::proto::discovery::{
    DELTA_ADS_PATH, DeltaDiscoveryRequest, DeltaDiscoveryResponse, Node, Status,
};

/// Why a delta ADS client could not connect, or lost its stream.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The server address, the token or the cluster id cannot be used in the request.
    #[error("bad xDS address {address}: {reason}")]
    Address {
        /// The xDS server address as given.
        address: String,
        /// What could not be used, and why.
        reason: String,
    },
    /// The TLS channel to the server could not be opened.
    #[error("cannot reach the xDS server {address}: {source}")]
    Connect {
        /// The xDS server address dialled.
        address: String,
        /// The transport's error.
        #[source]
        source: tonic::transport::Error,
    },
    /// The server answered the call with a gRPC error (or the call's task failed).
    #[error("the xDS server refused the stream: {0}")]
    Refused(#[from] tonic::Status),
    /// The server ended the response stream.
    #[error("the xDS server ended the stream")]
    Ended,
    /// The request channel is closed, so no subscription, ACK or NACK can go out.
    #[error("the request stream is closed")]
    Closed,
}

/// The node a client introduces itself as: its id and string metadata,
/// as ztunnel sends `NAME`, `NAMESPACE`, `INSTANCE_IPS`, `NODE_NAME` and
/// the `ISTIO_META_*` variables (prefix stripped, `CLUSTER_ID` among them).
pub fn node(id: &str, metadata: &BTreeMap<String, String>) -> Node {
    let fields = metadata
        .iter()
        .map(|(k, v)| {
            let value = prost_types::Value {
                kind: Some(prost_types::value::Kind::StringValue(v.clone())),
            };
            (k.clone(), value)
        })
        .collect();
    Node {
        id: id.to_string(),
        metadata: (!metadata.is_empty()).then_some(prost_types::Struct { fields }),
        ..Node::default()
    }
}

/// The node's `CLUSTER_ID` metadata, or istiod's default `Kubernetes`.
fn cluster_id(node: &Node) -> String {
    node.metadata
        .as_ref()
        .and_then(|m| m.fields.get("CLUSTER_ID"))
        .and_then(|v| match &v.kind {
            Some(prost_types::value::Kind::StringValue(s)) => Some(s.clone()),
            _ => None,
        })
        .unwrap_or_else(|| "Kubernetes".into())
}

/// The call, made in a task of its own so that the subscriptions queued
/// in the request channel go out with it.
type Opening = tokio::task::JoinHandle<
    Result<tonic::Response<tonic::Streaming<DeltaDiscoveryResponse>>, tonic::Status>,
>;

enum Responses {
    /// The call is not made yet: what was subscribed meanwhile waits in
    /// the request channel and goes out with it.
    Opening(Opening),
    Open(Box<tonic::Streaming<DeltaDiscoveryResponse>>),
}

/// One delta ADS stream.
///
/// The call itself is made on the first [`Self::receive`], with the
/// subscriptions already queued: istiod (grpc-go) sends its response
/// headers only once it has a request to answer, so a client that waits
/// for them before subscribing waits forever. hbone-lab's own server
/// answered the headers at once, which hid this until the proxy met the
/// real istiod.
pub struct AdsClient {
    requests: mpsc::Sender<DeltaDiscoveryRequest>,
    responses: Responses,
    node: Node,
}

impl AdsClient {
    /// Opens a channel to `address` (`https://host:port`), trusting
    /// `root_pem`, to authenticate with `token`, introducing itself as
    /// `node` (see [`node`]). Like ztunnel it also sends the `clusterid`
    /// header istiod uses to pick the cluster that checks the token.
    /// Subscribe, then [`Self::receive`].
    pub async fn connect(
        address: &str,
        root_pem: &str,
        token: Option<&str>,
        node: Node,
    ) -> Result<AdsClient, ClientError> {
        let bad = |reason: String| ClientError::Address {
            address: address.to_string(),
            reason,
        };
        let channel: Channel = hbone_ca::client::tls_endpoint(address, root_pem)
            .map_err(bad)?
            .connect()
            .await
            .map_err(|source| ClientError::Connect {
                address: address.to_string(),
                source,
            })?;
        let (requests, rx) = mpsc::channel(16);
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        if let Some(token) = token {
            let value = format!("Bearer {token}")
                .parse()
                .map_err(|_| bad("the token holds characters not allowed in a header".into()))?;
            request.metadata_mut().insert("authorization", value);
        }
        let cluster = cluster_id(&node);
        let cluster = cluster
            .parse()
            .map_err(|_| bad(format!("the cluster id {cluster:?} is not a header value")))?;
        request.metadata_mut().insert("clusterid", cluster);
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready().await.map_err(|source| ClientError::Connect {
            address: address.to_string(),
            source,
        })?;
        let opening: Opening = tokio::spawn(async move {
            grpc.streaming(
                request,
                http::uri::PathAndQuery::from_static(DELTA_ADS_PATH),
                tonic_prost::ProstCodec::default(),
            )
            .await
        });
        Ok(AdsClient {
            requests,
            responses: Responses::Opening(opening),
            node,
        })
    }

    async fn send(&self, request: DeltaDiscoveryRequest) -> Result<(), ClientError> {
        self.requests
            .send(request)
            .await
            .map_err(|_| ClientError::Closed)
    }

    /// A wildcard subscription to `type_url`, declaring what is still held.
    pub async fn subscribe(
        &self,
        type_url: &str,
        held: HashMap<String, String>,
    ) -> Result<(), ClientError> {
        self.send(DeltaDiscoveryRequest {
            node: Some(self.node.clone()),
            type_url: type_url.to_string(),
            initial_resource_versions: held,
            ..DeltaDiscoveryRequest::default()
        })
        .await
    }

    /// The next response (the first call makes the call, carrying what
    /// was subscribed so far).
    pub async fn receive(&mut self) -> Result<DeltaDiscoveryResponse, ClientError> {
        if let Responses::Opening(opening) = &mut self.responses {
            let open = opening
                .await
                .map_err(|e| tonic::Status::internal(format!("the xDS call's task failed: {e}")))??
                .into_inner();
            self.responses = Responses::Open(Box::new(open));
        }
        match &mut self.responses {
            Responses::Open(stream) => stream.message().await?.ok_or(ClientError::Ended),
            Responses::Opening(_) => unreachable!("opened above"),
        }
    }

    /// Accepts `response`.
    pub async fn ack(&self, response: &DeltaDiscoveryResponse) -> Result<(), ClientError> {
        self.answer(response, None).await
    }

    /// Refuses (some of) `response`, saying why.
    pub async fn nack(
        &self,
        response: &DeltaDiscoveryResponse,
        reason: &str,
    ) -> Result<(), ClientError> {
        self.answer(response, Some(reason)).await
    }

    async fn answer(
        &self,
        response: &DeltaDiscoveryResponse,
        error: Option<&str>,
    ) -> Result<(), ClientError> {
        self.send(DeltaDiscoveryRequest {
            type_url: response.type_url.clone(),
            response_nonce: response.nonce.clone(),
            error_detail: error.map(|message| Status {
                code: tonic::Code::InvalidArgument as i32,
                message: message.to_string(),
            }),
            ..DeltaDiscoveryRequest::default()
        })
        .await
    }
}

/// A call still being made when the client goes is stopped with it.
impl Drop for AdsClient {
    fn drop(&mut self) {
        if let Responses::Opening(opening) = &self.responses {
            opening.abort();
        }
    }
}
