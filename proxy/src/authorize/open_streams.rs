//! The HBONE streams this proxy has admitted and is carrying, so that a
//! policy change can judge them again: an AuthorizationPolicy that starts
//! denying a peer closes that peer's open tunnels too, as ztunnel does, not
//! only its next ones. Each entry is what the decision needs (who, from
//! where, to which workload and port) plus a [`Revocation`] the stream's
//! relay watches.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Context;

use futures::task::AtomicWaker;
use hbone_ca::Identity;
use hbone_policies::authorization::MeshAuthorization;

use crate::authorize::decide_peer;
use crate::crl::{PeerChain, RevocationCheck};
use crate::registry::{Registry, Workload};

/// Set once, when a policy change denies a stream that is already open.
#[derive(Default)]
pub struct Revocation {
    revoked: AtomicBool,
    waker: AtomicWaker,
    reason: Mutex<String>,
}

impl Revocation {
    fn revoke(&self, reason: String) {
        *self.reason.lock().expect("revocation lock") = reason;
        self.revoked.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Why the stream was revoked, if it has been.
    pub fn reason(&self) -> Option<String> {
        self.revoked
            .load(Ordering::Acquire)
            .then(|| self.reason.lock().expect("revocation lock").clone())
    }

    /// Why the stream was revoked, once it has been; otherwise registers the
    /// task to be woken when it is.
    pub fn poll_revoked(&self, cx: &mut Context<'_>) -> Option<String> {
        self.waker.register(cx.waker());
        self.revoked
            .load(Ordering::Acquire)
            .then(|| self.reason.lock().expect("revocation lock").clone())
    }
}

/// One admitted stream, as a policy sees it.
pub struct Stream {
    /// The peer's verified SPIFFE identity, from its certificate.
    pub peer_identity: Arc<Identity>,
    /// The IP the stream came from (the CONNECT's source).
    pub src_ip: IpAddr,
    /// The address the CONNECT asked for: workload IP and port.
    pub target: SocketAddr,
    /// The local workload the stream reaches, as it was when admitted.
    pub workload: Arc<Workload>,
    /// The certificate chain the peer presented, for the revocation lists.
    pub peer_chain: Arc<PeerChain>,
}

/// Every stream being carried, by an id of its own.
#[derive(Default)]
pub struct Established {
    next_id: AtomicU64,
    streams: Mutex<HashMap<u64, (Stream, Arc<Revocation>)>>,
}

/// Keeps a stream in the table; removes it when dropped.
pub struct Entry {
    table: Arc<Established>,
    id: u64,
    /// Flagged when a policy change denies the stream; its relay watches it.
    pub revocation: Arc<Revocation>,
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.table
            .streams
            .lock()
            .expect("established lock")
            .remove(&self.id);
    }
}

/// A stream a policy change closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    /// The peer's SPIFFE identity, as a string.
    pub peer: String,
    /// The address the stream was carried to.
    pub target: SocketAddr,
    /// Why the policies now deny it.
    pub reason: String,
}

impl Established {
    /// Adds an admitted stream; it stays until the returned entry is dropped.
    pub fn insert(self: &Arc<Self>, stream: Stream) -> Entry {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let revocation = Arc::new(Revocation::default());
        self.streams
            .lock()
            .expect("established lock")
            .insert(id, (stream, revocation.clone()));
        Entry {
            table: self.clone(),
            id,
            revocation,
        }
    }

    /// How many streams are open now.
    pub fn len(&self) -> usize {
        self.streams.lock().expect("established lock").len()
    }

    /// Whether no stream is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Closes, and returns, every open stream whose peer presented a
    /// certificate the lists in `check` now revoke.
    pub(crate) fn recheck_certificates(&self, check: &RevocationCheck) -> Vec<Revoked> {
        let streams = self.streams.lock().expect("established lock");
        let mut revoked = Vec::new();
        for (stream, revocation) in streams.values() {
            if !stream.peer_chain.revoked(check) {
                continue;
            }
            let reason = "the peer's certificate was revoked".to_string();
            revocation.revoke(reason.clone());
            revoked.push(Revoked {
                peer: stream.peer_identity.to_string(),
                target: stream.target,
                reason,
            });
        }
        revoked
    }

    /// Judges every open stream by `policies`, each against its workload as
    /// `registry` has it now (its listed policies may have changed), or as
    /// it was admitted if the registry no longer has it; revokes, and
    /// returns, those now denied.
    pub fn recheck(&self, policies: &MeshAuthorization, registry: &Registry) -> Vec<Revoked> {
        let streams = self.streams.lock().expect("established lock");
        let mut revoked = Vec::new();
        for (stream, revocation) in streams.values() {
            let workload = registry
                .workload_by_ip(stream.target.ip())
                .unwrap_or(&stream.workload);
            let decision = decide_peer(
                policies,
                workload,
                &stream.peer_identity,
                stream.src_ip,
                stream.target,
            );
            if decision.allowed {
                continue;
            }
            revocation.revoke(decision.reason.clone());
            revoked.push(Revoked {
                peer: stream.peer_identity.to_string(),
                target: stream.target,
                reason: decision.reason,
            });
        }
        revoked
    }
}
