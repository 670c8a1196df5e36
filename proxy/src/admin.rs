//! The proxy's small HTTP endpoints: Prometheus metrics (15020), readiness
//! (15021, `/healthz/ready`) and admin (15000: `/config_dump`, `/certs`,
//! `/debug/connections`).
//!
//! These ports answer anyone who can reach them, before any identity, so
//! each is bounded on its own (`hbone_listen::Bounds::ADMIN`): 64
//! connections at once, 10 s to send the request headers, 30 s for the
//! whole connection. A storm of requests that never finish their headers
//! used to hold every descriptor of the process and fail the node's real
//! traffic; now it costs refusals counted as `too_many_connections` under
//! direction `admin`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use hbone_listen::{Bounds, ConnectionLimit};
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tracing::debug;

use crate::net::listen::{Gate, Listening};
use crate::observe::refusal::Direction;
use crate::state::ProxyCore;

/// Which endpoints a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoints {
    /// Prometheus metrics at `/metrics` and `/stats/prometheus` (15020).
    Metrics,
    /// `/healthz/ready`: ready once every local workload has its certificate (15021).
    Readiness,
    /// `/config_dump`, `/certs` and `/debug/connections` (15000).
    Admin,
}

impl Endpoints {
    /// The listener's name in logs.
    pub fn name(self) -> &'static str {
        match self {
            Endpoints::Metrics => "metrics",
            Endpoints::Readiness => "readiness",
            Endpoints::Admin => "admin",
        }
    }
}

type Reply = (StatusCode, &'static str, String);

fn route(core: &ProxyCore, endpoints: Endpoints, path: &str, query: &str) -> Reply {
    match (endpoints, path) {
        (Endpoints::Metrics, "/metrics" | "/stats/prometheus") => {
            (StatusCode::OK, "application/openmetrics-text; version=1.0.0; charset=utf-8", core.metrics.encode())
        }
        (Endpoints::Readiness, "/healthz/ready") => readiness(core),
        (Endpoints::Admin, "/config_dump") => (StatusCode::OK, "application/json", config_dump(core).to_string()),
        (Endpoints::Admin, "/certs") => (StatusCode::OK, "application/json", certs(core).to_string()),
        (Endpoints::Admin, "/debug/connections") => connections(core, query),
        (Endpoints::Admin, "/") => (
            StatusCode::OK,
            "text/plain",
            "hbone-lab proxy admin\n  /config_dump        workloads, services and policies this proxy knows\n  /certs              local workload certificates with their expiry\n  /debug/connections  open and recent connections, each with its decision (?format=table)\n".into(),
        ),
        _ => (StatusCode::NOT_FOUND, "text/plain", format!("no such endpoint {path}\n")),
    }
}

fn readiness(core: &ProxyCore) -> Reply {
    if let Some(what) = core.waiting_for() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            format!("waiting for {what}\n"),
        );
    }
    let missing: Vec<String> = core
        .registry()
        .workloads
        .iter()
        .filter(|w| core.serves(w))
        .filter(|w| {
            let state = core.certs.watch(w.identity());
            state.borrow().current.is_none()
        })
        .map(|w| w.identity().to_string())
        .collect();
    if missing.is_empty() {
        (StatusCode::OK, "text/plain", "ready\n".into())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            format!("waiting for certificates: {}\n", missing.join(", ")),
        )
    }
}

/// The node proxy's state in ztunnel's `/config_dump` shape — workloads,
/// services, policies and certificates as ztunnel names their fields — so
/// that `istioctl ztunnel-config … --file` reads it as it reads ztunnel's;
/// hbone-lab's own facts (node, key log, HTTP/2 settings, whether a
/// workload is local) ride along under names ztunnel does not use.
fn config_dump(core: &ProxyCore) -> serde_json::Value {
    let registry = core.registry();
    let workloads: Vec<_> = registry
        .workloads
        .iter()
        .map(|w| {
            json!({
                "uid": w.uid, "name": w.name, "namespace": w.namespace,
                "serviceAccount": w.service_account, "trustDomain": w.identity().trust_domain(),
                "workloadIps": w.ips, "node": w.node, "protocol": w.protocol,
                "authorizationPolicies": w.authorization_policies(), "services": w.services(),
                "workloadName": w.name, "workloadType": "pod", "canonicalName": w.name,
                "clusterId": "Kubernetes", "status": "Healthy", "networkMode": "Standard",
                "capacity": 1,
                "identity": w.identity().to_string(), "local": *w.node == *core.node,
            })
        })
        .collect();
    let services: Vec<_> = registry
        .services
        .iter()
        .map(|s| {
            let hostname = s.hostname(&core.trust.trust_domain);
            let key = s.key(&core.trust.trust_domain);
            let endpoints: serde_json::Map<String, serde_json::Value> = registry
                .workloads
                .iter()
                .filter(|w| s.selects(w) || w.services().contains(&key))
                .map(|w| {
                    (
                        w.uid.to_string(),
                        json!({"workloadUid": w.uid, "port": s.ports, "status": "Healthy"}),
                    )
                })
                .collect();
            json!({
                "name": s.name, "namespace": s.namespace, "hostname": hostname,
                "vips": s.vips.iter().map(|ip| format!("/{ip}")).collect::<Vec<_>>(),
                "ports": s.ports, "endpoints": endpoints, "subjectAltNames": [],
                "ipFamilies": "IPv4", "canonical": true, "visibility": "Public",
            })
        })
        .collect();
    let policies: Vec<_> = core
        .policies()
        .policies()
        .iter()
        .map(|p| {
            serde_json::to_value(hbone_policies::authorization::render::ztunnel_local_value(
                p,
            ))
            .unwrap_or_default()
        })
        .collect();
    json!({
        "workloads": workloads,
        "services": services,
        "policies": policies,
        "certificates": dump_certificates(core),
        "node": core.node,
        "trustDomain": core.trust.trust_domain,
        "tlsKeyLog": core.trust.key_log().map(|p| p.display().to_string()),
        "h2": {
            "streamWindow": core.h2.stream_window, "connectionWindow": core.h2.connection_window,
            "maxFrameSize": core.h2.max_frame_size, "maxStreamsPerConnection": core.h2.max_streams_per_connection,
            "parallelConnections": core.h2.parallel_connections,
        },
    })
}

