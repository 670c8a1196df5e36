//! Load peers for the benchmarks: the equivalents of iperf3's stream test
//! (`source` → `sink`), netperf's TCP_RR (`rr_client` on one connection) and
//! TCP_CRR (`rr_client` with a new connection per request), and `echo`.
//! Every loop is bounded in count and time. `rr_client` is closed-loop: each
//! request waits for the one before and is timed from its own send, which
//! is right for "how fast can one connection go" but hides a stall from
//! the requests queued behind it; the open-loop load that does not is
//! [`crate::open_loop`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::dial::Dialer;

const CHUNK: usize = 256 * 1024;

/// Echoes every connection's bytes back until it half-closes.
pub async fn echo(listener: TcpListener) -> std::io::Result<()> {
    loop {
        let (mut tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        tokio::spawn(async move {
            let (mut r, mut w) = tcp.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
            let _ = w.shutdown().await;
        });
    }
}

/// Reads and discards; counts every byte into `total`.
pub async fn sink(listener: TcpListener, total: Arc<AtomicU64>) -> std::io::Result<()> {
    loop {
        let (mut tcp, _) = listener.accept().await?;
        let total = total.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; CHUNK];
            while let Ok(n) = tcp.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                total.fetch_add(n as u64, Ordering::Relaxed);
            }
        });
    }
}

/// How much a `source` sent, and how fast.
#[derive(Debug, Clone, Serialize)]
pub struct StreamResult {
    /// Bytes sent.
    pub bytes: u64,
    /// Seconds it took.
    pub seconds: f64,
    /// The rate in Gbit/s.
    pub gbit_per_s: f64,
}

/// Sends up to `max_bytes`, or for `duration`, whichever ends first.
pub async fn source(
    dialer: &Dialer,
    host: &str,
    port: u16,
    max_bytes: u64,
    duration: Duration,
) -> std::io::Result<StreamResult> {
    let mut tcp = dialer
        .connect(host, port)
        .await
        .map_err(std::io::Error::other)?;
    let buf = vec![0x5au8; CHUNK];
    let started = Instant::now();
    let mut sent = 0u64;
    while sent < max_bytes && started.elapsed() < duration {
        let n = (max_bytes - sent).min(CHUNK as u64) as usize;
        tcp.write_all(&buf[..n]).await?;
        sent += n as u64;
    }
    tcp.shutdown().await?;
    // Wait for the far side to finish reading (it closes after EOF).
    let mut rest = [0u8; 1];
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut rest)).await;
    let seconds = started.elapsed().as_secs_f64();
    Ok(StreamResult {
        bytes: sent,
        seconds,
        gbit_per_s: sent as f64 * 8.0 / seconds / 1e9,
    })
}

/// Request/response server: reads `request` bytes, answers `response` bytes, repeatedly.
pub async fn rr_server(
    listener: TcpListener,
    request: usize,
    response: usize,
) -> std::io::Result<()> {
    rr_server_counting(listener, request, response, Arc::default()).await
}

/// [`rr_server`] that also counts the connections it accepts, so a caller
/// holding idle connections can tell when every one has reached the server.
pub async fn rr_server_counting(
    listener: TcpListener,
    request: usize,
    response: usize,
    accepted: Arc<AtomicU64>,
) -> std::io::Result<()> {
    loop {
        let (mut tcp, _) = listener.accept().await?;
        accepted.fetch_add(1, Ordering::Relaxed);
        let _ = tcp.set_nodelay(true);
        tokio::spawn(async move {
            let mut req = vec![0u8; request.max(1)];
            let resp = vec![0xa5u8; response];
            while tcp.read_exact(&mut req[..request]).await.is_ok() {
                if tcp.write_all(&resp).await.is_err() {
                    break;
                }
            }
        });
    }
}

/// Settings of an `rr_client` run.
#[derive(Debug, Clone)]
pub struct RrSettings {
    /// Bytes of each request.
    pub request: usize,
    /// Bytes of each response.
    pub response: usize,
    /// Requests per second; `None` for as fast as possible.
    pub rate: Option<f64>,
    /// Stop after this many requests.
    pub max_requests: u64,
    /// Or after this long.
    pub duration: Duration,
    /// A new connection per request (TCP_CRR) instead of one for all (TCP_RR).
    pub new_connection_each: bool,
}

/// The latency percentiles every load peer reports, read from one HDR
/// histogram of microseconds (every request recorded, none sampled).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Latencies {
    /// Median, in ms.
    pub p50_ms: f64,
    /// 90th percentile, in ms.
    pub p90_ms: f64,
    /// 99th percentile, in ms.
    pub p99_ms: f64,
    /// 99.9th percentile, in ms.
    pub p999_ms: f64,
    /// The slowest, in ms.
    pub max_ms: f64,
}

/// The longest latency a histogram holds: a minute, in microseconds.
const LONGEST_MICROS: u64 = 60_000_000;

/// An empty latency histogram: 1 µs to a minute, three significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, LONGEST_MICROS, 3).expect("valid histogram bounds")
}

/// Records one latency (clamped to the histogram's 1 µs … 1 min).
pub fn record_latency(hist: &mut Histogram<u64>, latency: Duration) {
    let micros = (latency.as_micros() as u64).clamp(1, LONGEST_MICROS);
    let _ = hist.record(micros);
}

impl Latencies {
    /// The percentiles of `hist` (all zero when it is empty).
    pub fn of(hist: &Histogram<u64>) -> Self {
        let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
        Latencies {
            p50_ms: ms(0.5),
            p90_ms: ms(0.9),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            max_ms: hist.max() as f64 / 1000.0,
        }
    }
}

/// Latency figures of an `rr_client` run.
#[derive(Debug, Clone, Serialize)]
pub struct RrResult {
    /// Requests that completed.
    pub requests: u64,
    /// Seconds the run took.
    pub seconds: f64,
    /// Requests per second.
    pub per_second: f64,
    /// Round trips, each timed from its own send.
    #[serde(flatten)]
    pub latency: Latencies,
}

/// Runs requests against an `rr_server`, recording each round trip.
pub async fn rr_client(
    dialer: &Dialer,
    host: &str,
    port: u16,
    s: &RrSettings,
) -> std::io::Result<RrResult> {
    let mut hist = latency_histogram();
    let request = vec![0x3cu8; s.request];
    let mut response = vec![0u8; s.response];
    let connect = || async {
        dialer
            .connect(host, port)
            .await
            .map_err(std::io::Error::other)
    };
    let mut tcp: Option<TcpStream> = None;
    let started = Instant::now();
    let mut done = 0u64;
    while done < s.max_requests && started.elapsed() < s.duration {
        if let Some(rate) = s.rate {
            let due = started + Duration::from_secs_f64(done as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        let t0 = Instant::now();
        let mut conn = match tcp.take() {
            Some(c) => c,
            None => connect().await?,
        };
        conn.write_all(&request).await?;
        conn.read_exact(&mut response).await?;
        record_latency(&mut hist, t0.elapsed());
        done += 1;
        if !s.new_connection_each {
            tcp = Some(conn);
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(RrResult {
        requests: done,
        seconds,
        per_second: done as f64 / seconds,
        latency: Latencies::of(&hist),
    })
}

/// Binds a listener for a peer.
pub async fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
