//! Sockets inside pods' network namespaces, made from outside them.
//!
//! Ambient's in-pod mode puts the proxy's sockets inside each pod's network
//! namespace while the proxy process lives outside it. A socket belongs to
//! the namespace of the thread that created it, so sockets are made on a
//! thread that has entered the namespace, and the proxy's runtime then
//! drives them from anywhere. The data path uses one long-lived thread per
//! namespace for this: spawning a thread per connection cost hbone-lab four
//! fifths of its connection rate (benches/RESULTS.md). Entering a namespace
//! is done in-process (`setns` through `nix`).
//!
//! Making namespaces, veths and capture rules is the lab's business, not
//! the proxy's: `hbone-harness`.

use std::fs::File;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use thiserror::Error;

/// A socket that could not be made inside a namespace.
#[derive(Debug, Error)]
pub enum NetnsError {
    /// The namespace could not be entered (gone, or no permission).
    #[error("cannot enter network namespace {path}: {reason}")]
    Enter {
        /// The namespace's path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The socket call failed inside the namespace.
    #[error("socket in network namespace {path}: {source}")]
    Socket {
        /// The namespace's path.
        path: PathBuf,
        /// The socket call's error.
        #[source]
        source: std::io::Error,
    },
}

/// SO_MARK on the proxy's own sockets inside pod namespaces (ztunnel's
/// PACKET_MARK 1337), so the pod's capture rules do not redirect them back.
pub const PACKET_MARK: u32 = 0x539;

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
