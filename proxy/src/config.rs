//! The proxy's configuration: plain serde structs, every default written
//! down here, validated once at load with errors naming file and field.
//!
//! ```yaml
//! node: node-1                      # which registry node this proxy serves
//! registry: registry.yaml           # workloads, nodes, services (paths relative to this file);
//!                                   #   followed: edits take effect without a restart
//! # kubernetes: {pollInterval: 5s}  # …or, instead of `registry`, follow the cluster's pods
//! #                                 #   and services (in a pod: start with --node $(POD_NAME))
//! # xds: https://127.0.0.1:15012    # …or follow a control plane over delta ADS, as ztunnel
//! #                                 #   follows istiod (workloads, services and translated
//! #                                 #   policies; `policies` files are then not read)
//! # zds: /var/run/ztunnel/ztunnel.sock  # shared mode: serve the pods a node agent hands
//! #                                 #   over (istio-cni's ZDS), each inside its namespace;
//! #                                 #   plaintextPort and podOutboundPort default to 15006, 15001
//! policies: [../../policies/istio]  # AuthorizationPolicy / PeerAuthentication files or dirs
//! rootNamespace: istio-system
//! ca:
//!   address: https://127.0.0.1:15012
//!   rootCert: root.pem              # the mesh root (also trusts the CA's serving cert)
//!   tokenFile: node-1.token         # bearer token for CreateCertificate
//!   ttl: 24h
//! listeners:
//!   hbonePort: 15008                # bound on every local workload IP
//!   plaintextPort: 15006            # optional, bound on every local workload IP
//!   socks5: 127.0.1.1:15080         # optional
//!   outbound: 127.0.0.1:15001       # optional, transparent capture (SO_ORIGINAL_DST)
//!   podOutboundPort: 15001          # optional, capture inside each local pod's netns
//!   metrics: 127.0.1.1:15020
//!   admin: 127.0.0.1:15000
//!   readiness: 127.0.1.1:15021
//! h2:
//!   streamWindow: 4194304           # 4 MiB
//!   connectionWindow: 16777216      # 16 MiB
//!   maxFrameSize: 1048576           # 1 MiB
//!   maxStreamsPerConnection: 100    # client pool
//!   parallelConnections: 0          # busy streams to one peer spread over this many connections (0: one per worker thread)
//!   serverMaxStreams: 200           # per inbound connection
//!   poolIdleTimeout: 300s
//! connectionLog: 1000               # finished connections kept for /debug/connections
//! # benchTunnel: plain              # benchmarks only: a TCP relay (or `mtls`: TLS without
//! #                                 #   HTTP/2) between proxies instead of HBONE, no policy
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use thiserror::Error;

/// Why the proxy's config file could not be loaded.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {file}: {source}")]
    Read {
        /// The config file's path.
        file: String,
        /// The read error.
        #[source]
        source: std::io::Error,
    },
    /// A field is malformed or out of range, or not exactly one registry source is named.
    #[error("{file}: field `{field}`: {message}")]
    Field {
        /// The config file's path.
        file: String,
        /// The field's path, like `h2.streamWindow`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
}

/// A field of a document that is wrong, and why: the same type the policy
/// loader reports, so every YAML file hbone-lab reads names its mistakes
/// alike.
pub use hbone_policies::load::FieldError;

/// Parses YAML into `T`, or says which field (as a path like
/// `h2.streamWindow`) is wrong and why. Every config file of the proxy reads through here.
pub fn parse_yaml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, FieldError> {
    hbone_policies::load::check_nesting(text).map_err(|m| FieldError::new(String::new(), m))?;
    serde_path_to_error::deserialize(serde_yaml::Deserializer::from_str(text))
        .map_err(|e| FieldError::new(e.path().to_string(), e.into_inner().to_string()))
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map_err(serde::de::Error::custom)
}

/// HTTP/2 tuning, defaults as ztunnel's.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct H2Settings {
    /// Initial HTTP/2 stream window in bytes, both ways (default 4 MiB).
    pub stream_window: u32,
    /// Initial HTTP/2 connection window in bytes (default 16 MiB).
    pub connection_window: u32,
    /// Largest HTTP/2 frame we accept, in bytes (default 1 MiB).
    pub max_frame_size: u32,
    /// Most streams the client pool puts on one connection before dialing another (default 100).
    pub max_streams_per_connection: usize,
    /// Over how many connections the client pool spreads streams to one
    /// peer while they are busy (default 0: one per worker thread). One
    /// HTTP/2 connection is driven by one task, so all its streams'
    /// encryption runs on one thread at a time; a stream that finds every
    /// connection busy gets a new one until there are this many.
    pub parallel_connections: usize,
    /// Most CONNECT streams one inbound connection carries at once; past it, 503 (default 200).
    pub server_max_streams: usize,
    /// How long a pooled connection may sit without streams before it is closed (default 300 s).
    #[serde(deserialize_with = "duration")]
    pub pool_idle_timeout: Duration,
    /// How long a dial may take: to a peer's 15008, or to the target inbound (default 10 s).
    #[serde(deserialize_with = "duration")]
    pub connect_timeout: Duration,
    /// How long a TLS or HTTP/2 handshake may take (default 10 s); also bounds SOCKS5 negotiation.
    #[serde(deserialize_with = "duration")]
    pub handshake_timeout: Duration,
    /// PING HBONE connections (pooled ones, and those arriving on 15008) this often…
    #[serde(deserialize_with = "duration")]
    pub keepalive_interval: Duration,
    /// …and drop one whose PING goes unanswered this long.
    #[serde(deserialize_with = "duration")]
    pub keepalive_timeout: Duration,
}

