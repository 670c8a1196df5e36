//! `hbone-lab control-plane`: the real Istio control plane (etcd,
//! kube-apiserver, istiod) on this machine until Ctrl-C.

use std::path::PathBuf;

use clap::Args;
use hbone_control_plane::peers::Versions;
use hbone_control_plane::{ControlPlane, ControlPlaneOptions, Given, Programs};

/// Where the real control plane's programs are, when they are not where
/// scripts/control-plane-peers.sh put them (every command that starts
/// istiod takes these).
#[derive(Args, Clone, Debug, Default)]
pub struct ProgramArgs {
    /// The etcd binary (else $ETCD_BIN, else what scripts/control-plane-peers.sh built).
    #[arg(long, value_name = "PATH")]
    pub etcd: Option<PathBuf>,
    /// The kube-apiserver binary (else $KUBE_APISERVER_BIN, else what the script built).
    #[arg(long, value_name = "PATH")]
    pub kube_apiserver: Option<PathBuf>,
    /// istiod, i.e. pilot-discovery (else $ISTIOD_BIN, else what the script built).
    #[arg(long, value_name = "PATH")]
    pub istiod: Option<PathBuf>,
}

impl ProgramArgs {
    /// The programs given on the command line (the rest are looked for).
    pub fn given(&self) -> Given {
        Given {
            etcd: self.etcd.clone(),
            kube_apiserver: self.kube_apiserver.clone(),
            istiod: self.istiod.clone(),
        }
    }
}

/// Runs etcd, kube-apiserver and istiod (ambient on) on 127.0.0.1 until
/// Ctrl-C, then stops them and empties its folder.
///
/// The programs are built from their Go modules by
/// scripts/control-plane-peers.sh (pinned in control-plane/peers.env), or
/// given with the flags below or ETCD_BIN, KUBE_APISERVER_BIN, ISTIOD_BIN.
/// It writes a kubeconfig for kubectl and istioctl, applies Istio's CRDs,
/// and has istiod sign with a plug-in CA (yours with --plugin-certs, the
/// layout `hbone-lab ca init` writes, so hbone-lab's CA and istiod share
/// one root). No kubelet runs: pods are made Running by whoever creates
/// them (the lab does).
#[derive(Args)]
pub struct ControlPlaneArgs {
    /// The state folder: keys, logs, etcd's data, the kubeconfig. One
    /// control plane per folder; it is emptied on exit.
    #[arg(long, default_value = "/tmp/hbone-lab-control-plane")]
    dir: PathBuf,
    /// A plug-in CA folder for istiod to sign with (default: a fresh one).
    #[arg(long)]
    plugin_certs: Option<PathBuf>,
    #[command(flatten)]
    programs: ProgramArgs,
    /// istiod's --log_output_level.
    #[arg(long, default_value = "default:info")]
    istiod_log_level: String,
    /// Put the netns lab's world in: its nodes, namespace, service
    /// accounts, Services and pods (Running, with the lab's addresses; no
    /// kubelet runs them), a node proxy pod per node, and policies/istio.
    /// Then `kubectl get pods -n demo` and `istioctl x authz …` see the lab.
    #[arg(long)]
    lab: bool,
}

pub async fn run(args: ControlPlaneArgs) -> anyhow::Result<()> {
    let programs = Programs::find(&args.programs.given())?;
    let versions = Versions::pinned();
    eprintln!(
        "starting etcd, kube-apiserver and istiod (pinned: Kubernetes {}, etcd {}, istio {}) in {}",
        versions.kubernetes,
        versions.etcd,
        versions.istio,
        args.dir.display()
    );
    let mut options = ControlPlaneOptions::new(programs);
    options.dir = Some(args.dir);
    options.mesh_ca = args.plugin_certs;
    options.istiod_log_level = args.istiod_log_level;
    let mut control = ControlPlane::start(options).await?;
    if args.lab {
        use hbone_standalone::lab::topology::Mode;
        let registry = hbone_standalone::lab::lab_registry(Mode::Netns)?;
        let policies = hbone_standalone::lab::lab_policies()?;
        hbone_control_plane::world::apply(
            &control.client,
            &hbone_standalone::lab::istiod::world_of(&registry),
        )
        .await?;
        hbone_standalone::lab::istiod::sync_policies(&control.client, &policies.istio).await?;
        eprintln!(
            "the netns lab's world is in: {} pods, {} services, {} Istio policies",
            registry.workloads.len(),
            registry.services.len(),
            policies.istio.authorization().len() + policies.istio.peer_authentication().len()
        );
    }
    let kubeconfig = control.kubeconfig.display().to_string();
    println!("kube-apiserver  https://{}", control.api_server);
    println!(
        "istiod          {} (CA and xDS; root {})",
        control.istiod_url(),
        control.mesh_ca.join("root-cert.pem").display()
    );
    println!(
        "logs            {}/{{etcd,kube-apiserver,istiod}}.log",
        control.dir.display()
    );
    println!();
    println!("export KUBECONFIG={kubeconfig}");
    println!("kubectl get pods -A                      # or istioctl ztunnel-config workloads");
    println!();
    println!(
        "Ctrl-C stops every program and empties {}",
        control.dir.display()
    );
    let mut check = tokio::time::interval(std::time::Duration::from_secs(2));
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
            _ = check.tick() => control.check_running()?,
        }
    }
    eprintln!("stopping istiod, kube-apiserver and etcd");
    drop(control);
    Ok(())
}
