//! Sockets inside pods' network namespaces, made from outside them.
//!
//! Ambient's in-pod mode puts the proxy's sockets inside each pod's network
//! namespace while the proxy process lives outside it. A socket belongs to
//! the namespace of the thread that created it, so sockets are made on a
//! thread that has entered the namespace, and the proxy's runtime then
//! drives them from anywhere. Entering is done in-process (`setns` through
//! `nix`).
//!
//! A [`Netns`] is a handle on one namespace: it owns the namespace's
//! descriptor (a node agent hands a pod's over ZDS; a named one is opened
//! from its path) and one long-lived thread inside it that makes sockets
//! there, started on first use and ended when the last clone of the handle
//! is dropped. Spawning a thread per connection instead cost hbone-lab four
//! fifths of its connection rate (benches/RESULTS.md). The handle lives
//! beside the workload it serves, not in its record (`state::pod_netns`).
//!
//! Making namespaces, veths and capture rules is the lab's business, not
//! the proxy's: `hbone-harness`.

use std::fs::File;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};

use thiserror::Error;

/// A socket that could not be made inside a namespace.
#[derive(Debug, Error)]
pub enum NetnsError {
    /// The namespace could not be entered (gone, or no permission).
    #[error("cannot enter network namespace {path}: {reason}")]
    Enter {
        /// The namespace's path (or what the descriptor came from).
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The socket call failed inside the namespace.
    #[error("socket in network namespace {path}: {source}")]
    Socket {
        /// The namespace's path (or what the descriptor came from).
        path: PathBuf,
        /// The socket call's error.
        #[source]
        source: std::io::Error,
    },
}

/// SO_MARK on the proxy's own sockets inside pod namespaces (ztunnel's
/// PACKET_MARK 1337), so the pod's capture rules do not redirect them back.
pub const PACKET_MARK: u32 = 0x539;

type Job = Box<dyn FnOnce() + Send>;

/// A handle on a network namespace: its descriptor, and the thread that
/// makes sockets inside it. Clones share both; equality is identity.
#[derive(Clone)]
pub struct Netns(Arc<Inner>);

struct Inner {
    fd: File,
    /// What the namespace is called in errors and logs.
    label: PathBuf,
    /// The socket thread's queue, once started; dropping it ends the thread.
    worker: Mutex<Option<Sender<Job>>>,
}

impl std::fmt::Debug for Netns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Netns({})", self.0.label.display())
    }
}

