//! The node agent's side of ZDS over a real SOCK_SEQPACKET socket, with the
//! proxy's side written out here as the protocol says (the real ztunnel
//! peer runs in standalone/tests/ztunnel_xds.rs when ZTUNNEL_BIN is set):
//! hello, the snapshot of pods each with its netns descriptor, SnapshotSent,
//! live adds and deletes, an ack per message, a NACK kept, a reconnect
//! replayed.

use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::Duration;

use hbone_xds::proto::zds::{
    Ack, Payload, ResponsePayload, VERSION_V1, WorkloadRequest, WorkloadResponse, ZdsHello,
};
use hbone_xds::zds::{KEPT_NACKS, MAX_PEERS, NodeAgent, ZdsPod};
use nix::sys::socket::{
    AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr, connect, recvmsg,
    send, socket,
};
use prost::Message;

/// The proxy's end of the conversation.
struct Peer(OwnedFd);

impl Peer {
    fn connect(path: &std::path::Path) -> Peer {
        let fd = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        connect(fd.as_raw_fd(), &UnixAddr::new(path).unwrap()).unwrap();
        Peer(fd)
    }

    fn send(&self, bytes: &[u8]) {
        send(self.0.as_raw_fd(), bytes, MsgFlags::empty()).unwrap();
    }

