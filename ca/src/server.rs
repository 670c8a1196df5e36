//! The CA server: Istio's `CreateCertificate` over gRPC + TLS (port 15012).
//!
//! A request is decided in a fixed order, each step with its own refusal:
//! bearer token → grant; CSR parsed and self-signature checked; the identity
//! asked for (`ImpersonatedIdentity` when a node proxy asks for a workload on
//! its node, otherwise the CSR's SAN); its trust domain; the grant allows it;
//! the CSR names it; the lifetime is within bounds. Every refusal is logged
//! with its reason, counted, and answered with a gRPC status that says why.
//!
//! The port answers anyone before any token, so it is bounded the way every
//! listener of the lab is (`hbone_listen::Bounds::CONTROL_PLANE`): a cap on
//! connections, a TLS handshake timeout, a request timeout, a few streams
//! per connection, and HTTP/2 keep-alive pings that close dead peers. The
//! token is checked from the request's headers *before* its body is read,
//! and a body is at most [`MAX_REQUEST_BYTES`]: an unauthenticated client
//! used to make the CA hold 300 × 4 MiB bodies on one connection. A
//! refusal's message is at most [`MAX_REFUSAL_BYTES`], in the log and on
//! the wire (a CSR with 720 long SANs made a 2.9 MB status before).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hbone_listen::{Acceptor, Bounds, ConnectionLimit};
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::codegen::BoxFuture;
use tonic::metadata::MetadataMap;
use tonic::service::Routes;
use tonic::{Code, Status};
use tracing::{info, warn};

use crate::authority::{AuthorityError, SigningAuthority};
use crate::csr::parse_csr_pem;
use crate::grpc::{Method, OneMethod};
use crate::handshake::{TlsSetupError, handshaken, server_config};
use crate::identity::Identity;
use crate::metrics::CaMetrics;
use crate::placement::Places;
use crate::proto::{
    CREATE_CERTIFICATE_PATH, IstioCertificateRequest, IstioCertificateResponse, SERVICE,
};
use crate::tokens::{AuthError, Authenticator, Grant};

/// How often an idle HTTP/2 connection is pinged, and how long the answer
/// may take before the connection is closed.
const KEEPALIVE: Duration = Duration::from_secs(20);
/// The largest `CreateCertificate` request read: a CSR is a few kilobytes.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// The longest refusal message sent or logged; the rest is cut and counted.
pub const MAX_REFUSAL_BYTES: usize = 512;

/// Why a request was refused: a metric label, a gRPC code and a message.
#[derive(Debug, Error, Clone, PartialEq)]
#[error("{reason}: {message}")]
pub struct Refusal {
    /// Short stable label, used in logs and as the refusal metric's `reason`.
    pub reason: &'static str,
    /// The gRPC status code the client receives.
    pub code: Code,
    /// Human-readable explanation sent along with the status.
    pub message: String,
}

impl Refusal {
    fn new(reason: &'static str, code: Code, message: impl Into<String>) -> Self {
        Refusal {
            reason,
            code,
            message: bounded(message.into(), MAX_REFUSAL_BYTES),
        }
    }
}

impl From<AuthorityError> for Refusal {
    fn from(err: AuthorityError) -> Self {
        let code = match &err {
            AuthorityError::ForeignTrustDomain { .. } => Code::PermissionDenied,
            AuthorityError::Plugin(_)
            | AuthorityError::PluginFiles(_)
            | AuthorityError::Sign(_) => Code::Internal,
            _ => Code::InvalidArgument,
        };
        Refusal::new(err.reason(), code, err.to_string())
    }
}

/// The decision logic of the CA, independent of the transport.
pub struct CaService {
    authority: Arc<SigningAuthority>,
    authenticator: Arc<dyn Authenticator>,
    metrics: Arc<CaMetrics>,
    placement: Option<Arc<dyn Places>>,
    journal: Option<Arc<crate::journal::Journal>>,
}

