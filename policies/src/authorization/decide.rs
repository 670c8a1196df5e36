//! From ztunnel's verdict to a [`Decision`] a person can read: the policy
//! and rule that decided and, when a translated PeerAuthentication refuses
//! plaintext, the PeerAuthentication that made the port STRICT (when the
//! CRDs are known; a pushed set names the translated policy instead).

use super::eval::{self, Connection, Verdict};
use super::index::{MeshAuthorization, WorkloadRef};
use super::peer_authn::{CONVERTED_PREFIX, STATIC_STRICT_NAME, effective_mode};
use crate::decision::Decision;

/// The static STRICT policy and converted PeerAuthentications.
fn is_peer_authentication(key: &str) -> bool {
    key.rsplit_once('/')
        .is_some_and(|(_, name)| name == STATIC_STRICT_NAME || name.starts_with(CONVERTED_PREFIX))
}

impl MeshAuthorization {
    /// ztunnel's decision for a connection to `w`, explained.
    pub fn decide(&self, w: &WorkloadRef<'_>, conn: &Connection<'_>) -> Decision {
        let listed = self.workload_policies(w);
        let verdict = eval::evaluate(self.applying(w.namespace, &listed), conn);
        let rule = |i: usize| Some(format!("rules[{i}]"));
        match verdict {
            Verdict::Denied { policy, rule: i } if is_peer_authentication(&policy) => {
                let mtls = effective_mode(
                    self.root_namespace(),
                    self.peer_authentication(),
                    w.namespace,
                    w.labels,
                    conn.dst_port,
                );
                let name = mtls.policy.unwrap_or_else(|| policy.clone());
                let what = if name == policy {
                    format!("{name} (mTLS STRICT)")
                } else {
                    format!("PeerAuthentication {name} is STRICT")
                };
                Decision::deny(format!(
                    "{what}: a connection without a peer identity (plaintext) is refused (ztunnel: DENY {policy} rules[{i}])"
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
