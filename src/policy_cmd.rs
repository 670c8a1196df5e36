//! `hbone-lab policy`: check who may reach whom under the lab's Cilium and
//! Istio policies, validate policy files, and show their translation for ztunnel.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use hbone_policies::authorization::peer_authn::STATIC_STRICT_NAME;
use hbone_policies::authorization::render::istiod_yaml;
use hbone_policies::expect::{differences, load_expected};
use hbone_policies::lab::lab_resources;
use hbone_policies::load::{Loaded, istio_policies, load_dir, load_file};
use hbone_policies::matrix::{PolicySet, matrix};
use hbone_policies::render::{Format, render};
use hbone_policies::topology::LabTopology;
use hbone_standalone::policy_diff::ZtunnelFeed;

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Print the matrix of source × destination × port with the Cilium
    /// verdict (on the port Cilium sees on the wire), the Istio verdict, the
    /// final verdict and the rules that decided.
    ///
    /// By default it uses the lab's own policies (policies/istio and
    /// policies/cilium, compiled in) and the standalone lab's workloads.
    ///
    /// Examples:
    ///   hbone-lab policy check
    ///   hbone-lab policy check --format svg --out matrix.svg
    ///   hbone-lab policy check --expect policies/expected-matrix.json
    ///   hbone-lab policy check --manifests kind/manifests   # the kind lab's workloads
    #[command(verbatim_doc_comment)]
    Check(CheckArgs),
    /// Check policy files (YAML, one or more documents each) against the
    /// upstream CRD schemas and this lab's types, and list what they hold.
    /// A mistake is reported with its file, document and field path.
    Validate {
        /// Files or directories (searched for *.yaml / *.yml).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Print what istiod would send ztunnel for the AuthorizationPolicies
    /// and PeerAuthentications in the files: the workload API's
    /// `istio.security.Authorization`, in the YAML shape of istiod's own
    /// golden files (proto-JSON names groups/rules/matches, enum names,
    /// zero values left out), one document per policy, nothing for none —
    /// so it can be diffed against istiod. What istiod leaves out (L7
    /// attributes, AUDIT/CUSTOM, waypoint policies) is said on stderr.
    ///
    /// Each workload-level PeerAuthentication is converted with its
    /// namespace's and the root namespace's PeerAuthentications (without
    /// selector) as parents, as istiod does.
    ///
    /// Examples:
    ///   hbone-lab policy translate policies/istio
    ///   hbone-lab policy translate my-policy.yaml --root-namespace istio-config
    ///   hbone-lab policy translate policies/istio --mesh   # with the static STRICT policy
    #[command(verbatim_doc_comment)]
    Translate {
        /// Files or directories (searched for *.yaml / *.yml).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// The mesh's root namespace: its policies without selector are GLOBAL.
        #[arg(long, default_value = "istio-system")]
        root_namespace: String,
        /// Also print `<root>/istio_converted_static_strict`, the DENY istiod
        /// pushes whenever a PeerAuthentication exists (istiod's converter
        /// tests leave it out, so this is off by default).
        #[arg(long)]
        mesh: bool,
    },
    /// Print a ztunnel local config (the file ztunnel reads with
    /// LOCAL_XDS_PATH instead of subscribing to xDS) for the standalone
    /// lab: its workloads and services, and the policies translated as
    /// istiod does — exactly what `demo --dataplane ztunnel` serves over xDS.
    ///
    /// Examples:
    ///   hbone-lab policy ztunnel-config > lab.yaml
    ///   XDS_ADDRESS= LOCAL_XDS_PATH=lab.yaml ... ztunnel   # with CA_ADDRESS etc.
    ///   hbone-lab policy ztunnel-config --policies my-policies/ --loopback
    #[command(verbatim_doc_comment)]
    ZtunnelConfig {
        /// Read policies from this directory instead of the lab's own.
        #[arg(long, value_name = "DIR")]
        policies: Option<PathBuf>,
        /// The loopback lab's 127.x addresses instead of the netns lab's.
        #[arg(long)]
        loopback: bool,
        #[arg(long, default_value = "istio-system")]
        root_namespace: String,
    },
    /// The differential check (root, a ztunnel binary): generates seeded,
    /// reproducible sets of AuthorizationPolicies and PeerAuthentications
    /// (principals with prefix/suffix/*, namespaces, not-forms, ports, IP
    /// blocks, when keys, L7 fields in ALLOW and DENY, root-namespace and
    /// selector scopes, STRICT and port-level mTLS) and sends real
    /// connections — four sources (three identities over HBONE, one
    /// plaintext) to two ports — through a real ztunnel and through
    /// hbone-lab's proxy, each in an isolated pair of network namespaces.
    /// Every disagreement with hbone-lab's prediction is printed with the
    /// policy set, the connection and each side's answer; the last line
    /// reads `N cases, M disagreements`, and the exit status is 1 if M > 0.
    ///
    /// With --control-plane istiod, the real istiod feeds ztunnel: each
    /// set is applied to a real API server and istiod translates it, so a
    /// translation difference shows as a connection one side allows and
    /// the other refuses (hbone-lab's proxy still takes hbone-lab's).
    ///
    /// With --against istiod it checks the translation instead, against
    /// istiod itself (no root, no ztunnel; etcd, kube-apiserver and istiod
    /// as scripts/control-plane-peers.sh builds them): each policy set is
    /// applied to a real API server, what istiod pushes is read back as a
    /// node proxy reads it, and every Authorization is compared field by
    /// field with `policy translate`'s. The last line reads
    /// `N sets, M disagreements`.
    ///
    /// Examples:
    ///   sudo hbone-lab policy diff --ztunnel ./ztunnel
    ///   sudo hbone-lab policy diff --cases 2000 --seed 7   # ZTUNNEL_BIN set
    ///   sudo hbone-lab policy diff --ztunnel ./ztunnel --control-plane istiod
    ///   hbone-lab policy diff --against istiod --sets 300
    ///   hbone-lab policy diff --against istiod --policies mine.yaml theirs.yaml
    #[command(verbatim_doc_comment)]
    Diff {
        /// What to check hbone-lab against: a real ztunnel, connection by
        /// connection, or istiod's own translation, policy by policy.
        #[arg(long, default_value = "ztunnel", value_parser = ["ztunnel", "istiod"])]
        against: String,
        /// --against istiod: how many generated policy sets.
        #[arg(long, default_value_t = 300)]
        sets: u64,
        /// --against istiod: check these policy files (each one set)
        /// instead of generated sets.
        #[arg(long, value_name = "FILE", num_args = 1..)]
        policies: Vec<PathBuf>,
        /// The ztunnel binary (default: $ZTUNNEL_BIN).
        #[arg(long, value_name = "PATH")]
        ztunnel: Option<PathBuf>,
        /// Who feeds ztunnel in the connection-level diff: hbone-lab's
        /// control plane (its translation), or the real istiod (istiod's).
        #[arg(long, default_value = "hbone-lab", value_parser = ["hbone-lab", "istiod"])]
        control_plane: String,
        /// The programs for --control-plane istiod and --against istiod.
        #[command(flatten)]
        programs: crate::control_plane_cmd::ProgramArgs,
        /// How many connections to try in all (8 per policy set).
        #[arg(long, default_value_t = 200)]
        cases: usize,
        /// The generator's seed: the same seed gives the same policy sets.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Print every case as JSON lines on stdout instead of only disagreements.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
pub struct CheckArgs {
    /// Read policies from this directory (recursively) instead of the lab's own.
    #[arg(long, value_name = "DIR")]
    policies: Option<PathBuf>,
    /// Read the workloads from the kind lab's manifests in DIR (e.g.
    /// kind/manifests) instead of the standalone lab's.
    #[arg(long, value_name = "DIR", conflicts_with = "topology")]
    manifests: Option<PathBuf>,
    /// Read the workloads from this YAML file (trust_domain, workloads,
    /// externals, outside_clients) instead of the standalone lab's.
    #[arg(long, value_name = "FILE")]
    topology: Option<PathBuf>,
    /// table, json, markdown, svg, or expected (the verdicts only, in the
    /// shape --expect reads: how policies/expected-matrix.json is made).
    #[arg(long, default_value = "table")]
    format: Format,
    /// Write the output here instead of stdout.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Compare with an expected matrix (YAML or JSON rows of src, dst,
    /// port, cilium, istio, verdict); exit 1 naming every difference.
    #[arg(long, value_name = "FILE")]
    expect: Option<PathBuf>,
}

pub fn run(cmd: PolicyCommand) -> anyhow::Result<()> {
    match cmd {
        PolicyCommand::Check(args) => check(args),
        PolicyCommand::Validate { paths } => validate(&paths),
        PolicyCommand::Translate {
            paths,
            root_namespace,
            mesh,
        } => translate(&paths, &root_namespace, mesh),
        PolicyCommand::ZtunnelConfig {
            policies,
            loopback,
            root_namespace,
        } => ztunnel_config(policies.as_deref(), loopback, &root_namespace),
        PolicyCommand::Diff {
            against,
            sets,
            policies,
            seed,
            programs,
            ..
        } if against == "istiod" => diff_against_istiod(policies, sets, seed, programs.given()),
        PolicyCommand::Diff {
            ztunnel,
            cases,
            seed,
            json,
            control_plane,
            programs,
            ..
        } => {
            let feed = match control_plane.as_str() {
                "istiod" => ZtunnelFeed::Istiod(programs.given()),
                _ => ZtunnelFeed::HboneLab,
            };
            diff(ztunnel, feed, cases, seed, json)
        }
    }
}

fn read(path: &Path) -> anyhow::Result<Vec<Loaded>> {
    Ok(match path.is_dir() {
        true => load_dir(path)?,
        false => load_file(path)?,
    })
}

fn check(args: CheckArgs) -> anyhow::Result<()> {
    let loaded = match &args.policies {
        Some(dir) => read(dir)?,
        None => lab_resources()?,
    };
    let topology: LabTopology = match (&args.manifests, &args.topology) {
        (Some(dir), _) => hbone_kind::topology::topology(&hbone_kind::manifests::load_dir(dir)?),
        (None, Some(file)) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let de = serde_yaml::Deserializer::from_str(&text);
            serde_path_to_error::deserialize(de).map_err(|e| {
                anyhow::anyhow!("{}: field `{}`: {}", file.display(), e.path(), e.inner())
            })?
        }
        (None, None) => hbone_standalone::lab::topology::policy_topology(),
    };
    let policies = PolicySet::from_loaded(&loaded);
    for warning in policies.cilium.warnings() {
        eprintln!("warning: {warning}");
    }
    let rows = matrix(&topology, &policies);
    let text = render(&rows, args.format);
    match &args.out {
        Some(path) => {
            std::fs::write(path, &text)
                .with_context(|| format!("cannot write {}", path.display()))?;
            eprintln!("wrote {} ({} rows)", path.display(), rows.len());
        }
        None => print!("{text}"),
    }
    if let Some(path) = &args.expect {
        let expected = load_expected(path)?;
        let diffs = differences(&rows, &expected);
        if !diffs.is_empty() {
            for d in &diffs {
                eprintln!("difference: {d}");
            }
            bail!(
                "{} difference(s) from the expected matrix {}",
                diffs.len(),
                path.display()
            );
        }
        eprintln!(
            "all {} rows match the expected matrix {}",
            rows.len(),
            path.display()
        );
    }
    Ok(())
}

fn validate(paths: &[PathBuf]) -> anyhow::Result<()> {
    let mut count = 0;
    for path in paths {
        for l in read(path)? {
            println!(
                "ok  {}: document {}: {}",
                l.file,
                l.doc,
                l.resource.describe()
            );
            count += 1;
        }
    }
    println!("{count} resource(s) valid");
    Ok(())
}

fn translate(paths: &[PathBuf], root_namespace: &str, mesh: bool) -> anyhow::Result<()> {
    let mut loaded = Vec::new();
    for path in paths {
        loaded.extend(read(path)?);
    }
    let crds = istio_policies(&loaded, root_namespace);
    let translated = crds.translated();
    for (source, note) in translated.notes() {
        eprintln!("note: {source}: {note}");
    }
    let shown = translated
        .policies()
        .iter()
        .filter(|p| mesh || p.name != STATIC_STRICT_NAME);
    print!("{}", istiod_yaml(shown));
    Ok(())
}

fn diff(
    ztunnel: Option<PathBuf>,
    feed: ZtunnelFeed,
    cases: usize,
    seed: u64,
    json: bool,
) -> anyhow::Result<()> {
    use hbone_standalone::policy_diff::{DiffOptions, run};
    let binary = hbone_harness::ztunnel::find_binary(ztunnel.as_deref())?;
    let dir = tempfile::Builder::new()
        .prefix("hbone-lab-policy-diff-")
        .tempdir()?;
    let fed_by = match &feed {
        ZtunnelFeed::HboneLab => "hbone-lab's translation",
        ZtunnelFeed::Istiod(_) => {
            "istiod's translation (etcd, kube-apiserver and istiod start first)"
        }
    };
    let options = DiffOptions {
        ztunnel: binary,
        feed,
        seed,
        cases,
        dir: dir.path().to_path_buf(),
    };
    eprintln!(
        "policy diff: seed {seed}, {cases} connections through ztunnel ({}, fed {fed_by}) and hbone-lab",
        options.ztunnel.display()
    );
    let mut disagreements = 0usize;
    let mut shown_sets = std::collections::BTreeSet::new();
    let mut reported = 0;
    let handle = tokio::runtime::Handle::current();
    let results = tokio::task::block_in_place(|| {
        handle.block_on(run(&options, |case, yaml| {
            if json {
                println!("{}", serde_json::to_string(case).unwrap_or_default());
            }
            if !case.agrees() {
                disagreements += 1;
                if shown_sets.insert(case.set) {
                    println!("\n=== policy set {} (seed {seed}):\n{yaml}", case.set);
                }
                println!(
                    "DISAGREE  {} → port {}: predicted {} ({}); ztunnel: {}; hbone-lab: {}",
                    case.source,
                    case.port,
                    if case.predicted { "allow" } else { "deny" },
                    case.reason,
                    case.ztunnel.word(),
                    case.hbone_lab.word()
                );
            }
            // The first case of set N means N sets are done.
            if case.set > reported && case.set % 10 == 0 {
                reported = case.set;
                eprintln!("  {reported} policy sets…");
            }
        }))
    })?;
    println!("{} cases, {disagreements} disagreements", results.len());
    if disagreements > 0 {
        anyhow::bail!("ztunnel and hbone-lab disagree on {disagreements} case(s)");
    }
    Ok(())
}

fn diff_against_istiod(
    files: Vec<PathBuf>,
    sets: u64,
    seed: u64,
    given: hbone_control_plane::Given,
) -> anyhow::Result<()> {
    use hbone_standalone::policy_diff::generate::policy_set;
    use hbone_standalone::policy_diff::istiod::{Checked, IstiodTranslator, check_set};
    let inputs: Vec<(String, String)> = if files.is_empty() {
        (0..sets)
            .map(|n| {
                (
                    format!("generated set {n} (seed {seed})"),
                    policy_set(seed, n),
                )
            })
            .collect()
    } else {
        files
            .iter()
            .map(|f| {
                std::fs::read_to_string(f)
                    .map(|text| (f.display().to_string(), text))
                    .with_context(|| format!("cannot read {}", f.display()))
            })
            .collect::<anyhow::Result<_>>()?
    };
    eprintln!(
        "policy diff --against istiod: starting etcd, kube-apiserver and istiod, then {} policy set(s)",
        inputs.len()
    );
    let handle = tokio::runtime::Handle::current();
    tokio::task::block_in_place(|| {
        handle.block_on(async {
            let mut istiod = IstiodTranslator::start(&given).await?;
            let (mut disagreements, mut refused) = (0usize, 0usize);
            for (i, (name, yaml)) in inputs.iter().enumerate() {
                let found = match check_set(&mut istiod, yaml, name).await? {
                    Checked::Compared(found) => found,
                    Checked::Refused(why) => {
                        refused += 1;
                        println!("REFUSED   {name}: the API server refused it: {why}");
                        continue;
                    }
                };
                if !found.is_empty() {
                    println!("\n=== {name}:\n{yaml}");
                    for d in &found {
                        println!("DISAGREE  {d}");
                    }
                }
                disagreements += found.len();
                if (i + 1) % 25 == 0 {
                    eprintln!("  {} policy sets…", i + 1);
                }
            }
            println!(
                "{} sets, {disagreements} disagreements ({refused} refused by the API server)",
                inputs.len() - refused
            );
            if disagreements > 0 {
                anyhow::bail!(
                    "istiod and hbone-lab translate {disagreements} policies differently"
                );
            }
            Ok(())
        })
    })
}

fn ztunnel_config(
    policies: Option<&Path>,
    loopback: bool,
    root_namespace: &str,
) -> anyhow::Result<()> {
    use hbone_standalone::lab::topology::Mode;
    let loaded = match policies {
        Some(dir) => read(dir)?,
        None => lab_resources()?,
    };
    let mode = if loopback {
        Mode::Loopback
    } else {
        Mode::Netns
    };
    let registry = hbone_standalone::lab::lab_registry(mode)?;
    let mesh =
        hbone_standalone::lab::dataplane::mesh(&registry, &istio_policies(&loaded, root_namespace));
    print!("{}", hbone_xds::local_config::render(&mesh));
    Ok(())
}
