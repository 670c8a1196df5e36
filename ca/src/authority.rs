//! The signing authority: turns an authorized request into an X.509-SVID.
//!
//! The authority holds the issuing key (an intermediate under the mesh root)
//! and decides every property of a workload certificate itself: an empty
//! subject, exactly one URI SAN (the SPIFFE ID, so the SAN is critical),
//! serverAuth + clientAuth, a random 128-bit serial, and a lifetime that
//! starts a little in the past to absorb clock skew. From the CSR it takes
//! only the public key.

use std::time::{Duration, SystemTime};

use rcgen::{
    CertificateParams, ExtendedKeyUsagePurpose, Issuer, KeyPair, KeyUsagePurpose, SanType,
    SerialNumber,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use thiserror::Error;
use time::OffsetDateTime;

use crate::csr::{CsrError, ParsedCsr, parse_csr_pem};
use crate::identity::{Identity, IdentityError};
use crate::plugin::{PluginCerts, PluginError};

/// Istio's defaults: 24 h workload certificates, at most 90 days.
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);
/// Longest lifetime a request may ask for (90 days); anything longer is refused.
pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(90 * 24 * 3600);
/// How far notBefore is set in the past, for peers whose clocks run behind.
pub const DEFAULT_BACKDATE: Duration = Duration::from_secs(60);

/// Why the authority would not, or could not, sign a certificate.
#[derive(Debug, Error)]
pub enum AuthorityError {
    /// The CSR did not parse, or its self-signature did not verify.
    #[error("malformed CSR: {0}")]
    Csr(#[from] CsrError),
    /// The CSR's URI SAN is not of the form `spiffe://<td>/ns/<ns>/sa/<sa>`.
    #[error("the CSR's SAN is not an Istio workload identity: {0}")]
    CsrIdentity(IdentityError),
    /// The CSR names an identity other than the one the caller was authorized for.
    #[error("the CSR asks for {csr_san} but the caller is authorized for {authorized}")]
    SanMismatch {
        /// The identity the caller may obtain.
        authorized: Identity,
        /// The URI SAN the CSR actually carries.
        csr_san: String,
    },
    /// The identity lies outside the one trust domain this CA signs for.
    #[error("{identity} is in trust domain {found:?}; this CA signs only for {expected:?}")]
    ForeignTrustDomain {
        /// The identity that was asked for.
        identity: Identity,
        /// The trust domain of that identity.
        found: String,
        /// The trust domain this CA is configured for.
        expected: String,
    },
    /// The requested lifetime exceeds `AuthorityConfig::max_ttl`.
    #[error("requested lifetime {requested:?} is above this CA's maximum {max:?}")]
    TtlTooLong {
        /// The lifetime the request asked for.
        requested: Duration,
        /// The longest lifetime this CA grants.
        max: Duration,
    },
    /// A plug-in CA file (key, certificate, chain or root) could not be used; the text names the file.
    #[error("the plug-in CA files are unusable: {0}")]
    Plugin(String),
    /// The plug-in CA material could not be produced (for `generate`, making the root and intermediate failed).
    #[error(transparent)]
    PluginFiles(#[from] PluginError),
    /// rcgen could not make a key, encode a SAN or sign the certificate.
    #[error("signing failed: {0}")]
    Sign(#[from] rcgen::Error),
}

impl AuthorityError {
    /// A short stable label for logs and the refusal metric.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthorityError::Csr(_) | AuthorityError::CsrIdentity(_) => "malformed_csr",
            AuthorityError::SanMismatch { .. } => "san_mismatch",
            AuthorityError::ForeignTrustDomain { .. } => "foreign_trust_domain",
            AuthorityError::TtlTooLong { .. } => "ttl_too_long",
            AuthorityError::Plugin(_)
            | AuthorityError::PluginFiles(_)
            | AuthorityError::Sign(_) => "internal",
        }
    }
}

/// Lifetimes and the trust domain the authority signs for.
#[derive(Debug, Clone)]
pub struct AuthorityConfig {
    /// The one trust domain identities are issued in, e.g. `cluster.local`.
    pub trust_domain: String,
    /// Lifetime granted when a request asks for none (or for 0 seconds).
    pub default_ttl: Duration,
    /// Longest lifetime granted; longer requests are refused, not shortened.
    pub max_ttl: Duration,
    /// How long before the signing time `notBefore` is set, to tolerate clock skew.
    pub backdate: Duration,
}

impl AuthorityConfig {
    /// A configuration for `trust_domain` with the defaults: 24 h lifetime, 90 days maximum, 60 s backdating.
    pub fn new(trust_domain: impl Into<String>) -> Self {
        AuthorityConfig {
            trust_domain: trust_domain.into(),
            default_ttl: DEFAULT_TTL,
            max_ttl: DEFAULT_MAX_TTL,
            backdate: DEFAULT_BACKDATE,
        }
    }
}

/// A signed workload certificate and the chain that proves it.
#[derive(Debug, Clone)]
pub struct IssuedCertificate {
    /// The workload identity written into the URI SAN.
    pub identity: Identity,
    /// PEM documents, leaf first, root last (the order Istio's CA answers in).
    pub chain_pem: Vec<String>,
    /// Start of validity, already moved back by the backdating.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
    /// The random 128-bit serial number, as big-endian bytes (always positive).
    pub serial: Vec<u8>,
}

impl IssuedCertificate {
    /// The workload's own (leaf) certificate in PEM, the first of the chain.
    pub fn leaf_pem(&self) -> &str {
        &self.chain_pem[0]
    }

