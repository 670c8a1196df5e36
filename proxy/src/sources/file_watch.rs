//! Polling files for changes: what the registry and policy followers share.
//! A poll every couple of seconds is enough for a lab, works on every file
//! system (including Kubernetes' ConfigMap volumes, which swap a symlink),
//! and needs no inotify.
//!
//! Reading and parsing a changed file runs on tokio's blocking pool, off
//! the threads that carry traffic: a 100 MB policy file once stalled a
//! node's connections for 2 s while it was parsed on one of them.

use std::path::Path;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

/// What tells a new version of a file: modification time and size (some
/// file systems keep whole-second times, and an edit may land within one).
pub fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Computes `fingerprint` every `every` until `shutdown` and calls `apply`
/// each time it differs from the last one; `apply` says whether it swapped
/// something in. Resolves to how many times it did. The baseline is taken
/// when this is called, so an edit made right after cannot slip by before
/// the first poll. `apply` runs on the blocking pool.
pub fn on_change<T, F, A>(
    every: Duration,
    shutdown: CancellationToken,
    fingerprint: F,
    mut apply: A,
) -> impl Future<Output = usize> + Send + 'static
where
    T: PartialEq + Send + 'static,
    F: Fn() -> T + Send + 'static,
    A: FnMut() -> bool + Send + 'static,
{
    let mut seen = fingerprint();
    async move {
        let mut swapped = 0;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return swapped,
                _ = tokio::time::sleep(every) => {}
            }
            let now = fingerprint();
            if now == seen {
                continue;
            }
            seen = now;
            let run = tokio::task::spawn_blocking(move || {
                let swapped = apply();
                (apply, swapped)
            });
            let Ok((back, did)) = run.await else {
                // `apply` panicked: nothing more can be applied.
                return swapped;
            };
            apply = back;
            if did {
                swapped += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    /// A slow reload does not hold the runtime's thread: on a one-thread
    /// runtime, another task keeps running while `apply` works.
    #[tokio::test(flavor = "current_thread")]
    async fn a_reload_runs_off_the_traffic_threads() {
        let version = Arc::new(AtomicU64::new(0));
        let seen = version.clone();
        let ticks = Arc::new(AtomicU64::new(0));
        let ticking = ticks.clone();
        let during = Arc::new(AtomicBool::new(false));
        let observed = during.clone();
        let stop = CancellationToken::new();
        let watcher = tokio::spawn(on_change(
            Duration::from_millis(10),
            stop.clone(),
            move || seen.load(Ordering::Relaxed),
            move || {
                let before = ticking.load(Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(300));
                observed.store(ticking.load(Ordering::Relaxed) > before, Ordering::Relaxed);
                true
            },
        ));
        let ticker = tokio::spawn(async move {
            loop {
                ticks.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        version.store(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(600)).await;
        stop.cancel();
        assert_eq!(watcher.await.unwrap(), 1, "the change was applied");
        ticker.abort();
        assert!(
            during.load(Ordering::Relaxed),
            "other tasks stood still while the reload ran"
        );
    }
}
