//! hello-app against a real PostgreSQL (started from the installed server
//! binaries) and local TLS servers standing in for the public APIs.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hbone_workloads::db::{Database, DbConfig};
use hbone_workloads::dial::Dialer;
use hbone_workloads::external::{Reachability, check, client_tls};
use hbone_workloads::hello::{HelloConfig, serve};
use hbone_workloads::http_get::Get;
use hbone_workloads::pgserver::{PgServer, find_binaries};
use hbone_workloads::public_api::{self, PublicCa, StandIn};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

async fn get(addr: SocketAddr, path: &str, accept: &str) -> (u16, String) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let request = Get {
        accept: Some(accept),
        ..Get::once("hello", path)
    };
    let answer = hbone_workloads::http_get::get(&mut tcp, &request)
        .await
        .unwrap();
    (answer.status, answer.text())
}

/// hello-app on `listen`, on `pg`, checking `github` and `cloudflare`
/// (trusting `extra_ca` besides the web's roots).
async fn start_hello(
    pg: &PgServer,
    listen: SocketAddr,
    github: String,
    cloudflare: String,
    extra_ca: Option<String>,
) {
    let db = Database::new(
        DbConfig::new(
            &pg.addr.ip().to_string(),
            pg.addr.port(),
            &pg.user,
            &pg.password,
            &pg.dbname,
        ),
        Dialer::Direct,
    );
    let config = HelloConfig {
        listen,
        identity: Some("spiffe://cluster.local/ns/demo/sa/hello-app".into()),
        github_url: github,
        cloudflare_url: cloudflare,
        extra_ca_pem: extra_ca,
        check_timeout: Duration::from_secs(2),
    };
    let listener = TcpListener::bind(listen).await.unwrap();
    tokio::spawn(serve(
        config,
        db,
        Dialer::Direct,
        listener,
        std::future::pending(),
    ));
}

/// Fails when PostgreSQL's server binaries are missing: the tests that
/// need them are ignored (shown as skipped) unless asked for, and
/// scripts/test.sh installs them before it asks.
fn require_postgres() {
    if let Err(e) = find_binaries() {
        panic!("this test needs PostgreSQL's server binaries (scripts/test.sh installs them): {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL's server binaries (scripts/test.sh installs them and runs it as root)"]
async fn page_json_and_health_follow_the_database() {
    require_postgres();
    let mut pg = tokio::task::spawn_blocking(|| {
        PgServer::start(ip("127.61.0.1"), 0, "hello", "s3cret", "hellodb").unwrap()
    })
    .await
    .unwrap();
    let listen: SocketAddr = "127.61.0.2:18000".parse().unwrap();
    start_hello(
        &pg,
        listen,
        "https://127.61.0.9:1/".into(),
        "https://127.61.0.9:2/".into(),
        None,
    )
    .await;

    let (status, body) = get(listen, "/", "application/json").await;
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["database"]["reachable"], true, "{body}");
    assert!(
        json["database"]["server_version"]
            .as_str()
            .unwrap()
            .chars()
            .next()
            .unwrap()
            .is_ascii_digit()
    );
    assert_eq!(json["database"]["visits"], 1);
    assert_eq!(
        json["identity"],
        "spiffe://cluster.local/ns/demo/sa/hello-app"
    );
    assert_eq!(json["external"].as_array().unwrap().len(), 2);
    let (_, body) = get(listen, "/", "application/json").await;
    assert!(
        body.contains("\"visits\":2"),
        "each page view is recorded: {body}"
    );

    let (status, html) = get(listen, "/", "text/html").await;
    assert_eq!(status, 200);
    assert!(
        html.contains("<h2>PostgreSQL</h2>") && html.contains("3 visits recorded"),
        "{html}"
    );
    assert!(html.contains("GitHub API") && html.contains("Cloudflare API"));
    assert!(
        !html.contains("s3cret") && !body.contains("s3cret"),
        "the password never shows"
    );

    assert_eq!(get(listen, "/health", "*/*").await.0, 200);

    tokio::task::block_in_place(|| pg.stop());
    let (status, body) = get(listen, "/health", "*/*").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("unhealthy") && body.contains("reason"),
        "{body}"
    );
    let (status, html) = get(listen, "/", "text/html").await;
    assert_eq!(status, 200, "the page still serves without its database");
    assert!(html.contains("did not answer"), "{html}");

    tokio::task::block_in_place(|| pg.restart().unwrap());
    let mut healthy = false;
    for _ in 0..50 {
        if get(listen, "/health", "*/*").await.0 == 200 {
            healthy = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(healthy, "recovered after the database came back");
}

/// A "public" CA and a TLS server on `addr` answering HTTP 403, like an unauthenticated API call.
async fn https_stand_in(addr: SocketAddr) -> String {
    let ca = PublicCa::generate().unwrap();
    let tls = ca.server_config(&[&addr.ip().to_string()]).unwrap();
    let listener = TcpListener::bind(addr).await.unwrap();
    let answer = StandIn {
        status: 403,
        reason: "Forbidden",
        body: String::new(),
    };
    tokio::spawn(public_api::serve(listener, tls, answer));
    ca.pem().to_string()
}

#[tokio::test]
async fn external_checks_tell_reachable_blocked_refused_and_timed_out() {
    let open: SocketAddr = "127.61.1.1:18443".parse().unwrap();
    let ca = https_stand_in(open).await;
    let tls = client_tls(Some(&ca));
    let t = Duration::from_millis(500);

    let reachable = check(
        "GitHub API",
        &format!("https://{open}/"),
        &Dialer::Direct,
        tls.clone(),
        t,
    )
    .await;
    assert_eq!(
        reachable.result,
        Reachability::Reachable { status: 403 },
        "a 403 still proves the path is open"
    );
    assert!(reachable.result.explain().contains("path is open"));

    // An SNI filter: accepts TCP, reads the ClientHello, cuts the connection.
    let cut: SocketAddr = "127.61.1.2:18443".parse().unwrap();
    let listener = TcpListener::bind(cut).await.unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let mut hello = [0u8; 512];
            let _ = tcp.read(&mut hello).await;
            drop(tcp);
        }
    });
    let blocked = check(
        "Cloudflare API",
        &format!("https://{cut}/"),
        &Dialer::Direct,
        tls.clone(),
        t,
    )
    .await;
    assert!(
        matches!(blocked.result, Reachability::Blocked { .. }),
        "{:?}",
        blocked.result
    );
    assert!(blocked.result.explain().contains("SNI"));

    let refused = check(
        "x",
        "https://127.61.1.3:18443/",
        &Dialer::Direct,
        tls.clone(),
        t,
    )
    .await;
    assert!(
        matches!(refused.result, Reachability::Unreachable { .. }),
        "{:?}",
        refused.result
    );

    // Accepts and never answers.
    let silent: SocketAddr = "127.61.1.4:18443".parse().unwrap();
    let listener = TcpListener::bind(silent).await.unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            held.push(tcp);
        }
    });
    let timed_out = check("x", &format!("https://{silent}/"), &Dialer::Direct, tls, t).await;
    assert_eq!(timed_out.result, Reachability::TimedOut);
}

