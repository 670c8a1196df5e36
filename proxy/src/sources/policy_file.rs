//! Following the policy files: when an AuthorizationPolicy or
//! PeerAuthentication file (or a directory of them) changes on disk, the
//! proxy reads them all again, swaps the new set in, and judges every open
//! HBONE stream by it — a stream the new policies deny is closed, which is
//! what makes "apply a DENY and watch the connection drop" work in the lab.
//! A set that no longer parses is reported and ignored: the proxy keeps the
//! policies it has.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hbone_policies::istio::IstioPolicies;
use hbone_policies::load::{LoadError, istio_policies, load_dir, load_file, yaml_files};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::sources::file_watch::{on_change, stamp};
use crate::state::ProxyCore;

/// Reads every policy in `paths` (files, or directories of YAML files).
pub fn load_policies(paths: &[PathBuf], root_namespace: &str) -> Result<IstioPolicies, LoadError> {
    let mut loaded = Vec::new();
    for path in paths {
        loaded.extend(if path.is_dir() {
            load_dir(path)?
        } else {
            load_file(path)?
        });
    }
    Ok(istio_policies(&loaded, root_namespace))
}

/// What tells a new version of the set: every file's name and stamp (a
/// file can be added to or removed from a directory, too).
pub type Fingerprint = Vec<(PathBuf, Option<(SystemTime, u64)>)>;

/// Each file `paths` names, directories expanded to their YAML files, with its
/// modification time and size (`None` when it cannot be read).
pub fn fingerprint(paths: &[PathBuf]) -> Fingerprint {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            files.extend(yaml_files(path).unwrap_or_default());
        } else {
            files.push(path.clone());
        }
    }
    files.into_iter().map(|f| (f.clone(), stamp(&f))).collect()
}

/// Polls `paths` every `every` until `shutdown`; swaps in each new set that
/// parses and closes the open streams it denies. Returns how many sets were
/// swapped in. The current files are the baseline when this is called.
pub fn follow_policies(
    core: Arc<ProxyCore>,
    paths: Vec<PathBuf>,
    root_namespace: String,
    every: Duration,
    shutdown: CancellationToken,
) -> impl Future<Output = usize> + Send + 'static {
    let watched = paths.clone();
    on_change(
        every,
        shutdown,
        move || fingerprint(&watched),
        move || match load_policies(&paths, &root_namespace) {
            Ok(policies) => {
                let count = policies.authorization().len();
                let revoked = core.replace_policies(policies);
                info!(
                    authorization_policies = count,
                    streams_closed = revoked.len(),
                    "policies changed: open streams judged again, new ones use the new set"
                );
                true
            }
            Err(e) => {
                warn!(
                    error = %e,
                    "the changed policies do not load; keeping the previous ones"
                );
                false
            }
        },
    )
}
