//! A real ztunnel in the lab: found, started inside a network namespace and
//! pointed at hbone-lab's control plane (CA and xDS on one TLS port), asked
//! for its config dump, stopped with the lab.
//!
//! ztunnel is something the user supplies (`--ztunnel PATH` or
//! `ZTUNNEL_BIN`); nothing here builds it. Its listeners are fixed
//! (15001/15006/15008, admin 15000 on localhost, readiness 15021), so each
//! ztunnel gets a network namespace of its own.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use hbone_proxy::net::pod_sockets::{Netns, tcp_socket};

use crate::netns::NetNs;
use hbone_workloads::http_get::Get;
use thiserror::Error;

/// The environment variable that names a ztunnel binary.
pub const ZTUNNEL_BIN: &str = "ZTUNNEL_BIN";

/// Why a ztunnel could not be found, started or read.
#[derive(Debug, Error)]
pub enum ZtunnelError {
    /// Neither `--ztunnel` nor `ZTUNNEL_BIN` names one.
    #[error(
        "no ztunnel binary: give --ztunnel PATH or set {ZTUNNEL_BIN} (build it from github.com/istio/ztunnel: cargo build --release --bin ztunnel)"
    )]
    NotGiven,
    #[error("ztunnel binary {path}: {reason}")]
    /// The path given is not an executable file.
    BadBinary {
        /// The path given.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The process could not be started.
    #[error("cannot start ztunnel {name}: {source}")]
    Spawn {
        /// Which ztunnel (its settings' name).
        name: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// It did not get ready (or do what was waited for) in time.
    #[error("ztunnel {name} did not {what} within {secs} s; its log ({log}) ends with:\n{tail}")]
    Timeout {
        /// Which ztunnel.
        name: String,
        /// What it was waited for to do.
        what: String,
        /// How long it was given.
        secs: u64,
        /// Its log file.
        log: PathBuf,
        /// The end of that log.
        tail: String,
    },
    /// Its admin port (15000, in its namespace) did not answer.
    #[error("cannot reach ztunnel {name}'s admin port: {source}")]
    AdminUnreachable {
        /// Which ztunnel.
        name: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Its admin port answered with an error status.
    #[error("ztunnel {name}'s admin answered {status} on {path}")]
    Admin {
        /// Which ztunnel.
        name: String,
        /// The admin path asked.
        path: String,
        /// The HTTP status.
        status: u16,
    },
    /// `/config_dump` is not JSON.
    #[error("ztunnel {name}'s config dump is not JSON: {source}")]
    Dump {
        /// Which ztunnel.
        name: String,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
}

/// The binary from `explicit` or `ZTUNNEL_BIN`, checked to be an executable file.
pub fn find_binary(explicit: Option<&Path>) -> Result<PathBuf, ZtunnelError> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None => std::env::var_os(ZTUNNEL_BIN)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .ok_or(ZtunnelError::NotGiven)?,
    };
    use std::os::unix::fs::PermissionsExt;
    let bad = |reason: &str| ZtunnelError::BadBinary {
        path: path.clone(),
        reason: reason.into(),
    };
    let meta = std::fs::metadata(&path).map_err(|e| bad(&e.to_string()))?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(bad("not an executable file"));
    }
    Ok(path)
}

/// How ztunnel learns its pods.
#[derive(Debug, Clone)]
pub enum Mode {
    /// One ztunnel per node; pods arrive over ZDS on this unix socket.
    Shared {
        /// The node agent's socket (`INPOD_UDS`).
        inpod_uds: PathBuf,
    },
    /// ztunnel proxies one workload (`namespace/name/serviceAccount`) from
    /// inside that workload's own namespace.
    Dedicated {
        /// `PROXY_WORKLOAD_INFO`: `namespace/name/serviceAccount`.
        workload: String,
    },
}

/// Everything one ztunnel is started with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// A name for logs and errors (`node-a`).
    pub name: String,
    /// The ztunnel executable.
    pub binary: PathBuf,
    /// `https://ip:port` of hbone-lab's control plane (CA and xDS).
    pub control_plane: String,
    /// The lab's root certificate (PEM file), trusted for xDS and the CA.
    pub root_ca: PathBuf,
    /// A file holding the bearer token.
    pub token_file: PathBuf,
    /// ztunnel's `NODE_NAME`: which workloads are local.
    pub node: String,
    /// Shared (a node's pods over ZDS) or dedicated (one workload).
    pub mode: Mode,
    /// Where its log goes.
    pub log: PathBuf,
    /// `RUST_LOG` for it.
    pub log_level: String,
    /// The certificate lifetime it asks for (`SECRET_TTL`; ztunnel's default is 24 h).
    pub secret_ttl: Option<Duration>,
    /// Read workloads and policies from this file (`LOCAL_XDS_PATH`) instead
    /// of subscribing over xDS; the CA is still `control_plane`.
    pub local_config: Option<PathBuf>,
}

/// A running ztunnel; killed when dropped.
pub struct Ztunnel {
    /// What it was started with.
    pub settings: Settings,
    /// The handle on its namespace, for reaching its admin and readiness ports.
    netns: Netns,
    child: Child,
}

