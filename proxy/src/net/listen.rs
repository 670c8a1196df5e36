//! Binding a listener (on the host or inside a pod's network namespace),
//! and the accept loop every listener shares: accept until shutdown, set
//! TCP_NODELAY, hand each connection to its handler on the proxy's task
//! tracker (so draining can wait for it), log accept errors and go on.
//!
//! When the process is out of file descriptors (or the kernel of socket
//! memory), accept fails at once, again and again: the loop then backs off
//! (10 ms, doubling to 1 s) instead of spinning, logs once every 10 s how
//! many accepts failed, and recovers by itself once descriptors are free.
//!
//! Each connection's task runs in a `conn` span: its direction (or, for
//! the admin listener, the listener's name) and the client's address, with
//! room for what its handler learns later (`src.identity`, `dst.workload`,
//! recorded with [`tracing::Span::record`]). Every log line
//! of the connection carries them, so a line says only what is new. The
//! span is at `info`, the proxy's default level: a proxy run at `warn` (as
//! the benchmarks run it) pays nothing for it, where a span entered on
//! every poll cost 10 % of the instructions of a new connection (callgrind,
//! `bench --instructions`). Its warnings then lack the addresses; the
//! connection log (`/debug/connections`) and the refusal metrics keep them.
//!
//! The data listeners also share the proxy's connection limit
//! ([`crate::net::connection_limit`]): past it, a connection is closed as soon
//! as it is accepted, and counted.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::field::Empty;
use tracing::{Instrument, warn};

use crate::net::connection_limit::ConnectionLimit;
use crate::net::pod_sockets::Netns;
use crate::observe::metrics::ProxyMetrics;
use crate::observe::refusal::{Direction, Reason};

/// Why a listener could not be opened.
#[derive(Debug, Error)]
pub enum StartError {
    /// Binding the socket failed (address in use, no permission, no such namespace).
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Which listener it was, for the message (`"SOCKS5"`, `"metrics"`…).
        what: &'static str,
        /// The bind error.
        #[source]
        source: std::io::Error,
    },
    /// A workload's network namespace could not be opened.
    #[error("workload {workload}'s network namespace: {source}")]
    Netns {
        /// The workload whose namespace it is.
        workload: String,
        /// Why its namespace could not be entered.
        #[source]
        source: crate::net::pod_sockets::NetnsError,
    },
}

/// Binds inside a network namespace (in-pod mode) or here.
pub(crate) fn bind_in(
    netns: Option<&Netns>,
    addr: SocketAddr,
    what: &'static str,
) -> Result<TcpListener, StartError> {
    bind_with(crate::net::pod_sockets::bind_listener, netns, addr, what)
}

/// Binds a workload's listener, which a replacement proxy may share while
/// this one drains ([`crate::net::pod_sockets::bind_handover_listener`]).
pub(crate) fn bind_workload(
    netns: Option<&Netns>,
    addr: SocketAddr,
    what: &'static str,
) -> Result<TcpListener, StartError> {
    bind_with(
        crate::net::pod_sockets::bind_handover_listener,
        netns,
        addr,
        what,
    )
}

type Binder = fn(
    Option<&Netns>,
    SocketAddr,
) -> Result<std::net::TcpListener, crate::net::pod_sockets::NetnsError>;

fn bind_with(
    binder: Binder,
    netns: Option<&Netns>,
    addr: SocketAddr,
    what: &'static str,
) -> Result<TcpListener, StartError> {
    let std = binder(netns, addr).map_err(|e| StartError::Bind {
        addr,
        what,
        source: std::io::Error::other(e),
    })?;
    TcpListener::from_std(std).map_err(|source| StartError::Bind { addr, what, source })
}

/// Whether an accept error means the process or the system is out of a resource.
fn exhausted(e: &std::io::Error) -> bool {
    use nix::errno::Errno;
    e.raw_os_error().is_some_and(|code| {
        matches!(
            Errno::from_raw(code),
            Errno::EMFILE | Errno::ENFILE | Errno::ENOBUFS | Errno::ENOMEM
        )
    })
}