impl CaService {
    /// A service that checks tokens with `authenticator`, signs with `authority` and counts outcomes in `metrics`.
    pub fn new(
        authority: Arc<SigningAuthority>,
        authenticator: Arc<dyn Authenticator>,
        metrics: Arc<CaMetrics>,
    ) -> Self {
        CaService {
            authority,
            authenticator,
            metrics,
            placement: None,
            journal: None,
        }
    }

    /// Records every certificate issued in `journal` (for `ca revoke
    /// --identity`); one that cannot be recorded is not handed out.
    pub fn with_journal(mut self, journal: Arc<crate::journal::Journal>) -> Self {
        self.journal = Some(journal);
        self
    }

    /// Checks node-scoped grants against `placement`: a node's token then
    /// obtains only identities of workloads placed on that node.
    pub fn with_placement(mut self, placement: Arc<dyn Places>) -> Self {
        self.placement = Some(placement);
        self
    }

    /// The counters this service updates.
    pub fn metrics(&self) -> &Arc<CaMetrics> {
        &self.metrics
    }

    /// The authority that signs the certificates.
    pub fn authority(&self) -> &Arc<SigningAuthority> {
        &self.authority
    }

    /// Answers one request, logging and counting the outcome.
    pub async fn create_certificate(
        &self,
        metadata: &MetadataMap,
        request: &IstioCertificateRequest,
    ) -> Result<IstioCertificateResponse, Refusal> {
        let grant = self.authenticate(metadata).await?;
        self.issue(&grant, request).await
    }

    /// The grant of the request's bearer token; a refusal is logged and
    /// counted. The gRPC server asks this before reading the request's body.
    pub async fn authenticate(&self, metadata: &MetadataMap) -> Result<Grant, Refusal> {
        let token = bearer_token(metadata).inspect_err(|r| self.refused(r))?;
        self.authenticator
            .authenticate(token)
            .await
            .map_err(|e| match e {
                AuthError::UnknownToken => {
                    Refusal::new("unknown_token", Code::Unauthenticated, e.to_string())
                }
                AuthError::Backend(_) => {
                    Refusal::new("auth_backend", Code::Unavailable, e.to_string())
                }
            })
            .inspect_err(|r| self.refused(r))
    }

    fn refused(&self, refusal: &Refusal) {
        self.metrics.record_refusal(refusal.reason);
        warn!(reason = refusal.reason, detail = %refusal.message, "refused certificate request");
    }

    /// Answers one authenticated request, logging and counting the outcome.
    pub async fn issue(
        &self,
        grant: &Grant,
        request: &IstioCertificateRequest,
    ) -> Result<IstioCertificateResponse, Refusal> {
        match self.decide(grant, request).await {
            Ok((identity, chain, lifetime)) => {
                self.metrics.record_issued();
                info!(%identity, lifetime = %humanize(lifetime), "issued workload certificate");
                Ok(IstioCertificateResponse { cert_chain: chain })
            }
            Err(refusal) => {
                self.refused(&refusal);
                Err(refusal)
            }
        }
    }

