//! `hbone-lab ca …`: serve, init, issue and inspect.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use clap::{Args, Subcommand};
use hbone_ca::identity::validate_trust_domain;
use hbone_ca::inspect::{explain, pem_certs, read_cert_facts};
use hbone_ca::metrics::CaMetrics;
use hbone_ca::placement::{ApiServerPods, Placement, Places};
use hbone_ca::plugin::{PluginCerts, write_with_mode};
use hbone_ca::revocation::{explain_list, next_edition, parse_serial, reason_named, serial_text};
use hbone_ca::server::{CaService, serve};
use hbone_ca::token_review::{KubeTokenReviewer, TokenReviewAuthenticator};
use hbone_ca::tokens::{Authenticator, TokenFile};
use hbone_ca::{AuthorityConfig, Identity, IdentityPattern, SigningAuthority};
use hbone_proxy::registry::Registry;
use hbone_proxy::sources::policy_file::load_policies;

#[derive(Subcommand)]
pub enum CaCommand {
    #[command(verbatim_doc_comment)]
    /// Serve Istio's CreateCertificate API over TLS (what ztunnel's CA_ADDRESS points at),
    /// and with --xds istiod's delta ADS beside it on the same port.
    ///
    /// Example, with a real ztunnel as the client:
    ///   hbone-lab ca serve --tokens tokens.yaml --write-root /tmp/root.pem
    ///   CA_ADDRESS=https://127.0.0.1:15012 CA_ROOT_CA=/tmp/root.pem AUTH_TOKEN=/tmp/token ztunnel
    ///
    /// As ztunnel's whole control plane (workloads, services and translated
    /// policies over xDS; edits to the files are pushed as deltas):
    ///   hbone-lab ca serve --xds --registry registry.yaml --policies policies/istio \
    ///       --tokens tokens.yaml --write-root /tmp/root.pem
    ///   XDS_ADDRESS=https://127.0.0.1:15012 XDS_ROOT_CA=/tmp/root.pem \
    ///   CA_ADDRESS=https://127.0.0.1:15012 CA_ROOT_CA=/tmp/root.pem AUTH_TOKEN=/tmp/token ztunnel
    Serve(Box<ServeArgs>),
    #[command(verbatim_doc_comment)]
    /// Write a new root and intermediate in Istio's plug-in CA layout.
    ///
    /// Load them into istiod with
    ///   kubectl create secret generic cacerts -n istio-system --from-file=DIR
    /// and pass the same DIR to `ca serve --plugin-certs DIR`: both CAs then share one root.
    Init {
        /// Directory to write ca-cert.pem, ca-key.pem, root-cert.pem and cert-chain.pem into.
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
    },
    /// Issue one workload certificate to files, to look at (teaching only).
    ///
    /// Writes cert.pem, key.pem, chain.pem (leaf → root) and root.pem. Real
    /// workloads never put their key on disk: a proxy keeps it in memory.
    Issue(IssueArgs),
    /// Revoke certificates: add them to the CA's revocation list (CRL).
    ///
    /// Needs the plug-in CA files the certificates were issued from (their
    /// intermediate signs the list). The list in --crl is read back, checked
    /// to be this CA's, and written again as the next edition with the new
    /// entries: revocations accumulate. Give the file to proxies
    /// (hbone-lab proxy --crl, ztunnel CRL_PATH); they refuse the revoked
    /// certificates on new connections and close connections using them.
    ///
    /// Example:
    ///   hbone-lab ca inspect cert.pem            # prints the serial
    ///   hbone-lab ca revoke --plugin-certs ca/ --crl ca/crl.pem \
    ///       --serial 3f:a2:... --reason key-compromise
    ///   hbone-lab ca inspect ca/crl.pem --root ca/ca-cert.pem
    #[command(verbatim_doc_comment)]
    Revoke(RevokeArgs),
    /// Explain a certificate, a chain or a revocation list in plain words.
    Inspect {
        /// PEM file: a certificate, a chain with the leaf first, or an X509 CRL.
        file: PathBuf,
        /// Root certificate to verify the chain against; for a CRL, the
        /// issuing certificate (ca-cert.pem) to verify its signature with.
        #[arg(long)]
        root: Option<PathBuf>,
    },
}

