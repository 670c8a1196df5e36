//! Moving bytes between a TCP socket and an HTTP/2 stream: the hot path.
//!
//! [`Relay`] is one hand-written future for both directions, not two async
//! functions joined by `select!`: async functions keep their arguments and
//! locals in every nesting level, and an idle tunnel's task is mostly that
//! state, so the relay holds exactly one socket, the two stream halves, and
//! what is in flight (about 200 bytes). The socket is polled as a whole, not
//! split into reference-counted halves.
//!
//! No read buffer exists while a connection is idle: the relay waits for the
//! socket to become readable, and only then takes a buffer — 16 KiB, or
//! 256 KiB while the sender is in bulk: a read that fills a small buffer
//! means more is waiting, and the relay switches to large reads (read again
//! until EAGAIN); a read of less than a small buffer means the sender is
//! drained, and it switches back. So request/response traffic, however much
//! it has moved, reads once per request and never meets EAGAIN (counting
//! bytes moved instead kept a long-lived request/response connection in
//! bulk mode: one wasted syscall per request), while bulk transfers use
//! large DATA frames. Each read is handed to h2 as a frozen slice of that
//! buffer, without copying. In bulk the buffer is kept between reads (h2
//! hands the memory back once written) until the socket is drained
//! (EAGAIN); otherwise it is let go, so a thousand idle connections — used
//! ones too — cost no read buffers at all. Flow-control credit is returned to the peer only
//! after the bytes have been written to the socket, so a slow reader slows
//! the sender.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use h2::{RecvStream, SendStream};
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;
use tokio_util::io::poll_read_buf;

use crate::authorize::open_streams::Revocation;

const SMALL: usize = 16 * 1024;
const LARGE: usize = 256 * 1024;

/// Bytes moved each way, and how the copy ended.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Transferred {
    /// From the TCP side into the tunnel.
    pub to_tunnel: u64,
    /// From the tunnel out to the TCP side.
    pub from_tunnel: u64,
}

fn h2_io(e: h2::Error) -> io::Error {
    if e.is_io() {
        e.into_io().expect("is_io checked")
    } else {
        io::Error::other(e)
    }
}

/// Carries bytes both ways between `socket` and an HTTP/2 stream until both
/// directions are done, or one fails (then the stream is reset). Resolves to
/// the byte counts and the first error, if any.
pub fn bidirectional(socket: TcpStream, send: SendStream<Bytes>, recv: RecvStream) -> Relay {
    Relay {
        socket,
        send,
        recv,
        read_buf: BytesMut::new(),
        unsent: Bytes::new(),
        unwritten: Bytes::new(),
        unreleased: 0,
        moved: Transferred::default(),
        bulk: false,
        up: Phase::Open,
        down: Phase::Open,
        revocation: None,
    }
}

/// Where one direction stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Still carrying bytes.
    Open,
    /// The source ended; the end still has to be passed on.
    Closing,
    /// Finished.
    Done,
}

/// The future returned by [`bidirectional`].
pub struct Relay {
    socket: TcpStream,
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// Socket → tunnel: the buffer reads land in (empty, unallocated, while idle)…
    read_buf: BytesMut,
    /// …and what was read but is waiting for flow-control credit.
    unsent: Bytes,
    /// Tunnel → socket: the rest of the last DATA frame…
    unwritten: Bytes,
    /// …and the credit to hand back once it is written.
    unreleased: usize,
    moved: Transferred,
    /// The sender writes faster than we read (see the module doc).
    bulk: bool,
    up: Phase,
    down: Phase,
    /// Set when a policy change denies the stream: the relay then ends it.
    revocation: Option<Arc<Revocation>>,
}

impl Relay {
    /// Ends the relay (and resets the stream) if `revocation` is ever set.
    pub fn revocable(mut self, revocation: Arc<Revocation>) -> Self {
        self.revocation = Some(revocation);
        self
    }

