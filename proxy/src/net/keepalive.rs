//! HTTP/2 keep-alive on HBONE connections, both ends: a PING every 10 s,
//! and the connection dropped when 20 s pass without the answer (ztunnel's
//! client does it on its pool; here the receiving side does it too). A peer that vanished without a FIN (a node that died, a path
//! that a firewall silently broke) would otherwise hold the pool's
//! connection — and every stream opened on it — until TCP gives up, which
//! takes many minutes.

use std::time::Duration;

use h2::{Ping, PingPong};

/// Pings every `every`; returns (why) once a PING goes unanswered for
/// `timeout` or fails. Runs forever on a healthy connection.
pub async fn watch(mut ping_pong: PingPong, every: Duration, timeout: Duration) -> String {
    loop {
        tokio::time::sleep(every).await;
        match tokio::time::timeout(timeout, ping_pong.ping(Ping::opaque())).await {
            Ok(Ok(_pong)) => {}
            Ok(Err(e)) => return format!("PING failed: {e}"),
            Err(_) => return format!("no answer to PING within {timeout:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client connection whose server answers PINGs only when `serve` is
    /// true. The request handle comes back too: once every handle is gone,
    /// h2 closes the connection on its own.
    async fn client(serve: bool) -> (PingPong, h2::client::SendRequest<bytes::Bytes>) {
        let (a, z) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            let mut conn = h2::server::handshake(z).await.unwrap();
            if serve {
                // Polling the connection is what answers PINGs.
                while conn.accept().await.is_some() {}
            } else {
                // Handshaken, then silent: a peer that went away without a FIN.
                tokio::time::sleep(Duration::from_secs(30)).await;
                drop(conn);
            }
        });
        let (send, mut conn) = h2::client::handshake(a).await.unwrap();
        let ping_pong = conn.ping_pong().expect("taken once");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        (ping_pong, send)
    }

    #[tokio::test]
    async fn a_silent_peer_is_detected_and_a_live_one_is_not() {
        let (every, timeout) = (Duration::from_millis(20), Duration::from_millis(100));
        let (ping_pong, _held) = client(false).await;
        let silent = watch(ping_pong, every, timeout);
        let why = tokio::time::timeout(Duration::from_secs(2), silent)
            .await
            .expect("detected well within 2 s");
        assert!(why.contains("no answer to PING"), "{why}");

        let (ping_pong, _held) = client(true).await;
        let live = watch(ping_pong, every, timeout);
        assert!(
            tokio::time::timeout(Duration::from_millis(400), live)
                .await
                .is_err(),
            "a peer that answers keeps its connection"
        );
    }
}
