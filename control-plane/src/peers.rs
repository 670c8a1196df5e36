//! Finding the real control plane's programs: etcd, kube-apiserver, istiod
//! (`pilot-discovery`) and istioctl, and the Istio CRDs of the same istio
//! module.
//!
//! They are not ours to ship: `scripts/control-plane-peers.sh` builds them
//! from their Go modules (as `cargo install` would) into a folder named
//! after the pinned versions, and a user may supply each one instead
//! (`--istiod PATH` or `ISTIOD_BIN`, as `--ztunnel` / `ZTUNNEL_BIN`). The
//! versions live in `control-plane/peers.env`, read here at compile time,
//! so the script and this lookup cannot disagree on the folder.

use std::path::{Path, PathBuf};

use thiserror::Error;

/// `control-plane/peers.env`, the one place the versions are pinned.
const PEERS_ENV: &str = include_str!("../peers.env");

/// The script that builds the programs, named in every "not found" error.
pub const BUILD_SCRIPT: &str = "scripts/control-plane-peers.sh";

/// One of the programs the control plane runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// etcd, the API server's store.
    Etcd,
    /// kube-apiserver.
    KubeApiserver,
    /// istiod (`pilot-discovery discovery`).
    Istiod,
    /// istioctl, the field's inspection tool.
    Istioctl,
}

impl Peer {
    /// Every program, in the order they start.
    pub const ALL: [Peer; 4] = [
        Peer::Etcd,
        Peer::KubeApiserver,
        Peer::Istiod,
        Peer::Istioctl,
    ];

    /// Its name in messages.
    pub fn name(self) -> &'static str {
        match self {
            Peer::Etcd => "etcd",
            Peer::KubeApiserver => "kube-apiserver",
            Peer::Istiod => "istiod",
            Peer::Istioctl => "istioctl",
        }
    }

    /// The file the build script writes.
    pub fn file(self) -> &'static str {
        match self {
            Peer::Etcd => "etcd",
            Peer::KubeApiserver => "kube-apiserver",
            Peer::Istiod => "pilot-discovery",
            Peer::Istioctl => "istioctl",
        }
    }

    /// The environment variable that names a supplied binary.
    pub fn env(self) -> &'static str {
        match self {
            Peer::Etcd => "ETCD_BIN",
            Peer::KubeApiserver => "KUBE_APISERVER_BIN",
            Peer::Istiod => "ISTIOD_BIN",
            Peer::Istioctl => "ISTIOCTL_BIN",
        }
    }

    /// The command-line flag that names a supplied binary.
    pub fn flag(self) -> &'static str {
        match self {
            Peer::Etcd => "--etcd",
            Peer::KubeApiserver => "--kube-apiserver",
            Peer::Istiod => "--istiod",
            Peer::Istioctl => "--istioctl",
        }
    }
}

/// The environment variable naming the Istio CRDs file, when supplied.
pub const ISTIO_CRDS_ENV: &str = "ISTIO_CRDS";
/// The CRDs' file name in the peers folder.
pub const ISTIO_CRDS_FILE: &str = "crd-all.gen.yaml";

/// Why a program cannot be used.
#[derive(Debug, Error)]
pub enum PeerError {
    /// Neither given nor built.
    #[error(
        "no {program} binary: give {flag} PATH or set {env}, or build it from its Go module with {BUILD_SCRIPT} (needs `go` and the Go module proxy; it lands in {expected})",
        program = .peer.name(), flag = .peer.flag(), env = .peer.env(), expected = .expected.display()
    )]
    NotFound {
        /// Which program.
        peer: Peer,
        /// Where the build script would have put it.
        expected: PathBuf,
    },
    /// Given, but not an executable file.
    #[error("{program} binary {path}: {reason}", program = .peer.name())]
    NotExecutable {
        /// Which program.
        peer: Peer,
        /// The path given.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The Istio CRDs are nowhere.
    #[error(
        "no Istio CRDs: set {ISTIO_CRDS_ENV} to Istio's crd-all.gen.yaml, or run {BUILD_SCRIPT}, which copies it from the istio module into {expected}",
        expected = .expected.display()
    )]
    NoCrds {
        /// Where the build script would have put them.
        expected: PathBuf,
    },
}

/// The pinned versions, as `control-plane/peers.env` has them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versions {
    /// `k8s.io/kubernetes` (kube-apiserver).
    pub kubernetes: String,
    /// `go.etcd.io/etcd/server/v3`.
    pub etcd: String,
    /// `istio.io/istio` (istiod, istioctl, the CRDs).
    pub istio: String,
}

impl Versions {
    /// The pinned versions.
    pub fn pinned() -> Versions {
        Self::parse(PEERS_ENV)
    }

    fn parse(text: &str) -> Versions {
        let value = |key: &str| {
            text.lines()
                .filter_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
                .next()
                .map(|v| v.trim().to_string())
                .unwrap_or_default()
        };
        Versions {
            kubernetes: value("KUBERNETES_VERSION"),
            etcd: value("ETCD_VERSION"),
            istio: value("ISTIO_VERSION"),
        }
    }

