//! `/debug/connections`: the receiving proxy records an allowed stream with
//! the policy and rule that let it through, a refused one with its reason,
//! the sending proxy its outbound side; the ring keeps only the newest.

mod support;

use std::net::SocketAddr;

use support::{Lab, echo_server, http_get, socks5_connect};

async fn log_of(proxy: &hbone_proxy::ProxyHandle) -> serde_json::Value {
    let (status, body) = http_get(proxy.addrs.admin.unwrap(), "/debug/connections").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_and_refused_connections_are_recorded_with_their_deciding_rule() {
    let lab = Lab::start(63).await;
    let echo = SocketAddr::new(lab.ip("2.1"), 9000);
    echo_server(echo).await;
    lab.echo_via_a(echo, 1000).await;
    // The stranger is not named by echo's ALLOW policy.
    let refused = socks5_connect(lab.a.addrs.socks5.unwrap(), lab.ip("1.2"), echo).await;
    assert!(refused.is_err(), "the stranger is refused");

    let mut log = serde_json::Value::Null;
    for _ in 0..50 {
        log = log_of(&lab.b).await;
        if log["recent"].as_array().unwrap().len() >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let recent = log["recent"].as_array().unwrap();
    let allowed = recent
        .iter()
        .find(|r| r["outcome"] == "closed")
        .unwrap_or_else(|| panic!("{log:#}"));
    assert_eq!(allowed["direction"], "inbound");
    assert_eq!(
        allowed["srcIdentity"],
        "spiffe://cluster.local/ns/demo/sa/client"
    );
    assert_eq!(allowed["dstWorkload"], "echo");
    assert_eq!(allowed["decision"]["allowed"], true);
    assert_eq!(allowed["decision"]["policy"], "demo/echo-clients");
    assert_eq!(allowed["decision"]["rule"], "rules[0]");
    assert_eq!(allowed["tls"]["version"], "TLSv1_3");
    assert_eq!(allowed["tls"]["alpn"], "h2");
    assert_eq!(
        allowed["bytesRecv"], 1000,
        "the bytes the client sent reached the server side"
    );
    let denied = recent
        .iter()
        .find(|r| r["outcome"] == "refused")
        .unwrap_or_else(|| panic!("{log:#}"));
    assert_eq!(
        denied["srcIdentity"],
        "spiffe://cluster.local/ns/demo/sa/stranger"
    );
    assert_eq!(denied["decision"]["allowed"], false);
    assert_eq!(denied["decision"]["policy"], "demo/echo-clients");
    assert!(
        denied["detail"]
            .as_str()
            .unwrap()
            .starts_with("policy_denied"),
        "{denied:#}"
    );

    let sender = log_of(&lab.a).await;
    assert!(
        sender["recent"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["direction"] == "socks5"
                && r["outcome"] == "closed"
                && r["srcWorkload"] == "client"
                && r["dstWorkload"] == "echo"),
        "{sender:#}"
    );
    let (_, table) = http_get(
        lab.b.addrs.admin.unwrap(),
        "/debug/connections?format=table",
    )
    .await;
    assert!(
        table.contains("peer identity") && table.contains("refused"),
        "{table}"
    );

    // Bounded: the ring keeps the newest only.
    lab.b.core.connections.set_capacity(2);
    for _ in 0..3 {
        lab.echo_via_a(echo, 10).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let recent = log_of(&lab.b).await["recent"].as_array().unwrap().clone();
    assert_eq!(recent.len(), 2);
    assert!(
        recent.iter().all(|r| r["outcome"] == "closed"),
        "the older ones went first"
    );
}
