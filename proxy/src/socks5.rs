//! SOCKS5 outbound (port 15080): the way into the mesh when nothing is
//! redirected — loopback mode, unprivileged. The client's source IP says
//! which workload it is; the SOCKS5 CONNECT says where it wants to go.
//! Only the no-authentication method and the CONNECT command are offered
//! (RFC 1928). The reply is sent after the tunnel is up, so a policy refusal
//! reaches the client as SOCKS5 reply 0x02, "not allowed by ruleset".

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

use crate::core::ProxyCore;
use crate::outbound::{Outbound, OutboundError};
use crate::refusal::{Direction, Reason};

const DIRECTION: Direction = Direction::Socks5;

#[derive(Debug, Error)]
pub enum Socks5Error {
    #[error("not a SOCKS5 greeting (first byte {0:#04x}; SOCKS5 starts with 0x05)")]
    NotSocks5(u8),
    #[error("the client offers no method this proxy supports (only 'no authentication')")]
    NoAcceptableMethod,
    #[error("command {0:#04x} is not supported (only CONNECT, 0x01)")]
    UnsupportedCommand(u8),
    #[error("address type {0:#04x} is not supported")]
    UnsupportedAddressType(u8),
    #[error("cannot resolve {0}")]
    Unresolvable(String),
    #[error("the source {0} is not a workload on this node")]
    UnknownSource(IpAddr),
    #[error("no complete SOCKS5 request within {0:?}")]
    Silent(std::time::Duration),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl Socks5Error {
    fn reason(&self) -> Reason {
        match self {
            Socks5Error::NotSocks5(_) => Reason::NotSocks5,
            Socks5Error::NoAcceptableMethod => Reason::Socks5Method,
            Socks5Error::UnsupportedCommand(_) => Reason::Socks5Command,
            Socks5Error::UnsupportedAddressType(_) => Reason::Socks5AddressType,
            Socks5Error::Unresolvable(_) => Reason::Unresolvable,
            Socks5Error::UnknownSource(_) => Reason::UnknownSource,
            Socks5Error::Silent(_) => Reason::ClientTimeout,
            Socks5Error::Io(_) => Reason::Socks5Io,
        }
    }
}

/// SOCKS5 reply codes.
mod reply {
    pub const SUCCEEDED: u8 = 0x00;
    pub const GENERAL_FAILURE: u8 = 0x01;
    pub const NOT_ALLOWED: u8 = 0x02;
    pub const HOST_UNREACHABLE: u8 = 0x04;
    pub const CONNECTION_REFUSED: u8 = 0x05;
    pub const COMMAND_NOT_SUPPORTED: u8 = 0x07;
    pub const ADDRESS_TYPE_NOT_SUPPORTED: u8 = 0x08;
}

pub async fn serve(
    core: Arc<ProxyCore>,
    outbound: Arc<Outbound>,
    listener: TcpListener,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    crate::listen::accept_loop(listener, shutdown, tasks, "SOCKS5", move |tcp, peer| {
        let (core, outbound) = (core.clone(), outbound.clone());
        async move {
            if let Err(e) = handle(&core, &outbound, tcp, peer).await {
                core.metrics.refused(DIRECTION, e.reason());
                warn!(%peer, reason = %e.reason(), error = %e, "SOCKS5 request refused");
            }
        }
    })
    .await
}

async fn send_reply(tcp: &mut TcpStream, code: u8, bound: SocketAddr) -> std::io::Result<()> {
    let mut out = vec![0x05, code, 0x00];
    match bound.ip() {
        IpAddr::V4(ip) => {
            out.push(0x01);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(0x04);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&bound.port().to_be_bytes());
    tcp.write_all(&out).await
}

fn unspecified() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0)
}

