//! `hbone-lab ca …` end to end: the files it writes, checked by openssl.

use std::path::{Path, PathBuf};
mod support;

use std::process::Command;

use support::{hbone_lab, hbone_lab_ok};

/// Runs openssl; a test that calls it is ignored unless asked for (and
/// fails when openssl is missing): scripts/test.sh installs it first.
fn openssl(args: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("this test needs openssl (scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
#[ignore = "needs openssl (scripts/test.sh installs it and runs it as root)"]
fn init_issue_and_openssl_agree() {
    let dir = tempfile::tempdir().unwrap();
    let cacerts = dir.path().join("cacerts");
    let svid = dir.path().join("svid");
    hbone_lab_ok(&["ca", "init", "--out", s(&cacerts)]);
    for f in [
        "ca-cert.pem",
        "ca-key.pem",
        "root-cert.pem",
        "cert-chain.pem",
    ] {
        assert!(cacerts.join(f).is_file(), "{f} missing");
    }
    let out = hbone_lab_ok(&[
        "ca",
        "issue",
        "--plugin-certs",
        s(&cacerts),
        "--spiffe-id",
        "spiffe://cluster.local/ns/demo/sa/hello-app",
        "--out-dir",
        s(&svid),
    ]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("memory only"),
        "the key-on-disk warning is shown"
    );
    // The root it reports is the plug-in root.
    assert_eq!(
        std::fs::read_to_string(svid.join("root.pem")).unwrap(),
        std::fs::read_to_string(cacerts.join("root-cert.pem")).unwrap()
    );

    let verify = openssl(&[
        "verify",
        "-CAfile",
        s(&svid.join("root.pem")),
        "-untrusted",
        s(&svid.join("chain.pem")),
        s(&svid.join("cert.pem")),
    ]);
    assert!(verify.trim_end().ends_with(": OK"), "{verify}");

    let text = openssl(&["x509", "-in", s(&svid.join("cert.pem")), "-noout", "-text"]);
    assert!(
        text.contains("URI:spiffe://cluster.local/ns/demo/sa/hello-app"),
        "{text}"
    );
    assert!(
        text.contains("TLS Web Server Authentication, TLS Web Client Authentication"),
        "{text}"
    );
    assert!(
        text.contains("X509v3 Subject Alternative Name: critical"),
        "{text}"
    );

    // 24 h of validity after notBefore's 1 min backdating: read the dates back.
    let dates = openssl(&[
        "x509",
        "-in",
        s(&svid.join("cert.pem")),
        "-noout",
        "-startdate",
        "-enddate",
    ]);
    let parse = |key: &str| {
        let line = dates.lines().find(|l| l.starts_with(key)).unwrap();
        let value = line.split_once('=').unwrap().1;
        let fmt = time::macros::format_description!(
            "[month repr:short] [day padding:space] [hour]:[minute]:[second] [year] GMT"
        );
        time::PrimitiveDateTime::parse(value, fmt).unwrap()
    };
    let lifetime = parse("notAfter") - parse("notBefore");
    assert_eq!(
        lifetime,
        time::Duration::hours(24) + time::Duration::minutes(1)
    );

    // A certificate of a different root does not verify.
    let other = dir.path().join("other");
    hbone_lab_ok(&["ca", "init", "--out", s(&other)]);
    let refused = Command::new("openssl")
        .args([
            "verify",
            "-CAfile",
            s(&other.join("root-cert.pem")),
            "-untrusted",
        ])
        .args([s(&svid.join("chain.pem")), s(&svid.join("cert.pem"))])
        .output()
        .unwrap();
    assert!(!refused.status.success());
}

#[test]
fn inspect_explains_and_checks_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    hbone_lab_ok(&[
        "ca",
        "issue",
        "--spiffe-id",
        "spiffe://cluster.local/ns/demo/sa/worker-app",
        "--ttl",
        "2h",
        "--out-dir",
        s(dir.path()),
    ]);
    let out = hbone_lab_ok(&[
        "ca",
        "inspect",
        s(&dir.path().join("chain.pem")),
        "--root",
        s(&dir.path().join("root.pem")),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("spiffe://cluster.local/ns/demo/sa/worker-app"),
        "{text}"
    );
    assert!(text.contains("service account worker-app"), "{text}");
    assert!(text.contains("a lifetime of 2h 01m"), "{text}");
    assert!(text.contains("renews it at half its lifetime"), "{text}");
    assert!(text.contains("Chain check: VERIFIED"), "{text}");

    let other = tempfile::tempdir().unwrap();
    hbone_lab_ok(&["ca", "init", "--out", s(other.path())]);
    let out = hbone_lab_ok(&[
        "ca",
        "inspect",
        s(&dir.path().join("chain.pem")),
        "--root",
        s(&other.path().join("root-cert.pem")),
    ]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("Chain check: FAILED"));
}

#[test]
fn bad_input_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_hbone-lab"))
        .args([
            "ca",
            "issue",
            "--spiffe-id",
            "spiffe://cluster.local/ns/demo",
            "--out-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Istio's workload form"), "{err}");

    let out = Command::new(env!("CARGO_BIN_EXE_hbone-lab"))
        .args(["ca", "serve", "--plugin-certs"])
        .arg(dir.path().join("nope"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ca-cert.pem"), "{err}");

    // Tokens scoped to nodes need to know where workloads run.
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(env!("CARGO_BIN_EXE_hbone-lab"))
        .args(["ca", "serve", "--listen", "127.0.0.1:0", "--tokens"])
        .arg(repo.join("proxy/examples/tokens.yaml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--registry"), "{err}");
}

/// `ca serve --xds` as ztunnel's whole control plane: a real ztunnel takes
/// the registry's workloads and the translated policies from it, and an
/// edited policy file reaches ztunnel as a delta.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs ZTUNNEL_BIN and root"]
async fn ca_serve_xds_feeds_a_real_ztunnel_and_follows_policy_edits() {
    use hbone_harness::netns::NetNs;
    use hbone_harness::ztunnel::{Mode, Settings, Ztunnel, find_binary};
    use std::time::Duration;

    let binary = find_binary(None).expect("ZTUNNEL_BIN names a ztunnel binary");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let ns = NetNs::create(&format!("hlcs-{}", std::process::id() % 10_000)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    for f in ["hello-policy-l4.yaml", "peer-authentication.yaml"] {
        std::fs::copy(repo.join("policies/istio").join(f), policies.join(f)).unwrap();
    }
    let root = dir.path().join("root.pem");
    let mut server = ns
        .command(env!("CARGO_BIN_EXE_hbone-lab"))
        .args(["ca", "serve", "--xds", "--listen", "127.0.0.1:15012"])
        .args(["--registry", s(&repo.join("proxy/examples/registry.yaml"))])
        .args(["--policies", s(&policies)])
        .args(["--tokens", s(&repo.join("proxy/examples/tokens.yaml"))])
        .args(["--write-root", s(&root)])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "node-2-example-token").unwrap();
    for _ in 0..100 {
        if root.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ztunnel = Ztunnel::start(
        &ns,
        Settings {
            name: "node-2".into(),
            binary,
            control_plane: "https://127.0.0.1:15012".into(),
            root_ca: root,
            token_file: token,
            node: "node-2".into(),
            mode: Mode::Dedicated {
                workload: "demo/hello-app/hello-app".into(),
            },
            log: dir.path().join("ztunnel.log"),
            log_level: "info".into(),
            secret_ttl: None,
            local_config: None,
        },
    )
    .unwrap();
    let names = |d: &serde_json::Value| -> Vec<String> {
        let mut n: Vec<String> = d["policies"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["name"].as_str().map(String::from))
            .collect();
        n.sort();
        n
    };
    let dump = ztunnel
        .wait_for_dump(
            "take workloads and policies",
            Duration::from_secs(20),
            |d| d["workloads"].as_array().is_some_and(|w| w.len() == 4) && !names(d).is_empty(),
        )
        .await;
    let dump = dump.unwrap_or_else(|e| {
        let _ = server.kill();
        panic!("{e}")
    });
    assert_eq!(
        names(&dump),
        ["hello-app-policy", "istio_converted_static_strict"]
    );
    // An added file is followed (the server polls every 2 s).
    std::fs::copy(
        repo.join("policies/istio/postgres-policy-l4.yaml"),
        policies.join("postgres-policy-l4.yaml"),
    )
    .unwrap();
    let followed = ztunnel
        .wait_for_dump("follow the added policy", Duration::from_secs(15), |d| {
            names(d).contains(&"postgres-policy".to_string())
        })
        .await;
    let _ = server.kill();
    let _ = server.wait();
    followed.unwrap();
}

/// A directory with plug-in CA files made by `ca init` in `<dir>/cacerts`.
fn plugin_ca() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let cacerts = dir.path().join("cacerts");
    hbone_lab_ok(&["ca", "init", "--out", s(&cacerts)]);
    (dir, cacerts)
}

/// `ca issue` from the plug-in files in `cacerts` for service account
/// `sa`, into `dir/<out>`, recorded in `journal` if given; the leaf's path.
fn issue_from(cacerts: &Path, dir: &Path, sa: &str, out: &str, journal: Option<&Path>) -> PathBuf {
    let out = dir.join(out);
    let id = format!("spiffe://cluster.local/ns/demo/sa/{sa}");
    let mut args = vec![
        "ca",
        "issue",
        "--plugin-certs",
        s(cacerts),
        "--spiffe-id",
        &id,
        "--out-dir",
        s(&out),
    ];
    if let Some(journal) = journal {
        args.extend(["--journal", s(journal)]);
    }
    hbone_lab_ok(&args);
    out.join("cert.pem")
}

/// openssl's verdict on `cert`, trusting the chain's two CA certificates
/// in `cacerts` and checking `crl` for the leaf.
fn openssl_verify(cacerts: &Path, crl: &Path, cert: &Path) -> std::process::Output {
    Command::new("openssl")
        .args([
            "verify",
            "-crl_check",
            "-CAfile",
            s(&cacerts.join("cert-chain.pem")),
            "-CRLfile",
            s(crl),
            s(cert),
        ])
        .output()
        .expect("this test needs openssl")
}

/// `ca revoke --identity` revokes every certificate the journal lists for
/// the identity (two here, as after a renewal), and no other; an identity
/// the journal does not know is an error that names the journal.
#[test]
#[ignore = "needs openssl (scripts/test.sh installs it and runs it as root)"]
fn revoke_by_identity_takes_every_certificate_the_journal_lists() {
    let (dir, cacerts) = plugin_ca();
    let journal = dir.path().join("issued.jsonl");
    let first = issue_from(&cacerts, dir.path(), "leaked", "leaked-1", Some(&journal));
    let renewed = issue_from(&cacerts, dir.path(), "leaked", "leaked-2", Some(&journal));
    let other = issue_from(&cacerts, dir.path(), "kept", "kept", Some(&journal));
    let crl = dir.path().join("crl.pem");
    let revoke_with = |more: &[&str]| {
        let mut args = vec![
            "ca",
            "revoke",
            "--plugin-certs",
            s(&cacerts),
            "--crl",
            s(&crl),
        ];
        args.extend_from_slice(more);
        hbone_lab(&args)
    };
    let revoke = |identity: &str| revoke_with(&["--journal", s(&journal), "--identity", identity]);
    let out = revoke("spiffe://cluster.local/ns/demo/sa/leaked");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("2 certificate(s) still valid"), "{said}");
    assert!(said.contains("edition #1, 2 revoked"), "{said}");
    for cert in [&first, &renewed] {
        assert!(
            !openssl_verify(&cacerts, &crl, cert).status.success(),
            "{} is not revoked",
            cert.display()
        );
    }
    assert!(openssl_verify(&cacerts, &crl, &other).status.success());

    let out = revoke("spiffe://cluster.local/ns/demo/sa/nobody");
    assert!(!out.status.success());
    let error = String::from_utf8_lossy(&out.stderr);
    assert!(
        error.contains("issued.jsonl lists no certificate still valid"),
        "{error}"
    );
    // --identity without a journal is refused before anything is written.
    let out = revoke_with(&["--identity", "spiffe://cluster.local/ns/demo/sa/kept"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--journal"));
}

/// `ca revoke` writes a CRL that openssl, independently, takes as the CA's:
/// the revoked certificate fails `openssl verify -crl_check` as revoked,
/// another one of the same CA still verifies; a second revocation extends
/// the list (edition #2, both serials); `ca inspect` explains it.
#[test]
#[ignore = "needs openssl (scripts/test.sh installs it and runs it as root)"]
fn revoke_writes_a_crl_that_openssl_checks() {
    let (dir, cacerts) = plugin_ca();
    let issue = |name: &str| issue_from(&cacerts, dir.path(), name, name, None);
    let (revoked, kept, later) = (issue("leaked"), issue("kept"), issue("later"));
    let crl = dir.path().join("crl.pem");
    // `ca revoke` on `crl` with the plug-in files in `ca`, and `more`.
    let revoke = |ca: &Path, more: &[&str]| {
        let mut args = vec!["ca", "revoke", "--plugin-certs", s(ca), "--crl", s(&crl)];
        args.extend_from_slice(more);
        hbone_lab(&args)
    };
    let out = revoke(
        &cacerts,
        &["--cert", s(&revoked), "--reason", "key-compromise"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("edition #1, 1 revoked"), "{said}");

    let verify = |cert: &Path| openssl_verify(&cacerts, &crl, cert);
    let refused = verify(&revoked);
    assert!(
        !refused.status.success(),
        "openssl accepted a revoked certificate"
    );
    let why = String::from_utf8_lossy(&refused.stdout).to_string()
        + &String::from_utf8_lossy(&refused.stderr);
    assert!(why.contains("certificate revoked"), "{why}");
    assert!(verify(&kept).status.success(), "the kept certificate fails");

    // A second revocation, by serial as `ca inspect` prints it.
    let facts =
        String::from_utf8_lossy(&hbone_lab_ok(&["ca", "inspect", s(&later)]).stdout).to_string();
    let serial = facts
        .lines()
        .find_map(|l| l.strip_prefix("Serial: "))
        .expect("inspect prints the serial")
        .trim()
        .to_string();
    let out = revoke(&cacerts, &["--serial", &serial]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("edition #2, 2 revoked"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        !verify(&later).status.success(),
        "the later certificate is revoked too"
    );
    assert!(
        !verify(&revoked).status.success(),
        "the first stays revoked"
    );
    // `ca inspect` of the list, checked with the issuing certificate.
    let inspect_crl = || {
        let out = hbone_lab_ok(&[
            "ca",
            "inspect",
            s(&crl),
            "--root",
            s(&cacerts.join("ca-cert.pem")),
        ]);
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let story = inspect_crl();
    assert!(story.contains("revocation list #2"), "{story}");
    assert!(story.contains("verified"), "{story}");
    assert!(story.contains("key-compromise"), "{story}");
    assert!(story.contains(&serial), "{story}");

    // `ca serve --crl` publishes fresh editions (at start, then at half the
    // validity), keeping every entry.
    let mut serve = Command::new(env!("CARGO_BIN_EXE_hbone-lab"))
        .args([
            "ca",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--plugin-certs",
            s(&cacerts),
            "--crl",
            s(&crl),
            "--crl-validity",
            "2s",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let edition = || {
        let text = inspect_crl();
        let number = text
            .lines()
            .find_map(|l| l.strip_prefix("Certificate revocation list #"))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .unwrap_or(0);
        (number, text.contains("Revokes 2 certificate(s)"))
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while edition().0 < 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "ca serve --crl published no new edition: {:?}",
            edition()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let _ = serve.kill();
    let _ = serve.wait();
    assert!(edition().1, "a published edition lost entries");

    // Another CA's files do not extend this CA's list; a reason must exist.
    let other = dir.path().join("other");
    hbone_lab_ok(&["ca", "init", "--out", s(&other)]);
    let foreign = revoke(&other, &["--serial", "01"]);
    assert!(!foreign.status.success());
    assert!(
        String::from_utf8_lossy(&foreign.stderr).contains("not signed by"),
        "{}",
        String::from_utf8_lossy(&foreign.stderr)
    );
    let bad = revoke(&cacerts, &["--serial", "01", "--reason", "lost"]);
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("key-compromise"),
        "the error lists the reasons"
    );
}