    async fn decide(
        &self,
        grant: &Grant,
        request: &IstioCertificateRequest,
    ) -> Result<(Identity, Vec<String>, Duration), Refusal> {
        let csr = parse_csr_pem(&request.csr).map_err(AuthorityError::from)?;
        let identity = match request.impersonated_identity() {
            Some(asked) => asked.parse::<Identity>().map_err(|e| {
                Refusal::new(
                    "malformed_identity",
                    Code::InvalidArgument,
                    format!("ImpersonatedIdentity: {e}"),
                )
            })?,
            None => SigningAuthority::csr_identity(&csr)?,
        };
        self.authority.check_trust_domain(&identity)?;
        if !grant.allows(&identity) {
            return Err(Refusal::new(
                "identity_not_allowed",
                Code::PermissionDenied,
                format!("{} may not obtain {identity}", grant.subject),
            ));
        }
        if let Some(node) = &grant.node {
            let Some(placement) = &self.placement else {
                return Err(Refusal::new(
                    "no_placement",
                    Code::FailedPrecondition,
                    format!(
                        "{} is scoped to node {node}, and this CA does not know where workloads run (ca serve --registry)",
                        grant.subject
                    ),
                ));
            };
            let placed = placement.places(node, &identity).await.map_err(|e| {
                Refusal::new(
                    "placement_unavailable",
                    Code::Unavailable,
                    format!("cannot tell whether {identity} runs on node {node}: {e}"),
                )
            })?;
            if !placed {
                return Err(Refusal::new(
                    "identity_not_on_node",
                    Code::PermissionDenied,
                    format!(
                        "{} is a proxy of node {node}, and no workload with {identity} runs there",
                        grant.subject
                    ),
                ));
            }
        }
        let ttl = match request.validity_duration {
            n if n < 0 => {
                return Err(Refusal::new(
                    "invalid_ttl",
                    Code::InvalidArgument,
                    format!("validity_duration {n} is negative"),
                ));
            }
            n => Some(Duration::from_secs(n as u64)),
        };
        let issued = self.authority.sign_parsed(&csr, &identity, ttl)?;
        if let Some(journal) = &self.journal {
            let entry = crate::journal::Entry::new(
                &issued.serial,
                &identity.to_string(),
                issued.not_before,
                issued.not_after,
            );
            journal.record(&entry).map_err(|e| {
                Refusal::new(
                    "journal_unwritable",
                    Code::Internal,
                    format!("the certificate could not be recorded, so it is not issued: {e}"),
                )
            })?;
        }
        let lifetime = issued
            .not_after
            .duration_since(issued.not_before)
            .unwrap_or_default();
        Ok((identity, issued.chain_pem, lifetime))
    }
}

/// The token of an `authorization: Bearer <token>` header (the CA's and
/// the xDS server's one credential).
pub fn bearer_token(metadata: &MetadataMap) -> Result<&str, Refusal> {
    let missing = || {
        Refusal::new(
            "missing_token",
            Code::Unauthenticated,
            "no 'authorization: Bearer <token>' metadata",
        )
    };
    let value = metadata.get("authorization").ok_or_else(missing)?;
    let value = value.to_str().map_err(|_| missing())?;
    // Compared exactly, as it was issued: a token padded with spaces is
    // another token.
    value
        .strip_prefix("Bearer ")
        .filter(|t| !t.is_empty())
        .ok_or_else(missing)
}

/// `text` cut to at most `max` bytes (on a character boundary), saying how
/// much was left out.
fn bounded(mut text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let left = text.len() - cut;
    text.truncate(cut);
    text.push_str(&format!("… ({left} bytes more)"));
    text
}

fn humanize(d: Duration) -> String {
    let secs = d.as_secs();
    format!("{}h{:02}m", secs / 3600, (secs % 3600) / 60)
}

/// tonic's view of [`CaService`]: its one method, `CreateCertificate`.
pub type CertificateServiceServer = OneMethod<CreateCertificate>;

/// Wraps `service` for tonic.
pub fn certificate_service(service: Arc<CaService>) -> CertificateServiceServer {
    OneMethod(CreateCertificate(service))
}

/// `CreateCertificate`, unary.
#[derive(Clone)]
pub struct CreateCertificate(Arc<CaService>);

impl Method for CreateCertificate {
    const SERVICE: &'static str = SERVICE;
    const PATH: &'static str = CREATE_CERTIFICATE_PATH;

    fn call(
        self,
        request: http::Request<tonic::body::Body>,
    ) -> BoxFuture<http::Response<tonic::body::Body>, Infallible> {
        Box::pin(async move {
            // The token first, from the headers: a client without one never
            // gets its body read.
            let metadata = MetadataMap::from_headers(request.headers().clone());
            let grant = match self.0.authenticate(&metadata).await {
                Ok(grant) => grant,
                Err(refusal) => return Ok(status(&refusal).into_http()),
            };
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default())
                .max_decoding_message_size(MAX_REQUEST_BYTES);
            Ok(grpc.unary(UnaryHandler(self.0, grant), request).await)
        })
    }
}

