//! The kind lab, checked without a cluster: every file parses strictly, the
//! files agree with each other and with the policies, the scripts are sound,
//! and the matrix the manifests give is the lab's expected one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use hbone_kind::manifests::{Loaded, Manifest, load_dir, parse_documents};
use hbone_policies::cilium::eval::{EndpointInfo, NAMESPACE_LABEL, selector_matches};
use hbone_policies::istio::Action;
use hbone_policies::lab::lab_resources;
use hbone_policies::load::Resource;
use hbone_policies::matrix::{PolicySet, matrix};
use hbone_policies::selector::labels_match;
use hbone_policies::topology::{LabTopology, LabWorkload};

fn kind_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn manifests() -> Vec<Loaded> {
    load_dir(&kind_dir().join("manifests")).unwrap()
}

fn topology() -> LabTopology {
    hbone_kind::topology::topology(&manifests())
}

#[test]
fn every_file_parses_into_its_type() {
    let all = manifests();
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for l in &all {
        let kind = l.manifest.kind();
        *kinds.entry(kind).or_default() += 1;
    }
    assert_eq!(kinds["Deployment"], 3, "{kinds:?}");
    assert_eq!(kinds["Gateway"], 1);
    assert_eq!(kinds["HTTPRoute"], 1);
    assert_eq!(kinds["Pod"], 1);

    let text = std::fs::read_to_string(kind_dir().join("kind-config.yaml")).unwrap();
    let cluster = hbone_kind::kind_config::parse(&text, "kind-config.yaml").unwrap();
    assert_eq!(cluster.name, "ebpf-lab");
    assert!(cluster.networking.disable_default_cni, "Cilium is the CNI");
    assert_eq!(cluster.nodes.len(), 3);
    assert_eq!(
        cluster.nodes.iter().filter(|n| n.role == "worker").count(),
        2,
        "two workers: one can be hbone-lab's while the other stays ztunnel's"
    );
    assert!(
        cluster
            .nodes
            .iter()
            .all(|n| n.image.as_deref().is_some_and(|i| i.contains(":v1.34"))),
        "Kubernetes v1.34"
    );
    let err = hbone_kind::kind_config::parse(
        &text.replace("disableDefaultCNI", "disableDefaultCni"),
        "k.yaml",
    )
    .unwrap_err();
    assert!(
        err.contains("networking") && err.contains("disableDefaultCni"),
        "{err}"
    );
}

#[test]
fn mistakes_are_refused_with_file_and_field() {
    let cases = [
        (
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d, namespace: demo}\nspec:\n  selector: {matchLabels: {app: d}}\n  template:\n    metadata: {labels: {app: d}}\n    spec:\n      serviceAcountName: d\n      containers: [{name: c, image: i}]\n",
            "spec.template.spec.serviceAcountName",
        ),
        (
            "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: demo}\nspec:\n  selector: {app: s}\n  ports: [{port: 80, targetPort: 80, protocl: TCP}]\n",
            "spec.ports[0].protocl",
        ),
        (
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: g, namespace: demo}\nspec:\n  gatewayClassName: istio\n  listeners: [{name: http, port: 80, protocol: HTTP, allowedRoute: {}}]\n",
            "spec.listeners[0].allowedRoute",
        ),
        (
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: demo}\nspec:\n  parentRefs: [{name: g}]\n  rules: [{backendRefs: [{name: s, port: \"8000\"}]}]\n",
            "spec.rules[0].backendRefs[0].port",
        ),
    ];
    for (yaml, field) in cases {
        let err = parse_documents(yaml, "kind/manifests/x.yaml")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("kind/manifests/x.yaml: document 1"),
            "{err}"
        );
        assert!(err.contains(&format!("field `{field}`")), "{err}");
    }
}

