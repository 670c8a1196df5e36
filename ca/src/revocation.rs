//! Revoking certificates: a certificate revocation list (CRL, RFC 5280)
//! signed by the CA that issued the certificates, as ztunnel reads one from
//! `CRL_PATH`. A certificate lives 24 hours, but a workload whose key leaked
//! or that was withdrawn should not keep talking for the rest of that day:
//! its serial goes on the list, and every proxy given the list refuses it.
//!
//! A list is signed by the issuing certificate (the intermediate of the
//! plug-in CA files), which carries `cRLSign`; it names its issuer, a
//! sequence number that grows with each edition, when it was made and
//! when the next one is due. Adding to a list reads the current edition
//! back, checks that this CA signed it, and signs the next with one more
//! entry, so revocations accumulate and nothing is lost.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use rcgen::{
    CertificateRevocationListParams, KeyIdMethod, RevocationReason, RevokedCertParams, SerialNumber,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};
use thiserror::Error;
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;

use crate::authority::SigningAuthority;

/// Why a revocation list could not be read, checked or signed.
#[derive(Debug, Error)]
pub enum RevocationError {
    /// The text holds no `X509 CRL` PEM block, or a malformed one.
    #[error("not a PEM X509 CRL: {0}")]
    Pem(String),
    /// The DER inside does not parse as a CRL.
    #[error("not a valid CRL: {0}")]
    Der(String),
    /// The list was not signed by the certificate given as its issuer.
    #[error("the CRL is not signed by {issuer}: {reason}")]
    NotSignedBy {
        /// The expected issuer's subject.
        issuer: String,
        /// What the check said.
        reason: String,
    },
    /// The issuer certificate given does not parse.
    #[error("the issuer certificate: {0}")]
    Issuer(String),
    /// A reason name that RFC 5280 does not define.
    #[error("unknown revocation reason {0:?} (one of: {names})", names = REASONS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", "))]
    UnknownReason(String),
    /// A serial that is not hexadecimal.
    #[error("serial {0:?} is not hexadecimal (as `ca inspect` prints it, colons allowed)")]
    BadSerial(String),
    /// rcgen refused to sign the list.
    #[error("signing the CRL: {0}")]
    Sign(#[from] rcgen::Error),
    /// The list's file could not be read or written.
    #[error("{path}: {source}")]
    File {
        /// The list's file.
        path: std::path::PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file holds a list, and not one this CA signed (or not a list).
    #[error("{path} (the list to extend): {source}")]
    Existing {
        /// The list's file.
        path: std::path::PathBuf,
        /// Why it was not taken.
        #[source]
        source: Box<RevocationError>,
    },
}

/// The reasons RFC 5280 defines, by the names the CLI takes.
pub const REASONS: [(&str, RevocationReason); 8] = [
    ("unspecified", RevocationReason::Unspecified),
    ("key-compromise", RevocationReason::KeyCompromise),
    ("ca-compromise", RevocationReason::CaCompromise),
    ("affiliation-changed", RevocationReason::AffiliationChanged),
    ("superseded", RevocationReason::Superseded),
    (
        "cessation-of-operation",
        RevocationReason::CessationOfOperation,
    ),
    ("certificate-hold", RevocationReason::CertificateHold),
    ("privilege-withdrawn", RevocationReason::PrivilegeWithdrawn),
];

/// The reason named `name` (`key-compromise`, …).
pub fn reason_named(name: &str) -> Result<RevocationReason, RevocationError> {
    REASONS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, r)| *r)
        .ok_or_else(|| RevocationError::UnknownReason(name.to_string()))
}

/// The CLI name of `reason`.
pub fn reason_name(reason: RevocationReason) -> &'static str {
    REASONS
        .iter()
        .find(|(_, r)| *r == reason)
        .map_or("unspecified", |(n, _)| *n)
}

/// A serial written in hexadecimal, with or without colons, as big-endian
/// bytes without leading zeros.
pub fn parse_serial(text: &str) -> Result<Vec<u8>, RevocationError> {
    let digits: String = text.chars().filter(|c| *c != ':').collect();
    let bad = || RevocationError::BadSerial(text.to_string());
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let padded = if digits.len() % 2 == 1 {
        format!("0{digits}")
    } else {
        digits
    };
    let bytes: Vec<u8> = (0..padded.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&padded[i..i + 2], 16).map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    Ok(trimmed(&bytes))
}

