//! The HBONE client: mTLS + HTTP/2 connections to other proxies, pooled.
//!
//! A connection is keyed by (source identity, destination identity,
//! destination address, source IP): only traffic that would present the same
//! certificate to the same peer may share it. Each proxied TCP connection is
//! one HTTP/2 stream; a connection carries at most `maxStreamsPerConnection`
//! streams, and concurrent first requests for one key share a single dial.
//! Connections idle longer than `poolIdleTimeout` are released.
//!
//! Why a key may have several connections even below the stream limit: one
//! HTTP/2 connection is driven by one task, which encrypts and decrypts
//! every stream it carries, so however many worker threads the proxy has,
//! the streams of one connection share one thread's worth of cipher work.
//! A stream that finds every usable connection busy therefore gets a new
//! one, until the key has `parallelConnections` (by default one per worker
//! thread); past that, it joins the least busy. Streams one after another
//! (a request loop, new connections in turn) still share one connection.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::{RecvStream, SendStream};
use hbone_ca::Identity;
use hbone_ca::manager::Svid;
use http::{HeaderMap, Method, Request, StatusCode};
use rustls::pki_types::ServerName;
use thiserror::Error;
use tracing::{Instrument, debug, warn};

use crate::crl::{PeerChain, RevocationCheck};
use crate::observe::refusal::Reason;
use crate::state::{CoreError, ProxyCore};
use crate::tls::handshake_failure_reason;

/// Which connections may be shared.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct PoolKey {
    /// The identity we present: the source workload's.
    pub source: Identity,
    /// The identity the peer must present: the destination workload's.
    pub destination: Identity,
    /// The peer proxy's address: the destination's IP on the HBONE port.
    pub addr: SocketAddr,
    /// The source workload's IP to dial from, when `bindSourceIp` is on.
    pub source_ip: Option<IpAddr>,
}

impl PoolKey {
    /// The local workload this key's connections speak for: by its source
    /// address when the key has one (an index lookup), else the workload
    /// the identity indexes when it is local, else any local workload with
    /// that identity.
    fn source_workload(&self, core: &ProxyCore) -> Option<Arc<crate::registry::Workload>> {
        let registry = core.registry();
        let ours = |w: &&Arc<crate::registry::Workload>| {
            *w.node == *core.node && w.identity() == &self.source
        };
        if let Some(ip) = self.source_ip {
            return registry.workload_by_ip(ip).filter(ours).cloned();
        }
        registry
            .workload_by_identity(&self.source)
            .filter(ours)
            .or_else(|| registry.local_workloads(&core.node).find(ours))
            .cloned()
    }
}

/// What the pool's rules look at in one pooled connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    /// The peer closed it (GOAWAY), or its keep-alive failed.
    closed: bool,
    /// It was made with the source's current certificate.
    current_cert: bool,
    /// Streams it carries now.
    active: usize,
    /// The revocation lists now revoke the server's certificate.
    revoked: bool,
}

/// The connections a new stream may go to, in the order they are tried:
/// open, to a server whose certificate is not revoked, made with the
/// current certificate (after a renewal, new streams go to a connection
/// presenting the new one), below `max` streams.
fn usable(seen: &[Seen], max: usize) -> impl Iterator<Item = usize> + '_ {
    seen.iter()
        .enumerate()
        .filter(move |(_, c)| !c.closed && !c.revoked && c.current_cert && c.active < max)
        .map(|(i, _)| i)
}

/// Which connections a new stream may take, least busy first; none means
/// dial. While fewer than `spread_to` connections are usable and each
/// already carries a stream, a new connection is dialed instead, so busy
/// streams spread over up to `spread_to` connections (and so threads).
/// `spread_to` 0 or 1 never dials while one is usable.
fn candidates(seen: &[Seen], max: usize, spread_to: usize) -> Vec<usize> {
    let mut open: Vec<usize> = usable(seen, max).collect();
    open.sort_by_key(|&i| seen[i].active);
    let all_busy = open.first().is_none_or(|&i| seen[i].active > 0);
    if all_busy && open.len() < spread_to {
        open.clear();
    }
    open
}

