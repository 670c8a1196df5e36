//! Istio's L4 authorization as ztunnel enforces it on the receiving side.
//!
//! [`IstioPolicies`] holds the CRDs as written. It decides a connection on
//! their translation ([`crate::authorization`]): what istiod would send
//! ztunnel, evaluated as ztunnel evaluates it. So PeerAuthentication STRICT
//! is the DENY of connections without identity istiod emits, an L7-only
//! entry of a DENY rule is a match that never holds, and an ALLOW rule with
//! any L7 attribute is gone — the same outcomes as ztunnel, by construction.
//!
//! [`IstioPolicies::mtls_mode`] still reads the PeerAuthentications
//! directly, to explain a STRICT refusal in PeerAuthentication's terms.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::OnceLock;

use super::types::{AuthorizationPolicy, MtlsMode, PeerAuthentication};
use crate::authorization::peer_authn::{CONVERTED_PREFIX, STATIC_STRICT_NAME};
use crate::authorization::{Connection, MeshAuthorization, Verdict, WorkloadRef};
pub use crate::decision::Decision;
use crate::selector::labels_match;

/// The workload a connection arrives at.
#[derive(Debug, Clone)]
pub struct TargetWorkload<'a> {
    pub namespace: &'a str,
    pub labels: &'a BTreeMap<String, String>,
}

/// What the receiving side knows of a connection.
#[derive(Debug, Clone)]
pub struct ConnectionAttrs<'a> {
    /// The peer's principal without `spiffe://` (`cluster.local/ns/demo/sa/x`);
    /// `None` for plaintext.
    pub principal: Option<&'a str>,
    pub src_ip: IpAddr,
    pub dst_ip: IpAddr,
    pub dst_port: u16,
}

/// The effective PeerAuthentication mode for one workload port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MtlsDecision {
    /// STRICT or PERMISSIVE (DISABLE is ignored by ztunnel and so reads as PERMISSIVE).
    pub mode: MtlsMode,
    pub policy: Option<String>,
}

/// The Istio policies of a mesh, as written, and their translation.
#[derive(Debug, Clone, Default)]
pub struct IstioPolicies {
    /// Policies here without a selector apply mesh-wide (Istio's default: `istio-system`).
    root_namespace: String,
    authorization: Vec<AuthorizationPolicy>,
    peer_authentication: Vec<PeerAuthentication>,
    /// Made on first use; every change of the CRDs (through `&mut self`) drops it.
    translated: OnceLock<MeshAuthorization>,
}

fn full_name(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or("default"),
        meta.name.as_deref().unwrap_or("<unnamed>")
    )
}

impl IstioPolicies {
    pub fn new(root_namespace: impl Into<String>) -> Self {
        IstioPolicies {
            root_namespace: root_namespace.into(),
            ..Default::default()
        }
    }

    /// A set made of the given CRDs.
    pub fn with(
        root_namespace: impl Into<String>,
        authorization: Vec<AuthorizationPolicy>,
        peer_authentication: Vec<PeerAuthentication>,
    ) -> Self {
        IstioPolicies {
            root_namespace: root_namespace.into(),
            authorization,
            peer_authentication,
            translated: OnceLock::new(),
        }
    }

    pub fn root_namespace(&self) -> &str {
        &self.root_namespace
    }

    pub fn authorization(&self) -> &[AuthorizationPolicy] {
        &self.authorization
    }

    pub fn peer_authentication(&self) -> &[PeerAuthentication] {
        &self.peer_authentication
    }

    pub fn add_authorization(&mut self, policy: AuthorizationPolicy) {
        self.translated.take();
        self.authorization.push(policy);
    }

    pub fn add_peer_authentication(&mut self, policy: PeerAuthentication) {
        self.translated.take();
        self.peer_authentication.push(policy);
    }

    /// What istiod would send ztunnel for these CRDs.
    pub fn translated(&self) -> &MeshAuthorization {
        self.translated.get_or_init(|| {
            MeshAuthorization::translate(
                &self.root_namespace,
                &self.authorization,
                &self.peer_authentication,
            )
        })
    }