fn status(refusal: &Refusal) -> Status {
    Status::new(
        refusal.code,
        format!("{} ({})", refusal.message, refusal.reason),
    )
}

struct UnaryHandler(Arc<CaService>, Grant);

impl tonic::server::UnaryService<IstioCertificateRequest> for UnaryHandler {
    type Response = IstioCertificateResponse;
    type Future = BoxFuture<tonic::Response<Self::Response>, Status>;

    fn call(&mut self, request: tonic::Request<IstioCertificateRequest>) -> Self::Future {
        let service = self.0.clone();
        let grant = self.1.clone();
        Box::pin(async move {
            service
                .issue(&grant, request.get_ref())
                .await
                .map(tonic::Response::new)
                .map_err(|r| status(&r))
        })
    }
}

/// Why the CA server could not start.
#[derive(Debug, Error)]
pub enum ServerError {
    /// The listen address could not be bound, or a bound listener's address not read.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address concerned (`0.0.0.0:0` when the listener's own address was unreadable).
        addr: SocketAddr,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The authority could not issue the CA's own TLS serving certificate.
    #[error("cannot make the CA's serving certificate: {0}")]
    ServingCert(#[from] AuthorityError),
    /// The serving certificate did not make a TLS configuration.
    #[error("TLS setup failed: {0}")]
    Tls(#[from] TlsSetupError),
}

/// A CA server running in the background.
pub struct RunningCa {
    /// The address actually bound (useful when listening on port 0).
    pub addr: SocketAddr,
    /// The service answering requests, to reach its metrics and authority.
    pub service: Arc<CaService>,
    shutdown: Option<oneshot::Sender<()>>,
    handle: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl RunningCa {
    /// The `https://ip:port` address clients (and ztunnel's `CA_ADDRESS`) use.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Stops accepting and waits for the server task to end.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.handle).await;
    }

    /// Stops the server within `grace` (past it, the task is aborted), so
    /// that its address is free again; what is left is a handle to a
    /// stopped server, to be replaced.
    pub async fn stop_within(&mut self, grace: std::time::Duration) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if tokio::time::timeout(grace, &mut self.handle).await.is_err() {
            self.handle.abort();
        }
    }

    /// Waits until the server ends by itself (it does not, unless it fails).
    pub async fn wait(self) -> Result<(), tonic::transport::Error> {
        match self.handle.await {
            Ok(result) => result,
            Err(join) => panic!("CA server task failed: {join}"),
        }
    }
}

/// The names the CA's serving certificate carries: the listen IP (or
/// 127.0.0.1 for a wildcard listen), `localhost`, and any extra names.
pub fn serving_names(listen: SocketAddr, extra: &[String]) -> Vec<String> {
    let mut names = vec!["localhost".to_string()];
    if listen.ip().is_unspecified() {
        names.push("127.0.0.1".into());
    } else {
        names.push(listen.ip().to_string());
    }
    for name in extra {
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    names
}

/// Binds `listen` and serves the CA over TLS until shut down.
pub async fn serve(
    service: Arc<CaService>,
    listen: SocketAddr,
    extra_names: &[String],
) -> Result<RunningCa, ServerError> {
    serve_with(service, listen, extra_names, Routes::default()).await
}

/// Binds `listen` and serves the CA and `more` gRPC services on it.
pub async fn serve_with(
    service: Arc<CaService>,
    listen: SocketAddr,
    extra_names: &[String],
    more: Routes,
) -> Result<RunningCa, ServerError> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| ServerError::Bind {
            addr: listen,
            source,
        })?;
    serve_listener_with(service, listener, extra_names, more).await
}

