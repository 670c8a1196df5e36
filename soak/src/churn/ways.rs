//! Every way a connection through the mesh can end, and the servers in the
//! server pod that make each one happen.
//!
//! A proxy that leaks usually leaks on one exit path only: the clean close
//! is the path everybody tests. So each client loop goes through the ways in
//! turn — a clean close, a reset from either end in the middle of the data,
//! a half-close left in FIN-WAIT-2, and a client that leaves before the
//! destination has answered the tunnel's CONNECT — and counts, per way,
//! what ended as that way should and what did not.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hbone_workloads::dial::Dialer;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::{Instant, timeout};

use crate::load::{dial_reason, io_reason};

/// The echo server's port (also the soak's).
pub const ECHO_PORT: u16 = crate::ECHO_PORT;
/// Echoes until the client's FIN, then keeps its own end open a while:
/// the client sits in FIN-WAIT-2 and both proxies hold a half-closed tunnel.
pub const LINGER_PORT: u16 = 5204;
/// Reads a little, then resets the connection (SO_LINGER 0).
pub const RESET_PORT: u16 = 5205;
/// Nothing answers: the server pod drops SYNs to it, so the destination's
/// proxy never gets an answer to its dial and never answers the CONNECT.
pub const BLACKHOLE_PORT: u16 = 5206;
/// How long the linger server keeps its end open after the client's FIN.
const LINGER: Duration = Duration::from_secs(2);
/// How long an abandoning client waits before it leaves.
const ABANDON_AFTER: Duration = Duration::from_millis(200);
/// The largest payload a connection sends.
const MAX_PAYLOAD: usize = 16 * 1024;
/// Any one step, past which the connection counts as hung.
const STEP: Duration = Duration::from_secs(10);

/// How a connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Way {
    /// Data both ways, checked; FIN from the client, FIN back.
    Clean,
    /// The client resets (SO_LINGER 0) with the echo half read.
    ClientReset,
    /// The server resets after the first bytes.
    ServerReset,
    /// The client half-closes, reads the echo, and closes while the server
    /// still holds its end: FIN-WAIT-2 on the client, a half-closed tunnel.
    HalfClosed,
    /// The client leaves before the CONNECT is answered (the destination
    /// never answers the destination proxy's dial).
    Abandoned,
}

impl Way {
    /// Every way, in the order each client goes through them.
    pub const ALL: [Way; 5] = [
        Way::Clean,
        Way::ClientReset,
        Way::ServerReset,
        Way::HalfClosed,
        Way::Abandoned,
    ];

    /// The way's name in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Way::Clean => "clean",
            Way::ClientReset => "client_reset",
            Way::ServerReset => "server_reset",
            Way::HalfClosed => "half_closed",
            Way::Abandoned => "abandoned",
        }
    }

    fn port(self) -> u16 {
        match self {
            Way::Clean | Way::ClientReset => ECHO_PORT,
            Way::ServerReset => RESET_PORT,
            Way::HalfClosed => LINGER_PORT,
            Way::Abandoned => BLACKHOLE_PORT,
        }
    }
}

/// What the connections of one way came to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct WayTally {
    /// Connections tried.
    pub attempted: u64,
    /// Connections that ended as the way should.
    pub ended_as_meant: u64,
    /// The others, by what happened instead.
    pub otherwise: BTreeMap<&'static str, u64>,
}

/// Every way's tally, shared by the client loops.
pub type Tallies = Arc<Mutex<BTreeMap<Way, WayTally>>>;

fn record(tallies: &Tallies, way: Way, outcome: Result<(), &'static str>) {
    let mut all = tallies.lock().unwrap_or_else(|e| e.into_inner());
    let tally = all.entry(way).or_default();
    tally.attempted += 1;
    match outcome {
        Ok(()) => tally.ended_as_meant += 1,
        Err(why) => *tally.otherwise.entry(why).or_insert(0) += 1,
    }
}

/// One client loop, until `until`: connection after connection, each
/// ending the next way in turn; it waits while `load` is off.
pub async fn client(
    index: usize,
    dialer: Dialer,
    server: String,
    mut load: watch::Receiver<bool>,
    until: Instant,
    seed: u64,
    tallies: Tallies,
) {
    let mut rng = StdRng::seed_from_u64(seed.wrapping_add(index as u64));
    let mut turn = index;
    while Instant::now() < until {
        if !*load.borrow() {
            if tokio::time::timeout_at(until, load.wait_for(|on| *on))
                .await
                .is_err()
            {
                return;
            }
            continue;
        }
        let way = Way::ALL[turn % Way::ALL.len()];
        turn += 1;
        let outcome = connection(way, &dialer, &server, &mut rng).await;
        if outcome.is_err() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        record(&tallies, way, outcome);
    }
}

