//! `hbone-lab demo`: the standalone lab, working and refusing.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;

use clap::Args;
use hbone_standalone::explain::explain;
use hbone_standalone::lab::dataplane::Dataplane;
use hbone_standalone::lab::topology::{LabError, Mode};
use hbone_standalone::lab::{Lab, LabOptions};
use hbone_standalone::scenarios::{ScenarioResult, run_all};
use hbone_standalone::wire::capture::Capture;

/// Stand up the whole lab on this machine — CA, a proxy per node, PostgreSQL,
/// hello-app, the gateway, a test pod and the lab's policies — and run its
/// scenarios, each with what the policies predict and what actually happened.
///
/// By default everything runs on loopback addresses without privileges. With
/// --netns (root), nodes and pods are network namespaces: traffic is
/// captured by iptables inside each pod as ambient's in-pod mode does, the
/// Cilium policies are compiled to iptables in each pod, and a "world"
/// namespace holds stand-ins for api.github.com and api.cloudflare.com.
///
/// Exits 0 only when every outcome matches the prediction.
///
/// Where the node proxies' admin, metrics and readiness ports listen: on
/// the host's loopback (127.0.11.x). With --netns no pod reaches them, as
/// no pod reaches a real ztunnel's admin on localhost of its own namespace.
/// Without --netns every pod shares that loopback and can reach them
/// directly: a lab, not a hardened node. Through the proxy itself they are
/// refused (proxy_port), and each is bounded against floods; see
/// RELIABILITY.md.
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
    /// Network-namespace mode (root): in-pod capture with iptables, the Cilium
    /// layer compiled to iptables, the outside world's stand-ins. Unmodified
    /// clients (curl, psql) work with `ip netns exec` (see --keep).
    #[arg(long)]
    netns: bool,
    /// Which proxy runs on the nodes: hbone-lab (its own), ztunnel (a real
    /// ztunnel per node in shared mode, fed by hbone-lab as istiod over xDS
    /// and as istio-cni over ZDS), or mixed (ztunnel on node-1, hbone-lab on
    /// node-2, so cross-node traffic goes from one to the other). ztunnel
    /// and mixed need --netns.
    #[arg(long, default_value = "hbone-lab", value_parser = ["hbone-lab", "ztunnel", "mixed"])]
    dataplane: String,
    /// See the wire: hbone-lab's proxies write their TLS secrets to
    /// DIR/keys.log and, with --netns, the node-to-node hop is recorded to
    /// DIR/mesh.pcapng (dumpcap, or tcpdump's mesh.pcap). Then
    /// `hbone-lab wire DIR` decodes one connection, or open the capture in
    /// Wireshark with the key log. Anyone with keys.log can decrypt it.
    #[arg(long, value_name = "DIR")]
    capture: Option<PathBuf>,
    /// The ztunnel binary for --dataplane ztunnel|mixed (default: $ZTUNNEL_BIN).
    #[arg(long, value_name = "PATH")]
    ztunnel: Option<std::path::PathBuf>,
    /// Who feeds the node proxies certificates and their world: hbone-lab
    /// (its own CA and xDS), or istiod — the real istiod on a real
    /// kube-apiserver and etcd, started here (built by
    /// scripts/control-plane-peers.sh), the lab's pods, services and
    /// policies as API objects, each node proxy with a pod-bound token.
    #[arg(long, default_value = "hbone-lab", value_parser = ["hbone-lab", "istiod"])]
    control_plane: String,
    /// The programs for --control-plane istiod.
    #[command(flatten)]
    programs: crate::control_plane_cmd::ProgramArgs,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let lab = start(&args).await?;
    let capture = start_capture(&args, &lab)?;
    let results = run_all(&lab).await;
    let all_match = results.iter().all(|r| r.matches());
    if args.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        print!("{}", results_table(&results));
        if let Some(plumbing) = &lab.plumbing {
            println!();
            println!("How this emulates the Cilium layer, and where it differs from Cilium:");
            for line in plumbing.differences_from_cilium() {
                println!("  - {line}");
            }
        }
    }
    if args.explain {
        println!();
        match explain(&lab).await {
            Ok(story) => print!("{story}"),
            Err(e) => eprintln!("could not tell the story: {:#}", anyhow::Error::from(e)),
        }
    }
    if let (Some(capture), Some(dir)) = (capture, &args.capture) {
        let file = capture.stop();
        print!("{}", capture_hints(&file, dir));
    }
    if args.keep {
        print!("{}", keep_hints(&lab));
        println!("Ctrl-C tears it all down.");
        crate::proxy_cmd::wait_for_stop().await?;
    }
    lab.shutdown().await;
    if !all_match {
        anyhow::bail!("some scenarios did not behave as the policies predict");
    }
    Ok(())
}

