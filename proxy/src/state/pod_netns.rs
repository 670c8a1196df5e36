//! The network namespaces a node agent handed over (ZDS, shared mode), by
//! pod uid, and how they join the registry: a workload whose uid is here
//! is served inside that namespace, wherever its record came from. With
//! shared mode on, only such workloads get listeners — a pod the agent has
//! not handed over (or has taken back) is not this proxy's to serve.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::registry::Registry;

/// One pod's namespace, held open for as long as the pod is served.
struct Held {
    _fd: OwnedFd,
    path: PathBuf,
}

/// The pods' namespaces, by uid.
#[derive(Default)]
pub struct PodNetns {
    shared_mode: AtomicBool,
    pods: Mutex<HashMap<String, Held>>,
}

impl PodNetns {
    /// Shared mode: from now on only handed-over pods are served.
    pub fn enable(&self) {
        self.shared_mode.store(true, Ordering::Relaxed);
    }

    pub fn shared_mode(&self) -> bool {
        self.shared_mode.load(Ordering::Relaxed)
    }

    /// Holds `fd` as pod `uid`'s namespace (replacing one held before).
    pub fn insert(&self, uid: &str, fd: OwnedFd) {
        let path = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
        let old = self
            .pods
            .lock()
            .expect("pods lock")
            .insert(uid.to_string(), Held { _fd: fd, path });
        if let Some(old) = old {
            crate::net::pod_sockets::forget_worker(&old.path);
        }
    }

    /// Lets go of pod `uid`'s namespace; true if it was held.
    pub fn remove(&self, uid: &str) -> bool {
        let old = self.pods.lock().expect("pods lock").remove(uid);
        if let Some(old) = &old {
            crate::net::pod_sockets::forget_worker(&old.path);
        }
        old.is_some()
    }

    /// Lets go of every pod not in `keep`; returns the uids dropped.
    pub fn retain(&self, keep: &std::collections::HashSet<String>) -> Vec<String> {
        let gone: Vec<String> = self
            .pods
            .lock()
            .expect("pods lock")
            .keys()
            .filter(|uid| !keep.contains(*uid))
            .cloned()
            .collect();
        for uid in &gone {
            self.remove(uid);
        }
        gone
    }

    pub fn uids(&self) -> Vec<String> {
        self.pods
            .lock()
            .expect("pods lock")
            .keys()
            .cloned()
            .collect()
    }

    /// `registry` with each handed-over pod's namespace set on its workload.
    pub fn apply(&self, registry: Registry) -> Registry {
        let pods = self.pods.lock().expect("pods lock");
        if pods.is_empty() && !self.shared_mode() {
            return registry;
        }
        let mut registry = registry;
        for w in &mut registry.workloads {
            let netns = pods.get(&w.uid).map(|p| p.path.clone());
            if !w.uid.is_empty() && (netns.is_some() || self.shared_mode()) && w.netns != netns {
                std::sync::Arc::make_mut(w).netns = netns;
            }
        }
        registry
    }
}
