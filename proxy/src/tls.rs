//! Mutual TLS with SPIFFE identities, as HBONE needs it.
//!
//! Both sides present their workload certificate; both verify the other's
//! chain against the mesh root; then identity comes from the one URI SAN.
//! The server additionally requires the client's trust domain to be its own.
//! The client ignores host names (it sends no SNI) and instead requires the
//! server's SAN to be one of the identities it expects for the destination.
//! TLS 1.3 only, ALPN `h2`, no session resumption — as ztunnel.
//!
//! Configs are built once per certificate (not per connection, as ztunnel
//! does) and cached by the callers: a rustls config is immutable and cheap
//! to share.

use std::sync::Arc;

use hbone_ca::Identity;
use hbone_ca::manager::Svid;
use hbone_ca::san::uri_sans;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error as TlsError, OtherError,
    RootCertStore, SignatureScheme,
};
use thiserror::Error;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::crl::{RevocationCheck, Revocations};
use crate::observe::refusal::Reason;

/// The ALPN protocol HBONE negotiates: HTTP/2.
pub const ALPN_H2: &[u8] = b"h2";

/// Why a peer's certificate does not carry an acceptable identity.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum PeerIdentityError {
    /// The peer sent no certificate.
    #[error("the peer presented no certificate")]
    NoCertificate,
    /// The peer's certificate does not parse as X.509.
    #[error("the peer certificate is not valid X.509")]
    Unparseable,
    /// The certificate has no URI SAN, several, or one that is not `spiffe://`;
    /// it holds the URI SANs found.
    #[error("the peer certificate carries no single SPIFFE ID (URI SANs: {0:?})")]
    NoSpiffeId(Vec<String>),
    /// The SPIFFE ID is not `spiffe://<trust domain>/ns/<namespace>/sa/<account>`;
    /// it holds the parse error.
    #[error("the peer's SPIFFE ID is not an Istio workload identity: {0}")]
    BadSpiffeId(String),
    /// A client's identity is in another trust domain than the server's.
    #[error("the peer {identity} is in trust domain {found:?}, not ours ({expected:?})")]
    ForeignTrustDomain {
        /// The client's SPIFFE ID.
        identity: String,
        /// Its trust domain.
        found: String,
        /// The server's trust domain.
        expected: String,
    },
    /// The server's identity is not one the client expected for the destination.
    #[error("the server is {found}, expected {}", expected.join(" or "))]
    UnexpectedServer {
        /// The SPIFFE ID the server presented.
        found: String,
        /// The SPIFFE IDs the client would accept.
        expected: Vec<String>,
    },
}

impl PeerIdentityError {
    /// The refusal reason this error is counted and logged under.
    pub fn reason(&self) -> Reason {
        match self {
            PeerIdentityError::NoCertificate => Reason::NoClientCert,
            PeerIdentityError::Unparseable
            | PeerIdentityError::NoSpiffeId(_)
            | PeerIdentityError::BadSpiffeId(_) => Reason::NoSpiffeId,
            PeerIdentityError::ForeignTrustDomain { .. } => Reason::ForeignTrustDomain,
            PeerIdentityError::UnexpectedServer { .. } => Reason::UnexpectedServerIdentity,
        }
    }
}

/// Reads the workload identity from a DER certificate's URI SAN.
pub fn identity_of(cert: &CertificateDer<'_>) -> Result<Identity, PeerIdentityError> {
    let (_, parsed) =
        X509Certificate::from_der(cert.as_ref()).map_err(|_| PeerIdentityError::Unparseable)?;
    let uris = uri_sans(parsed.extensions().iter().map(|e| e.parsed_extension()));
    match uris.as_slice() {
        [one] if one.starts_with("spiffe://") => one
            .parse::<Identity>()
            .map_err(|e| PeerIdentityError::BadSpiffeId(e.to_string())),
        _ => Err(PeerIdentityError::NoSpiffeId(uris)),
    }
}

fn identity_error(e: PeerIdentityError) -> TlsError {
    TlsError::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

/// The mesh's trust: its root(s) and its trust domain.
#[derive(Clone)]
pub struct MeshTrust {
    /// The mesh root certificates peers' chains must end at.
    pub roots: Arc<RootCertStore>,
    /// The mesh's trust domain, which a client's identity must be in.
    pub trust_domain: String,
    provider: Arc<CryptoProvider>,
    /// Where the mesh connections' TLS secrets go, when someone asked.
    key_log: Option<Arc<crate::keylog::KeyLogWriter>>,
    /// The CA's revocation lists, read at every handshake.
    revocations: Arc<Revocations>,
    /// The roots as certificates: a list signed by one of them counts for
    /// a peer that sent no issuer certificate.
    root_certs: Arc<Vec<CertificateDer<'static>>>,
}

impl std::fmt::Debug for MeshTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshTrust")
            .field("roots", &self.roots.len())
            .field("trust_domain", &self.trust_domain)
            .finish()
    }
}