/// A serial written in decimal, as ztunnel's config dump prints it, as
/// big-endian bytes without leading zeros.
pub fn parse_decimal_serial(text: &str) -> Result<Vec<u8>, RevocationError> {
    if text.is_empty() || !text.chars().all(|c| c.is_ascii_digit()) {
        return Err(RevocationError::BadSerial(text.to_string()));
    }
    // Big-endian bytes, times ten plus each digit in turn.
    let mut bytes: Vec<u8> = vec![0];
    for digit in text.bytes().map(|b| b - b'0') {
        let mut carry = u16::from(digit);
        for byte in bytes.iter_mut().rev() {
            let v = u16::from(*byte) * 10 + carry;
            *byte = (v & 0xff) as u8;
            carry = v >> 8;
        }
        while carry > 0 {
            bytes.insert(0, (carry & 0xff) as u8);
            carry >>= 8;
        }
    }
    Ok(trimmed(&bytes))
}

/// `bytes` without leading zero bytes (at least one byte kept).
fn trimmed(bytes: &[u8]) -> Vec<u8> {
    let first = bytes
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(bytes.len().saturating_sub(1));
    bytes[first..].to_vec()
}

/// A serial as `ca inspect` prints it: hex pairs joined by colons.
pub fn serial_text(serial: &[u8]) -> String {
    serial
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// One revoked certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    /// Its serial, big-endian, without leading zeros.
    pub serial: Vec<u8>,
    /// When the CA revoked it.
    pub at: SystemTime,
    /// Why, when said.
    pub reason: Option<RevocationReason>,
}

/// One edition of a CA's revocation list.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RevocationList {
    /// Its sequence number (RFC 5280's CRL number); each edition has a larger one.
    pub number: u64,
    /// When it was made.
    pub this_update: Option<SystemTime>,
    /// When the next edition is due; a proxy may treat a list past it as stale.
    pub next_update: Option<SystemTime>,
    /// The certificates it revokes.
    pub revoked: Vec<Revoked>,
}

impl RevocationList {
    /// Reads a PEM `X509 CRL` and checks that `issuer_pem` (the issuing
    /// certificate) signed it.
    pub fn read(crl_pem: &str, issuer_pem: &str) -> Result<RevocationList, RevocationError> {
        let der = CertificateRevocationListDer::from_pem_slice(crl_pem.as_bytes())
            .map_err(|e| RevocationError::Pem(e.to_string()))?;
        let (_, crl) = CertificateRevocationList::from_der(der.as_ref())
            .map_err(|e| RevocationError::Der(e.to_string()))?;
        let issuer_der = CertificateDer::from_pem_slice(issuer_pem.as_bytes())
            .map_err(|e| RevocationError::Issuer(e.to_string()))?;
        let (_, issuer) = X509Certificate::from_der(issuer_der.as_ref())
            .map_err(|e| RevocationError::Issuer(e.to_string()))?;
        crl.verify_signature(issuer.public_key())
            .map_err(|e| RevocationError::NotSignedBy {
                issuer: issuer.subject().to_string(),
                reason: e.to_string(),
            })?;
        Ok(list_of(&crl))
    }

    /// Adds `serial` (revoked now, for `reason`) unless it is already on
    /// the list; says whether it was added.
    pub fn revoke(&mut self, serial: &[u8], reason: Option<RevocationReason>) -> bool {
        let serial = trimmed(serial);
        if self.revoked.iter().any(|r| r.serial == serial) {
            return false;
        }
        self.revoked.push(Revoked {
            serial,
            at: SystemTime::now(),
            reason,
        });
        true
    }

    /// Whether `serial` is on the list.
    pub fn contains(&self, serial: &[u8]) -> bool {
        let serial = trimmed(serial);
        self.revoked.iter().any(|r| r.serial == serial)
    }
}

fn list_of(crl: &CertificateRevocationList<'_>) -> RevocationList {
    let system = |t: x509_parser::time::ASN1Time| SystemTime::from(t.to_datetime());
    RevocationList {
        number: crl
            .crl_number()
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(0),
        this_update: Some(system(crl.last_update())),
        next_update: crl.next_update().map(system),
        revoked: crl
            .iter_revoked_certificates()
            .map(|r| Revoked {
                serial: trimmed(r.raw_serial()),
                at: system(r.revocation_date),
                reason: r.reason_code().and_then(|(_, code)| {
                    REASONS
                        .iter()
                        .map(|(_, reason)| *reason)
                        .find(|reason| *reason as u8 == code.0)
                }),
            })
            .collect(),
    }
}

