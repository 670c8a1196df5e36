//! The certificate manager: one SVID per workload identity, always fresh.
//!
//! For each identity it generates a key pair in memory (the key never touches
//! disk), sends a CSR to the CA, and publishes the certificate on a watch
//! channel. It renews at half the certificate's lifetime — 12 h of a 24 h
//! certificate, counted from when it arrived — plus a little jitter so that
//! a fleet of proxies started together does not renew in one burst. When the CA is unreachable, the
//! current certificate stays in use while it is valid, and the manager retries
//! with exponential backoff (0.5–1 s, doubling, ±20 %, up to 150 s) — but
//! never waiting more than a quarter of the time the current certificate has
//! left, so a CA that returns before expiry is found in time (a 30 s
//! certificate renewing at 15 s survives a 10 s CA outage).
//!
//! Deadlines are computed once from the certificate's wall-clock validity and
//! then kept on tokio's clock, so the 12 h / 24 h schedule can be tested on a
//! paused clock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use rcgen::{CertificateParams, KeyPair, SanType};
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use thiserror::Error;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{Instrument, info, warn};

use crate::authority::AuthorityError;
use crate::authority::SigningAuthority;
use crate::client::{CaClient, ClientError};
use crate::identity::Identity;
use crate::inspect::{CertFacts, InspectError, read_cert_facts};

