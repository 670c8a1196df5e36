//! Open-loop request/response load, as wrk2 generates it: requests arrive
//! at a fixed rate whatever the server does, and each is timed from when it
//! was *due*, not from when it was sent.
//!
//! Why: a closed-loop client ([`crate::peers::rr_client`]) sends the next
//! request only when the last one is answered, so when the server stalls
//! for 300 ms it records one slow request and then carries on — the
//! hundreds of requests real users would have sent during the stall are
//! never issued, and never counted ("coordinated omission"). Its
//! percentiles describe the client, not the service. Here request `i` is
//! due at `start + i / rate`, dealt round-robin to `connections`
//! connections (wrk2's way of spreading a rate), and a request that had to
//! wait behind a slow answer on its connection is charged from its due
//! time, so a stall shows in every request that was due during it.
//!
//! Each request is charged what a generator that is never late would have
//! measured. On each connection's ideal timeline a request starts when it
//! is due, or when the connection's previous request would have been
//! answered if that is later, and takes the time the server really took
//! (answer − actual send); its latency is from its due time to the end of
//! that. So a stall is charged to every request queued behind it, and the
//! generator's own lateness — tokio's millisecond timer, or its scheduling
//! on a shared machine — is not: charging it would add up to a
//! millisecond to requests whose proxies take a tenth of that. A
//! generator too slow for its rate shows as achieved below offered.
//!
//! Bounded in count and time: at most `max_requests`, only those due
//! within `duration`, and answers are awaited at most `grace` beyond the
//! last due time. A request still unanswered then is counted as
//! `unfinished` and recorded at the latency it had reached (a lower
//! bound), so a stall at the end of a run is not omitted either. Every
//! request goes into one HDR histogram (per connection, merged at the end),
//! kept whole: nothing is sampled or averaged.
//!
//! Each connection is opened, and carries one untimed request, before the
//! clock starts: the first request through a mesh pays for a tunnel, which
//! is what `crr` measures, not this.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::dial::Dialer;
use crate::peers::{Latencies, latency_histogram, record_latency};

#[derive(Debug, Error)]
/// Why an open-loop run could not be made.
pub enum OpenLoopError {
    #[error("open-loop settings: {0}")]
    /// A rate, connection count or request count that cannot be scheduled.
    Settings(&'static str),
    #[error("an open-loop connection's task failed: {0}")]
    /// A connection's task panicked or was cancelled.
    Task(#[from] tokio::task::JoinError),
}

/// Settings of an open-loop run.
#[derive(Debug, Clone)]
pub struct OpenLoopSettings {
    /// Bytes of each request.
    pub request: usize,
    /// Bytes of each response.
    pub response: usize,
    /// Requests per second offered, over all connections together.
    pub rate: f64,
    /// Connections the requests are spread over (each carries `rate / connections`).
    pub connections: usize,
    /// At most this many requests.
    pub max_requests: u64,
    /// Only requests due within this long from the start.
    pub duration: Duration,
    /// How long answers are awaited after the last request was due; also
    /// how long each connection's untimed first request may take (a
    /// connection that is not ready by then is opened again by its first
    /// timed request).
    pub grace: Duration,
}

/// The figures of an open-loop run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OpenLoopResult {
    /// Requests per second offered.
    pub offered_per_s: f64,
    /// Requests answered per second: answered ÷ the run's length (the
    /// scheduled window, or until the last answer when later).
    pub achieved_per_s: f64,
    /// Requests scheduled (due within the duration, at most `max_requests`).
    pub scheduled: u64,
    /// Requests answered.
    pub requests: u64,
    /// Requests that failed (connect, write or read error); not retried.
    pub errors: u64,
    /// Requests still unanswered when the grace ran out.
    pub unfinished: u64,
    /// Seconds from the start to the last answer (at least the scheduled window).
    pub seconds: f64,
    /// Latency from each request's due time (see the module doc), answered
    /// and unfinished requests alike.
    #[serde(flatten)]
    pub latency: Latencies,
}

/// What one connection did.
struct Tally {
    hist: Histogram<u64>,
    answered: u64,
    errors: u64,
    unfinished: u64,
    last_answer: Option<Instant>,
}

/// The request schedule, shared by every connection.
#[derive(Debug, Clone, Copy)]
struct Schedule {
    start: Instant,
    rate: f64,
    total: u64,
    connections: u64,
    deadline: Instant,
}

impl Schedule {
    fn due(&self, index: u64) -> Instant {
        self.start + Duration::from_secs_f64(index as f64 / self.rate)
    }

