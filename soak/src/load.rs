//! The soak's traffic: client loops, each opening one connection after
//! another through the mesh, sending a few payloads of random sizes and
//! checking every byte the echo server sends back against what was sent.
//! A failed connection is recorded with when it ran, in which phase it
//! failed and why; the loop pauses briefly (as a real client would) and
//! goes on.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hbone_workloads::dial::{DialError, Dialer};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, timeout};

/// How the clients behave.
#[derive(Debug, Clone)]
pub struct LoadSettings {
    /// Clients connecting at once, each in a loop.
    pub clients: usize,
    /// The largest payload (bytes); sizes are uniform from 1 byte to this.
    pub max_payload: usize,
    /// Payloads per connection, at most.
    pub max_payloads: usize,
    /// How long any one step may take before the connection counts as hung.
    pub io_timeout: Duration,
    /// Seeds the payload sizes and contents, so a run can be repeated.
    pub seed: u64,
}

/// Where in its life a connection failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Opening the connection (through the mesh).
    Connect,
    /// Sending a payload and reading it back.
    Transfer,
    /// Closing it.
    Close,
}

impl Phase {
    /// The phase's name in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Connect => "connect",
            Phase::Transfer => "transfer",
            Phase::Close => "close",
        }
    }
}

/// One failed connection, its times from the start of the run.
#[derive(Debug, Clone)]
pub struct Failure {
    /// When it started.
    pub started: Duration,
    /// When it failed.
    pub ended: Duration,
    /// In which phase.
    pub phase: Phase,
    /// Why, in a word (`refused`, `reset`, `eof`, `timeout`, …).
    pub reason: &'static str,
}

/// What every client adds to.
#[derive(Debug, Default)]
pub struct Tally {
    /// Connections tried.
    pub attempted: AtomicU64,
    /// Connections that carried every payload intact and closed.
    pub succeeded: AtomicU64,
    /// Payload bytes sent.
    pub bytes_sent: AtomicU64,
    /// Bytes that came back as sent.
    pub bytes_verified: AtomicU64,
    /// Bytes that came back different.
    pub bytes_corrupted: AtomicU64,
    /// Every failed connection.
    pub failures: Mutex<Vec<Failure>>,
}

impl Tally {
    fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// A counter's value now.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// The name of an I/O failure, as the report counts it.
pub(crate) fn io_reason(e: &std::io::Error) -> &'static str {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused => "refused",
        ConnectionReset => "reset",
        ConnectionAborted => "aborted",
        UnexpectedEof => "eof",
        BrokenPipe => "broken_pipe",
        TimedOut => "timeout",
        NotConnected => "not_connected",
        HostUnreachable | NetworkUnreachable => "unreachable",
        _ => "io_error",
    }
}

pub(crate) fn dial_reason(e: &DialError) -> &'static str {
    match e {
        DialError::Connect { source, .. } => io_reason(source),
        DialError::Refused { .. } => "refused_by_mesh",
    }
}

/// Runs one client until `until`: connection after connection to `host:port`.
pub async fn client(
    index: usize,
    dialer: Dialer,
    target: (String, u16),
    start: Instant,
    until: Instant,
    settings: LoadSettings,
    tally: Arc<Tally>,
) {
    let mut rng = StdRng::seed_from_u64(settings.seed.wrapping_add(index as u64));
    while Instant::now() < until {
        let started = start.elapsed();
        Tally::add(&tally.attempted, 1);
        match connection(&dialer, &target, &settings, &mut rng, &tally).await {
            Ok(()) => Tally::add(&tally.succeeded, 1),
            Err((phase, reason)) => {
                let failure = Failure {
                    started,
                    ended: start.elapsed(),
                    phase,
                    reason,
                };
                tally
                    .failures
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(failure);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

type Failed = (Phase, &'static str);

async fn connection(
    dialer: &Dialer,
    (host, port): &(String, u16),
    settings: &LoadSettings,
    rng: &mut StdRng,
    tally: &Tally,
) -> Result<(), Failed> {
    let limit = settings.io_timeout;
    let mut tcp = match timeout(limit, dialer.connect(host, *port)).await {
        Err(_) => return Err((Phase::Connect, "timeout")),
        Ok(Err(e)) => return Err((Phase::Connect, dial_reason(&e))),
        Ok(Ok(tcp)) => tcp,
    };
    let _ = tcp.set_nodelay(true);
    let payloads = rng.random_range(1..=settings.max_payloads.max(1));
    for _ in 0..payloads {
        let size = rng.random_range(1..=settings.max_payload.max(1));
        let mut sent = vec![0u8; size];
        rng.fill(&mut sent[..]);
        let mut back = vec![0u8; size];
        Tally::add(&tally.bytes_sent, size);
        let (mut r, mut w) = tcp.split();
        let exchange = async { tokio::try_join!(w.write_all(&sent), r.read_exact(&mut back)) };
        match timeout(limit, exchange).await {
            Err(_) => return Err((Phase::Transfer, "timeout")),
            Ok(Err(e)) => return Err((Phase::Transfer, io_reason(&e))),
            Ok(Ok(_)) => {}
        }
        let wrong = sent.iter().zip(&back).filter(|(a, b)| a != b).count();
        Tally::add(&tally.bytes_verified, size - wrong);
        if wrong > 0 {
            Tally::add(&tally.bytes_corrupted, wrong);
            return Err((Phase::Transfer, "corrupt"));
        }
    }
    // Our end is done; the echo's end must follow with nothing more.
    let close = async {
        tcp.shutdown().await?;
        let mut extra = [0u8; 1];
        tcp.read(&mut extra).await
    };
    match timeout(limit, close).await {
        Err(_) => Err((Phase::Close, "timeout")),
        Ok(Err(e)) => Err((Phase::Close, io_reason(&e))),
        Ok(Ok(0)) => Ok(()),
        Ok(Ok(n)) => {
            Tally::add(&tally.bytes_corrupted, n);
            Err((Phase::Close, "corrupt"))
        }
    }
}
