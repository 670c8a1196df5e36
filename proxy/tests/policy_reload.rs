//! A proxy follows its policy files: a new DENY closes the open streams it
//! covers (and refuses new ones), leaves the others alone, and a broken edit
//! is reported and ignored.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use hbone_proxy::sources::policy_file::follow_policies;
use support::{
    DENY_CLIENT, Lab, POLICY, closed_within, echo_server, http_get, log_text, socks5_connect,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

const UNRELATED: &str = "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: someone-else, namespace: demo}
spec:
  selector: {matchLabels: {app: other}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/demo/sa/stranger]}}]
";

/// One small exchange on an open connection: true if it still carries bytes.
async fn still_carries(tcp: &mut TcpStream) -> bool {
    if tcp.write_all(b"ping").await.is_err() {
        return false;
    }
    let mut back = [0u8; 4];
    matches!(
        tokio::time::timeout(Duration::from_secs(3), tcp.read_exact(&mut back)).await,
        Ok(Ok(_)) if &back == b"ping"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_deny_closes_the_streams_it_covers_and_a_broken_edit_is_ignored() {
    let net = 57;
    let lab = Lab::start(net).await;
    let echo = SocketAddr::new(lab.ip("2.1"), 9000);
    echo_server(echo).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("10-allow.yaml"), POLICY).unwrap();
    let core = lab.b.core.clone();
    let stop = CancellationToken::new();
    let follower = tokio::spawn(follow_policies(
        core.clone(),
        vec![dir.path().to_path_buf()],
        "istio-system".into(),
        Duration::from_millis(50),
        stop.clone(),
    ));
    let socks = lab.a.addrs.socks5.unwrap();
    let mut open = socks5_connect(socks, lab.ip("1.1"), echo).await.unwrap();
    assert!(still_carries(&mut open).await);
    assert_eq!(core.established.len(), 1, "the stream is tracked");

    // A policy about someone else: swapped in, and the open stream carries on.
    tokio::time::sleep(Duration::from_millis(20)).await;
    std::fs::write(dir.path().join("20-unrelated.yaml"), UNRELATED).unwrap();
    for _ in 0..100 {
        if core.policies().policies().len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(core.policies().policies().len(), 2);
    assert!(
        still_carries(&mut open).await,
        "an allowed stream stays open"
    );

    // A DENY for the client: the open stream is closed, new ones refused.
    std::fs::write(dir.path().join("30-deny.yaml"), DENY_CLIENT).unwrap();
    assert!(
        closed_within(&mut open, Duration::from_secs(3)).await,
        "the open stream was closed"
    );
    let refused = socks5_connect(socks, lab.ip("1.1"), echo).await;
    assert_eq!(refused.err(), Some(0x02), "SOCKS5: not allowed by ruleset");
    let (_, metrics) = http_get(lab.b.addrs.metrics.unwrap(), "/metrics").await;
    assert!(
        metrics.contains("hbone_refusals_total{direction=\"inbound\",reason=\"policy_revoked\"} 1"),
        "{metrics}"
    );
    let logs = log_text();
    assert!(
        logs.contains("open HBONE stream closed") && logs.contains("no-more-client"),
        "the log names the policy: {logs}"
    );
    for _ in 0..100 {
        if core.established.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        core.established.is_empty(),
        "closed streams leave the table"
    );

    // A broken edit: reported, and the proxy keeps the three policies.
    tokio::time::sleep(Duration::from_millis(20)).await;
    std::fs::write(dir.path().join("30-deny.yaml"), "kind: [oops\n").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(core.policies().policies().len(), 3);
    assert!(log_text().contains("the changed policies do not load"));

    // The DENY removed: the client is welcome again.
    std::fs::remove_file(dir.path().join("30-deny.yaml")).unwrap();
    let mut again = None;
    for _ in 0..100 {
        if let Ok(tcp) = socks5_connect(socks, lab.ip("1.1"), echo).await {
            again = Some(tcp);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut again = again.expect("allowed once the DENY is gone");
    assert!(still_carries(&mut again).await);

    stop.cancel();
    assert_eq!(follower.await.unwrap(), 3, "three sets were swapped in");
}
