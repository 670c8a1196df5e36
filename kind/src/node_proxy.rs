//! hbone-lab as one node's ambient proxy in ztunnel's place
//! (`HBONE_NODE_PROXY=worker2 kind/up.sh`, manifests in `kind/node-proxy/`):
//! the names the script, the DaemonSet and `kind verify` share, and which
//! implementation serves which node.
//!
//! With the swap on, `kind verify` runs each probe on a node served by the
//! other implementation than its destination's, so every row of the matrix
//! crosses between ztunnel and hbone-lab, one way or the other.

use std::collections::BTreeMap;

/// The node label that hands a node to hbone-lab (and keeps ztunnel off it).
pub const LABEL: &str = "hbone-lab.io/node-proxy";
/// The value of [`LABEL`] on hbone-lab's nodes.
pub const VALUE: &str = "hbone-lab";
/// hbone-lab's node-proxy DaemonSet, and the `app` label of its pods.
pub const DAEMONSET: &str = "hbone-node-proxy";
/// Where both node proxies run.
pub const NAMESPACE: &str = "istio-system";
/// The `app` label of ztunnel's pods.
pub const ZTUNNEL_APP: &str = "ztunnel";

/// A node as `verify` sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// The node's name.
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
}

impl NodeInfo {
    fn control_plane(&self) -> bool {
        self.labels
            .contains_key("node-role.kubernetes.io/control-plane")
    }

    fn hbone_lab(&self) -> bool {
        self.labels.get(LABEL).is_some_and(|v| v == VALUE)
    }
}

/// Which node proxy serves which worker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeProxies {
    /// Workers labelled for hbone-lab.
    pub hbone_lab: Vec<String>,
    /// The other workers, ztunnel's.
    pub ztunnel: Vec<String>,
}

impl NodeProxies {
    /// Sorts the workers by the node proxy their label gives them (the control plane runs none).
    pub fn from_nodes(nodes: &[NodeInfo]) -> NodeProxies {
        let workers = nodes.iter().filter(|n| !n.control_plane());
        let (hbone_lab, ztunnel): (Vec<&NodeInfo>, Vec<&NodeInfo>) =
            workers.partition(|n| n.hbone_lab());
        let names = |l: Vec<&NodeInfo>| l.into_iter().map(|n| n.name.clone()).collect();
        NodeProxies {
            hbone_lab: names(hbone_lab),
            ztunnel: names(ztunnel),
        }
    }

    /// Whether the swap is on (and there is a ztunnel node to cross to).
    pub fn mixed(&self) -> bool {
        !self.hbone_lab.is_empty() && !self.ztunnel.is_empty()
    }

    /// Which implementation serves `node`.
    pub fn proxy_of(&self, node: &str) -> &'static str {
        if self.hbone_lab.iter().any(|n| n == node) {
            "hbone-lab"
        } else {
            "ztunnel"
        }
    }

    /// The node to probe a destination on `dst_node` from: one served by
    /// the other implementation (hbone-lab's when the destination's node is
    /// unknown, as for a destination outside the cluster).
    pub fn across(&self, dst_node: Option<&str>) -> Option<String> {
        if !self.mixed() {
            return None;
        }
        let pick = match dst_node {
            Some(n) if self.proxy_of(n) == "hbone-lab" => &self.ztunnel,
            _ => &self.hbone_lab,
        };
        pick.first().cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, labels: &[(&str, &str)]) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn probes_cross_to_the_other_implementation() {
        let nodes = [
            node("cp", &[("node-role.kubernetes.io/control-plane", "")]),
            node("w1", &[]),
            node("w2", &[(LABEL, VALUE)]),
        ];
        let proxies = NodeProxies::from_nodes(&nodes);
        assert_eq!(proxies.hbone_lab, ["w2"]);
        assert_eq!(proxies.ztunnel, ["w1"]);
        assert_eq!(proxies.across(Some("w2")).as_deref(), Some("w1"));
        assert_eq!(proxies.across(Some("w1")).as_deref(), Some("w2"));
        assert_eq!(proxies.across(None).as_deref(), Some("w2"));
        let plain = NodeProxies::from_nodes(&nodes[..2]);
        assert!(!plain.mixed());
        assert_eq!(plain.across(Some("w1")), None);
    }
}