/// Serves the CA over TLS on a listener already bound (for example inside a
/// network namespace), until shut down.
pub async fn serve_listener(
    service: Arc<CaService>,
    listener: TcpListener,
    extra_names: &[String],
) -> Result<RunningCa, ServerError> {
    serve_listener_with(service, listener, extra_names, Routes::default()).await
}

/// Serves the CA and `more` gRPC services on the same TLS port, as istiod
/// serves its CA and xDS on 15012, within [`Bounds::CONTROL_PLANE`].
pub async fn serve_listener_with(
    service: Arc<CaService>,
    listener: TcpListener,
    extra_names: &[String],
    more: Routes,
) -> Result<RunningCa, ServerError> {
    serve_bounded(service, listener, extra_names, more, Bounds::CONTROL_PLANE).await
}

/// [`serve_listener_with`] within `bounds`: the connection cap, the TLS
/// handshake timeout, the request timeout and the streams per connection.
pub async fn serve_bounded(
    service: Arc<CaService>,
    listener: TcpListener,
    extra_names: &[String],
    more: Routes,
    bounds: Bounds,
) -> Result<RunningCa, ServerError> {
    let unknown: SocketAddr = ([0, 0, 0, 0], 0).into();
    let addr = listener.local_addr().map_err(|source| ServerError::Bind {
        addr: unknown,
        source,
    })?;
    let names = serving_names(addr, extra_names);
    let (key, chain) = service.authority.issue_serving_cert(&names)?;
    let tls = Arc::new(server_config(&chain.concat(), &key.serialize_pem())?);
    let (tx, rx) = oneshot::channel::<()>();
    let router = tonic::transport::Server::builder()
        .timeout(bounds.request)
        .max_concurrent_streams(bounds.streams_per_connection)
        .http2_keepalive_interval(Some(KEEPALIVE))
        .http2_keepalive_timeout(Some(KEEPALIVE))
        .add_routes(more.add_service(certificate_service(service.clone())));
    let metrics = service.metrics.clone();
    let count = move |_| metrics.record_refusal("too_many_connections");
    let limit = ConnectionLimit::with_max(bounds.max_connections);
    let acceptor = Acceptor::new(listener, "CA", limit)
        .on_refused(Box::new(count))
        .cap_set_by("the CA port's bound of connections");
    let incoming = handshaken(acceptor, tls, bounds.first_bytes, service.metrics.clone());
    let handle = tokio::spawn(async move {
        router
            .serve_with_incoming_shutdown(incoming, async {
                let _ = rx.await;
            })
            .await
    });
    info!(%addr, names = ?names, "CA serving IstioCertificateService");
    Ok(RunningCa {
        addr,
        service,
        shutdown: Some(tx),
        handle,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_authorization(value: &str) -> MetadataMap {
        let mut metadata = MetadataMap::new();
        metadata.insert("authorization", value.parse().unwrap());
        metadata
    }

    /// A refusal's message is cut on a character boundary, saying how much
    /// was left out; a short one is kept whole.
    #[test]
    fn a_long_refusal_is_cut_and_says_so() {
        let long = "é".repeat(1000);
        let cut = Refusal::new("r", Code::InvalidArgument, long).message;
        assert!(cut.len() < MAX_REFUSAL_BYTES + 32, "{} bytes", cut.len());
        assert!(cut.ends_with("… (1488 bytes more)"), "{cut}");
        let short = Refusal::new("r", Code::InvalidArgument, "short").message;
        assert_eq!(short, "short");
    }

    /// A token is the bytes after `Bearer `, exactly: one padded with
    /// spaces is another token (and no token file holds it).
    #[test]
    fn a_bearer_token_is_taken_exactly_as_sent() {
        let token = |v: &str| bearer_token(&with_authorization(v)).map(str::to_string);
        assert_eq!(token("Bearer secret").unwrap(), "secret");
        assert_eq!(token("Bearer  secret ").unwrap(), " secret ");
        assert!(token("Bearer ").is_err());
        assert!(token("Basic secret").is_err());
        assert!(bearer_token(&MetadataMap::new()).is_err());
    }
}