impl SigningAuthority {
    /// Signs the next edition of `list` (its number plus one), valid for
    /// `validity` from now; returns it as PEM and the edition as signed.
    pub fn sign_revocation_list(
        &self,
        list: &RevocationList,
        validity: Duration,
    ) -> Result<(String, RevocationList), RevocationError> {
        let now = SystemTime::now();
        let params = CertificateRevocationListParams {
            this_update: OffsetDateTime::from(now),
            next_update: OffsetDateTime::from(now + validity),
            crl_number: SerialNumber::from(list.number + 1),
            issuing_distribution_point: None,
            revoked_certs: list
                .revoked
                .iter()
                .map(|r| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&r.serial),
                    revocation_time: OffsetDateTime::from(r.at),
                    reason_code: r.reason,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(self.issuer())?;
        let signed = RevocationList {
            number: list.number + 1,
            this_update: Some(now),
            next_update: Some(now + validity),
            revoked: list.revoked.clone(),
        };
        Ok((crl.pem()?, signed))
    }
}

/// Writes the next edition of the list in the PEM file at `path`: reads
/// the current one (none yet: an empty list), checks that `authority`
/// signed it, lets `change` add to it, signs it valid for `validity` and
/// replaces the file whole (a reader never sees half a list). Used by `ca
/// revoke` (one edition with new entries) and `ca serve --crl` (a fresh
/// edition before each next update, so proxies never hold a stale list).
pub fn next_edition(
    authority: &SigningAuthority,
    path: &std::path::Path,
    validity: Duration,
    change: impl FnOnce(&mut RevocationList),
) -> Result<RevocationList, RevocationError> {
    let file_error = |source| RevocationError::File {
        path: path.to_path_buf(),
        source,
    };
    let mut list = match std::fs::read_to_string(path) {
        Ok(pem) => RevocationList::read(&pem, authority.issuer_pem()).map_err(|source| {
            RevocationError::Existing {
                path: path.to_path_buf(),
                source: Box::new(source),
            }
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => RevocationList::default(),
        Err(e) => return Err(file_error(e)),
    };
    change(&mut list);
    let (pem, signed) = authority.sign_revocation_list(&list, validity)?;
    let partial = path.with_extension("pem.partial");
    std::fs::write(&partial, pem).map_err(file_error)?;
    std::fs::rename(&partial, path).map_err(file_error)?;
    Ok(signed)
}

/// `ca inspect` for a CRL: who signed it, which edition, whether it is
/// due for renewal, and each revoked serial with its date and reason.
pub fn explain_list(
    crl_pem: &str,
    issuer_pem: Option<&str>,
    now: SystemTime,
) -> Result<String, RevocationError> {
    let der = CertificateRevocationListDer::from_pem_slice(crl_pem.as_bytes())
        .map_err(|e| RevocationError::Pem(e.to_string()))?;
    let (_, crl) = CertificateRevocationList::from_der(der.as_ref())
        .map_err(|e| RevocationError::Der(e.to_string()))?;
    let list = list_of(&crl);
    let mut w = String::new();
    let _ = writeln!(w, "Certificate revocation list #{}", list.number);
    let _ = writeln!(w, "Signed by: {}", crl.issuer());
    if let Some(issuer) = issuer_pem {
        match RevocationList::read(crl_pem, issuer) {
            Ok(_) => {
                let _ = writeln!(w, "Signature: verified with the given issuer certificate");
            }
            Err(e) => {
                let _ = writeln!(w, "Signature: NOT VALID — {e}");
            }
        }
    }
    let when = |t: SystemTime| humantime::format_rfc3339_seconds(t).to_string();
    if let Some(made) = list.this_update {
        let _ = writeln!(w, "Made: {}", when(made));
    }
    match list.next_update {
        Some(due) if due <= now => {
            let _ = writeln!(
                w,
                "Next edition due: {} — past: this list is stale; proxies may refuse to rely on it",
                when(due)
            );
        }
        Some(due) => {
            let _ = writeln!(w, "Next edition due: {}", when(due));
        }
        None => {
            let _ = writeln!(w, "Next edition due: not said");
        }
    }
    if list.revoked.is_empty() {
        let _ = writeln!(w, "Revokes nothing.");
    } else {
        let _ = writeln!(w, "Revokes {} certificate(s):", list.revoked.len());
        for r in &list.revoked {
            let _ = writeln!(
                w,
                "  serial {}  since {}  ({})",
                serial_text(&r.serial),
                when(r.at),
                r.reason.map_or("no reason given", reason_name)
            );
        }
    }
    let _ = writeln!(
        w,
        "A proxy given this list (hbone-lab --crl, ztunnel CRL_PATH) refuses these certificates \
         on new connections and closes connections that use them."
    );
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authority::AuthorityConfig;
    use crate::identity::Identity;

    #[test]
    fn serials_are_read_as_inspect_prints_them() {
        assert_eq!(parse_serial("0a:ff").unwrap(), vec![0x0a, 0xff]);
        assert_eq!(parse_serial("00aff").unwrap(), vec![0x0a, 0xff]);
        assert_eq!(serial_text(&[0x0a, 0xff]), "0a:ff");
        assert!(matches!(
            parse_serial("xyz"),
            Err(RevocationError::BadSerial(_))
        ));
        assert!(parse_serial("").is_err());
        assert!(matches!(
            reason_named("lost"),
            Err(RevocationError::UnknownReason(_))
        ));
        assert_eq!(
            reason_name(reason_named("key-compromise").unwrap()),
            "key-compromise"
        );
    }

    #[test]
    fn decimal_serials_are_read_as_ztunnel_prints_them() {
        assert_eq!(parse_decimal_serial("2815").unwrap(), vec![0x0a, 0xff]);
        assert_eq!(parse_decimal_serial("0").unwrap(), vec![0]);
        // 2^128 + 1: past any machine integer.
        let big = parse_decimal_serial("340282366920938463463374607431768211457").unwrap();
        assert_eq!(big.len(), 17);
        assert_eq!((big[0], big[16]), (1, 1));
        assert!(big[1..16].iter().all(|b| *b == 0));
        assert!(parse_decimal_serial("0a").is_err());
        assert!(parse_decimal_serial("").is_err());
    }

    /// Editions accumulate: the second holds the first's entries and one
    /// more, with a larger number; a list read back is checked against its
    /// issuer, and another CA's list is refused.
    #[test]
    fn a_list_is_signed_read_back_and_extended() {
        let ca = SigningAuthority::generate(AuthorityConfig::new("cluster.local")).unwrap();
        let id: Identity = "spiffe://cluster.local/ns/demo/sa/a".parse().unwrap();
        let (_, first) = ca.issue_with_new_key(&id, None).unwrap();
        let (_, second) = ca.issue_with_new_key(&id, None).unwrap();
        let issuer = ca.issuer_pem();

        let mut list = RevocationList::default();
        assert!(list.revoke(&first.serial, Some(RevocationReason::KeyCompromise)));
        assert!(!list.revoke(&first.serial, None), "once only");
        let (pem, signed) = ca
            .sign_revocation_list(&list, Duration::from_secs(3600))
            .unwrap();
        assert!(pem.contains("BEGIN X509 CRL"), "{pem}");
        let read = RevocationList::read(&pem, issuer).unwrap();
        assert_eq!(read.number, 1);
        assert_eq!(read.revoked.len(), 1);
        assert_eq!(read.revoked[0].serial, trimmed(&first.serial));
        assert_eq!(
            read.revoked[0].reason,
            Some(RevocationReason::KeyCompromise)
        );
        assert_eq!(signed.number, 1);

        let mut next = read;
        next.revoke(&second.serial, None);
        let (pem, _) = ca
            .sign_revocation_list(&next, Duration::from_secs(3600))
            .unwrap();
        let read = RevocationList::read(&pem, issuer).unwrap();
        assert_eq!(read.number, 2);
        assert!(read.contains(&first.serial) && read.contains(&second.serial));

        let other = SigningAuthority::generate(AuthorityConfig::new("cluster.local")).unwrap();
        assert!(matches!(
            RevocationList::read(&pem, other.issuer_pem()),
            Err(RevocationError::NotSignedBy { .. })
        ));
        let story = explain_list(&pem, Some(issuer), SystemTime::now()).unwrap();
        assert!(story.contains("#2"), "{story}");
        assert!(story.contains("verified"), "{story}");
        assert!(story.contains("key-compromise"), "{story}");
        assert!(
            story.contains(&serial_text(&trimmed(&second.serial))),
            "{story}"
        );
        let stale =
            explain_list(&pem, None, SystemTime::now() + Duration::from_secs(7200)).unwrap();
        assert!(stale.contains("stale"), "{stale}");
    }
}
