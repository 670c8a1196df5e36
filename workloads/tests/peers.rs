//! Load peers on loopback: exact byte counts, a populated latency histogram.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hbone_workloads::dial::Dialer;
use hbone_workloads::peers::{RrSettings, listen, rr_client, rr_server, sink, source};

#[tokio::test]
async fn source_to_sink_counts_every_byte() {
    let listener = listen("127.62.0.1:0".parse().unwrap()).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let total = Arc::new(AtomicU64::new(0));
    tokio::spawn(sink(listener, total.clone()));
    let result = source(
        &Dialer::Direct,
        "127.62.0.1",
        port,
        10_000_019,
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    assert_eq!(result.bytes, 10_000_019);
    assert_eq!(total.load(Ordering::Relaxed), 10_000_019);
    assert!(result.gbit_per_s > 0.0);
}

#[tokio::test]
async fn request_response_fills_the_histogram() {
    let listener = listen("127.62.0.2:0".parse().unwrap()).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(rr_server(listener, 1024, 1024));
    for new_connection_each in [false, true] {
        let settings = RrSettings {
            request: 1024,
            response: 1024,
            rate: Some(2000.0),
            max_requests: 200,
            duration: Duration::from_secs(10),
            new_connection_each,
        };
        let r = rr_client(&Dialer::Direct, "127.62.0.2", port, &settings)
            .await
            .unwrap();
        assert_eq!(r.requests, 200);
        assert!(
            r.latency.p50_ms > 0.0
                && r.latency.p50_ms <= r.latency.p99_ms
                && r.latency.p99_ms <= r.latency.max_ms,
            "{r:?}"
        );
        assert!(r.per_second <= 2100.0, "the rate limit holds: {r:?}");
    }
}