/// Why a certificate could not be obtained. `Clone`, because every waiter
/// on an identity sees the same failure, so the typed causes are shared.
#[derive(Debug, Error, Clone)]
pub enum FetchError {
    /// The CA over gRPC refused, or could not be reached.
    #[error("CA request failed: {0}")]
    Ca(#[source] Arc<ClientError>),
    /// The in-process authority refused.
    #[error("the CA refused: {0}")]
    Authority(#[source] Arc<AuthorityError>),
    /// Another [`CertificateSource`] failed (see [`FetchError::source_failed`]).
    #[error("the certificate source failed: {0}")]
    Source(#[source] Arc<dyn std::error::Error + Send + Sync>),
    /// Generating the key pair or encoding the CSR failed.
    #[error("cannot build the CSR: {0}")]
    Csr(#[source] Arc<rcgen::Error>),
    /// The PEM answer could not be read as certificates.
    #[error("the CA's answer is unusable: {0}")]
    BadAnswer(#[source] Arc<InspectError>),
    /// The answer held no certificate at all.
    #[error("the CA answered with an empty chain")]
    EmptyChain,
    /// The leaf's URI SANs are not exactly the requested identity.
    #[error("the CA's certificate names {found:?}, not {expected}")]
    WrongIdentity {
        /// The identity that was requested.
        expected: Identity,
        /// The URI SANs the leaf actually carries.
        found: Vec<String>,
    },
    /// The leaf's public key is not the one generated for this request.
    #[error("the CA's certificate is not for the key our CSR carried")]
    WrongKey,
    /// [`CertificateManager::get`] before any success; `last` is why.
    #[error("none for {identity} yet; the last attempt: {last}")]
    Unavailable {
        /// The identity that was asked for.
        identity: Identity,
        /// The most recent failure of the renewal task.
        #[source]
        last: Arc<FetchError>,
    },
    /// The identity's renewal task has ended, so no certificate will come; holds the identity.
    #[error("none for {0}: the certificate manager has stopped")]
    Stopped(Identity),
}

impl FetchError {
    /// For a [`CertificateSource`] of one's own: its error, kept as the cause.
    pub fn source_failed(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        FetchError::Source(Arc::new(e))
    }
}

/// Where certificates come from: a remote CA over gRPC, or an authority in
/// this process (the standalone lab runs its CA in-process too).
#[async_trait]
pub trait CertificateSource: Send + Sync + 'static {
    /// Asks for a certificate for `identity` from `csr_pem`, valid for `ttl`; returns the PEM chain, leaf first.
    async fn sign(
        &self,
        identity: &Identity,
        csr_pem: &str,
        ttl: Duration,
    ) -> Result<Vec<String>, FetchError>;
}

#[async_trait]
impl CertificateSource for CaClient {
    async fn sign(
        &self,
        identity: &Identity,
        csr_pem: &str,
        ttl: Duration,
    ) -> Result<Vec<String>, FetchError> {
        self.create_certificate(csr_pem, ttl, Some(identity))
            .await
            .map_err(|e| FetchError::Ca(Arc::new(e)))
    }
}

#[async_trait]
impl CertificateSource for SigningAuthority {
    async fn sign(
        &self,
        identity: &Identity,
        csr_pem: &str,
        ttl: Duration,
    ) -> Result<Vec<String>, FetchError> {
        self.sign_csr(csr_pem, identity, Some(ttl))
            .map(|issued| issued.chain_pem)
            .map_err(|e| FetchError::Authority(Arc::new(e)))
    }
}

/// A workload's certificate, its chain and its private key.
pub struct Svid {
    /// The identity the certificate names.
    pub identity: Identity,
    /// Leaf first, root last.
    pub chain: Vec<CertificateDer<'static>>,
    /// The same chain in PEM, as the source returned it.
    pub chain_pem: Vec<String>,
    /// The private key matching the leaf, as PKCS#8 DER; it exists only in memory.
    pub key: PrivatePkcs8KeyDer<'static>,
    /// What the leaf certificate says: serial, validity, SANs.
    pub leaf: CertFacts,
    /// When the manager will (or did) ask for the next one.
    pub refresh_at: SystemTime,
}

impl std::fmt::Debug for Svid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Svid")
            .field("identity", &self.identity.to_string())
            .field("serial", &self.leaf.serial_hex)
            .field("not_after", &self.leaf.not_after)
            .finish_non_exhaustive()
    }
}

impl Svid {
    /// The last certificate of the chain: the mesh root.
    pub fn root(&self) -> &CertificateDer<'static> {
        self.chain.last().expect("a chain holds at least the leaf")
    }
}

/// What subscribers see for one identity.
#[derive(Debug, Clone, Default)]
pub struct CertState {
    /// The certificate in use; `None` before the first success, or once it expired while renewal kept failing.
    pub current: Option<Arc<Svid>>,
    /// Why the latest attempt failed; cleared by the next success.
    pub last_error: Option<FetchError>,
    /// How many certificates have been obtained (1 after the first, 2 after the first renewal …).
    pub generation: u64,
}

/// Renewal timing knobs.
#[derive(Debug, Clone)]
pub struct RenewalPolicy {
    /// Lifetime asked of the CA (`SECRET_TTL` in ztunnel).
    pub ttl: Duration,
    /// Upper bound of the random delay added after the half-life, as a fraction of the lifetime.
    pub jitter_fraction: f64,
    /// Base retry delay (500 ms by default): the first retry waits 1–2× this, ±20 %, doubling with each further failure.
    pub initial_backoff: Duration,
    /// Ceiling on the delay between retries (150 s by default).
    pub max_backoff: Duration,
}

impl Default for RenewalPolicy {
    fn default() -> Self {
        RenewalPolicy {
            ttl: Duration::from_secs(24 * 3600),
            jitter_fraction: 0.01,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(150),
        }
    }
}

impl RenewalPolicy {
    /// Half of the usable lifetime after `received` (notBefore may be backdated
    /// for clock skew; that part is not counted), plus up to `jitter_fraction`
    /// of the lifetime. For a 24 h certificate: 12 h after it arrived.
    pub fn refresh_at(
        &self,
        not_before: SystemTime,
        not_after: SystemTime,
        received: SystemTime,
    ) -> SystemTime {
        let start = not_before.max(received);
        let usable = not_after.duration_since(start).unwrap_or_default();
        let jitter = usable.mul_f64(self.jitter_fraction * rand::random::<f64>());
        start + usable / 2 + jitter
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let base = self.initial_backoff.mul_f64(1.0 + rand::random::<f64>()); // 0.5–1 s
        let grown = base.saturating_mul(1u32 << attempt.min(16));
        let jittered = grown.mul_f64(0.8 + 0.4 * rand::random::<f64>());
        jittered.min(self.max_backoff)
    }

