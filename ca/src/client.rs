//! The CA client: what a node proxy (or ztunnel) does to obtain a certificate.
//!
//! It dials the CA over TLS, trusting only the mesh root for the CA's own
//! certificate, and sends `CreateCertificate` with the node's bearer token.

use std::time::Duration;

use thiserror::Error;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::identity::Identity;
use crate::proto::{CREATE_CERTIFICATE_PATH, IstioCertificateRequest};

/// Why a certificate request to a remote CA failed.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The CA address is not a usable `https://host:port` URL.
    #[error("bad CA address {address:?}: {reason}")]
    Address {
        /// The address as given.
        address: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The channel to the CA could not be made ready (the connection failed).
    #[error("cannot reach the CA at {address}: {source}")]
    Connect {
        /// The CA address that was dialled.
        address: String,
        /// The transport error reported by tonic.
        #[source]
        source: tonic::transport::Error,
    },
    /// The call ended with a non-OK gRPC status, usually the CA's refusal (also used when the token cannot be sent as a header).
    #[error("the CA refused: {code:?}: {message}")]
    Refused {
        /// The gRPC status code.
        code: tonic::Code,
        /// The status message, which says why.
        message: String,
    },
    /// The CA answered OK but sent no certificate.
    #[error("the CA answered with an empty certificate chain")]
    EmptyChain,
    /// The file holding the bearer token could not be read.
    #[error("cannot read the token file {path}: {source}")]
    TokenFile {
        /// Path of the token file.
        path: std::path::PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl ClientError {
    /// True when retrying later may help (the CA is down or overloaded).
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Connect { .. } | ClientError::TokenFile { .. } => true,
            ClientError::Refused { code, .. } => matches!(
                code,
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown
            ),
            _ => false,
        }
    }
}

/// Where the bearer token comes from.
#[derive(Clone)]
enum Token {
    Fixed(String),
    /// Read again for every request, as ztunnel does: a Kubernetes
    /// projected token is rotated in place.
    File(std::path::PathBuf),
}

/// A connection to an Istio-compatible CA.
#[derive(Clone)]
pub struct CaClient {
    address: String,
    channel: Channel,
    token: Token,
}

impl std::fmt::Debug for CaClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaClient")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

/// A gRPC endpoint for `address` (`https://host:port`) over TLS, trusting
/// `root_pem` and checking the server's certificate names `host` — how
/// Istio's node proxies reach istiod, for the CA and for xDS alike.
pub fn tls_endpoint(address: &str, root_pem: &str) -> Result<Endpoint, String> {
    let uri: http::Uri = address.parse().map_err(|e| format!("{e}"))?;
    if uri.scheme_str() != Some("https") {
        return Err("the control plane is reached over TLS: use https://host:port".into());
    }
    let host = uri
        .host()
        .ok_or("no host")?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(root_pem))
        .domain_name(host);
    Endpoint::from_shared(address.to_string())
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .tls_config(tls)
        .map_err(|e| e.to_string())
}

impl CaClient {
    /// `address` is `https://host:port`; `root_pem` verifies the CA's serving certificate.
    /// The connection is made on first use and re-made after failures.
    pub fn new(
        address: &str,
        root_pem: &str,
        token: impl Into<String>,
    ) -> Result<Self, ClientError> {
        let channel = tls_endpoint(address, root_pem)
            .map_err(|reason| ClientError::Address {
                address: address.to_string(),
                reason,
            })?
            .timeout(Duration::from_secs(10))
            .connect_lazy();
        Ok(CaClient {
            address: address.to_string(),
            channel,
            token: Token::Fixed(token.into()),
        })
    }

    /// As [`Self::new`], reading the token from `path` for every request.
    pub fn with_token_file(
        address: &str,
        root_pem: &str,
        path: &std::path::Path,
    ) -> Result<Self, ClientError> {
        let mut client = Self::new(address, root_pem, String::new())?;
        client.token = Token::File(path.to_path_buf());
        Ok(client)
    }

    fn token(&self) -> Result<String, ClientError> {
        match &self.token {
            Token::Fixed(t) => Ok(t.clone()),
            Token::File(path) => std::fs::read_to_string(path)
                .map(|t| t.trim().to_string())
                .map_err(|source| ClientError::TokenFile {
                    path: path.clone(),
                    source,
                }),
        }
    }

    /// The CA address this client sends to, as given when it was made.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Sends a CSR; `impersonate` names the workload when a node proxy asks on its behalf.
    pub async fn create_certificate(
        &self,
        csr_pem: &str,
        ttl: Duration,
        impersonate: Option<&Identity>,
    ) -> Result<Vec<String>, ClientError> {
        let mut message = IstioCertificateRequest {
            csr: csr_pem.to_string(),
            validity_duration: ttl.as_secs() as i64,
            metadata: None,
        };
        if let Some(identity) = impersonate {
            message.set_impersonated_identity(&identity.uri());
        }
        let mut request = tonic::Request::new(message);
        let bearer = format!("Bearer {}", self.token()?);
        request.metadata_mut().insert(
            "authorization",
            bearer.parse().map_err(|_| ClientError::Refused {
                code: tonic::Code::InvalidArgument,
                message: "the token holds characters not allowed in a header".into(),
            })?,
        );
        // As ztunnel: istiod picks the cluster that checks the token by it.
        request.metadata_mut().insert(
            "clusterid",
            tonic::metadata::MetadataValue::from_static("Kubernetes"),
        );
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        grpc.ready().await.map_err(|source| ClientError::Connect {
            address: self.address.clone(),
            source,
        })?;
        let response: tonic::Response<crate::proto::IstioCertificateResponse> = grpc
            .unary(
                request,
                http::uri::PathAndQuery::from_static(CREATE_CERTIFICATE_PATH),
                tonic_prost::ProstCodec::default(),
            )
            .await
            .map_err(|status| ClientError::Refused {
                code: status.code(),
                message: status.message().to_string(),
            })?;
        let chain: Vec<String> = response.into_inner().cert_chain;
        if chain.is_empty() {
            return Err(ClientError::EmptyChain);
        }
        Ok(chain)
    }
}
