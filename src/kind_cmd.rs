//! `hbone-lab kind …`: the kind lab, from this side.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use hbone_kind::kube_cluster::KubeCluster;
use hbone_kind::verify::{VerifyOptions, verify};

#[derive(Subcommand)]
pub enum KindCommand {
    /// Check a running kind lab (kind/up.sh) against its files: pods ready,
    /// every policy from policies/ applied, the gateway's service a
    /// ClusterIP, PeerAuthentication STRICT; then run the connectivity
    /// matrix with short-lived probe pods (each with the source's service
    /// account and labels) and compare it with `policy check`'s prediction.
    /// Uses the current kubeconfig context. Exits 1 on any difference.
    Verify(VerifyArgs),
}

#[derive(Args)]
pub struct VerifyArgs {
    /// The lab's manifests.
    #[arg(long, default_value = "kind/manifests")]
    manifests: PathBuf,
    #[arg(long, default_value = "demo")]
    namespace: String,
    /// The image probe pods run (kind/up.sh builds and loads it).
    #[arg(long, default_value = "hbone-lab:dev")]
    image: String,
    /// Only the static checks; no probe pods.
    #[arg(long)]
    no_connectivity: bool,
}

pub async fn run(cmd: KindCommand) -> anyhow::Result<()> {
    let KindCommand::Verify(args) = cmd;
    let manifests = hbone_kind::manifests::load_dir(&args.manifests)?;
    let topology = hbone_kind::topology::topology(&manifests);
    let resources = hbone_policies::lab::lab_resources()?;
    let cluster = KubeCluster::connect().await?;
    let options = VerifyOptions {
        namespace: args.namespace,
        image: args.image,
        connectivity: !args.no_connectivity,
    };
    eprintln!("checking the cluster (probe pods take a few seconds each)…");
    let report = verify(&cluster, &topology, &resources, &options).await?;
    for c in &report.checks {
        println!(
            "{} {:<60} {}",
            if c.ok { "ok  " } else { "FAIL" },
            c.name,
            c.detail
        );
    }
    for o in &report.connectivity {
        println!(
            "{} {:<16} → {:<24} predicted {:<5} observed {:<7} {}",
            if o.matches() { "ok  " } else { "FAIL" },
            o.row.src,
            format!("{}:{}", o.row.dst, o.row.port),
            o.row.verdict.as_str(),
            o.observed.map(|v| v.as_str()).unwrap_or("?"),
            o.detail
        );
    }
    let differences = report.differences();
    if !differences.is_empty() {
        for d in &differences {
            eprintln!("difference: {d}");
        }
        anyhow::bail!(
            "{} difference(s) between the cluster and the lab's files",
            differences.len()
        );
    }
    println!("the cluster is the lab the files describe");
    Ok(())
}