    /// One request and the descriptors that came with it.
    fn receive(&self) -> (WorkloadRequest, Vec<OwnedFd>) {
        let mut buf = [0u8; 1024];
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; 2]);
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            self.0.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::empty(),
        )
        .unwrap();
        let mut fds = Vec::new();
        for cmsg in msg.cmsgs().unwrap() {
            if let ControlMessageOwned::ScmRights(raw) = cmsg {
                fds.extend(
                    raw.into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        let n = msg.bytes;
        (WorkloadRequest::decode(&buf[..n]).unwrap(), fds)
    }

    fn answer(&self, error: &str) {
        let response = WorkloadResponse {
            payload: Some(ResponsePayload::Ack(Ack {
                error: error.to_string(),
            })),
        };
        self.send(&response.encode_to_vec());
    }
}

fn pod(name: &str) -> ZdsPod {
    ZdsPod {
        uid: format!("Kubernetes//Pod/demo/{name}"),
        name: name.into(),
        namespace: "demo".into(),
        service_account: name.into(),
        // Any network namespace will do as the descriptor: this process's own.
        netns: PathBuf::from("/proc/self/ns/net"),
    }
}

/// The inode of the namespace a descriptor refers to.
fn inode(fd: &OwnedFd) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .unwrap()
        .ino()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_adds_deletes_acks_and_replay() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ztunnel.sock");
    let agent = NodeAgent::listen(&path, vec![pod("a")]).unwrap();
    let own_netns = std::fs::metadata("/proc/self/ns/net").unwrap();
    let peer_path = path.clone();
    let peer = tokio::task::spawn_blocking(move || {
        let peer = Peer::connect(&peer_path);
        peer.send(
            &ZdsHello {
                version: VERSION_V1,
            }
            .encode_to_vec(),
        );
        // The snapshot: pod a with exactly one descriptor, our own netns.
        let (add, fds) = peer.receive();
        let Some(Payload::Add(add)) = add.payload else {
            panic!("expected an add, got {add:?}")
        };
        assert_eq!(add.uid, "Kubernetes//Pod/demo/a");
        assert_eq!(add.workload_info.unwrap().service_account, "a");
        assert_eq!(fds.len(), 1);
        assert_eq!(inode(&fds[0]), {
            use std::os::unix::fs::MetadataExt;
            own_netns.ino()
        });
        peer.answer("");
        let (done, fds) = peer.receive();
        assert!(matches!(done.payload, Some(Payload::SnapshotSent(_))));
        assert!(fds.is_empty());
        peer.answer("");
        peer
    })
    .await
    .unwrap();
    agent.wait_synced(Duration::from_secs(5)).await.unwrap();

    // Live: b added (refused by the peer), then a deleted.
    agent.add(pod("b"));
    let peer = tokio::task::spawn_blocking(move || {
        let (add, fds) = peer.receive();
        assert!(matches!(add.payload, Some(Payload::Add(ref a)) if a.uid.ends_with("/b")));
        assert_eq!(fds.len(), 1);
        peer.answer("no room for b");
        peer
    })
    .await
    .unwrap();
    agent.remove("Kubernetes//Pod/demo/a");
    let peer = tokio::task::spawn_blocking(move || {
        let (del, fds) = peer.receive();
        assert!(matches!(del.payload, Some(Payload::Del(ref d)) if d.uid.ends_with("/a")));
        assert!(fds.is_empty(), "a delete carries no descriptor");
        peer.answer("");
        peer
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let status = agent.status();
    assert_eq!(
        status.nacks,
        [(
            "Kubernetes//Pod/demo/b".to_string(),
            "no room for b".to_string()
        )]
    );
    assert!(status.acked.is_empty(), "{status:?}");

    // The proxy restarts: everything the agent holds is replayed.
    drop(peer);
    let replay = tokio::task::spawn_blocking(move || {
        let peer = Peer::connect(&path);
        peer.send(
            &ZdsHello {
                version: VERSION_V1,
            }
            .encode_to_vec(),
        );
        let (add, fds) = peer.receive();
        assert!(matches!(add.payload, Some(Payload::Add(ref a)) if a.uid.ends_with("/b")));
        assert_eq!(fds.len(), 1);
        peer.answer("");
        let (done, _) = peer.receive();
        assert!(matches!(done.payload, Some(Payload::SnapshotSent(_))));
        peer.answer("");
        peer
    })
    .await
    .unwrap();
    agent.wait_synced(Duration::from_secs(5)).await.unwrap();
    assert_eq!(agent.status().connections, 2);
    drop(replay);
}

#[tokio::test]
async fn a_peer_of_another_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ztunnel.sock");
    let agent = NodeAgent::listen(&path, vec![pod("a")]).unwrap();
    tokio::task::spawn_blocking(move || {
        let peer = Peer::connect(&path);
        peer.send(&ZdsHello { version: 7 }.encode_to_vec());
        let mut buf = [0u8; 16];
        // The agent hangs up without handing anything over.
        let n = nix::sys::socket::recv(peer.0.as_raw_fd(), &mut buf, MsgFlags::empty()).unwrap();
        assert_eq!(n, 0);
    })
    .await
    .unwrap();
    assert!(agent.status().acked.is_empty());
}

/// The socket is the agent's user's alone; past [`MAX_PEERS`] a connection
/// is closed as it arrives and counted; a peer that refuses every pod
/// leaves only the newest [`KEPT_NACKS`] reasons behind (issue 30).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_peer_can_hold_of_the_agent_is_bounded() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ztunnel.sock");
    let pods: Vec<ZdsPod> = (0..KEPT_NACKS + 4)
        .map(|i| pod(&format!("p{i:02}")))
        .collect();
    let agent = NodeAgent::listen(&path, pods).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the socket is {mode:o}");

    let pods = KEPT_NACKS + 4;
    let silent_path = path.clone();
    tokio::task::spawn_blocking(move || {
        // One peer that refuses every pod, then as many silent ones as allowed.
        let refusing = Peer::connect(&silent_path);
        refusing.send(
            &ZdsHello {
                version: VERSION_V1,
            }
            .encode_to_vec(),
        );
        for _ in 0..pods {
            let (add, _fds) = refusing.receive();
            assert!(matches!(add.payload, Some(Payload::Add(_))));
            refusing.answer("no room");
        }
        let (done, _) = refusing.receive();
        assert!(matches!(done.payload, Some(Payload::SnapshotSent(_))));
        refusing.answer("");
        let held: Vec<Peer> = (1..MAX_PEERS)
            .map(|_| Peer::connect(&silent_path))
            .collect();
        // One more: closed by the agent before it says anything.
        let extra = Peer::connect(&silent_path);
        let mut buf = [0u8; 16];
        let n = nix::sys::socket::recv(extra.0.as_raw_fd(), &mut buf, MsgFlags::empty()).unwrap();
        assert_eq!(n, 0, "a peer past the cap was kept");
        drop((refusing, held));
    })
    .await
    .unwrap();
    let status = agent.status();
    assert_eq!(status.refused, 1, "{status:?}");
    assert_eq!(status.nacks.len(), KEPT_NACKS);
    assert_eq!(status.nacks_total, pods as u64);
    assert_eq!(
        status.nacks.last().unwrap().0,
        format!("Kubernetes//Pod/demo/p{:02}", pods - 1),
        "the newest are kept"
    );
}
