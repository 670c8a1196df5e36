//! Reading PKCS#10 certificate signing requests.
//!
//! A workload proves it holds a private key by signing a CSR with it; the CA
//! copies only two things out of the request — the public key and the SPIFFE
//! ID in its URI SAN — and decides everything else itself. Keeping the parser
//! this narrow means a crafted request cannot smuggle extensions, a subject or
//! a CA flag into a certificate.

use rcgen::{PublicKeyData, SignatureAlgorithm};
use rustls_pki_types::CertificateSigningRequestDer;
use rustls_pki_types::pem::PemObject;
use thiserror::Error;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::oid_registry;
use x509_parser::prelude::FromDer;

use crate::san::uri_sans;

/// Why a CSR was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CsrError {
    /// The text holds no PEM `CERTIFICATE REQUEST` block.
    #[error("the CSR is not PEM (expected a '-----BEGIN CERTIFICATE REQUEST-----' block)")]
    NotPem,
    /// The DER does not decode as a PKCS#10 request; holds the parser's message.
    #[error("the CSR is not a valid PKCS#10 structure: {0}")]
    NotPkcs10(String),
    /// The request was not signed by the private key matching the public key it carries.
    #[error("the CSR's signature does not verify with its own public key")]
    BadSignature,
    /// The key is not ECDSA P-256, P-384 or RSA; holds what was found instead.
    #[error("the CSR's key type is not supported ({0}); use ECDSA P-256, P-384 or RSA")]
    UnsupportedKey(String),
    /// The request has no URI SAN, so it names no identity.
    #[error("the CSR carries no URI SAN; a workload CSR must name exactly one SPIFFE ID")]
    NoUriSan,
    /// The request has more than one URI SAN; holds all of them.
    #[error("the CSR carries {} URI SANs ({}); exactly one is allowed", .0.len(), .0.join(", "))]
    SeveralUriSans(Vec<String>),
}

/// The public key of a request, in the form rcgen signs over.
#[derive(Debug, Clone)]
pub struct CsrPublicKey {
    raw: Vec<u8>,
    algorithm: &'static SignatureAlgorithm,
}

impl PublicKeyData for CsrPublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.raw
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.algorithm
    }
}

/// What the CA takes from a verified CSR.
#[derive(Debug, Clone)]
pub struct ParsedCsr {
    /// The requester's public key, the only key material the certificate will carry.
    pub public_key: CsrPublicKey,
    /// The one URI SAN (a SPIFFE ID, not yet validated as one).
    pub uri_san: String,
}

/// Parses a PEM CSR, checks its self-signature and extracts the key and the URI SAN.
pub fn parse_csr_pem(pem: &str) -> Result<ParsedCsr, CsrError> {
    let der = CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
        .map_err(|_| CsrError::NotPem)?;
    parse_csr_der(der.as_ref())
}

/// Parses a DER CSR; see [`parse_csr_pem`].
pub fn parse_csr_der(der: &[u8]) -> Result<ParsedCsr, CsrError> {
    let (_, request) = X509CertificationRequest::from_der(der)
        .map_err(|err| CsrError::NotPkcs10(err.to_string()))?;
    request
        .verify_signature()
        .map_err(|_| CsrError::BadSignature)?;

    let info = &request.certification_request_info;
    let spki = &info.subject_pki;
    let algorithm = key_algorithm(spki)?;
    let public_key = CsrPublicKey {
        raw: spki.subject_public_key.data.to_vec(),
        algorithm,
    };

    let mut uris = uri_sans(request.requested_extensions().into_iter().flatten());
    match uris.len() {
        0 => Err(CsrError::NoUriSan),
        1 => Ok(ParsedCsr {
            public_key,
            uri_san: uris.remove(0),
        }),
        _ => Err(CsrError::SeveralUriSans(uris)),
    }
}

fn key_algorithm(
    spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>,
) -> Result<&'static SignatureAlgorithm, CsrError> {
    let alg = &spki.algorithm.algorithm;
    if *alg == oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .ok_or_else(|| CsrError::UnsupportedKey("EC key without a named curve".into()))?;
        if curve == oid_registry::OID_EC_P256 {
            Ok(&rcgen::PKCS_ECDSA_P256_SHA256)
        } else if curve == oid_registry::OID_NIST_EC_P384 {
            Ok(&rcgen::PKCS_ECDSA_P384_SHA384)
        } else {
            Err(CsrError::UnsupportedKey(format!("EC curve {curve}")))
        }
    } else if *alg == oid_registry::OID_PKCS1_RSAENCRYPTION {
        Ok(&rcgen::PKCS_RSA_SHA256)
    } else {
        Err(CsrError::UnsupportedKey(format!("algorithm {alg}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair, SanType};

    fn csr_with(sans: Vec<SanType>) -> String {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        params.serialize_request(&key).unwrap().pem().unwrap()
    }

    fn uri(s: &str) -> SanType {
        SanType::URI(s.try_into().unwrap())
    }

    #[test]
    fn extracts_the_one_uri_san() {
        let pem = csr_with(vec![uri("spiffe://cluster.local/ns/demo/sa/a")]);
        let parsed = parse_csr_pem(&pem).unwrap();
        assert_eq!(parsed.uri_san, "spiffe://cluster.local/ns/demo/sa/a");
        assert_eq!(
            parsed.public_key.algorithm(),
            &rcgen::PKCS_ECDSA_P256_SHA256
        );
    }

    #[test]
    fn refuses_garbage_and_san_counts() {
        assert_eq!(parse_csr_pem("hello").unwrap_err(), CsrError::NotPem);
        let not_der =
            "-----BEGIN CERTIFICATE REQUEST-----\naGVsbG8=\n-----END CERTIFICATE REQUEST-----\n";
        assert!(matches!(
            parse_csr_pem(not_der),
            Err(CsrError::NotPkcs10(_))
        ));
        assert_eq!(
            parse_csr_pem(&csr_with(vec![])).unwrap_err(),
            CsrError::NoUriSan
        );
        let two = csr_with(vec![
            uri("spiffe://a/ns/x/sa/y"),
            uri("spiffe://a/ns/x/sa/z"),
        ]);
        assert!(matches!(parse_csr_pem(&two), Err(CsrError::SeveralUriSans(v)) if v.len() == 2));
    }

    #[test]
    fn refuses_a_tampered_signature() {
        let pem = csr_with(vec![uri("spiffe://cluster.local/ns/demo/sa/a")]);
        let mut der = CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .as_ref()
            .to_vec();
        // The signature is the last field: flip its final byte.
        let last = der.len() - 1;
        der[last] ^= 0x55;
        assert_eq!(parse_csr_der(&der).unwrap_err(), CsrError::BadSignature);
    }
}
