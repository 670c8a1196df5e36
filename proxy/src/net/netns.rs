//! Network namespaces: the lab's pods and nodes on one Linux machine.
//!
//! Ambient's in-pod mode puts the proxy's sockets inside each pod's network
//! namespace while the proxy process lives outside it. The same trick works
//! here: a socket belongs to the namespace of the thread that created it, so
//! sockets are made on a thread that has entered the namespace, and the
//! proxy's runtime then drives them from anywhere. The data path uses one
//! long-lived thread per namespace for this: spawning a thread per
//! connection cost hbone-lab four fifths of its connection rate
//! (benches/RESULTS.md).
//! Creating namespaces and veth pairs needs root (CAP_NET_ADMIN).
//!
//! Entering a namespace is done in-process (`setns` through `nix`): that
//! is on the data path. Building the topology (namespaces, veths,
//! addresses, routes) shells out to iproute2's `ip`, and we keep it so
//! after weighing `rtnetlink`: the failure modes it would remove are
//! small here — a missing `ip` is named with its package before anything
//! starts ([`can_create`], `NetnsError::Spawn`), and only one command's
//! output is read (`ip netns list`, for stale-lab cleanup); everything
//! else is judged by exit status and stderr, which `NetnsError::Command`
//! quotes. It would not remove the external tools: the capture rules and
//! the Cilium layer need `iptables` either way, and `ip netns add` (a
//! named, bind-mounted namespace that `ip netns exec` — the walkthrough's
//! way in — can find) would have to be reimplemented. The commands a user
//! can paste and rerun are worth more to a teaching lab than that.

use std::fs::File;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum NetnsError {
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("cannot run `{command}`: {source} (is iproute2 installed?)")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot enter network namespace {path}: {reason}")]
    Enter { path: PathBuf, reason: String },
    #[error("socket in network namespace {path}: {source}")]
    Socket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// SO_MARK on the proxy's own sockets inside pod namespaces (ztunnel's
/// PACKET_MARK 1337), so the pod's capture rules do not redirect them back.
pub const PACKET_MARK: u32 = 0x539;

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

/// A named network namespace (`ip netns add`), deleted when dropped if owned.
#[derive(Debug)]
pub struct NetNs {
    name: String,
    owned: bool,
}

impl NetNs {
    /// Creates `name` with its loopback up.
    pub fn create(name: &str) -> Result<Self, NetnsError> {
        let _ = run_command("ip", &["netns", "del", name]);
        run_command("ip", &["netns", "add", name])?;
        let ns = NetNs {
            name: name.to_string(),
            owned: true,
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

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

    /// Runs `f` on a thread inside the namespace; sockets it creates stay there.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
        run_in(&self.path(), f)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if self.owned {
            forget_worker(&self.path());
            let _ = run_command("ip", &["netns", "del", &self.name]);
        }
    }
}

/// Runs `f` on a scoped thread that has entered the namespace at `path`.
pub fn run_in<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
    let file = File::open(path).map_err(|e| NetnsError::Enter {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
                    NetnsError::Enter {
                        path: path.to_path_buf(),
                        reason: e.to_string(),
                    }
                })?;
                Ok(f())
            })
            .join()
            .expect("the namespace thread does not panic")
    })
}

type Job = Box<dyn FnOnce() + Send>;

type Workers = std::sync::Mutex<std::collections::HashMap<PathBuf, std::sync::mpsc::Sender<Job>>>;

fn workers() -> &'static Workers {
    static WORKERS: std::sync::OnceLock<Workers> = std::sync::OnceLock::new();
    WORKERS.get_or_init(Default::default)
}

