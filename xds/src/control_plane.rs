//! istiod's two services on one TLS port (15012 by convention): the CA
//! (`IstioCertificateService`) and the xDS server (delta ADS).
//!
//! ztunnel speaks to both over TLS only (HTTP/2, no client certificate),
//! authenticating with a bearer token; the serving certificate is issued by
//! the lab's own CA for the listen address, so `XDS_ROOT_CA` and
//! `CA_ROOT_CA` are both the lab's root.

use std::net::SocketAddr;
use std::sync::Arc;

use hbone_ca::server::{CaService, RunningCa, ServerError, serve_listener_with, serve_with};
use tokio::net::TcpListener;
use tonic::service::Routes;

use crate::server::{XdsState, ads_service};

/// The CA and xDS server running in the background.
pub struct RunningControlPlane {
    /// The TLS server (stop it with `server.shutdown()`).
    pub server: RunningCa,
    /// The xDS side: update the mesh served and read the clients' status through it.
    pub xds: Arc<XdsState>,
}

impl RunningControlPlane {
    /// `https://ip:port`, for ztunnel's `XDS_ADDRESS` and `CA_ADDRESS`.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Ends the xDS streams (their clients reconnect) and stops the server.
    pub async fn shutdown(self) {
        self.xds.close_streams();
        self.server.shutdown().await;
    }
}

/// Binds `listen` and serves the CA and xDS until shut down.
pub async fn serve(
    ca: Arc<CaService>,
    xds: Arc<XdsState>,
    listen: SocketAddr,
    extra_names: &[String],
) -> Result<RunningControlPlane, ServerError> {
    let routes = Routes::new(ads_service(xds.clone()));
    let server = serve_with(ca, listen, extra_names, routes).await?;
    Ok(RunningControlPlane { server, xds })
}

/// Serves on a listener already bound (for example inside a network namespace).
pub async fn serve_on(
    ca: Arc<CaService>,
    xds: Arc<XdsState>,
    listener: TcpListener,
    extra_names: &[String],
) -> Result<RunningControlPlane, ServerError> {
    let routes = Routes::new(ads_service(xds.clone()));
    let server = serve_listener_with(ca, listener, extra_names, routes).await?;
    tracing::info!(addr = %server.addr, "control plane: delta ADS beside the CA");
    Ok(RunningControlPlane { server, xds })
}
