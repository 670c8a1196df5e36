//! Reading certificates back, and explaining them in plain words.
//!
//! Used by the certificate manager (to learn a new SVID's validity), by the
//! admin endpoint, and by `hbone-lab ca inspect`, which tells a newcomer what
//! a workload certificate says: who it names, who signed it, how long it
//! lives, when it will be renewed, and whether it chains to a given root.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use thiserror::Error;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::san::san_names;

/// Why a certificate or a chain could not be read, or did not verify.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum InspectError {
    /// The PEM text contains no `CERTIFICATE` block.
    #[error("no PEM CERTIFICATE block found")]
    NoCertificate,
    /// The PEM text is malformed; holds the decoder's message.
    #[error("not valid PEM: {0}")]
    Pem(String),
    /// A certificate's DER does not parse as X.509.
    #[error("certificate #{index} is not valid X.509: {reason}")]
    X509 {
        /// Position of the certificate, 0 for the leaf (the root counts after the chain).
        index: usize,
        /// The parser's message.
        reason: String,
    },
    /// A certificate's signature does not verify with the key of the next certificate in the chain.
    #[error("certificate #{index} ({subject}) is not signed by the next one ({issuer})")]
    BrokenLink {
        /// Position of the certificate whose signature fails, 0 for the leaf.
        index: usize,
        /// Subject of that certificate.
        subject: String,
        /// Subject of the certificate expected to have signed it.
        issuer: String,
    },
    /// The last certificate of the chain is not signed by the given root; the text names both.
    #[error("the chain does not end at the given root: {0}")]
    NotUnderRoot(String),
    /// A certificate (or the root) is not yet valid, or has expired, at the time checked.
    #[error("certificate #{index} is outside its validity period")]
    OutsideValidity {
        /// Position of the certificate, 0 for the leaf, the root last.
        index: usize,
    },
}

/// The facts of one certificate that matter to a mesh.
#[derive(Debug, Clone, PartialEq)]
pub struct CertFacts {
    /// Subject distinguished name as text; empty for Istio workload certificates.
    pub subject: String,
    /// Issuer distinguished name as text.
    pub issuer: String,
    /// Serial number as hex bytes separated by `:`.
    pub serial_hex: String,
    /// The serial as a decimal number (how ztunnel's config dump writes it).
    pub serial_decimal: String,
    /// Start of the validity period.
    pub not_before: SystemTime,
    /// End of the validity period.
    pub not_after: SystemTime,
    /// URI SANs; a workload certificate has exactly one, its SPIFFE ID.
    pub uri_sans: Vec<String>,
    /// DNS name SANs, such as a serving certificate's host names.
    pub dns_sans: Vec<String>,
    /// IP address SANs, as text (IPv4 dotted or IPv6).
    pub ip_sans: Vec<String>,
    /// Whether basic constraints mark it as a CA.
    pub is_ca: bool,
    /// Whether extended key usage allows TLS server authentication.
    pub server_auth: bool,
    /// Whether extended key usage allows TLS client authentication.
    pub client_auth: bool,
    /// The raw subject public key (for matching against a key pair).
    pub public_key: Vec<u8>,
}

impl CertFacts {
    /// The length of the validity period, notBefore to notAfter (zero if reversed).
    pub fn lifetime(&self) -> Duration {
        self.not_after
            .duration_since(self.not_before)
            .unwrap_or_default()
    }

    /// The single SPIFFE ID, if the certificate carries exactly one URI SAN.
    pub fn spiffe_id(&self) -> Option<&str> {
        match self.uri_sans.as_slice() {
            [one] if one.starts_with("spiffe://") => Some(one),
            _ => None,
        }
    }
}

/// Every certificate in a PEM text, in order.
pub fn pem_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, InspectError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| InspectError::Pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(InspectError::NoCertificate);
    }
    Ok(certs)
}

fn parse(der: &[u8], index: usize) -> Result<X509Certificate<'_>, InspectError> {
    X509Certificate::from_der(der)
        .map(|(_, cert)| cert)
        .map_err(|e| InspectError::X509 {
            index,
            reason: e.to_string(),
        })
}

