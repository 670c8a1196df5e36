//! Following a registry file: when it changes on disk, the proxy reads it
//! again and swaps it in whole, so new connections resolve against the new
//! workloads and services while established ones carry on. A file that no
//! longer parses is reported and ignored: the proxy keeps the registry it
//! has. A workload that arrives on this node gets its listeners then
//! ([`crate::workload_listeners`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::registry::Registry;
use crate::sources::file_watch::{on_change, stamp};
use crate::state::ProxyCore;

/// Polls `path` every `every` until `shutdown`; swaps in each new version
/// that parses. Returns how many versions were swapped in. The file's
/// current version is taken as the baseline when this is called, so an edit
/// made right after cannot slip by before the first poll.
pub fn follow_file(
    core: Arc<ProxyCore>,
    path: PathBuf,
    every: Duration,
    shutdown: CancellationToken,
) -> impl Future<Output = usize> + Send + 'static {
    let watched = path.clone();
    on_change(
        every,
        shutdown,
        move || stamp(&watched),
        move || match Registry::load(&path) {
            Ok(registry) if registry.nodes.iter().any(|n| n.name == core.node) => {
                info!(
                    file = %path.display(),
                    workloads = registry.workloads.len(),
                    services = registry.services.len(),
                    "registry changed: new connections use the new version"
                );
                core.replace_registry(registry);
                true
            }
            Ok(_) => {
                warn!(
                    file = %path.display(),
                    node = %core.node,
                    "the changed registry no longer lists this node; keeping the previous one"
                );
                false
            }
            Err(e) => {
                warn!(
                    file = %path.display(),
                    error = %e,
                    "the changed registry does not parse; keeping the previous one"
                );
                false
            }
        },
    )
}