/// Why a TLS configuration could not be built.
#[derive(Debug, Error)]
pub enum TlsSetupError {
    /// A root certificate does not parse, or the store rejects it.
    #[error("the root certificate is unusable: {0}")]
    Root(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// rustls rejected the configuration (for instance the workload's key or chain).
    #[error("cannot build the TLS configuration: {0}")]
    Config(#[from] TlsError),
    /// The client-certificate verifier could not be built from the roots.
    #[error("cannot build the client verifier: {0}")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
}

/// aws-lc-rs with ztunnel's two TLS 1.3 suites.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.cipher_suites = vec![
        rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_256_GCM_SHA384,
        rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256,
    ];
    Arc::new(provider)
}

impl MeshTrust {
    /// Trusting the DER root certificates `roots` for `trust_domain`.
    pub fn new(
        roots: &[CertificateDer<'static>],
        trust_domain: &str,
    ) -> Result<Self, TlsSetupError> {
        let mut store = RootCertStore::empty();
        for root in roots {
            store
                .add(root.clone())
                .map_err(|e| TlsSetupError::Root(Box::new(e)))?;
        }
        Ok(MeshTrust {
            roots: Arc::new(store),
            trust_domain: trust_domain.to_string(),
            provider: crypto_provider(),
            key_log: None,
            revocations: Revocations::none(),
            root_certs: Arc::new(roots.to_vec()),
        })
    }

    /// Trusting the root certificate(s) in `root_pem` for `trust_domain`.
    pub fn from_pem(root_pem: &str, trust_domain: &str) -> Result<Self, TlsSetupError> {
        let roots =
            hbone_ca::inspect::pem_certs(root_pem).map_err(|e| TlsSetupError::Root(Box::new(e)))?;
        MeshTrust::new(&roots, trust_domain)
    }

    /// Logs every mesh connection's TLS secrets to `writer` (see [`crate::keylog`]).
    pub fn with_key_log(mut self, writer: Arc<crate::keylog::KeyLogWriter>) -> Self {
        self.key_log = Some(writer);
        self
    }

    /// Checks every peer's chain against `revocations` (see [`crate::crl`]).
    pub fn with_revocations(mut self, revocations: Arc<Revocations>) -> Self {
        self.revocations = revocations;
        self
    }

    /// The revocation lists in force.
    pub fn revocations(&self) -> &Arc<Revocations> {
        &self.revocations
    }

    /// The key log file, when keys are logged.
    pub fn key_log(&self) -> Option<&std::path::Path> {
        self.key_log.as_ref().map(|w| w.path())
    }

    fn algorithms(&self) -> WebPkiSupportedAlgorithms {
        self.provider.signature_verification_algorithms
    }

    /// What checking a chain against the lists in force takes.
    pub(crate) fn revocation_check(&self) -> RevocationCheck {
        RevocationCheck {
            revocations: self.revocations.clone(),
            roots: self.roots.clone(),
            root_certs: self.root_certs.clone(),
            algorithms: self.algorithms().all,
        }
    }

    /// The config a proxy serves HBONE with, as the workload whose SVID it holds.
    pub fn server_config(&self, svid: &Svid) -> Result<Arc<rustls::ServerConfig>, TlsSetupError> {
        let inner =
            WebPkiClientVerifier::builder_with_provider(self.roots.clone(), self.provider.clone())
                .build()
                .map_err(TlsSetupError::Verifier)?;
        let verifier = Arc::new(SpiffeClientVerifier {
            inner,
            trust_domain: self.trust_domain.clone(),
            revoked: self.revocation_check(),
        });
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                presented_chain(svid),
                PrivateKeyDer::Pkcs8(svid.key.clone_key()),
            )?;
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        if let Some(log) = &self.key_log {
            config.key_log = log.clone();
        }
        Ok(Arc::new(config))
    }

    /// The config a proxy dials HBONE with, as `svid`, accepting only `expected` servers.
    pub fn client_config(
        &self,
        svid: &Svid,
        expected: Vec<Identity>,
    ) -> Result<Arc<rustls::ClientConfig>, TlsSetupError> {
        let verifier = Arc::new(SpiffeServerVerifier {
            roots: self.roots.clone(),
            algorithms: self.algorithms(),
            expected,
            revoked: self.revocation_check(),
        });
        let mut config = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(
                presented_chain(svid),
                PrivateKeyDer::Pkcs8(svid.key.clone_key()),
            )?;
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        config.enable_sni = false;
        config.resumption = rustls::client::Resumption::disabled();
        if let Some(log) = &self.key_log {
            config.key_log = log.clone();
        }
        Ok(Arc::new(config))
    }
}

/// The chain a workload presents: its leaf and intermediates (the root is the peer's own anchor).
fn presented_chain(svid: &Svid) -> Vec<CertificateDer<'static>> {
    let n = svid.chain.len();
    let keep = if n > 1 { n - 1 } else { n };
    svid.chain[..keep].to_vec()
}