impl Ztunnel {
    /// Starts ztunnel inside `netns`.
    pub fn start(netns: &NetNs, settings: Settings) -> Result<Ztunnel, ZtunnelError> {
        let spawn_err = |source| ZtunnelError::Spawn {
            name: settings.name.clone(),
            source,
        };
        let log = std::fs::File::create(&settings.log).map_err(spawn_err)?;
        let log_err = log.try_clone().map_err(spawn_err)?;
        let mut command = netns.command(settings.binary.to_str().unwrap_or("ztunnel"));
        command
            .current_dir("/")
            .env("XDS_ADDRESS", &settings.control_plane)
            .env("XDS_ROOT_CA", &settings.root_ca)
            .env("CA_ADDRESS", &settings.control_plane)
            .env("CA_ROOT_CA", &settings.root_ca)
            .env("AUTH_TOKEN", &settings.token_file)
            .env("NODE_NAME", &settings.node)
            .env("ISTIO_META_DNS_CAPTURE", "false")
            .env("ENABLE_ORIG_SRC", "false")
            .env("RUST_LOG", &settings.log_level)
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err));
        if let Some(file) = &settings.local_config {
            command.env("XDS_ADDRESS", "").env("LOCAL_XDS_PATH", file);
        }
        if let Some(ttl) = settings.secret_ttl {
            command.env("SECRET_TTL", format!("{}s", ttl.as_secs()));
        }
        match &settings.mode {
            Mode::Shared { inpod_uds } => {
                command
                    .env("PROXY_MODE", "shared")
                    .env("INPOD_UDS", inpod_uds)
                    .env("POD_NAME", format!("ztunnel-{}", settings.node))
                    .env("POD_NAMESPACE", "istio-system")
                    .env("SERVICE_ACCOUNT", "ztunnel");
            }
            Mode::Dedicated { workload } => {
                command
                    .env("PROXY_MODE", "dedicated")
                    .env("PROXY_WORKLOAD_INFO", workload);
                // As the downward API sets them in the workload's pod:
                // istiod admits an xDS stream only from the namespace and
                // service account its token names.
                if let [namespace, name, account] = workload.split('/').collect::<Vec<_>>()[..] {
                    command
                        .env("POD_NAME", name)
                        .env("POD_NAMESPACE", namespace)
                        .env("SERVICE_ACCOUNT", account);
                }
            }
        }
        let child = command.spawn().map_err(spawn_err)?;
        Ok(Ztunnel {
            settings,
            netns: netns.sockets().clone(),
            child,
        })
    }

    /// Its process id (for /proc readings).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The network namespace it runs in.
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// The last lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.settings.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn timeout(&self, what: &str, limit: Duration) -> ZtunnelError {
        ZtunnelError::Timeout {
            name: self.settings.name.clone(),
            what: what.into(),
            secs: limit.as_secs(),
            log: self.settings.log.clone(),
            tail: self.log_tail(15),
        }
    }

    /// `GET path` on its admin port (15000, localhost in its namespace).
    pub async fn admin_get(&self, path: &str) -> Result<(u16, String), ZtunnelError> {
        let addr: SocketAddr = ([127, 0, 0, 1], 15000).into();
        http_get(Some(&self.netns), addr, path)
            .await
            .map_err(|source| ZtunnelError::AdminUnreachable {
                name: self.settings.name.clone(),
                source,
            })
    }

    /// Its `/config_dump`: workloads, services, policies, certificates.
    pub async fn config_dump(&self) -> Result<serde_json::Value, ZtunnelError> {
        let (status, body) = self.admin_get("/config_dump").await?;
        if status != 200 {
            return Err(ZtunnelError::Admin {
                name: self.settings.name.clone(),
                path: "/config_dump".into(),
                status,
            });
        }
        serde_json::from_str(&body).map_err(|source| ZtunnelError::Dump {
            name: self.settings.name.clone(),
            source,
        })
    }

    /// Polls the config dump until `done` holds for it.
    pub async fn wait_for_dump(
        &self,
        what: &str,
        limit: Duration,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<serde_json::Value, ZtunnelError> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(dump) = self.config_dump().await
                && done(&dump)
            {
                return Ok(dump);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(self.timeout(what, limit))
    }

    /// Waits for `/healthz/ready` on 15021 to answer 200 at `addr`.
    pub async fn wait_ready(
        &self,
        addr: std::net::IpAddr,
        limit: Duration,
    ) -> Result<(), ZtunnelError> {
        let deadline = Instant::now() + limit;
        let ready = SocketAddr::new(addr, 15021);
        while Instant::now() < deadline {
            if let Ok((200, _)) = http_get(Some(&self.netns), ready, "/healthz/ready").await {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(self.timeout("become ready", limit))
    }
}

impl Drop for Ztunnel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A one-shot HTTP/1.0 GET, from inside `netns` if given (through its
/// handle, so a poll loop reuses one socket thread): the status and the body.
pub async fn http_get(
    netns: Option<&Netns>,
    addr: SocketAddr,
    path: &str,
) -> std::io::Result<(u16, String)> {
    let socket = tcp_socket(netns, addr, None, None).map_err(std::io::Error::other)?;
    let mut tcp = tokio::time::timeout(Duration::from_secs(2), socket.connect(addr))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    let request = Get::once("localhost", path);
    let get = hbone_workloads::http_get::get(&mut tcp, &request);
    let answer = tokio::time::timeout(Duration::from_secs(5), get)
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    Ok((answer.status, answer.text()))
}
