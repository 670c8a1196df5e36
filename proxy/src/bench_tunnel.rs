//! Benchmark-only tunnels: the lower rungs of the cost ladder.
//!
//! HBONE is three layers over TCP — a relay, mutual TLS, HTTP/2 CONNECT —
//! and nobody can say what each costs from outside one proxy. With
//! `benchTunnel:` in its config, this proxy swaps the top layers out on the
//! same two-proxy path, so a benchmark can price them one at a time:
//!
//! - `plain`: a TCP relay. The sending proxy dials the peer's port 15008,
//!   names the target in a preamble, and copies bytes; no TLS, no identity.
//! - `mtls`: the same inside one mutual-TLS connection per proxied
//!   connection (the workloads' certificates, SPIFFE verification, TLS 1.3,
//!   ALPN `hbone-lab-bench-mtls`), without HTTP/2: no pooling, no streams.
//!
//! Neither is a mesh: there are no policies (no AuthorizationPolicy, no
//! PeerAuthentication), and a plain relay carries no identity at all. The
//! proxy says so in its log when it starts, and a peer speaking HBONE meets
//! a bench listener's refusal. The preamble is one byte of length and the
//! target `ip:port` in ASCII; the target must be the local workload the
//! connection arrived for, on a port that is not the proxy's.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

pub use crate::config::BenchTunnel;
use crate::inbound::hbone::PROXY_PORTS;
use crate::net::listen::Listening;
use crate::observe::refusal::{Direction, Reason};
use crate::registry::Workload;
use crate::state::{CoreError, ProxyCore};

/// The ALPN of the `mtls` rung: never `h2`, so no HBONE peer mistakes it.
pub const ALPN_BENCH_MTLS: &[u8] = b"hbone-lab-bench-mtls";
/// Copy buffers of the lower rungs, each way (tokio's `copy_bidirectional`).
const BUFFER: usize = 64 * 1024;