    /// The PeerAuthentication mode for `target` on `port`: the workload-level
    /// policy (with its port-level override) wins over the namespace policy,
    /// which wins over the mesh-wide one; UNSET inherits; the default is PERMISSIVE.
    pub fn mtls_mode(&self, target: &TargetWorkload<'_>, port: u16) -> MtlsDecision {
        let mut workload = None;
        let mut namespace = None;
        let mut mesh = None;
        for pa in &self.peer_authentication {
            let ns = pa.metadata.namespace.as_deref().unwrap_or("default");
            match &pa.spec.selector {
                Some(sel)
                    if ns == target.namespace && labels_match(&sel.match_labels, target.labels) =>
                {
                    workload.get_or_insert(pa);
                }
                None if ns == target.namespace => {
                    namespace.get_or_insert(pa);
                }
                None if ns == self.root_namespace => {
                    mesh.get_or_insert(pa);
                }
                _ => {}
            }
        }
        for pa in [workload, namespace, mesh].into_iter().flatten() {
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

    /// The one adapter from "a workload and a connection" to [`Self::evaluate`]:
    /// a connection from `src_ip` (with a mesh `principal` without
    /// `spiffe://`, or none for plaintext) to `target` on a workload of
    /// `namespace` with `labels`. The proxy, `policy check` and the demo's
    /// predictions all ask through here.
    pub fn decide(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
        principal: Option<&str>,
        src_ip: IpAddr,
        target: std::net::SocketAddr,
    ) -> Decision {
        self.evaluate(
            &TargetWorkload { namespace, labels },
            &ConnectionAttrs {
                principal,
                src_ip,
                dst_ip: target.ip(),
                dst_port: target.port(),
            },
        )
    }

    /// The receiving side's decision for one connection: ztunnel's, on the
    /// translated policies, with the policy and rule that decided.
    pub fn evaluate(&self, target: &TargetWorkload<'_>, conn: &ConnectionAttrs<'_>) -> Decision {
        let workload = WorkloadRef {
            namespace: target.namespace,
            labels: target.labels,
        };
        let connection = Connection {
            principal: conn.principal,
            src_ip: conn.src_ip,
            dst_ip: conn.dst_ip,
            dst_port: conn.dst_port,
        };
        let verdict = self.translated().evaluate(&workload, &connection);
        let rule = |i: usize| Some(format!("rules[{i}]"));
        match verdict {
            Verdict::Denied { policy, rule: i } if is_peer_authentication(&policy) => {
                let mtls = self.mtls_mode(target, conn.dst_port);
                let name = mtls.policy.unwrap_or_else(|| policy.clone());
                Decision::deny(format!(
                    "PeerAuthentication {name} is STRICT: a connection without a peer identity (plaintext) is refused (ztunnel: DENY {policy} rules[{i}])"
                ))
                .by(name, Some("mtls STRICT".into()))
            }
            Verdict::Denied { policy, rule: i } => {
                Decision::deny(format!("DENY policy {policy} rules[{i}] matches"))
                    .by(policy, rule(i))
            }
            Verdict::Allowed { policy, rule: i } => {
                Decision::allow(format!("ALLOW policy {policy} rules[{i}] matches"))
                    .by(policy, rule(i))
            }
            Verdict::Open => {
                Decision::allow("no ALLOW policy selects this workload, so it is open by default")
            }
            Verdict::NotAllowed { policies } => {
                let who = conn.principal.unwrap_or("a peer without identity");
                Decision::deny(format!(
                    "no rule of ALLOW policy {} matches {who} on port {}",
                    policies.join(", "),
                    conn.dst_port
                ))
                .by(policies[0].clone(), None)
            }
        }
    }
}

/// The static STRICT policy and converted PeerAuthentications.
fn is_peer_authentication(key: &str) -> bool {
    key.rsplit_once('/')
        .is_some_and(|(_, name)| name == STATIC_STRICT_NAME || name.starts_with(CONVERTED_PREFIX))
}
