//! Istio's plug-in CA layout: the four PEM files istiod reads from the
//! `cacerts` secret.
//!
//! | file | holds |
//! |---|---|
//! | `ca-cert.pem` | the intermediate that signs workload certificates |
//! | `ca-key.pem` | its private key |
//! | `root-cert.pem` | the mesh root every workload trusts |
//! | `cert-chain.pem` | `ca-cert.pem` followed by any further intermediates and the root |
//!
//! When istiod and hbone-lab's CA load the same files, certificates from
//! either chain to one root, so ztunnel and hbone-lab's proxy trust each other.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use thiserror::Error;
use time::OffsetDateTime;

/// File name of the intermediate certificate that signs workload certificates.
pub const CA_CERT: &str = "ca-cert.pem";
/// File name of that intermediate's private key.
pub const CA_KEY: &str = "ca-key.pem";
/// File name of the mesh root certificate.
pub const ROOT_CERT: &str = "root-cert.pem";
/// File name of the chain from the intermediate up to the root.
pub const CERT_CHAIN: &str = "cert-chain.pem";

const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
const INTERMEDIATE_LIFETIME: Duration = Duration::from_secs(5 * 365 * 24 * 3600);

/// Why plug-in CA files could not be read, written or generated.
#[derive(Debug, Error)]
pub enum PluginError {
    /// One of the four files could not be read.
    #[error(
        "cannot read {path}: {source} (a plug-in CA directory holds {CA_CERT}, {CA_KEY}, {ROOT_CERT} and {CERT_CHAIN})"
    )]
    Read {
        /// The file that could not be read.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The directory could not be created, or a file in it could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The directory or file that failed.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// rcgen could not generate a key or sign the root or the intermediate.
    #[error("cannot generate the CA certificates: {0}")]
    Generate(#[from] rcgen::Error),
}

/// The four PEM documents of the plug-in layout.
#[derive(Clone)]
pub struct PluginCerts {
    /// Contents of `ca-cert.pem`: the intermediate that signs workload certificates.
    pub ca_cert_pem: String,
    /// Contents of `ca-key.pem`: the intermediate's private key (left out of `Debug`).
    pub ca_key_pem: String,
    /// Contents of `root-cert.pem`: the mesh root.
    pub root_cert_pem: String,
    /// Contents of `cert-chain.pem`: the intermediate, any further intermediates, then the root.
    pub cert_chain_pem: String,
}

impl std::fmt::Debug for PluginCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginCerts")
            .field("ca_key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl PluginCerts {
    /// A fresh ECDSA P-256 root and an intermediate signed by it.
    pub fn generate(trust_domain: &str) -> Result<Self, PluginError> {
        let now = OffsetDateTime::now_utc();
        let root_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let root_params = ca_params(trust_domain, "hbone-lab root CA", now, ROOT_LIFETIME);
        let root = root_params.self_signed(&root_key)?;
        let root_issuer = Issuer::new(root_params, root_key);

        let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let ca_params = ca_params(
            trust_domain,
            "hbone-lab intermediate CA",
            now,
            INTERMEDIATE_LIFETIME,
        );
        let ca = ca_params.signed_by(&ca_key, &root_issuer)?;

        Ok(PluginCerts {
            cert_chain_pem: format!("{}{}", ca.pem(), root.pem()),
            ca_cert_pem: ca.pem(),
            ca_key_pem: ca_key.serialize_pem(),
            root_cert_pem: root.pem(),
        })
    }

    /// Reads the layout from a directory (for example a mounted `cacerts` secret).
    pub fn read(dir: &Path) -> Result<Self, PluginError> {
        let read = |name: &str| {
            let path = dir.join(name);
            fs::read_to_string(&path).map_err(|source| PluginError::Read { path, source })
        };
        Ok(PluginCerts {
            ca_cert_pem: read(CA_CERT)?,
            ca_key_pem: read(CA_KEY)?,
            root_cert_pem: read(ROOT_CERT)?,
            cert_chain_pem: read(CERT_CHAIN)?,
        })
    }

    /// Writes the layout into `dir` (created if missing); the key file is mode 0600.
    pub fn write(&self, dir: &Path) -> Result<Vec<PathBuf>, PluginError> {
        fs::create_dir_all(dir).map_err(|source| PluginError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
        let files = [
            (CA_CERT, &self.ca_cert_pem, 0o644),
            (CA_KEY, &self.ca_key_pem, 0o600),
            (ROOT_CERT, &self.root_cert_pem, 0o644),
            (CERT_CHAIN, &self.cert_chain_pem, 0o644),
        ];
        let mut written = Vec::new();
        for (name, contents, mode) in files {
            let path = dir.join(name);
            write_with_mode(&path, contents, mode).map_err(|source| PluginError::Write {
                path: path.clone(),
                source,
            })?;
            written.push(path);
        }
        Ok(written)
    }
}

/// Writes a file readable only as `mode` allows, from its creation on
/// (a key file is never world-readable, not even for a moment).
pub fn write_with_mode(path: &Path, contents: &str, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)?;
    file.write_all(contents.as_bytes())
}

fn ca_params(
    trust_domain: &str,
    common_name: &str,
    now: OffsetDateTime,
    lifetime: Duration,
) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, trust_domain);
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + lifetime;
    params.use_authority_key_identifier_extension = true;
    params
}
