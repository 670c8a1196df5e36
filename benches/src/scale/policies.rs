//! `scale_policies`: what a policy set in scope costs each new connection.
//!
//! The server workload is selected by N AuthorizationPolicies (beside the
//! bench's STRICT PeerAuthentication): N − 1 that do not match the client —
//! DENY and ALLOW in turn, each naming another service account — and,
//! last, the ALLOW that lets the client in. So every DENY is checked and
//! not matched, and the ALLOW that matches comes after all the others: the
//! most work N policies can ask of an evaluator that scans. Each subject is
//! started with the set (hbone-lab fed over xDS, as ztunnel is), warmed up,
//! and measured opening one connection per request for a fixed time.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hbone_workloads::peers::{RrSettings, rr_client};

use super::{Sizes, setup};
use crate::runner::{RR_PORT, Sample, warm_up};
use crate::subjects::{BENCH_POLICIES, Shared, Subject, SubjectError, start_fed_by_xds};
use crate::topology::{SERVER_IP, Topology};

/// The bench's PeerAuthentication and `n` AuthorizationPolicies selecting
/// the server, the one that matches the client last.
pub fn policy_set(n: usize) -> String {
    let (peer_authentication, _) = BENCH_POLICIES
        .split_once("---")
        .expect("the bench policies start with a PeerAuthentication");
    let mut out = String::from(peer_authentication);
    for i in 0..n.saturating_sub(1) {
        let action = if i % 2 == 0 { "DENY" } else { "ALLOW" };
        let _ = write!(
            out,
            "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: other-{i}, namespace: bench}}\nspec:\n  selector: {{matchLabels: {{app: server}}}}\n  action: {action}\n  rules: [{{from: [{{source: {{principals: [cluster.local/ns/other/sa/sa-{i}]}}}}]}}]\n"
        );
    }
    out.push_str("---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: allow-client, namespace: bench}\nspec:\n  selector: {matchLabels: {app: server}}\n  rules: [{from: [{source: {principals: [cluster.local/ns/bench/sa/client]}}]}]\n");
    out
}

async fn measure_one(
    subject: &Subject,
    topology: &Topology,
    shared: &Shared,
    seconds: f64,
) -> Result<BTreeMap<String, f64>, SubjectError> {
    let running = start_fed_by_xds(subject, topology, shared).await?;
    let running = warm_up(running, subject, topology).await?;
    let rr = RrSettings {
        request: 1024,
        response: 1024,
        rate: None,
        max_requests: 10_000_000,
        duration: Duration::from_secs_f64(seconds),
        new_connection_each: true,
    };
    let done = rr_client(&topology.client_dialer(), SERVER_IP, RR_PORT, &rr).await;
    running.stop();
    let done = done.map_err(setup)?;
    Ok(BTreeMap::from([
        ("conn_per_s".to_string(), done.per_second.round()),
        (
            "p99_ms".to_string(),
            (done.latency.p99_ms * 1000.0).round() / 1000.0,
        ),
    ]))
}

/// One row per subject and policy count. The bench's own policies are put
/// back afterwards, whatever happened.
pub async fn policies(
    subjects: &[Subject],
    topology: &Topology,
    shared: &mut Shared,
    sizes: &Sizes,
    say: &mut dyn FnMut(&str),
) -> Result<Vec<Sample>, SubjectError> {
    let listener = topology.server_listener(RR_PORT).map_err(setup)?;
    let server = tokio::spawn(hbone_workloads::peers::rr_server(listener, 1024, 1024));
    let measured = curve(subjects, topology, shared, sizes, say).await;
    server.abort();
    shared.set_policies(BENCH_POLICIES)?;
    measured
}

async fn curve(
    subjects: &[Subject],
    topology: &Topology,
    shared: &mut Shared,
    sizes: &Sizes,
    say: &mut dyn FnMut(&str),
) -> Result<Vec<Sample>, SubjectError> {
    let mut samples = Vec::new();
    for &n in &sizes.policies {
        shared.set_policies(&policy_set(n))?;
        for subject in subjects.iter().filter(|s| **s != Subject::Direct) {
            say(&format!(
                "{}: {n} AuthorizationPolicies in scope",
                subject.name()
            ));
            let mut figures = measure_one(subject, topology, shared, sizes.seconds).await?;
            figures.insert("policies".to_string(), n as f64);
            samples.push(super::row(subject, "scale_policies", figures));
        }
    }
    Ok(samples)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_set_has_n_policies_and_the_matching_one_last() {
        let text = policy_set(5);
        let docs = hbone_policies::load::parse_documents(&text, "set").unwrap();
        let policies = hbone_policies::load::istio_policies(&docs, "istio-system");
        let names: Vec<&str> = policies
            .authorization()
            .iter()
            .filter_map(|p| p.metadata.name.as_deref())
            .collect();
        assert_eq!(
            names,
            ["other-0", "other-1", "other-2", "other-3", "allow-client"]
        );
        assert_eq!(policies.peer_authentication().len(), 1);
    }
}