async fn handle(
    core: &ProxyCore,
    outbound: &Outbound,
    mut tcp: TcpStream,
    peer: SocketAddr,
) -> Result<(), Socks5Error> {
    // A client that connects and then says nothing (or too little) is cut
    // after the handshake timeout, so it cannot hold a task and a socket.
    let limit = core.h2.handshake_timeout;
    let dst = tokio::time::timeout(limit, negotiate(core, &mut tcp))
        .await
        .map_err(|_| Socks5Error::Silent(limit))??;

    let Some(source) = core
        .registry()
        .workload_by_ip(peer.ip())
        .filter(|w| w.node == core.node)
        .cloned()
    else {
        send_reply(&mut tcp, reply::NOT_ALLOWED, unspecified()).await?;
        return Err(Socks5Error::UnknownSource(peer.ip()));
    };
    match outbound.open(&source, peer, dst).await {
        Ok((upstream, route)) => {
            let bound = tcp.local_addr().unwrap_or_else(|_| unspecified());
            send_reply(&mut tcp, reply::SUCCEEDED, bound).await?;
            outbound.relay(tcp, peer, &source, upstream, route).await;
        }
        Err(e) => {
            outbound.record_failure(DIRECTION, &source, dst, &e);
            send_reply(&mut tcp, reply_code(&e), unspecified()).await?;
        }
    }
    Ok(())
}

/// The greeting and the request, up to the destination asked for.
async fn negotiate(core: &ProxyCore, tcp: &mut TcpStream) -> Result<SocketAddr, Socks5Error> {
    // Greeting: VER, NMETHODS, METHODS…
    let version = tcp.read_u8().await?;
    if version != 0x05 {
        return Err(Socks5Error::NotSocks5(version));
    }
    let n = tcp.read_u8().await? as usize;
    let mut methods = vec![0u8; n];
    tcp.read_exact(&mut methods).await?;
    if !methods.contains(&0x00) {
        tcp.write_all(&[0x05, 0xff]).await?;
        return Err(Socks5Error::NoAcceptableMethod);
    }
    tcp.write_all(&[0x05, 0x00]).await?;

    // Request: VER, CMD, RSV, ATYP, DST.ADDR, DST.PORT
    let mut head = [0u8; 4];
    tcp.read_exact(&mut head).await?;
    if head[0] != 0x05 {
        return Err(Socks5Error::NotSocks5(head[0]));
    }
    if head[1] != 0x01 {
        send_reply(tcp, reply::COMMAND_NOT_SUPPORTED, unspecified()).await?;
        return Err(Socks5Error::UnsupportedCommand(head[1]));
    }
    let dst = match head[3] {
        0x01 => {
            let mut ip = [0u8; 4];
            tcp.read_exact(&mut ip).await?;
            SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), tcp.read_u16().await?)
        }
        0x04 => {
            let mut ip = [0u8; 16];
            tcp.read_exact(&mut ip).await?;
            SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), tcp.read_u16().await?)
        }
        0x03 => {
            let len = tcp.read_u8().await? as usize;
            let mut name = vec![0u8; len];
            tcp.read_exact(&mut name).await?;
            let port = tcp.read_u16().await?;
            let name = String::from_utf8_lossy(&name).into_owned();
            match resolve_name(core, &name, port).await {
                Some(addr) => addr,
                None => {
                    send_reply(tcp, reply::HOST_UNREACHABLE, unspecified()).await?;
                    return Err(Socks5Error::Unresolvable(name));
                }
            }
        }
        other => {
            send_reply(tcp, reply::ADDRESS_TYPE_NOT_SUPPORTED, unspecified()).await?;
            return Err(Socks5Error::UnsupportedAddressType(other));
        }
    };
    Ok(dst)
}

fn reply_code(e: &OutboundError) -> u8 {
    match e.reason() {
        Reason::PolicyDenied => reply::NOT_ALLOWED,
        Reason::NoRoute => reply::HOST_UNREACHABLE,
        Reason::ConnectFailed | Reason::UpstreamUnavailable => reply::CONNECTION_REFUSED,
        _ => reply::GENERAL_FAILURE,
    }
}

/// Service hostnames resolve to their VIP; anything else through the system resolver.
async fn resolve_name(core: &ProxyCore, name: &str, port: u16) -> Option<SocketAddr> {
    if let Some(service) = core.registry().service_by_host(name) {
        return service.vips.first().map(|ip| SocketAddr::new(*ip, port));
    }
    tokio::net::lookup_host((name, port)).await.ok()?.next()
}
