//! The standalone lab's gateway: plays the kind lab's Istio gateway
//! (`hello-gateway`). It accepts plain HTTP from outside the mesh and
//! forwards each request to hello-app from inside the mesh, where it runs as
//! the gateway identity — so `curl http://localhost:8080/` behaves like the
//! lab's port-forward to the real gateway.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::{debug, warn};

use crate::dial::Dialer;

#[derive(Debug, Clone)]
/// Settings of the gateway: where hello-app is.
pub struct GatewayConfig {
    /// `host:port` of hello-app (a service name, VIP or IP).
    pub upstream_host: String,
    /// hello-app's port.
    pub upstream_port: u16,
    /// The identity this gateway runs as, passed on for the status page.
    pub identity: Option<String>,
}

type Body = BoxBody<Bytes, hyper::Error>;

fn text(status: u16, message: String) -> http::Response<Body> {
    let body = Full::new(Bytes::from(message))
        .map_err(|never: Infallible| match never {})
        .boxed();
    http::Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(body)
        .expect("a plain response")
}

async fn forward(
    config: &GatewayConfig,
    dialer: &Dialer,
    client: SocketAddr,
    mut request: http::Request<Incoming>,
) -> http::Response<Body> {
    let stream = match dialer
        .connect(&config.upstream_host, config.upstream_port)
        .await
    {
        Ok(s) => s,
        Err(e) => {
            let status = if e.is_policy() { 403 } else { 502 };
            warn!(error = %e, "gateway cannot reach its upstream");
            return text(status, format!("gateway: {e}\n"));
        }
    };
    let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    else {
        return text(502, "gateway: upstream HTTP handshake failed\n".into());
    };
    tokio::spawn(conn);
    let headers = request.headers_mut();
    if let Ok(v) = client.ip().to_string().parse() {
        headers.insert("x-forwarded-for", v);
    }
    if let Some(id) = config.identity.as_deref().and_then(|i| i.parse().ok()) {
        headers.insert("x-hbone-lab-gateway-identity", id);
    }
    match sender.send_request(request).await {
        Ok(response) => response.map(|b| b.boxed()),
        Err(e) => text(502, format!("gateway: upstream failed: {e}\n")),
    }
}

/// Serves until the listener fails; each connection is handled on its own task.
pub async fn serve(
    listener: TcpListener,
    config: GatewayConfig,
    dialer: Dialer,
) -> std::io::Result<()> {
    let shared = Arc::new((config, dialer));
    loop {
        let (tcp, client) = listener.accept().await?;
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(forward(&shared.0, &shared.1, client, req).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await
            {
                debug!(error = %e, "gateway connection ended");
            }
        });
    }
}
