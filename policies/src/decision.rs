//! A verdict and what made it — shared by both layers so that `policy check`,
//! the proxy's logs and the demo all say "which policy, which rule" the same way.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One layer's verdict on a connection, with the policy, rule and reason behind it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// Whether the connection may proceed.
    pub allowed: bool,
    /// The deciding policy (`demo/hello-app-policy`), when one decided.
    pub policy: Option<String>,
    /// The deciding rule within it (`rules[0]`, `egress[1]`).
    pub rule: Option<String>,
    /// Why, in a sentence for people.
    pub reason: String,
}

impl Decision {
    /// An allowing decision for `reason`, naming no policy yet (see `by`).
    pub fn allow(reason: impl Into<String>) -> Self {
        Decision {
            allowed: true,
            policy: None,
            rule: None,
            reason: reason.into(),
        }
    }

    /// A refusing decision for `reason`, naming no policy yet (see `by`).
    pub fn deny(reason: impl Into<String>) -> Self {
        Decision {
            allowed: false,
            ..Decision::allow(reason)
        }
    }

    /// Names the policy (and rule) behind this decision.
    pub fn by(mut self, policy: impl Into<String>, rule: Option<String>) -> Self {
        self.policy = Some(policy.into());
        self.rule = rule;
        self
    }

    /// The policy and rule in a few words: `demo/p rules[0]`, or
    /// `default deny (cnp demo/default-deny)`, or `no policy`.
    pub fn cite(&self) -> String {
        match (&self.policy, &self.rule) {
            (Some(p), Some(r)) => format!("{p} {r}"),
            (Some(p), None) if self.allowed => p.clone(),
            (Some(p), None) => format!("{p} (no rule allows)"),
            (None, _) => "no policy applies".into(),
        }
    }

    /// `allow` or `deny`.
    pub fn verdict(&self) -> &'static str {
        if self.allowed { "allow" } else { "deny" }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.verdict(), self.reason)
    }
}

/// `allow` or `deny`, as written in matrices and expectation files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// The connection goes through.
    Allow,
    /// The connection is refused.
    Deny,
}

impl Verdict {
    /// `Allow` when `allowed`, else `Deny`.
    pub fn of(allowed: bool) -> Self {
        if allowed {
            Verdict::Allow
        } else {
            Verdict::Deny
        }
    }

    /// Whether this is `Allow`.
    pub fn allowed(self) -> bool {
        self == Verdict::Allow
    }

    /// The lowercase spelling used in files: `allow` or `deny`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
        }
    }

    /// `allowed` or `refused`, as the demo reports an outcome.
    pub fn past_tense(self) -> &'static str {
        match self {
            Verdict::Allow => "allowed",
            Verdict::Deny => "refused",
        }
    }
}