    /// The mesh root in PEM, the last of the chain.
    pub fn root_pem(&self) -> &str {
        self.chain_pem
            .last()
            .expect("a chain holds at least the leaf")
    }
}

/// Holds the issuing key and signs workload certificates.
pub struct SigningAuthority {
    config: AuthorityConfig,
    issuer: Issuer<'static, KeyPair>,
    /// PEM certificates above the leaf: the issuing certificate first, the root last.
    chain_above_leaf: Vec<String>,
    root_pem: String,
}

impl std::fmt::Debug for SigningAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningAuthority")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl SigningAuthority {
    /// A new authority with a root and an intermediate made in memory for this run.
    pub fn generate(config: AuthorityConfig) -> Result<Self, AuthorityError> {
        let certs = PluginCerts::generate(&config.trust_domain)?;
        Self::from_plugin(&certs, config)
    }

    /// An authority signing with Istio plug-in CA material (shared with istiod).
    pub fn from_plugin(
        certs: &PluginCerts,
        config: AuthorityConfig,
    ) -> Result<Self, AuthorityError> {
        let key = KeyPair::from_pem(&certs.ca_key_pem)
            .map_err(|e| AuthorityError::Plugin(format!("ca-key.pem: {e}")))?;
        let issuer = Issuer::from_ca_cert_pem(&certs.ca_cert_pem, key)
            .map_err(|e| AuthorityError::Plugin(format!("ca-cert.pem: {e}")))?;
        let mut chain = split_pem_certs(&certs.cert_chain_pem)
            .map_err(|e| AuthorityError::Plugin(format!("cert-chain.pem: {e}")))?;
        let root = split_pem_certs(&certs.root_cert_pem)
            .map_err(|e| AuthorityError::Plugin(format!("root-cert.pem: {e}")))?;
        let root_pem = root
            .first()
            .cloned()
            .ok_or_else(|| AuthorityError::Plugin("root-cert.pem holds no certificate".into()))?;
        let ca_cert = split_pem_certs(&certs.ca_cert_pem)
            .map_err(|e| AuthorityError::Plugin(format!("ca-cert.pem: {e}")))?;
        // cert-chain.pem normally starts with ca-cert.pem and ends with the root;
        // tolerate files that omit either.
        if chain.first() != ca_cert.first() {
            chain.splice(0..0, ca_cert.first().cloned());
        }
        if chain.last() != Some(&root_pem) {
            chain.push(root_pem.clone());
        }
        Ok(SigningAuthority {
            config,
            issuer,
            chain_above_leaf: chain,
            root_pem,
        })
    }

    /// The issuing certificate (the intermediate that signs leaves and
    /// revocation lists), PEM.
    pub fn issuer_pem(&self) -> &str {
        &self.chain_above_leaf[0]
    }