/// Every identity, selector, port, Service and Secret that one file names
/// exists in another.
#[test]
fn the_files_agree_with_each_other_and_with_the_policies() {
    let all = manifests();
    let topo = topology();
    let demo: Vec<&LabWorkload> = topo
        .workloads
        .iter()
        .filter(|w| w.namespace == "demo")
        .collect();
    let mut service_accounts: Vec<String> = all
        .iter()
        .filter_map(|l| match &l.manifest {
            Manifest::ServiceAccount(sa) => sa.metadata.name.clone(),
            _ => None,
        })
        .collect();
    service_accounts.push("default".into());
    // Istio creates the gateway's service account; the topology names it.
    service_accounts.extend(
        topo.workloads
            .iter()
            .map(|w| w.service_account.clone())
            .filter(|sa| sa.ends_with("-istio")),
    );
    for w in &demo {
        assert!(
            service_accounts.contains(&w.service_account),
            "{} runs as a missing SA {}",
            w.name,
            w.service_account
        );
    }

    for loaded in lab_resources().unwrap() {
        let name = loaded.resource.describe();
        match &loaded.resource {
            Resource::AuthorizationPolicy(p) => {
                let selected: Vec<&&LabWorkload> = demo
                    .iter()
                    .filter(|w| {
                        p.spec
                            .selector
                            .as_ref()
                            .is_none_or(|s| labels_match(&s.match_labels, &w.labels))
                    })
                    .collect();
                assert!(!selected.is_empty(), "{name} selects no workload");
                for rule in &p.spec.rules {
                    for from in &rule.from {
                        for principal in &from.source.principals {
                            let sa = principal.rsplit('/').next().unwrap();
                            assert!(
                                service_accounts.iter().any(|s| s == sa),
                                "{name}: no service account {sa}"
                            );
                        }
                    }
                    for to in &rule.to {
                        for port in &to.operation.ports {
                            let port: u16 = port.parse().unwrap();
                            assert!(
                                p.spec.action != Action::Allow
                                    || selected.iter().any(|w| w.ports.contains(&port)),
                                "{name}: no selected workload serves port {port}"
                            );
                        }
                    }
                }
            }
            Resource::CiliumNetworkPolicy(p) => {
                let ns = p.metadata.namespace.as_deref().unwrap_or("default");
                let in_ns: Vec<&&LabWorkload> = demo.iter().filter(|w| w.namespace == ns).collect();
                let selector = p.spec.endpoint_selector.as_ref().unwrap();
                assert!(
                    in_ns
                        .iter()
                        .any(|w| selector_matches(selector, &EndpointInfo::from(**w))),
                    "{name}: endpointSelector selects nothing"
                );
                let peers = p
                    .spec
                    .ingress
                    .iter()
                    .flat_map(|r| &r.from_endpoints)
                    .chain(p.spec.egress.iter().flat_map(|r| &r.to_endpoints));
                for sel in peers {
                    let foreign = sel
                        .match_labels
                        .keys()
                        .any(|k| k.ends_with(NAMESPACE_LABEL));
                    if !foreign {
                        assert!(
                            in_ns
                                .iter()
                                .any(|w| selector_matches(sel, &EndpointInfo::from(**w))),
                            "{name}: peer selector {sel:?} selects nothing"
                        );
                    }
                }
            }
            _ => {}
        }
    }

    // Services select pods that serve their target ports; routes point at
    // Services and Gateways that exist; Secrets referenced exist with the key.
    let mut services = BTreeMap::new();
    let mut secrets = BTreeMap::new();
    for l in &all {
        match &l.manifest {
            Manifest::Service(s) => {
                let spec = s.spec.as_ref().unwrap();
                let selector = spec.selector.clone().unwrap_or_default();
                let backing: Vec<&&LabWorkload> = demo
                    .iter()
                    .filter(|w| labels_match(&selector, &w.labels))
                    .collect();
                let name = s.metadata.name.clone().unwrap();
                assert!(!backing.is_empty(), "Service {name} selects no pod");
                for p in spec.ports.iter().flatten() {
                    let target = match &p.target_port {
                        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n)) => {
                            *n as u16
                        }
                        _ => p.port as u16,
                    };
                    assert!(
                        backing.iter().all(|w| w.ports.contains(&target)),
                        "Service {name}: no container port {target}"
                    );
                    services.insert((name.clone(), p.port as u16), ());
                }
            }
            Manifest::Secret(s) => {
                let keys: Vec<String> = s.data.iter().flatten().map(|(k, _)| k.clone()).collect();
                secrets.insert(s.metadata.name.clone().unwrap(), keys);
            }
            _ => {}
        }
    }
    let gateways: Vec<String> = topo
        .workloads
        .iter()
        .filter(|w| w.service_account.ends_with("-istio"))
        .map(|w| w.name.clone())
        .collect();
    for l in &all {
        match &l.manifest {
            Manifest::HTTPRoute(r) => {
                for parent in &r.spec.parent_refs {
                    assert!(
                        gateways.contains(&parent.name),
                        "HTTPRoute parent {} missing",
                        parent.name
                    );
                }
                for backend in r.spec.rules.iter().flat_map(|rule| &rule.backend_refs) {
                    let port = backend.port.unwrap();
                    assert!(
                        services.contains_key(&(backend.name.clone(), port)),
                        "no Service {}:{port}",
                        backend.name
                    );
                }
            }
            Manifest::Deployment(d) => {
                let text = serde_json::to_string(d).unwrap();
                for (secret, keys) in &secrets {
                    if text.contains(&format!("\"secretName\":\"{secret}\""))
                        || text.contains(&format!("\"name\":\"{secret}\""))
                    {
                        assert!(
                            keys.contains(&"POSTGRES_PASSWORD".to_string()),
                            "{secret} lacks POSTGRES_PASSWORD"
                        );
                    }
                }
                if text.contains("secretName") || text.contains("secretKeyRef") {
                    assert!(
                        secrets.keys().any(|s| text.contains(s.as_str())),
                        "a Deployment references a missing Secret"
                    );
                }
            }
            _ => {}
        }
    }
}

