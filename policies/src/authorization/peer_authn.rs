//! PeerAuthentication → `Authorization`, as istiod translates it for ztunnel.
//!
//! ztunnel has no notion of mTLS modes. istiod expresses STRICT as a DENY
//! of any connection without a peer identity, in three pieces:
//! - a **static** DENY `<root>/istio_converted_static_strict`
//!   (`notPrincipals: [presence]`), sent whenever any PeerAuthentication
//!   exists, and listed by each workload whose effective mode is STRICT;
//! - a **converted** DENY `<ns>/converted_peer_authentication_<name>` for a
//!   workload-level PeerAuthentication with port-level modes: one rule per
//!   port made STRICT under a non-STRICT parent, or, under an effective
//!   STRICT, one rule that denies plaintext except on the exempt ports (the
//!   static policy is then left off that workload's list, since any
//!   matching DENY would win over the exemption);
//! - each workload's list of keys ([`workload_policy_keys`]): mesh policy,
//!   then the namespace policy unless UNSET, then the workload policy; the
//!   oldest of several wins.
//!
//! PERMISSIVE and DISABLE need nothing: ztunnel accepts plaintext unless a
//! DENY says otherwise.
//!
//! One istiod quirk is kept on purpose, since ztunnel receives what istiod
//! computes: when deciding whether a port made STRICT is already covered by
//! a STRICT parent, the mesh-level branch of the test does not check that
//! the workload's own mode is UNSET (`a || b && c || d` in Go). So a
//! PERMISSIVE workload with a STRICT port, no namespace policy and a STRICT
//! mesh policy gets no converted policy, yet lists its key — and ztunnel
//! skips a key it does not know, leaving that port unenforced.

use std::collections::{BTreeMap, BTreeSet};

use super::{Action, Authorization, Clause, Match, Rule, Scope};
use crate::istio_crd::{MtlsMode, MutualTls, PeerAuthentication};
use crate::selector::labels_match;

/// The name of the static STRICT policy (with `_`, illegal in Kubernetes names).
pub const STATIC_STRICT_NAME: &str = "istio_converted_static_strict";
/// The prefix of a converted workload policy's name.
pub const CONVERTED_PREFIX: &str = "converted_peer_authentication_";

/// The static STRICT DENY, in `root_namespace`.
pub fn static_strict(root_namespace: &str) -> Authorization {
    Authorization {
        name: STATIC_STRICT_NAME.into(),
        namespace: root_namespace.into(),
        scope: Scope::WorkloadSelector,
        action: Action::Deny,
        rules: vec![deny_plaintext_rule()],
        dry_run: false,
    }
}

fn deny_plaintext_rule() -> Rule {
    Rule {
        clauses: vec![deny_plaintext_clause()],
    }
}

fn deny_plaintext_clause() -> Clause {
    Clause {
        matches: vec![Match::without_identity()],
    }
}

fn mode(mtls: &Option<MutualTls>) -> MtlsMode {
    mtls.as_ref().map_or(MtlsMode::Unset, |m| m.mode)
}

fn is_strict(pa: Option<&PeerAuthentication>) -> bool {
    pa.is_some_and(|p| mode(&p.spec.mtls) == MtlsMode::Strict)
}

fn is_unset(pa: &PeerAuthentication) -> bool {
    mode(&pa.spec.mtls) == MtlsMode::Unset
}

fn lenient(m: MtlsMode) -> bool {
    matches!(m, MtlsMode::Permissive | MtlsMode::Disable)
}

fn namespace_of(pa: &PeerAuthentication) -> &str {
    pa.metadata.namespace.as_deref().unwrap_or("")
}

/// A selector with at least one label (istiod treats `matchLabels: {}` as none).
fn has_labels(pa: &PeerAuthentication) -> bool {
    pa.spec
        .selector
        .as_ref()
        .is_some_and(|s| !s.match_labels.is_empty())
}

/// The key of the converted policy `pa` would produce.
pub fn converted_key(pa: &PeerAuthentication) -> String {
    format!(
        "{}/{CONVERTED_PREFIX}{}",
        namespace_of(pa),
        pa.metadata.name.as_deref().unwrap_or("")
    )
}

