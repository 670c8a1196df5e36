//! HBONE inbound (port 15008): the receiving side, where policy is enforced.
//!
//! For each accepted TCP connection: find the local workload it arrived for
//! (by local address), present that workload's certificate, require the
//! peer's (TLS 1.3, ALPN h2, chain to the mesh root, our trust domain), then
//! serve HTTP/2. Each CONNECT stream is checked — method, authority, that
//! the authority is this workload, PeerAuthentication and
//! AuthorizationPolicy — and only then is the upstream dialed and 200 sent.
//! Every refusal carries a status, a reason (in the `hbone-lab-refusal`
//! response header, the log and the `hbone_refusals_total` metric).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use h2::server::SendResponse;
use hbone_ca::Identity;
use hbone_policies::decision::Decision;
use http::{Method, Request, Response, StatusCode};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, warn};

use crate::authorize::decide_peer;
use crate::authorize::open_streams::Stream;
use crate::crl::PeerChain;
use crate::net::copy::bidirectional;
use crate::net::listen::Listening;
use crate::observe::connection_log::TlsRecord;
use crate::observe::metrics::ConnectionLabels;
use crate::observe::refusal::{Direction, REFUSAL_HEADER, Reason};
use crate::observe::report::ConnectionReport;
use crate::registry::Workload;
use crate::state::ProxyCore;
use crate::tls::{ALPN_H2, handshake_failure_reason, identity_of};

/// Ports of the proxy itself; a CONNECT to one of them is refused (as ztunnel does).
pub const PROXY_PORTS: [u16; 8] = [15000, 15001, 15006, 15008, 15020, 15021, 15053, 15080];

const DIRECTION: Direction = Direction::Inbound;
/// Streams a peer may reset before they are accepted (h2's rapid-reset guard).
const PENDING_RESETS: usize = 50;
/// Streams the proxy may reset for a peer's protocol errors.
const LOCAL_ERROR_RESETS: usize = 1024;

/// Accepts HBONE connections until `shutdown`.
pub async fn serve(core: Arc<ProxyCore>, on: Listening) {
    let (stop, spawner) = (on.shutdown.clone(), on.tasks.clone());
    let gate = core.gate(DIRECTION);
    on.accept("HBONE", gate, move |tcp, peer| {
        handle_connection(core.clone(), tcp, peer, stop.clone(), spawner.clone())
    })
    .await
}