/// Whether a connection leaves the pool: closed, to a server whose
/// certificate was revoked, or carrying nothing for `timeout` or longer.
fn released(seen: Seen, idle_for: Duration, timeout: Duration) -> bool {
    seen.closed || seen.revoked || (seen.active == 0 && idle_for >= timeout)
}

/// What was negotiated on a connection (for `demo --explain` and the admin page).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    /// TLS protocol version, like `TLSv1_3`.
    pub version: String,
    /// Negotiated cipher suite, like `TLS13_AES_128_GCM_SHA256`.
    pub cipher: String,
    /// Negotiated ALPN protocol (`h2`).
    pub alpn: String,
    /// Our end of the TCP connection.
    pub local: SocketAddr,
    /// The peer proxy's address.
    pub peer: SocketAddr,
}

/// Why an HBONE tunnel could not be opened.
#[derive(Debug, Error)]
pub enum TunnelError {
    /// The TCP connect to the peer proxy failed.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The peer proxy's address.
        addr: SocketAddr,
        /// The connect error.
        #[source]
        source: std::io::Error,
    },
    /// The TLS handshake with the peer proxy failed.
    #[error("TLS handshake with {addr} failed ({reason}): {source}")]
    Tls {
        /// The peer proxy's address.
        addr: SocketAddr,
        /// The refusal reason the handshake error maps to.
        reason: Reason,
        /// The handshake error.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP/2 handshake or the CONNECT request failed.
    #[error("HTTP/2 with {addr} failed: {source}")]
    H2 {
        /// The peer proxy's address.
        addr: SocketAddr,
        /// The HTTP/2 error.
        #[source]
        source: h2::Error,
    },
    /// The destination proxy answered the CONNECT with a status other than 200.
    #[error("the destination proxy refused the tunnel: {status} {reason}")]
    Refused {
        /// The status it answered.
        status: StatusCode,
        /// Its refusal header (`hbone-lab-refusal`), empty if it sent none.
        reason: String,
    },
    /// No certificate for the source workload, or no TLS configuration from it.
    #[error(transparent)]
    Core(#[from] CoreError),
    /// The TCP connect or the TLS handshake did not finish in time.
    #[error("{phase} to {addr} timed out after {after:?}")]
    Timeout {
        /// The step that ran out of time.
        phase: TunnelPhase,
        /// The peer proxy's address.
        addr: SocketAddr,
        /// The limit it ran into (`h2.connectTimeout` or `h2.handshakeTimeout`).
        after: Duration,
    },
}

/// Which step of opening a tunnel ran out of time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelPhase {
    /// Dialing the peer proxy (`h2.connectTimeout`).
    TcpConnect,
    /// The TLS handshake with it (`h2.handshakeTimeout`).
    TlsHandshake,
}

impl std::fmt::Display for TunnelPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TunnelPhase::TcpConnect => "the TCP connect",
            TunnelPhase::TlsHandshake => "the TLS handshake",
        })
    }
}

impl TunnelError {
    /// The refusal reason this error is counted and logged under.
    pub fn reason(&self) -> Reason {
        match self {
            TunnelError::Connect { .. } => Reason::ConnectFailed,
            TunnelError::Tls { reason, .. } => *reason,
            // Under TLS 1.3 a server judges the client's certificate after
            // the client's handshake is done: its refusal arrives as an
            // alert during the HTTP/2 handshake.
            TunnelError::H2 { source, .. } if alerted_revoked(source) => Reason::CertificateRevoked,
            TunnelError::H2 { .. } => Reason::H2Error,
            TunnelError::Refused { reason, .. }
                if reason == Reason::CertificateRevoked.as_str() =>
            {
                Reason::CertificateRevoked
            }
            TunnelError::Refused { status, .. } => match *status {
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Reason::PolicyDenied,
                StatusCode::BAD_REQUEST => Reason::BadRequest,
                _ => Reason::UpstreamUnavailable,
            },
            TunnelError::Core(_) => Reason::NoCertificate,
            TunnelError::Timeout { .. } => Reason::Timeout,
        }
    }
}