/// Reads the facts of one DER certificate.
pub fn read_cert_facts(der: &[u8]) -> Result<CertFacts, InspectError> {
    let cert = parse(der, 0)?;
    let mut facts = CertFacts {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        serial_hex: cert.raw_serial_as_string(),
        serial_decimal: cert.serial.to_string(),
        not_before: to_system_time(cert.validity().not_before.timestamp()),
        not_after: to_system_time(cert.validity().not_after.timestamp()),
        uri_sans: Vec::new(),
        dns_sans: Vec::new(),
        ip_sans: Vec::new(),
        is_ca: cert.is_ca(),
        server_auth: false,
        client_auth: false,
        public_key: cert.public_key().subject_public_key.data.to_vec(),
    };
    for name in san_names(cert.extensions().iter().map(|e| e.parsed_extension())) {
        match name {
            GeneralName::URI(u) => facts.uri_sans.push(u.to_string()),
            GeneralName::DNSName(d) => facts.dns_sans.push(d.to_string()),
            GeneralName::IPAddress(bytes) => facts.ip_sans.push(ip_to_string(bytes)),
            _ => {}
        }
    }
    for ext in cert.extensions() {
        if let ParsedExtension::ExtendedKeyUsage(eku) = ext.parsed_extension() {
            facts.server_auth = eku.server_auth;
            facts.client_auth = eku.client_auth;
        }
    }
    Ok(facts)
}

fn ip_to_string(bytes: &[u8]) -> String {
    match bytes.len() {
        4 => std::net::Ipv4Addr::from(<[u8; 4]>::try_from(bytes).expect("4 bytes")).to_string(),
        16 => std::net::Ipv6Addr::from(<[u8; 16]>::try_from(bytes).expect("16 bytes")).to_string(),
        _ => format!("{bytes:02x?}"),
    }
}

fn to_system_time(unix: i64) -> SystemTime {
    if unix >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(unix as u64)
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_secs(unix.unsigned_abs())
    }
}

/// Checks each link of `chain` (leaf first) and that it ends at `root`,
/// and that every certificate is valid at `now`.
pub fn verify_chain(
    chain: &[CertificateDer<'_>],
    root: &CertificateDer<'_>,
    now: SystemTime,
) -> Result<(), InspectError> {
    let root_cert = parse(root.as_ref(), chain.len())?;
    // Drop a copy of the root at the end of the chain, if present.
    let links: Vec<&CertificateDer<'_>> = chain
        .iter()
        .filter(|c| c.as_ref() != root.as_ref())
        .collect();
    let parsed = links
        .iter()
        .enumerate()
        .map(|(i, der)| parse(der.as_ref(), i))
        .collect::<Result<Vec<_>, _>>()?;
    let unix_now = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64;
    for (i, cert) in parsed.iter().chain(std::iter::once(&root_cert)).enumerate() {
        let v = cert.validity();
        if unix_now < v.not_before.timestamp() || unix_now > v.not_after.timestamp() {
            return Err(InspectError::OutsideValidity { index: i });
        }
    }
    for (i, cert) in parsed.iter().enumerate() {
        let issuer = parsed.get(i + 1).unwrap_or(&root_cert);
        if cert.verify_signature(Some(issuer.public_key())).is_err() {
            return Err(if i + 1 == parsed.len() {
                InspectError::NotUnderRoot(format!(
                    "{} is not signed by root {}",
                    cert.subject(),
                    root_cert.subject()
                ))
            } else {
                InspectError::BrokenLink {
                    index: i,
                    subject: cert.subject().to_string(),
                    issuer: issuer.subject().to_string(),
                }
            });
        }
    }
    Ok(())
}

/// Formats a duration as "11h 59m" or "3d 2h" for people.
pub fn human_duration(d: Duration) -> String {
    let secs = d.as_secs();
    let (days, hours, mins) = (secs / 86400, (secs % 86400) / 3600, (secs % 3600) / 60);
    if secs < 3600 {
        format!("{mins}m {}s", secs % 60)
    } else if secs < 72 * 3600 {
        format!("{}h {mins:02}m", secs / 3600)
    } else {
        format!("{days}d {hours}h")
    }
}

/// Formats a wall-clock time as RFC 3339 UTC.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|dt| {
            dt.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("@{secs}"))
}