/// The long-lived thread that stays inside the namespace at `path` and makes
/// sockets there, so the data path does not spawn a thread per connection.
fn worker(path: &Path) -> Result<std::sync::mpsc::Sender<Job>, NetnsError> {
    let mut all = workers().lock().expect("worker lock");
    if let Some(tx) = all.get(path) {
        return Ok(tx.clone());
    }
    let file = File::open(path).map_err(|e| NetnsError::Enter {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let (tx, rx) = std::sync::mpsc::channel::<Job>();
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("netns-sockets".into())
        .spawn(move || {
            let entered = nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET);
            let ok = entered.is_ok();
            let _ = ready_tx.send(entered.map_err(|e| e.to_string()));
            if ok {
                while let Ok(job) = rx.recv() {
                    job();
                }
            }
        })
        .map_err(|e| NetnsError::Enter {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    match ready_rx.recv() {
        Ok(Ok(())) => {
            all.insert(path.to_path_buf(), tx.clone());
            Ok(tx)
        }
        Ok(Err(reason)) => Err(NetnsError::Enter {
            path: path.to_path_buf(),
            reason,
        }),
        Err(_) => Err(NetnsError::Enter {
            path: path.to_path_buf(),
            reason: "the namespace thread ended".into(),
        }),
    }
}

/// Lets the namespace's socket thread end (it would otherwise keep a deleted namespace alive).
/// Ends the socket thread kept for the namespace at `path` (once the
/// namespace is gone, or the path may come to name another one).
pub fn forget_worker(path: &Path) {
    workers().lock().expect("worker lock").remove(path);
}

/// Runs `f` on the namespace's long-lived socket thread.
fn run_on_worker<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, NetnsError> {
    let (result_tx, result_rx) = std::sync::mpsc::sync_channel(1);
    let job: Job = Box::new(move || {
        let _ = result_tx.send(f());
    });
    worker(path)?.send(job).map_err(|_| NetnsError::Enter {
        path: path.to_path_buf(),
        reason: "the namespace thread ended".into(),
    })?;
    result_rx.recv().map_err(|_| NetnsError::Enter {
        path: path.to_path_buf(),
        reason: "the namespace thread dropped the job".into(),
    })
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

/// A TCP listener bound inside the namespace at `path` (or here, for `None`).
pub fn bind_listener(
    path: Option<&Path>,
    addr: SocketAddr,
) -> Result<std::net::TcpListener, NetnsError> {
    listener(path, addr, false)
}

/// Like [`bind_listener`], with SO_REUSEPORT: a workload's listeners, which
/// a replacement proxy binds while the one it replaces still listens, so
/// that a hand-over refuses no connection. (With `net.ipv4.tcp_migrate_req`
/// set, connections still queued on the old listener when it closes move to
/// the new one instead of being reset.)
pub fn bind_handover_listener(
    path: Option<&Path>,
    addr: SocketAddr,
) -> Result<std::net::TcpListener, NetnsError> {
    listener(path, addr, true)
}

fn listener(
    path: Option<&Path>,
    addr: SocketAddr,
    reuse_port: bool,
) -> Result<std::net::TcpListener, NetnsError> {
    let bind = move || -> std::io::Result<std::net::TcpListener> {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            None,
        )?;
        socket.set_reuse_address(true)?;
        if reuse_port {
            socket.set_reuse_port(true)?;
        }
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        socket.set_nonblocking(true)?;
        Ok(socket.into())
    };
    match path {
        None => bind().map_err(|source| NetnsError::Socket {
            path: PathBuf::from("(this namespace)"),
            source,
        }),
        Some(p) => run_in(p, bind)?.map_err(|source| NetnsError::Socket {
            path: p.to_path_buf(),
            source,
        }),
    }
}

/// An unconnected TCP socket made inside the namespace at `path`, bound to
/// `source` if given, with `mark` as SO_MARK (so capture rules can skip it).
pub fn tcp_socket(
    path: Option<&Path>,
    remote: SocketAddr,
    source: Option<IpAddr>,
    mark: Option<u32>,
) -> Result<tokio::net::TcpSocket, NetnsError> {
    let make = move || -> std::io::Result<std::net::TcpStream> {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(remote),
            socket2::Type::STREAM,
            None,
        )?;
        if let Some(ip) = source {
            socket.bind(&SocketAddr::new(ip, 0).into())?;
        }
        if let Some(mark) = mark {
            socket.set_mark(mark)?;
        }
        socket.set_tcp_nodelay(true)?;
        socket.set_nonblocking(true)?;
        Ok(socket.into())
    };
    let label = || {
        path.map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("(this namespace)"))
    };
    let std = match path {
        None => make(),
        Some(p) => run_on_worker(p, make)?,
    }
    .map_err(|source| NetnsError::Socket {
        path: label(),
        source,
    })?;
    Ok(tokio::net::TcpSocket::from_std_stream(std))
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