/// The image the manifests run is the one up.sh builds and loads.
#[test]
fn the_image_and_the_policies_come_from_this_repository() {
    let up = std::fs::read_to_string(kind_dir().join("up.sh")).unwrap();
    let image = up
        .lines()
        .find_map(|l| l.strip_prefix("IMAGE="))
        .expect("up.sh sets IMAGE");
    for l in manifests() {
        if let Manifest::Deployment(d) = &l.manifest {
            let spec = d.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
            for c in &spec.containers {
                let img = c.image.as_deref().unwrap();
                if img.starts_with("hbone-lab") {
                    assert_eq!(img, image, "{}", l.file);
                    assert_eq!(
                        c.image_pull_policy.as_deref(),
                        Some("Never"),
                        "kind-loaded images are never pulled"
                    );
                }
            }
        }
    }
    assert!(
        up.contains("\"$root/policies/istio/\"") && up.contains("\"$root/policies/cilium/\""),
        "up.sh applies policies/"
    );
    // No second copy of any policy under kind/.
    for entry in std::fs::read_dir(kind_dir().join("manifests")).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for kind in [
            "CiliumNetworkPolicy",
            "AuthorizationPolicy",
            "PeerAuthentication",
        ] {
            assert!(
                !text.contains(&format!("kind: {kind}")),
                "a {kind} copy under kind/"
            );
        }
    }
}

#[test]
fn the_manifests_give_the_lab_s_expected_matrix() {
    let policies = PolicySet::from_loaded(&lab_resources().unwrap());
    let rows = matrix(&topology(), &policies);
    let expected =
        hbone_policies::expect::load_expected(&kind_dir().join("../policies/expected-matrix.json"))
            .unwrap();
    let diffs = hbone_policies::expect::differences(&rows, &expected);
    assert!(diffs.is_empty(), "{diffs:#?}");
}

