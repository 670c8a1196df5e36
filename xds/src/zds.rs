//! istio-cni's node agent side of ZDS: it hands each pod's network
//! namespace to a shared-mode node proxy (ztunnel, or hbone-lab's proxy),
//! which then opens its listeners inside the pod.
//!
//! The node agent listens on a unix socket of type SOCK_SEQPACKET (one
//! protobuf per datagram, no framing). The proxy connects and says hello
//! (version V1). The agent replays every pod it knows as `AddWorkload`,
//! each carrying the pod's netns as one `SCM_RIGHTS` descriptor, then
//! `SnapshotSent` (the proxy drops pods it holds that were not replayed);
//! after that it sends adds and deletes as pods come and go. Every message
//! waits for the proxy's ack before the next; a NACK is logged and kept.
//!
//! The socket hands out pods' network namespaces, so it is bounded as every
//! port of the lab is (issue 30): only the agent's user may connect (mode
//! 0600), at most [`MAX_PEERS`] peers at once (the rest closed and
//! counted), 10 s for a hello or an ack, one datagram of 4 KiB at most, and
//! the newest [`KEPT_NACKS`] refusals kept.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hbone_listen::ConnectionLimit;
use nix::sys::socket::{
    AddressFamily, Backlog, ControlMessage, MsgFlags, SockFlag, SockType, UnixAddr, bind, listen,
    sendmsg, socket,
};
use prost::Message;
use thiserror::Error;
use tokio::io::Interest;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::proto::zds::{
    self, AddWorkload, DelWorkload, Payload, ResponsePayload, SnapshotSent, WorkloadInfo,
    WorkloadRequest, WorkloadResponse, ZdsHello,
};

/// How long the agent waits for the proxy's hello or an ack.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Peers connected at once: a node proxy and its successor while it
/// drains, with room to spare. Past it a connection is closed as it
/// arrives and counted ([`AgentStatus::refused`]).
pub const MAX_PEERS: usize = 4;

/// The newest NACKs kept in [`AgentStatus::nacks`]; older ones are only
/// counted ([`AgentStatus::nacks_total`]), so a peer that refuses every pod
/// on every reconnection cannot grow the agent.
pub const KEPT_NACKS: usize = 16;

/// What went wrong on either side of a ZDS connection.
#[derive(Debug, Error)]
pub enum ZdsError {
    /// The node agent could not create, bind or listen on its socket.
    #[error("cannot listen on the ZDS socket {path}: {source}")]
    Listen {
        /// The socket's path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A pod's network namespace could not be opened to hand it over.
    #[error("cannot open pod {uid}'s network namespace {path}: {source}")]
    Netns {
        /// The pod's uid.
        uid: String,
        /// The network namespace's path.
        path: PathBuf,
        /// Why opening it failed.
        #[source]
        source: io::Error,
    },
    /// Sending or receiving on the connection failed.
    #[error("ZDS connection: {0}")]
    Io(#[from] io::Error),
    /// A datagram did not decode as the message expected.
    #[error("ZDS peer sent something that is not {expected}: {source}")]
    Decode {
        /// The message expected (`ZdsHello`, `WorkloadRequest`, …).
        expected: &'static str,
        /// The decoder's error.
        #[source]
        source: prost::DecodeError,
    },
    /// The proxy's hello named a version other than V1.
    #[error("ZDS peer speaks version {0}, not V1")]
    Version(i32),
    /// No hello or ack came in time, or a wait for sync ran out.
    #[error("no answer from the ZDS peer within {0:?}")]
    Timeout(Duration),
    /// The peer closed the connection.
    #[error("the ZDS peer closed the connection")]
    Closed,
    /// The proxy could not connect to the node agent's socket.
    #[error(
        "cannot reach the node agent at {path}: {source} (is istio-cni, or `hbone-lab`'s node agent, running there?)"
    )]
    Connect {
        /// The socket's path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The node agent sent a request the proxy cannot use (no payload, or an
    /// add without a descriptor).
    #[error("the node agent sent {0}")]
    Unexpected(String),
}

/// A pod as the node agent knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZdsPod {
    /// The same uid as the pod's xDS Workload.
    pub uid: String,
    /// The pod's name, sent in `WorkloadInfo`.
    pub name: String,
    /// The pod's namespace, sent in `WorkloadInfo`.
    pub namespace: String,
    /// The service account it runs as, sent in `WorkloadInfo`.
    pub service_account: String,
    /// Its network namespace (`/var/run/netns/<name>` or `/proc/<pid>/ns/net`).
    pub netns: PathBuf,
}