    /// The indices connection `c` carries: c, c + n, c + 2n, … below `total`.
    fn indices(&self, c: u64) -> impl Iterator<Item = u64> + use<> {
        (c..self.total).step_by(self.connections as usize)
    }
}

/// How many requests a run schedules: those due within the duration
/// (request `i` is due at `i / rate`), at most `max_requests`.
fn scheduled(s: &OpenLoopSettings) -> u64 {
    let due_within = (s.rate * s.duration.as_secs_f64()).ceil();
    (due_within as u64).min(s.max_requests)
}

/// Opens a connection and sends one untimed request over it.
async fn open(
    dialer: &Dialer,
    (host, port): (&str, u16),
    (request, response): (&[u8], &mut [u8]),
    timeout: Duration,
) -> Option<TcpStream> {
    let opening = async {
        let mut tcp = dialer.connect(host, port).await.ok()?;
        tcp.write_all(request).await.ok()?;
        tcp.read_exact(response).await.ok()?;
        Some(tcp)
    };
    tokio::time::timeout(timeout, opening).await.ok()?
}

/// Carries connection `c`'s share of the schedule.
async fn carry(
    c: u64,
    mut tcp: Option<TcpStream>,
    schedule: Schedule,
    dialer: Dialer,
    target: (String, u16),
    (request, response): (usize, usize),
) -> Tally {
    let request = vec![0x3cu8; request];
    let mut response = vec![0u8; response];
    let mut tally = Tally {
        hist: latency_histogram(),
        answered: 0,
        errors: 0,
        unfinished: 0,
        last_answer: None,
    };
    // Where this connection would be if the generator were never late:
    // the moment its last request would have been answered.
    let mut ideal_free = schedule.start;
    let mut indices = schedule.indices(c);
    while let Some(index) = indices.next() {
        let due = schedule.due(index);
        tokio::time::sleep_until(due).await;
        let sent = Instant::now();
        // Due, or queued behind the previous answer: the service's wait.
        let ideal_start = due.max(ideal_free);
        let exchange = async {
            let mut conn = match tcp.take() {
                Some(conn) => conn,
                None => dialer.connect(&target.0, target.1).await.map_err(|_| ())?,
            };
            conn.write_all(&request).await.map_err(|_| ())?;
            conn.read_exact(&mut response).await.map_err(|_| ())?;
            Ok::<_, ()>(conn)
        };
        let outcome = tokio::time::timeout_at(schedule.deadline, exchange).await;
        // The time the server really took, placed on the ideal timeline.
        ideal_free = ideal_start + (Instant::now() - sent);
        match outcome {
            Ok(Ok(conn)) => {
                record_latency(&mut tally.hist, ideal_free - due);
                tally.answered += 1;
                tally.last_answer = Some(Instant::now());
                tcp = Some(conn);
            }
            // Not retried: the next request opens a new connection.
            Ok(Err(())) => tally.errors += 1,
            Err(_) => {
                // Out of time: this request and every later one of this
                // connection are unfinished, each at the latency it had
                // reached on the ideal timeline (a lower bound).
                for unanswered in std::iter::once(index).chain(indices.by_ref()) {
                    let waited = ideal_free.saturating_duration_since(schedule.due(unanswered));
                    record_latency(&mut tally.hist, waited);
                    tally.unfinished += 1;
                }
            }
        }
    }
    tally
}

/// Offers `settings.rate` requests per second to an `rr_server` at
/// `host:port` over `settings.connections` connections; see the module doc
/// for how each request is timed.
pub async fn open_loop(
    dialer: &Dialer,
    host: &str,
    port: u16,
    settings: &OpenLoopSettings,
) -> Result<OpenLoopResult, OpenLoopError> {
    let s = settings;
    if !(s.rate.is_finite() && s.rate > 0.0) {
        return Err(OpenLoopError::Settings("the rate must be above zero"));
    }
    if s.connections == 0 {
        return Err(OpenLoopError::Settings("at least one connection is needed"));
    }
    let request = vec![0x3cu8; s.request];
    let mut response = vec![0u8; s.response];
    let mut opened = Vec::with_capacity(s.connections);
    for _ in 0..s.connections {
        opened.push(open(dialer, (host, port), (&request, &mut response), s.grace).await);
    }
    let total = scheduled(s);
    let start = Instant::now();
    let window = Duration::from_secs_f64(total as f64 / s.rate);
    let schedule = Schedule {
        start,
        rate: s.rate,
        total,
        connections: s.connections as u64,
        deadline: start + window + s.grace,
    };
    let mut tasks = JoinSet::new();
    for (c, tcp) in opened.into_iter().enumerate() {
        tasks.spawn(carry(
            c as u64,
            tcp,
            schedule,
            dialer.clone(),
            (host.to_string(), port),
            (s.request, s.response),
        ));
    }
    let mut hist = latency_histogram();
    let (mut answered, mut errors, mut unfinished) = (0, 0, 0);
    let mut last_answer = start + window;
    while let Some(tally) = tasks.join_next().await {
        let tally = tally?;
        hist.add(&tally.hist)
            .expect("histograms of the same bounds merge");
        answered += tally.answered;
        errors += tally.errors;
        unfinished += tally.unfinished;
        last_answer = last_answer.max(tally.last_answer.unwrap_or(start));
    }
    let seconds = (last_answer - start).as_secs_f64();
    Ok(OpenLoopResult {
        offered_per_s: s.rate,
        achieved_per_s: if seconds > 0.0 {
            answered as f64 / seconds
        } else {
            0.0
        },
        scheduled: total,
        requests: answered,
        errors,
        unfinished,
        seconds,
        latency: Latencies::of(&hist),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use tokio::net::TcpListener;

    use super::*;
    use crate::peers::{RrSettings, rr_client, rr_server_counting};

    fn settings(rate: f64, connections: usize, duration_ms: u64) -> OpenLoopSettings {
        OpenLoopSettings {
            request: 64,
            response: 64,
            rate,
            connections,
            max_requests: 1_000_000,
            duration: Duration::from_millis(duration_ms),
            grace: Duration::from_secs(2),
        }
    }

    async fn rr_on(ip: &str) -> u16 {
        let listener = TcpListener::bind((ip, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(rr_server_counting(listener, 64, 64, Arc::default()));
        port
    }

    /// An rr server that, at its `stall_at`-th request over all its
    /// connections (counted from 0 after `skip` untimed ones), sleeps
    /// `stall` before answering.
    async fn stalling_rr_on(ip: &str, skip: u64, stall_at: u64, stall: Duration) -> u16 {
        let listener = TcpListener::bind((ip, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(AtomicU64::new(0));
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut req = [0u8; 64];
                    while tcp.read_exact(&mut req).await.is_ok() {
                        if seen.fetch_add(1, Ordering::Relaxed) == skip + stall_at {
                            tokio::time::sleep(stall).await;
                        }
                        if tcp.write_all(&[0xa5; 64]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        port
    }

    #[tokio::test]
    async fn below_capacity_achieved_is_what_was_offered() {
        let port = rr_on("127.63.0.1").await;
        let r = open_loop(
            &Dialer::Direct,
            "127.63.0.1",
            port,
            &settings(200.0, 4, 1000),
        )
        .await
        .unwrap();
        assert_eq!(
            (r.scheduled, r.requests, r.errors, r.unfinished),
            (200, 200, 0, 0),
            "{r:?}"
        );
        assert_eq!(r.offered_per_s, 200.0);
        assert!(
            r.achieved_per_s > 0.9 * 200.0 && r.achieved_per_s <= 200.0 * 1.001,
            "{r:?}"
        );
        let l = r.latency;
        assert!(
            l.p50_ms > 0.0 && l.p50_ms <= l.p90_ms && l.p90_ms <= l.p99_ms,
            "{r:?}"
        );
        assert!(l.p99_ms <= l.p999_ms && l.p999_ms <= l.max_ms, "{r:?}");
    }

    /// The test a closed-loop measurement fails: one 300 ms stall at
    /// request 50 of 200 (one connection, 200/s). 60 requests were due
    /// during it; open-loop charges each the part of the stall it waited
    /// (300, 295, … 5 ms), so the top 10 % are all above 200 ms. The
    /// closed-loop client, against the same server, records one slow
    /// request and a p90 as if nothing happened.
    #[tokio::test]
    async fn a_stall_is_charged_to_every_request_due_during_it() {
        let stall = Duration::from_millis(300);
        let port = stalling_rr_on("127.63.0.2", 1, 50, stall).await;
        let r = open_loop(
            &Dialer::Direct,
            "127.63.0.2",
            port,
            &settings(200.0, 1, 1000),
        )
        .await
        .unwrap();
        assert_eq!((r.requests, r.errors, r.unfinished), (200, 0, 0), "{r:?}");
        assert!(r.latency.max_ms >= 300.0, "{r:?}");
        assert!(r.latency.p99_ms >= 250.0, "{r:?}");
        assert!(r.latency.p90_ms >= 150.0, "{r:?}");

        let port = stalling_rr_on("127.63.0.3", 0, 50, stall).await;
        let closed = RrSettings {
            request: 64,
            response: 64,
            rate: Some(200.0),
            max_requests: 200,
            duration: Duration::from_secs(10),
            new_connection_each: false,
        };
        let c = rr_client(&Dialer::Direct, "127.63.0.3", port, &closed)
            .await
            .unwrap();
        assert!(c.latency.max_ms >= 300.0, "{c:?}");
        assert!(
            c.latency.p90_ms * 3.0 < r.latency.p90_ms,
            "closed loop hides the stall: {c:?} against {r:?}"
        );
    }

    #[tokio::test]
    async fn a_run_stops_at_its_request_count() {
        let port = rr_on("127.63.0.4").await;
        let mut s = settings(1000.0, 3, 10_000);
        s.max_requests = 30;
        let r = open_loop(&Dialer::Direct, "127.63.0.4", port, &s)
            .await
            .unwrap();
        assert_eq!((r.scheduled, r.requests), (30, 30), "{r:?}");
        assert!(r.seconds < 5.0, "bounded by the count, not the 10 s: {r:?}");
    }

    #[tokio::test]
    async fn refused_connections_are_errors_and_the_run_ends() {
        let listener = TcpListener::bind(("127.63.0.5", 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let r = open_loop(
            &Dialer::Direct,
            "127.63.0.5",
            port,
            &settings(100.0, 2, 300),
        )
        .await
        .unwrap();
        assert_eq!((r.scheduled, r.requests, r.errors), (30, 0, 30), "{r:?}");
    }

    /// A server that reads and never answers: the run still ends at its
    /// deadline, every request unfinished and recorded at its lower bound.
    #[tokio::test]
    async fn unanswered_requests_are_unfinished_at_the_deadline() {
        let listener = TcpListener::bind(("127.63.0.6", 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while matches!(tcp.read(&mut buf).await, Ok(n) if n > 0) {}
                });
            }
        });
        let mut s = settings(100.0, 2, 200);
        s.grace = Duration::from_millis(300);
        let r = open_loop(&Dialer::Direct, "127.63.0.6", port, &s)
            .await
            .unwrap();
        assert_eq!(
            (r.scheduled, r.requests, r.unfinished),
            (20, 0, 20),
            "{r:?}"
        );
        // The first request waited the whole window and grace.
        assert!(r.latency.max_ms >= 450.0, "{r:?}");
    }

    #[tokio::test]
    async fn settings_that_cannot_be_scheduled_are_refused() {
        for s in [
            settings(0.0, 1, 100),
            settings(f64::NAN, 1, 100),
            settings(10.0, 0, 100),
        ] {
            let e = open_loop(&Dialer::Direct, "127.63.0.7", 9, &s).await;
            assert!(matches!(e, Err(OpenLoopError::Settings(_))), "{e:?}");
        }
    }

    #[test]
    fn requests_are_dealt_round_robin_within_the_window() {
        let s = settings(1000.0, 3, 10);
        assert_eq!(scheduled(&s), 10);
        let start = Instant::now();
        let schedule = Schedule {
            start,
            rate: 1000.0,
            total: 10,
            connections: 3,
            deadline: start,
        };
        assert_eq!(schedule.indices(1).collect::<Vec<_>>(), [1, 4, 7]);
        assert_eq!(schedule.due(4) - start, Duration::from_millis(4));
    }
}