impl PartialEq for Netns {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Netns {}

impl Netns {
    /// A named namespace (`/var/run/netns/<name>`) or any namespace file.
    pub fn open(path: &Path) -> Result<Netns, NetnsError> {
        let fd = File::open(path).map_err(|e| NetnsError::Enter {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Ok(Netns::with_file(fd, path.to_path_buf()))
    }

    /// A namespace handed over as a descriptor (a node agent's, over ZDS);
    /// `label` names it in errors.
    pub fn from_fd(fd: OwnedFd, label: impl Into<PathBuf>) -> Netns {
        Netns::with_file(File::from(fd), label.into())
    }

    fn with_file(fd: File, label: PathBuf) -> Netns {
        Netns(Arc::new(Inner {
            fd,
            label,
            worker: Mutex::new(None),
        }))
    }

    /// What it is called in errors.
    pub fn label(&self) -> &Path {
        &self.0.label
    }

    fn enter_error(&self, reason: impl ToString) -> NetnsError {
        NetnsError::Enter {
            path: self.0.label.clone(),
            reason: reason.to_string(),
        }
    }

    /// The socket thread's queue, starting the thread on first use.
    fn worker(&self) -> Result<Sender<Job>, NetnsError> {
        let mut worker = self.0.worker.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = worker.as_ref() {
            return Ok(tx.clone());
        }
        let file = self.0.fd.try_clone().map_err(|e| self.enter_error(e))?;
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("netns-sockets".into())
            .spawn(move || {
                let entered = nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET);
                drop(file);
                let ok = entered.is_ok();
                let _ = ready_tx.send(entered.map_err(|e| e.to_string()));
                if ok {
                    // Ends when every sender (the handle's) is gone.
                    while let Ok(job) = rx.recv() {
                        job();
                    }
                }
            })
            .map_err(|e| self.enter_error(e))?;
        match ready_rx.recv() {
            Ok(Ok(())) => {
                *worker = Some(tx.clone());
                Ok(tx)
            }
            Ok(Err(reason)) => Err(self.enter_error(reason)),
            Err(_) => Err(self.enter_error("the namespace thread ended")),
        }
    }

    /// Runs `f` on the namespace's socket thread and waits for its answer.
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, NetnsError> {
        let (result_tx, result_rx) = std::sync::mpsc::sync_channel(1);
        let job: Job = Box::new(move || {
            let _ = result_tx.send(f());
        });
        if self.worker()?.send(job).is_err() {
            // The thread is gone (a job panicked): forget it, so that the
            // next use starts a new one instead of failing for good.
            *self.0.worker.lock().unwrap_or_else(|e| e.into_inner()) = None;
            return Err(self.enter_error("the namespace thread ended; it restarts on next use"));
        }
        result_rx
            .recv()
            .map_err(|_| self.enter_error("the namespace thread dropped the job"))
    }
}

/// Runs `f` on a scoped thread that has entered the namespace at `path`
/// (for one-off work; what repeats goes through a [`Netns`]).
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

/// Runs `make` inside `netns` (or here, for `None`), naming the namespace
/// in its error.
fn made_in<T: Send + 'static>(
    netns: Option<&Netns>,
    make: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, NetnsError> {
    let (label, made) = match netns {
        None => (PathBuf::from("(this namespace)"), make()),
        Some(ns) => (ns.label().to_path_buf(), ns.run(make)?),
    };
    made.map_err(|source| NetnsError::Socket {
        path: label,
        source,
    })
}

/// A TCP listener bound inside `netns` (or here, for `None`).
pub fn bind_listener(
    netns: Option<&Netns>,
    addr: SocketAddr,
) -> Result<std::net::TcpListener, NetnsError> {
    made_in(netns, move || listener(addr, false))
}

/// Like [`bind_listener`], with SO_REUSEPORT: a workload's listeners, which
/// a replacement proxy binds while the one it replaces still listens, so
/// that a hand-over refuses no connection. (With `net.ipv4.tcp_migrate_req`
/// set, connections still queued on the old listener when it closes move to
/// the new one instead of being reset.)
pub fn bind_handover_listener(
    netns: Option<&Netns>,
    addr: SocketAddr,
) -> Result<std::net::TcpListener, NetnsError> {
    made_in(netns, move || listener(addr, true))
}

fn listener(addr: SocketAddr, reuse_port: bool) -> std::io::Result<std::net::TcpListener> {
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
}

/// An unconnected TCP socket made inside `netns` (or here, for `None`),
/// bound to `source` if given, with `mark` as SO_MARK (so capture rules can
/// skip it).
pub fn tcp_socket(
    netns: Option<&Netns>,
    remote: SocketAddr,
    source: Option<IpAddr>,
    mark: Option<u32>,
) -> Result<tokio::net::TcpSocket, NetnsError> {
    let std = made_in(netns, move || -> std::io::Result<std::net::TcpStream> {
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
    })?;
    Ok(tokio::net::TcpSocket::from_std_stream(std))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The handle's thread ends with the handle: no thread is kept for a
    /// namespace nobody holds. (This process's own namespace stands in for
    /// a pod's: entering it needs no privilege.)
    #[test]
    fn the_socket_thread_lives_as_long_as_the_handle() {
        let ns = Netns::open(Path::new("/proc/self/ns/net")).unwrap();
        let copy = ns.clone();
        assert_eq!(ns, copy);
        let listener = bind_listener(Some(&ns), "127.0.0.1:0".parse().unwrap()).unwrap();
        assert!(listener.local_addr().is_ok());
        // `/proc/thread-self` names the thread that reads it: the socket thread.
        let thread = ns
            .run(|| std::fs::read_link("/proc/thread-self").unwrap())
            .unwrap();
        let task = Path::new("/proc").join(thread);
        assert!(task.exists(), "{}", task.display());
        assert_eq!(
            copy.run(|| std::fs::read_link("/proc/thread-self").unwrap())
                .unwrap(),
            task.strip_prefix("/proc").unwrap(),
            "clones share the thread"
        );
        drop((ns, copy));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while task.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(!task.exists(), "the thread ended with the handle");
    }

    #[test]
    fn a_missing_namespace_is_named() {
        let err = Netns::open(Path::new("/nonexistent/netns")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/netns"), "{err}");
    }
}
