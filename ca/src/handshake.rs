//! The CA port's TLS handshakes, made here rather than inside tonic, so
//! that each one that fails or runs out of time is counted and logged with
//! the client's address. tonic enforced the same deadline, but silently:
//! a storm of half-finished handshakes (issue 30, finding 2) showed in no
//! metric. Each handshake runs in its own task, so a slow client holds up
//! no other; finished ones are handed to tonic, which then speaks HTTP/2
//! over them as it would over its own.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use hbone_listen::{Acceptor, Admitted};
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use thiserror::Error;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tracing::debug;

use crate::metrics::CaMetrics;

/// A connection whose TLS handshake is done, as tonic takes it.
pub type Handshaken = TlsStream<Admitted<TcpStream>>;

/// Why the serving certificate could not be made into a TLS configuration.
#[derive(Debug, Error)]
pub enum TlsSetupError {
    /// A PEM block of the chain or the key did not parse.
    #[error("the serving certificate's PEM: {0}")]
    Pem(#[from] rustls::pki_types::pem::Error),
    /// rustls refused the certificate and key.
    #[error("the serving certificate: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The server side of the CA port: `chain_pem` (leaf first) and `key_pem`,
/// HTTP/2 only, as gRPC clients (ztunnel among them) ask by ALPN.
pub fn server_config(chain_pem: &str, key_pem: &str) -> Result<ServerConfig, TlsSetupError> {
    let chain =
        CertificateDer::pem_slice_iter(chain_pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())?;
    let mut config = ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Accepts from `acceptor` and handshakes each connection within
/// `deadline`, counting `handshake_timeout` and `tls_handshake_failed` in
/// `metrics`; the stream yields the connections that finished. Accepting
/// stops when the stream is dropped.
pub fn handshaken(
    mut acceptor: Acceptor,
    config: Arc<ServerConfig>,
    deadline: Duration,
    metrics: Arc<CaMetrics>,
) -> impl Stream<Item = Result<Handshaken, Infallible>> {
    let tls = TlsAcceptor::from(config);
    // Bounded: while tonic is slow to take finished handshakes, their
    // tasks wait rather than pile up; the acceptor's cap bounds them all.
    let (tx, rx) = mpsc::channel::<Handshaken>(64);
    tokio::spawn(async move {
        loop {
            let admitted = tokio::select! {
                admitted = acceptor.next() => admitted,
                () = tx.closed() => return,
            };
            let (tls, tx, metrics) = (tls.clone(), tx.clone(), metrics.clone());
            tokio::spawn(async move {
                let peer = admitted.peer();
                match tokio::time::timeout(deadline, tls.accept(admitted)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(stream).await;
                    }
                    Ok(Err(error)) => {
                        metrics.record_refusal("tls_handshake_failed");
                        debug!(%peer, %error, "CA port: TLS handshake failed");
                    }
                    Err(_) => {
                        metrics.record_refusal("handshake_timeout");
                        debug!(%peer, ?deadline, "CA port: TLS handshake not finished in time");
                    }
                }
            });
        }
    });
    futures::stream::unfold(rx, |mut rx| async move {
        let stream = rx.recv().await?;
        Some((Ok(stream), rx))
    })
}