async fn handle_connection(
    core: Arc<ProxyCore>,
    tcp: TcpStream,
    peer: SocketAddr,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let Ok(local) = tcp.local_addr() else { return };
    let span = tracing::Span::current();
    // Refused before any stream: the connection is the log's entry.
    let refuse = |reason: Reason, detail: &dyn std::fmt::Display| {
        core.report(DIRECTION, Some(peer), Some(local))
            .refuse(reason, detail)
    };
    let mut resolved_in = core.registry();
    let Some(mut workload) = core.local_workload(local.ip()) else {
        refuse(
            Reason::NoLocalWorkload,
            &format!(
                "no workload of node {} has address {}",
                core.node,
                local.ip()
            ),
        );
        return;
    };
    span.record("dst.workload", &*workload.name);
    let config = match core.server_config(workload.identity()).await {
        Ok(c) => c,
        Err(e) => return refuse(Reason::NoCertificate, &e),
    };
    let handshake = tokio_rustls::TlsAcceptor::from(config).accept(tcp);
    let tls = match tokio::time::timeout(core.h2.handshake_timeout, handshake).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return refuse(handshake_failure_reason(&e), &e),
        Err(_) => return refuse(Reason::HandshakeTimeout, &"no TLS handshake in time"),
    };
    let (peer_identity, tls_version, tls_record, peer_chain) = {
        let (_, session) = tls.get_ref();
        if session.alpn_protocol() != Some(ALPN_H2) {
            return refuse(
                Reason::Alpn,
                &format!(
                    "ALPN {:?} negotiated; HBONE needs h2",
                    session.alpn_protocol().map(String::from_utf8_lossy)
                ),
            );
        }
        let identity = session
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or(crate::tls::PeerIdentityError::NoCertificate)
            .and_then(identity_of);
        let record = TlsRecord {
            version: session
                .protocol_version()
                .map_or("-".into(), |v| format!("{v:?}")),
            cipher: session
                .negotiated_cipher_suite()
                .map_or("-".into(), |c| format!("{:?}", c.suite())),
            alpn: "h2".into(),
        };
        let chain = session
            .peer_certificates()
            .map(|certs| certs.iter().map(|c| c.clone().into_owned()).collect())
            .unwrap_or_default();
        match identity {
            Ok(id) => (
                id,
                format!("{:?}", session.protocol_version()),
                Arc::new(record),
                Arc::new(PeerChain::client(chain)),
            ),
            Err(e) => return refuse(e.reason(), &e),
        }
    };
    let h2s = &core.h2;
    // What bounds a hostile peer with a valid certificate: streams beyond
    // serverMaxStreams are refused with a reason (503 too_many_streams);
    // header blocks, CONTINUATION frames included, are capped at 64 KiB;
    // more than PENDING_RESETS streams reset before we accept them (rapid
    // reset) or LOCAL_ERROR_RESETS streams we had to reset for the peer's
    // errors close the connection (GOAWAY ENHANCE_YOUR_CALM); what is queued
    // for a peer that never opens its window is bounded by h2's send buffer.
    let connection = h2::server::Builder::new()
        .initial_window_size(h2s.stream_window)
        .initial_connection_window_size(h2s.connection_window)
        .max_frame_size(h2s.max_frame_size)
        .max_header_list_size(64 * 1024)
        .max_pending_accept_reset_streams(PENDING_RESETS)
        .max_local_error_reset_streams(Some(LOCAL_ERROR_RESETS))
        .handshake::<_, Bytes>(tls);
    // A peer that completes TLS and then sends no HTTP/2 preface is cut
    // after the handshake timeout, as one that never finishes TLS is.
    let mut connection = match tokio::time::timeout(core.h2.handshake_timeout, connection).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return refuse(Reason::H2Handshake, &e),
        Err(_) => {
            return refuse(
                Reason::ClientTimeout,
                &"TLS completed, but no HTTP/2 preface in time",
            );
        }
    };
    span.record("src.identity", tracing::field::display(&peer_identity));
    tracing::debug!(tls = %tls_version, "HBONE connection accepted");
    let active = Arc::new(AtomicUsize::new(0));
    let peer_identity = Arc::new(peer_identity);
    let mut draining = false;
    // A peer that stopped answering (gone without a FIN) is dropped, with
    // every stream on the connection, instead of held until TCP gives up.
    let pings = connection.ping_pong().expect("taken once, here");
    let mut keepalive = std::pin::pin!(crate::net::keepalive::watch(
        pings,
        core.h2.keepalive_interval,
        core.h2.keepalive_timeout,
    ));
    // A new edition of the revocation lists may name the peer: then the
    // whole connection ends (its streams are closed by
    // ProxyCore::close_revoked), as ztunnel ends it, instead of staying
    // open, refusing stream after stream, until the peer's pool lets go.
    let mut editions = core.trust.revocations().editions();
    editions.mark_unchanged();
    let mut watching = true;
    loop {
        let next = tokio::select! {
            n = connection.accept() => n,
            why = &mut keepalive => {
                tracing::debug!(%why, "HBONE connection dropped: the peer stopped answering");
                break;
            }
            edition = editions.changed(), if watching => {
                if edition.is_err() {
                    watching = false;
                } else if peer_chain.revoked(&core.trust.revocation_check()) {
                    watching = false;
                    let mut report = core.report(DIRECTION, Some(peer), Some(local));
                    report.record().src_identity = Some(peer_identity.clone());
                    report.refuse(
                        Reason::CertificateRevoked,
                        "connection closed: the peer's certificate was revoked",
                    );
                    connection.abrupt_shutdown(h2::Reason::NO_ERROR);
                }
                continue;
            }
            _ = shutdown.cancelled(), if !draining => {
                draining = true;
                connection.graceful_shutdown();
                continue;
            }
        };
        match next {
            Some(Ok((request, respond))) => {
                // A pooled connection outlives registry versions: each
                // stream is judged against the workload's record as it is
                // now (its listed policies may have changed). One that has
                // left keeps the record it was accepted with.
                let now = core.registry();
                if !Arc::ptr_eq(&now, &resolved_in) {
                    if let Some(current) = core.local_workload(local.ip()) {
                        workload = current;
                    }
                    resolved_in = now;
                }
                let ctx = StreamContext {
                    core: core.clone(),
                    tls: tls_record.clone(),
                    workload: workload.clone(),
                    peer_identity: peer_identity.clone(),
                    peer_chain: peer_chain.clone(),
                    peer,
                    local,
                    active: active.clone(),
                };
                ctx.handle(request, respond, &tasks);
            }
            Some(Err(e)) => {
                if e.is_go_away() && e.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM) {
                    // Our own GOAWAY: the peer crossed one of the limits above.
                    let mut report = core.report(DIRECTION, Some(peer), Some(local));
                    report.record().src_identity = Some(peer_identity.clone());
                    report.refuse(
                        Reason::H2Abuse,
                        format_args!("connection closed: the peer abused HTTP/2 (too many resets or errors): {e}"),
                    );
                } else if !e.is_go_away() && !e.is_io() {
                    warn!(error = %e, "HBONE connection error");
                }
                break;
            }
            None => break,
        }
    }
}

