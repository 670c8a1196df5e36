//! A verdict and what made it — shared by both layers so that `policy check`,
//! the proxy's logs and the demo all say "which policy, which rule" the same way.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub allowed: bool,
    /// The deciding policy (`demo/hello-app-policy`), when one decided.
    pub policy: Option<String>,
    /// The deciding rule within it (`rules[0]`, `egress[1]`).
    pub rule: Option<String>,
    pub reason: String,
}

impl Decision {
    pub fn allow(reason: impl Into<String>) -> Self {
        Decision {
            allowed: true,
            policy: None,
            rule: None,
            reason: reason.into(),
        }
    }

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
    Allow,
    Deny,
}

impl Verdict {
    pub fn of(allowed: bool) -> Self {
        if allowed {
            Verdict::Allow
        } else {
            Verdict::Deny
        }
    }

    pub fn allowed(self) -> bool {
        self == Verdict::Allow
    }

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
