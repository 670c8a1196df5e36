//! Where workloads run, so that a node's token obtains only the identities
//! of workloads on its own node — istiod's node authorization. A hostile
//! pass (issue 30, finding 8) had node-1's token obtain a certificate for a
//! workload on node-2: tokens granted identities, not nodes.
//!
//! A token scoped to a node (`node:` in the token file) is checked against
//! this map, which whoever knows the workloads keeps current (`ca serve
//! --registry`, the lab); without one, such a token obtains nothing.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use crate::identity::Identity;

/// Node → the identities of the workloads placed on it.
#[derive(Debug, Default)]
pub struct Placement(RwLock<Arc<HashMap<String, HashSet<Identity>>>>);

impl Placement {
    /// Replaces the whole map with `(node, identity)` pairs.
    pub fn replace(&self, pairs: impl IntoIterator<Item = (String, Identity)>) {
        let mut map: HashMap<String, HashSet<Identity>> = HashMap::new();
        for (node, identity) in pairs {
            map.entry(node).or_default().insert(identity);
        }
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(map);
    }

    /// Whether a workload with `identity` runs on `node`.
    pub fn places(&self, node: &str, identity: &Identity) -> bool {
        let map = self.0.read().unwrap_or_else(|e| e.into_inner()).clone();
        map.get(node).is_some_and(|ids| ids.contains(identity))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_identity_is_placed_only_on_its_nodes() {
        let id = |s: &str| -> Identity { s.parse().unwrap() };
        let placement = Placement::default();
        placement.replace([
            (
                "node-1".to_string(),
                id("spiffe://cluster.local/ns/demo/sa/a"),
            ),
            (
                "node-2".to_string(),
                id("spiffe://cluster.local/ns/demo/sa/b"),
            ),
        ]);
        assert!(placement.places("node-1", &id("spiffe://cluster.local/ns/demo/sa/a")));
        assert!(!placement.places("node-1", &id("spiffe://cluster.local/ns/demo/sa/b")));
        assert!(!placement.places("node-3", &id("spiffe://cluster.local/ns/demo/sa/a")));
        placement.replace([]);
        assert!(!placement.places("node-1", &id("spiffe://cluster.local/ns/demo/sa/a")));
    }
}
