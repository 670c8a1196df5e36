//! `hbone-lab app <name>`: the lab's workloads as processes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use clap::Subcommand;
use hbone_workloads::db::{Database, DbConfig};
use hbone_workloads::dial::Dialer;
use hbone_workloads::gateway::GatewayConfig;
use hbone_workloads::hello::HelloConfig;
use hbone_workloads::peers::{self, RrSettings};
use hbone_workloads::probe::{ProbeKind, ProbeOutcome, probe};

/// Every app reaches the mesh directly (captured) or, when HBONE_SOCKS5=ip:port
/// is set, through that SOCKS5 proxy from HBONE_SOURCE_IP.
#[derive(Subcommand)]
pub enum AppCommand {
    /// hello-app: status page and /health on PostgreSQL (DB_HOST, DB_PORT, DB_USER,
    /// DB_PASSWORD or DB_PASSWORD_FILE, DB_NAME, or DATABASE_URL).
    Hello {
        #[arg(long, default_value = "0.0.0.0:8000")]
        listen: SocketAddr,
    },
    /// The standalone gateway: plain HTTP in, hello-app through the mesh.
    Gateway {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// host:port of hello-app.
        #[arg(long, default_value = "hello-app:8000")]
        upstream: String,
    },
    /// worker-app: writes to PostgreSQL every interval and logs the outcome.
    Worker {
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        interval: Duration,
        /// Stop after this many rounds (default: forever).
        #[arg(long)]
        rounds: Option<u64>,
    },
    /// Connect to TARGET (host:port) and tell whether the application
    /// answers. In an ambient pod the connect itself always succeeds (into
    /// the pod's own proxy), so the answer is what tells allowed from refused.
    /// Exit status: 0 answered, 1 refused (closed or reset), 2 no answer in time.
    Probe {
        target: String,
        /// http (GET /health), postgres (SSLRequest) or tls (a handshake with SNI).
        #[arg(long, default_value = "http")]
        kind: ProbeKind,
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Echo every byte back.
    Echo {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Discard and count.
    Sink {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Send bytes to host:port for a time (or up to a size), report Gbit/s.
    Source {
        target: String,
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
        #[arg(long, default_value_t = u64::MAX)]
        bytes: u64,
    },
    /// Request/response server with fixed sizes.
    RrServer {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long, default_value_t = 1024)]
        request: usize,
        #[arg(long, default_value_t = 1024)]
        response: usize,
    },
    /// Request/response client: latency percentiles (HdrHistogram), optionally rate-limited.
    RrClient {
        target: String,
        #[arg(long, default_value_t = 1024)]
        request: usize,
        #[arg(long, default_value_t = 1024)]
        response: usize,
        /// Requests per second (default: as fast as possible).
        #[arg(long)]
        rate: Option<f64>,
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// A new connection per request (TCP_CRR).
        #[arg(long)]
        new_connection_each: bool,
    },
}

fn split_target(target: &str) -> anyhow::Result<(String, u16)> {
    let (host, port) = target
        .rsplit_once(':')
        .ok_or_else(|| anyhow::anyhow!("{target:?} is not host:port"))?;
    Ok((host.to_string(), port.parse()?))
}

pub async fn run(command: AppCommand) -> anyhow::Result<()> {
    let dialer = Dialer::from_env();
    match command {
        AppCommand::Hello { listen } => {
            let db = Database::new(DbConfig::from_env()?, dialer.clone());
            let listener = tokio::net::TcpListener::bind(listen).await?;
            println!("hello-app on http://{listen}/ (database {:?})", db.config());
            let stop = async {
                let _ = crate::proxy_cmd::wait_for_stop().await;
            };
            hbone_workloads::hello::serve(
                HelloConfig::from_env(listen),
                db,
                dialer,
                listener,
                stop,
            )
            .await?;
        }
        AppCommand::Gateway { listen, upstream } => {
            let (upstream_host, upstream_port) = split_target(&upstream)?;
            let listener = tokio::net::TcpListener::bind(listen).await?;
            println!("gateway on http://{listen}/ → {upstream}");
            let config = GatewayConfig {
                upstream_host,
                upstream_port,
                identity: std::env::var("HBONE_IDENTITY").ok(),
            };
            hbone_workloads::gateway::serve(listener, config, dialer).await?;
        }
        AppCommand::Worker { interval, rounds } => {
            let db = Database::new(DbConfig::from_env()?, dialer);
            let ok = hbone_workloads::worker::run(&db, interval, rounds).await;
            println!("worker-app: {ok} successful rounds");
        }
        AppCommand::Probe {
            target,
            kind,
            timeout,
        } => {
            let (host, port) = split_target(&target)?;
            let outcome = match tokio::time::timeout(timeout, dialer.connect(&host, port)).await {
                Ok(Ok(mut stream)) => probe(&mut stream, kind, &host, timeout).await,
                Ok(Err(e)) => ProbeOutcome::Refused(e.to_string()),
                Err(_) => ProbeOutcome::TimedOut,
            };
            println!("{target}: {outcome}");
            std::process::exit(outcome.exit_code());
        }
        AppCommand::Echo { listen } => peers::echo(peers::listen(listen).await?).await?,
        AppCommand::Sink { listen } => {
            peers::sink(peers::listen(listen).await?, Arc::new(AtomicU64::new(0))).await?
        }
        AppCommand::Source {
            target,
            duration,
            bytes,
        } => {
            let (host, port) = split_target(&target)?;
            let r = peers::source(&dialer, &host, port, bytes, duration).await?;
            println!("{}", serde_json::to_string_pretty(&r)?);
        }
        AppCommand::RrServer {
            listen,
            request,
            response,
        } => peers::rr_server(peers::listen(listen).await?, request, response).await?,
        AppCommand::RrClient {
            target,
            request,
            response,
            rate,
            duration,
            new_connection_each,
        } => {
            let (host, port) = split_target(&target)?;
            let settings = RrSettings {
                request,
                response,
                rate,
                max_requests: u64::MAX,
                duration,
                new_connection_each,
            };
            let r = peers::rr_client(&dialer, &host, port, &settings).await?;
            println!("{}", serde_json::to_string_pretty(&r)?);
        }
    }
    Ok(())
}
