//! Polling files for changes: what the registry and policy followers share.
//! A poll every couple of seconds is enough for a lab, works on every file
//! system (including Kubernetes' ConfigMap volumes, which swap a symlink),
//! and needs no inotify.

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
/// the first poll.
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
            if apply() {
                swapped += 1;
            }
        }
    }
}
