//! The CA server: Istio's `CreateCertificate` over gRPC + TLS (port 15012).
//!
//! A request is decided in a fixed order, each step with its own refusal:
//! bearer token → grant; CSR parsed and self-signature checked; the identity
//! asked for (`ImpersonatedIdentity` when a node proxy asks for a workload on
//! its node, otherwise the CSR's SAN); its trust domain; the grant allows it;
//! the CSR names it; the lifetime is within bounds. Every refusal is logged
//! with its reason, counted, and answered with a gRPC status that says why.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

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
use crate::identity::Identity;
use crate::metrics::CaMetrics;
use crate::proto::{
    CREATE_CERTIFICATE_PATH, IstioCertificateRequest, IstioCertificateResponse, SERVICE,
};
use crate::tokens::{AuthError, Authenticator};

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
            message: message.into(),
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
        }
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
        match self.decide(metadata, request).await {
            Ok((identity, chain, lifetime)) => {
                self.metrics.record_issued();
                info!(%identity, lifetime = %humanize(lifetime), "issued workload certificate");
                Ok(IstioCertificateResponse { cert_chain: chain })
            }
            Err(refusal) => {
                self.metrics.record_refusal(refusal.reason);
                warn!(reason = refusal.reason, detail = %refusal.message, "refused certificate request");
                Err(refusal)
            }
        }
    }

    async fn decide(
        &self,
        metadata: &MetadataMap,
        request: &IstioCertificateRequest,
    ) -> Result<(Identity, Vec<String>, Duration), Refusal> {
        let token = bearer_token(metadata)?;
        let grant = self
            .authenticator
            .authenticate(token)
            .await
            .map_err(|e| match e {
                AuthError::UnknownToken => {
                    Refusal::new("unknown_token", Code::Unauthenticated, e.to_string())
                }
                AuthError::Backend(_) => {
                    Refusal::new("auth_backend", Code::Unavailable, e.to_string())
                }
            })?;
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
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
            Ok(grpc.unary(UnaryHandler(self.0), request).await)
        })
    }
}

struct UnaryHandler(Arc<CaService>);

impl tonic::server::UnaryService<IstioCertificateRequest> for UnaryHandler {
    type Response = IstioCertificateResponse;
    type Future = BoxFuture<tonic::Response<Self::Response>, Status>;

    fn call(&mut self, request: tonic::Request<IstioCertificateRequest>) -> Self::Future {
        let service = self.0.clone();
        Box::pin(async move {
            service
                .create_certificate(request.metadata(), request.get_ref())
                .await
                .map(tonic::Response::new)
                .map_err(|r| Status::new(r.code, format!("{} ({})", r.message, r.reason)))
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
    /// tonic rejected the TLS configuration.
    #[error("TLS setup failed: {0}")]
    Tls(#[from] tonic::transport::Error),
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
/// serves its CA and xDS on 15012.
pub async fn serve_listener_with(
    service: Arc<CaService>,
    listener: TcpListener,
    extra_names: &[String],
    more: Routes,
) -> Result<RunningCa, ServerError> {
    let unknown: SocketAddr = ([0, 0, 0, 0], 0).into();
    let addr = listener.local_addr().map_err(|source| ServerError::Bind {
        addr: unknown,
        source,
    })?;
    let names = serving_names(addr, extra_names);
    let (key, chain) = service.authority.issue_serving_cert(&names)?;
    let identity = tonic::transport::Identity::from_pem(chain.concat(), key.serialize_pem());
    let tls = tonic::transport::ServerTlsConfig::new().identity(identity);
    let (tx, rx) = oneshot::channel::<()>();
    let router = tonic::transport::Server::builder()
        .tls_config(tls)?
        .add_routes(more.add_service(certificate_service(service.clone())));
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
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
