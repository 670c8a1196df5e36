//! A delta ADS server: istiod's half of the conversation ztunnel has with it.
//!
//! Per stream and per type, the server keeps what the client holds (name →
//! version). The first request of a type (with the versions a reconnecting
//! client still has) is answered at once — empty if need be, because
//! ztunnel opens no listener until both types have been answered — with
//! what is new or changed, and the names that are gone. Every later change
//! of the mesh is pushed the same way as a delta. ACKs and NACKs are
//! matched to the response they answer by nonce; a NACK is logged with the
//! client's reason and kept in the client's status.
//!
//! What a client can make the server keep is bounded, since a node token
//! is all it takes to connect (a hostile pass held 790 MB after two 190 MB
//! NACKs): a request is at most [`MAX_REQUEST_BYTES`]; a client's status
//! keeps its newest [`KEPT_NACKS`] NACK reasons and a node id, each cut at
//! [`MAX_DETAIL_BYTES`]; only Address and Authorization are served (any
//! other type URL ends the stream with INVALID_ARGUMENT, so none is kept);
//! the status of at most [`KEPT_GONE_CLIENTS`] disconnected clients is
//! kept; and a message that does not decode ends the stream with its
//! error, not with OK.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hbone_ca::grpc::{Method, OneMethod};
use hbone_ca::tokens::Authenticator;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::BoxFuture;
use tonic::metadata::MetadataMap;
use tonic::{Status, Streaming};
use tracing::{debug, info, warn};

use crate::mesh::Mesh;
use crate::proto::discovery::{
    DELTA_ADS_PATH, DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource, SERVICE,
};
use crate::proto::security::TYPE_URL as AUTHORIZATION;
use crate::proto::workload::ADDRESS_TYPE_URL as ADDRESS;
use crate::snapshot::Snapshot;

/// The largest request read: a reconnecting client's held versions for
/// 100 000 workloads take a few MB; an ACK or NACK, bytes to kilobytes.
pub const MAX_REQUEST_BYTES: usize = 16 << 20;
/// NACK reasons kept per client, newest last.
pub const KEPT_NACKS: usize = 16;
/// The longest NACK reason, node id or type URL kept or logged.
pub const MAX_DETAIL_BYTES: usize = 1024;
/// Disconnected clients whose status is kept, newest.
pub const KEPT_GONE_CLIENTS: usize = 64;
/// The types this server serves, as ztunnel subscribes to them.
const SERVED_TYPES: [&str; 2] = [ADDRESS, AUTHORIZATION];

/// What the server knows of one connected (or once connected) client.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClientStatus {
    /// The node id it sent (`ztunnel~<ip>~<pod>.<ns>~<ns>.svc.cluster.local`).
    pub node_id: String,
    /// Whether its stream is open now.
    pub connected: bool,
    /// Responses sent, by type URL.
    pub pushes: BTreeMap<String, u64>,
    /// Responses acknowledged, by type URL.
    pub acks: BTreeMap<String, u64>,
    /// The newest NACKs' reasons (at most [`KEPT_NACKS`], each cut at
    /// [`MAX_DETAIL_BYTES`]), oldest first.
    pub nacks: Vec<String>,
    /// Every NACK this client sent.
    pub nacks_total: u64,
    /// The newest snapshot generation this client has been sent the changes of.
    pub generation: u64,
}

/// The mesh as served, and every client's status.
pub struct XdsState {
    snapshot: watch::Sender<Arc<Snapshot>>,
    authenticator: Option<Arc<dyn Authenticator>>,
    clients: Mutex<BTreeMap<u64, ClientStatus>>,
    next_client: AtomicU64,
    next_nonce: AtomicU64,
    /// Set once the server is going away: every stream ends, new ones are refused.
    closing: watch::Sender<bool>,
    /// Counts [`XdsState::disconnect_clients`]: each bump ends the streams
    /// open then, and their clients reconnect.
    disconnects: watch::Sender<u64>,
}

