//! The netns lab's plumbing (root only): nodes, pods and the outside world
//! as network namespaces, joined by veth pairs and routed like a small
//! cluster; in each pod, ambient's in-pod redirection (iptables REDIRECT to
//! the proxy's 15001/15006) and the Cilium layer compiled to iptables.
//!
//! ```text
//!   world (203.0.113.10 api.github.com, .20 api.cloudflare.com, .100 browser)
//!     │ 10.250.1.2 ── 10.250.1.1
//!   node-1 ──────── 10.250.0.1 ── 10.250.0.2 ──────── node-2   (SNI relay on :15443)
//!    │ 10.244.1.1 per pod veth                          │ 10.244.2.1
//!    ├ hello-gateway 10.244.1.10                        ├ hello-app 10.244.2.10
//!    ├ test-pod      10.244.1.11                        └ postgres  10.244.2.11
//!    └ worker-app    10.244.1.12
//! ```
//!
//! Everything lives in namespaces this lab creates; dropping the plumbing
//! deletes them, and with them every veth and iptables rule.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use hbone_harness::netns::{
    NetNs, inbound_capture_rules, install_rules, jump_to, outbound_capture_rules, veth,
};
use hbone_policies::cilium::CiliumPolicies;
use hbone_policies::cilium::iptables::{Addressing, PodFirewall, compile};
use hbone_policies::topology::{LabTopology, MeshMode};
use hbone_proxy::net::pod_sockets::bind_listener;

use crate::lab::sni_relay::SniRelay;
use crate::lab::topology::{Cause, LabError, Part};

/// Every address inside the netns cluster (pods, nodes, their links).
pub const CLUSTER_CIDR: &str = "10.0.0.0/8";
pub use crate::lab::topology::{CLOUDFLARE_IP, GITHUB_IP};
pub use hbone_policies::topology::BROWSER_IP;
/// Where each node's SNI relay listens (in the node's namespace).
pub const SNI_RELAY_PORT: u16 = 15443;

/// A node of the netns lab: its pod-facing address and its link address.
struct NodePlan {
    name: &'static str,
    pod_gateway: &'static str,
    pod_cidr: &'static str,
    link: &'static str,
}

const NODES: [NodePlan; 2] = [
    NodePlan {
        name: "node-1",
        pod_gateway: "10.244.1.1",
        pod_cidr: "10.244.1.0/24",
        link: "10.250.0.1",
    },
    NodePlan {
        name: "node-2",
        pod_gateway: "10.244.2.1",
        pod_cidr: "10.244.2.0/24",
        link: "10.250.0.2",
    },
];

/// The running namespaces and what was installed in them.
pub struct NetnsPlumbing {
    /// Each node's namespace, by node name.
    pub nodes: BTreeMap<String, NetNs>,
    /// Each pod's namespace, by pod name.
    pub pods: BTreeMap<String, NetNs>,
    /// The outside world's namespace: the public APIs' stand-ins and the browser.
    pub world: NetNs,
    /// The Cilium layer's iptables rules installed in each pod, by pod name.
    pub firewalls: BTreeMap<String, PodFirewall>,
    /// The running SNI relays: the pod whose rule each enforces, the relay, and
    /// where it listens in the node's namespace.
    pub relays: Vec<(String, Arc<SniRelay>, SocketAddr)>,
}

fn err(e: impl Into<Cause>) -> LabError {
    LabError::failed(Part::Netns, "plumbing the lab", e)
}

fn iptables(ns: &NetNs, args: &[&str]) -> Result<(), LabError> {
    ns.exec("iptables", args).map(|_| ()).map_err(err)
}

/// ambient's in-pod redirection, reduced to what the lab needs: outbound TCP
/// to 15001 except the proxy's own marked sockets; for captured pods, inbound
/// TCP other than HBONE to 15006.
fn install_capture(pod: &NetNs, mesh: MeshMode) -> Result<(), LabError> {
    let mut rules = outbound_capture_rules("HBL_OUTPUT", &[]);
    rules.push(jump_to("OUTPUT", "HBL_OUTPUT"));
    if mesh == MeshMode::Ambient {
        rules.extend(inbound_capture_rules("HBL_PREROUTING"));
        rules.push(jump_to("PREROUTING", "HBL_PREROUTING"));
    }
    install_rules(pod, &rules).map_err(err)
}

