//! The Kubernetes side's keys, made fresh for every control plane: a
//! cluster CA, kube-apiserver's serving certificate (127.0.0.1), an admin
//! client certificate in group `system:masters` (what `kubectl` and
//! istiod present), and the service-account signing key behind
//! TokenRequest and TokenReview.
//!
//! This is not the mesh's CA: workload certificates come from istiod,
//! signing with the plug-in CA files hbone-lab's own CA also reads, so
//! both chain to one root.

use std::path::{Path, PathBuf};

use hbone_ca::plugin::write_with_mode;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use thiserror::Error;
use time::OffsetDateTime;

/// Why the keys could not be made.
#[derive(Debug, Error)]
pub enum PkiError {
    /// rcgen refused.
    #[error("cannot generate the Kubernetes certificates: {0}")]
    Generate(#[from] rcgen::Error),
    /// A file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The files written, by role.
#[derive(Debug, Clone)]
pub struct PkiFiles {
    /// The cluster CA (trusted by clients for the API server, and by the
    /// API server for client certificates).
    pub ca: PathBuf,
    /// The cluster CA as PEM text (for a self-contained kubeconfig).
    pub ca_pem: String,
    /// kube-apiserver's serving certificate and key.
    pub serving_cert: PathBuf,
    /// Its key.
    pub serving_key: PathBuf,
    /// The admin's client certificate (PEM text).
    pub admin_cert_pem: String,
    /// The admin's key (PEM text).
    pub admin_key_pem: String,
    /// The service-account token signing key.
    pub service_account_key: PathBuf,
    /// Its public half, with which the API server verifies tokens.
    pub service_account_pub: PathBuf,
}

const LIFETIME: time::Duration = time::Duration::days(7);

fn params(common_name: &str, organization: Option<&str>) -> CertificateParams {
    let now = OffsetDateTime::now_utc();
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    if let Some(org) = organization {
        params
            .distinguished_name
            .push(DnType::OrganizationName, org);
    }
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + LIFETIME;
    params
}

fn new_key() -> Result<KeyPair, rcgen::Error> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
}

/// Makes the keys and writes them into `dir` (keys mode 0600).
pub fn write(dir: &Path) -> Result<PkiFiles, PkiError> {
    let ca_key = new_key()?;
    let mut ca_params = params("hbone-lab kubernetes CA", None);
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let serving_key = new_key()?;
    let mut serving = params("kube-apiserver", None);
    serving.subject_alt_names = vec![
        SanType::IpAddress([127, 0, 0, 1].into()),
        SanType::DnsName("localhost".try_into()?),
        SanType::DnsName("kubernetes.default.svc".try_into()?),
    ];
    serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let serving_cert = serving.signed_by(&serving_key, &issuer)?;

    let admin_key = new_key()?;
    let mut admin = params("hbone-lab-admin", Some("system:masters"));
    admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let admin_cert = admin.signed_by(&admin_key, &issuer)?;

    let sa_key = new_key()?;

    let file = |name: &str, text: &str, mode: u32| -> Result<PathBuf, PkiError> {
        let path = dir.join(name);
        write_with_mode(&path, text, mode).map_err(|source| PkiError::Write {
            path: path.clone(),
            source,
        })?;
        Ok(path)
    };
    Ok(PkiFiles {
        ca: file("kube-ca.crt", &ca.pem(), 0o644)?,
        ca_pem: ca.pem(),
        serving_cert: file("apiserver.crt", &serving_cert.pem(), 0o644)?,
        serving_key: file("apiserver.key", &serving_key.serialize_pem(), 0o600)?,
        admin_cert_pem: admin_cert.pem(),
        admin_key_pem: admin_key.serialize_pem(),
        service_account_key: file("service-account.key", &sa_key.serialize_pem(), 0o600)?,
        service_account_pub: file("service-account.pub", &sa_key.public_key_pem(), 0o644)?,
    })
}
