//! TLS key logging, for people learning what HBONE looks like on the wire:
//! every TLS 1.3 secret of the mesh's connections written in the NSS key
//! log format (`SSLKEYLOGFILE`, what curl, Firefox and Wireshark read), so
//! a capture of the traffic can be decrypted. It goes through rustls's own
//! hook ([`rustls::KeyLog`]); this module only decides where the lines go.
//!
//! Off unless asked for (`hbone-lab proxy --keylog FILE`, or the
//! `SSLKEYLOGFILE` variable), and loud when on: anyone holding the file can
//! read the mesh's traffic. Only the proxy's mesh connections are logged —
//! not its connections to the control plane, and the CA never logs.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::warn;

/// Appends each secret to one file (created with mode 0600).
pub struct KeyLogWriter {
    path: PathBuf,
    file: Mutex<File>,
}

impl std::fmt::Debug for KeyLogWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyLogWriter")
            .field("path", &self.path)
            .finish()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl KeyLogWriter {
    /// Opens `path` for appending (created with mode 0600, as it holds secrets).
    pub fn open(path: &Path) -> std::io::Result<Arc<KeyLogWriter>> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)?;
        Ok(Arc::new(KeyLogWriter {
            path: path.to_path_buf(),
            file: Mutex::new(file),
        }))
    }

    /// The file the secrets are written to.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl rustls::KeyLog for KeyLogWriter {
    fn log(&self, label: &str, client_random: &[u8], secret: &[u8]) {
        let line = format!("{label} {} {}\n", hex(client_random), hex(secret));
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = file.write_all(line.as_bytes()) {
            warn!(file = %self.path.display(), error = %e, "cannot write the TLS key log");
        }
    }

    fn will_log(&self, _label: &str) -> bool {
        true
    }
}

/// The file to log keys to: `--keylog` if given, else `SSLKEYLOGFILE` if set.
pub fn requested(flag: Option<PathBuf>) -> Option<PathBuf> {
    flag.or_else(|| {
        std::env::var_os("SSLKEYLOGFILE")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    })
}

fn say_it(path: &Path) {
    warn!(
        file = %path.display(),
        "TLS KEY LOGGING IS ON: anyone with this file can decrypt this proxy's mesh traffic; for learning only"
    );
}

/// Warns now and then every `every` until `shutdown`.
pub async fn keep_warning(path: PathBuf, every: Duration, shutdown: CancellationToken) {
    say_it(&path);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => say_it(&path),
            _ = shutdown.cancelled() => return,
        }
    }
}
