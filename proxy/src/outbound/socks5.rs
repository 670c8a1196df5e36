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
use tokio::net::TcpStream;

use crate::net::listen::Listening;
use crate::observe::refusal::{Direction, Reason};
use crate::outbound::{Outbound, OutboundError};
use crate::registry::Workload;
use crate::state::ProxyCore;

const DIRECTION: Direction = Direction::Socks5;

/// Why a SOCKS5 client was refused before its connection was opened.
#[derive(Debug, Error)]
pub enum Socks5Error {
    /// The first byte is not version 5; it holds that byte.
    #[error("not a SOCKS5 greeting (first byte {0:#04x}; SOCKS5 starts with 0x05)")]
    NotSocks5(u8),
    /// The greeting does not offer "no authentication" (0x00).
    #[error("the client offers no method this proxy supports (only 'no authentication')")]
    NoAcceptableMethod,
    /// The request's command is not CONNECT (0x01); it holds the command.
    #[error("command {0:#04x} is not supported (only CONNECT, 0x01)")]
    UnsupportedCommand(u8),
    /// The request's address type is not IPv4, IPv6 or a name; it holds the type.
    #[error("address type {0:#04x} is not supported")]
    UnsupportedAddressType(u8),
    /// A host name neither a service of the registry nor DNS resolves; it holds the name.
    #[error("cannot resolve {0}")]
    Unresolvable(String),
    /// The client's IP is not a workload on this node.
    #[error("the source {0} is not a workload on this node")]
    UnknownSource(IpAddr),
    /// The client did not finish its greeting and request within this time.
    #[error("no complete SOCKS5 request within {0:?}")]
    Silent(std::time::Duration),
    /// Reading from or writing to the client failed.
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

/// Serves SOCKS5 clients on `listener` until `shutdown`, each connection a task on `tasks`.
pub async fn serve(core: Arc<ProxyCore>, outbound: Arc<Outbound>, on: Listening) {
    let gate = core.gate(DIRECTION);
    on.accept("SOCKS5", gate, move |tcp, peer| {
        let (core, outbound) = (core.clone(), outbound.clone());
        async move { handle(&core, &outbound, tcp, peer).await }
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

async fn handle(core: &ProxyCore, outbound: &Outbound, mut tcp: TcpStream, peer: SocketAddr) {
    let mut report = outbound.report(DIRECTION, peer);
    // Each refusal is counted before the client hears of it, so that what
    // a client sees is already in the metrics and the log.
    let (source, dst) = match accept(core, &mut tcp, peer).await {
        Ok(accepted) => accepted,
        Err(e) => {
            let answer = matches!(e, Socks5Error::UnknownSource(_));
            report.refuse(e.reason(), e);
            if answer {
                let _ = send_reply(&mut tcp, reply::NOT_ALLOWED, unspecified()).await;
            }
            return;
        }
    };
    let record = report.record();
    record.dst_addr = Some(dst);
    record.src_workload = Some(source.clone());
    match outbound.open(&source, peer, dst).await {
        Ok((upstream, route)) => {
            let bound = tcp.local_addr().unwrap_or_else(|_| unspecified());
            if let Err(e) = send_reply(&mut tcp, reply::SUCCEEDED, bound).await {
                return report.refuse(Reason::Socks5Io, e);
            }
            outbound.relay(report, tcp, &source, upstream, route).await;
        }
        Err(e) => {
            let code = reply_code(&e);
            report.refuse(e.reason(), e);
            // The client may already be gone; the refusal is what counts.
            let _ = send_reply(&mut tcp, code, unspecified()).await;
        }
    }
}

/// The SOCKS5 exchange up to the request, and the local workload it comes
/// from: where it wants to go.
async fn accept(
    core: &ProxyCore,
    tcp: &mut TcpStream,
    peer: SocketAddr,
) -> Result<(Arc<Workload>, SocketAddr), Socks5Error> {
    // A client that connects and then says nothing (or too little) is cut
    // after the handshake timeout, so it cannot hold a task and a socket.
    let limit = core.h2.handshake_timeout;
    let dst = tokio::time::timeout(limit, negotiate(core, tcp))
        .await
        .map_err(|_| Socks5Error::Silent(limit))??;
    let Some(source) = core.local_workload(peer.ip()) else {
        return Err(Socks5Error::UnknownSource(peer.ip()));
    };
    Ok((source, dst))
}

/// What a SOCKS5 request asks to reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// An IPv4 or IPv6 address (ATYP 1 or 4) and port.
    Addr(SocketAddr),
    /// A host name (ATYP 3) and port, resolved by the proxy.
    Name(String, u16),
}

/// The greeting (VER, NMETHODS, METHODS…) at the start of `buf`: its
/// length once complete and acceptable, `None` while more bytes are needed.
/// Pure, so that it can be fuzzed.
pub fn parse_greeting(buf: &[u8]) -> Result<Option<usize>, Socks5Error> {
    let Some(&version) = buf.first() else {
        return Ok(None);
    };
    if version != 0x05 {
        return Err(Socks5Error::NotSocks5(version));
    }
    let Some(&n) = buf.get(1) else {
        return Ok(None);
    };
    let end = 2 + usize::from(n);
    let Some(methods) = buf.get(2..end) else {
        return Ok(None);
    };
    if !methods.contains(&0x00) {
        return Err(Socks5Error::NoAcceptableMethod);
    }
    Ok(Some(end))
}

/// The request (VER, CMD, RSV, ATYP, DST.ADDR, DST.PORT) at the start of
/// `buf`: the target and the request's length once complete, `None` while
/// more bytes are needed.
pub fn parse_request(buf: &[u8]) -> Result<Option<(Target, usize)>, Socks5Error> {
    let Some(head) = buf.get(..4) else {
        return Ok(None);
    };
    if head[0] != 0x05 {
        return Err(Socks5Error::NotSocks5(head[0]));
    }
    if head[1] != 0x01 {
        return Err(Socks5Error::UnsupportedCommand(head[1]));
    }
    let port_at = |at: usize| {
        buf.get(at..at + 2)
            .map(|p| u16::from_be_bytes([p[0], p[1]]))
    };
    Ok(match head[3] {
        0x01 => buf.get(4..8).zip(port_at(8)).map(|(ip, port)| {
            let ip = Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]);
            (Target::Addr(SocketAddr::new(IpAddr::V4(ip), port)), 10)
        }),
        0x04 => buf.get(4..20).zip(port_at(20)).map(|(ip, port)| {
            let ip: [u8; 16] = ip.try_into().expect("16 bytes");
            (
                Target::Addr(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port)),
                22,
            )
        }),
        0x03 => {
            let Some(&len) = buf.get(4) else {
                return Ok(None);
            };
            let end = 5 + usize::from(len);
            buf.get(5..end).zip(port_at(end)).map(|(name, port)| {
                let name = String::from_utf8_lossy(name).into_owned();
                (Target::Name(name, port), end + 2)
            })
        }
        other => return Err(Socks5Error::UnsupportedAddressType(other)),
    })
}

