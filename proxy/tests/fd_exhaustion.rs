//! Out of file descriptors: with every descriptor of the process taken, a
//! connection waiting on the SOCKS5 listener cannot be accepted. The accept
//! loop backs off instead of spinning (it uses a sliver of a core while it
//! waits), says so once, and accepts the connection as soon as descriptors
//! are free again.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use nix::sys::resource::{Resource, getrlimit, setrlimit};
use support::{Lab, echo_roundtrip, echo_server, log_text, socks5_connect};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

/// CPU seconds this process has used (user + system), read from its
/// /proc stat file, opened beforehand: there is no descriptor to spare.
fn cpu_seconds(stat: &std::fs::File) -> f64 {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 4096];
    let n = stat.read_at(&mut buf, 0).unwrap();
    let stat = String::from_utf8_lossy(&buf[..n]).into_owned();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_backs_off_while_descriptors_run_out_and_recovers() {
    let lab = Lab::start(66).await;
    let echo = SocketAddr::new(lab.ip("2.1"), 9000);
    echo_server(echo).await;
    let socks5 = lab.a.addrs.socks5.unwrap();
    let stat = std::fs::File::open("/proc/self/stat").unwrap();
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    let open_now = std::fs::read_dir("/proc/self/fd").unwrap().count() as u64;
    setrlimit(Resource::RLIMIT_NOFILE, open_now + 16, hard).unwrap();

    // Take every descriptor left, then give one back for the client's socket.
    let mut hogs = Vec::new();
    while let Ok(f) = std::fs::File::open("/dev/null") {
        hogs.push(f);
    }
    hogs.pop();
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(lab.ip("1.1"), 0)).unwrap();
    // The kernel completes the handshake; the proxy's accept has no descriptor for it.
    let mut waiting = socket.connect(socks5).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = cpu_seconds(&stat);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let spent = cpu_seconds(&stat) - before;
    let reports = log_text().matches("backing off until it recovers").count();

    drop(hogs);
    setrlimit(Resource::RLIMIT_NOFILE, soft, hard).unwrap();
    assert!(
        spent < 0.5,
        "the accept loop waited instead of spinning: {spent:.2} s of CPU in 2 s"
    );
    assert_eq!(
        reports,
        1,
        "said once, not at every failed accept:\n{}",
        log_text()
    );

    // Recovered: the connection that waited is served.
    waiting.write_all(&[0x05, 0x01, 0x00]).await.unwrap();
    let mut choice = [0u8; 2];
    tokio::time::timeout(Duration::from_secs(3), waiting.read_exact(&mut choice))
        .await
        .expect("accepted once descriptors were free")
        .unwrap();
    assert_eq!(choice, [0x05, 0x00]);
    let tcp = socks5_connect(socks5, lab.ip("1.1"), echo).await.unwrap();
    let (sent, received, n) = echo_roundtrip(tcp, 4096).await;
    assert_eq!((n, sent), (4096, received));
}
