//! `hbone-lab demo`: the standalone lab, working and refusing.

use std::net::SocketAddr;

use clap::Args;
use hbone_standalone::explain::explain;
use hbone_standalone::scenarios::run_all;
use hbone_standalone::topology::{LabOptions, LoopbackLab};

/// Stand up the whole lab on this machine — CA, a proxy per node, PostgreSQL,
/// hello-app, the gateway, a test pod and the lab's policies — and run its
/// scenarios, each with what the policies predict and what actually happened.
///
/// Exits 0 only when every outcome matches the prediction.
#[derive(Args)]
#[command(verbatim_doc_comment)]
pub struct DemoArgs {
    /// Tell one connection's story step by step (identities, TLS, CONNECT, policy, bytes).
    #[arg(long)]
    explain: bool,
    /// Leave the lab running afterwards and print how to poke it; Ctrl-C tears it down.
    #[arg(long)]
    keep: bool,
    /// Where the gateway listens for you (like the kind lab's port-forward).
    #[arg(long, default_value = "127.0.0.1:8080")]
    gateway_listen: SocketAddr,
    /// Print the results as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Network-namespace mode with transparent capture and the Cilium layer (root).
    #[arg(long)]
    netns: bool,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    if args.netns {
        anyhow::bail!(
            "--netns (namespaces, iptables capture and the Cilium layer) is not built yet; \
             run `hbone-lab demo` for the loopback lab"
        );
    }
    eprintln!("Starting the lab (loopback mode: every pod and node on its own 127.x address)…");
    let options = LabOptions {
        gateway_listen: args.gateway_listen,
        ..LabOptions::default()
    };
    let lab = match LoopbackLab::start(options.clone()).await {
        Ok(lab) => lab,
        Err(e) if args.gateway_listen.port() != 0 && e.to_string().contains("in use") => {
            eprintln!(
                "{} is taken; the gateway takes a free port instead",
                args.gateway_listen
            );
            LoopbackLab::start(LabOptions {
                gateway_listen: SocketAddr::new(args.gateway_listen.ip(), 0),
                ..options
            })
            .await?
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(why) = &lab.postgres_missing {
        eprintln!("note: running without the database — {why}");
    }
    let results = run_all(&lab).await;
    let all_match = results.iter().all(|r| r.matches());
    if args.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        println!();
        println!("{:<36} {:<10} {:<10}", "scenario", "expected", "observed");
        println!("{}", "─".repeat(70));
        for r in &results {
            let mark = if r.matches() { "✔" } else { "✘ MISMATCH" };
            println!(
                "{:<36} {:<10} {:<10} {mark}",
                r.name,
                r.expected.to_string(),
                r.observed.to_string()
            );
            println!("    {} → {}", r.source, r.destination);
            println!("    why:  {}", r.reason);
            println!("    seen: {}", r.evidence);
        }
        println!();
        println!(
            "{} of {} scenarios behaved as the policies predict.",
            results.iter().filter(|r| r.matches()).count(),
            results.len()
        );
    }
    if args.explain {
        println!();
        match explain(&lab).await {
            Ok(story) => print!("{story}"),
            Err(e) => eprintln!("could not tell the story: {e}"),
        }
    }
    if args.keep {
        println!();
        println!("The lab keeps running. Try:");
        println!(
            "  curl http://{}/                       # the status page, through the gateway",
            lab.gateway
        );
        println!(
            "  curl -H 'Accept: application/json' http://{}/",
            lab.gateway
        );
        for node in &lab.nodes {
            println!(
                "  curl http://{}/metrics   # {} metrics;  admin: http://{}/certs",
                node.addrs.metrics.expect("metrics"),
                node.core.node,
                node.addrs.admin.expect("admin")
            );
        }
        println!("Ctrl-C tears it all down.");
        crate::proxy_cmd::wait_for_stop().await?;
    }
    lab.shutdown().await;
    if !all_match {
        anyhow::bail!("some scenarios did not behave as the policies predict");
    }
    Ok(())
}