/// The repository's shell scripts: kind/, scripts/ and .ci/.
fn shell_scripts() -> Vec<PathBuf> {
    let mut scripts: Vec<PathBuf> = Vec::new();
    for dir in [
        kind_dir(),
        kind_dir().join("../scripts"),
        kind_dir().join("../.ci"),
    ] {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            let is_script = path.extension().is_some_and(|e| e == "sh")
                || std::fs::read_to_string(&path)
                    .is_ok_and(|t| t.starts_with("#!/usr/bin/env bash"));
            if path.is_file() && is_script {
                scripts.push(path);
            }
        }
    }
    scripts
}

/// shellcheck finds nothing in the scripts. Ignored (shown as skipped)
/// unless asked for; scripts/test.sh installs shellcheck and asks.
#[test]
#[ignore = "needs shellcheck (scripts/test.sh installs it and runs it as root)"]
fn shellcheck_finds_nothing_in_the_scripts() {
    let scripts = shell_scripts();
    let out = Command::new("shellcheck")
        .args(&scripts)
        .output()
        .expect("this test needs shellcheck (scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "shellcheck:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn the_scripts_are_sound() {
    let scripts = shell_scripts();
    assert!(scripts.len() >= 3, "{scripts:?}");
    for script in &scripts {
        let out = Command::new("bash").arg("-n").arg(script).output().unwrap();
        assert!(
            out.status.success(),
            "bash -n {}: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The side-by-side files: typed like the rest, the proxy's config loads as
/// a proxy config, the extra policies as policies, and the names they share
/// agree.
#[test]
fn the_side_by_side_files_parse_and_agree() {
    let dir = kind_dir().join("side-by-side");
    let all = load_dir(&dir).unwrap();
    let kinds: Vec<&str> = all.iter().map(|l| l.manifest.kind()).collect();
    for kind in [
        "Namespace",
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "Deployment",
        "Service",
    ] {
        assert!(kinds.contains(&kind), "{kind} missing: {kinds:?}");
    }
    let config_text = all
        .iter()
        .find_map(|l| match &l.manifest {
            Manifest::ConfigMap(c) => c.data.as_ref()?.get("proxy.yaml").cloned(),
            _ => None,
        })
        .expect("the proxy's config");
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("proxy.yaml");
    std::fs::write(&path, config_text).unwrap();
    let config = hbone_proxy::config::ProxyConfig::load(&path).unwrap();
    assert!(
        config.kubernetes.is_some() && config.registry.is_none(),
        "the sidecar follows the cluster"
    );
    assert_eq!(config.ca.address, "https://hbone-ca.hbone-demo.svc:15012");
    // The CA serves under the name the proxies dial.
    let ca_args = all
        .iter()
        .find_map(|l| match &l.manifest {
            Manifest::Deployment(d) if d.metadata.name.as_deref() == Some("hbone-ca") => {
                d.spec.as_ref()?.template.spec.as_ref()?.containers[0]
                    .args
                    .clone()
            }
            _ => None,
        })
        .unwrap();
    assert!(
        ca_args.contains(&"hbone-ca.hbone-demo.svc".to_string()),
        "{ca_args:?}"
    );
    // The sidecar's pods carry the label the cluster registry looks for.
    let sidecar_labelled = all.iter().any(|l| match &l.manifest {
        Manifest::Deployment(d) => d
            .spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref()?.labels.as_ref())
            .is_some_and(|labels| {
                labels
                    .get(hbone_proxy::sources::kube::SIDECAR_LABEL)
                    .is_some()
            }),
        _ => false,
    });
    assert!(sidecar_labelled);
    // The extra policies parse, and up.sh creates the secret they mount and applies them.
    let policies =
        hbone_policies::load::load_dir(&kind_dir().join("../policies/side-by-side")).unwrap();
    assert_eq!(policies.len(), 2);
    let up = std::fs::read_to_string(kind_dir().join("up.sh")).unwrap();
    assert!(
        up.contains("cacerts_secret hbone-demo") && up.contains("create secret generic cacerts"),
        "up.sh makes the CA secret in hbone-demo"
    );
    assert!(
        up.contains("\"$here/side-by-side/\"") && up.contains("\"$root/policies/side-by-side/\""),
        "up.sh applies the side-by-side manifests and their policies"
    );
}

/// hbone-lab as a node's ambient proxy: the DaemonSet types strictly, asks
/// for what a node proxy needs and nothing more (no host network, no
/// privileged mode, three capabilities, one host path: istio-cni's socket
/// directory), finds what it mounts, and agrees with up.sh on the node label
/// — including the patch that keeps ztunnel off that node.
#[test]
fn the_node_proxy_files_ask_for_what_a_node_proxy_needs() {
    use hbone_kind::node_proxy;
    let all = load_dir(&kind_dir().join("node-proxy")).unwrap();
    assert_eq!(
        all.len(),
        1,
        "one DaemonSet, and no RBAC of its own: it runs as ztunnel's account"
    );
    let Manifest::DaemonSet(ds) = &all[0].manifest else {
        panic!("{} is not a DaemonSet", all[0].manifest.kind());
    };
    assert_eq!(ds.metadata.name.as_deref(), Some(node_proxy::DAEMONSET));
    assert_eq!(
        ds.metadata.namespace.as_deref(),
        Some(node_proxy::NAMESPACE)
    );
    let template = &ds.spec.as_ref().unwrap().template;
    let labels = template.metadata.as_ref().unwrap().labels.as_ref().unwrap();
    assert_eq!(
        labels["app"],
        node_proxy::DAEMONSET,
        "verify finds its pods by this label"
    );
    assert_eq!(
        labels["istio.io/dataplane-mode"], "none",
        "the node proxy is not itself enrolled"
    );
    let pod = template.spec.as_ref().unwrap();
    assert_eq!(
        pod.node_selector.as_ref().unwrap()[node_proxy::LABEL],
        node_proxy::VALUE
    );
    assert_eq!(pod.service_account_name.as_deref(), Some("ztunnel"));
    assert_ne!(
        pod.host_network,
        Some(true),
        "a node proxy enters pods' namespaces; it needs no host network"
    );
    assert_ne!(pod.host_pid, Some(true));
    let container = &pod.containers[0];
    let security = container.security_context.as_ref().unwrap();
    assert_ne!(security.privileged, Some(true));
    let caps = security.capabilities.as_ref().unwrap();
    let mut added = caps.add.clone().unwrap();
    added.sort();
    assert_eq!(added, ["NET_ADMIN", "NET_RAW", "SYS_ADMIN"]);
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));

    // Every volume is mounted; the one host path is istio-cni's socket directory.
    let volumes = pod.volumes.as_ref().unwrap();
    let mounts = container.volume_mounts.as_ref().unwrap();
    let mount_of = |volume: &str| {
        mounts
            .iter()
            .find(|m| m.name == volume)
            .map(|m| m.mount_path.clone())
            .unwrap_or_else(|| panic!("volume {volume} is not mounted"))
    };
    let host_paths: Vec<&str> = volumes
        .iter()
        .filter_map(|v| v.host_path.as_ref().map(|h| h.path.as_str()))
        .collect();
    assert_eq!(host_paths, ["/var/run/ztunnel"]);
    let args = container.args.clone().unwrap();
    let arg = |flag: &str| {
        let i = args
            .iter()
            .position(|a| a == flag)
            .unwrap_or_else(|| panic!("no {flag}"));
        args[i + 1].clone()
    };
    let zds_volume = volumes.iter().find(|v| v.host_path.is_some()).unwrap();
    assert_eq!(
        arg("--zds"),
        format!("{}/ztunnel.sock", mount_of(&zds_volume.name))
    );
    let token = volumes.iter().find(|v| v.projected.is_some()).unwrap();
    let source = token.projected.as_ref().unwrap().sources.as_ref().unwrap()[0]
        .service_account_token
        .clone()
        .unwrap();
    assert_eq!(
        source.audience.as_deref(),
        Some("istio-ca"),
        "istiod accepts ztunnel's audience"
    );
    assert_eq!(
        arg("--token-file"),
        format!("{}/{}", mount_of(&token.name), source.path)
    );
    let root = volumes.iter().find(|v| v.config_map.is_some()).unwrap();
    assert_eq!(root.config_map.as_ref().unwrap().name, "istio-ca-root-cert");
    assert_eq!(
        arg("--root-cert"),
        format!("{}/root-cert.pem", mount_of(&root.name))
    );
    assert_eq!(arg("--xds"), "https://istiod.istio-system.svc:15012");
    assert_eq!(arg("--node"), "$(NODE_NAME)");
    let env: Vec<&str> = container
        .env
        .as_ref()
        .unwrap()
        .iter()
        .map(|e| e.name.as_str())
        .collect();
    for name in ["NODE_NAME", "POD_NAME", "POD_NAMESPACE", "INSTANCE_IP"] {
        assert!(
            env.contains(&name),
            "{name} is set (the node id and metadata istiod checks)"
        );
    }
    let probe = container
        .readiness_probe
        .as_ref()
        .unwrap()
        .http_get
        .clone()
        .unwrap();
    assert!(arg("--readiness").ends_with(&format!(
        ":{}",
        match probe.port {
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(p) => p.to_string(),
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s) => s,
        }
    )));

    // up.sh: the same label, the same image, and a patch that keeps ztunnel off exactly that node.
    let up = std::fs::read_to_string(kind_dir().join("up.sh")).unwrap();
    assert!(up.contains(&format!("NODE_PROXY_LABEL={}", node_proxy::LABEL)));
    assert!(up.contains(&format!("NODE_PROXY_VALUE={}", node_proxy::VALUE)));
    assert!(up.contains(&format!("IMAGE={}", container.image.as_deref().unwrap())));
    assert!(
        up.contains("\"$here/node-proxy/\""),
        "up.sh applies kind/node-proxy/"
    );
    let patch_line = up
        .lines()
        .find(|l| l.contains("nodeAffinity"))
        .expect("the ztunnel patch");
    let patch = patch_line
        .trim()
        .trim_matches('"')
        .replace("\\\"", "\"")
        .replace("$NODE_PROXY_LABEL", node_proxy::LABEL)
        .replace("$NODE_PROXY_VALUE", node_proxy::VALUE);
    let patch: serde_json::Value =
        serde_json::from_str(&patch).unwrap_or_else(|e| panic!("{e}: {patch}"));
    let expr = &patch["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"][0]["matchExpressions"][0];
    assert_eq!(expr["key"], node_proxy::LABEL);
    assert_eq!(expr["operator"], "NotIn");
    assert_eq!(expr["values"][0], node_proxy::VALUE);
    assert!(
        up.contains("values.cni.ambient.dnsCapture=false"),
        "hbone-lab has no DNS proxy: istio-cni must not send pods' DNS to 15053"
    );
}

/// Stand-ins for the host's tools (none can run here), each printing what
/// its real version command prints: `name` → that output.
fn fake_tools(versions: &[(&str, &str)]) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    for (name, output) in versions {
        let path = dir.path().join(name);
        std::fs::write(&path, format!("#!/bin/sh\necho '{output}'\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    dir
}

/// Runs up.sh's preflight (the script, sourced, only defines its steps)
/// with the given stand-ins first on PATH.
fn preflight(versions: &[(&str, &str)]) -> std::process::Output {
    let tools = fake_tools(versions);
    let path = format!("{}:/usr/bin:/bin", tools.path().display());
    Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source '{}' && preflight",
            kind_dir().join("up.sh").display()
        ))
        .env("PATH", path)
        .output()
        .unwrap()
}

const CURRENT_TOOLS: [(&str, &str); 5] = [
    ("docker", "Docker version 28.5.1, build e180ab8"),
    ("kind", "kind v0.30.0 go1.24.6 linux/amd64"),
    ("kubectl", "Client Version: v1.34.1"),
    (
        "cilium",
        "cilium-cli: v0.19.1 compiled with go1.25.3 on linux/amd64",
    ),
    ("istioctl", "client version: 1.28.1"),
];

/// What a laptop has in December 2026 passes (the cilium CLI of the current
/// series, no helm, no cargo); an old CLI, the wrong kind, and a tool whose
/// output is unexpected each stop with what to do — not silently.
#[test]
fn preflight_accepts_current_tools_and_explains_the_rest() {
    let out = preflight(&CURRENT_TOOLS);
    let said = |o: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    assert!(out.status.success(), "{}", said(&out));
    assert!(said(&out).contains("cilium CLI 0.19.1"), "{}", said(&out));
    let with = |name: &str, output: &'static str| {
        let mut tools = CURRENT_TOOLS;
        tools.iter_mut().find(|(n, _)| *n == name).unwrap().1 = output;
        preflight(&tools)
    };
    let old = with("cilium", "cilium-cli: v0.16.4");
    assert!(!old.status.success());
    assert!(
        said(&old).contains("0.16.4 found") && said(&old).contains("what to do"),
        "{}",
        said(&old)
    );
    let kind = with("kind", "kind v0.27.0 go1.23 linux/amd64");
    assert!(
        said(&kind).contains("v0.30.x") || said(&kind).contains("0.30.x expected"),
        "{}",
        said(&kind)
    );
    let garbled = with("istioctl", "no version here");
    assert!(!garbled.status.success());
    assert!(
        said(&garbled).contains("version unreadable") && said(&garbled).contains("what to do"),
        "the hint is printed, not swallowed by pipefail: {}",
        said(&garbled)
    );
}