#[derive(Args)]
pub struct RevokeArgs {
    /// The plug-in CA files (ca-cert.pem, ca-key.pem, …) that issued the certificates.
    #[arg(long, value_name = "DIR")]
    plugin_certs: PathBuf,
    /// The revocation list to extend; made when it does not exist yet.
    #[arg(long, value_name = "FILE")]
    crl: PathBuf,
    /// A serial to revoke, in hex as `ca inspect` prints it (repeatable).
    #[arg(long = "serial", value_name = "HEX")]
    serials: Vec<String>,
    /// A certificate file whose serial to revoke (repeatable; a chain's first).
    #[arg(long = "cert", value_name = "FILE")]
    certs: Vec<PathBuf>,
    /// A SPIFFE ID whose every certificate still valid to revoke, as the
    /// issuance journal (--journal) lists them (repeatable).
    #[arg(long = "identity", value_name = "SPIFFE_ID", requires = "journal")]
    identities: Vec<String>,
    /// The issuance journal `ca serve --journal` keeps: the serials each
    /// identity was issued.
    #[arg(long, value_name = "FILE")]
    journal: Option<PathBuf>,
    /// Why: unspecified, key-compromise, ca-compromise, affiliation-changed,
    /// superseded, cessation-of-operation, certificate-hold, privilege-withdrawn.
    #[arg(long)]
    reason: Option<String>,
    /// When the next edition is due (proxies may treat an older list as stale);
    /// re-run `ca revoke` with no serial to re-sign before then.
    #[arg(long, default_value = "7days", value_parser = humantime::parse_duration)]
    next_update: Duration,
}

#[derive(Args)]
pub struct AuthorityArgs {
    /// Trust domain this CA signs for.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// Sign from Istio plug-in CA files (ca-cert.pem, ca-key.pem, root-cert.pem,
    /// cert-chain.pem) instead of a root made in memory for this run.
    #[arg(long, value_name = "DIR")]
    plugin_certs: Option<PathBuf>,
    /// Lifetime given when a request asks for none.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    default_ttl: Duration,
    /// Longest lifetime granted; longer requests are refused.
    #[arg(long, default_value = "90days", value_parser = humantime::parse_duration)]
    max_ttl: Duration,
}

impl AuthorityArgs {
    fn build(&self) -> anyhow::Result<SigningAuthority> {
        let trust_domain = validate_trust_domain(&self.trust_domain)?;
        let mut config = AuthorityConfig::new(trust_domain);
        config.default_ttl = self.default_ttl;
        config.max_ttl = self.max_ttl;
        anyhow::ensure!(
            config.default_ttl <= config.max_ttl,
            "--default-ttl {:?} is above --max-ttl {:?}",
            config.default_ttl,
            config.max_ttl
        );
        match &self.plugin_certs {
            Some(dir) => {
                let certs = PluginCerts::read(dir)?;
                Ok(SigningAuthority::from_plugin(&certs, config)
                    .with_context(|| format!("plug-in CA files in {}", dir.display()))?)
            }
            None => Ok(SigningAuthority::generate(config)?),
        }
    }
}