/// Reads until `parse` finds a complete message at the start of `buf`;
/// consumes it.
async fn read_message<T>(
    tcp: &mut TcpStream,
    buf: &mut Vec<u8>,
    parse: impl Fn(&[u8]) -> Result<Option<(T, usize)>, Socks5Error>,
) -> Result<T, Socks5Error> {
    loop {
        if let Some((value, used)) = parse(buf)? {
            buf.drain(..used);
            return Ok(value);
        }
        // A greeting or a request is at most 262 bytes; read no more than that.
        let mut chunk = [0u8; 262];
        let n = tcp.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The greeting and the request, up to the destination asked for,
/// answering each as SOCKS5 says.
async fn negotiate(core: &ProxyCore, tcp: &mut TcpStream) -> Result<SocketAddr, Socks5Error> {
    let mut buf = Vec::with_capacity(64);
    match read_message(tcp, &mut buf, |b| Ok(parse_greeting(b)?.map(|n| ((), n)))).await {
        Ok(()) => tcp.write_all(&[0x05, 0x00]).await?,
        Err(e @ Socks5Error::NoAcceptableMethod) => {
            tcp.write_all(&[0x05, 0xff]).await?;
            return Err(e);
        }
        Err(e) => return Err(e),
    }
    let target = match read_message(tcp, &mut buf, parse_request).await {
        Ok(target) => target,
        Err(e) => {
            let code = match e {
                Socks5Error::UnsupportedCommand(_) => Some(reply::COMMAND_NOT_SUPPORTED),
                Socks5Error::UnsupportedAddressType(_) => Some(reply::ADDRESS_TYPE_NOT_SUPPORTED),
                _ => None,
            };
            if let Some(code) = code {
                send_reply(tcp, code, unspecified()).await?;
            }
            return Err(e);
        }
    };
    match target {
        Target::Addr(addr) => Ok(addr),
        Target::Name(name, port) => match resolve_name(core, &name, port).await {
            Some(addr) => Ok(addr),
            None => {
                send_reply(tcp, reply::HOST_UNREACHABLE, unspecified()).await?;
                Err(Socks5Error::Unresolvable(name))
            }
        },
    }
}

fn reply_code(e: &OutboundError) -> u8 {
    match e.reason() {
        Reason::PolicyDenied | Reason::ProxyPort => reply::NOT_ALLOWED,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greeting_and_request_parse_whole_in_part_and_wrong() {
        let greeting = [0x05, 0x02, 0x02, 0x00];
        assert_eq!(parse_greeting(&greeting).unwrap(), Some(4));
        assert_eq!(
            parse_greeting(&greeting[..3]).unwrap(),
            None,
            "needs its methods"
        );
        assert!(matches!(
            parse_greeting(&[0x05, 0x01, 0x02]),
            Err(Socks5Error::NoAcceptableMethod)
        ));
        assert!(matches!(
            parse_greeting(b"GET /"),
            Err(Socks5Error::NotSocks5(0x47))
        ));
        let v4 = [0x05, 0x01, 0x00, 0x01, 10, 0, 0, 1, 0x1f, 0x90];
        assert_eq!(
            parse_request(&v4).unwrap(),
            Some((Target::Addr("10.0.0.1:8080".parse().unwrap()), 10))
        );
        for cut in 0..v4.len() {
            assert_eq!(parse_request(&v4[..cut]).unwrap(), None, "{cut} bytes");
        }
        let name = [&[0x05, 0x01, 0x00, 0x03, 4][..], b"echo", &[0, 80]].concat();
        assert_eq!(
            parse_request(&name).unwrap(),
            Some((Target::Name("echo".into(), 80), 11))
        );
        assert!(matches!(
            parse_request(&[0x05, 0x02, 0, 1]),
            Err(Socks5Error::UnsupportedCommand(2))
        ));
        assert!(matches!(
            parse_request(&[0x05, 0x01, 0, 9]),
            Err(Socks5Error::UnsupportedAddressType(9))
        ));
    }
}