impl XdsState {
    /// Serves `mesh`; with an authenticator, clients must present a bearer
    /// token it knows (as on the CA).
    pub fn new(mesh: &Mesh, authenticator: Option<Arc<dyn Authenticator>>) -> Arc<XdsState> {
        let (snapshot, _) = watch::channel(Arc::new(Snapshot::build(mesh, 1)));
        Arc::new(XdsState {
            snapshot,
            authenticator,
            clients: Mutex::new(BTreeMap::new()),
            next_client: AtomicU64::new(1),
            next_nonce: AtomicU64::new(1),
            closing: watch::Sender::new(false),
            disconnects: watch::Sender::new(0),
        })
    }

    /// Ends every stream with UNAVAILABLE and refuses new ones, as istiod
    /// does when it stops: clients keep what they hold and reconnect
    /// elsewhere (or to the next server on this address).
    pub fn close_streams(&self) {
        self.closing.send_replace(true);
    }

    /// Ends every stream open now with UNAVAILABLE, as a restarting istiod
    /// does, but keeps serving: the clients reconnect and resubscribe.
    pub fn disconnect_clients(&self) {
        self.disconnects.send_modify(|n| *n += 1);
    }

    /// Serves a changed mesh: every subscribed client gets the delta.
    pub fn update(&self, mesh: &Mesh) {
        let generation = self.snapshot.borrow().generation + 1;
        let snapshot = Snapshot::build(mesh, generation);
        info!(
            generation,
            "mesh changed: pushing deltas to subscribed clients"
        );
        self.snapshot.send_replace(Arc::new(snapshot));
    }