/// Backs off while accepts fail for lack of resources, and says so at most
/// every `REPORT_EVERY`.
struct Backoff {
    delay: Duration,
    failed: u64,
    reported: Option<Instant>,
}

const REPORT_EVERY: Duration = Duration::from_secs(10);

impl Backoff {
    fn new() -> Self {
        Backoff {
            delay: Duration::ZERO,
            failed: 0,
            reported: None,
        }
    }

    /// The wait before the next accept, after `e`.
    fn after(&mut self, e: &std::io::Error, what: &'static str) -> Duration {
        self.failed += 1;
        if self.reported.is_none_or(|t| t.elapsed() >= REPORT_EVERY) {
            warn!(error = %e, listener = what, failed = self.failed, "accept failed (out of file descriptors or socket memory?); backing off until it recovers");
            self.reported = Some(Instant::now());
            self.failed = 0;
        }
        self.delay = (self.delay * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
        self.delay
    }

    fn reset(&mut self) {
        self.delay = Duration::ZERO;
    }
}

/// What a data listener's connections count against: the proxy's
/// connection limit, and the direction its refusals are counted under
/// (made by [`crate::state::ProxyCore::gate`]).
pub(crate) struct Gate {
    pub limit: Arc<ConnectionLimit>,
    pub metrics: Arc<ProxyMetrics>,
    pub direction: Direction,
}

/// A bound listener and what governs its life: the signal that stops
/// accepting, and the tracker that draining waits on. Every listener of the
/// proxy is served from one.
pub struct Listening {
    /// The bound socket.
    pub listener: TcpListener,
    /// Cancelled when the proxy (or this workload's listeners) stops.
    pub shutdown: CancellationToken,
    /// Where each connection's task runs, so draining can wait for it.
    pub tasks: TaskTracker,
}

impl Listening {
    /// [`accept_loop`] on this listener.
    pub(crate) async fn accept<F, Fut>(self, what: &'static str, gate: Option<Gate>, handle: F)
    where
        F: Fn(TcpStream, SocketAddr) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        accept_loop(self.listener, self.shutdown, self.tasks, what, gate, handle).await
    }
}

/// Accepts until `shutdown`, handing each connection to `handle` on a task
/// of its own; with a `gate`, a connection past the proxy's limit is closed
/// at once and counted instead (and said once per `REPORT_EVERY`).
pub(crate) async fn accept_loop<F, Fut>(
    listener: TcpListener,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    what: &'static str,
    gate: Option<Gate>,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut backoff = Backoff::new();
    let mut refused_said: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.cancelled() => return,
        };
        match accepted {
            Ok((tcp, peer)) => {
                backoff.reset();
                let permit = match &gate {
                    None => None,
                    Some(gate) => match gate.limit.try_acquire() {
                        Some(permit) => Some(permit),
                        None => {
                            gate.metrics
                                .refused(gate.direction, Reason::TooManyConnections);
                            if refused_said.is_none_or(|t| t.elapsed() >= REPORT_EVERY) {
                                warn!(listener = what, %peer, max = ?gate.limit.max(), "the proxy holds the most connections allowed (listeners.maxConnections): closing new ones");
                                refused_said = Some(Instant::now());
                            }
                            continue;
                        }
                    },
                };
                let _ = tcp.set_nodelay(true);
                let span = tracing::info_span!(
                    "conn",
                    direction = gate.as_ref().map(|g| g.direction.as_str()),
                    listener = gate.is_none().then_some(what),
                    src.addr = %peer,
                    src.identity = Empty,
                    dst.workload = Empty,
                );
                let served = handle(tcp, peer);
                tasks.spawn(
                    async move {
                        served.await;
                        drop(permit);
                    }
                    .instrument(span),
                );
            }
            Err(e) if exhausted(&e) => {
                let wait = backoff.after(&e, what);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
            Err(e) => warn!(error = %e, listener = what, "accept failed"),
        }
    }
}
