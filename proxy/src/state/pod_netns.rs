//! Which network namespace each local workload is served in, as handles
//! ([`Netns`]) kept beside the registry rather than inside its records.
//!
//! Two sources: the pods a node agent handed over (ZDS, shared mode), by
//! pod uid, each with the descriptor it sent; and the named namespaces a
//! registry file gives (`netns: /var/run/netns/<pod>`), opened once and let
//! go when no workload names them any more. With shared mode on, only
//! handed-over pods are served — a pod the agent has not handed over (or
//! has taken back) is not this proxy's to serve, whatever its record says.
//! Dropping a handle ends its socket thread; nothing here is cleared by
//! hand.

use std::collections::{HashMap, HashSet};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::net::pod_sockets::{Netns, NetnsError};
use crate::registry::{Registry, Workload};

/// The pods' namespaces.
#[derive(Default)]
pub struct PodNetns {
    shared_mode: AtomicBool,
    /// Handed over by the node agent, by pod uid.
    handed: Mutex<HashMap<String, Netns>>,
    /// Named by the registry, by path.
    named: Mutex<HashMap<PathBuf, Netns>>,
}

impl PodNetns {
    /// Shared mode: from now on only handed-over pods are served.
    pub fn enable(&self) {
        self.shared_mode.store(true, Ordering::Relaxed);
    }

    /// Whether only handed-over pods are served.
    pub fn shared_mode(&self) -> bool {
        self.shared_mode.load(Ordering::Relaxed)
    }

    fn handed(&self) -> std::sync::MutexGuard<'_, HashMap<String, Netns>> {
        self.handed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Holds `fd` as pod `uid`'s namespace (replacing one held before).
    pub fn insert(&self, uid: &str, fd: OwnedFd) {
        let netns = Netns::from_fd(fd, format!("(pod {uid}, handed over)"));
        self.handed().insert(uid.to_string(), netns);
    }

    /// Lets go of pod `uid`'s namespace; true if it was held.
    pub fn remove(&self, uid: &str) -> bool {
        self.handed().remove(uid).is_some()
    }

    /// Lets go of every pod not in `keep`; returns the uids dropped.
    pub fn retain(&self, keep: &HashSet<String>) -> Vec<String> {
        let mut handed = self.handed();
        let gone: Vec<String> = handed
            .keys()
            .filter(|uid| !keep.contains(*uid))
            .cloned()
            .collect();
        for uid in &gone {
            handed.remove(uid);
        }
        gone
    }

    /// The handed-over pods' uids.
    pub fn uids(&self) -> Vec<String> {
        self.handed().keys().cloned().collect()
    }

    /// Whether the node agent has handed pod `uid` over.
    pub fn handed_over(&self, uid: &str) -> bool {
        !uid.is_empty() && self.handed().contains_key(uid)
    }

    /// The namespace `w` is served in: its handed-over pod's; in shared
    /// mode, no other; else the named namespace its record gives, if any
    /// (opened on first use). `None` means the proxy's own namespace.
    pub fn of(&self, w: &Workload) -> Result<Option<Netns>, NetnsError> {
        if !w.uid.is_empty()
            && let Some(netns) = self.handed().get(&*w.uid)
        {
            return Ok(Some(netns.clone()));
        }
        if self.shared_mode() {
            return Ok(None);
        }
        let Some(path) = &w.netns else {
            return Ok(None);
        };
        let mut named = self.named.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(netns) = named.get(&**path) {
            return Ok(Some(netns.clone()));
        }
        let netns = Netns::open(path)?;
        named.insert(path.to_path_buf(), netns.clone());
        Ok(Some(netns))
    }

    /// Lets go of the named namespaces no workload of `registry` names.
    pub fn prune(&self, registry: &Registry) {
        let mut named = self.named.lock().unwrap_or_else(|e| e.into_inner());
        if named.is_empty() {
            return;
        }
        let wanted: HashSet<&Path> = registry
            .workloads
            .iter()
            .filter_map(|w| w.netns.as_deref())
            .collect();
        named.retain(|path, _| wanted.contains(path.as_path()));
    }
}