#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on (istiod's CA port is 15012).
    #[arg(long, default_value = "127.0.0.1:15012")]
    listen: SocketAddr,
    #[command(flatten)]
    authority: AuthorityArgs,
    /// YAML token file: `tokens: [{token: <string>, identities: [<SPIFFE ID or prefix/*>],
    /// node: <name>}]`. A token with `node:` is a node proxy's: it obtains only identities
    /// of workloads --registry places on that node (as istiod authorizes node proxies).
    /// Tokens are compared exactly, as written (no trimming).
    /// Without it, a random token is printed that may obtain any identity in the trust domain.
    #[arg(long, value_name = "FILE")]
    tokens: Option<PathBuf>,
    /// Authenticate callers with Kubernetes TokenReviews (in a cluster) instead of a token file.
    #[arg(long, conflicts_with = "tokens")]
    token_review: bool,
    /// With --token-review: a node proxy's service account (namespace/name) that
    /// may obtain identities for the workloads on its node (repeatable). Its node
    /// is the one its pod-bound token names (Kubernetes 1.30 and newer), and the
    /// workloads on it are the API server's pods scheduled there, as istiod's
    /// node authorizer sees them; the CA's service account needs `list` on pods.
    #[arg(long = "node-proxy", value_name = "NS/NAME", default_values_t = ["istio-system/ztunnel".to_string()])]
    node_proxies: Vec<String>,
    /// With --token-review: the audience tokens must carry.
    #[arg(long, default_value = "istio-ca")]
    audience: String,
    /// Write the root certificate here (for CA_ROOT_CA and for proxies' trust).
    #[arg(long, value_name = "FILE")]
    write_root: Option<PathBuf>,
    /// Extra DNS names or IPs for the CA's serving certificate (repeatable),
    /// e.g. hbone-lab-ca.hbone-demo.svc.
    #[arg(long = "san", value_name = "NAME")]
    sans: Vec<String>,
    /// Also serve delta ADS (istiod's xDS for ztunnel: Address and
    /// Authorization) on the same port, as istiod does on 15012.
    #[arg(long, requires = "registry")]
    xds: bool,
    /// The workloads and services (the registry file `hbone-lab proxy`
    /// reads; see proxy/examples/): where each workload runs, for tokens
    /// scoped to a node, and with --xds what is served. Followed while
    /// running.
    #[arg(long, value_name = "FILE")]
    registry: Option<PathBuf>,
    /// With --xds: AuthorizationPolicy / PeerAuthentication files or
    /// directories, served translated as istiod translates them (repeatable).
    #[arg(long = "policies", value_name = "PATH")]
    policies: Vec<PathBuf>,
    /// With --xds: the mesh's root namespace.
    #[arg(long, default_value = "istio-system")]
    root_namespace: String,
    /// Publish the CA's revocation list here (the file `ca revoke` extends
    /// and proxies read with --crl / ztunnel with CRL_PATH): a fresh edition
    /// at start and again at half of --crl-validity, so that the list
    /// proxies hold is never past its next update. Needs --plugin-certs.
    #[arg(long, value_name = "FILE", requires = "plugin_certs")]
    crl: Option<PathBuf>,
    /// How long each published edition is valid.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    crl_validity: Duration,
    /// Record every certificate issued in this journal (one JSON line each:
    /// serial, identity, validity), so that `ca revoke --identity` can
    /// revoke all of a workload's. Entries past their validity are dropped
    /// at start; a certificate that cannot be recorded is not issued.
    #[arg(long, value_name = "FILE")]
    journal: Option<PathBuf>,
}

#[derive(Args)]
pub struct IssueArgs {
    /// The identity, e.g. spiffe://cluster.local/ns/demo/sa/hello-app.
    #[arg(long)]
    spiffe_id: String,
    /// Lifetime of the certificate.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// Directory for cert.pem, key.pem, chain.pem and root.pem.
    #[arg(long)]
    out_dir: PathBuf,
    /// Record the certificate in this issuance journal (as `ca serve
    /// --journal` does), for `ca revoke --identity`.
    #[arg(long, value_name = "FILE")]
    journal: Option<PathBuf>,
    #[command(flatten)]
    authority: AuthorityArgs,
}

