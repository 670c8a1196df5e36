//! Seeded, reproducible policy sets over the differential lab's one
//! destination workload: the corners of Istio's L4 semantics where a second
//! implementation could differ from ztunnel's.

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};

/// The destination every connection goes to.
pub const TARGET_NAMESPACE: &str = "demo";
/// The target's name, service account and `app` label.
pub const TARGET_APP: &str = "target";
/// The target pod's address, the same in both worlds.
pub const TARGET_IP: &str = "10.254.0.10";
/// The target's ports, each with an echo server; every source tries both.
pub const PORTS: [u16; 2] = [8000, 9090];

/// One source of connections: an identity (or none: plaintext) and an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Source {
    /// `namespace/serviceAccount`, or `None` for a plaintext client.
    pub identity: Option<(&'static str, &'static str)>,
    /// The address it connects from (one of the client namespace's).
    pub ip: &'static str,
}

impl Source {
    /// `cluster.local/ns/<ns>/sa/<sa>`, as policies name principals.
    pub fn principal(&self) -> Option<String> {
        self.identity
            .map(|(ns, sa)| format!("cluster.local/ns/{ns}/sa/{sa}"))
    }

    /// Its principal (or "plaintext") and address, for the report.
    pub fn describe(&self) -> String {
        match self.principal() {
            Some(p) => format!("{p} from {}", self.ip),
            None => format!("plaintext from {}", self.ip),
        }
    }
}

/// Who connects: two identities of the target's namespace, one of another,
/// and a plaintext client.
pub const SOURCES: [Source; 4] = [
    Source {
        identity: Some(("demo", "gw")),
        ip: "10.254.1.1",
    },
    Source {
        identity: Some(("demo", "app")),
        ip: "10.254.1.2",
    },
    Source {
        identity: Some(("other", "client")),
        ip: "10.254.1.3",
    },
    Source {
        identity: None,
        ip: "10.254.1.4",
    },
];

const PRINCIPALS: &[&str] = &[
    "cluster.local/ns/demo/sa/gw",
    "cluster.local/ns/demo/*",
    "*/sa/app",
    "*",
    "cluster.local/ns/other/sa/client",
    "spiffe://cluster.local/ns/demo/sa/gw",
];
const NAMESPACES: &[&str] = &["demo", "other", "*", "de*", "*her"];
const ACCOUNTS: &[&str] = &["demo/gw", "app", "other/client"];
const IP_BLOCKS: &[&str] = &["10.254.1.1", "10.254.1.0/30", "10.254.1.3/32", "10.0.0.0/8"];
const PORT_VALUES: &[&str] = &["8000", "9090"];

fn list(rng: &mut StdRng, pool: &[&str]) -> String {
    let n = rng.random_range(1..=2);
    let picked: Vec<String> = pool
        .choose_multiple(rng, n)
        .map(|s| format!("\"{s}\""))
        .collect();
    format!("[{}]", picked.join(", "))
}

/// One `from` source: a field or two, positive or negative, sometimes L7.
fn source(rng: &mut StdRng) -> String {
    let mut fields = Vec::new();
    let count = rng.random_range(1..=2);
    // Distinct fields: a key may appear once in a mapping.
    let kinds: Vec<u8> = [0u8, 0, 1, 2, 3, 4, 5, 6, 7]
        .choose_multiple(rng, count + 1)
        .copied()
        .collect();
    let mut used = Vec::new();
    for kind in kinds {
        // Istio's CRD refuses serviceAccounts beside (not)principals or
        // (not)namespaces: the API server would not take the set.
        let clashes =
            (kind == 6 && used.iter().any(|k| *k <= 3)) || (kind <= 3 && used.contains(&6));
        if used.contains(&kind) || used.len() == count || clashes {
            continue;
        }
        used.push(kind);
        let field = match kind {
            0 => format!("principals: {}", list(rng, PRINCIPALS)),
            1 => format!("notPrincipals: {}", list(rng, PRINCIPALS)),
            2 => format!("namespaces: {}", list(rng, NAMESPACES)),
            3 => format!("notNamespaces: {}", list(rng, NAMESPACES)),
            4 => format!("ipBlocks: {}", list(rng, IP_BLOCKS)),
            5 => format!("notIpBlocks: {}", list(rng, IP_BLOCKS)),
            6 => format!("serviceAccounts: {}", list(rng, ACCOUNTS)),
            _ => "requestPrincipals: [\"*\"]".to_string(),
        };
        fields.push(field);
    }
    format!("{{source: {{{}}}}}", fields.join(", "))
}