/// The prefix of every namespace this lab creates: `hbl<pid>-`.
pub fn namespace_prefix(pid: u32) -> String {
    format!("hbl{pid}-")
}

/// Deletes namespaces left by earlier runs whose process is gone (a run
/// killed with SIGKILL cannot clean up after itself). Returns their names.
pub fn remove_stale() -> Vec<String> {
    let Ok(listing) = hbone_harness::netns::run_command("ip", &["netns", "list"]) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for name in listing.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(pid) = name
            .strip_prefix("hbl")
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists()
            && hbone_harness::netns::run_command("ip", &["netns", "del", name]).is_ok()
        {
            removed.push(name.to_string());
        }
    }
    removed
}

impl NetnsPlumbing {
    /// Creates the namespaces, links and routes, and installs capture and
    /// the compiled Cilium rules. `topology` must carry the netns addresses.
    pub fn create(topology: &LabTopology, cilium: &CiliumPolicies) -> Result<Self, LabError> {
        let prefix = namespace_prefix(std::process::id());
        let name = |what: &str| format!("{prefix}{what}");
        let mut nodes = BTreeMap::new();
        for plan in &NODES {
            let ns = NetNs::create(&name(plan.name)).map_err(err)?;
            ns.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])
                .map_err(err)?;
            nodes.insert(plan.name.to_string(), ns);
        }
        let world = NetNs::create(&name("world")).map_err(err)?;
        let (n1, n2) = (&nodes["node-1"], &nodes["node-2"]);
        veth(
            n1,
            "to-node-2",
            "10.250.0.1/30",
            n2,
            "to-node-1",
            "10.250.0.2/30",
        )
        .map_err(err)?;
        veth(
            n1,
            "to-world",
            "10.250.1.1/30",
            &world,
            "eth0",
            "10.250.1.2/30",
        )
        .map_err(err)?;
        for ip in [GITHUB_IP, CLOUDFLARE_IP, BROWSER_IP] {
            world
                .ip(&["addr", "add", &format!("{ip}/32"), "dev", "eth0"])
                .map_err(err)?;
        }
        world
            .ip(&["route", "add", CLUSTER_CIDR, "via", "10.250.1.1"])
            .map_err(err)?;
        n1.ip(&["route", "add", NODES[1].pod_cidr, "via", NODES[1].link])
            .map_err(err)?;
        n1.ip(&["route", "add", "default", "via", "10.250.1.2"])
            .map_err(err)?;
        n2.ip(&["route", "add", "default", "via", NODES[0].link])
            .map_err(err)?;

        let addressing = Addressing {
            cluster: CLUSTER_CIDR.parse().expect("literal"),
            interface: "eth0".into(),
        };
        let mut pods = BTreeMap::new();
        let mut firewalls = BTreeMap::new();
        for (i, w) in topology.workloads.iter().enumerate() {
            let node_name = w
                .node
                .as_deref()
                .ok_or_else(|| err(format!("{} has no node", w.name)))?;
            let plan = NODES
                .iter()
                .find(|n| n.name == node_name)
                .ok_or_else(|| err(format!("unknown node {node_name}")))?;
            let ip =
                w.ip.ok_or_else(|| err(format!("{} has no address", w.name)))?;
            let ns = NetNs::create(&name(&w.name)).map_err(err)?;
            let node = &nodes[node_name];
            let node_if = format!("pod{i}");
            veth(
                &ns,
                "eth0",
                &format!("{ip}/32"),
                node,
                &node_if,
                &format!("{}/32", plan.pod_gateway),
            )
            .map_err(err)?;
            ns.ip(&[
                "route",
                "add",
                &format!("{}/32", plan.pod_gateway),
                "dev",
                "eth0",
            ])
            .map_err(err)?;
            ns.ip(&[
                "route",
                "add",
                "default",
                "via",
                plan.pod_gateway,
                "dev",
                "eth0",
            ])
            .map_err(err)?;
            node.ip(&["route", "add", &format!("{ip}/32"), "dev", &node_if])
                .map_err(err)?;
            if w.mesh != MeshMode::None {
                install_capture(&ns, w.mesh)?;
            }
            let firewall = compile(cilium, topology, w, &addressing);
            for command in &firewall.commands {
                let args: Vec<&str> = command.iter().map(String::as_str).collect();
                iptables(&ns, &args)?;
            }
            firewalls.insert(w.name.clone(), firewall);
            pods.insert(w.name.clone(), ns);
        }
        Ok(NetnsPlumbing {
            nodes,
            pods,
            world,
            firewalls,
            relays: Vec::new(),
        })
    }

    /// The path of `pod`'s network namespace; panics for a pod the lab lacks.
    pub fn pod_path(&self, pod: &str) -> PathBuf {
        self.pods[pod].path()
    }

    /// Starts the node-side SNI relays for every `serverNames` rule, and the
    /// node rules that send the matching flows to them.
    pub async fn start_sni_relays(&mut self, topology: &LabTopology) -> Result<(), LabError> {
        let mut next_port = SNI_RELAY_PORT;
        for w in &topology.workloads {
            let (Some(node_name), Some(ip)) = (w.node.as_deref(), w.ip) else {
                continue;
            };
            let Some(fw) = self.firewalls.get(&w.name) else {
                continue;
            };
            for rule in fw.sni.clone() {
                let node = &self.nodes[node_name];
                let listen = SocketAddr::new(IpAddr::from([0, 0, 0, 0]), next_port);
                let std = bind_listener(Some(node.sockets()), listen).map_err(err)?;
                let listener = tokio::net::TcpListener::from_std(std).map_err(err)?;
                let relay = Arc::new(SniRelay {
                    rule: rule.rule.clone(),
                    server_names: rule.server_names.clone(),
                    netns: node.sockets().clone(),
                    events: Mutex::new(Vec::new()),
                });
                tokio::spawn(relay.clone().serve(listener));
                for port in &rule.ports {
                    let src = format!("{ip}/32");
                    let dport = port.to_string();
                    let to = next_port.to_string();
                    let mut args = vec!["-t", "nat", "-A", "PREROUTING", "-s", &src];
                    args.extend(rule.destination.iter().map(String::as_str));
                    args.extend(["-p", "tcp", "--dport", &dport, "-m", "comment", "--comment"]);
                    args.extend([rule.rule.as_str(), "-j", "REDIRECT", "--to-ports", &to]);
                    iptables(node, &args)?;
                }
                self.relays.push((
                    w.name.clone(),
                    relay,
                    SocketAddr::new(IpAddr::from([0, 0, 0, 0]), next_port),
                ));
                next_port += 1;
            }
        }
        Ok(())
    }

    /// Packets counted so far by the rules of `pod`'s Cilium chains whose
    /// comment contains `comment`.
    pub fn packets(&self, pod: &str, comment: &str) -> u64 {
        let Some(ns) = self.pods.get(pod) else {
            return 0;
        };
        let Ok(listing) = ns.exec("iptables", &["-t", "filter", "-L", "-v", "-x", "-n"]) else {
            return 0;
        };
        listing
            .lines()
            .filter(|l| l.contains(&format!("/* {comment}")))
            .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
            .sum()
    }

    /// The namespace names, for the commands `--keep` prints.
    pub fn names(&self) -> Vec<String> {
        self.nodes
            .values()
            .chain(self.pods.values())
            .chain([&self.world])
            .map(|n| n.name().to_string())
            .collect()
    }

    /// Where this emulation of the Cilium layer differs from Cilium's own
    /// datapath — printed by the demo so nobody mistakes one for the other.
    pub fn differences_from_cilium(&self) -> Vec<String> {
        let mut out = vec![
            "Cilium enforces in eBPF on security identities; here the same rules are iptables chains in each pod (HBL_CILIUM_EGRESS/INGRESS), with label selectors resolved to the pods' addresses once, at start".to_string(),
            format!("`world` is every address outside {CLUSTER_CIDR}; there is no kube-dns here, so the DNS rule has nothing to match and toFQDNs is not exercised"),
            "dropped packets are silently dropped, as Cilium does: a refused client waits for its own timeout".to_string(),
        ];
        let mut notes: Vec<String> = self
            .firewalls
            .values()
            .flat_map(|f| f.notes.clone())
            .collect();
        notes.sort();
        notes.dedup();
        out.extend(notes);
        out
    }
}
