//! hello-app's outside checks: can this workload reach a public HTTPS API?
//!
//! Any HTTP answer — even Cloudflare's 400/403 to an unauthenticated call —
//! proves the path is open. "Blocked" is specific: the TCP connection opened
//! but the TLS handshake was cut, which is what Cilium's SNI rule
//! (`toPorts[].serverNames`, enforced by its Envoy) does to a name it does
//! not allow. A refused or timed-out connection is reported as such, not as
//! blocked, so the page never claims more than it saw.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use serde::Serialize;

use crate::dial::{DialError, Dialer};

/// The outcome of one check.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Reachability {
    /// An HTTP answer came back (any status proves the path is open).
    Reachable {
        /// The HTTP status code.
        status: u16,
    },
    /// TCP connected, then the TLS handshake was reset: an SNI rule said no.
    Blocked {
        /// What the handshake failure said.
        detail: String,
    },
    /// The mesh refused to open the connection (policy).
    Denied {
        /// The mesh's reason.
        detail: String,
    },
    /// Nothing answered, or the connection was refused.
    Unreachable {
        /// The connection error.
        detail: String,
    },
    /// No answer within the check's timeout.
    TimedOut,
}

impl Reachability {
    /// True when an HTTP answer came back.
    pub fn is_open(&self) -> bool {
        matches!(self, Reachability::Reachable { .. })
    }

    /// The outcome in a sentence, for the page and the demo.
    pub fn explain(&self) -> String {
        match self {
            Reachability::Reachable { status } => {
                format!("reachable — HTTP {status} came back, so the path is open")
            }
            Reachability::Blocked { detail } => format!(
                "blocked — the TLS handshake was cut ({detail}); in this lab that is Cilium's SNI egress rule refusing the name"
            ),
            Reachability::Denied { detail } => format!("denied by the mesh — {detail}"),
            Reachability::Unreachable { detail } => format!("unreachable — {detail}"),
            Reachability::TimedOut => "timed out — no answer in time".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
/// One external endpoint checked from the app.
pub struct ExternalCheck {
    /// Its name on the page (`GitHub`).
    pub name: String,
    /// The URL asked for.
    pub url: String,
    /// What came of it.
    pub result: Reachability,
    /// How long it took.
    pub elapsed_ms: u64,
}

/// TLS trust for outside calls: the public web roots, plus extra CAs (the
/// lab's stand-in "public" CA) from `HELLO_EXTRA_CA_FILE`.
pub fn client_tls(extra_ca_pem: Option<&str>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(pem) = extra_ca_pem {
        use rustls::pki_types::pem::PemObject;
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()).flatten() {
            let _ = roots.add(cert);
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("default versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// GETs `url` (https only) through `dialer`, within `timeout`.
pub async fn check(
    name: &str,
    url: &str,
    dialer: &Dialer,
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> ExternalCheck {
    let started = Instant::now();
    let result = match tokio::time::timeout(timeout, fetch(url, dialer, tls)).await {
        Ok(r) => r,
        Err(_) => Reachability::TimedOut,
    };
    ExternalCheck {
        name: name.into(),
        url: url.into(),
        result,
        elapsed_ms: started.elapsed().as_millis() as u64,
    }
}

async fn fetch(url: &str, dialer: &Dialer, tls: Arc<rustls::ClientConfig>) -> Reachability {
    let Ok(uri) = url.parse::<http::Uri>() else {
        return Reachability::Unreachable {
            detail: format!("{url} is not a URL"),
        };
    };
    let host = uri.host().unwrap_or_default().to_string();
    let port = uri.port_u16().unwrap_or(443);
    let tcp = match dialer.connect(&host, port).await {
        Ok(tcp) => tcp,
        Err(e @ DialError::Refused { .. }) if e.is_policy() => {
            return Reachability::Denied {
                detail: e.to_string(),
            };
        }
        Err(e) => {
            return Reachability::Unreachable {
                detail: e.to_string(),
            };
        }
    };
    let Ok(name) = ServerName::try_from(host.clone()) else {
        return Reachability::Unreachable {
            detail: format!("{host} is not a valid TLS name"),
        };
    };
    let stream = match tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
    {
        Ok(s) => s,
        Err(e) => {
            return Reachability::Blocked {
                detail: e.to_string(),
            };
        }
    };
    let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    else {
        return Reachability::Unreachable {
            detail: "HTTP handshake failed".into(),
        };
    };
    tokio::spawn(conn);
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let request = http::Request::get(path)
        .header("host", host)
        .header("user-agent", "hbone-lab hello-app")
        .body(Empty::<bytes::Bytes>::new())
        .expect("a GET request");
    match sender.send_request(request).await {
        Ok(response) => Reachability::Reachable {
            status: response.status().as_u16(),
        },
        Err(e) => Reachability::Unreachable {
            detail: e.to_string(),
        },
    }
}
