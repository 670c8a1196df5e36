//! Certificate revocation: the CA's revocation lists (CRLs, written by
//! `hbone-lab ca revoke`), consulted at every mesh handshake in both
//! directions, as ztunnel consults the list at `CRL_PATH`.
//!
//! The lists sit behind one shared handle rather than inside each rustls
//! config: configs are built once per certificate and cached, while a list
//! changes on its own schedule; the verifiers read the current lists at
//! each handshake, so a new edition applies to the next connection without
//! rebuilding anything. A list that does not parse leaves the previous one
//! in force (a broken file must not un-revoke a leaked key).
//!
//! Policy, and why: every certificate of the peer's chain is checked
//! against the lists whose issuer signed it; a certificate no list speaks
//! for is allowed (the mesh root issues no list); a list past its next
//! update still counts (a stale list still names what it revoked, and
//! refusing every peer because an edition is late would be an outage). A
//! list counts only once its signature verifies with a CA certificate of
//! the peer's own chain: another CA's list that happens to carry the same
//! issuer name revokes nothing here, and breaks nothing either. Each list
//! remembers the issuers it verified with, so that check runs once per
//! issuer, not per handshake.
//!
//! The issuing certificate must travel in the peer's chain, as it does in
//! Istio's plug-in layout (leaf, intermediate; the root stays home): a list
//! signed by the root itself would name certificates the root signed, and
//! the mesh root signs no workload.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, SignatureVerificationAlgorithm, UnixTime,
};
use rustls::{CertificateError, OtherError, RootCertStore};
use thiserror::Error;
use webpki::{
    CertRevocationList, EndEntityCert, ExpirationPolicy, KeyUsage, OwnedCertRevocationList,
    RevocationCheckDepth, RevocationOptionsBuilder, UnknownStatusPolicy,
};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList as X509Crl;

/// Why a revocation list could not be taken.
#[derive(Debug, Error)]
pub enum CrlError {
    /// The file could not be read.
    #[error("cannot read the revocation list {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The text holds no `X509 CRL` PEM block, or a malformed one.
    #[error("{origin}: no PEM X509 CRL ({reason})")]
    Pem {
        /// Where the text came from.
        origin: String,
        /// What the PEM reader said.
        reason: String,
    },
    /// A block does not parse as a CRL.
    #[error("{origin}: CRL #{index} does not parse: {source}")]
    Parse {
        /// Where the text came from.
        origin: String,
        /// Which block, from 0.
        index: usize,
        /// What webpki said.
        #[source]
        source: webpki::Error,
    },
}

/// One list, its DER (to verify its signature) and the issuers (DER) it
/// verified with so far.
#[derive(Debug)]
struct List {
    parsed: CertRevocationList<'static>,
    der: Vec<u8>,
    verified_by: Mutex<Vec<Vec<u8>>>,
}

impl List {
    /// Whether one of `chain`'s certificates, or of the mesh's `roots`,
    /// names this list's issuer and its key verifies the list's signature.
    /// The roots count too: a peer need not send the certificate its
    /// leaf's issuer is (ztunnel sends its leaf alone when the CA signs
    /// with the root).
    fn signed_by_one_of(
        &self,
        chain: &[CertificateDer<'_>],
        roots: &[CertificateDer<'static>],
    ) -> bool {
        let mut verified = self.verified_by.lock().unwrap_or_else(|e| e.into_inner());
        let candidates = chain.iter().chain(roots);
        if candidates
            .clone()
            .any(|c| verified.iter().any(|v| v.as_slice() == c.as_ref()))
        {
            return true;
        }
        let Ok((_, crl)) = X509Crl::from_der(&self.der) else {
            return false;
        };
        for cert in candidates {
            let Ok((_, issuer)) = X509Certificate::from_der(cert.as_ref()) else {
                continue;
            };
            if issuer.subject().as_raw() == crl.issuer().as_raw()
                && crl.verify_signature(issuer.public_key()).is_ok()
            {
                verified.push(cert.as_ref().to_vec());
                return true;
            }
        }
        false
    }
}

/// What a verifier needs to check a chain against the lists in force.
#[derive(Debug, Clone)]
pub(crate) struct RevocationCheck {
    /// The lists.
    pub(crate) revocations: Arc<Revocations>,
    /// The roots the chain was verified against.
    pub(crate) roots: Arc<RootCertStore>,
    /// The same roots as certificates, whose keys may have signed a list.
    pub(crate) root_certs: Arc<Vec<CertificateDer<'static>>>,
    /// The signature algorithms the verifier accepts.
    pub(crate) algorithms: &'static [&'static dyn SignatureVerificationAlgorithm],
}

impl RevocationCheck {
    /// [`Revocations::check`] of a client's (`client`) or a server's chain,
    /// as the TLS error a verifier returns.
    pub(crate) fn chain(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        client: bool,
    ) -> Result<(), rustls::Error> {
        self.revocations
            .check(end_entity, intermediates, self, now, client)
            .map_err(rustls::Error::InvalidCertificate)
    }
}

/// The revocation lists in force, shared by every verifier of a proxy.
#[derive(Debug, Default)]
pub struct Revocations {
    lists: RwLock<Arc<Vec<List>>>,
    /// Grows with each replacement, so a verdict on a chain can be kept
    /// until the lists change ([`PeerChain`]).
    generation: AtomicU64,
    /// Told the generation after each replacement: an open connection
    /// waits on it to judge its peer again ([`Revocations::editions`]).
    editions: tokio::sync::watch::Sender<u64>,
}

/// A peer's certificate chain as it presented it (leaf first), kept for
/// as long as its connection lives, so that a new edition of the lists
/// can judge connections already open; the last verdict is kept with the
/// generation of the lists it was made with.
#[derive(Debug)]
pub struct PeerChain {
    certs: Vec<CertificateDer<'static>>,
    /// The peer was the TLS client (else the server): the key usage checked.
    client: bool,
    verdict: Mutex<Option<(u64, bool)>>,
}

impl PeerChain {
    /// A client's chain `certs`, leaf first (inbound).
    pub fn client(certs: Vec<CertificateDer<'static>>) -> Self {
        PeerChain {
            certs,
            client: true,
            verdict: Mutex::new(None),
        }
    }