/// What the agent has seen of its peer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentStatus {
    /// Whether the newest peer is connected now.
    pub connected: bool,
    /// Connections accepted so far.
    pub connections: u64,
    /// Pods the current peer has acknowledged.
    pub acked: BTreeSet<String>,
    /// Snapshots the peer acknowledged.
    pub snapshots: u64,
    /// (uid, the peer's error), oldest first: the newest [`KEPT_NACKS`].
    pub nacks: Vec<(String, String)>,
    /// Every NACK so far, kept or not.
    pub nacks_total: u64,
    /// Connections closed as they arrived, past [`MAX_PEERS`].
    pub refused: u64,
}

impl AgentStatus {
    /// Records the peer's refusal of `uid`, keeping the newest [`KEPT_NACKS`].
    fn nack(&mut self, uid: String, error: String) {
        if self.nacks.len() == KEPT_NACKS {
            self.nacks.remove(0);
        }
        self.nacks.push((uid, error));
        self.nacks_total += 1;
    }
}

struct Shared {
    pods: watch::Sender<BTreeMap<String, ZdsPod>>,
    status: Mutex<AgentStatus>,
    /// The number of the newest peer, whose state [`AgentStatus`] reports.
    latest: AtomicU64,
}

impl Shared {
    fn status(&self, f: impl FnOnce(&mut AgentStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|e| e.into_inner()));
    }
}

/// One connected peer. Several may be connected at once — a proxy being
/// replaced keeps its connection while its successor takes the pods — and
/// each is served the pods; the status follows the newest.
struct Peer<'a> {
    shared: &'a Shared,
    number: u64,
}

impl Peer<'_> {
    fn status(&self, f: impl FnOnce(&mut AgentStatus)) {
        if self.shared.latest.load(Ordering::Acquire) == self.number {
            self.shared.status(f);
        }
    }
}

/// A running node agent; stops listening when dropped.
pub struct NodeAgent {
    shared: Arc<Shared>,
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl NodeAgent {
    /// Listens on `path` (replacing a stale socket) and serves `pods`.
    pub fn listen(path: &Path, pods: Vec<ZdsPod>) -> Result<NodeAgent, ZdsError> {
        let listen_err = |source| ZdsError::Listen {
            path: path.to_path_buf(),
            source,
        };
        let _ = std::fs::remove_file(path);
        let fd = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )
        .map_err(|e| listen_err(e.into()))?;
        let addr = UnixAddr::new(path).map_err(|e| listen_err(e.into()))?;
        bind(fd.as_raw_fd(), &addr).map_err(|e| listen_err(e.into()))?;
        // Only the agent's own user (root, as istio-cni) may connect: the
        // socket hands out pods' network namespaces.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(listen_err)?;
        listen(&fd, Backlog::new(8).expect("small backlog")).map_err(|e| listen_err(e.into()))?;
        let listener = UnixListener::from_std(std::os::unix::net::UnixListener::from(fd))
            .map_err(listen_err)?;
        let map = pods.into_iter().map(|p| (p.uid.clone(), p)).collect();
        let shared = Arc::new(Shared {
            pods: watch::channel(map).0,
            status: Mutex::new(AgentStatus::default()),
            latest: AtomicU64::new(0),
        });
        let task = tokio::spawn(accept_loop(listener, shared.clone()));
        info!(path = %path.display(), "ZDS node agent listening");
        Ok(NodeAgent {
            shared,
            path: path.to_path_buf(),
            task,
        })
    }