/// Starts the lab the flags describe, saying what it is; a gateway port
/// that is taken is traded for a free one.
async fn start(args: &DemoArgs) -> anyhow::Result<Lab> {
    let mode = if args.netns {
        Mode::Netns
    } else {
        Mode::Loopback
    };
    eprintln!(
        "Starting the lab ({})…",
        match mode {
            Mode::Loopback => "loopback mode: every pod and node on its own 127.x address",
            Mode::Netns =>
                "netns mode: pods and nodes as network namespaces, in-pod capture, the Cilium layer as iptables",
        }
    );
    let dataplane: Dataplane = args.dataplane.parse().map_err(anyhow::Error::msg)?;
    let istiod = (args.control_plane == "istiod").then(|| args.programs.given());
    let feeder = if istiod.is_some() {
        "the real istiod on a real kube-apiserver feeds every node proxy; hbone-lab plays istio-cni"
    } else {
        "hbone-lab plays istiod and istio-cni for it"
    };
    if dataplane != Dataplane::HboneLab || istiod.is_some() {
        eprintln!(
            "Data plane: {} ({feeder})",
            match dataplane {
                Dataplane::Mixed => "ztunnel on node-1, hbone-lab on node-2",
                Dataplane::Ztunnel => "a real ztunnel on each node",
                Dataplane::HboneLab => "hbone-lab on each node",
            }
        );
    }
    let key_log = match &args.capture {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            let keys = dir.join("keys.log");
            let _ = std::fs::remove_file(&keys);
            eprintln!(
                "TLS key logging is on: {} will let anyone decrypt this run's mesh traffic",
                keys.display()
            );
            if dataplane == Dataplane::Ztunnel {
                eprintln!(
                    "note: ztunnel logs no TLS keys, so with --dataplane ztunnel the capture stays encrypted"
                );
            }
            Some(keys)
        }
        None => None,
    };
    let options = LabOptions {
        gateway_listen: args.gateway_listen,
        mode,
        dataplane,
        ztunnel: args.ztunnel.clone(),
        key_log,
        istiod,
        ..LabOptions::default()
    };
    let lab = match Lab::start(options.clone()).await {
        Ok(lab) => lab,
        Err(LabError::GatewayListen { source, .. })
            if source.kind() == std::io::ErrorKind::AddrInUse
                && args.gateway_listen.port() != 0 =>
        {
            eprintln!(
                "{} is taken; the gateway takes a free port instead",
                args.gateway_listen
            );
            Lab::start(LabOptions {
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
    Ok(lab)
}

/// With --capture in netns mode, records the node-1 ↔ node-2 hop.
fn start_capture(args: &DemoArgs, lab: &Lab) -> anyhow::Result<Option<Capture>> {
    Ok(match (&args.capture, &lab.plumbing) {
        (Some(dir), Some(plumbing)) => {
            let node1 = &plumbing.nodes["node-1"];
            let capture = Capture::start(node1, "to-node-2", dir)?;
            eprintln!(
                "recording the node-1 ↔ node-2 hop with {} to {}",
                capture.tool,
                capture.file.display()
            );
            Some(capture)
        }
        (Some(_), None) => {
            eprintln!(
                "note: loopback mode has no network between the nodes to record; the key log is written, and --netns records the hop"
            );
            None
        }
        _ => None,
    })
}

/// The scenarios as a table: expected, observed, why, and the evidence.
fn results_table(results: &[ScenarioResult]) -> String {
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(w);
    let _ = writeln!(
        w,
        "{:<36} {:<10} {:<10}",
        "scenario", "expected", "observed"
    );
    let _ = writeln!(w, "{}", "─".repeat(70));
    for r in results {
        let mark = match (r.expected == r.observed, r.matches()) {
            (true, _) => "✔",
            (false, true) => "◆ FINDING",
            (false, false) => "✘ MISMATCH",
        };
        let _ = writeln!(
            w,
            "{:<36} {:<10} {:<10} {mark}",
            r.name,
            r.expected.past_tense(),
            r.observed.past_tense()
        );
        let _ = writeln!(w, "    {} → {}", r.source, r.destination);
        let _ = writeln!(w, "    why:  {}", r.reason);
        let _ = writeln!(w, "    seen: {}", r.evidence);
        if let Some(finding) = &r.finding {
            let _ = writeln!(w, "    finding: {finding}");
        }
    }
    let _ = writeln!(w);
    let _ = writeln!(
        w,
        "{} of {} scenarios behaved as the policies predict.",
        results.iter().filter(|r| r.expected == r.observed).count(),
        results.len()
    );
    let findings = results.iter().filter(|r| r.finding.is_some()).count();
    if findings > 0 {
        let _ = writeln!(
            w,
            "{findings} differed because ztunnel behaves differently there (◆ finding, explained above); that is a result, not a failure of the lab."
        );
    }
    out
}

/// How to look at the recorded hop.
fn capture_hints(file: &std::path::Path, dir: &std::path::Path) -> String {
    let keys = dir.join("keys.log");
    let (file, keys, dir) = (file.display(), keys.display(), dir.display());
    format!(
        "\nThe wire, recorded: {file} (decrypt with {keys})\n\
         \x20 hbone-lab wire {dir}                 # one connection as a ladder, and connection.svg\n\
         \x20 tshark -r {file} -o tls.keylog_file:{keys} -d tcp.port==15008,tls -Y http2\n\
         \x20 wireshark -o tls.keylog_file:{keys} {file}   # the same, in Wireshark\n\
         \x20 (keys.log decrypts everything in the capture: keep it to yourself)\n"
    )
}

/// What to try against the lab left running (--keep).
fn keep_hints(lab: &Lab) -> String {
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(w);
    let _ = writeln!(w, "The lab keeps running. Try:");
    match &lab.plumbing {
        None => {
            let _ = writeln!(
                w,
                "  curl http://{}/                       # the status page, through the gateway",
                lab.gateway
            );
            let _ = writeln!(
                w,
                "  curl -H 'Accept: application/json' http://{}/",
                lab.gateway
            );
        }
        Some(p) => {
            let ns = |pod: &str| p.pods[pod].name().to_string();
            let (hello_vip, postgres_vip) = lab.mode.vips();
            let _ = writeln!(
                w,
                "  ip netns exec {} curl http://{}/          # a browser outside the cluster → gateway → hello-app",
                p.world.name(),
                lab.gateway
            );
            let _ = writeln!(
                w,
                "  ip netns exec {} curl -m 3 http://{hello_vip}:8000/health   # refused by Istio (sa/default)",
                ns("test-pod")
            );
            let _ = writeln!(
                w,
                "  ip netns exec {} psql postgresql://hello:hello@{postgres_vip}:5432/hellodb -c 'select 1'   # allowed",
                ns("hello-app")
            );
            let _ = writeln!(
                w,
                "  ip netns exec {} iptables -L HBL_CILIUM_EGRESS -v -n   # the Cilium layer, with packet counters",
                ns("test-pod")
            );
            let _ = writeln!(w, "  namespaces: {}", p.names().join(" "));
        }
    }
    for node in &lab.nodes {
        let _ = writeln!(
            w,
            "  curl http://{}/metrics   # {} metrics;  admin: http://{}/certs",
            node.addrs.metrics.expect("metrics"),
            node.core.node,
            node.addrs.admin.expect("admin")
        );
    }
    for z in &lab.ztunnels {
        let ns = lab
            .plumbing
            .as_ref()
            .map(|p| p.nodes[&z.node].name().to_string())
            .unwrap_or_default();
        let _ = writeln!(
            w,
            "  ip netns exec {ns} curl -s localhost:15000/config_dump   # {}'s ztunnel: workloads, policies, certificates (log: {})",
            z.node,
            z.ztunnel.settings.log.display()
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use hbone_standalone::scenarios::Verdict;

    use super::*;

    fn scenario(
        name: &str,
        expected: Verdict,
        observed: Verdict,
        finding: Option<&str>,
    ) -> ScenarioResult {
        ScenarioResult {
            name: name.into(),
            source: "test-pod".into(),
            destination: "hello-app:8000".into(),
            expected,
            observed,
            reason: "no ALLOW policy matches".into(),
            evidence: "reset after the handshake".into(),
            finding: finding.map(String::from),
        }
    }

    #[test]
    fn the_table_marks_matches_findings_and_mismatches() {
        let results = [
            scenario("as predicted", Verdict::Deny, Verdict::Deny, None),
            scenario(
                "ztunnel differs",
                Verdict::Deny,
                Verdict::Allow,
                Some("ztunnel keeps it"),
            ),
            scenario("wrong", Verdict::Allow, Verdict::Deny, None),
        ];
        let table = results_table(&results);
        let line = |name: &str| {
            table
                .lines()
                .find(|l| l.starts_with(name))
                .unwrap()
                .to_string()
        };
        assert!(line("as predicted").ends_with("✔"), "{table}");
        assert!(line("ztunnel differs").ends_with("◆ FINDING"), "{table}");
        assert!(line("wrong").ends_with("✘ MISMATCH"), "{table}");
        assert!(table.contains("    finding: ztunnel keeps it"), "{table}");
        assert!(
            table.contains("1 of 3 scenarios behaved as the policies predict."),
            "{table}"
        );
        assert!(
            table.contains("1 differed because ztunnel behaves differently"),
            "{table}"
        );
    }

    #[test]
    fn the_capture_hints_name_the_files() {
        let hints = capture_hints(Path::new("/tmp/w/mesh.pcapng"), Path::new("/tmp/w"));
        assert!(hints.contains("  hbone-lab wire /tmp/w "), "{hints}");
        assert!(
            hints.contains("  tshark -r /tmp/w/mesh.pcapng -o tls.keylog_file:/tmp/w/keys.log -d tcp.port==15008,tls -Y http2"),
            "{hints}"
        );
    }
}