fn relative(t: SystemTime, now: SystemTime) -> String {
    match t.duration_since(now) {
        Ok(ahead) => format!("in {}", human_duration(ahead)),
        Err(past) => format!("{} ago", human_duration(past.duration())),
    }
}

/// Explains a PEM chain (leaf first) in plain words; checks it against `root_pem` if given.
pub fn explain(
    chain_pem: &str,
    root_pem: Option<&str>,
    now: SystemTime,
) -> Result<String, InspectError> {
    let chain = pem_certs(chain_pem)?;
    let leaf = read_cert_facts(chain[0].as_ref())?;
    let mut out = String::new();
    let w = &mut out;
    match leaf.spiffe_id() {
        Some(id) => {
            let _ = writeln!(w, "This is a workload certificate (an X.509-SVID) for");
            let _ = writeln!(w, "  {id}");
            if let Ok(identity) = id.parse::<crate::identity::Identity>() {
                let _ = writeln!(
                    w,
                    "  trust domain {}, namespace {}, service account {}",
                    identity.trust_domain(),
                    identity.namespace(),
                    identity.service_account()
                );
                let _ = writeln!(
                    w,
                    "  Istio policies name it as principal \"{}\".",
                    identity.principal()
                );
            }
        }
        None if leaf.is_ca => {
            let _ = writeln!(w, "This is a CA certificate: it signs other certificates.");
        }
        None => {
            let _ = writeln!(
                w,
                "This certificate carries no single SPIFFE ID (URI SANs: {:?}).",
                leaf.uri_sans
            );
        }
    }
    if !leaf.dns_sans.is_empty() || !leaf.ip_sans.is_empty() {
        let _ = writeln!(
            w,
            "It also names hosts {:?} and IPs {:?}.",
            leaf.dns_sans, leaf.ip_sans
        );
    }
    let subject = if leaf.subject.is_empty() {
        "(empty, as Istio leaves it)"
    } else {
        &leaf.subject
    };
    let _ = writeln!(w, "Subject: {subject}");
    let _ = writeln!(w, "Issued by: {}", leaf.issuer);
    let _ = writeln!(w, "Serial: {}", leaf.serial_hex);
    let usage = match (leaf.server_auth, leaf.client_auth) {
        (true, true) => "both sides of mutual TLS (serverAuth + clientAuth)",
        (true, false) => "TLS servers only",
        (false, true) => "TLS clients only",
        (false, false) => "no TLS role named (no extended key usage)",
    };
    let _ = writeln!(w, "Usable for: {usage}");
    let _ = writeln!(
        w,
        "Valid from {} ({}) to {} ({}): a lifetime of {}.",
        rfc3339(leaf.not_before),
        relative(leaf.not_before, now),
        rfc3339(leaf.not_after),
        relative(leaf.not_after, now),
        human_duration(leaf.lifetime())
    );
    if leaf.spiffe_id().is_some() {
        let half = leaf.not_before + leaf.lifetime() / 2;
        let _ = writeln!(
            w,
            "A proxy renews it at half its lifetime: {} ({}).",
            rfc3339(half),
            relative(half, now)
        );
    }
    let _ = writeln!(
        w,
        "The chain holds {} certificate(s), leaf first.",
        chain.len()
    );
    if let Some(root_pem) = root_pem {
        let root = pem_certs(root_pem)?;
        match verify_chain(&chain, &root[0], now) {
            Ok(()) => {
                let _ = writeln!(
                    w,
                    "Chain check: VERIFIED — every link is signed by the next, and it ends at the given root."
                );
            }
            Err(e) => {
                let _ = writeln!(w, "Chain check: FAILED — {e}");
            }
        }
    }
    Ok(out)
}