    /// How long to wait after failed attempt number `attempt` (from 0),
    /// given how long the current certificate has `left` (none: no valid
    /// certificate): the backoff, capped at a quarter of what is left.
    pub fn retry_in(&self, attempt: u32, left: Option<Duration>) -> Duration {
        let backoff = self.backoff(attempt);
        match left {
            Some(left) => backoff.min((left / 4).max(self.initial_backoff)),
            None => backoff,
        }
    }
}

/// Keeps one SVID per identity fresh.
pub struct CertificateManager {
    source: Arc<dyn CertificateSource>,
    policy: RenewalPolicy,
    entries: Mutex<HashMap<Identity, Entry>>,
}

struct Entry {
    state: watch::Receiver<CertState>,
    /// Wakes the renewal task early (an operator's "rotate now").
    renew_now: Arc<tokio::sync::Notify>,
}

impl CertificateManager {
    /// A manager that obtains certificates from `source` on `policy`'s schedule; nothing is fetched until an identity is first asked for.
    pub fn new(source: Arc<dyn CertificateSource>, policy: RenewalPolicy) -> Self {
        CertificateManager {
            source,
            policy,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// A channel that always holds the identity's latest state; starts the
    /// identity's renewal task on first call.
    pub fn watch(&self, identity: &Identity) -> watch::Receiver<CertState> {
        let mut entries = self.entries.lock().expect("manager lock");
        if let Some(entry) = entries.get(identity) {
            return entry.state.clone();
        }
        let (tx, rx) = watch::channel(CertState::default());
        let renew_now = Arc::new(tokio::sync::Notify::new());
        // The identity is the task's span, not a field of each line; a root,
        // since the task outlives whichever connection asked first.
        let span = tracing::info_span!(parent: None, "svid", %identity);
        let renewal = renew_forever(
            self.source.clone(),
            self.policy.clone(),
            identity.clone(),
            tx,
            renew_now.clone(),
        );
        tokio::spawn(renewal.instrument(span));
        entries.insert(
            identity.clone(),
            Entry {
                state: rx.clone(),
                renew_now,
            },
        );
        rx
    }

    /// Asks for a new certificate now instead of at half-life (rotation on
    /// demand). Connections holding the current one keep it.
    pub fn renew_now(&self, identity: &Identity) {
        let _ = self.watch(identity);
        if let Some(entry) = self.entries.lock().expect("manager lock").get(identity) {
            entry.renew_now.notify_one();
        }
    }

    /// The current certificate, waiting for the first one if needed. Fails if
    /// the first attempt failed (the task keeps retrying in the background).
    pub async fn get(&self, identity: &Identity) -> Result<Arc<Svid>, FetchError> {
        let mut rx = self.watch(identity);
        loop {
            {
                let state = rx.borrow_and_update();
                if let Some(svid) = &state.current {
                    return Ok(svid.clone());
                }
                if let Some(err) = &state.last_error {
                    return Err(FetchError::Unavailable {
                        identity: identity.clone(),
                        last: Arc::new(err.clone()),
                    });
                }
            }
            if rx.changed().await.is_err() {
                return Err(FetchError::Stopped(identity.clone()));
            }
        }
    }

    /// Identities currently managed, with their state (for admin endpoints).
    pub fn snapshot(&self) -> Vec<(Identity, CertState)> {
        let entries = self.entries.lock().expect("manager lock");
        let mut all: Vec<_> = entries
            .iter()
            .map(|(id, entry)| (id.clone(), entry.state.borrow().clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

/// Builds a fresh key and a CSR naming `identity`, the way ztunnel does:
/// ECDSA P-256, empty subject, one URI SAN.
pub fn new_key_and_csr(identity: &Identity) -> Result<(KeyPair, String), FetchError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| FetchError::Csr(Arc::new(e)))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    let uri = identity
        .uri()
        .as_str()
        .try_into()
        .map_err(|e: rcgen::Error| FetchError::Csr(Arc::new(e)))?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    let csr = params
        .serialize_request(&key)
        .and_then(|csr| csr.pem())
        .map_err(|e| FetchError::Csr(Arc::new(e)))?;
    Ok((key, csr))
}

/// Turns the CA's PEM answer into an [`Svid`], checking it names the identity.
pub fn assemble_svid(
    identity: &Identity,
    key: &KeyPair,
    chain_pem: Vec<String>,
    policy: &RenewalPolicy,
) -> Result<Svid, FetchError> {
    let bad = |e: InspectError| FetchError::BadAnswer(Arc::new(e));
    let mut chain = Vec::new();
    for pem in &chain_pem {
        chain.extend(crate::inspect::pem_certs(pem).map_err(bad)?);
    }
    let leaf_der = chain.first().ok_or(FetchError::EmptyChain)?;
    let leaf = read_cert_facts(leaf_der.as_ref()).map_err(bad)?;
    if leaf.uri_sans != [identity.uri()] {
        return Err(FetchError::WrongIdentity {
            expected: identity.clone(),
            found: leaf.uri_sans.clone(),
        });
    }
    if leaf.public_key != key.public_key_raw() {
        return Err(FetchError::WrongKey);
    }
    let refresh_at = policy.refresh_at(leaf.not_before, leaf.not_after, SystemTime::now());
    Ok(Svid {
        identity: identity.clone(),
        chain,
        chain_pem,
        key: PrivatePkcs8KeyDer::from(key.serialize_der()),
        leaf,
        refresh_at,
    })
}

async fn renew_forever(
    source: Arc<dyn CertificateSource>,
    policy: RenewalPolicy,
    identity: Identity,
    tx: watch::Sender<CertState>,
    renew_now: Arc<tokio::sync::Notify>,
) {
    let mut failures: u32 = 0;
    // tokio-clock deadline after which the current certificate is expired.
    let mut expires: Option<Instant> = None;
    loop {
        let outcome = match new_key_and_csr(&identity) {
            Ok((key, csr)) => match source.sign(&identity, &csr, policy.ttl).await {
                Ok(chain) => assemble_svid(&identity, &key, chain, &policy),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        let wait = match outcome {
            Ok(svid) => {
                failures = 0;
                let now_wall = SystemTime::now();
                let until = |t: SystemTime| t.duration_since(now_wall).unwrap_or_default();
                let refresh_in = until(svid.refresh_at);
                expires = Some(Instant::now() + until(svid.leaf.not_after));
                info!(serial = %svid.leaf.serial_hex, refresh_in = ?refresh_in, "certificate obtained");
                tx.send_modify(|state| {
                    state.current = Some(Arc::new(svid));
                    state.last_error = None;
                    state.generation += 1;
                });
                refresh_in
            }
            Err(err) => {
                let now = Instant::now();
                let left = expires.and_then(|e| e.checked_duration_since(now));
                let still_valid = left.is_some_and(|l| !l.is_zero());
                let backoff = policy.retry_in(failures, left.filter(|l| !l.is_zero()));
                failures += 1;
                warn!(error = %err, retry_in = ?backoff, keeping_current = still_valid, "certificate request failed");
                tx.send_modify(|state| {
                    if !still_valid {
                        state.current = None;
                    }
                    state.last_error = Some(err);
                });
                backoff
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = renew_now.notified() => info!("renewing on request"),
            _ = tx.closed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_come_sooner_as_the_current_certificate_nears_expiry() {
        let policy = RenewalPolicy::default();
        // Ten failures in: without a certificate the backoff has grown to its cap.
        assert_eq!(policy.retry_in(10, None), policy.max_backoff);
        // With 8 s left, never more than 2 s; with a second left, the floor.
        assert!(policy.retry_in(10, Some(Duration::from_secs(8))) <= Duration::from_secs(2));
        assert_eq!(
            policy.retry_in(10, Some(Duration::from_secs(1))),
            policy.initial_backoff
        );
        // Early failures keep their short backoff (0.4–1.2 s) whatever is left.
        assert!(policy.retry_in(0, Some(Duration::from_secs(3600))) <= Duration::from_millis(1200));
    }
}