/// Whether `error` is the peer's TLS alert that our certificate is revoked.
/// The handshake's own error keeps the rustls error; h2 hands a stream
/// waiting on that connection a copy that keeps only its text.
fn alerted_revoked(error: &h2::Error) -> bool {
    error.get_io().is_some_and(io_alerted_revoked)
}

fn io_alerted_revoked(io: &std::io::Error) -> bool {
    let alert = rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRevoked);
    match io
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(tls) => *tls == alert,
        None => io.to_string() == alert.to_string(),
    }
}

struct PooledConnection {
    id: u64,
    /// The source certificate this connection presented; after a renewal,
    /// new streams go to a connection made with the new one.
    cert: Arc<Svid>,
    sender: h2::client::SendRequest<Bytes>,
    active: AtomicUsize,
    closed: Arc<AtomicBool>,
    idle_since: Mutex<Instant>,
    tls: TlsInfo,
    /// The server's certificate chain, for the revocation lists.
    server_chain: PeerChain,
}

impl PooledConnection {
    /// What the pool's rules look at, `cert` being the source's current one.
    fn seen(&self, cert: &Arc<Svid>, revocations: Option<&RevocationCheck>) -> Seen {
        Seen {
            closed: self.closed.load(Ordering::Acquire),
            current_cert: Arc::ptr_eq(&self.cert, cert),
            active: self.active.load(Ordering::Acquire),
            revoked: revocations.is_some_and(|check| self.server_chain.revoked(check)),
        }
    }
}

/// Keeps a stream's slot on its connection until dropped.
pub struct StreamGuard {
    conn: Arc<PooledConnection>,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if self.conn.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            *self.conn.idle_since.lock().expect("idle lock") = Instant::now();
        }
    }
}

/// An open CONNECT stream, answered 200.
pub struct Tunnel {
    /// Bytes towards the destination.
    pub send: SendStream<Bytes>,
    /// Bytes from the destination.
    pub recv: RecvStream,
    /// The destination proxy's response headers.
    pub response_headers: HeaderMap,
    /// The CONNECT request as sent (for teaching views).
    pub request_headers: HeaderMap,
    /// What the connection carrying the stream negotiated.
    pub tls: TlsInfo,
    /// Which pooled connection carries it: numbered from 1, in dial order.
    pub connection_id: u64,
    /// Holds the stream's slot on that connection until dropped.
    pub guard: StreamGuard,
}

impl Tunnel {
    /// The stream's two halves and its slot in the connection; the headers
    /// and TLS details, kept for the teaching views, are freed here rather
    /// than held for as long as the tunnel lives.
    pub fn into_stream(self) -> (SendStream<Bytes>, RecvStream, StreamGuard) {
        (self.send, self.recv, self.guard)
    }
}

/// The HBONE connections to other proxies, shared by every outbound connection of one proxy.
pub struct Pool {
    core: Arc<ProxyCore>,
    /// `parallelConnections`, 0 resolved to the runtime's worker threads.
    parallel: usize,
    conns: Mutex<HashMap<PoolKey, Vec<Arc<PooledConnection>>>>,
    dialing: Mutex<HashMap<PoolKey, Arc<tokio::sync::Mutex<()>>>>,
    next_id: AtomicU64,
}

impl Pool {
    /// An empty pool, with a task that releases idle connections (so, inside a Tokio runtime).
    pub fn new(core: Arc<ProxyCore>) -> Arc<Self> {
        let parallel = match core.h2.parallel_connections {
            0 => tokio::runtime::Handle::current().metrics().num_workers(),
            n => n,
        };
        let pool = Arc::new(Pool {
            core,
            parallel,
            conns: Mutex::new(HashMap::new()),
            dialing: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        });
        tokio::spawn(release_idle(Arc::downgrade(&pool)));
        pool
    }

