//! One consistent state of the mesh, encoded once, as xDS resources by type.
//!
//! Each resource carries a version derived from its encoded bytes, so a
//! change of the mesh reaches a client as a delta of exactly the resources
//! whose bytes changed, plus the names that are gone.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use hbone_policies::authorization::WorkloadRef;
use prost::Message;

use crate::convert;
use crate::mesh::Mesh;
use crate::proto::security::TYPE_URL as AUTHORIZATION;
use crate::proto::workload::ADDRESS_TYPE_URL as ADDRESS;

/// The two types ztunnel subscribes to, in the order it asks for them.
pub const TYPES: [&str; 2] = [ADDRESS, AUTHORIZATION];

/// One encoded resource.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// A hash of `bytes` in 16 hex digits: equal versions mean equal bytes.
    pub version: String,
    /// The encoded protobuf message.
    pub bytes: Vec<u8>,
}

/// The mesh as resources: type URL → resource name → entry.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Counts up with every change (for logs).
    pub generation: u64,
    types: BTreeMap<&'static str, BTreeMap<String, Entry>>,
}

fn entry(message: &impl Message) -> Entry {
    let bytes = message.encode_to_vec();
    let mut hasher = DefaultHasher::new();
    bytes.hash(&mut hasher);
    Entry {
        version: format!("{:016x}", hasher.finish()),
        bytes,
    }
}

impl Snapshot {
    /// Encodes every workload, service and translated policy of `mesh`.
    pub fn build(mesh: &Mesh, generation: u64) -> Snapshot {
        let translated = mesh.policies.translated();
        let mut addresses = BTreeMap::new();
        for w in &mesh.workloads {
            let listed = translated.workload_policies(&WorkloadRef {
                namespace: &w.namespace,
                labels: &w.labels,
                listed: &[],
            });
            addresses.insert(w.uid.clone(), entry(&convert::workload(w, listed)));
        }
        for s in &mesh.services {
            addresses.insert(s.key(), entry(&convert::service(s)));
        }
        let policies = translated
            .policies()
            .iter()
            .map(|p| (p.key(), entry(&convert::authorization(p))))
            .collect();
        Snapshot {
            generation,
            types: BTreeMap::from([(ADDRESS, addresses), (AUTHORIZATION, policies)]),
        }
    }

    /// The resources of one type (empty for a type this server does not know).
    pub fn resources(&self, type_url: &str) -> impl Iterator<Item = (&String, &Entry)> {
        self.types.get(type_url).into_iter().flatten()
    }

    /// The resource `name` of type `type_url`, if the snapshot holds it.
    pub fn get(&self, type_url: &str, name: &str) -> Option<&Entry> {
        self.types.get(type_url)?.get(name)
    }

    /// What a client holding `held` (name → version) lacks: resources new
    /// or changed, and names that no longer exist.
    pub fn delta<'a>(
        &'a self,
        type_url: &str,
        held: &BTreeMap<String, String>,
    ) -> (Vec<(&'a String, &'a Entry)>, Vec<String>) {
        let changed = self
            .resources(type_url)
            .filter(|(name, e)| held.get(*name) != Some(&e.version))
            .collect();
        let removed = held
            .keys()
            .filter(|name| self.get(type_url, name).is_none())
            .cloned()
            .collect();
        (changed, removed)
    }
}
