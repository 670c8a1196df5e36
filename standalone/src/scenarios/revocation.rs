//! Scenario 11: the gateway's certificate revoked while it holds a
//! connection to hello-app. The CA signs a revocation list naming the
//! serial; hello-app's node proxy takes the new edition (as it does when
//! the `--crl` file changes) and ends the held connection, the gateway's
//! next one is refused at the handshake, and once the gateway's node proxy
//! has renewed the certificate, connections work again.
//!
//! It runs where both nodes run hbone-lab's proxy on the lab's own CA: a
//! lab on the real istiod has istiod sign its certificates; a ztunnel
//! destination would need the list before it starts (`CRL_PATH`); and a
//! ztunnel source renews its certificate by itself every 10 s in the lab,
//! while its pooled connections keep the certificate they were made with,
//! so "the gateway's certificate" is not one serial there. Against a real
//! ztunnel, revocation both ways is `ztunnel_interop`'s.

use std::time::Duration;

use hbone_ca::revocation::{RevocationList, parse_serial, reason_named};
use hbone_proxy::observe::refusal::{Direction, Reason};
use tokio::io::AsyncReadExt;

use super::{ScenarioResult, Verdict, current_serial, gateway_health, renewed_serial};
use crate::lab::Lab;
use crate::lab::topology::{HELLO_HOST, HELLO_PORT};

/// How long a list this scenario signs stays current.
const LIST_VALIDITY: Duration = Duration::from_secs(3600);

/// The scenario, or nothing where it cannot run (see the module's doc).
pub(super) async fn revoked_mid_connection(lab: &Lab) -> Option<ScenarioResult> {
    let destination = lab.node(&lab.pod("hello-app").node)?;
    lab.node(&lab.pod("hello-gateway").node)?;
    if lab.istiod.is_some() {
        return None;
    }
    let gateway = lab.pod("hello-gateway").identity().clone();
    let refused_before = destination
        .core
        .metrics
        .refusal_count(Direction::Inbound, Reason::CertificateRevoked);
    let connect = || gateway_health(lab, HELLO_HOST);
    let result = async {
        let (mut held, before) = connect().await.map_err(|e| format!("before: {e}"))?;
        let serial = current_serial(lab, "hello-gateway").await?;
        let pem = revoking(lab, &serial)?;
        // What a proxy following its `--crl` file does with a new edition.
        for node in &lab.nodes {
            node.core
                .trust
                .revocations()
                .replace(pem.as_bytes(), "the demo's revocation list")
                .map_err(|e| e.to_string())?;
            node.core.close_revoked();
        }
        let mut rest = [0u8; 256];
        let held_closed = matches!(
            tokio::time::timeout(Duration::from_secs(5), held.read(&mut rest)).await,
            Ok(Ok(0)) | Ok(Err(_))
        );
        let refused = connect().await.err();
        let renewed = renewed_serial(lab, "hello-gateway", &serial).await?;
        let (_, after) = connect()
            .await
            .map_err(|e| format!("with the renewed certificate {renewed}: {e}"))?;
        Ok::<_, String>((before, serial, held_closed, refused, renewed, after))
    }
    .await;
    let counted = destination
        .core
        .metrics
        .refusal_count(Direction::Inbound, Reason::CertificateRevoked)
        - refused_before;
    let (observed, evidence) = match result {
        Ok((before, serial, true, Some(refused), renewed, after)) => (
            Verdict::Deny,
            format!(
                "the held connection answered {before}; serial {serial} revoked (key-compromise) in a list the CA signed: {} closed the held connection and refused the next one ({refused}), counting {counted} certificate_revoked; after renewal to serial {renewed}, a new connection answered {after}",
                destination.core.node
            ),
        ),
        Ok((_, serial, held_closed, refused, _, _)) => (
            Verdict::Allow,
            format!(
                "serial {serial} revoked, yet the held connection {} and a new one {}",
                if held_closed { "closed" } else { "stayed open" },
                if refused.is_some() {
                    "was refused"
                } else {
                    "was answered"
                }
            ),
        ),
        Err(e) => (Verdict::Allow, e),
    };
    Some(ScenarioResult {
        name: "certificate revoked mid-connection".into(),
        source: gateway.to_string(),
        destination: format!("hello-app:{HELLO_PORT}"),
        expected: Verdict::Deny,
        observed,
        reason: "a revoked certificate ends the connections it holds and opens no new one; the renewed certificate (a new serial) is not on the list".into(),
        evidence,
        finding: None,
    })
}

/// A list signed by the lab's CA that revokes `serial` (hex, as the
/// certificate's facts print it) for key compromise.
fn revoking(lab: &Lab, serial: &str) -> Result<String, String> {
    let serial = parse_serial(serial).map_err(|e| e.to_string())?;
    let mut list = RevocationList::default();
    list.revoke(&serial, reason_named("key-compromise").ok());
    let (pem, _) = lab
        .authority
        .sign_revocation_list(&list, LIST_VALIDITY)
        .map_err(|e| e.to_string())?;
    Ok(pem)
}