/// Each identity's certificate as ztunnel's dump lists it: the chain
/// (leaf first) and the root apart, each with its PEM (base64), decimal
/// serial and validity.
fn dump_certificates(core: &ProxyCore) -> Vec<serde_json::Value> {
    use base64::Engine;
    let cert = |der: &rustls_pki_types::CertificateDer<'_>| {
        let pem = format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            base64::engine::general_purpose::STANDARD.encode(der.as_ref())
        );
        let facts = hbone_ca::inspect::read_cert_facts(der.as_ref()).ok();
        json!({
            "pem": base64::engine::general_purpose::STANDARD.encode(pem),
            "serialNumber": facts.as_ref().map(|f| f.serial_decimal.clone()),
            "validFrom": facts.as_ref().map(|f| hbone_ca::inspect::rfc3339(f.not_before)),
            "expirationTime": facts.as_ref().map(|f| hbone_ca::inspect::rfc3339(f.not_after)),
        })
    };
    core.certs
        .snapshot()
        .into_iter()
        .map(|(identity, state)| match state.current {
            Some(svid) => {
                let (root, chain) = svid.chain.split_last().expect("a chain holds the leaf");
                json!({
                    "identity": identity.to_string(),
                    "state": "Available",
                    "certChain": chain.iter().map(cert).collect::<Vec<_>>(),
                    "rootCerts": [cert(root)],
                })
            }
            None => json!({
                "identity": identity.to_string(),
                "state": "Unavailable",
                "certChain": [],
                "rootCerts": [],
            }),
        })
        .collect()
}

/// The connection log: JSON, or a table with `?format=table`.
fn connections(core: &ProxyCore, query: &str) -> Reply {
    let (open, recent) = core.connections.snapshot();
    if query.split('&').any(|kv| kv == "format=table") {
        let mut text = format!("open ({}):\n", open.len());
        text.push_str(&crate::observe::connection_log::table(&open));
        text.push_str(&format!("\nrecent ({}):\n", recent.len()));
        text.push_str(&crate::observe::connection_log::table(&recent));
        return (StatusCode::OK, "text/plain", text);
    }
    let body = json!({"open": open, "recent": recent});
    (StatusCode::OK, "application/json", body.to_string())
}

fn certs(core: &ProxyCore) -> serde_json::Value {
    let now = SystemTime::now();
    let entries: Vec<_> = core
        .certs
        .snapshot()
        .into_iter()
        .map(|(identity, state)| match state.current {
            Some(svid) => json!({
                "identity": identity.to_string(),
                "state": "valid",
                "serial": svid.leaf.serial_hex,
                "notBefore": hbone_ca::inspect::rfc3339(svid.leaf.not_before),
                "notAfter": hbone_ca::inspect::rfc3339(svid.leaf.not_after),
                "expiresInSeconds": svid.leaf.not_after.duration_since(now).map(|d| d.as_secs()).unwrap_or(0),
                "refreshAt": hbone_ca::inspect::rfc3339(svid.refresh_at),
                "generation": state.generation,
                "lastError": state.last_error.map(|e| e.to_string()),
            }),
            None => json!({
                "identity": identity.to_string(),
                "state": "missing",
                "lastError": state.last_error.map(|e| e.to_string()),
            }),
        })
        .collect();
    json!({ "certificates": entries })
}

/// Serves `endpoints` on `on` (HTTP/1.1) until its shutdown, within
/// `bounds` ([`Bounds::ADMIN`] unless a test needs tighter ones).
pub async fn serve(core: Arc<ProxyCore>, endpoints: Endpoints, bounds: Bounds, on: Listening) {
    let gate = Gate {
        limit: ConnectionLimit::with_max(bounds.max_connections),
        metrics: core.metrics.clone(),
        direction: Direction::Admin,
    };
    on.accept(endpoints.name(), gate, move |tcp, _| {
        let core = core.clone();
        async move {
            let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                // Read-only ports: anything but GET is refused, not served
                // as if it were one.
                let (status, content_type, body) = if req.method() == hyper::Method::GET {
                    route(
                        &core,
                        endpoints,
                        req.uri().path(),
                        req.uri().query().unwrap_or(""),
                    )
                } else {
                    (
                        StatusCode::METHOD_NOT_ALLOWED,
                        "text/plain",
                        format!(
                            "{} is not allowed here: this port answers GET only\n",
                            req.method()
                        ),
                    )
                };
                let response = Response::builder()
                    .status(status)
                    .header("content-type", content_type)
                    .header("allow", "GET")
                    .body(Full::new(Bytes::from(body)))
                    .expect("a valid response");
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(bounds.first_bytes)
                .serve_connection(TokioIo::new(tcp), service);
            match tokio::time::timeout(bounds.request, connection).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => debug!(error = %e, "admin connection ended"),
                Err(_) => {
                    debug!(limit = ?bounds.request, "admin connection closed at its time limit")
                }
            }
        }
    })
    .await
}