/// The oldest of `candidates` by creation time; the first listed wins ties
/// (and files without timestamps), as istiod's strict "before" comparison does.
pub fn oldest<'a>(
    candidates: impl IntoIterator<Item = &'a PeerAuthentication>,
) -> Option<&'a PeerAuthentication> {
    let mut best: Option<&PeerAuthentication> = None;
    for pa in candidates {
        let older = match best {
            None => true,
            Some(b) => created(pa) < created(b),
        };
        if older {
            best = Some(pa);
        }
    }
    best
}

/// No timestamp sorts first, as Go's zero time does.
fn created(
    pa: &PeerAuthentication,
) -> Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time> {
    pa.metadata.creation_timestamp.as_ref()
}

/// The converted DENY for a workload-level PeerAuthentication with
/// port-level modes, given its namespace and mesh parents; `None` when
/// there is nothing to enforce beyond what the static policy does.
pub fn convert_peer_authentication(
    root_namespace: &str,
    pa: &PeerAuthentication,
    namespace_parent: Option<&PeerAuthentication>,
    mesh_parent: Option<&PeerAuthentication>,
) -> Option<Authorization> {
    let spec = &pa.spec;
    if namespace_of(pa) == root_namespace
        || spec.selector.is_none()
        || spec.port_level_mtls.is_empty()
    {
        return None;
    }
    let own = mode(&spec.mtls);
    let ns_unset_or_absent = namespace_parent.is_none_or(is_unset);
    let mut clauses = Vec::new();
    let mut rules = Vec::new();
    if own == MtlsMode::Strict {
        clauses.push(deny_plaintext_clause());
    }
    let mut exempt_port = false;
    for (&port, port_mtls) in &spec.port_level_mtls {
        match port_mtls.mode {
            MtlsMode::Strict => {
                // istiod's test, precedence included (see the module doc).
                let parent_enforces = own == MtlsMode::Strict
                    || (own == MtlsMode::Unset && is_strict(namespace_parent))
                    || (ns_unset_or_absent && is_strict(mesh_parent));
                if parent_enforces {
                    continue;
                }
                rules.push(Rule {
                    clauses: vec![Clause {
                        matches: vec![Match {
                            not_principals: Match::without_identity().not_principals,
                            destination_ports: vec![port],
                            ..Match::default()
                        }],
                    }],
                });
            }
            m if lenient(m) => {
                if lenient(own) {
                    continue;
                }
                let effective_not_strict = match (namespace_parent, mesh_parent) {
                    (Some(ns), _) => !is_strict(Some(ns)),
                    (None, Some(mesh)) => !is_strict(Some(mesh)),
                    (None, None) => true,
                };
                if own == MtlsMode::Unset && effective_not_strict {
                    continue;
                }
                exempt_port = true;
                clauses.push(Clause {
                    matches: vec![Match {
                        not_destination_ports: vec![port],
                        ..Match::default()
                    }],
                });
            }
            _ => continue,
        }
    }
    if own == MtlsMode::Strict && !exempt_port {
        return None;
    }
    if clauses.is_empty() && rules.is_empty() {
        return None;
    }
    let merge_strict = (is_strict(mesh_parent)
        && namespace_parent.is_none_or(|ns| is_unset(ns) || is_strict(Some(ns))))
        || is_strict(namespace_parent);
    if merge_strict && exempt_port {
        clauses.push(deny_plaintext_clause());
    }
    if !clauses.is_empty() {
        rules.push(Rule { clauses });
    }
    Some(Authorization {
        name: format!(
            "{CONVERTED_PREFIX}{}",
            pa.metadata.name.as_deref().unwrap_or("")
        ),
        namespace: namespace_of(pa).to_string(),
        scope: Scope::WorkloadSelector,
        action: Action::Deny,
        rules,
        dry_run: false,
    })
}

