//! `hbone-lab soak`: faults under load, and a report of what was lost (nothing, we hope).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use hbone_soak::churn::{self, ChurnSettings};
use hbone_soak::{SoakProgress, SoakSettings, run};

/// Drive byte-checked traffic through hbone-lab's mesh while faults happen
/// (needs root: it builds the benchmark's two pod namespaces).
///
/// Client loops in the client pod open connection after connection through
/// both node proxies to an echo server in the server pod, each carrying a
/// few payloads of random sizes that are checked byte for byte. Meanwhile,
/// in cycles of up to a minute:
///   - certificates live 3× the CA outage (at least 6 s) and rotate at half that;
///   - the CA is stopped (10 s, or a sixth of a short run) and restarted;
///   - the server-side proxy is handed over to a new process (SO_REUSEPORT,
///     GOAWAY, drain): no new connection may fail;
///   - it is killed with SIGKILL and restarted: clients see an error, not a hang;
///   - a DENY policy is applied and removed.
///
/// Failures are counted by the window they fell in, their phase and reason.
/// Only a kill or a DENY excuses one. Exits non-zero if any failure is not
/// excused, any connection started in a hand-over failed, or a byte came back wrong.
///
/// With --churn it looks for leaks instead (10 minutes by default). Both
/// node proxies run fed over xDS, pods handed over by ZDS, pools releasing
/// idle connections after --pool-idle; client loops end connections every
/// way a peer can (clean, reset by either end mid-stream, half-closed and
/// left in FIN-WAIT-2, abandoned before the CONNECT is answered), the load
/// pauses until the pools release, a pod comes and goes every 4 s, and the
/// control plane restarts every 90 s. Memory, descriptors, threads and
/// async tasks are read every second. It exits non-zero if descriptors or
/// tasks do not come back to the idle baseline once the load stops, or
/// (from 5 minutes of churn) memory grows more than 1 MiB/hour. With
/// --ztunnel (or ZTUNNEL_BIN), a ztunnel goes through the same run after
/// hbone-lab, reported beside it.
///
///   sudo hbone-lab soak --churn --json churn.json
///   sudo ZTUNNEL_BIN=ztunnel hbone-lab soak --churn --duration 30m
#[derive(Args)]
#[command(verbatim_doc_comment)]
pub struct SoakArgs {
    /// How long the load runs (faults repeat every minute) [default: 60s, with --churn 10m].
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Look for leaks under churn instead of losses under faults.
    #[arg(long)]
    churn: bool,
    /// With --churn: a ztunnel to put through the same run.
    #[arg(long, env = "ZTUNNEL_BIN", requires = "churn")]
    ztunnel: Option<PathBuf>,
    /// With --churn: how long both meshes keep an unused pooled connection.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pool_idle: Duration,
    /// Concurrent client loops.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// How long the CA is away each cycle (at most a sixth of a cycle).
    #[arg(long, value_parser = humantime::parse_duration)]
    ca_outage: Option<Duration>,
    /// The seed of the payloads' sizes and bytes.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Also write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

struct Lines;

impl SoakProgress for Lines {
    fn say(&mut self, line: &str) {
        eprintln!("{line}");
    }
}

pub async fn run_soak(args: SoakArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        hbone_harness::netns::can_create(),
        "the soak builds two pod network namespaces: run it as root (iproute2 and iptables installed)"
    );
    anyhow::ensure!(args.clients > 0, "--clients must be at least 1");
    if args.churn {
        return run_churn(args).await;
    }
    let duration = args.duration.unwrap_or(Duration::from_secs(60));
    let mut settings = SoakSettings::new(duration, std::env::current_exe()?);
    settings.load.clients = args.clients;
    settings.load.seed = args.seed;
    if let Some(outage) = args.ca_outage {
        settings.ca_outage = outage;
        settings.cert_ttl = (outage * 3).max(Duration::from_secs(6));
    }
    let mut lines = Lines;
    let report = tokio::select! {
        report = run(settings, &mut lines) => report?,
        _ = crate::proxy_cmd::wait_for_stop() => anyhow::bail!("interrupted: the soak's processes and namespaces were removed"),
    };
    print!("{}", report.text());
    write_json(args.json.as_deref(), serde_json::to_value(&report)?)?;
    anyhow::ensure!(
        report.passed(),
        "the soak lost something: see the failures above"
    );
    Ok(())
}

async fn run_churn(args: SoakArgs) -> anyhow::Result<()> {
    let duration = args.duration.unwrap_or(Duration::from_secs(600));
    let mut settings = ChurnSettings::new(duration, std::env::current_exe()?);
    settings.clients = args.clients;
    settings.seed = args.seed;
    settings.pool_idle = args.pool_idle;
    if let Some(ztunnel) = &args.ztunnel {
        anyhow::ensure!(
            ztunnel.is_file(),
            "--ztunnel / ZTUNNEL_BIN: {} is not a file",
            ztunnel.display()
        );
        settings.ztunnel = Some(ztunnel.clone());
    } else {
        eprintln!(
            "note: no --ztunnel / ZTUNNEL_BIN given, so only hbone-lab goes through the churn"
        );
    }
    let mut lines = Lines;
    let report = tokio::select! {
        report = churn::run(settings, &mut lines) => report?,
        _ = crate::proxy_cmd::wait_for_stop() => anyhow::bail!("interrupted: the churn's processes and namespaces were removed"),
    };
    print!("{}", report.text());
    write_json(args.json.as_deref(), serde_json::to_value(&report)?)?;
    anyhow::ensure!(
        report.passed(),
        "hbone-lab left something behind under churn: see the problems above"
    );
    Ok(())
}

fn write_json(path: Option<&std::path::Path>, report: serde_json::Value) -> anyhow::Result<()> {
    if let Some(path) = path {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
