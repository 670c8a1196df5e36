//! Moving bytes between a TCP socket and an HTTP/2 stream: the hot path.
//!
//! Both directions run in the caller's task (no task per direction). No read
//! buffer exists while a connection is idle: the copy waits for the socket
//! to become readable, and only then takes a buffer — 16 KiB, growing to
//! 256 KiB once a connection has moved 1 MiB, so small request/response
//! traffic stays small while bulk transfers use large DATA frames. Each read
//! is handed to h2 as a frozen slice of that buffer, without copying. A bulk
//! connection keeps its buffer between reads (h2 hands the memory back once
//! written); a small one lets it go, so a thousand idle connections cost
//! no read buffers at all. Flow-control credit is returned to the peer only
//! after the bytes have been written to the socket, so a slow reader slows
//! the sender.

use std::io;

use bytes::{Bytes, BytesMut};
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;

const SMALL: usize = 16 * 1024;
const LARGE: usize = 256 * 1024;
const GROW_AFTER: u64 = 1024 * 1024;

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

/// Copies from `reader` into the stream until EOF, then half-closes the stream.
/// `total` counts as it goes, so a failed copy still reports what it moved.
pub async fn tcp_to_h2(
    reader: &OwnedReadHalf,
    send: &mut SendStream<Bytes>,
    total: &mut u64,
) -> io::Result<()> {
    let mut buf = BytesMut::new();
    loop {
        reader.readable().await?;
        let bulk = *total >= GROW_AFTER;
        let want = if bulk { LARGE } else { SMALL };
        if buf.capacity() < want {
            buf.reserve(want);
        }
        let n = match reader.try_read_buf(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            send.send_data(Bytes::new(), true).map_err(h2_io)?;
            return Ok(());
        }
        *total += n as u64;
        let mut chunk = buf.split().freeze();
        if !bulk {
            // Idle small connections hold no buffer; the next read takes a fresh one.
            buf = BytesMut::new();
        }
        while !chunk.is_empty() {
            send.reserve_capacity(chunk.len());
            let granted = match futures::future::poll_fn(|cx| send.poll_capacity(cx)).await {
                Some(granted) => granted.map_err(h2_io)?,
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "the tunnel stream was closed",
                    ));
                }
            };
            if granted == 0 {
                continue;
            }
            let part = chunk.split_to(granted.min(chunk.len()));
            send.send_data(part, false).map_err(h2_io)?;
        }
    }
}

/// Copies from the stream into `writer` until the peer half-closes, then shuts `writer` down.
pub async fn h2_to_tcp<W: AsyncWrite + Unpin>(
    recv: &mut RecvStream,
    mut writer: W,
    total: &mut u64,
) -> io::Result<()> {
    while let Some(data) = recv.data().await {
        let data = data.map_err(h2_io)?;
        let len = data.len();
        writer.write_all(&data).await?;
        *total += len as u64;
        let _ = recv.flow_control().release_capacity(len);
    }
    writer.shutdown().await?;
    Ok(())
}

/// Runs both directions until both are done, or until one fails (then the
/// other is abandoned and the stream reset). Returns the byte counts and the
/// first error, if any.
pub async fn bidirectional(
    socket: TcpStream,
    mut send: SendStream<Bytes>,
    mut recv: RecvStream,
) -> (Transferred, Option<io::Error>) {
    let (reader, writer) = socket.into_split();
    let mut moved = Transferred::default();
    let error = {
        let up = tcp_to_h2(&reader, &mut send, &mut moved.to_tunnel);
        let down = h2_to_tcp(&mut recv, writer, &mut moved.from_tunnel);
        tokio::pin!(up, down);
        let (mut up_done, mut down_done) = (false, false);
        let mut error = None;
        while !(up_done && down_done) {
            let result = tokio::select! {
                r = &mut up, if !up_done => { up_done = true; r }
                r = &mut down, if !down_done => { down_done = true; r }
            };
            if let Err(e) = result {
                error = Some(e);
                break;
            }
        }
        error
    };
    if error.is_some() {
        send.send_reset(h2::Reason::CANCEL);
    }
    (moved, error)
}
