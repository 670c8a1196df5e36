//! Network namespaces: the lab's pods and nodes on one Linux machine —
//! named namespaces, veth pairs between them, and ambient's capture rules
//! (iptables) inside a pod. Creating them needs root (CAP_NET_ADMIN).
//!
//! Building the topology (namespaces, veths, addresses, routes) shells out
//! to iproute2's `ip`, and we keep it so after weighing `rtnetlink`: the
//! failure modes it would remove are small here — a missing `ip` is named
//! with its package before anything starts ([`can_create`],
//! `NetnsError::Spawn`), and only one command's output is read (`ip netns
//! list`, for stale-lab cleanup); everything else is judged by exit status
//! and stderr, which `NetnsError::Command` quotes. It would not remove the
//! external tools: the capture rules and the Cilium layer need `iptables`
//! either way, and `ip netns add` (a named, bind-mounted namespace that `ip
//! netns exec` — the walkthrough's way in — can find) would have to be
//! reimplemented. The commands a user can paste and rerun are worth more
//! to a teaching lab than that.
//!
//! Sockets inside a namespace are the proxy's own business
//! ([`hbone_proxy::net::pod_sockets`]); [`NetNs::run`] borrows its way in.

use std::path::{Path, PathBuf};
use std::process::Command;

use hbone_proxy::net::pod_sockets::{self, Netns, PACKET_MARK};
use thiserror::Error;