pub async fn run(command: CaCommand) -> anyhow::Result<()> {
    match command {
        CaCommand::Serve(args) => run_serve(*args).await,
        CaCommand::Init { out, trust_domain } => {
            let trust_domain = validate_trust_domain(&trust_domain)?;
            let certs = PluginCerts::generate(&trust_domain)?;
            for path in certs.write(&out)? {
                println!("wrote {}", path.display());
            }
            println!(
                "\nNext: kubectl create secret generic cacerts -n istio-system --from-file={}",
                out.display()
            );
            Ok(())
        }
        CaCommand::Issue(args) => run_issue(args),
        CaCommand::Revoke(args) => run_revoke(args),
        CaCommand::Inspect { file, root } => {
            let chain = read(&file)?;
            let root = root.as_deref().map(read).transpose()?;
            if chain.contains("-----BEGIN X509 CRL-----") {
                print!(
                    "{}",
                    explain_list(&chain, root.as_deref(), SystemTime::now())
                        .with_context(|| format!("reading {}", file.display()))?
                );
                return Ok(());
            }
            print!(
                "{}",
                explain(&chain, root.as_deref(), SystemTime::now())
                    .with_context(|| format!("reading {}", file.display()))?
            );
            Ok(())
        }
    }
}

fn run_revoke(args: RevokeArgs) -> anyhow::Result<()> {
    let certs = PluginCerts::read(&args.plugin_certs)?;
    let authority = SigningAuthority::from_plugin(&certs, AuthorityConfig::new("cluster.local"))
        .with_context(|| format!("plug-in CA files in {}", args.plugin_certs.display()))?;
    let reason = args.reason.as_deref().map(reason_named).transpose()?;
    let mut serials = Vec::new();
    for text in &args.serials {
        serials.push(parse_serial(text)?);
    }
    for path in &args.certs {
        let certs =
            pem_certs(&read(path)?).with_context(|| format!("reading {}", path.display()))?;
        let leaf = read_cert_facts(certs[0].as_ref())
            .with_context(|| format!("reading {}", path.display()))?;
        serials.push(parse_serial(&leaf.serial_hex)?);
    }
    if let Some(path) = &args.journal {
        let entries = hbone_ca::journal::read(path)?;
        let now = std::time::SystemTime::now();
        for identity in &args.identities {
            let id: hbone_ca::Identity = identity
                .parse()
                .with_context(|| format!("--identity {identity}"))?;
            let found = hbone_ca::journal::valid_for(&entries, &id.to_string(), now);
            anyhow::ensure!(
                !found.is_empty(),
                "{} lists no certificate still valid for {id} (was it issued by a CA serving with --journal {0}?)",
                path.display()
            );
            println!(
                "{id}: {} certificate(s) still valid in {}",
                found.len(),
                path.display()
            );
            serials.extend(found.iter().map(|e| e.serial_bytes()));
        }
    }
    let signed = next_edition(&authority, &args.crl, args.next_update, |list| {
        for serial in &serials {
            if list.revoke(serial, reason) {
                println!("revoked serial {}", serial_text(serial));
            } else {
                println!("serial {} was already revoked", serial_text(serial));
            }
        }
    })?;
    println!(
        "wrote {}: edition #{}, {} revoked, next edition due in {}",
        args.crl.display(),
        signed.number,
        signed.revoked.len(),
        humantime::format_duration(args.next_update)
    );
    Ok(())
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

async fn run_serve(args: ServeArgs) -> anyhow::Result<()> {
    let authority = Arc::new(args.authority.build()?);
    let mut scoped = false;
    let mut pods: Option<Arc<dyn Places>> = None;
    let authenticator: Arc<dyn Authenticator> = match &args.tokens {
        Some(path) => {
            let file = TokenFile::load(path)?;
            scoped = !file.nodes().is_empty();
            Arc::new(file)
        }
        None if args.token_review => {
            let api = KubeTokenReviewer::connect(vec![args.audience.clone()])
                .await
                .context("--token-review needs a Kubernetes API server (in-cluster config or kubeconfig)")?;
            pods = Some(Arc::new(ApiServerPods::new(
                api.client().clone(),
                authority.trust_domain(),
            )));
            Arc::new(TokenReviewAuthenticator::new(
                api,
                authority.trust_domain(),
                args.node_proxies.clone(),
            ))
        }
        None => {
            let token = format!("{:032x}", rand::random::<u128>());
            let everything: IdentityPattern =
                format!("spiffe://{}/*", authority.trust_domain()).parse()?;
            println!("No --tokens file: this run accepts the bearer token {token}");
            println!(
                "for any identity in {}. Give it to clients (ztunnel: AUTH_TOKEN=<file holding it>).",
                authority.trust_domain()
            );
            Arc::new(TokenFile::single(&token, vec![everything]))
        }
    };
    if let Some(path) = &args.write_root {
        std::fs::write(path, authority.root_pem())
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!("root certificate written to {}", path.display());
    }
    if let Some(path) = &args.crl {
        publish_revocations(authority.clone(), path.clone(), args.crl_validity)?;
    }
    let placement = Arc::new(Placement::default());
    if scoped && args.registry.is_none() {
        anyhow::bail!(
            "{} scopes tokens to nodes, and checking them needs where workloads run: add --registry FILE",
            args.tokens
                .as_ref()
                .expect("scoped tokens come from a file")
                .display()
        );
    }
    let mut service = CaService::new(
        authority,
        authenticator.clone(),
        Arc::new(CaMetrics::default()),
    )
    .with_placement(pods.unwrap_or_else(|| placement.clone()));
    if let Some(path) = &args.journal {
        let journal = hbone_ca::journal::Journal::open(path, std::time::SystemTime::now())?;
        println!("recording issued certificates in {}", path.display());
        service = service.with_journal(Arc::new(journal));
    }
    let service = Arc::new(service);
    let _placing = match &args.registry {
        Some(path) if !args.xds => Some(follow_placement(path.clone(), placement.clone())?),
        _ => None,
    };
    if !args.xds {
        let running = serve(service, args.listen, &args.sans).await?;
        println!("CA listening on {} (Ctrl-C to stop)", running.url());
        crate::proxy_cmd::wait_for_stop().await?;
        running.shutdown().await;
        return Ok(());
    }
    let registry = args
        .registry
        .clone()
        .expect("clap requires --registry with --xds");
    let load = {
        let (registry, policies, root) = (
            registry.clone(),
            args.policies.clone(),
            args.root_namespace.clone(),
        );
        let placement = placement.clone();
        move || -> anyhow::Result<hbone_xds::Mesh> {
            let workloads = Registry::load(&registry)?;
            let policies = load_policies(&policies, &root)?;
            place(&placement, &workloads);
            Ok(hbone_standalone::lab::dataplane::mesh(
                &workloads, &policies,
            ))
        }
    };
    let mesh = load()?;
    let xds = hbone_xds::XdsState::new(&mesh, Some(authenticator));
    let running = hbone_xds::serve(service, xds.clone(), args.listen, &args.sans).await?;
    println!(
        "CA and xDS listening on {} ({} workloads, {} services, {} translated policies; Ctrl-C to stop)",
        running.url(),
        mesh.workloads.len(),
        mesh.services.len(),
        mesh.policies.translated().policies().len()
    );
    let stop = tokio_util::sync::CancellationToken::new();
    let mut watched = args.policies.clone();
    watched.push(registry);
    let follower = tokio::spawn(hbone_proxy::sources::file_watch::on_change(
        Duration::from_secs(2),
        stop.clone(),
        move || hbone_proxy::sources::policy_file::fingerprint(&watched),
        move || match load() {
            Ok(mesh) => {
                xds.update(&mesh);
                true
            }
            Err(e) => {
                eprintln!(
                    "warning: the changed files do not load ({e:#}); still serving the previous state"
                );
                false
            }
        },
    ));
    crate::proxy_cmd::wait_for_stop().await?;
    stop.cancel();
    let _ = follower.await;
    running.server.shutdown().await;
    Ok(())
}

/// Writes a fresh edition of the revocation list at `path` now (failing
/// if the file holds another CA's list), and again at half of `validity`,
/// for as long as the process runs.
fn publish_revocations(
    authority: Arc<SigningAuthority>,
    path: PathBuf,
    validity: Duration,
) -> anyhow::Result<()> {
    let first = next_edition(&authority, &path, validity, |_| {})
        .with_context(|| format!("publishing the revocation list {}", path.display()))?;
    println!(
        "revocation list {}: edition #{}, {} revoked, a new edition every {}",
        path.display(),
        first.number,
        first.revoked.len(),
        humantime::format_duration(validity / 2)
    );
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(validity / 2).await;
            if let Err(e) = next_edition(&authority, &path, validity, |_| {}) {
                tracing::warn!(error = %e, "cannot publish the revocation list; proxies keep the last edition");
            }
        }
    });
    Ok(())
}