impl Default for H2Settings {
    fn default() -> Self {
        H2Settings {
            stream_window: 4 * 1024 * 1024,
            connection_window: 16 * 1024 * 1024,
            max_frame_size: 1024 * 1024,
            max_streams_per_connection: 100,
            parallel_connections: 0,
            server_max_streams: 200,
            pool_idle_timeout: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(20),
        }
    }
}

/// `listeners:` — the ports and addresses the proxy listens on.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct Listeners {
    /// HBONE port, bound on every local workload IP (default 15008).
    pub hbone_port: u16,
    /// Plaintext inbound port, bound on every local workload IP (15006; none by default).
    pub plaintext_port: Option<u16>,
    /// SOCKS5 listener address (15080; none by default).
    pub socks5: Option<SocketAddr>,
    /// Host-side captured-outbound listener, read with `SO_ORIGINAL_DST` (15001; none by default).
    pub outbound: Option<SocketAddr>,
    /// In-pod capture: an outbound listener on `0.0.0.0:<port>` inside the
    /// network namespace of every local workload that has one (15001).
    pub pod_outbound_port: Option<u16>,
    /// Prometheus metrics listener address (15020; none by default).
    pub metrics: Option<SocketAddr>,
    /// Admin listener address (15000; none by default).
    pub admin: Option<SocketAddr>,
    /// Readiness listener address (15021; none by default).
    pub readiness: Option<SocketAddr>,
    /// The most connections the data listeners hold open at once (none by
    /// default); past it new ones are closed and counted as `too_many_connections`.
    pub max_connections: Option<usize>,
}

impl Default for Listeners {
    fn default() -> Self {
        Listeners {
            hbone_port: 15008,
            plaintext_port: None,
            socks5: None,
            outbound: None,
            pod_outbound_port: None,
            metrics: None,
            admin: None,
            readiness: None,
            max_connections: None,
        }
    }
}

/// `ca:` — the CA server the workloads' certificates come from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CaSettings {
    /// The CA's address, `https://host:15012`.
    pub address: String,
    /// The mesh root (PEM): verifies the CA's serving certificate, and peers.
    pub root_cert: PathBuf,
    /// The bearer token for `CreateCertificate`, read again before each request.
    pub token_file: PathBuf,
    /// Lifetime asked for each workload certificate (default 24 h).
    #[serde(default = "default_ttl", deserialize_with = "duration")]
    pub ttl: Duration,
    /// The CA's revocation list (PEM, from `hbone-lab ca revoke`): peers
    /// presenting a revoked certificate are refused (`certificate_revoked`)
    /// in both directions. Followed: a new edition applies to the next
    /// handshake; one that does not parse leaves the last good one in force.
    #[serde(default)]
    pub crl: Option<PathBuf>,
}

fn default_ttl() -> Duration {
    Duration::from_secs(24 * 3600)
}

fn default_root_namespace() -> String {
    "istio-system".into()
}

/// The proxy's YAML file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProxyConfig {
    /// The registry node whose workloads this proxy serves.
    pub node: String,
    /// The registry file (followed: edits take effect without a restart).
    #[serde(default)]
    pub registry: Option<PathBuf>,
    /// Or: follow a Kubernetes cluster's pods and services instead.
    #[serde(default)]
    pub kubernetes: Option<KubernetesRegistry>,
    /// Or: follow a control plane (`https://host:15012`) over delta ADS,
    /// authenticating with `ca.tokenFile` and trusting `ca.rootCert`.
    #[serde(default)]
    pub xds: Option<String>,
    /// Shared mode: the node agent's socket (istio-cni: `/var/run/ztunnel/ztunnel.sock`).
    #[serde(default)]
    pub zds: Option<PathBuf>,
    /// AuthorizationPolicy and PeerAuthentication files or directories (ignored with `xds`).
    #[serde(default)]
    pub policies: Vec<PathBuf>,
    /// Istio's root namespace, whose policies apply mesh-wide (default `istio-system`).
    #[serde(default = "default_root_namespace")]
    pub root_namespace: String,
    /// Where the workloads' certificates come from.
    pub ca: CaSettings,
    /// What the proxy listens on.
    #[serde(default)]
    pub listeners: Listeners,
    /// HTTP/2 tuning of the HBONE client and server.
    #[serde(default)]
    pub h2: H2Settings,
    /// Dial HBONE from the source workload's IP (loopback mode), as a socket
    /// inside the pod's network namespace would.
    #[serde(default = "yes")]
    pub bind_source_ip: bool,
    /// How long open connections get to finish at shutdown (default 5 s).
    #[serde(default = "default_grace", deserialize_with = "duration")]
    pub drain_grace: Duration,
    /// How many finished connections `/debug/connections` keeps.
    #[serde(default = "default_connection_log")]
    pub connection_log: usize,
    /// Benchmarks only: replace HBONE between proxies by a lower rung of
    /// the cost ladder (`plain`: a TCP relay; `mtls`: mutual TLS without
    /// HTTP/2), with no policy at all. Not a mesh; needs the `bench-rungs` feature (the benchmark turns it on).
    #[serde(default)]
    pub bench_tunnel: Option<BenchTunnel>,
}

