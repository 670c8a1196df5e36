//! `hbone-lab demo`: the standalone lab. Until the proxy and workloads land,
//! it says honestly what exists and shows the CA working end to end.

use std::sync::Arc;

use clap::Args;
use hbone_ca::inspect::explain;
use hbone_ca::manager::{CertificateManager, RenewalPolicy};
use hbone_ca::{AuthorityConfig, Identity, SigningAuthority};

#[derive(Args)]
pub struct DemoArgs {
    /// Trust domain of the lab's identities.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    println!("hbone-lab demo — what is available in this build");
    println!();
    println!("  ready:    the SPIFFE CA (hbone-lab ca serve | init | issue | inspect)");
    println!(
        "  coming:   the HBONE proxy, the lab's policies, workloads, the full demo and benchmarks"
    );
    println!();
    println!("Step 1 of the lab, for real: a CA issues the gateway's workload certificate.");
    let authority = Arc::new(SigningAuthority::generate(AuthorityConfig::new(
        &args.trust_domain,
    ))?);
    let manager = CertificateManager::new(authority.clone(), RenewalPolicy::default());
    let gateway = Identity::new(&args.trust_domain, "demo", "hello-gateway-istio")?;
    let svid = manager.get(&gateway).await?;
    println!();
    let story = explain(
        &svid.chain_pem.concat(),
        Some(authority.root_pem()),
        std::time::SystemTime::now(),
    )?;
    for line in story.lines() {
        println!("  {line}");
    }
    println!();
    println!("The private key stayed in this process's memory, as it does in a real proxy.");
    Ok(())
}