    /// Hands a new pod to the proxy (or replaces one with the same uid).
    pub fn add(&self, pod: ZdsPod) {
        self.shared.pods.send_modify(|m| {
            m.insert(pod.uid.clone(), pod);
        });
    }

    /// Takes a pod back: the proxy closes its listeners in it.
    pub fn remove(&self, uid: &str) {
        self.shared.pods.send_modify(|m| {
            m.remove(uid);
        });
    }

    /// A copy of what the agent has seen of its newest peer.
    pub fn status(&self) -> AgentStatus {
        self.shared
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits until the peer holds exactly the agent's pods (every add and
    /// delete acknowledged), or `limit` passes.
    pub async fn wait_synced(&self, limit: Duration) -> Result<(), ZdsError> {
        let deadline = Instant::now() + limit;
        loop {
            let want: BTreeSet<String> = self.shared.pods.borrow().keys().cloned().collect();
            let status = self.status();
            if status.connected && status.snapshots > 0 && status.acked == want {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(ZdsError::Timeout(limit));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for NodeAgent {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Accepts peers, each served on a task of its own: a successor connects
/// while the proxy it replaces is still draining. The peers' tasks end
/// with this one (a dropped `JoinSet` aborts them).
async fn accept_loop(listener: UnixListener, shared: Arc<Shared>) {
    let mut peers = tokio::task::JoinSet::new();
    let limit = ConnectionLimit::with_max(MAX_PEERS);
    loop {
        while peers.try_join_next().is_some() {}
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, most likely: wait rather than spin.
                warn!(error = %e, "ZDS accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(permit) = limit.try_acquire() else {
            shared.status(|s| s.refused += 1);
            warn!(
                max = MAX_PEERS,
                "ZDS: as many peers as allowed are connected; closing a new one"
            );
            drop(stream);
            continue;
        };
        let number = shared.latest.fetch_add(1, Ordering::AcqRel) + 1;
        shared.status(|s| {
            s.connected = true;
            s.connections += 1;
            s.acked.clear();
            s.snapshots = 0;
        });
        info!(peer = number, "ZDS peer connected");
        let shared = shared.clone();
        peers.spawn(async move {
            let _permit = permit;
            let peer = Peer {
                shared: &shared,
                number,
            };
            let result = serve_peer(&stream, &peer).await;
            peer.status(|s| s.connected = false);
            match result {
                Err(ZdsError::Closed) | Ok(()) => info!(peer = number, "ZDS peer disconnected"),
                Err(e) => warn!(peer = number, error = %e, "ZDS connection ended"),
            }
        });
    }
}

/// One peer: hello, the snapshot, then changes as they come.
async fn serve_peer(stream: &UnixStream, peer: &Peer<'_>) -> Result<(), ZdsError> {
    let hello: ZdsHello = decode(&receive(stream).await?, "ZdsHello")?;
    if hello.version != zds::VERSION_V1 {
        return Err(ZdsError::Version(hello.version));
    }
    let mut pods = peer.shared.pods.subscribe();
    let mut sent: BTreeMap<String, ZdsPod> = BTreeMap::new();
    let snapshot = pods.borrow_and_update().clone();
    for pod in snapshot.values() {
        send_add(stream, peer, pod).await?;
        sent.insert(pod.uid.clone(), pod.clone());
    }
    let ack = request(stream, Payload::SnapshotSent(SnapshotSent {}), None).await?;
    match ack {
        None => peer.status(|s| s.snapshots += 1),
        Some(error) => peer.status(|s| s.nack("<snapshot>".into(), error)),
    }
    info!(pods = sent.len(), "ZDS snapshot sent");
    loop {
        tokio::select! {
            changed = pods.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                let now = pods.borrow_and_update().clone();
                for (uid, pod) in &now {
                    if sent.get(uid) != Some(pod) {
                        send_add(stream, peer, pod).await?;
                        sent.insert(uid.clone(), pod.clone());
                    }
                }
                let gone: Vec<String> = sent.keys().filter(|u| !now.contains_key(*u)).cloned().collect();
                for uid in gone {
                    let del = Payload::Del(DelWorkload { uid: uid.clone() });
                    if let Some(error) = request(stream, del, None).await? {
                        warn!(%uid, %error, "ZDS peer refused a delete");
                        peer.status(|s| s.nack(uid.clone(), error));
                    }
                    peer.status(|s| { s.acked.remove(&uid); });
                    sent.remove(&uid);
                    info!(%uid, "ZDS: pod removed");
                }
            }
            // The peer says nothing after the snapshot but acks; anything
            // readable now is its end of the connection.
            readable = stream.readable() => {
                readable?;
                let mut byte = [0u8; 1];
                match stream.try_read(&mut byte) {
                    Ok(0) => return Err(ZdsError::Closed),
                    Ok(_) => warn!("ZDS peer sent an unexpected message; ignored"),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
}

async fn send_add(stream: &UnixStream, peer: &Peer<'_>, pod: &ZdsPod) -> Result<(), ZdsError> {
    let netns = File::open(&pod.netns).map_err(|source| ZdsError::Netns {
        uid: pod.uid.clone(),
        path: pod.netns.clone(),
        source,
    })?;
    let add = Payload::Add(AddWorkload {
        uid: pod.uid.clone(),
        workload_info: Some(WorkloadInfo {
            name: pod.name.clone(),
            namespace: pod.namespace.clone(),
            service_account: pod.service_account.clone(),
        }),
    });
    match request(stream, add, Some(&OwnedFd::from(netns))).await? {
        None => {
            info!(uid = %pod.uid, netns = %pod.netns.display(), "ZDS: pod handed over");
            peer.status(|s| {
                s.acked.insert(pod.uid.clone());
            });
        }
        Some(error) => {
            warn!(uid = %pod.uid, %error, "ZDS peer refused a pod");
            peer.status(|s| s.nack(pod.uid.clone(), error));
        }
    }
    Ok(())
}

/// Sends one request (with `fd` as SCM_RIGHTS) and waits for its ack:
/// `None` for an ACK, the peer's error for a NACK.
async fn request(
    stream: &UnixStream,
    payload: Payload,
    fd: Option<&OwnedFd>,
) -> Result<Option<String>, ZdsError> {
    let bytes = WorkloadRequest {
        payload: Some(payload),
    }
    .encode_to_vec();
    let fds: Vec<i32> = fd.map(|f| f.as_raw_fd()).into_iter().collect();
    stream
        .async_io(Interest::WRITABLE, || {
            let iov = [io::IoSlice::new(&bytes)];
            let rights = [ControlMessage::ScmRights(&fds)];
            let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
            sendmsg::<()>(stream.as_raw_fd(), &iov, cmsgs, MsgFlags::empty(), None)
                .map_err(io::Error::from)
        })
        .await?;
    let response: WorkloadResponse = decode(&receive(stream).await?, "WorkloadResponse")?;
    match response.payload {
        Some(ResponsePayload::Ack(ack)) if ack.error.is_empty() => Ok(None),
        Some(ResponsePayload::Ack(ack)) => Ok(Some(ack.error)),
        None => Ok(Some("an empty response".into())),
    }
}

/// One datagram, within the answer timeout.
async fn receive(stream: &UnixStream) -> Result<Vec<u8>, ZdsError> {
    let mut buf = vec![0u8; 4096];
    let read = async {
        loop {
            stream.readable().await?;
            match stream.try_read(&mut buf) {
                Ok(0) => return Err(ZdsError::Closed),
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(ZdsError::Io(e)),
            }
        }
    };
    let n = tokio::time::timeout(ANSWER_TIMEOUT, read)
        .await
        .map_err(|_| ZdsError::Timeout(ANSWER_TIMEOUT))??;
    buf.truncate(n);
    Ok(buf)
}

pub(crate) fn decode<T: Message + Default>(
    bytes: &[u8],
    expected: &'static str,
) -> Result<T, ZdsError> {
    T::decode(bytes).map_err(|source| ZdsError::Decode { expected, source })
}
