//! How a workload opens a connection.
//!
//! In network-namespace mode a workload just connects: its pod's iptables
//! rules hand the connection to the proxy, invisibly. In loopback mode there
//! is nothing to redirect, so the workload asks its node proxy's SOCKS5 port
//! instead, from its own pod address, which tells the proxy who is asking.

use std::net::{IpAddr, SocketAddr};

use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

#[derive(Debug, Error)]
/// Why a connection could not be opened.
pub enum DialError {
    #[error("cannot connect to {target}: {source}")]
    /// The network did not connect.
    Connect {
        /// `host:port` asked for.
        target: String,
        #[source]
        /// The operating system's reason.
        source: std::io::Error,
    },
    #[error("the mesh refused {target}: {reason}")]
    /// The mesh said no (a SOCKS5 refusal).
    Refused {
        /// `host:port` asked for.
        target: String,
        /// The SOCKS5 reply code in words.
        reason: &'static str,
    },
}

impl DialError {
    /// True when the mesh (not the network) said no.
    pub fn is_policy(&self) -> bool {
        matches!(self, DialError::Refused { reason, .. } if reason.contains("not allowed"))
    }
}

/// Opens a TCP connection to an address; see [`Dialer::Custom`].
pub trait Connect: Send + Sync + std::fmt::Debug {
    /// Starts connecting to `addr`.
    fn connect(&self, addr: SocketAddr) -> futures_lite::BoxedConnect;

    /// An address for `host` from this connector's own name table (a pod's
    /// view of DNS); `None` falls back to the system resolver.
    fn resolve(&self, _host: &str) -> Option<IpAddr> {
        None
    }
}

/// The future a [`Connect`] returns.
pub mod futures_lite {
    /// A boxed connecting future, so that [`super::Connect`] stays object-safe.
    pub type BoxedConnect = std::pin::Pin<
        Box<dyn std::future::Future<Output = std::io::Result<tokio::net::TcpStream>> + Send>,
    >;
}

/// A way to open TCP connections.
#[derive(Debug, Clone)]
pub enum Dialer {
    /// Plain connect (captured transparently where a mesh is present).
    Direct,
    /// A caller-supplied way to open sockets, for example inside a pod's
    /// network namespace (the benchmarks' client pod).
    Custom(std::sync::Arc<dyn Connect>),
    /// Through a SOCKS5 proxy, from `source` (the pod's address).
    Socks5 {
        /// The proxy's SOCKS5 port.
        proxy: SocketAddr,
        /// The address to connect from, when given.
        source: Option<IpAddr>,
    },
}

fn socks5_reason(code: u8) -> &'static str {
    match code {
        0x01 => "general failure",
        0x02 => "connection not allowed by ruleset (policy)",
        0x03 => "network unreachable",
        0x04 => "host unreachable",
        0x05 => "connection refused",
        0x06 => "TTL expired",
        0x07 => "command not supported",
        0x08 => "address type not supported",
        _ => "unknown SOCKS5 error",
    }
}

impl Dialer {
    /// Reads `HBONE_SOCKS5` (`ip:port`) and `HBONE_SOURCE_IP`; without them, direct.
    pub fn from_env() -> Self {
        match std::env::var("HBONE_SOCKS5")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            Some(proxy) => Dialer::Socks5 {
                proxy,
                source: std::env::var("HBONE_SOURCE_IP")
                    .ok()
                    .and_then(|v| v.parse().ok()),
            },
            None => Dialer::Direct,
        }
    }

    /// Connects to `host:port` (an IP or a name).
    pub async fn connect(&self, host: &str, port: u16) -> Result<TcpStream, DialError> {
        let target = format!("{host}:{port}");
        let io = |source| DialError::Connect {
            target: target.clone(),
            source,
        };
        match self {
            Dialer::Custom(connector) => {
                let addr: SocketAddr = match host
                    .parse::<IpAddr>()
                    .ok()
                    .or_else(|| connector.resolve(host))
                {
                    Some(ip) => SocketAddr::new(ip, port),
                    None => tokio::net::lookup_host((host, port))
                        .await
                        .map_err(io)?
                        .next()
                        .ok_or_else(|| io(std::io::ErrorKind::NotFound.into()))?,
                };
                connector.connect(addr).await.map_err(io)
            }
            Dialer::Direct => {
                let tcp = TcpStream::connect((host, port)).await.map_err(io)?;
                let _ = tcp.set_nodelay(true);
                Ok(tcp)
            }
            Dialer::Socks5 { proxy, source } => {
                let socket = if proxy.is_ipv4() {
                    TcpSocket::new_v4()
                } else {
                    TcpSocket::new_v6()
                }
                .map_err(io)?;
                if let Some(ip) = source {
                    socket.bind(SocketAddr::new(*ip, 0)).map_err(io)?;
                }
                let mut tcp = socket.connect(*proxy).await.map_err(io)?;
                let _ = tcp.set_nodelay(true);
                tcp.write_all(&[0x05, 0x01, 0x00]).await.map_err(io)?;
                let mut choice = [0u8; 2];
                tcp.read_exact(&mut choice).await.map_err(io)?;
                let mut request = vec![0x05, 0x01, 0x00];
                match host.parse::<IpAddr>() {
                    Ok(IpAddr::V4(ip)) => {
                        request.push(0x01);
                        request.extend_from_slice(&ip.octets());
                    }
                    Ok(IpAddr::V6(ip)) => {
                        request.push(0x04);
                        request.extend_from_slice(&ip.octets());
                    }
                    Err(_) => {
                        request.push(0x03);
                        request.push(host.len() as u8);
                        request.extend_from_slice(host.as_bytes());
                    }
                }
                request.extend_from_slice(&port.to_be_bytes());
                tcp.write_all(&request).await.map_err(io)?;
                let mut head = [0u8; 4];
                tcp.read_exact(&mut head).await.map_err(io)?;
                let rest = match head[3] {
                    0x04 => 16 + 2,
                    0x03 => tcp.read_u8().await.map_err(io)? as usize + 2,
                    _ => 4 + 2,
                };
                let mut skip = vec![0u8; rest];
                tcp.read_exact(&mut skip).await.map_err(io)?;
                if head[1] != 0 {
                    return Err(DialError::Refused {
                        target,
                        reason: socks5_reason(head[1]),
                    });
                }
                Ok(tcp)
            }
        }
    }
}