    /// The issuing certificate and key, to sign with (crate::revocation).
    pub(crate) fn issuer(&self) -> &Issuer<'static, KeyPair> {
        &self.issuer
    }

    /// The trust domain and lifetimes this authority was built with.
    pub fn config(&self) -> &AuthorityConfig {
        &self.config
    }

    /// The trust domain this authority signs identities in.
    pub fn trust_domain(&self) -> &str {
        &self.config.trust_domain
    }

    /// The mesh root in PEM, the one trust anchor every workload needs.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// Checks that `identity` belongs to this CA's trust domain.
    pub fn check_trust_domain(&self, identity: &Identity) -> Result<(), AuthorityError> {
        if identity.trust_domain() == self.config.trust_domain {
            Ok(())
        } else {
            Err(AuthorityError::ForeignTrustDomain {
                identity: identity.clone(),
                found: identity.trust_domain().to_string(),
                expected: self.config.trust_domain.clone(),
            })
        }
    }

    /// The lifetime to grant: the default for `None` or zero, refused above the maximum.
    pub fn lifetime(&self, requested: Option<Duration>) -> Result<Duration, AuthorityError> {
        match requested {
            None => Ok(self.config.default_ttl),
            Some(d) if d.is_zero() => Ok(self.config.default_ttl),
            Some(d) if d > self.config.max_ttl => Err(AuthorityError::TtlTooLong {
                requested: d,
                max: self.config.max_ttl,
            }),
            Some(d) => Ok(d),
        }
    }

    /// Reads the identity a CSR asks for (its one URI SAN).
    pub fn csr_identity(csr: &ParsedCsr) -> Result<Identity, AuthorityError> {
        csr.uri_san.parse().map_err(AuthorityError::CsrIdentity)
    }

    /// Signs a PEM CSR for `identity`, which the caller has already authorized.
    /// The CSR must name exactly that identity.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        identity: &Identity,
        ttl: Option<Duration>,
    ) -> Result<IssuedCertificate, AuthorityError> {
        let csr = parse_csr_pem(csr_pem)?;
        self.sign_parsed(&csr, identity, ttl)
    }

    /// As [`sign_csr`](Self::sign_csr), for a CSR already parsed.
    pub fn sign_parsed(
        &self,
        csr: &ParsedCsr,
        identity: &Identity,
        ttl: Option<Duration>,
    ) -> Result<IssuedCertificate, AuthorityError> {
        if csr.uri_san != identity.uri() {
            return Err(AuthorityError::SanMismatch {
                authorized: identity.clone(),
                csr_san: csr.uri_san.clone(),
            });
        }
        self.check_trust_domain(identity)?;
        let lifetime = self.lifetime(ttl)?;
        self.sign_key(&csr.public_key, identity, lifetime)
    }

    /// Signs a certificate for a key the caller holds (no CSR), for tooling
    /// such as `hbone-lab ca issue` and for the CA's own serving certificate.
    pub fn issue_with_new_key(
        &self,
        identity: &Identity,
        ttl: Option<Duration>,
    ) -> Result<(KeyPair, IssuedCertificate), AuthorityError> {
        self.check_trust_domain(identity)?;
        let lifetime = self.lifetime(ttl)?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let issued = self.sign_key(&key, identity, lifetime)?;
        Ok((key, issued))
    }

    fn sign_key(
        &self,
        public_key: &impl rcgen::PublicKeyData,
        identity: &Identity,
        lifetime: Duration,
    ) -> Result<IssuedCertificate, AuthorityError> {
        let uri = SanType::URI(identity.uri().as_str().try_into()?);
        let (params, serial) = self.leaf_params(vec![uri], lifetime)?;
        let cert = params.signed_by(public_key, &self.issuer)?;
        Ok(self.issued(identity.clone(), cert.pem(), &params, serial))
    }

    /// A TLS serving certificate for the CA itself, naming hosts and IPs.
    pub fn issue_serving_cert(
        &self,
        names: &[String],
    ) -> Result<(KeyPair, Vec<String>), AuthorityError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let sans = names
            .iter()
            .map(|name| match name.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => Ok(SanType::DnsName(name.as_str().try_into()?)),
            })
            .collect::<Result<Vec<_>, rcgen::Error>>()?;
        let (mut params, _) = self.leaf_params(sans, Duration::from_secs(365 * 24 * 3600))?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.issuer)?;
        let mut chain = vec![cert.pem()];
        chain.extend(self.chain_above_leaf.iter().cloned());
        Ok((key, chain))
    }

    fn leaf_params(
        &self,
        sans: Vec<SanType>,
        lifetime: Duration,
    ) -> Result<(CertificateParams, Vec<u8>), AuthorityError> {
        let now = OffsetDateTime::now_utc();
        let mut serial = [0u8; 16];
        rand::fill(&mut serial);
        serial[0] &= 0x7f; // a positive INTEGER of 128 bits
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.subject_alt_names = sans;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params.not_before = now - self.config.backdate;
        params.not_after = now + lifetime;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        Ok((params, serial.to_vec()))
    }

    fn issued(
        &self,
        identity: Identity,
        leaf_pem: String,
        params: &CertificateParams,
        serial: Vec<u8>,
    ) -> IssuedCertificate {
        let mut chain_pem = vec![leaf_pem];
        chain_pem.extend(self.chain_above_leaf.iter().cloned());
        IssuedCertificate {
            identity,
            chain_pem,
            not_before: params.not_before.into(),
            not_after: params.not_after.into(),
            serial,
        }
    }
}

/// Splits a PEM bundle into one PEM string per certificate (normalized).
pub fn split_pem_certs(bundle: &str) -> Result<Vec<String>, String> {
    let certs = CertificateDer::pem_slice_iter(bundle.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not a PEM certificate bundle: {e}"))?;
    if certs.is_empty() {
        return Err("no CERTIFICATE block found".into());
    }
    Ok(certs.iter().map(|der| der_to_pem(der.as_ref())).collect())
}

/// Encodes one DER certificate as PEM.
pub fn der_to_pem(der: &[u8]) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new("CERTIFICATE", der.to_vec()), config)
}
