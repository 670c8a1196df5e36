//! The proxy's side of ZDS, as a shared-mode ztunnel speaks it: connect to
//! the node agent's SOCK_SEQPACKET socket, say hello (V1), then take one
//! request per datagram — a pod added (its network namespace arriving as
//! an `SCM_RIGHTS` descriptor), kept, deleted, or the end of the snapshot —
//! and answer each with an ack (or an error, which the agent logs).
//!
//! This is the message level; what a proxy does with a pod is its own
//! business (hbone-lab's opens the pod's listeners inside its namespace).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use nix::sys::socket::{
    AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr, connect, recvmsg,
    sendmsg, socket,
};
use prost::Message;
use tokio::io::Interest;
use tokio::net::UnixStream;

use crate::proto::zds::{
    self, Ack, Payload, ResponsePayload, WorkloadInfo, WorkloadRequest, WorkloadResponse, ZdsHello,
};
use crate::zds::{ZdsError, decode};

/// One request from the node agent.
#[derive(Debug)]
pub enum ZdsEvent {
    /// A pod to serve, with its network namespace.
    Add {
        /// The pod's uid, as in its xDS workload.
        uid: String,
        /// Its name, namespace and service account, if the agent sent them.
        info: Option<WorkloadInfo>,
        /// A descriptor of its network namespace, now owned by the receiver.
        netns: OwnedFd,
    },
    /// A pod from before a reconnect that is still there.
    Keep {
        /// The uid of the pod kept.
        uid: String,
    },
    /// A pod gone.
    Del {
        /// The uid of the pod gone.
        uid: String,
    },
    /// Every pod has been replayed: those held and not named since the
    /// connection began are gone.
    SnapshotSent,
}

/// A connection to the node agent.
pub struct ZdsClient {
    stream: UnixStream,
}

impl ZdsClient {
    /// Connects to the agent at `path` and says hello.
    pub async fn connect(path: &Path) -> Result<ZdsClient, ZdsError> {
        let fail = |source: io::Error| ZdsError::Connect {
            path: path.to_path_buf(),
            source,
        };
        let fd = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )
        .map_err(|e| fail(e.into()))?;
        let addr = UnixAddr::new(path).map_err(|e| fail(e.into()))?;
        match connect(fd.as_raw_fd(), &addr) {
            Ok(()) | Err(nix::errno::Errno::EINPROGRESS) => {}
            Err(e) => return Err(fail(e.into())),
        }
        let stream =
            UnixStream::from_std(std::os::unix::net::UnixStream::from(fd)).map_err(fail)?;
        let client = ZdsClient { stream };
        client
            .send(&ZdsHello {
                version: zds::VERSION_V1,
            })
            .await?;
        Ok(client)
    }

    async fn send(&self, message: &impl Message) -> Result<(), ZdsError> {
        let bytes = message.encode_to_vec();
        self.stream
            .async_io(Interest::WRITABLE, || {
                sendmsg::<()>(
                    self.stream.as_raw_fd(),
                    &[io::IoSlice::new(&bytes)],
                    &[],
                    MsgFlags::empty(),
                    None,
                )
                .map_err(io::Error::from)
            })
            .await?;
        Ok(())
    }

    /// The next request; waits as long as the agent has nothing to say.
    pub async fn next(&self) -> Result<ZdsEvent, ZdsError> {
        let mut buf = vec![0u8; 4096];
        let (n, fds) = self
            .stream
            .async_io(Interest::READABLE, || {
                let mut space = nix::cmsg_space!([std::os::fd::RawFd; 2]);
                let mut iov = [io::IoSliceMut::new(&mut buf)];
                let msg = recvmsg::<()>(
                    self.stream.as_raw_fd(),
                    &mut iov,
                    Some(&mut space),
                    MsgFlags::MSG_CMSG_CLOEXEC,
                )
                .map_err(io::Error::from)?;
                let mut fds = Vec::new();
                for cmsg in msg.cmsgs().map_err(io::Error::from)? {
                    if let ControlMessageOwned::ScmRights(received) = cmsg {
                        // SAFETY: the kernel just installed these descriptors in
                        // this process for this message (SCM_RIGHTS, close-on-exec);
                        // nothing else holds them, so each gets exactly one owner.
                        #[allow(unsafe_code)]
                        let owned = received
                            .into_iter()
                            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) });
                        fds.extend(owned);
                    }
                }
                Ok((msg.bytes, fds))
            })
            .await?;
        if n == 0 {
            return Err(ZdsError::Closed);
        }
        let request: WorkloadRequest = decode(&buf[..n], "WorkloadRequest")?;
        let mut fds = fds.into_iter();
        match request.payload {
            Some(Payload::Add(add)) => {
                let netns = fds.next().ok_or_else(|| {
                    ZdsError::Unexpected(format!(
                        "an add of {} without a network namespace descriptor",
                        add.uid
                    ))
                })?;
                Ok(ZdsEvent::Add {
                    uid: add.uid,
                    info: add.workload_info,
                    netns,
                })
            }
            Some(Payload::Keep(keep)) => Ok(ZdsEvent::Keep { uid: keep.uid }),
            Some(Payload::Del(del)) => Ok(ZdsEvent::Del { uid: del.uid }),
            Some(Payload::SnapshotSent(_)) => Ok(ZdsEvent::SnapshotSent),
            None => Err(ZdsError::Unexpected("a request without a payload".into())),
        }
    }

    /// Answers the last request: `None` acknowledges, `Some` refuses, saying why.
    pub async fn answer(&self, error: Option<&str>) -> Result<(), ZdsError> {
        self.send(&WorkloadResponse {
            payload: Some(ResponsePayload::Ack(Ack {
                error: error.unwrap_or_default().to_string(),
            })),
        })
        .await
    }
}
