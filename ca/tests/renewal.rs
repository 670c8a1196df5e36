//! The certificate manager's schedule on tokio's paused clock: renewal at
//! half the 24 h lifetime, and a CA outage that keeps the current
//! certificate while it is valid and recovers when the CA returns.
//!
//! The certificates come from a real in-process signing authority. The one
//! stand-in is `OutageSwitch`, which wraps it to simulate the CA being
//! unreachable.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use hbone_ca::manager::{CertificateSource, FetchError};
use hbone_ca::{
    AuthorityConfig, CertState, CertificateManager, Identity, RenewalPolicy, SigningAuthority,
};
use tokio::sync::watch;

struct OutageSwitch {
    authority: SigningAuthority,
    down: AtomicBool,
    calls: AtomicU32,
}

#[async_trait]
impl CertificateSource for OutageSwitch {
    async fn sign(
        &self,
        identity: &Identity,
        csr: &str,
        ttl: Duration,
    ) -> Result<Vec<String>, FetchError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            let outage = std::io::Error::other("connection refused (simulated outage)");
            return Err(FetchError::source_failed(outage));
        }
        self.authority.sign(identity, csr, ttl).await
    }
}

fn setup() -> (Arc<OutageSwitch>, CertificateManager, Identity) {
    let source = Arc::new(OutageSwitch {
        authority: SigningAuthority::generate(AuthorityConfig::new("cluster.local")).unwrap(),
        down: AtomicBool::new(false),
        calls: AtomicU32::new(0),
    });
    let manager = CertificateManager::new(source.clone(), RenewalPolicy::default());
    (
        source,
        manager,
        "spiffe://cluster.local/ns/demo/sa/hello-app"
            .parse()
            .unwrap(),
    )
}

const H: u64 = 3600;
const M: u64 = 60;

/// Lets virtual time pass, running every task that becomes ready.
async fn pass(d: Duration) {
    tokio::time::sleep(d).await;
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

fn generation(rx: &watch::Receiver<CertState>) -> u64 {
    rx.borrow().generation
}

#[tokio::test(start_paused = true)]
async fn renews_at_half_life_not_before() {
    let (source, manager, me) = setup();
    let first = manager.get(&me).await.unwrap();
    let rx = manager.watch(&me);
    assert_eq!(generation(&rx), 1);

    // 24 h certificate: renewal 12 h after it arrived, plus ≤ 1 % jitter (≤ 14.4 min).
    pass(Duration::from_secs(11 * H + 59 * M)).await;
    assert_eq!(generation(&rx), 1, "renewed before half-life");
    assert_eq!(source.calls.load(Ordering::SeqCst), 1);

    pass(Duration::from_secs(16 * M)).await; // 12 h 15 min
    assert_eq!(generation(&rx), 2, "not renewed by 12 h 15 min");
    let second = rx.borrow().current.clone().unwrap();
    assert_ne!(first.leaf.serial_hex, second.leaf.serial_hex);
    assert_ne!(
        first.key.secret_pkcs8_der(),
        second.key.secret_pkcs8_der(),
        "a renewal uses a new key"
    );
    // The old certificate is still whole for connections that hold it.
    assert_eq!(first.identity, me);

    // …and the next renewal comes another ~12 h later.
    pass(Duration::from_secs(11 * H + 30 * M)).await;
    assert_eq!(generation(&rx), 2);
    pass(Duration::from_secs(H)).await;
    assert_eq!(generation(&rx), 3);
}

#[tokio::test(start_paused = true)]
async fn an_outage_keeps_the_certificate_and_recovers() {
    let (source, manager, me) = setup();
    let first = manager.get(&me).await.unwrap();
    let rx = manager.watch(&me);

    source.down.store(true, Ordering::SeqCst);
    pass(Duration::from_secs(12 * H + 15 * M)).await;
    {
        let state = rx.borrow();
        assert!(state.last_error.is_some(), "the failed renewal is reported");
        assert_eq!(
            state.current.as_ref().unwrap().leaf.serial_hex,
            first.leaf.serial_hex
        );
    }
    let attempts_after_first_failure = source.calls.load(Ordering::SeqCst);

    // Retries back off exponentially: over an hour, far fewer than one per second,
    // and never slower than the 150 s cap (+20 % jitter) allows.
    pass(Duration::from_secs(H)).await;
    let retries = source.calls.load(Ordering::SeqCst) - attempts_after_first_failure;
    assert!((20..=60).contains(&retries), "{retries} retries in an hour");
    assert_eq!(generation(&rx), 1);
    assert!(rx.borrow().current.is_some(), "kept while still valid");

    source.down.store(false, Ordering::SeqCst);
    pass(Duration::from_secs(181)).await;
    let state = rx.borrow().clone();
    assert_eq!(state.generation, 2, "recovered after the CA came back");
    assert!(state.last_error.is_none());
}

#[tokio::test(start_paused = true)]
async fn an_outage_past_expiry_withdraws_the_certificate() {
    let (source, manager, me) = setup();
    manager.get(&me).await.unwrap();
    let rx = manager.watch(&me);
    source.down.store(true, Ordering::SeqCst);
    pass(Duration::from_secs(24 * H + 10 * M)).await;
    let state = rx.borrow().clone();
    assert!(
        state.current.is_none(),
        "an expired certificate must not be offered"
    );
    assert!(state.last_error.is_some());
    let err = manager.get(&me).await.unwrap_err().to_string();
    assert!(err.contains("simulated outage"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn first_fetch_failure_is_reported_not_hung() {
    let (source, manager, me) = setup();
    source.down.store(true, Ordering::SeqCst);
    let err = manager.get(&me).await.unwrap_err().to_string();
    assert!(
        err.contains("none for spiffe://cluster.local/ns/demo/sa/hello-app yet"),
        "{err}"
    );
}