#[derive(Debug)]
struct SpiffeClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    trust_domain: String,
    revoked: RevocationCheck,
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, TlsError> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        self.revoked.chain(end_entity, intermediates, now, true)?;
        let identity = identity_of(end_entity).map_err(identity_error)?;
        if identity.trust_domain() != self.trust_domain {
            return Err(identity_error(PeerIdentityError::ForeignTrustDomain {
                identity: identity.to_string(),
                found: identity.trust_domain().to_string(),
                expected: self.trust_domain.clone(),
            }));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[derive(Debug)]
struct SpiffeServerVerifier {
    roots: Arc<RootCertStore>,
    algorithms: WebPkiSupportedAlgorithms,
    expected: Vec<Identity>,
    revoked: RevocationCheck,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        self.revoked.chain(end_entity, intermediates, now, false)?;
        let identity = identity_of(end_entity).map_err(identity_error)?;
        if !self.expected.contains(&identity) {
            return Err(identity_error(PeerIdentityError::UnexpectedServer {
                found: identity.to_string(),
                expected: self.expected.iter().map(|i| i.to_string()).collect(),
            }));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        Err(TlsError::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A short label for why a TLS handshake failed, for logs and metrics.
pub fn handshake_failure_reason(err: &std::io::Error) -> Reason {
    let Some(tls) = err.get_ref().and_then(|e| e.downcast_ref::<TlsError>()) else {
        return match err.kind() {
            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset => {
                Reason::HandshakeAborted
            }
            std::io::ErrorKind::TimedOut => Reason::HandshakeTimeout,
            _ => Reason::TlsHandshake,
        };
    };
    match tls {
        TlsError::InvalidMessage(_) => Reason::NotTls,
        TlsError::PeerIncompatible(_) => Reason::TlsVersion,
        TlsError::NoCertificatesPresented => Reason::NoClientCert,
        TlsError::NoApplicationProtocol => Reason::Alpn,
        TlsError::InvalidCertificate(cert) => match cert {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                Reason::ExpiredCertificate
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                Reason::CertificateNotYetValid
            }
            CertificateError::Revoked => Reason::CertificateRevoked,
            CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                Reason::UntrustedCertificate
            }
            CertificateError::Other(OtherError(inner)) => inner
                .downcast_ref::<PeerIdentityError>()
                .map(PeerIdentityError::reason)
                .unwrap_or(Reason::BadCertificate),
            _ => Reason::BadCertificate,
        },
        TlsError::AlertReceived(_) => Reason::PeerAlert,
        _ => Reason::TlsHandshake,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls(e: TlsError) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }

    #[test]
    fn each_handshake_failure_has_its_reason() {
        use std::io::ErrorKind;
        let foreign = PeerIdentityError::ForeignTrustDomain {
            identity: "spiffe://other.org/ns/a/sa/b".into(),
            found: "other.org".into(),
            expected: "cluster.local".into(),
        };
        let cases: Vec<(std::io::Error, Reason)> = vec![
            (ErrorKind::UnexpectedEof.into(), Reason::HandshakeAborted),
            (ErrorKind::ConnectionReset.into(), Reason::HandshakeAborted),
            (ErrorKind::TimedOut.into(), Reason::HandshakeTimeout),
            (ErrorKind::Other.into(), Reason::TlsHandshake),
            (
                tls(TlsError::InvalidMessage(
                    rustls::InvalidMessage::InvalidContentType,
                )),
                Reason::NotTls,
            ),
            (
                tls(TlsError::PeerIncompatible(
                    rustls::PeerIncompatible::SupportedVersionsExtensionRequired,
                )),
                Reason::TlsVersion,
            ),
            (tls(TlsError::NoCertificatesPresented), Reason::NoClientCert),
            (tls(TlsError::NoApplicationProtocol), Reason::Alpn),
            (
                tls(TlsError::InvalidCertificate(CertificateError::Expired)),
                Reason::ExpiredCertificate,
            ),
            (
                tls(TlsError::InvalidCertificate(CertificateError::NotValidYet)),
                Reason::CertificateNotYetValid,
            ),
            (
                tls(TlsError::InvalidCertificate(
                    CertificateError::UnknownIssuer,
                )),
                Reason::UntrustedCertificate,
            ),
            (
                tls(TlsError::InvalidCertificate(CertificateError::Revoked)),
                Reason::CertificateRevoked,
            ),
            (
                tls(TlsError::InvalidCertificate(CertificateError::BadEncoding)),
                Reason::BadCertificate,
            ),
            (
                tls(TlsError::InvalidCertificate(CertificateError::Other(
                    OtherError(Arc::new(foreign)),
                ))),
                Reason::ForeignTrustDomain,
            ),
            (
                tls(TlsError::AlertReceived(
                    rustls::AlertDescription::HandshakeFailure,
                )),
                Reason::PeerAlert,
            ),
            (tls(TlsError::HandshakeNotComplete), Reason::TlsHandshake),
        ];
        for (error, reason) in cases {
            let shown = format!("{error:?}");
            assert_eq!(handshake_failure_reason(&error), reason, "{shown}");
        }
    }
}