fn operation(rng: &mut StdRng) -> String {
    let field = match rng.random_range(0..5) {
        0 | 1 => format!("ports: {}", list(rng, PORT_VALUES)),
        2 => format!("notPorts: {}", list(rng, PORT_VALUES)),
        3 => format!("ports: {}, methods: [\"GET\"]", list(rng, PORT_VALUES)),
        _ => "paths: [\"/admin\"]".to_string(),
    };
    format!("{{operation: {{{field}}}}}")
}

fn condition(rng: &mut StdRng) -> String {
    let (key, pool): (&str, &[&str]) = match rng.random_range(0..6) {
        0 => ("source.ip", IP_BLOCKS),
        1 => ("source.namespace", NAMESPACES),
        2 => ("source.principal", PRINCIPALS),
        3 => ("destination.port", PORT_VALUES),
        4 => ("destination.ip", &[TARGET_IP, "10.254.0.0/16", "10.9.9.9"]),
        _ => ("request.headers[x-user]", &["bob"]),
    };
    let values = if rng.random_bool(0.3) {
        "notValues"
    } else {
        "values"
    };
    format!("{{key: \"{key}\", {values}: {}}}", list(rng, pool))
}

fn rule(rng: &mut StdRng) -> String {
    // Rules with nothing ztunnel can see: dropped from an ALLOW, and a DENY
    // of empty matches that never hold.
    if rng.random_bool(0.12) {
        let only_l7 = [
            "to: [{operation: {methods: [\"GET\"]}}]",
            "when: [{key: \"request.headers[x-user]\", values: [\"bob\"]}]",
            "from: [{source: {requestPrincipals: [\"*\"]}}]",
        ];
        return format!("  - {{{}}}\n", only_l7.choose(rng).expect("not empty"));
    }
    let mut parts = Vec::new();
    if rng.random_bool(0.7) {
        let n = rng.random_range(1..=2);
        let from: Vec<String> = (0..n).map(|_| source(rng)).collect();
        parts.push(format!("from: [{}]", from.join(", ")));
    }
    if rng.random_bool(0.4) {
        parts.push(format!("to: [{}]", operation(rng)));
    }
    if rng.random_bool(0.3) {
        parts.push(format!("when: [{}]", condition(rng)));
    }
    format!("  - {{{}}}\n", parts.join(", "))
}

fn authorization_policy(rng: &mut StdRng, i: usize) -> String {
    let action = if rng.random_bool(0.4) {
        "DENY"
    } else {
        "ALLOW"
    };
    let (namespace, selector) = match rng.random_range(0..6) {
        0 => ("istio-system", ""),
        1 => (TARGET_NAMESPACE, ""),
        2 => ("istio-system", "  selector: {matchLabels: {app: target}}\n"),
        3 => (
            TARGET_NAMESPACE,
            "  selector: {matchLabels: {app: elsewhere}}\n",
        ),
        _ => (
            TARGET_NAMESPACE,
            "  selector: {matchLabels: {app: target}}\n",
        ),
    };
    let rules = match rng.random_range(0..10) {
        0 => String::new(),
        1 => "  rules: [{}]\n".to_string(),
        _ => {
            let n = rng.random_range(1..=2);
            let rules: String = (0..n).map(|_| rule(rng)).collect();
            format!("  rules:\n{rules}")
        }
    };
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p{i}, namespace: {namespace}}}\nspec:\n{selector}  action: {action}\n{rules}"
    )
}

fn peer_authentication(rng: &mut StdRng) -> Option<String> {
    let head = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n";
    match rng.random_range(0..6) {
        0 => Some(format!(
            "{head}metadata: {{name: default, namespace: demo}}\nspec: {{mtls: {{mode: STRICT}}}}\n"
        )),
        1 => Some(format!(
            "{head}metadata: {{name: default, namespace: istio-system}}\nspec: {{mtls: {{mode: STRICT}}}}\n"
        )),
        2 => Some(format!(
            "{head}metadata: {{name: ports, namespace: demo}}\nspec:\n  selector: {{matchLabels: {{app: target}}}}\n  mtls: {{mode: PERMISSIVE}}\n  portLevelMtls: {{9090: {{mode: STRICT}}}}\n"
        )),
        3 => Some(format!(
            "{head}metadata: {{name: ports, namespace: demo}}\nspec:\n  selector: {{matchLabels: {{app: target}}}}\n  mtls: {{mode: STRICT}}\n  portLevelMtls: {{9090: {{mode: PERMISSIVE}}}}\n"
        )),
        _ => None,
    }
}

/// The `n`th policy set of `seed`: one or two AuthorizationPolicies and
/// perhaps a PeerAuthentication, as one YAML stream.
pub fn policy_set(seed: u64, n: u64) -> String {
    let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ n);
    let count = rng.random_range(1..=2);
    let mut docs: Vec<String> = (0..count)
        .map(|i| authorization_policy(&mut rng, i))
        .collect();
    docs.extend(peer_authentication(&mut rng));
    docs.join("---\n")
}
