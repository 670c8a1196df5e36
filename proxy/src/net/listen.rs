//! Binding a listener (on the host or inside a pod's network namespace),
//! and the accept loop every listener shares: accept until shutdown, hand
//! each connection to its handler on the proxy's task tracker (so draining
//! can wait for it).
//!
//! Each step of the loop is `hbone_listen`'s, the same as the CA port's: it
//! backs off while the process is out of file descriptors instead of
//! spinning, and closes a connection past the listener's cap as soon as it
//! is accepted, counted as `too_many_connections` under the listener's
//! direction.
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
//! The data listeners share the proxy's connection limit
//! (`listeners.maxConnections`); each admin, metrics and readiness listener
//! has a limit of its own (`hbone_listen::Bounds::ADMIN`), so a storm on one
//! of them cannot take the descriptors real traffic needs.

use std::net::SocketAddr;
use std::sync::Arc;

use futures::FutureExt;
use thiserror::Error;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;
use tracing::field::Empty;

use crate::net::pod_sockets::Netns;
use crate::observe::metrics::ProxyMetrics;
use crate::observe::refusal::{Direction, Reason};
use hbone_listen::{Acceptor, ConnectionLimit};

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

/// What a listener's connections count against: a connection limit (the
/// proxy's for data listeners, made by [`crate::state::ProxyCore::gate`];
/// its own for an admin listener), and the direction its refusals are
/// counted under.
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
    pub(crate) async fn accept<F, Fut>(self, what: &'static str, gate: Gate, handle: F)
    where
        F: Fn(TcpStream, SocketAddr) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        accept_loop(self.listener, self.shutdown, self.tasks, what, gate, handle).await
    }
}

/// Accepts until `shutdown`, handing each connection to `handle` on a task
/// of its own that holds the connection's place under `gate`'s limit.
pub(crate) async fn accept_loop<F, Fut>(
    listener: TcpListener,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    what: &'static str,
    gate: Gate,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let Gate {
        limit,
        metrics,
        direction,
    } = gate;
    let count = move |_| metrics.refused(direction, Reason::TooManyConnections);
    let mut acceptor = Acceptor::new(listener, what, limit).on_refused(Box::new(count));
    if direction != Direction::Admin {
        acceptor = acceptor.cap_set_by("listeners.maxConnections");
    }
    loop {
        let admitted = tokio::select! {
            a = acceptor.next() => a,
            _ = shutdown.cancelled() => return,
        };
        let (tcp, peer, permit) = admitted.into_parts();
        let span = tracing::info_span!(
            "conn",
            direction = direction.as_str(),
            listener = (direction == Direction::Admin).then_some(what),
            src.addr = %peer,
            src.identity = Empty,
            dst.workload = Empty,
        );
        // `map`, not an async block that awaits `served`: such a block keeps
        // the captured future and the awaited one in separate slots, so an
        // idle connection's task would hold its handler's state twice.
        let served = handle(tcp, peer).map(move |()| drop(permit));
        tasks.spawn(served.instrument(span));
    }
}
