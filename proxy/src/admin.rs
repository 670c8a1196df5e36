//! The proxy's small HTTP endpoints: Prometheus metrics (15020), readiness
//! (15021, `/healthz/ready`) and admin (15000: `/config_dump`, `/certs`,
//! `/debug/connections`).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use crate::core::ProxyCore;

/// Which endpoints a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoints {
    Metrics,
    Readiness,
    Admin,
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

fn config_dump(core: &ProxyCore) -> serde_json::Value {
    let workloads: Vec<_> = core
        .registry()
        .workloads
        .iter()
        .map(|w| {
            json!({
                "name": w.name, "namespace": w.namespace, "identity": w.identity().to_string(),
                "ips": w.ips, "node": w.node, "protocol": w.protocol, "local": w.node == core.node,
                "authorizationPolicies": w.authorization_policies,
            })
        })
        .collect();
    json!({
        "node": core.node,
        "trustDomain": core.trust.trust_domain,
        "tlsKeyLog": core.trust.key_log().map(|p| p.display().to_string()),
        "workloads": workloads,
        "services": core.registry().services,
        "policies": core.policies().policies().iter().map(|p| p.key()).collect::<Vec<_>>(),
        "h2": {
            "streamWindow": core.h2.stream_window, "connectionWindow": core.h2.connection_window,
            "maxFrameSize": core.h2.max_frame_size, "maxStreamsPerConnection": core.h2.max_streams_per_connection,
        },
    })
}

/// The connection log: JSON, or a table with `?format=table`.
fn connections(core: &ProxyCore, query: &str) -> Reply {
    let (open, recent) = core.connections.snapshot();
    if query.split('&').any(|kv| kv == "format=table") {
        let mut text = format!("open ({}):\n", open.len());
        text.push_str(&crate::connection_log::table(&open));
        text.push_str(&format!("\nrecent ({}):\n", recent.len()));
        text.push_str(&crate::connection_log::table(&recent));
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

/// Serves `endpoints` on `listener` (HTTP/1.1) until `shutdown`.
pub async fn serve(
    core: Arc<ProxyCore>,
    endpoints: Endpoints,
    listener: TcpListener,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    crate::listen::accept_loop(listener, shutdown, tasks, "admin", None, move |tcp, _| {
        let core = core.clone();
        async move {
            let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let (status, content_type, body) = route(
                    &core,
                    endpoints,
                    req.uri().path(),
                    req.uri().query().unwrap_or(""),
                );
                let response = Response::builder()
                    .status(status)
                    .header("content-type", content_type)
                    .body(Full::new(Bytes::from(body)))
                    .expect("a valid response");
                async move { Ok::<_, Infallible>(response) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await
            {
                debug!(error = %e, "admin connection ended");
            }
        }
    })
    .await
}