    /// Socket → tunnel. Ready when the socket has ended and the stream is half-closed.
    fn poll_up(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            while !self.unsent.is_empty() {
                self.send.reserve_capacity(self.unsent.len());
                let granted = match ready!(self.send.poll_capacity(cx)) {
                    Some(granted) => granted.map_err(h2_io)?,
                    None => {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::BrokenPipe,
                            "the tunnel stream was closed",
                        )));
                    }
                };
                let part = self.unsent.split_to(granted.min(self.unsent.len()));
                if !part.is_empty() {
                    self.send.send_data(part, false).map_err(h2_io)?;
                }
            }
            if self.up == Phase::Closing {
                self.send.send_data(Bytes::new(), true).map_err(h2_io)?;
                self.up = Phase::Done;
            }
            if self.up == Phase::Done {
                return Poll::Ready(Ok(()));
            }
            // Readiness first, so an idle connection holds no buffer…
            ready!(self.socket.poll_read_ready(cx))?;
            let bulk = self.bulk;
            let want = if bulk { LARGE } else { SMALL };
            if self.read_buf.capacity() < want {
                self.read_buf.reserve(want);
            }
            let n = if bulk {
                // A bulk sender keeps writing while we read: a short read is
                // not the end of it, so keep the readiness and read again
                // (only EAGAIN sends the task back to the reactor).
                match self.socket.try_read_buf(&mut self.read_buf) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        // Drained: the burst may be over, and an idle
                        // connection must not keep a large buffer.
                        self.bulk = false;
                        self.read_buf = BytesMut::new();
                        continue;
                    }
                    Err(e) => return Poll::Ready(Err(e)),
                }
            } else {
                // Request/response: `poll_read` takes a short read as
                // "drained" and skips the read that would only say EAGAIN
                // (one syscall per request).
                ready!(poll_read_buf(
                    Pin::new(&mut self.socket),
                    cx,
                    &mut self.read_buf
                ))?
            };
            if n == 0 {
                self.up = Phase::Closing;
                continue;
            }
            self.moved.to_tunnel += n as u64;
            self.bulk = n >= SMALL;
            self.unsent = self.read_buf.split().freeze();
            if !self.bulk {
                // Small connections hold no buffer between reads.
                self.read_buf = BytesMut::new();
            }
        }
    }

    /// Tunnel → socket. Ready when the peer has half-closed and the socket is shut down.
    fn poll_down(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            while !self.unwritten.is_empty() {
                let n = ready!(Pin::new(&mut self.socket).poll_write(cx, &self.unwritten))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.unwritten.advance(n);
                self.moved.from_tunnel += n as u64;
            }
            // An emptied slice still points into h2's receive buffer: let
            // go of it, or an idle connection keeps that buffer alive.
            self.unwritten = Bytes::new();
            if self.unreleased > 0 {
                let _ = self.recv.flow_control().release_capacity(self.unreleased);
                self.unreleased = 0;
            }
            match self.down {
                Phase::Done => return Poll::Ready(Ok(())),
                Phase::Closing => {
                    ready!(Pin::new(&mut self.socket).poll_shutdown(cx))?;
                    self.down = Phase::Done;
                }
                Phase::Open => match ready!(self.recv.poll_data(cx)) {
                    Some(data) => {
                        self.unwritten = data.map_err(h2_io)?;
                        self.unreleased = self.unwritten.len();
                    }
                    None => self.down = Phase::Closing,
                },
            }
        }
    }
}

impl Future for Relay {
    type Output = (Transferred, Option<io::Error>);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let revoked = this.revocation.as_ref().and_then(|r| r.poll_revoked(cx));
        let (up, down) = match revoked {
            Some(reason) => {
                let denied = format!("closed by a policy change: {reason}");
                (
                    Poll::Ready(Err(io::Error::new(io::ErrorKind::PermissionDenied, denied))),
                    Poll::Pending,
                )
            }
            None => (this.poll_up(cx), this.poll_down(cx)),
        };
        let error = match (up, down) {
            (Poll::Ready(Err(e)), _) | (_, Poll::Ready(Err(e))) => e,
            (Poll::Ready(Ok(())), Poll::Ready(Ok(()))) => return Poll::Ready((this.moved, None)),
            _ => return Poll::Pending,
        };
        this.send.send_reset(h2::Reason::CANCEL);
        this.up = Phase::Done;
        this.down = Phase::Done;
        Poll::Ready((this.moved, Some(error)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_relay_is_small() {
        // The task of every idle tunnel holds one of these; keep it lean.
        assert!(
            std::mem::size_of::<Relay>() <= 256,
            "Relay is {} bytes",
            std::mem::size_of::<Relay>()
        );
    }
}