    /// Waits until every connected client has answered every push (ACK or
    /// NACK), so what was served is what it holds; `false` on timeout.
    pub async fn wait_answered(&self, limit: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let current = self.snapshot.borrow().generation;
            let settled = self.clients().iter().filter(|c| c.connected).all(|c| {
                let answered: u64 = c.acks.values().sum::<u64>() + c.nacks_total;
                c.generation >= current && answered >= c.pushes.values().sum::<u64>()
            });
            if settled {
                return true;
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Every client seen, in the order they connected.
    pub fn clients(&self) -> Vec<ClientStatus> {
        self.lock_clients().values().cloned().collect()
    }

    fn lock_clients(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, ClientStatus>> {
        self.clients.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn with_client(&self, id: u64, f: impl FnOnce(&mut ClientStatus)) {
        f(self.lock_clients().entry(id).or_default());
    }

    /// Marks client `id` gone, and forgets the oldest gone clients past
    /// [`KEPT_GONE_CLIENTS`]: 3 000 short connections used to keep 75 MB.
    fn gone(&self, id: u64) {
        let mut clients = self.lock_clients();
        if let Some(c) = clients.get_mut(&id) {
            c.connected = false;
        }
        let gone: Vec<u64> = clients
            .iter()
            .filter(|(_, c)| !c.connected)
            .map(|(id, _)| *id)
            .collect();
        for old in gone
            .iter()
            .take(gone.len().saturating_sub(KEPT_GONE_CLIENTS))
        {
            clients.remove(old);
        }
    }

    async fn authenticate(&self, metadata: &MetadataMap) -> Result<(), Status> {
        let Some(authenticator) = &self.authenticator else {
            return Ok(());
        };
        let token = hbone_ca::server::bearer_token(metadata)
            .map_err(|r| Status::unauthenticated(r.message))?;
        authenticator
            .authenticate(token)
            .await
            .map(|_| ())
            .map_err(|e| Status::unauthenticated(format!("xDS refused: {e}")))
    }
}

/// What one stream has told the server of one type.
#[derive(Default)]
struct Subscription {
    subscribed: bool,
    /// What the client holds, as far as the server knows: name → version.
    held: BTreeMap<String, String>,
}

/// One client's stream, from its first request to its end.
struct StreamTask {
    state: Arc<XdsState>,
    id: u64,
    subscriptions: BTreeMap<String, Subscription>,
    out: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
}

impl StreamTask {
    async fn run(mut self, mut inbound: Streaming<DeltaDiscoveryRequest>) {
        let mut snapshots = self.state.snapshot.subscribe();
        snapshots.mark_unchanged();
        let mut closing = self.state.closing.subscribe();
        let mut disconnects = self.state.disconnects.subscribe();
        disconnects.mark_unchanged();
        loop {
            tokio::select! {
                _ = async { let _ = closing.wait_for(|c| *c).await; } => {
                    let _ = self.out.send(Err(Status::unavailable("the control plane is shutting down"))).await;
                    break;
                }
                _ = disconnects.changed() => {
                    let _ = self.out.send(Err(Status::unavailable("the control plane is restarting"))).await;
                    break;
                }
                message = inbound.message() => match message {
                    Ok(Some(request)) => {
                        let snapshot = snapshots.borrow().clone();
                        if self.handle(request, &snapshot).await.is_err() {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(status) => {
                        // A message that does not decode (or is too large)
                        // ends the stream with that status, not with OK.
                        debug!(client = self.id, %status, "xDS stream ended with an error");
                        let _ = self.out.send(Err(status)).await;
                        break;
                    }
                },
                changed = snapshots.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let snapshot = snapshots.borrow_and_update().clone();
                    if self.push_all(&snapshot).await.is_err() {
                        break;
                    }
                }
            }
        }
        self.state.gone(self.id);
        info!(client = self.id, "xDS client disconnected");
    }

    async fn handle(
        &mut self,
        request: DeltaDiscoveryRequest,
        snapshot: &Arc<Snapshot>,
    ) -> Result<(), ()> {
        if let Some(node) = &request.node {
            let node_id = cut(&node.id);
            self.state.with_client(self.id, |c| c.node_id = node_id);
        }
        let type_url = request.type_url.clone();
        if !SERVED_TYPES.contains(&type_url.as_str()) {
            // Nothing is kept of a type not served: ACKs with ever-new type
            // URLs used to grow the server by 100 MB a run.
            let status = Status::invalid_argument(format!(
                "type {:?} is not served here (only {})",
                cut(&type_url),
                SERVED_TYPES.join(", ")
            ));
            let _ = self.out.send(Err(status)).await;
            return Err(());
        }
        if !request.response_nonce.is_empty() {
            let name = short(&type_url);
            match &request.error_detail {
                Some(error) => {
                    let reason = cut(&error.message);
                    warn!(client = self.id, r#type = name, nonce = %cut(&request.response_nonce), %reason, "xDS client refused (NACK) resources");
                    self.state.with_client(self.id, |c| {
                        c.nacks_total += 1;
                        if c.nacks.len() == KEPT_NACKS {
                            c.nacks.remove(0);
                        }
                        c.nacks.push(reason);
                    });
                }
                None => {
                    debug!(client = self.id, r#type = name, "ACK");
                    self.state.with_client(self.id, |c| {
                        *c.acks.entry(type_url.clone()).or_default() += 1;
                    });
                }
            }
            return Ok(());
        }
        let subscription = self.subscriptions.entry(type_url.clone()).or_default();
        if !subscription.subscribed {
            subscription.subscribed = true;
            subscription.held = request.initial_resource_versions.into_iter().collect();
            info!(
                client = self.id,
                r#type = short(&type_url),
                held = subscription.held.len(),
                "xDS client subscribed"
            );
            // Answer the first request even when there is nothing to send.
            self.push(&type_url, snapshot, true).await?;
            let generation = snapshot.generation;
            self.state
                .with_client(self.id, |c| c.generation = c.generation.max(generation));
            return Ok(());
        }
        // A later request that is not an ACK: a change of names, which a
        // wildcard subscription does not need. Answer with what is missing.
        self.push(&type_url, snapshot, false).await
    }

    async fn push_all(&mut self, snapshot: &Arc<Snapshot>) -> Result<(), ()> {
        let types: Vec<String> = self
            .subscriptions
            .iter()
            .filter(|(_, s)| s.subscribed)
            .map(|(t, _)| t.clone())
            .collect();
        for type_url in types {
            self.push(&type_url, snapshot, false).await?;
        }
        let generation = snapshot.generation;
        self.state
            .with_client(self.id, |c| c.generation = generation);
        Ok(())
    }

    /// Sends what the client lacks of one type (always, when `even_empty`).
    async fn push(
        &mut self,
        type_url: &str,
        snapshot: &Snapshot,
        even_empty: bool,
    ) -> Result<(), ()> {
        let subscription = self.subscriptions.entry(type_url.to_string()).or_default();
        let (changed, removed) = snapshot.delta(type_url, &subscription.held);
        if changed.is_empty() && removed.is_empty() && !even_empty {
            return Ok(());
        }
        let nonce = self
            .state
            .next_nonce
            .fetch_add(1, Ordering::Relaxed)
            .to_string();
        let resources: Vec<Resource> = changed
            .iter()
            .map(|(name, entry)| Resource {
                version: entry.version.clone(),
                resource: Some(prost_types::Any {
                    type_url: type_url.to_string(),
                    value: entry.bytes.clone(),
                }),
                name: (*name).clone(),
                aliases: Vec::new(),
            })
            .collect();
        for (name, entry) in &changed {
            subscription
                .held
                .insert((*name).clone(), entry.version.clone());
        }
        for name in &removed {
            subscription.held.remove(name);
        }
        info!(
            client = self.id,
            r#type = short(type_url),
            generation = snapshot.generation,
            resources = resources.len(),
            removed = removed.len(),
            %nonce,
            "xDS push"
        );
        let response = DeltaDiscoveryResponse {
            system_version_info: snapshot.generation.to_string(),
            resources,
            type_url: type_url.to_string(),
            nonce,
            removed_resources: removed,
        };
        self.state.with_client(self.id, |c| {
            *c.pushes.entry(type_url.to_string()).or_default() += 1;
        });
        self.out.send(Ok(response)).await.map_err(|_| ())
    }
}

/// `text` cut to at most [`MAX_DETAIL_BYTES`] (on a character boundary).
fn cut(text: &str) -> String {
    let mut end = text.len().min(MAX_DETAIL_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// `type.googleapis.com/istio.workload.Address` → `Address`.
fn short(type_url: &str) -> &str {
    type_url.rsplit('.').next().unwrap_or(type_url)
}

/// tonic's view of the ADS service: its one method, the delta stream.
pub type AdsServer = OneMethod<DeltaAds>;

/// Wraps `state` for tonic.
pub fn ads_service(state: Arc<XdsState>) -> AdsServer {
    OneMethod(DeltaAds(state))
}

/// `DeltaAggregatedResources`, a bidirectional stream.
#[derive(Clone)]
pub struct DeltaAds(Arc<XdsState>);

impl Method for DeltaAds {
    const SERVICE: &'static str = SERVICE;
    const PATH: &'static str = DELTA_ADS_PATH;

    fn call(
        self,
        request: http::Request<tonic::body::Body>,
    ) -> BoxFuture<http::Response<tonic::body::Body>, Infallible> {
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default())
                .max_decoding_message_size(MAX_REQUEST_BYTES);
            Ok(grpc.streaming(StreamHandler(self.0), request).await)
        })
    }
}

struct StreamHandler(Arc<XdsState>);

impl tonic::server::StreamingService<DeltaDiscoveryRequest> for StreamHandler {
    type Response = DeltaDiscoveryResponse;
    type ResponseStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;
    type Future = BoxFuture<tonic::Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: tonic::Request<Streaming<DeltaDiscoveryRequest>>) -> Self::Future {
        let state = self.0.clone();
        Box::pin(async move {
            if *state.closing.borrow() {
                return Err(Status::unavailable("the control plane is shutting down"));
            }
            state.authenticate(request.metadata()).await?;
            let id = state.next_client.fetch_add(1, Ordering::Relaxed);
            state.with_client(id, |c| c.connected = true);
            info!(client = id, "xDS client connected");
            let (out, rx) = mpsc::channel(16);
            let task = StreamTask {
                state,
                id,
                subscriptions: BTreeMap::new(),
                out,
            };
            tokio::spawn(task.run(request.into_inner()));
            Ok(tonic::Response::new(ReceiverStream::new(rx)))
        })
    }
}
