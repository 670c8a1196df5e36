//! Stand-ins for public HTTPS APIs (api.github.com, api.cloudflare.com) on
//! local addresses, with certificates from a separate "public" CA that the
//! lab's pods trust — so hello-app's outside checks, and the SNI rule that
//! lets one through and blocks the other, run without the internet.
//!
//! Each stand-in answers every request with a fixed status, the way the real
//! APIs answer an unauthenticated call (GitHub 200, Cloudflare 400).

use std::sync::Arc;

use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[derive(Debug, Error)]
/// Why the public stand-ins could not be set up.
pub enum PublicApiError {
    #[error("cannot make the public CA's certificates: {0}")]
    /// A certificate could not be made.
    Certificate(#[from] rcgen::Error),
    #[error("cannot build the TLS server: {0}")]
    /// The TLS server could not be built.
    Tls(#[from] rustls::Error),
}

/// A CA standing in for the web's public roots.
pub struct PublicCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pem: String,
}

impl PublicCa {
    /// A fresh root, in memory.
    pub fn generate() -> Result<Self, PublicApiError> {
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "hbone-lab public CA (stand-in)");
        let cert = params.self_signed(&key)?;
        Ok(PublicCa {
            pem: cert.pem(),
            issuer: rcgen::Issuer::new(params, key),
        })
    }

    /// The root certificate, PEM — what clients add to their trust store.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// A TLS server config for `names` (DNS names or IP addresses).
    pub fn server_config(
        &self,
        names: &[&str],
    ) -> Result<Arc<rustls::ServerConfig>, PublicApiError> {
        let key = rcgen::KeyPair::generate()?;
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )?;
        Ok(Arc::new(config))
    }
}

/// What a stand-in answers.
#[derive(Debug, Clone)]
pub struct StandIn {
    /// The HTTP status.
    pub status: u16,
    /// Its reason phrase.
    pub reason: &'static str,
    /// The body.
    pub body: String,
}

impl StandIn {
    /// api.github.com's answer to an unauthenticated `GET /`.
    pub fn github() -> Self {
        StandIn {
            status: 200,
            reason: "OK",
            body:
                r#"{"current_user_url":"https://api.github.com/user","note":"hbone-lab stand-in"}"#
                    .into(),
        }
    }

    /// api.cloudflare.com's answer to an unauthenticated call.
    pub fn cloudflare() -> Self {
        StandIn {
            status: 400,
            reason: "Bad Request",
            body: r#"{"success":false,"errors":[{"code":9106,"message":"Missing X-Auth-Key, X-Auth-Email or Authorization headers"}],"note":"hbone-lab stand-in"}"#.into(),
        }
    }
}

/// Serves `answer` over TLS on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, tls: Arc<rustls::ServerConfig>, answer: StandIn) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let answer = Arc::new(answer);
    while let Ok((tcp, _)) = listener.accept().await {
        let (acceptor, answer) = (acceptor.clone(), answer.clone());
        tokio::spawn(async move {
            let Ok(mut tls) = acceptor.accept(tcp).await else {
                return;
            };
            let mut buf = [0u8; 4096];
            let _ = tls.read(&mut buf).await;
            let response = format!(
                "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
                answer.status,
                answer.reason,
                answer.body.len(),
                answer.body
            );
            let _ = tls.write_all(response.as_bytes()).await;
            let _ = tls.shutdown().await;
        });
    }
}