/// Tells `placement` where `registry`'s workloads run.
fn place(placement: &Placement, registry: &Registry) {
    placement.replace(
        registry
            .workloads
            .iter()
            .map(|w| (w.node.to_string(), w.identity().clone())),
    );
}

/// Places the workloads of the registry file at `path`, and again whenever
/// it changes, until the returned token is dropped.
fn follow_placement(
    path: PathBuf,
    placement: Arc<Placement>,
) -> anyhow::Result<tokio_util::sync::DropGuard> {
    place(&placement, &Registry::load(&path)?);
    let stop = tokio_util::sync::CancellationToken::new();
    let watched = vec![path.clone()];
    tokio::spawn(hbone_proxy::sources::file_watch::on_change(
        Duration::from_secs(2),
        stop.clone(),
        move || hbone_proxy::sources::policy_file::fingerprint(&watched),
        move || match Registry::load(&path) {
            Ok(registry) => {
                place(&placement, &registry);
                true
            }
            Err(e) => {
                eprintln!("warning: {e}; still placing workloads as before");
                false
            }
        },
    ));
    Ok(stop.drop_guard())
}

fn run_issue(args: IssueArgs) -> anyhow::Result<()> {
    let authority = args.authority.build()?;
    let identity: Identity = args.spiffe_id.parse()?;
    let (key, issued) = authority.issue_with_new_key(&identity, Some(args.ttl))?;
    if let Some(path) = &args.journal {
        let journal = hbone_ca::journal::Journal::open(path, std::time::SystemTime::now())?;
        journal.record(&hbone_ca::journal::Entry::new(
            &issued.serial,
            &identity.to_string(),
            issued.not_before,
            issued.not_after,
        ))?;
        println!(
            "recorded serial {} in {}",
            serial_text(&issued.serial),
            path.display()
        );
    }
    std::fs::create_dir_all(&args.out_dir)
        .with_context(|| format!("cannot create {}", args.out_dir.display()))?;
    let files = [
        ("cert.pem", issued.leaf_pem().to_string(), 0o644),
        ("key.pem", key.serialize_pem(), 0o600),
        ("chain.pem", issued.chain_pem.concat(), 0o644),
        ("root.pem", issued.root_pem().to_string(), 0o644),
    ];
    for (name, contents, mode) in files {
        let path = args.out_dir.join(name);
        write_with_mode(&path, &contents, mode)
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    eprintln!(
        "warning: key.pem holds a private key on disk. This is for looking at; \
         real workloads keep their key in the proxy's memory only."
    );
    if args.authority.plugin_certs.is_none() {
        eprintln!(
            "note: no --plugin-certs, so this certificate chains to a root made for this run only (root.pem)."
        );
    }
    Ok(())
}