struct StreamContext {
    core: Arc<ProxyCore>,
    tls: Arc<TlsRecord>,
    workload: Arc<Workload>,
    peer_identity: Arc<Identity>,
    peer_chain: Arc<PeerChain>,
    peer: SocketAddr,
    local: SocketAddr,
    active: Arc<AtomicUsize>,
}

struct ActiveStream(Arc<AtomicUsize>);

/// Why a CONNECT is refused: the status answered, the reason counted, what the log says.
#[derive(Debug)]
pub struct Refusal {
    /// The HTTP status the CONNECT is answered with.
    pub status: StatusCode,
    /// The reason the refusal is counted and logged under.
    pub reason: Reason,
    /// What went wrong, for the log, the connection log and the refusal header.
    pub detail: String,
    /// The policies' decision, when they refused it.
    pub decision: Option<Decision>,
}

/// What a CONNECT request asks to reach, checked before any policy: the
/// method, an `ip:port` `:authority`, that the address is the one the
/// connection arrived for (`local`) and one of its workload's, and that the
/// port is not one of the proxy's own (a stream must not loop through it).
/// Pure, so the fuzzer can throw arbitrary requests at it.
pub fn connect_target(
    request: &http::request::Parts,
    local: IpAddr,
    workload_ips: &[IpAddr],
) -> Result<SocketAddr, Refusal> {
    if request.method != Method::CONNECT {
        let detail = format!("method {} (HBONE accepts only CONNECT)", request.method);
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            Reason::NotConnect,
            detail,
        ));
    }
    let authority = request.uri.authority().map_or("", |a| a.as_str());
    let Ok(target) = authority.parse::<SocketAddr>() else {
        let detail = format!(":authority {authority:?} is not ip:port");
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            Reason::BadAuthority,
            detail,
        ));
    };
    if target.ip() != local || !workload_ips.contains(&target.ip()) {
        let detail = format!("{target} is not the workload this connection arrived for ({local})");
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            Reason::AuthorityMismatch,
            detail,
        ));
    }
    if PROXY_PORTS.contains(&target.port()) {
        let detail = format!("port {} belongs to the proxy", target.port());
        return Err(Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            Reason::ProxyPort,
            detail,
        ));
    }
    Ok(target)
}

impl Refusal {
    /// A refusal with no policy decision attached.
    pub fn new(status: StatusCode, reason: Reason, detail: impl Into<String>) -> Self {
        Refusal {
            status,
            reason,
            detail: detail.into(),
            decision: None,
        }
    }
}

