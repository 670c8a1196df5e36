//! End to end on loopback: client → SOCKS5 → proxy A → HBONE → proxy B → echo.

mod support;

use std::net::SocketAddr;

use hbone_proxy::observe::refusal::{Direction, Reason};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carries_100_mib_intact_both_ways_and_counts_it() {
    let lab = Lab::start(41).await;
    let echo = SocketAddr::new(lab.ip("2.1"), 9000);
    echo_server(echo).await;
    let socks = lab.a.addrs.socks5.unwrap();

    let tcp = socks5_connect(socks, lab.ip("1.1"), echo)
        .await
        .expect("allowed");
    let total = 100 * 1024 * 1024 + 17;
    let (sent, received, n) = echo_roundtrip(tcp, total).await;
    assert_eq!(n, total, "every byte came back");
    assert_eq!(sent, received, "bytes arrived intact (checksums match)");

    // Through the service VIP as well, with a small payload, once the first
    // stream has ended (a stream that finds the connection busy would get
    // one of its own).
    let pool = lab.a.outbound.pool();
    for _ in 0..200 {
        if pool.streams() == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(pool.streams(), 0, "the first stream ended");
    let vip = SocketAddr::new(lab.ip("3.1"), 80);
    let tcp = socks5_connect(socks, lab.ip("1.1"), vip)
        .await
        .expect("allowed via VIP");
    let (sent, received, n) = echo_roundtrip(tcp, 4096).await;
    assert_eq!((n, sent), (4096, received));

    // A second connection reused the pooled HBONE connection: one dial in all.
    assert_eq!(lab.a.outbound.pool().dials(), 1);

    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let metrics = http_get(lab.b.addrs.metrics.unwrap(), "/metrics").await.1;
    let opened = metrics
        .lines()
        .find(|l| {
            l.starts_with("istio_tcp_connections_opened_total{reporter=\"destination\"")
                && l.contains("source_principal=\"spiffe://cluster.local/ns/demo/sa/client\"")
        })
        .unwrap_or_else(|| panic!("no destination-side open counter in\n{metrics}"));
    assert!(opened.ends_with(" 2"), "{opened}");
    let received_line = metrics
        .lines()
        .find(|l| l.starts_with("istio_tcp_received_bytes_total{reporter=\"destination\""))
        .unwrap();
    let counted: u64 = received_line.rsplit(' ').next().unwrap().parse().unwrap();
    assert_eq!(counted, (total + 4096) as u64, "{received_line}");
    assert!(metrics.contains("destination_workload=\"echo\""));
    assert!(metrics.contains("connection_security_policy=\"mutual_tls\""));

    let logs = log_text();
    assert!(
        logs.contains("connection complete") && logs.contains("direction=\"inbound\""),
        "{logs}"
    );
    assert!(
        logs.contains(&format!("bytes_recv={total}")),
        "access log shows the bytes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_principal_not_allowed_is_refused_and_counted() {
    let lab = Lab::start(42).await;
    let echo = SocketAddr::new(lab.ip("2.1"), 9000);
    echo_server(echo).await;
    let socks = lab.a.addrs.socks5.unwrap();

    let refused = socks5_connect(socks, lab.ip("1.2"), echo).await.err();
    assert_eq!(refused, Some(0x02), "SOCKS5 'not allowed by ruleset'");
    assert_eq!(
        lab.b
            .core
            .metrics
            .refusal_count(Direction::Inbound, Reason::PolicyDenied),
        1
    );
    assert_eq!(
        lab.a
            .core
            .metrics
            .refusal_count(Direction::Socks5, Reason::PolicyDenied),
        1
    );
    let logs = log_text();
    assert!(
        logs.contains(
            "no rule of ALLOW policy demo/echo-clients matches cluster.local/ns/demo/sa/stranger"
        ),
        "{logs}"
    );

    // The allowed client still gets through afterwards, over the same proxies.
    let tcp = socks5_connect(socks, lab.ip("1.1"), echo)
        .await
        .expect("allowed");
    let (sent, received, n) = echo_roundtrip(tcp, 1000).await;
    assert_eq!((n, sent), (1000, received));

    let metrics = http_get(lab.b.addrs.metrics.unwrap(), "/metrics").await.1;
    assert!(
        metrics.contains("hbone_refusals_total{direction=\"inbound\",reason=\"policy_denied\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_destinations_and_unknown_hosts_pass_through() {
    let lab = Lab::start(43).await;
    let legacy = SocketAddr::new(lab.ip("2.9"), 7000);
    echo_server(legacy).await;
    let tcp = socks5_connect(lab.a.addrs.socks5.unwrap(), lab.ip("1.2"), legacy)
        .await
        .expect("passthrough");
    let (sent, received, n) = echo_roundtrip(tcp, 5000).await;
    assert_eq!((n, sent), (5000, received));
    assert_eq!(
        lab.a.outbound.pool().dials(),
        0,
        "no HBONE for a TCP-protocol workload"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_shows_certificates_and_config() {
    let lab = Lab::start(44).await;
    let certs = http_get(lab.b.addrs.admin.unwrap(), "/certs").await.1;
    let json: serde_json::Value = serde_json::from_str(&certs).unwrap();
    let ids: Vec<&str> = json["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["identity"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&"spiffe://cluster.local/ns/demo/sa/echo"),
        "{certs}"
    );
    assert!(
        json["certificates"][0]["expiresInSeconds"]
            .as_u64()
            .unwrap()
            > 23 * 3600
    );
    let dump = http_get(lab.b.addrs.admin.unwrap(), "/config_dump").await.1;
    assert!(
        dump.contains("\"node\":\"n2\"") && dump.contains("\"name\":\"echo-clients\""),
        "{dump}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_serves_new_connections_without_dropping_old_ones() {
    use hbone_ca::RenewalPolicy;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    // 4 s certificates: renewed about 2 s after they arrive.
    let renewal = RenewalPolicy {
        ttl: Duration::from_secs(4),
        ..RenewalPolicy::default()
    };
    let lab = Lab::start_custom(
        45,
        hbone_proxy::config::H2Settings::default(),
        renewal,
        None,
    )
    .await;
    let echo = SocketAddr::new(lab.ip("2.1"), 9000);
    echo_server(echo).await;
    let socks = lab.a.addrs.socks5.unwrap();
    let client_id: hbone_ca::Identity = "spiffe://cluster.local/ns/demo/sa/client".parse().unwrap();
    let first_serial = lab
        .a
        .core
        .certs
        .get(&client_id)
        .await
        .unwrap()
        .leaf
        .serial_hex
        .clone();

    let mut held = socks5_connect(socks, lab.ip("1.1"), echo)
        .await
        .expect("allowed");
    held.write_all(b"before renewal").await.unwrap();
    let mut buf = [0u8; 14];
    held.read_exact(&mut buf).await.unwrap();

    tokio::time::sleep(Duration::from_millis(3000)).await;
    let renewed = lab.a.core.certs.get(&client_id).await.unwrap();
    assert_ne!(
        renewed.leaf.serial_hex, first_serial,
        "the client certificate was renewed"
    );

    // The established connection still carries bytes…
    held.write_all(b"after renewal!").await.unwrap();
    held.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"after renewal!");
    // …and a new one is made with the new certificate, on a new HBONE connection.
    let tcp = socks5_connect(socks, lab.ip("1.1"), echo)
        .await
        .expect("allowed");
    let (sent, received, n) = echo_roundtrip(tcp, 10_000).await;
    assert_eq!((n, sent), (10_000, received));
    assert_eq!(
        lab.a.outbound.pool().dials(),
        2,
        "a second HBONE connection for the renewed certificate"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_accepting_and_waits_for_open_connections_within_the_grace() {
    use std::time::{Duration, Instant};
    let lab = Lab::start(46).await;
    let echo = SocketAddr::new(lab.ip("2.1"), 9000);
    echo_server(echo).await;
    let socks = lab.a.addrs.socks5.unwrap();
    let held = socks5_connect(socks, lab.ip("1.1"), echo)
        .await
        .expect("allowed");

    let started = Instant::now();
    let drained = lab.a.shutdown(Duration::from_millis(800)).await;
    assert!(!drained, "an open connection keeps the drain busy");
    assert!(
        started.elapsed() >= Duration::from_millis(700),
        "the grace period was honoured"
    );
    assert!(
        tokio::net::TcpStream::connect(socks).await.is_err(),
        "the listener is closed"
    );
    drop(held);
    assert!(
        lab.b.shutdown(Duration::from_secs(2)).await,
        "an idle proxy drains at once"
    );
}

/// Concurrent first connections for one pool key share the dials: eight
/// clients at once, as many TLS handshakes between the proxies as the
/// proxy has worker threads (two, so their busy streams' encryption runs on
/// both), every stream carried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_connections_share_one_dial_per_worker_thread() {
    let lab = Lab::start(47).await;
    let echo = SocketAddr::new(lab.ip("2.1"), 9000);
    echo_server(echo).await;
    let socks = lab.a.addrs.socks5.unwrap();
    let clients = (0..8).map(|_| {
        let client = lab.ip("1.1");
        tokio::spawn(async move {
            let tcp = socks5_connect(socks, client, echo).await.expect("allowed");
            echo_roundtrip(tcp, 64 * 1024).await
        })
    });
    for client in clients.collect::<Vec<_>>() {
        let (sent, received, n) = client.await.unwrap();
        assert_eq!((n, sent), (64 * 1024, received));
    }
    let pool = lab.a.outbound.pool();
    assert_eq!(pool.parallel_connections(), 2, "one per worker thread");
    assert_eq!(pool.dials(), 2, "one dial per worker thread for one key");
    assert_eq!(pool.open_connections(), 2);
}
