//! The signing authority: what an issued SVID contains, and what is refused.

use std::time::{Duration, SystemTime};

use hbone_ca::authority::AuthorityError;
use hbone_ca::inspect::{InspectError, pem_certs, read_cert_facts, verify_chain};
use hbone_ca::manager::new_key_and_csr;
use hbone_ca::plugin::PluginCerts;
use hbone_ca::{AuthorityConfig, Identity, SigningAuthority};

fn id(s: &str) -> Identity {
    s.parse().unwrap()
}

fn authority() -> SigningAuthority {
    SigningAuthority::generate(AuthorityConfig::new("cluster.local")).unwrap()
}

#[test]
fn issues_a_24h_svid_with_one_uri_san_and_a_full_chain() {
    let ca = authority();
    let me = id("spiffe://cluster.local/ns/demo/sa/hello-app");
    let (key, csr) = new_key_and_csr(&me).unwrap();
    let issued = ca.sign_csr(&csr, &me, None).unwrap();

    // leaf → intermediate → root
    assert_eq!(issued.chain_pem.len(), 3);
    assert_eq!(issued.root_pem(), ca.root_pem());
    let leaf = read_cert_facts(pem_certs(issued.leaf_pem()).unwrap()[0].as_ref()).unwrap();
    assert_eq!(leaf.uri_sans, vec![me.uri()]);
    assert!(leaf.dns_sans.is_empty() && leaf.ip_sans.is_empty());
    assert_eq!(leaf.subject, "", "Istio leaves the subject empty");
    assert!(leaf.server_auth && leaf.client_auth);
    assert!(!leaf.is_ca);
    assert_eq!(leaf.public_key, key.public_key_raw());
    // 128-bit serial: 16 bytes, or 17 with a leading zero kept for the sign.
    assert!(
        leaf.serial_hex.split(':').count() >= 15,
        "{}",
        leaf.serial_hex
    );
    // 24 h after now, backdated by a minute.
    let now = SystemTime::now();
    let ahead = leaf.not_after.duration_since(now).unwrap();
    assert!(ahead > Duration::from_secs(24 * 3600 - 60) && ahead <= Duration::from_secs(24 * 3600));
    let behind = now.duration_since(leaf.not_before).unwrap();
    assert!(behind >= Duration::from_secs(55) && behind <= Duration::from_secs(70));

    let chain: Vec<_> = issued
        .chain_pem
        .iter()
        .flat_map(|p| pem_certs(p).unwrap())
        .collect();
    let root = &pem_certs(ca.root_pem()).unwrap()[0];
    verify_chain(&chain, root, now).unwrap();
}

#[test]
fn serials_are_random() {
    let ca = authority();
    let me = id("spiffe://cluster.local/ns/demo/sa/a");
    let serial = || {
        let (_, csr) = new_key_and_csr(&me).unwrap();
        ca.sign_csr(&csr, &me, None).unwrap().serial
    };
    assert_ne!(serial(), serial());
}

#[test]
fn a_chain_from_another_root_does_not_verify() {
    let ca = authority();
    let other = authority();
    let me = id("spiffe://cluster.local/ns/demo/sa/a");
    let (_, csr) = new_key_and_csr(&me).unwrap();
    let issued = ca.sign_csr(&csr, &me, None).unwrap();
    let chain: Vec<_> = issued.chain_pem[..2]
        .iter()
        .flat_map(|p| pem_certs(p).unwrap())
        .collect();
    let foreign_root = &pem_certs(other.root_pem()).unwrap()[0];
    let err = verify_chain(&chain, foreign_root, SystemTime::now()).unwrap_err();
    assert!(matches!(err, InspectError::NotUnderRoot(_)), "{err}");
}

#[test]
fn refusals_carry_their_reason() {
    let ca = authority();
    let me = id("spiffe://cluster.local/ns/demo/sa/a");
    let (_, csr) = new_key_and_csr(&me).unwrap();

    let err = ca.sign_csr("not a csr", &me, None).unwrap_err();
    assert_eq!(err.reason(), "malformed_csr");

    let other = id("spiffe://cluster.local/ns/demo/sa/b");
    let err = ca.sign_csr(&csr, &other, None).unwrap_err();
    assert_eq!(err.reason(), "san_mismatch");
    assert!(err.to_string().contains("sa/a") && err.to_string().contains("sa/b"));

    let foreign = id("spiffe://evil.example/ns/demo/sa/a");
    let (_, foreign_csr) = new_key_and_csr(&foreign).unwrap();
    let err = ca.sign_csr(&foreign_csr, &foreign, None).unwrap_err();
    assert!(
        matches!(err, AuthorityError::ForeignTrustDomain { .. }),
        "{err}"
    );

    let err = ca
        .sign_csr(&csr, &me, Some(Duration::from_secs(91 * 24 * 3600)))
        .unwrap_err();
    assert_eq!(err.reason(), "ttl_too_long");
}

#[test]
fn configured_lifetime_is_honoured_up_to_the_maximum() {
    let mut config = AuthorityConfig::new("cluster.local");
    config.max_ttl = Duration::from_secs(48 * 3600);
    let ca = SigningAuthority::generate(config).unwrap();
    let me = id("spiffe://cluster.local/ns/demo/sa/a");
    let (_, csr) = new_key_and_csr(&me).unwrap();
    let issued = ca
        .sign_csr(&csr, &me, Some(Duration::from_secs(3600)))
        .unwrap();
    let life = issued.not_after.duration_since(issued.not_before).unwrap();
    assert_eq!(life, Duration::from_secs(3600 + 60));
    assert!(
        ca.sign_csr(&csr, &me, Some(Duration::from_secs(49 * 3600)))
            .is_err()
    );
}

#[test]
fn plugin_layout_round_trips_through_disk() {
    let dir = tempfile::tempdir().unwrap();
    let certs = PluginCerts::generate("cluster.local").unwrap();
    certs.write(dir.path()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("ca-key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let loaded = PluginCerts::read(dir.path()).unwrap();
    let ca = SigningAuthority::from_plugin(&loaded, AuthorityConfig::new("cluster.local")).unwrap();
    assert_eq!(
        pem_certs(ca.root_pem()).unwrap(),
        pem_certs(&certs.root_cert_pem).unwrap()
    );
    // A second authority from the same files issues into the same trust.
    let me = id("spiffe://cluster.local/ns/demo/sa/a");
    let (_, csr) = new_key_and_csr(&me).unwrap();
    let issued = ca.sign_csr(&csr, &me, None).unwrap();
    let chain: Vec<_> = issued
        .chain_pem
        .iter()
        .flat_map(|p| pem_certs(p).unwrap())
        .collect();
    verify_chain(
        &chain,
        &pem_certs(&certs.root_cert_pem).unwrap()[0],
        SystemTime::now(),
    )
    .unwrap();

    let missing = tempfile::tempdir().unwrap();
    let err = PluginCerts::read(missing.path()).unwrap_err().to_string();
    assert!(err.contains("ca-cert.pem"), "{err}");
}