/// The PeerAuthentication keys a workload lists, from the policies that
/// apply to it (its namespace's, with no selector or a matching one, and
/// the root namespace's without selector): the static STRICT key when its
/// effective mode is STRICT, and its workload policy's converted key when
/// that carries port-level exceptions. Sorted, as istiod sends them.
pub fn workload_policy_keys(root_namespace: &str, applying: &[&PeerAuthentication]) -> Vec<String> {
    let mesh = oldest(
        applying
            .iter()
            .copied()
            .filter(|p| !has_labels(p) && namespace_of(p) == root_namespace),
    );
    let namespace = oldest(
        applying
            .iter()
            .copied()
            .filter(|p| !has_labels(p) && namespace_of(p) != root_namespace),
    );
    let workload = oldest(
        applying
            .iter()
            .copied()
            .filter(|p| has_labels(p) && namespace_of(p) != root_namespace),
    );
    let mut strict = is_strict(mesh);
    if let Some(ns) = namespace.filter(|ns| !is_unset(ns)) {
        strict = is_strict(Some(ns));
    }
    let mut port_key = None;
    if let Some(w) = workload {
        let own = mode(&w.spec.mtls);
        match own {
            MtlsMode::Strict => strict = true,
            m if lenient(m) => strict = false,
            _ => {}
        }
        let ports = &w.spec.port_level_mtls;
        let any_port = |pred: fn(MtlsMode) -> bool| ports.values().any(|m| pred(m.mode));
        if !ports.is_empty() {
            match own {
                MtlsMode::Strict => {
                    if any_port(lenient) {
                        port_key = Some(converted_key(w));
                        strict = false;
                    }
                }
                m if lenient(m) => {
                    if any_port(|m| m == MtlsMode::Strict) {
                        port_key = Some(converted_key(w));
                    }
                }
                _ if strict => {
                    // Only PERMISSIVE ports count here, not DISABLE (as istiod has it).
                    if any_port(|m| m == MtlsMode::Permissive) {
                        port_key = Some(converted_key(w));
                        strict = false;
                    }
                }
                _ => {
                    strict = false;
                    if any_port(|m| m == MtlsMode::Strict) {
                        port_key = Some(converted_key(w));
                    }
                }
            }
        }
    }
    let mut keys = BTreeSet::new();
    if strict {
        keys.insert(format!("{root_namespace}/{STATIC_STRICT_NAME}"));
    }
    keys.extend(port_key);
    keys.into_iter().collect()
}

/// The effective PeerAuthentication mode for one workload port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MtlsDecision {
    /// STRICT or PERMISSIVE (DISABLE is ignored by ztunnel and so reads as PERMISSIVE).
    pub mode: MtlsMode,
    /// The PeerAuthentication that set it (`namespace/name`).
    pub policy: Option<String>,
}

fn full_name(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or("default"),
        meta.name.as_deref().unwrap_or("<unnamed>")
    )
}

/// The PeerAuthentication mode for a workload of `namespace` with `labels`
/// on `port`, read from the CRDs as a person reads them: the workload-level
/// policy (with its port-level override) wins over the namespace policy,
/// which wins over the mesh-wide one; UNSET inherits; the default is
/// PERMISSIVE. It explains a STRICT refusal; the decision itself is the
/// translated DENY's.
pub fn effective_mode(
    root_namespace: &str,
    peer_authentication: &[PeerAuthentication],
    namespace: &str,
    labels: &BTreeMap<String, String>,
    port: u16,
) -> MtlsDecision {
    let mut workload = None;
    let mut namespace_level = None;
    let mut mesh = None;
    for pa in peer_authentication {
        let ns = pa.metadata.namespace.as_deref().unwrap_or("default");
        match &pa.spec.selector {
            Some(sel) if ns == namespace && labels_match(&sel.match_labels, labels) => {
                workload.get_or_insert(pa);
            }
            None if ns == namespace => {
                namespace_level.get_or_insert(pa);
            }
            None if ns == root_namespace => {
                mesh.get_or_insert(pa);
            }
            _ => {}
        }
    }
    for pa in [workload, namespace_level, mesh].into_iter().flatten() {
        let port_mode = pa
            .spec
            .port_level_mtls
            .get(&u32::from(port))
            .map(|m| m.mode)
            .filter(|_| pa.spec.selector.is_some());
        let mode = port_mode
            .filter(|m| *m != MtlsMode::Unset)
            .or_else(|| pa.spec.mtls.as_ref().map(|m| m.mode))
            .unwrap_or(MtlsMode::Unset);
        match mode {
            MtlsMode::Unset => continue,
            MtlsMode::Strict => {
                return MtlsDecision {
                    mode: MtlsMode::Strict,
                    policy: Some(full_name(&pa.metadata)),
                };
            }
            MtlsMode::Permissive | MtlsMode::Disable => {
                return MtlsDecision {
                    mode: MtlsMode::Permissive,
                    policy: Some(full_name(&pa.metadata)),
                };
            }
        }
    }
    MtlsDecision {
        mode: MtlsMode::Permissive,
        policy: None,
    }
}