/// The review's fixes that can be seen in the files: no host toolchain, no
/// helm, the Gateway API CRDs applied server-side, the node image pinned, no
/// host port the walkthrough's port-forward would clash with, and no command
/// in the walkthrough that picks an arbitrary node or knows only sidecars.
#[test]
fn the_walkthrough_and_the_script_avoid_what_the_review_found() {
    let up = std::fs::read_to_string(kind_dir().join("up.sh")).unwrap();
    let steps = &up[..up.find("cat <<MSG").unwrap()];
    assert!(
        !steps.contains("cargo "),
        "nothing is built on the host before the closing hints"
    );
    assert!(!up.contains("need helm") && !up.contains("need cargo"));
    assert!(
        up.contains("docker run") && up.contains("ca init --out /cacerts"),
        "ca init runs in the image"
    );
    assert!(up.contains(
        "kubectl apply --server-side -f \"https://github.com/kubernetes-sigs/gateway-api"
    ));
    assert!(up.contains("--provenance=false") && up.contains("kind load image-archive"));

    let text = std::fs::read_to_string(kind_dir().join("kind-config.yaml")).unwrap();
    let cluster = hbone_kind::kind_config::parse(&text, "kind-config.yaml").unwrap();
    for node in &cluster.nodes {
        assert!(
            node.image.as_deref().unwrap().contains("@sha256:"),
            "pinned by digest"
        );
    }
    let readme = std::fs::read_to_string(kind_dir().join("README.md")).unwrap();
    let forwarded: Vec<u16> = readme
        .lines()
        .filter(|l| l.contains("port-forward"))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.split_once(':')?.0.parse().ok())
        })
        .collect();
    assert!(!forwarded.is_empty());
    for node in &cluster.nodes {
        for mapping in &node.extra_port_mappings {
            assert!(
                !forwarded.contains(&mapping.host_port),
                "host port {} is also the walkthrough's port-forward",
                mapping.host_port
            );
        }
    }
    assert!(
        !readme.contains("istioctl x describe"),
        "it knows sidecars only"
    );
    for arbitrary in ["ds/cilium", "ds/ztunnel"] {
        assert!(
            !readme
                .lines()
                .any(|l| l.starts_with("kubectl") && l.contains(arbitrary)),
            "{arbitrary} picks any node's pod"
        );
    }
}