    /// Connections dialed so far (each a TLS handshake).
    pub fn dials(&self) -> u64 {
        self.next_id.load(Ordering::Relaxed) - 1
    }

    /// Open connections, all keys.
    pub fn open_connections(&self) -> usize {
        self.conns
            .lock()
            .expect("pool lock")
            .values()
            .map(Vec::len)
            .sum()
    }

    /// Streams open now, all connections.
    pub fn streams(&self) -> usize {
        self.conns
            .lock()
            .expect("pool lock")
            .values()
            .flatten()
            .map(|c| c.active.load(Ordering::Acquire))
            .sum()
    }

    /// Over how many connections one key's busy streams spread.
    pub fn parallel_connections(&self) -> usize {
        self.parallel
    }

    /// A slot on a pooled connection for `key`, if one may take a stream
    /// ([`candidates`]; `spread` false while another dial for the key is
    /// under way, so this stream does not wait for it); the slot is taken
    /// atomically, so racing callers cannot overfill a connection.
    fn checkout(
        &self,
        key: &PoolKey,
        cert: &Arc<Svid>,
        spread: bool,
    ) -> Option<Arc<PooledConnection>> {
        let max = self.core.h2.max_streams_per_connection;
        let mut conns = self.conns.lock().expect("pool lock");
        let list = conns.get_mut(key)?;
        let trust = &self.core.trust;
        let check = (!trust.revocations().is_empty()).then(|| trust.revocation_check());
        // Closed connections, and those to a server since revoked, leave.
        list.retain(|c| {
            let seen = c.seen(cert, check.as_ref());
            !seen.closed && !seen.revoked
        });
        let seen: Vec<Seen> = list.iter().map(|c| c.seen(cert, check.as_ref())).collect();
        let spread_to = if spread { self.parallel } else { 0 };
        for i in candidates(&seen, max, spread_to) {
            let conn = &list[i];
            let mut current = conn.active.load(Ordering::Acquire);
            while current < max {
                match conn.active.compare_exchange(
                    current,
                    current + 1,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => return Some(conn.clone()),
                    Err(now) => current = now,
                }
            }
        }
        None
    }

    async fn connection(&self, key: &PoolKey) -> Result<Arc<PooledConnection>, TunnelError> {
        let cert = self
            .core
            .certs
            .get(&key.source)
            .await
            .map_err(CoreError::from)?;
        if let Some(conn) = self.checkout(key, &cert, true) {
            return Ok(conn);
        }
        let gate = self
            .dialing
            .lock()
            .expect("pool lock")
            .entry(key.clone())
            .or_default()
            .clone();
        let _dialing = match gate.try_lock() {
            Ok(dialing) => dialing,
            Err(_) => {
                // Another stream is dialing for this key: a busy connection
                // now beats a new one later.
                if let Some(conn) = self.checkout(key, &cert, false) {
                    return Ok(conn);
                }
                gate.lock().await
            }
        };
        if let Some(conn) = self.checkout(key, &cert, true) {
            return Ok(conn);
        }
        let conn = Arc::new(self.dial(key, cert).await?);
        conn.active.store(1, Ordering::Release);
        self.conns
            .lock()
            .expect("pool lock")
            .entry(key.clone())
            .or_default()
            .push(conn.clone());
        Ok(conn)
    }

