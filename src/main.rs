//! `hbone-lab`: the one command-line entry point. It parses arguments and
//! hands each command to the crate that does the work; no logic lives here.

#![forbid(unsafe_code)]

mod app_cmd;
mod bench_cmd;
mod ca_cmd;
mod control_plane_cmd;
mod demo_cmd;
mod kind_cmd;
mod logging;
mod policy_cmd;
mod proxy_cmd;
mod soak_cmd;
mod wire_cmd;

use clap::{Parser, Subcommand};

/// jemalloc, as ztunnel uses: a proxy allocates and frees per connection on
/// several threads, and glibc's per-thread arenas keep freed memory from
/// other threads out of reach (higher RSS per idle connection, slower bulk).
#[cfg(target_os = "linux")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// A testbed for Istio ambient's data plane: a SPIFFE CA, an HBONE proxy
/// (mTLS + HTTP/2 CONNECT on 15008), the lab's policies and workloads,
/// and benchmarks against ztunnel.
///
/// Logs go to stderr; set RUST_LOG (for example RUST_LOG=debug or
/// RUST_LOG=hbone_ca=debug) to see more, and HBONE_LOG_FORMAT=json for JSON lines.
/// HBONE_WORKER_THREADS sets the async runtime's worker threads (default: one
/// per core), e.g. to compare with ztunnel's ZTUNNEL_WORKER_THREADS.
#[derive(Parser)]
#[command(name = "hbone-lab", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the standalone lab and show each scenario working or refused.
    Demo(demo_cmd::DemoArgs),
    /// The miniature SPIFFE certificate authority (Istio's CA protocol on 15012).
    #[command(subcommand)]
    Ca(ca_cmd::CaCommand),
    /// The real Istio control plane here: etcd, kube-apiserver and istiod (built from their Go modules).
    ControlPlane(control_plane_cmd::ControlPlaneArgs),
    /// Run an HBONE node proxy from a config file.
    Proxy(proxy_cmd::ProxyArgs),
    /// The lab's workloads: hello-app, gateway, worker, and the load peers.
    #[command(subcommand)]
    App(app_cmd::AppCommand),
    /// Who may reach whom under the lab's Cilium and Istio policies.
    #[command(subcommand)]
    Policy(policy_cmd::PolicyCommand),
    /// The kind lab (kind/): verify a running cluster against the lab's files.
    #[command(subcommand)]
    Kind(kind_cmd::KindCommand),
    /// Benchmark direct vs hbone-lab vs ztunnel on the same path (root).
    Bench(bench_cmd::BenchArgs),
    /// Faults under load through hbone-lab's mesh, every byte checked (root).
    Soak(soak_cmd::SoakArgs),
    /// Decode a recorded HBONE connection (demo --capture) as a ladder and a diagram.
    Wire(wire_cmd::WireArgs),
}

/// Lets jemalloc's background threads return freed pages to the kernel as
/// they decay (ztunnel runs with `background_thread:true` too). Without
/// them an arena purges only when it allocates again, so the pages a
/// worker thread freed once its connections went idle stay resident: with
/// 16 worker threads on two cores, memory per used-then-idle connection
/// was 1.23× ztunnel's (0.98× with 2 threads).
#[cfg(target_os = "linux")]
fn purge_in_background() {
    if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
        eprintln!(
            "note: jemalloc's background purging is off ({e}): idle memory is returned later"
        );
    }
}

/// A failed command prints its error and each cause on a line of its own
/// and exits 1 — never anyhow's Debug form, which appends a stack
/// backtrace whenever `RUST_BACKTRACE` is set (as many Rust users keep it).
fn main() -> std::process::ExitCode {
    #[cfg(target_os = "linux")]
    purge_in_background();
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    logging::init(match cli.command {
        // The API server answers 500 until it is ready, which kube's client
        // logs as errors; what fails for real comes back as our own error.
        Command::Demo(_) | Command::Policy(_) => "error,kube_client=off",
        Command::Wire(_) => "error",
        // The progress bar owns the terminal; the CA's issuance logs would tear it.
        Command::Bench(_) | Command::Soak(_) => "warn",
        Command::ControlPlane(_) => "info,kube_client=off",
        _ => "info",
    });
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = std::env::var("HBONE_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        builder.worker_threads(n.max(1));
    }
    let runtime = builder.enable_all().build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Demo(args) => demo_cmd::run(args).await,
            Command::Ca(cmd) => ca_cmd::run(cmd).await,
            Command::Proxy(args) => proxy_cmd::run(args).await,
            Command::ControlPlane(args) => control_plane_cmd::run(args).await,
            Command::Bench(args) => bench_cmd::run_bench(args).await,
            Command::Soak(args) => soak_cmd::run_soak(args).await,
            Command::App(cmd) => app_cmd::run(cmd).await,
            Command::Policy(cmd) => policy_cmd::run(cmd),
            Command::Kind(cmd) => kind_cmd::run(cmd).await,
            Command::Wire(args) => wire_cmd::run(args),
        }
    })
}