    /// A server's chain `certs`, leaf first (outbound).
    pub fn server(certs: Vec<CertificateDer<'static>>) -> Self {
        PeerChain {
            client: false,
            ..PeerChain::client(certs)
        }
    }

    /// Whether the lists `check` holds now revoke a certificate of this
    /// chain; computed once per edition of the lists.
    pub(crate) fn revoked(&self, check: &RevocationCheck) -> bool {
        let generation = check.revocations.generation.load(Ordering::Acquire);
        let mut verdict = self.verdict.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((seen, revoked)) = *verdict
            && seen == generation
        {
            return revoked;
        }
        let Some((leaf, intermediates)) = self.certs.split_first() else {
            return false;
        };
        let revoked = check
            .chain(leaf, intermediates, UnixTime::now(), self.client)
            .is_err();
        *verdict = Some((generation, revoked));
        revoked
    }
}

impl Revocations {
    /// No lists: nothing is revoked.
    pub fn none() -> Arc<Self> {
        Arc::new(Revocations::default())
    }

    /// The lists in the PEM file at `path`.
    pub fn load(path: &Path) -> Result<Arc<Self>, CrlError> {
        let revocations = Revocations::none();
        revocations.reload(path)?;
        Ok(revocations)
    }

    /// Replaces the lists with those in `path`; on any error the lists in
    /// force stay. Returns how many lists are now in force.
    pub fn reload(&self, path: &Path) -> Result<usize, CrlError> {
        let pem = std::fs::read(path).map_err(|source| CrlError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        self.replace(&pem, &path.display().to_string())
    }

    /// Replaces the lists with those in the PEM text `pem` (from `origin`,
    /// for errors); on any error the lists in force stay.
    pub fn replace(&self, pem: &[u8], origin: &str) -> Result<usize, CrlError> {
        let ders = CertificateRevocationListDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| CrlError::Pem {
                origin: origin.to_string(),
                reason: e.to_string(),
            })?;
        if ders.is_empty() {
            return Err(CrlError::Pem {
                origin: origin.to_string(),
                reason: "no block found".into(),
            });
        }
        let lists = ders
            .iter()
            .enumerate()
            .map(|(index, der)| {
                OwnedCertRevocationList::from_der(der.as_ref())
                    .map(|owned| List {
                        parsed: CertRevocationList::from(owned),
                        der: der.as_ref().to_vec(),
                        verified_by: Mutex::new(Vec::new()),
                    })
                    .map_err(|source| CrlError::Parse {
                        origin: origin.to_string(),
                        index,
                        source,
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let count = lists.len();
        *self.lists.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(lists);
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        self.editions.send_replace(generation);
        Ok(count)
    }

    /// Changes each time new lists take force: a connection that must end
    /// when its peer is revoked waits on it.
    pub fn editions(&self) -> tokio::sync::watch::Receiver<u64> {
        self.editions.subscribe()
    }

    /// How many lists are in force.
    pub fn len(&self) -> usize {
        self.current().len()
    }

    /// Whether no list is in force.
    pub fn is_empty(&self) -> bool {
        self.current().is_empty()
    }

    fn current(&self) -> Arc<Vec<List>> {
        self.lists.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Checks the chain `end_entity` + `intermediates`, already verified
    /// against `trust`'s roots, against the lists: `CertificateError::Revoked`
    /// when one of them revokes a certificate of the chain.
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        trust: &RevocationCheck,
        now: UnixTime,
        client: bool,
    ) -> Result<(), CertificateError> {
        let lists = self.current();
        let refs: Vec<&CertRevocationList<'_>> = lists
            .iter()
            .filter(|list| list.signed_by_one_of(intermediates, &trust.root_certs))
            .map(|list| &list.parsed)
            .collect();
        if refs.is_empty() {
            return Ok(());
        }
        let options = RevocationOptionsBuilder::new(&refs)
            .expect("a non-empty list of lists")
            .with_depth(RevocationCheckDepth::Chain)
            .with_status_policy(UnknownStatusPolicy::Allow)
            .with_expiration_policy(ExpirationPolicy::Ignore)
            .build();
        let cert =
            EndEntityCert::try_from(end_entity).map_err(|_| CertificateError::BadEncoding)?;
        let usage = if client {
            KeyUsage::client_auth()
        } else {
            KeyUsage::server_auth()
        };
        match cert.verify_for_usage(
            trust.algorithms,
            &trust.roots.roots,
            intermediates,
            now,
            usage,
            Some(options),
            None,
        ) {
            Ok(_) => Ok(()),
            Err(webpki::Error::CertRevoked) => Err(CertificateError::Revoked),
            Err(other) => Err(CertificateError::Other(OtherError(Arc::new(other)))),
        }
    }
}
