//! The destination a connection had before iptables REDIRECT sent it to
//! the proxy: the kernel remembers it, and `SO_ORIGINAL_DST` gives it back.
//! Both capture listeners (outbound 15001, plaintext inbound 15006) and the
//! lab's SNI relay start from it.

use std::net::SocketAddr;

use tokio::net::TcpStream;

/// The destination before iptables REDIRECT, or `None` when the connection was not redirected.
pub fn original_destination(tcp: &TcpStream) -> Option<SocketAddr> {
    let sock = socket2::SockRef::from(tcp);
    let original = sock
        .original_dst_v4()
        .ok()
        .or_else(|| sock.original_dst_v6().ok())?;
    let original = original.as_socket()?;
    let local = tcp.local_addr().ok()?;
    (original != local).then_some(original)
}