/// Why a benchmark tunnel could not be opened or accepted.
#[derive(Debug, Error)]
pub enum BenchTunnelError {
    /// The sending proxy could not dial the peer proxy's port 15008.
    #[error("cannot reach the peer proxy at {addr}: {source}")]
    Connect {
        /// The peer proxy's address.
        addr: SocketAddr,
        /// The dial error.
        #[source]
        source: std::io::Error,
    },
    /// No certificate yet, or no TLS configuration from it.
    #[error(transparent)]
    Setup(#[from] CoreError),
    /// The mutual-TLS handshake of the `mtls` rung failed.
    #[error("TLS with {addr}: {source}")]
    Tls {
        /// The peer's address (sending side) or our own (receiving side).
        addr: SocketAddr,
        /// The handshake error.
        #[source]
        source: std::io::Error,
    },
    /// The preamble is not a length byte and an `ip:port`.
    #[error("the preamble: {0}")]
    Preamble(String),
    /// The preamble could not be written or read.
    #[error("the preamble: {0}")]
    PreambleIo(#[source] std::io::Error),
    /// The target is not the local workload the connection arrived for, or a proxy port.
    #[error("the preamble names {target}, not a port of this connection's workload")]
    Target {
        /// The address named, or the local one no workload holds.
        target: SocketAddr,
    },
    /// The receiving proxy could not dial the target workload.
    #[error("cannot reach the destination {target}: {source}")]
    Upstream {
        /// The target the preamble named.
        target: SocketAddr,
        /// The dial error.
        #[source]
        source: std::io::Error,
    },
}

impl BenchTunnelError {
    /// The refusal reason this error is counted and logged under.
    pub fn reason(&self) -> Reason {
        match self {
            BenchTunnelError::Connect { .. } => Reason::ConnectFailed,
            BenchTunnelError::Setup(_) => Reason::NoCertificate,
            BenchTunnelError::Tls { .. } => Reason::TlsHandshake,
            BenchTunnelError::Preamble(_) | BenchTunnelError::PreambleIo(_) => Reason::BadAuthority,
            BenchTunnelError::Target { .. } => Reason::AuthorityMismatch,
            BenchTunnelError::Upstream { .. } => Reason::UpstreamUnreachable,
        }
    }
}

/// A byte stream of either rung.
pub trait BenchStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> BenchStream for T {}

/// An opened rung, as the outbound path carries it.
pub struct BenchUpstream {
    stream: Box<dyn BenchStream>,
    mode: BenchTunnel,
}

impl BenchUpstream {
    /// Whether this rung is mutual TLS (the metrics' security policy label).
    pub fn mtls(&self) -> bool {
        self.mode == BenchTunnel::Mtls
    }

    /// Carries bytes both ways until both ends are done: the bytes sent on,
    /// the bytes back, and the error that ended it early, if one did.
    pub async fn relay(mut self, mut client: TcpStream) -> (u64, u64, Option<std::io::Error>) {
        match tokio::io::copy_bidirectional_with_sizes(
            &mut client,
            &mut self.stream,
            BUFFER,
            BUFFER,
        )
        .await
        {
            Ok((up, down)) => (up, down, None),
            Err(e) => (0, 0, Some(e)),
        }
    }
}

/// Puts `mode` (from the config's `benchTunnel`) in place of HBONE, saying
/// loudly that what runs is not a mesh.
pub fn install(core: ProxyCore, mode: Option<BenchTunnel>) -> ProxyCore {
    if let Some(mode) = mode {
        let rung = match mode {
            BenchTunnel::Plain => "a TCP relay",
            BenchTunnel::Mtls => "mutual TLS without HTTP/2",
        };
        tracing::warn!(
            tunnel = mode.as_str(),
            "benchTunnel is set: connections between proxies are a benchmark rung ({rung}), not HBONE, and no policy is enforced — this is not a mesh"
        );
    }
    core.with_bench_tunnel(mode)
}

fn bench_alpn<C: Clone>(config: &Arc<C>, alpn: impl FnOnce(&mut C)) -> Arc<C> {
    let mut config = C::clone(config);
    alpn(&mut config);
    Arc::new(config)
}

async fn write_preamble<S: AsyncWrite + Unpin>(
    stream: &mut S,
    target: SocketAddr,
) -> Result<(), BenchTunnelError> {
    let text = target.to_string();
    let mut preamble = Vec::with_capacity(text.len() + 1);
    preamble.push(text.len() as u8);
    preamble.extend_from_slice(text.as_bytes());
    stream
        .write_all(&preamble)
        .await
        .map_err(BenchTunnelError::PreambleIo)
}

async fn read_preamble<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<SocketAddr, BenchTunnelError> {
    let len = stream
        .read_u8()
        .await
        .map_err(BenchTunnelError::PreambleIo)?;
    let mut text = vec![0u8; len as usize];
    stream
        .read_exact(&mut text)
        .await
        .map_err(BenchTunnelError::PreambleIo)?;
    std::str::from_utf8(&text)
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| {
            BenchTunnelError::Preamble(format!(
                "{:?} is not ip:port",
                String::from_utf8_lossy(&text)
            ))
        })
}

/// The sending side: from `source` to `target` (a meshed workload, known
/// as `destination`) through the peer proxy's port `hbone_port`.
pub async fn open(
    core: &ProxyCore,
    mode: BenchTunnel,
    source: &Workload,
    destination: &Workload,
    target: SocketAddr,
) -> Result<BenchUpstream, BenchTunnelError> {
    let addr = SocketAddr::new(target.ip(), core.hbone_port);
    let bind_ip = core.bind_source_ip.then(|| source.ips[0]);
    let tcp = core
        .connect(Some(source), bind_ip, addr)
        .await
        .map_err(|source| BenchTunnelError::Connect { addr, source })?;
    let _ = tcp.set_nodelay(true);
    let mut stream: Box<dyn BenchStream> = match mode {
        BenchTunnel::Plain => Box::new(tcp),
        BenchTunnel::Mtls => {
            let svid = core
                .certs
                .get(source.identity())
                .await
                .map_err(CoreError::from)?;
            let config = core
                .trust
                .client_config(&svid, vec![destination.identity().clone()])
                .map_err(CoreError::from)?;
            let config = bench_alpn(&config, |c| c.alpn_protocols = vec![ALPN_BENCH_MTLS.into()]);
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(ServerName::IpAddress(addr.ip().into()), tcp)
                .await
                .map_err(|source| BenchTunnelError::Tls { addr, source })?;
            Box::new(tls)
        }
    };
    write_preamble(&mut stream, target).await?;
    Ok(BenchUpstream { stream, mode })
}

/// The receiving side, on a local workload's port 15008, until `shutdown`.
/// Serves nothing unless a rung is installed.
pub async fn serve(core: Arc<ProxyCore>, on: Listening) {
    let Some(mode) = core.bench_tunnel else {
        return;
    };
    let gate = core.gate(Direction::Inbound);
    on.accept("bench tunnel", gate, move |tcp, peer| {
        let core = core.clone();
        async move {
            if let Err(e) = accept(&core, mode, tcp).await {
                core.report(Direction::Inbound, Some(peer), None)
                    .refuse(e.reason(), format_args!("{} tunnel: {e}", mode.as_str()));
            }
        }
    })
    .await
}

async fn accept(
    core: &ProxyCore,
    mode: BenchTunnel,
    tcp: TcpStream,
) -> Result<(), BenchTunnelError> {
    let local = tcp.local_addr().map_err(BenchTunnelError::PreambleIo)?;
    let workload = core
        .local_workload(local.ip())
        .ok_or(BenchTunnelError::Target { target: local })?;
    match mode {
        BenchTunnel::Plain => carry_in(core, &workload, tcp).await,
        BenchTunnel::Mtls => {
            let config = core.server_config(workload.identity()).await?;
            let config = bench_alpn(&config, |c| c.alpn_protocols = vec![ALPN_BENCH_MTLS.into()]);
            let tls = tokio_rustls::TlsAcceptor::from(config)
                .accept(tcp)
                .await
                .map_err(|source| BenchTunnelError::Tls {
                    addr: local,
                    source,
                })?;
            carry_in(core, &workload, tls).await
        }
    }
}

async fn carry_in<S: AsyncRead + AsyncWrite + Unpin + Send>(
    core: &ProxyCore,
    workload: &Workload,
    mut stream: S,
) -> Result<(), BenchTunnelError> {
    let target = read_preamble(&mut stream).await?;
    if !workload.ips.contains(&target.ip()) || PROXY_PORTS.contains(&target.port()) {
        return Err(BenchTunnelError::Target { target });
    }
    let mut upstream = core
        .connect(Some(workload), None, target)
        .await
        .map_err(|source| BenchTunnelError::Upstream { target, source })?;
    let _ = upstream.set_nodelay(true);
    let _ =
        tokio::io::copy_bidirectional_with_sizes(&mut stream, &mut upstream, BUFFER, BUFFER).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_preamble_names_the_target_and_nothing_more() {
        let (mut a, mut b) = tokio::io::duplex(256);
        let target: SocketAddr = "10.0.0.7:8080".parse().unwrap();
        write_preamble(&mut a, target).await.unwrap();
        a.write_all(b"payload").await.unwrap();
        assert_eq!(read_preamble(&mut b).await.unwrap(), target);
        let mut rest = [0u8; 7];
        b.read_exact(&mut rest).await.unwrap();
        assert_eq!(
            &rest, b"payload",
            "the bytes after the preamble are the stream's"
        );
    }

    #[tokio::test]
    async fn a_preamble_that_is_not_an_address_is_refused() {
        let (mut a, mut b) = tokio::io::duplex(256);
        a.write_all(b"\x05PRI *").await.unwrap();
        let e = read_preamble(&mut b).await.unwrap_err();
        assert_eq!(e.reason(), Reason::BadAuthority, "{e}");
    }
}
