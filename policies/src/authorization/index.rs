//! A mesh's policies after translation: what istiod would push to every
//! ztunnel, which selector-scoped keys each workload would list, and the
//! decision ztunnel would reach for a connection.
//!
//! One type for both ways a proxy learns its policies: translated here from
//! the CRDs ([`MeshAuthorization::translate`], which also knows the
//! selectors, so it can work out each workload's keys), or received from a
//! control plane as they are ([`MeshAuthorization::pushed`], where each
//! workload's record carries its keys, [`WorkloadRef::listed`]).

use std::collections::{BTreeMap, HashMap};

use super::eval::{self, Connection, Verdict};
use super::peer_authn::{self, convert_peer_authentication, oldest, workload_policy_keys};
use super::translate::translate_authorization_policy;
use super::{Authorization, Scope};
use crate::istio_crd::{AuthorizationPolicy, PeerAuthentication};
use crate::selector::labels_match;

/// A workload as policy selection sees it.
#[derive(Debug, Clone, Copy)]
pub struct WorkloadRef<'a> {
    /// The namespace the workload runs in; NAMESPACE-scoped policies of it apply.
    pub namespace: &'a str,
    /// The workload's labels, matched against AuthorizationPolicy selectors.
    pub labels: &'a BTreeMap<String, String>,
    /// The keys the workload's own record lists (from xDS); empty when the
    /// selectors are known and the keys are worked out from them.
    pub listed: &'a [String],
}

/// An AuthorizationPolicy's selector, kept to work out which workloads list it.
#[derive(Debug, Clone)]
struct Selection {
    key: String,
    namespace: String,
    labels: BTreeMap<String, String>,
}

/// Everything istiod would send for a set of CRDs, ready to evaluate.
#[derive(Debug, Clone, Default)]
pub struct MeshAuthorization {
    root_namespace: String,
    /// Every translated policy, in the order of their sources
    /// (AuthorizationPolicies, converted PeerAuthentications, the static STRICT one).
    policies: Vec<Authorization>,
    by_key: HashMap<String, usize>,
    selections: Vec<Selection>,
    peer_authentication: Vec<PeerAuthentication>,
    /// istiod's status messages: what was left out of which policy, and why.
    notes: Vec<(String, String)>,
}

impl MeshAuthorization {
    /// Translates every policy as istiod does; `root` is the mesh's root namespace.
    pub fn translate(
        root: &str,
        authorization: &[AuthorizationPolicy],
        peer_authentication: &[PeerAuthentication],
    ) -> MeshAuthorization {
        let mut policies = Vec::new();
        let mut selections = Vec::new();
        let mut notes = Vec::new();
        for ap in authorization {
            let t = translate_authorization_policy(ap, root);
            let source = format!(
                "{}/{}",
                ap.metadata.namespace.as_deref().unwrap_or(""),
                ap.metadata.name.as_deref().unwrap_or("")
            );
            if let Some(note) = t.note {
                notes.push((source, note));
            }
            if let Some(a) = t.authorization {
                if let Some(sel) = ap.spec.selector.as_ref() {
                    selections.push(Selection {
                        key: a.key(),
                        namespace: a.namespace.clone(),
                        labels: sel.match_labels.clone(),
                    });
                }
                policies.push(a);
            }
        }
        let pas = peer_authentication;
        let namespace_level = |ns: &str| {
            oldest(pas.iter().filter(|p| {
                p.spec.selector.is_none() && p.metadata.namespace.as_deref().unwrap_or("") == ns
            }))
        };
        for pa in pas {
            let ns = pa.metadata.namespace.as_deref().unwrap_or("");
            if let Some(a) =
                convert_peer_authentication(root, pa, namespace_level(ns), namespace_level(root))
            {
                policies.push(a);
            }
        }
        if !pas.is_empty() {
            policies.push(peer_authn::static_strict(root));
        }
        MeshAuthorization {
            selections,
            peer_authentication: pas.to_vec(),
            notes,
            ..MeshAuthorization::pushed(root, policies)
        }
    }