/// Bounds a step: its own error's name, or `timeout`.
async fn step<T>(f: impl Future<Output = std::io::Result<T>>) -> Result<T, &'static str> {
    match timeout(STEP, f).await {
        Err(_) => Err("timeout"),
        Ok(Err(e)) => Err(io_reason(&e)),
        Ok(Ok(v)) => Ok(v),
    }
}

async fn connection(
    way: Way,
    dialer: &Dialer,
    server: &str,
    rng: &mut StdRng,
) -> Result<(), &'static str> {
    let mut tcp = match timeout(STEP, dialer.connect(server, way.port())).await {
        Err(_) => return Err("connect_timeout"),
        Ok(Err(e)) => return Err(dial_reason(&e)),
        Ok(Ok(tcp)) => tcp,
    };
    let _ = tcp.set_nodelay(true);
    let mut sent = vec![0u8; rng.random_range(2..=MAX_PAYLOAD)];
    rng.fill(&mut sent[..]);
    match way {
        Way::Clean => {
            exchange(&mut tcp, &sent).await?;
            step(tcp.shutdown()).await?;
            expect_eof(&mut tcp).await
        }
        Way::ClientReset => {
            step(tcp.write_all(&sent)).await?;
            let mut half = vec![0u8; sent.len() / 2];
            step(tcp.read_exact(&mut half)).await?;
            reset(tcp);
            Ok(())
        }
        Way::ServerReset => {
            step(tcp.write_all(&sent)).await?;
            // The server resets; what reaches the client is a reset or, once
            // a proxy has turned it into a close, an end of stream.
            let mut sink = [0u8; 4096];
            loop {
                match timeout(STEP, tcp.read(&mut sink)).await {
                    Err(_) => return Err("timeout"),
                    Ok(Ok(0)) | Ok(Err(_)) => return Ok(()),
                    Ok(Ok(_)) => {}
                }
            }
        }
        Way::HalfClosed => {
            step(tcp.write_all(&sent)).await?;
            step(tcp.shutdown()).await?;
            let mut back = vec![0u8; sent.len()];
            step(tcp.read_exact(&mut back)).await?;
            if back != sent {
                return Err("corrupt");
            }
            // Gone while the server still holds its end.
            drop(tcp);
            Ok(())
        }
        Way::Abandoned => {
            step(tcp.write_all(&sent[..sent.len().min(512)])).await?;
            tokio::time::sleep(ABANDON_AFTER).await;
            let mut byte = [0u8; 1];
            match tcp.try_read(&mut byte) {
                Ok(0) => Err("closed_early"),
                Ok(_) => Err("answered"),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
                Err(e) => Err(io_reason(&e)),
            }
        }
    }
}

/// Sends `sent` and reads it back, checked.
async fn exchange(tcp: &mut TcpStream, sent: &[u8]) -> Result<(), &'static str> {
    let mut back = vec![0u8; sent.len()];
    let (mut r, mut w) = tcp.split();
    step(async { tokio::try_join!(w.write_all(sent), r.read_exact(&mut back)) }).await?;
    if back != sent {
        return Err("corrupt");
    }
    Ok(())
}

async fn expect_eof(tcp: &mut TcpStream) -> Result<(), &'static str> {
    let mut extra = [0u8; 1];
    match step(tcp.read(&mut extra)).await? {
        0 => Ok(()),
        _ => Err("corrupt"),
    }
}

/// Closes with SO_LINGER 0: the peer gets a reset, not a FIN.
fn reset(tcp: TcpStream) {
    let socket = socket2::SockRef::from(&tcp);
    let _ = socket.set_linger(Some(Duration::ZERO));
    drop(tcp);
}

/// Serves the linger port: echoes until the client's FIN, then holds its
/// end open for 2 s (`LINGER`) before closing.
pub async fn linger_server(listener: TcpListener) {
    serve(listener, |mut tcp| async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tcp.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
        tokio::time::sleep(LINGER).await;
    })
    .await
}

/// Serves the reset port: reads whatever the first read brings, then resets.
pub async fn reset_server(listener: TcpListener) {
    serve(listener, |mut tcp| async move {
        let mut buf = [0u8; 1024];
        let _ = timeout(STEP, tcp.read(&mut buf)).await;
        reset(tcp);
    })
    .await
}

/// Accepts forever, each connection on a task of its own.
async fn serve<F, Fut>(listener: TcpListener, handle: F)
where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        match listener.accept().await {
            Ok((tcp, _)) => {
                tokio::spawn(handle(tcp));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}
