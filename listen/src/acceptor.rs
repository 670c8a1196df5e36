//! One step of an accept loop, the same for every listener: the next
//! connection under the listener's cap (with TCP_NODELAY set), after
//! backing off while the process is out of descriptors.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tracing::warn;

use crate::limit::{ConnectionLimit, Permit};

/// How often a listener that keeps failing or refusing says so.
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// Called with the peer's address for each connection closed at the cap.
pub type OnRefused = Box<dyn Fn(SocketAddr) + Send + Sync>;

/// A listener with its cap: hands out connections one at a time.
pub struct Acceptor {
    listener: TcpListener,
    what: &'static str,
    limit: Arc<ConnectionLimit>,
    on_refused: Option<OnRefused>,
    setting: Option<&'static str>,
    backoff: Backoff,
    refused_said: Option<Instant>,
}

impl Acceptor {
    /// Accepts on `listener` (named `what` in the log) under `limit`.
    pub fn new(listener: TcpListener, what: &'static str, limit: Arc<ConnectionLimit>) -> Self {
        Acceptor {
            listener,
            what,
            limit,
            on_refused: None,
            setting: None,
            backoff: Backoff::default(),
            refused_said: None,
        }
    }

    /// Counts each connection closed at the cap with `count` (a metric).
    pub fn on_refused(mut self, count: OnRefused) -> Self {
        self.on_refused = Some(count);
        self
    }

    /// Names the setting that sets the cap, for the warning a refusal logs
    /// (`listeners.maxConnections`).
    pub fn cap_set_by(mut self, setting: &'static str) -> Self {
        self.setting = Some(setting);
        self
    }

    /// The address listened on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The next connection under the cap, with its place. Connections past
    /// the cap are closed and counted here; running out of descriptors
    /// waits here. Cancel-safe: dropped between connections, it loses none.
    pub async fn next(&mut self) -> Admitted<TcpStream> {
        loop {
            match self.listener.accept().await {
                Ok((tcp, peer)) => {
                    self.backoff.reset();
                    if let Some(permit) = self.limit.try_acquire() {
                        // Every server of the lab answers small messages.
                        let _ = tcp.set_nodelay(true);
                        return Admitted {
                            io: tcp,
                            peer,
                            _permit: permit,
                        };
                    }
                    self.refuse(peer);
                }
                Err(e) if exhausted(&e) => {
                    let wait = self.backoff.after(&e, self.what);
                    tokio::time::sleep(wait).await;
                }
                Err(e) => warn!(error = %e, listener = self.what, "accept failed"),
            }
        }
    }

    fn refuse(&mut self, peer: SocketAddr) {
        if let Some(count) = &self.on_refused {
            count(peer);
        }
        if self
            .refused_said
            .is_none_or(|t| t.elapsed() >= REPORT_EVERY)
        {
            let setting = self.setting.unwrap_or("a fixed bound of this port");
            warn!(listener = self.what, %peer, max = ?self.limit.max(), "the listener holds the most connections allowed ({setting}): closing new ones");
            self.refused_said = Some(Instant::now());
        }
    }

    /// The connections as a stream that never ends or fails, for servers
    /// that take one (tonic's `serve_with_incoming`).
    pub fn into_incoming(self) -> impl Stream<Item = Result<Admitted<TcpStream>, Infallible>> {
        futures::stream::unfold(self, |mut acceptor| async move {
            let next = acceptor.next().await;
            Some((Ok(next), acceptor))
        })
    }
}

/// An accepted connection and its place under its listener's cap, given
/// back when it is dropped. Reads and writes go straight to the socket.
pub struct Admitted<IO> {
    io: IO,
    peer: SocketAddr,
    _permit: Permit,
}

impl<IO> Admitted<IO> {
    /// The client's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The connection itself, for a caller that holds the place apart.
    pub fn into_parts(self) -> (IO, SocketAddr, Permit) {
        (self.io, self.peer, self._permit)
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Admitted<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Admitted<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl<IO: tonic::transport::server::Connected> tonic::transport::server::Connected for Admitted<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
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
/// every [`REPORT_EVERY`].
#[derive(Default)]
struct Backoff {
    delay: Duration,
    failed: u64,
    reported: Option<Instant>,
}

impl Backoff {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Past the cap a connection is closed at once and counted; a place
    /// given back lets the next one in.
    #[tokio::test]
    async fn past_the_cap_a_connection_is_closed_and_counted() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::AsyncReadExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limit = Arc::new(ConnectionLimit::default());
        limit.set_max(1);
        let refused = Arc::new(AtomicUsize::new(0));
        let counted = refused.clone();
        let mut acceptor =
            Acceptor::new(listener, "test", limit.clone()).on_refused(Box::new(move |_| {
                counted.fetch_add(1, Ordering::Relaxed);
            }));
        let _first = TcpStream::connect(addr).await.unwrap();
        let held = acceptor.next().await;
        let mut second = TcpStream::connect(addr).await.unwrap();
        let mut third = TcpStream::connect(addr).await.unwrap();
        // The acceptor refuses the second and third while looking for one
        // it may admit; it finds none, so this times out.
        let none = tokio::time::timeout(Duration::from_millis(300), acceptor.next()).await;
        assert!(none.is_err(), "a connection past the cap was admitted");
        assert_eq!(refused.load(Ordering::Relaxed), 2);
        let mut byte = [0u8; 1];
        assert_eq!(second.read(&mut byte).await.unwrap_or(0), 0, "not closed");
        assert_eq!(third.read(&mut byte).await.unwrap_or(0), 0, "not closed");
        drop(held);
        assert_eq!(
            limit.open(),
            0,
            "the place is given back with the connection"
        );
        let _fourth = TcpStream::connect(addr).await.unwrap();
        let admitted = acceptor.next().await;
        assert_eq!(limit.open(), 1);
        drop(admitted);
    }
}