    /// Policies as a control plane pushed them: already translated, each
    /// workload's record saying which selector-scoped ones apply to it.
    pub fn pushed(root: &str, policies: Vec<Authorization>) -> MeshAuthorization {
        let by_key = policies
            .iter()
            .enumerate()
            .map(|(i, p)| (p.key(), i))
            .collect();
        MeshAuthorization {
            root_namespace: root.to_string(),
            policies,
            by_key,
            ..MeshAuthorization::default()
        }
    }

    /// The mesh's root namespace, whose selector-less policies are GLOBAL.
    pub fn root_namespace(&self) -> &str {
        &self.root_namespace
    }

    /// The PeerAuthentications translated (none for a pushed set).
    pub fn peer_authentication(&self) -> &[PeerAuthentication] {
        &self.peer_authentication
    }

    /// Every policy istiod would push, each once.
    pub fn policies(&self) -> &[Authorization] {
        &self.policies
    }

    /// The policy whose xDS key (`namespace/name`) is `key`, if there is one.
    pub fn get(&self, key: &str) -> Option<&Authorization> {
        self.by_key.get(key).map(|&i| &self.policies[i])
    }

    /// istiod's status messages, as (source policy, message).
    pub fn notes(&self) -> &[(String, String)] {
        &self.notes
    }

    /// The keys istiod lists in the workload's record: selector-scoped
    /// AuthorizationPolicies of its namespace or the root namespace that
    /// select it (sorted), then its PeerAuthentication keys; then those its
    /// record already lists that are not among them.
    pub fn workload_policies(&self, w: &WorkloadRef<'_>) -> Vec<String> {
        let mut keys: Vec<String> = self
            .selections
            .iter()
            .filter(|s| s.namespace == w.namespace || s.namespace == self.root_namespace)
            .filter(|s| labels_match(&s.labels, w.labels))
            .map(|s| s.key.clone())
            .collect();
        keys.sort();
        let applying: Vec<&PeerAuthentication> = self
            .peer_authentication
            .iter()
            .filter(|p| {
                let ns = p.metadata.namespace.as_deref().unwrap_or("");
                let selector = p.spec.selector.as_ref().map(|s| &s.match_labels);
                (ns == w.namespace && selector.is_none_or(|s| labels_match(s, w.labels)))
                    || (ns == self.root_namespace && ns != w.namespace && selector.is_none())
            })
            .collect();
        keys.extend(workload_policy_keys(&self.root_namespace, &applying));
        // A set, not `keys.contains`: a workload fed over xDS lists every
        // policy that selects it, and a scan per key made a connection to a
        // workload with 1 000 policies cost 500 000 string comparisons.
        let mut known: std::collections::HashSet<String> = keys.iter().cloned().collect();
        for key in w.listed {
            if known.insert(key.clone()) {
                keys.push(key.clone());
            }
        }
        keys
    }

    /// The policies ztunnel applies to a workload that lists `listed`:
    /// Namespace-scoped ones of its namespace, Global ones (ztunnel files a
    /// policy with an empty namespace there too), and the listed keys that
    /// exist (an unknown key is skipped, failing open, as ztunnel does).
    pub fn applying<'a>(
        &'a self,
        namespace: &'a str,
        listed: &'a [String],
    ) -> impl Iterator<Item = &'a Authorization> + 'a {
        let scoped = self.policies.iter().filter(move |p| match p.scope {
            Scope::Global => true,
            Scope::Namespace => p.namespace == namespace || p.namespace.is_empty(),
            Scope::WorkloadSelector => false,
        });
        scoped.chain(listed.iter().filter_map(|k| self.get(k)))
    }

    /// ztunnel's decision for a connection to `w`.
    pub fn evaluate(&self, w: &WorkloadRef<'_>, conn: &Connection<'_>) -> Verdict {
        let listed = self.workload_policies(w);
        eval::evaluate(self.applying(w.namespace, &listed), conn)
    }
}