    /// The folder name the build script uses for these versions (the
    /// istio pseudo-version shortened to its commit).
    pub fn folder(&self) -> String {
        let istio = self.istio.rsplit('-').next().unwrap_or(&self.istio);
        format!("k8s-{}_etcd-{}_istio-{istio}", self.kubernetes, self.etcd)
    }
}

/// Where the build script puts the programs: `$HBONE_PEERS_DIR`, else
/// `$XDG_CACHE_HOME/hbone-lab/peers`, else `~/.cache/hbone-lab/peers`;
/// then a folder per set of versions.
pub fn built_dir() -> PathBuf {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let root = env("HBONE_PEERS_DIR").unwrap_or_else(|| {
        env("XDG_CACHE_HOME")
            .or_else(|| env("HOME").map(|h| h.join(".cache")))
            .unwrap_or_else(|| PathBuf::from("/tmp"))
            .join("hbone-lab/peers")
    });
    root.join(Versions::pinned().folder())
}

/// The program: `explicit`, else its environment variable, else what the
/// build script built.
pub fn find(peer: Peer, explicit: Option<&Path>) -> Result<PathBuf, PeerError> {
    let given = explicit.map(Path::to_path_buf).or_else(|| {
        std::env::var_os(peer.env())
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    });
    let path = match given {
        Some(path) => path,
        None => {
            let built = built_dir().join(peer.file());
            if !built.exists() {
                return Err(PeerError::NotFound {
                    peer,
                    expected: built,
                });
            }
            built
        }
    };
    use std::os::unix::fs::PermissionsExt;
    let bad = |reason: String| PeerError::NotExecutable {
        peer,
        path: path.clone(),
        reason,
    };
    let meta = std::fs::metadata(&path).map_err(|e| bad(e.to_string()))?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(bad("not an executable file".into()));
    }
    Ok(path)
}

/// Istio's CRDs: `ISTIO_CRDS`, else the copy the build script made.
pub fn find_crds() -> Result<PathBuf, PeerError> {
    if let Some(path) = std::env::var_os(ISTIO_CRDS_ENV).filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    let built = built_dir().join(ISTIO_CRDS_FILE);
    if built.is_file() {
        Ok(built)
    } else {
        Err(PeerError::NoCrds { expected: built })
    }
}

/// The three programs a control plane runs, and the CRDs it applies.
#[derive(Debug, Clone)]
pub struct Programs {
    /// etcd.
    pub etcd: PathBuf,
    /// kube-apiserver.
    pub kube_apiserver: PathBuf,
    /// istiod (`pilot-discovery`).
    pub istiod: PathBuf,
    /// Istio's `crd-all.gen.yaml`.
    pub crds: PathBuf,
}

/// Binaries given on the command line, each overriding its lookup.
#[derive(Debug, Clone, Default)]
pub struct Given {
    /// `--etcd`.
    pub etcd: Option<PathBuf>,
    /// `--kube-apiserver`.
    pub kube_apiserver: Option<PathBuf>,
    /// `--istiod`.
    pub istiod: Option<PathBuf>,
}

impl Programs {
    /// Finds every program (see [`find`]).
    pub fn find(given: &Given) -> Result<Programs, PeerError> {
        Ok(Programs {
            etcd: find(Peer::Etcd, given.etcd.as_deref())?,
            kube_apiserver: find(Peer::KubeApiserver, given.kube_apiserver.as_deref())?,
            istiod: find(Peer::Istiod, given.istiod.as_deref())?,
            crds: find_crds()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pinned_versions_are_read_and_name_the_folder() {
        let v = Versions::parse(
            "# comment\nKUBERNETES_VERSION=v1.34.4\nETCD_VERSION=v3.6.16\nISTIO_VERSION=v0.0.0-20260827124520-eed52ebb66ad\n",
        );
        assert_eq!(v.kubernetes, "v1.34.4");
        assert_eq!(v.folder(), "k8s-v1.34.4_etcd-v3.6.16_istio-eed52ebb66ad");
        let pinned = Versions::pinned();
        assert!(pinned.kubernetes.starts_with("v1.34."), "{pinned:?}");
        assert!(!pinned.etcd.is_empty() && !pinned.istio.is_empty());
    }

    #[test]
    fn a_missing_program_names_the_flag_the_variable_and_the_script() {
        let e = find(
            Peer::Istiod,
            Some(Path::new("/nonexistent/pilot-discovery")),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("/nonexistent/pilot-discovery"),
            "{e}"
        );
        let e = PeerError::NotFound {
            peer: Peer::Istiod,
            expected: PathBuf::from("/x/pilot-discovery"),
        };
        let text = e.to_string();
        for part in ["--istiod", "ISTIOD_BIN", BUILD_SCRIPT, "/x/pilot-discovery"] {
            assert!(text.contains(part), "{text} lacks {part}");
        }
    }
}
