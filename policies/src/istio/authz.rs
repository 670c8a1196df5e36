//! Istio's L4 authorization as ztunnel enforces it on the receiving side.
//!
//! [`IstioPolicies`] holds the CRDs as written. It decides a connection on
//! their translation ([`crate::authorization`]): what istiod would send
//! ztunnel, evaluated as ztunnel evaluates it. So PeerAuthentication STRICT
//! is the DENY of connections without identity istiod emits, an L7-only
//! entry of a DENY rule is a match that never holds, and an ALLOW rule with
//! any L7 attribute is gone — the same outcomes as ztunnel, by construction.
//!
//! [`IstioPolicies::mtls_mode`] reads the PeerAuthentications directly, as
//! a person would: which one makes a port STRICT.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::OnceLock;

pub use crate::authorization::peer_authn::MtlsDecision;
use crate::authorization::peer_authn::effective_mode;
use crate::authorization::{Connection, MeshAuthorization, WorkloadRef};
pub use crate::decision::Decision;
use crate::istio_crd::{AuthorizationPolicy, PeerAuthentication};

/// The workload a connection arrives at.
#[derive(Debug, Clone)]
pub struct TargetWorkload<'a> {
    /// The namespace the workload runs in.
    pub namespace: &'a str,
    /// The workload's labels, matched against policy selectors.
    pub labels: &'a BTreeMap<String, String>,
}

/// What the receiving side knows of a connection.
#[derive(Debug, Clone)]
pub struct ConnectionAttrs<'a> {
    /// The peer's principal without `spiffe://` (`cluster.local/ns/demo/sa/x`);
    /// `None` for plaintext.
    pub principal: Option<&'a str>,
    /// Address the connection comes from.
    pub src_ip: IpAddr,
    /// Destination address: the workload's own.
    pub dst_ip: IpAddr,
    /// Destination port: the port the client dialed.
    pub dst_port: u16,
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

impl IstioPolicies {
    /// An empty set for a mesh whose root namespace is `root_namespace`.
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

    /// The mesh's root namespace, whose selector-less policies are mesh-wide.
    pub fn root_namespace(&self) -> &str {
        &self.root_namespace
    }

    /// The AuthorizationPolicies, as written.
    pub fn authorization(&self) -> &[AuthorizationPolicy] {
        &self.authorization
    }

    /// The PeerAuthentications, as written.
    pub fn peer_authentication(&self) -> &[PeerAuthentication] {
        &self.peer_authentication
    }

    /// Adds an AuthorizationPolicy; the translation is redone on next use.
    pub fn add_authorization(&mut self, policy: AuthorizationPolicy) {
        self.translated.take();
        self.authorization.push(policy);
    }

    /// Adds a PeerAuthentication; the translation is redone on next use.
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

    /// The translation, owned: what a proxy deciding on these CRDs holds.
    pub fn into_translated(self) -> MeshAuthorization {
        match self.translated.into_inner() {
            Some(t) => t,
            None => MeshAuthorization::translate(
                &self.root_namespace,
                &self.authorization,
                &self.peer_authentication,
            ),
        }
    }

    /// The PeerAuthentication mode for `target` on `port`: the workload-level
    /// policy (with its port-level override) wins over the namespace policy,
    /// which wins over the mesh-wide one; UNSET inherits; the default is PERMISSIVE.
    pub fn mtls_mode(&self, target: &TargetWorkload<'_>, port: u16) -> MtlsDecision {
        effective_mode(
            &self.root_namespace,
            &self.peer_authentication,
            target.namespace,
            target.labels,
            port,
        )
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
            listed: &[],
        };
        let connection = Connection {
            principal: conn.principal,
            src_ip: conn.src_ip,
            dst_ip: conn.dst_ip,
            dst_port: conn.dst_port,
        };
        self.translated().decide(&workload, &connection)
    }
}

impl From<IstioPolicies> for MeshAuthorization {
    fn from(policies: IstioPolicies) -> Self {
        policies.into_translated()
    }
}
