//! HTTP/2 floods from a peer with a valid certificate, frame by frame as
//! an attacker writes them: a CONTINUATION flood, a SETTINGS flood and a
//! peer that never opens its flow-control window. Each is bounded by a
//! setting the proxy makes (named in each test), and no other connection
//! is harmed.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hbone_proxy::observe::refusal::{Direction, Reason};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const ENHANCE_YOUR_CALM: u32 = 0xb;

/// One HTTP/2 frame: 24-bit length, type, flags, stream id, payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Reads frames until a GOAWAY (its error code) or the end of the connection.
async fn goaway_code(tls: &mut (impl AsyncReadExt + Unpin)) -> Option<u32> {
    loop {
        let mut head = [0u8; 9];
        tls.read_exact(&mut head).await.ok()?;
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        tls.read_exact(&mut payload).await.ok()?;
        if head[3] == GOAWAY && len >= 8 {
            return Some(u32::from_be_bytes(payload[4..8].try_into().unwrap()));
        }
    }
}

/// A CONTINUATION flood (CVE-2024-27316 and kin): a header block that
/// never ends, sent as endless empty CONTINUATION frames. Bounded by the
/// proxy's 64 KiB header-list cap, from which h2 allows 5 CONTINUATIONs
/// per block: the sixth closes the connection with GOAWAY
/// ENHANCE_YOUR_CALM, counted as `h2_abuse`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_continuation_flood_is_cut_with_enhance_your_calm() {
    let lab = Lab::start(71).await;
    echo_server(SocketAddr::new(lab.ip("2.1"), 9000)).await;
    let mut tls = mesh_tls(&lab, SocketAddr::new(lab.ip("2.1"), 15008)).await;
    tls.write_all(PREFACE).await.unwrap();
    tls.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    // An HPACK literal whose 10-byte name has only begun: more is always needed.
    tls.write_all(&frame(HEADERS, 0, 1, &[0x40, 0x0a, b'a']))
        .await
        .unwrap();
    let mut sent = 0;
    for _ in 0..100_000 {
        if tls
            .write_all(&frame(CONTINUATION, 0, 1, &[]))
            .await
            .is_err()
        {
            break;
        }
        sent += 1;
    }
    let code = tokio::time::timeout(Duration::from_secs(5), goaway_code(&mut tls))
        .await
        .expect("the proxy answers the flood within 5 s");
    assert_eq!(code, Some(ENHANCE_YOUR_CALM), "after {sent} CONTINUATIONs");
    eprintln!(
        "GOAWAY ENHANCE_YOUR_CALM; {sent} CONTINUATIONs were written before the proxy closed"
    );
    still_serving(&lab).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(
        lab.b
            .core
            .metrics
            .refusal_count(Direction::Inbound, Reason::H2Abuse),
        1
    );
}

/// A SETTINGS flood from a peer that never reads the ACKs. h2 keeps one
/// unacknowledged SETTINGS at a time and reads no further frame until its
/// ACK is written, so once the kernel's buffers between the two are full
/// of ACKs the proxy reads no more from the flooder: it stalls only itself
/// (after a few MB), and everyone else is served throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settings_flood_stalls_only_the_flooder() {
    let lab = Lab::start(72).await;
    echo_server(SocketAddr::new(lab.ip("2.1"), 9000)).await;
    let tls = mesh_tls(&lab, SocketAddr::new(lab.ip("2.1"), 15008)).await;
    let (_unread, mut write) = tokio::io::split(tls);
    let written = Arc::new(AtomicU64::new(0));
    let attempt = 10_000_000u64;
    // SETTINGS_INITIAL_WINDOW_SIZE, over and over.
    let settings = frame(SETTINGS, 0, 0, &[0x00, 0x04, 0x00, 0x01, 0x00, 0x00]);
    let frame_len = settings.len() as u64;
    let flood = tokio::spawn({
        let written = written.clone();
        async move {
            write.write_all(PREFACE).await?;
            let batch = settings.repeat(64);
            for _ in 0..attempt / 64 {
                write.write_all(&batch).await?;
                written.fetch_add(batch.len() as u64, Ordering::Relaxed);
            }
            Ok::<_, std::io::Error>(())
        }
    });
    let mut last = u64::MAX;
    let mut stalled = false;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        still_serving(&lab).await;
        let now = written.load(Ordering::Relaxed);
        if now == last || flood.is_finished() {
            stalled = true;
            break;
        }
        last = now;
    }
    let total = written.load(Ordering::Relaxed);
    eprintln!("the SETTINGS flooder stalled after {total} bytes");
    assert!(stalled, "still flooding after 15 s: {total} bytes");
    assert!(
        total < attempt * frame_len / 2,
        "the flooder got {total} bytes in"
    );
    flood.abort();
}

/// A peer that sets its stream window to 0 and never opens it, on a
/// stream whose workload sends without end. The proxy reads from the
/// workload only when h2 has granted it capacity (the relay reserves
/// before it sends), so what it takes from the workload is one read
/// buffer (16 KiB): the rest waits in the kernel's socket buffers, and
/// the sender is throttled rather than the proxy's memory growing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_opens_its_window_throttles_the_sender() {
    let lab = Lab::start(73).await;
    // The lab's policy allows port 9000 only: its first connection is the
    // firehose, the ones after it are echoed (for `still_serving`).
    let listener = TcpListener::bind(SocketAddr::new(lab.ip("2.1"), 9000))
        .await
        .unwrap();
    let pushed = Arc::new(AtomicU64::new(0));
    let hose = tokio::spawn({
        let pushed = pushed.clone();
        async move {
            let (mut tcp, _) = listener.accept().await?;
            tokio::spawn(async move {
                while let Ok((mut tcp, _)) = listener.accept().await {
                    tokio::spawn(async move {
                        let (mut r, mut w) = tcp.split();
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                    });
                }
            });
            let chunk = vec![7u8; 64 * 1024];
            for _ in 0..1024 {
                tcp.write_all(&chunk).await?;
                pushed.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
            Ok::<_, std::io::Error>(())
        }
    });
    let tls = mesh_tls(&lab, SocketAddr::new(lab.ip("2.1"), 15008)).await;
    let (send, conn) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, bytes::Bytes>(tls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let request = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(format!("{}:9000", lab.ip("2.1")))
        .body(())
        .unwrap();
    let mut send = send.ready().await.unwrap();
    let (response, _stream) = send.send_request(request, false).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    let _body = response.into_body();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let first = pushed.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let later = pushed.load(Ordering::Relaxed);
    still_serving(&lab).await;
    eprintln!("the workload stalled after sending {later} bytes");
    // Of the 64 MiB the workload tries to send, only what the kernel's
    // buffers hold went out, and nothing more once they were full.
    assert_eq!(first, later, "the sender is stalled");
    assert!(later < 32 * 1024 * 1024, "{later} bytes left the workload");
    assert!(!hose.is_finished());
    hose.abort();
}
