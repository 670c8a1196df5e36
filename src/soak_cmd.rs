//! `hbone-lab soak`: faults under load, and a report of what was lost (nothing, we hope).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
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
#[derive(Args)]
#[command(verbatim_doc_comment)]
pub struct SoakArgs {
    /// How long the load runs (faults repeat every minute).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
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
    let mut settings = SoakSettings::new(args.duration, std::env::current_exe()?);
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
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    anyhow::ensure!(
        report.passed(),
        "the soak lost something: see the failures above"
    );
    Ok(())
}
