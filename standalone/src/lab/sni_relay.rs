//! The netns lab's stand-in for Cilium's Envoy on a node: TLS connections
//! that a `serverNames` rule covers are redirected here, their ClientHello is
//! read (not decrypted: the server name travels in clear), and they are
//! passed on to their original destination only when the name is allowed.
//! Otherwise the connection is reset, as Cilium resets a handshake whose
//! SNI its policy does not name.
//!
//! The ClientHello is read by [`client_hello_sni`], forty lines of our own,
//! rather than by `tls-parser`: it needs one field of the first record, and
//! a full TLS parser (with `nom`) for that is more to trust, not less. What
//! upstream fuzzing would give, ours gets here: the fuzz target
//! `client_hello` (run by `scripts/fuzz-smoke.sh` in CI) throws arbitrary
//! bytes at it, and a test reads a real rustls ClientHello.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hbone_proxy::net::original_dst::original_destination;
use hbone_proxy::net::pod_sockets::{Netns, tcp_socket};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

/// One decision of the relay, kept for the demo's evidence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SniEvent {
    /// The redirected client's address and port.
    pub client: SocketAddr,
    /// Where the client was going (its original destination), when it could be read.
    pub destination: Option<SocketAddr>,
    /// The server name of its ClientHello, if it sent one.
    pub sni: Option<String>,
    /// Whether the relay passed the connection on (else it reset it).
    pub allowed: bool,
}

/// What one relay enforces and what it saw.
#[derive(Debug)]
pub struct SniRelay {
    /// The policy rule this relay stands for (`cnp demo/x egress[0]`).
    pub rule: String,
    /// The rule's `serverNames` patterns, as written.
    pub server_names: Vec<String>,
    /// Where onward connections are made (the node's namespace).
    pub netns: Netns,
    /// Every decision so far, oldest first.
    pub events: Mutex<Vec<SniEvent>>,
}

/// The server name in a TLS ClientHello record, if there is one.
///
/// Layout: record header (5), handshake header (4), version (2), random
/// (32), session id, cipher suites, compression methods, then extensions;
/// extension 0 (server_name) holds a list whose host_name entry (type 0) is
/// the name.
pub fn client_hello_sni(record: &[u8]) -> Option<String> {
    let mut r = Reader(record);
    if r.u8()? != 0x16 {
        return None;
    }
    r.skip(2)?;
    let len = r.u16()? as usize;
    let mut hs = Reader(r.take(len)?);
    if hs.u8()? != 0x01 {
        return None;
    }
    let body_len = hs.u24()?;
    let mut body = Reader(hs.take(body_len)?);
    body.skip(2 + 32)?;
    let session = body.u8()? as usize;
    body.skip(session)?;
    let suites = body.u16()? as usize;
    body.skip(suites)?;
    let compression = body.u8()? as usize;
    body.skip(compression)?;
    let ext_len = body.u16()? as usize;
    let mut exts = Reader(body.take(ext_len)?);
    while let (Some(kind), Some(len)) = (exts.u16(), exts.u16()) {
        let data = exts.take(len as usize)?;
        if kind != 0 {
            continue;
        }
        let mut list = Reader(data);
        let list_len = list.u16()? as usize;
        let mut names = Reader(list.take(list_len)?);
        while let Some(name_type) = names.u8() {
            let n = names.u16()? as usize;
            let name = names.take(n)?;
            if name_type == 0 {
                return String::from_utf8(name.to_vec()).ok();
            }
        }
    }
    None
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn skip(&mut self, n: usize) -> Option<()> {
        self.take(n).map(|_| ())
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn u24(&mut self) -> Option<usize> {
        self.take(3)
            .map(|b| (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]))
    }
}

/// Reads until a whole TLS record is buffered (or 2 s pass, or 16 KiB).
async fn read_first_record(tcp: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(2048);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        if buf.len() >= 5 {
            let want = 5 + usize::from(u16::from_be_bytes([buf[3], buf[4]]));
            if buf.len() >= want || buf.len() >= 16 * 1024 {
                return Ok(buf);
            }
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, tcp.read(&mut chunk))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        if n == 0 {
            return Ok(buf);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

impl SniRelay {
    /// Whether `sni` matches one of the rule's server names.
    pub fn allows(&self, sni: &str) -> bool {
        self.server_names
            .iter()
            .any(|pattern| hbone_policies::cilium::eval::sni_matches(pattern, sni))
    }

    /// Serves redirected connections until the task is dropped.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        while let Ok((tcp, client)) = listener.accept().await {
            let relay = self.clone();
            tokio::spawn(async move { relay.handle(tcp, client).await });
        }
    }

    async fn handle(&self, mut tcp: TcpStream, client: SocketAddr) {
        let destination = original_destination(&tcp);
        let hello = read_first_record(&mut tcp).await.unwrap_or_default();
        let sni = client_hello_sni(&hello);
        let allowed = destination.is_some() && sni.as_deref().is_some_and(|s| self.allows(s));
        self.events.lock().expect("events").push(SniEvent {
            client,
            destination,
            sni: sni.clone(),
            allowed,
        });
        let shown = sni.as_deref().unwrap_or("(none)");
        let Some(dst) = destination.filter(|_| allowed) else {
            tracing::info!(%client, sni = shown, rule = %self.rule, "SNI not in serverNames: handshake reset");
            let _ = socket2::SockRef::from(&tcp).set_linger(Some(Duration::ZERO));
            return;
        };
        tracing::info!(%client, %dst, sni = shown, rule = %self.rule, "SNI allowed");
        let upstream = match tcp_socket(Some(&self.netns), dst, None, None) {
            Ok(socket) => socket.connect(dst).await,
            Err(e) => Err(std::io::Error::other(e)),
        };
        let Ok(mut upstream) = upstream else {
            let _ = socket2::SockRef::from(&tcp).set_linger(Some(Duration::ZERO));
            return;
        };
        use tokio::io::AsyncWriteExt;
        if upstream.write_all(&hello).await.is_ok() {
            let _ = tokio::io::copy_bidirectional(&mut tcp, &mut upstream).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_server_name_of_a_real_client_hello() {
        // A ClientHello as rustls writes it, captured through a pipe.
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("api.github.com").unwrap();
        let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut wire = Vec::new();
        conn.write_tls(&mut wire).unwrap();
        assert_eq!(client_hello_sni(&wire).as_deref(), Some("api.github.com"));
        assert_eq!(client_hello_sni(&wire[..20]), None, "truncated");
        assert_eq!(client_hello_sni(b"GET / HTTP/1.1\r\n\r\n"), None, "not TLS");
    }
}