impl Drop for ActiveStream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl StreamContext {
    /// The report of a stream to `dst` on this connection.
    fn report(&self, dst: SocketAddr) -> ConnectionReport<'_> {
        let mut report = self.core.report(DIRECTION, Some(self.peer), Some(dst));
        let record = report.record();
        record.src_identity = Some(self.peer_identity.clone());
        record.dst_workload = Some(self.workload.clone());
        record.tls = Some(self.tls.clone());
        report
    }

    fn refuse(&self, mut respond: SendResponse<Bytes>, refusal: Refusal) {
        let Refusal {
            status,
            reason,
            detail,
            decision,
        } = refusal;
        let mut report = self.report(self.local);
        report.record().decision = decision.map(Arc::new);
        report.refuse(reason, detail);
        // The peer learns the reason's class only: which policy refused it
        // (and why) stays in this proxy's log and connection log.
        let response = Response::builder()
            .status(status)
            .header(REFUSAL_HEADER, reason.as_str())
            .body(())
            .expect("a status and a header make a response");
        let _ = respond.send_response(response, true);
    }

    /// Admits or refuses one CONNECT stream, here on the connection's task;
    /// an admitted stream gets a task of its own for the dial and the relay.
    fn handle(
        self,
        request: Request<h2::RecvStream>,
        respond: SendResponse<Bytes>,
        tasks: &TaskTracker,
    ) {
        let slot = ActiveStream(self.active.clone());
        let (parts, body) = request.into_parts();
        match self.admit(&parts) {
            Ok((stream, decision)) => {
                // A child of the connection's span (current here, on its task).
                let span = tracing::info_span!("stream", dst.addr = %stream.target);
                let relay = self.connect_and_relay(slot, body, respond, stream, decision);
                tasks.spawn(relay.instrument(span));
            }
            Err(refusal) => self.refuse(respond, refusal),
        }
    }

    /// Dials the workload, answers 200 and carries the bytes. An async block
    /// rather than an async fn, and one level deep: an idle tunnel's task is
    /// this state, and async fns keep a second copy of their arguments.
    #[allow(clippy::manual_async_fn)] // on purpose: see above
    fn connect_and_relay(
        self,
        slot: ActiveStream,
        recv: h2::RecvStream,
        mut respond: SendResponse<Bytes>,
        stream: Stream,
        decision: Decision,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        async move {
            let target = stream.target;
            let decision = Arc::new(decision);
            let dial = self.core.connect(Some(&self.workload), None, target);
            let dial = Box::pin(tokio::time::timeout(self.core.h2.connect_timeout, dial));
            let upstream = match dial.await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    let detail = format!("{target}: {e}");
                    let status = StatusCode::SERVICE_UNAVAILABLE;
                    let refusal = Refusal::new(status, Reason::UpstreamUnreachable, detail);
                    return self.refuse(respond, refusal);
                }
                Err(_) => {
                    let detail = format!("{target}: connect timed out");
                    let status = StatusCode::SERVICE_UNAVAILABLE;
                    let refusal = Refusal::new(status, Reason::UpstreamUnreachable, detail);
                    return self.refuse(respond, refusal);
                }
            };
            let _ = upstream.set_nodelay(true);
            let source = self
                .core
                .registry()
                .workload_by_identity(&self.peer_identity)
                .cloned();
            let labels = ConnectionLabels::new(
                "destination",
                source.as_deref(),
                Some(self.peer_identity.to_string()),
                Some(&self.workload),
                None,
                true,
            );
            let response = Response::builder()
                .status(StatusCode::OK)
                .body(())
                .expect("200");
            let mut report = self.report(target);
            let record = report.record();
            record.src_workload = source;
            record.decision = Some(decision);
            let open = report.open(labels);
            let send = match respond.send_response(response, false) {
                Ok(s) => s,
                Err(e) => {
                    warn!(error = %e, "cannot answer the CONNECT");
                    return open.finish(0, 0, false, Some(&e));
                }
            };
            drop(respond);
            let entry = self.core.established.insert(stream);
            let relay = bidirectional(upstream, send, recv).revocable(entry.revocation.clone());
            let (moved, error) = relay.await;
            let revoked = entry.revocation.reason().is_some();
            drop((entry, slot));
            let error = error.as_ref().map(|e| e as &dyn std::fmt::Display);
            open.finish(moved.to_tunnel, moved.from_tunnel, revoked, error);
        }
    }

    /// Checks a CONNECT request against the stream limit, the protocol, the
    /// target and the policies; on success, the target and the allowing rule.
    fn admit(&self, request: &http::request::Parts) -> Result<(Stream, Decision), Refusal> {
        let limit = self.core.h2.server_max_streams;
        if self.active.fetch_add(1, Ordering::AcqRel) >= limit {
            return Err(Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                Reason::TooManyStreams,
                format!("this connection already carries {limit} streams"),
            ));
        }
        let target = connect_target(request, self.local.ip(), &self.workload.ips)?;
        if self.core.own.contains(target) {
            let detail = format!("{target} is the proxy's own listener");
            return Err(Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                Reason::ProxyPort,
                detail,
            ));
        }
        // A certificate revoked after this connection's handshake: no new
        // stream on it (the open ones are closed by ProxyCore::close_revoked).
        if !self.core.trust.revocations().is_empty()
            && self.peer_chain.revoked(&self.core.trust.revocation_check())
        {
            return Err(Refusal::new(
                StatusCode::UNAUTHORIZED,
                Reason::CertificateRevoked,
                "the peer's certificate was revoked after this connection began",
            ));
        }
        let stream = Stream {
            peer_identity: self.peer_identity.clone(),
            src_ip: self.peer.ip(),
            target,
            workload: self.workload.clone(),
            peer_chain: self.peer_chain.clone(),
        };
        let decision = decide_peer(
            &self.core.policies(),
            &stream.workload,
            &stream.peer_identity,
            stream.src_ip,
            stream.target,
        );
        if !decision.allowed {
            let mut refusal = Refusal::new(
                StatusCode::UNAUTHORIZED,
                Reason::PolicyDenied,
                decision.reason.clone(),
            );
            refusal.decision = Some(decision);
            return Err(refusal);
        }
        Ok((stream, decision))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(method: Method, authority: &str) -> http::request::Parts {
        let uri = http::Uri::builder()
            .authority(authority)
            .build()
            .unwrap_or_else(|_| http::Uri::from_static("/"));
        Request::builder()
            .method(method)
            .uri(uri)
            .body(())
            .unwrap()
            .into_parts()
            .0
    }

    #[test]
    fn connect_admission_decides_each_case() {
        let local: IpAddr = "10.0.0.2".parse().unwrap();
        let ips = [local];
        /// (method, :authority, the target admitted or the refusal's status and reason)
        type Case = (
            Method,
            &'static str,
            Result<&'static str, (StatusCode, Reason)>,
        );
        let cases: [Case; 7] = [
            (Method::CONNECT, "10.0.0.2:8080", Ok("10.0.0.2:8080")),
            (
                Method::GET,
                "10.0.0.2:8080",
                Err((StatusCode::BAD_REQUEST, Reason::NotConnect)),
            ),
            (
                Method::CONNECT,
                "hello-app:8080",
                Err((StatusCode::BAD_REQUEST, Reason::BadAuthority)),
            ),
            (
                Method::CONNECT,
                "10.0.0.2",
                Err((StatusCode::BAD_REQUEST, Reason::BadAuthority)),
            ),
            (
                Method::CONNECT,
                "10.0.0.3:8080",
                Err((StatusCode::BAD_REQUEST, Reason::AuthorityMismatch)),
            ),
            (
                Method::CONNECT,
                "10.0.0.2:15008",
                Err((StatusCode::SERVICE_UNAVAILABLE, Reason::ProxyPort)),
            ),
            (
                Method::CONNECT,
                "10.0.0.2:15020",
                Err((StatusCode::SERVICE_UNAVAILABLE, Reason::ProxyPort)),
            ),
        ];
        for (method, authority, expected) in cases {
            let got = connect_target(&parts(method.clone(), authority), local, &ips)
                .map(|t| t.to_string())
                .map_err(|r| (r.status, r.reason));
            assert_eq!(got, expected.map(String::from), "{method} {authority}");
        }
        // The local address must also be one of the workload's.
        let got = connect_target(&parts(Method::CONNECT, "10.0.0.2:80"), local, &[]);
        assert_eq!(got.unwrap_err().reason, Reason::AuthorityMismatch);
    }
}