/// A lab command that failed.
#[derive(Debug, Error)]
pub enum NetnsError {
    /// The command ran and exited non-zero.
    #[error("`{command}` failed: {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// The command could not be started.
    #[error("cannot run `{command}`: {source} (is iproute2 installed? apt-get install iproute2)")]
    Spawn {
        /// The command line.
        command: String,
        /// Why it could not start.
        #[source]
        source: std::io::Error,
    },
    /// Something run inside the namespace failed.
    #[error(transparent)]
    Inside(#[from] pod_sockets::NetnsError),
}

/// Runs a command, turning a non-zero exit into an error with its stderr.
pub fn run_command(program: &str, args: &[&str]) -> Result<String, NetnsError> {
    let command = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|source| NetnsError::Spawn {
            command: command.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(NetnsError::Command {
            command,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// True when this process may create namespaces (root).
pub fn can_create() -> bool {
    nix::unistd::geteuid().is_root() && Command::new("ip").arg("-V").output().is_ok()
}

/// A named network namespace (`ip netns add`), deleted when dropped.
#[derive(Debug)]
pub struct NetNs {
    name: String,
    /// A handle for making sockets inside it from here.
    sockets: Netns,
}

impl NetNs {
    /// Creates `name` with its loopback up.
    pub fn create(name: &str) -> Result<Self, NetnsError> {
        let _ = run_command("ip", &["netns", "del", name]);
        run_command("ip", &["netns", "add", name])?;
        let path = Path::new("/var/run/netns").join(name);
        let sockets = match Netns::open(&path) {
            Ok(handle) => handle,
            Err(e) => {
                let _ = run_command("ip", &["netns", "del", name]);
                return Err(e.into());
            }
        };
        let ns = NetNs {
            name: name.to_string(),
            sockets,
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Its name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its bind mount, which a process or socket thread enters.
    pub fn path(&self) -> PathBuf {
        Path::new("/var/run/netns").join(&self.name)
    }

    /// `ip -n <ns> …`
    pub fn ip(&self, args: &[&str]) -> Result<String, NetnsError> {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        run_command("ip", &full)
    }

    /// Runs a program inside the namespace (`ip netns exec`).
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String, NetnsError> {
        let mut full = vec!["netns", "exec", &self.name, program];
        full.extend_from_slice(args);
        run_command("ip", &full)
    }

    /// A `Command` that starts `program` inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// The handle that makes sockets inside it ([`pod_sockets::tcp_socket`],
    /// [`pod_sockets::bind_listener`]) on one long-lived thread.
    pub fn sockets(&self) -> &Netns {
        &self.sockets
    }

    /// Runs `f` on a thread inside the namespace; sockets it creates stay there.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
        Ok(pod_sockets::run_in(&self.path(), f)?)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = run_command("ip", &["netns", "del", &self.name]);
    }
}

/// Joins two namespaces with a veth pair, addressing each end (`10.0.0.1/24`).
pub fn veth(
    a: &NetNs,
    a_if: &str,
    a_addr: &str,
    b: &NetNs,
    b_if: &str,
    b_addr: &str,
) -> Result<(), NetnsError> {
    run_command(
        "ip",
        &[
            "link",
            "add",
            a_if,
            "netns",
            a.name(),
            "type",
            "veth",
            "peer",
            "name",
            b_if,
            "netns",
            b.name(),
        ],
    )?;
    for (ns, ifname, addr) in [(a, a_if, a_addr), (b, b_if, b_addr)] {
        ns.ip(&["addr", "add", addr, "dev", ifname])?;
        ns.ip(&["link", "set", ifname, "up"])?;
    }
    Ok(())
}

fn args(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|p| p.to_string()).collect()
}

/// ztunnel-style in-pod outbound redirection, as `iptables` argument lists
/// (nat table) building chain `chain`, which the caller jumps to from
/// `OUTPUT`: the proxy's own marked sockets and loopback pass, so do
/// `exempt_dports`, and every other TCP connection goes to the proxy's 15001.
pub fn outbound_capture_rules(chain: &str, exempt_dports: &[u16]) -> Vec<Vec<String>> {
    let mark = format!("0x{:x}/0xfff", PACKET_MARK);
    let mut rules = vec![
        args(&["-t", "nat", "-N", chain]),
        args(&[
            "-t", "nat", "-A", chain, "-p", "tcp", "-m", "mark", "--mark", &mark, "-j", "RETURN",
        ]),
        args(&[
            "-t", "nat", "-A", chain, "-p", "tcp", "-o", "lo", "-j", "RETURN",
        ]),
    ];
    for port in exempt_dports {
        let port = port.to_string();
        rules.push(args(&[
            "-t", "nat", "-A", chain, "-p", "tcp", "--dport", &port, "-j", "RETURN",
        ]));
    }
    rules.push(redirect_rest(chain, 15001));
    rules
}

/// The rule that sends every TCP connection still in `chain` to `port`.
fn redirect_rest(chain: &str, port: u16) -> Vec<String> {
    let port = port.to_string();
    args(&[
        "-t",
        "nat",
        "-A",
        chain,
        "-p",
        "tcp",
        "-j",
        "REDIRECT",
        "--to-ports",
        &port,
    ])
}

/// The inbound half, for pods captured both ways (chain `chain`, jumped to
/// from `PREROUTING`): HBONE on 15008 passes, every other TCP connection goes
/// to the proxy's plaintext port 15006.
pub fn inbound_capture_rules(chain: &str) -> Vec<Vec<String>> {
    vec![
        args(&["-t", "nat", "-N", chain]),
        args(&[
            "-t", "nat", "-A", chain, "-p", "tcp", "--dport", "15008", "-j", "RETURN",
        ]),
        redirect_rest(chain, 15006),
    ]
}

/// The rule that sends a built-in chain's TCP (`OUTPUT` or `PREROUTING`,
/// nat table) to one of the capture chains above.
pub fn jump_to(from: &str, chain: &str) -> Vec<String> {
    args(&["-t", "nat", "-A", from, "-p", "tcp", "-j", chain])
}

/// Runs every rule with `iptables` inside `ns`.
pub fn install_rules(ns: &NetNs, rules: &[Vec<String>]) -> Result<(), NetnsError> {
    for rule in rules {
        let rule: Vec<&str> = rule.iter().map(String::as_str).collect();
        ns.exec("iptables", &rule)?;
    }
    Ok(())
}