/// Runs headless Chromium on `url` with extra `args`; `None` when Chromium is not installed.
async fn chromium(url: &str, args: &[String]) -> Option<std::process::Output> {
    let exe = ["chromium", "chromium-browser"].into_iter().find(|exe| {
        std::process::Command::new(exe)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })?;
    let profile = tempfile::tempdir().unwrap();
    let run = tokio::process::Command::new(exe)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--no-first-run",
            "--window-size=1280,1100",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .kill_on_drop(true)
        .output();
    Some(
        tokio::time::timeout(Duration::from_secs(90), run)
            .await
            .expect("Chromium finished within 90 s")
            .unwrap(),
    )
}

/// The status page as a person sees it: rendered by a real browser, with
/// the database card and both outside checks, and a screenshot to look at.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL and Chromium (scripts/test.sh installs them and runs it as root)"]
async fn status_page_renders_in_a_real_browser() {
    require_postgres();
    let pg = tokio::task::spawn_blocking(|| {
        PgServer::start(ip("127.61.2.1"), 0, "hello", "hello", "hellodb").unwrap()
    })
    .await
    .unwrap();
    let ca = PublicCa::generate().unwrap();
    let mut urls = Vec::new();
    for (addr, answer) in [
        ("127.61.2.3:18443", StandIn::github()),
        ("127.61.2.4:18443", StandIn::cloudflare()),
    ] {
        let addr: SocketAddr = addr.parse().unwrap();
        let tls = ca.server_config(&[&addr.ip().to_string()]).unwrap();
        let listener = TcpListener::bind(addr).await.unwrap();
        tokio::spawn(public_api::serve(listener, tls, answer));
        urls.push(format!("https://{addr}/"));
    }
    let listen: SocketAddr = "127.61.2.2:18000".parse().unwrap();
    let [github, cloudflare] = [urls[0].clone(), urls[1].clone()];
    start_hello(&pg, listen, github, cloudflare, Some(ca.pem().to_string())).await;

    let url = format!("http://{listen}/");
    let dom = chromium(&url, &["--dump-dom".to_string()])
        .await
        .expect("this test needs Chromium (scripts/test.sh installs it as root)");
    assert!(
        dom.status.success(),
        "{}",
        String::from_utf8_lossy(&dom.stderr)
    );
    let dom = String::from_utf8_lossy(&dom.stdout);
    for needle in [
        "PostgreSQL",
        "GitHub API",
        "Cloudflare API",
        "visits recorded",
        "cluster.local/ns/demo/sa/hello-app",
    ] {
        assert!(
            dom.contains(needle),
            "the rendered page lacks {needle:?}:\n{dom}"
        );
    }
    // Both outside calls answered (200 and 400): both cards say reachable.
    assert!(dom.matches("reachable").count() >= 2, "{dom}");

    let out_dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
    std::fs::create_dir_all(&out_dir).unwrap();
    let shot = out_dir.join("hello-app-status-page.png");
    let _ = std::fs::remove_file(&shot);
    let run = chromium(&url, &[format!("--screenshot={}", shot.display())])
        .await
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let png = std::fs::read(&shot).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "a PNG was written");
    assert!(
        png.len() > 10_000,
        "the screenshot has content: {} bytes",
        png.len()
    );
    eprintln!("screenshot: {}", shot.display());
    tokio::task::block_in_place(move || drop(pg));
}
