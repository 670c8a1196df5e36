//! Kubernetes equality-based label selection: the one definition used by
//! policy selection, the registries and the kind lab's checks.

use std::collections::BTreeMap;

/// True when every `key: value` of `selector` is among `labels` (an empty
/// selector selects everything).
pub fn labels_match(
    selector: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn subset_selects() {
        let labels = map(&[("app", "a"), ("tier", "web")]);
        assert!(labels_match(&map(&[]), &labels));
        assert!(labels_match(&map(&[("app", "a")]), &labels));
        assert!(!labels_match(&map(&[("app", "b")]), &labels));
        assert!(!labels_match(&map(&[("app", "a"), ("x", "y")]), &labels));
    }
}