/// How many finished connections the connection log keeps by default.
pub const DEFAULT_CONNECTION_LOG: usize = 1000;

fn default_connection_log() -> usize {
    DEFAULT_CONNECTION_LOG
}

/// `kubernetes:` — build the registry from the cluster the proxy runs in.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KubernetesRegistry {
    /// Trust domain of the workloads' SPIFFE identities (default `cluster.local`).
    #[serde(default = "default_trust_domain")]
    pub trust_domain: String,
    /// How often the cluster's pods and services are listed again (default 5 s).
    #[serde(default = "default_poll", deserialize_with = "duration")]
    pub poll_interval: Duration,
}

fn default_trust_domain() -> String {
    "cluster.local".into()
}

fn default_poll() -> Duration {
    Duration::from_secs(5)
}

fn yes() -> bool {
    true
}

fn default_grace() -> Duration {
    Duration::from_secs(5)
}

impl ProxyConfig {
    /// A proxy fed by a control plane, every other setting at its default
    /// (what `hbone-lab proxy --xds` runs without a config file): the CA is
    /// the control plane's address, as with istiod.
    pub fn for_control_plane(
        node: &str,
        address: &str,
        root_cert: PathBuf,
        token_file: PathBuf,
    ) -> ProxyConfig {
        ProxyConfig {
            node: node.into(),
            registry: None,
            kubernetes: None,
            xds: Some(address.into()),
            zds: None,
            policies: Vec::new(),
            root_namespace: default_root_namespace(),
            ca: CaSettings {
                address: address.into(),
                root_cert,
                token_file,
                ttl: default_ttl(),
                crl: None,
            },
            listeners: Listeners::default(),
            h2: H2Settings::default(),
            bind_source_ip: true,
            drain_grace: default_grace(),
            connection_log: default_connection_log(),
            bench_tunnel: None,
        }
    }

    /// Reads the file; relative paths inside it are taken from its directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let max = hbone_policies::load::MAX_FILE_BYTES;
        let text =
            hbone_policies::load::read_bounded(path, max).map_err(|source| ConfigError::Read {
                file: file.clone(),
                source,
            })?;
        let mut config: ProxyConfig =
            parse_yaml(&text).map_err(|FieldError { field, message }| ConfigError::Field {
                file: file.clone(),
                field,
                message,
            })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let rebase = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        if let Some(registry) = config.registry.as_mut() {
            rebase(registry);
        }
        let sources = [
            config.registry.is_some(),
            config.kubernetes.is_some(),
            config.xds.is_some(),
        ];
        if sources.iter().filter(|s| **s).count() != 1 {
            return Err(ConfigError::Field {
                file,
                field: "registry".into(),
                message:
                    "give exactly one of `registry: <file>`, `kubernetes: {}` and `xds: <address>`"
                        .into(),
            });
        }
        config.policies.iter_mut().for_each(rebase);
        if let Some(zds) = config.zds.as_mut() {
            rebase(zds);
        }
        rebase(&mut config.ca.root_cert);
        rebase(&mut config.ca.token_file);
        if config.h2.max_frame_size < 16_384 || config.h2.max_frame_size > 16_777_215 {
            return Err(ConfigError::Field {
                file,
                field: "h2.maxFrameSize".into(),
                message: format!(
                    "{} is outside HTTP/2's 16384..=16777215",
                    config.h2.max_frame_size
                ),
            });
        }
        Ok(config)
    }
}

/// Which rung replaces HBONE (config `benchTunnel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BenchTunnel {
    /// A TCP relay between the proxies.
    Plain,
    /// Mutual TLS, one connection per proxied connection, no HTTP/2.
    Mtls,
}

impl BenchTunnel {
    /// The name in config and in benchmark labels.
    pub fn as_str(self) -> &'static str {
        match self {
            BenchTunnel::Plain => "plain",
            BenchTunnel::Mtls => "mtls",
        }
    }
}