    async fn dial(&self, key: &PoolKey, cert: Arc<Svid>) -> Result<PooledConnection, TunnelError> {
        let h2s = &self.core.h2;
        let config = self
            .core
            .trust
            .client_config(&cert, vec![key.destination.clone()])
            .map_err(CoreError::from)?;
        let addr = key.addr;
        let from = key.source_workload(&self.core);
        let tcp = tokio::time::timeout(
            h2s.connect_timeout,
            self.core.connect(from.as_deref(), key.source_ip, addr),
        )
        .await
        .map_err(|_| TunnelError::Timeout {
            phase: TunnelPhase::TcpConnect,
            addr,
            after: h2s.connect_timeout,
        })?
        .map_err(|source| TunnelError::Connect { addr, source })?;
        // Small frames (a request, a WINDOW_UPDATE) must not wait for an ACK.
        let _ = tcp.set_nodelay(true);
        let local = tcp
            .local_addr()
            .map_err(|source| TunnelError::Connect { addr, source })?;
        let connector = tokio_rustls::TlsConnector::from(config);
        let tls = tokio::time::timeout(
            h2s.handshake_timeout,
            connector.connect(ServerName::IpAddress(addr.ip().into()), tcp),
        )
        .await
        .map_err(|_| TunnelError::Timeout {
            phase: TunnelPhase::TlsHandshake,
            addr,
            after: h2s.handshake_timeout,
        })?
        .map_err(|source| TunnelError::Tls {
            addr,
            reason: handshake_failure_reason(&source),
            source,
        })?;
        let (info, server_chain) = {
            let (_, session) = tls.get_ref();
            let chain = session
                .peer_certificates()
                .map(|certs| certs.iter().map(|c| c.clone().into_owned()).collect())
                .unwrap_or_default();
            let info = TlsInfo {
                version: session
                    .protocol_version()
                    .map(|v| format!("{v:?}"))
                    .unwrap_or_default(),
                cipher: session
                    .negotiated_cipher_suite()
                    .map(|c| format!("{:?}", c.suite()))
                    .unwrap_or_default(),
                alpn: session
                    .alpn_protocol()
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .unwrap_or_default(),
                local,
                peer: addr,
            };
            (info, PeerChain::server(chain))
        };
        let (sender, mut connection) = h2::client::Builder::new()
            .initial_window_size(h2s.stream_window)
            .initial_connection_window_size(h2s.connection_window)
            .max_frame_size(h2s.max_frame_size)
            .max_header_list_size(16 * 1024)
            .enable_push(false)
            .handshake::<_, Bytes>(tls)
            .await
            .map_err(|source| TunnelError::H2 { addr, source })?;
        let closed = Arc::new(AtomicBool::new(false));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let flag = closed.clone();
        let keepalive = connection.ping_pong().map(|pp| {
            crate::net::keepalive::watch(pp, h2s.keepalive_interval, h2s.keepalive_timeout)
        });
        // Its own root: the connection serves many clients, not the one that opened it.
        let span = tracing::info_span!(parent: None, "hbone", connection = id, peer = %addr);
        let driver = async move {
            let watch = async {
                match keepalive {
                    Some(watch) => watch.await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                ended = connection => {
                    if let Err(e) = ended {
                        debug!(error = %e, "HBONE connection ended");
                    }
                }
                why = watch => {
                    // Rare, and at warn the span is off: name the peer here.
                    warn!(%addr, "{why}: dropping the HBONE connection and its streams");
                }
            }
            flag.store(true, Ordering::Release);
        };
        tokio::spawn(driver.instrument(span));
        debug!(connection = id, %addr, src = %key.source, dst = %key.destination, "HBONE connection established");
        Ok(PooledConnection {
            id,
            cert,
            sender,
            active: AtomicUsize::new(0),
            closed,
            idle_since: Mutex::new(Instant::now()),
            tls: info,
            server_chain,
        })
    }

    /// Opens a CONNECT stream to `authority` through a pooled connection for
    /// `key`. A stream the server did not take because it is closing that
    /// connection (GOAWAY, or REFUSED_STREAM) was never processed, so it is
    /// sent again, once, on a fresh connection: a peer proxy's drain costs
    /// no new connection.
    pub async fn open(
        &self,
        key: &PoolKey,
        authority: SocketAddr,
        headers: HeaderMap,
    ) -> Result<Tunnel, TunnelError> {
        match self.open_once(key, authority, &headers).await {
            Err(Attempt::Unprocessed(conn, source)) => {
                conn.closed.store(true, Ordering::Release);
                debug!(connection = conn.id, error = %source, "the peer is closing this HBONE connection: sending the stream again on a new one");
                drop(conn);
                self.open_once(key, authority, &headers)
                    .await
                    .map_err(|e| e.into_error(key.addr))
            }
            result => result.map_err(|e| e.into_error(key.addr)),
        }
    }

    async fn open_once(
        &self,
        key: &PoolKey,
        authority: SocketAddr,
        headers: &HeaderMap,
    ) -> Result<Tunnel, Attempt> {
        let conn = self.connection(key).await.map_err(Attempt::Failed)?;
        let guard = StreamGuard { conn: conn.clone() };
        let addr = key.addr;
        let h2_err = |source: h2::Error| {
            if source.is_go_away() || source.reason() == Some(h2::Reason::REFUSED_STREAM) {
                Attempt::Unprocessed(conn.clone(), source)
            } else {
                Attempt::Failed(TunnelError::H2 { addr, source })
            }
        };
        let mut request = Request::builder()
            .method(Method::CONNECT)
            .uri(authority.to_string())
            .version(http::Version::HTTP_2)
            .body(())
            .expect("a CONNECT request is well-formed");
        *request.headers_mut() = headers.clone();
        let mut sender = conn.sender.clone().ready().await.map_err(h2_err)?;
        let (response, send) = sender.send_request(request, false).map_err(h2_err)?;
        let response = response.await.map_err(h2_err)?;
        let (parts, recv) = response.into_parts();
        if parts.status != StatusCode::OK {
            let reason = parts
                .headers
                .get(crate::observe::refusal::REFUSAL_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            return Err(Attempt::Failed(TunnelError::Refused {
                status: parts.status,
                reason,
            }));
        }
        Ok(Tunnel {
            send,
            recv,
            response_headers: parts.headers,
            request_headers: headers.clone(),
            tls: conn.tls.clone(),
            connection_id: conn.id,
            guard,
        })
    }
}

/// How one attempt at a stream failed.
enum Attempt {
    /// The server never processed it: it may be sent again.
    Unprocessed(Arc<PooledConnection>, h2::Error),
    Failed(TunnelError),
}

impl Attempt {
    fn into_error(self, addr: SocketAddr) -> TunnelError {
        match self {
            Attempt::Unprocessed(_, source) => TunnelError::H2 { addr, source },
            Attempt::Failed(e) => e,
        }
    }
}

async fn release_idle(pool: Weak<Pool>) {
    loop {
        let period = match pool.upgrade() {
            Some(p) => (p.core.h2.pool_idle_timeout / 4)
                .clamp(Duration::from_millis(50), Duration::from_secs(30)),
            None => return,
        };
        tokio::time::sleep(period).await;
        let Some(pool) = pool.upgrade() else { return };
        let timeout = pool.core.h2.pool_idle_timeout;
        let trust = &pool.core.trust;
        let check = (!trust.revocations().is_empty()).then(|| trust.revocation_check());
        let mut conns = pool.conns.lock().expect("pool lock");
        for list in conns.values_mut() {
            list.retain(|c| {
                let seen = c.seen(&c.cert, check.as_ref());
                let idle_for = c.idle_since.lock().expect("idle lock").elapsed();
                let release = released(seen, idle_for, timeout);
                if release && !seen.closed {
                    debug!(connection = c.id, "releasing idle HBONE connection");
                }
                !release
            });
        }
        conns.retain(|_, list| !list.is_empty());
        // A key's dial gate goes with its last connection, unless a dial
        // holds it now.
        pool.dialing
            .lock()
            .expect("pool lock")
            .retain(|key, gate| conns.contains_key(key) || Arc::strong_count(gate) > 1);
        if conns.len() > 10_000 {
            warn!(keys = conns.len(), "the HBONE pool holds very many keys");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPEN: Seen = Seen {
        closed: false,
        current_cert: true,
        active: 0,
        revoked: false,
    };

    #[test]
    fn a_stream_goes_to_an_open_connection_with_the_current_certificate_and_room() {
        let cases: &[(&str, &[Seen], usize, &[usize])] = &[
            ("empty pool: dial", &[], 100, &[]),
            ("one idle connection", &[OPEN], 100, &[0]),
            (
                "full at the stream limit",
                &[Seen {
                    active: 100,
                    ..OPEN
                }],
                100,
                &[],
            ),
            (
                "one below the limit",
                &[Seen { active: 99, ..OPEN }],
                100,
                &[0],
            ),
            (
                "made with the old certificate: not for new streams",
                &[
                    Seen {
                        current_cert: false,
                        ..OPEN
                    },
                    OPEN,
                ],
                100,
                &[1],
            ),
            (
                "closed by GOAWAY",
                &[Seen {
                    closed: true,
                    ..OPEN
                }],
                100,
                &[],
            ),
            (
                "to a server whose certificate was revoked since",
                &[
                    Seen {
                        revoked: true,
                        ..OPEN
                    },
                    OPEN,
                ],
                100,
                &[1],
            ),
            (
                "tried in order, the full one skipped",
                &[OPEN, Seen { active: 1, ..OPEN }, OPEN],
                1,
                &[0, 2],
            ),
        ];
        for (name, seen, max, expected) in cases {
            let got: Vec<usize> = usable(seen, *max).collect();
            assert_eq!(&got, expected, "{name}");
        }
    }

    #[test]
    fn busy_streams_spread_over_up_to_spread_to_connections_then_share_the_least_busy() {
        let busy = |active| Seen { active, ..OPEN };
        let cases: &[(&str, &[Seen], usize, &[usize])] = &[
            ("empty pool: dial", &[], 4, &[]),
            ("an idle connection is taken", &[busy(1), OPEN], 4, &[1, 0]),
            (
                "every one busy, room to spread: dial",
                &[busy(1), busy(2)],
                4,
                &[],
            ),
            (
                "every one busy, spread reached: the least busy first",
                &[busy(3), busy(1), busy(2)],
                3,
                &[1, 2, 0],
            ),
            ("no spreading: the busy one", &[busy(5)], 1, &[0]),
            ("another dial under way: the busy one", &[busy(5)], 0, &[0]),
            (
                "only usable connections count towards the spread",
                &[
                    Seen {
                        current_cert: false,
                        ..OPEN
                    },
                    busy(1),
                ],
                2,
                &[],
            ),
        ];
        for (name, seen, spread_to, expected) in cases {
            let got = candidates(seen, 100, *spread_to);
            assert_eq!(&got, expected, "{name}");
        }
    }

    #[test]
    fn a_revocation_alert_is_recognised_whole_or_as_the_copy_a_stream_gets() {
        let alert = rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRevoked);
        let whole = std::io::Error::new(std::io::ErrorKind::InvalidData, alert.clone());
        let copy = std::io::Error::other(alert.to_string());
        let other = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(rustls::AlertDescription::BadCertificate),
        );
        assert!(io_alerted_revoked(&whole));
        assert!(io_alerted_revoked(&copy));
        assert!(!io_alerted_revoked(&other));
        assert!(!alerted_revoked(&h2::Error::from(
            h2::Reason::PROTOCOL_ERROR
        )));
    }

    #[test]
    fn a_connection_is_released_when_closed_or_idle_past_the_timeout() {
        let minute = Duration::from_secs(60);
        let cases = [
            (
                "busy, however long",
                Seen { active: 3, ..OPEN },
                2 * minute,
                false,
            ),
            ("idle, not yet", OPEN, minute / 2, false),
            ("idle, at the timeout", OPEN, minute, true),
            (
                "to a revoked server, at once, busy or not",
                Seen {
                    revoked: true,
                    active: 2,
                    ..OPEN
                },
                Duration::ZERO,
                true,
            ),
            (
                "closed, at once",
                Seen {
                    closed: true,
                    active: 2,
                    ..OPEN
                },
                Duration::ZERO,
                true,
            ),
        ];
        for (name, seen, idle_for, expected) in cases {
            assert_eq!(released(seen, idle_for, minute), expected, "{name}");
        }
    }
}
