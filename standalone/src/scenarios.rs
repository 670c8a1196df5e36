//! The lab's scenarios: each connection the lab is about, what the policies
//! predict for it, what actually happened, and why.

use std::time::Duration;

use hbone_policies::istio::{ConnectionAttrs, Decision, TargetWorkload};
use hbone_workloads::db::{Database, DbConfig};
use hbone_workloads::dial::DialError;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::topology::{HELLO_PORT, LoopbackLab};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allow,
    Deny,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verdict::Allow => "allowed",
            Verdict::Deny => "refused",
        })
    }
}

/// One scenario's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioResult {
    pub name: String,
    pub source: String,
    pub destination: String,
    pub expected: Verdict,
    pub observed: Verdict,
    /// The policy decision (or other cause) behind the expectation.
    pub reason: String,
    /// What the run itself saw.
    pub evidence: String,
}

impl ScenarioResult {
    pub fn matches(&self) -> bool {
        self.expected == self.observed
    }
}

fn verdict(allowed: bool) -> Verdict {
    if allowed {
        Verdict::Allow
    } else {
        Verdict::Deny
    }
}

/// What the Istio policies say for `source` → `target_pod:port` (None: plaintext).
pub fn predict(lab: &LoopbackLab, source: Option<&str>, target_pod: &str, port: u16) -> Decision {
    let target = lab.pod(target_pod);
    let principal = source.map(|s| lab.pod(s).identity().principal());
    lab.policies.evaluate(
        &TargetWorkload {
            namespace: &target.namespace,
            labels: &target.labels,
        },
        &ConnectionAttrs {
            principal: principal.as_deref(),
            src_ip: source.map(|s| lab.pod(s).ips[0]).unwrap_or(target.ips[0]),
            dst_ip: target.ips[0],
            dst_port: port,
        },
    )
}

async fn http_get(
    stream: &mut TcpStream,
    path: &str,
    accept: &str,
) -> std::io::Result<(u16, String)> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: hello-app\r\nAccept: {accept}\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    // Read the head, then exactly content-length bytes (the connection stays open).
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok((
        status,
        String::from_utf8_lossy(&buf[head_end..]).into_owned(),
    ))
}

async fn dial_outcome(lab: &LoopbackLab, pod: &str, host: &str, port: u16) -> (Verdict, String) {
    match lab.dialer(pod).connect(host, port).await {
        Ok(_) => (
            Verdict::Allow,
            "the tunnel opened (HTTP/2 CONNECT answered 200)".into(),
        ),
        Err(e @ DialError::Refused { .. }) if e.is_policy() => (
            Verdict::Deny,
            format!("{e}: the receiving proxy answered 401"),
        ),
        Err(e) => (Verdict::Deny, e.to_string()),
    }
}

/// Runs every scenario, in the lab's order.
pub async fn run_all(lab: &LoopbackLab) -> Vec<ScenarioResult> {
    let mut out = Vec::new();

    // 1. gateway → hello-app, from a person's curl through the gateway.
    let decision = predict(lab, Some("hello-gateway"), "hello-app", HELLO_PORT);
    let (observed, evidence) = match TcpStream::connect(lab.gateway).await {
        Ok(mut tcp) => match http_get(&mut tcp, "/", "application/json").await {
            Ok((200, body)) => {
                let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                (
                    Verdict::Allow,
                    format!(
                        "curl http://{}/ → 200 from hello-app (running as {})",
                        lab.gateway,
                        json["identity"].as_str().unwrap_or("?")
                    ),
                )
            }
            Ok((status, body)) => (Verdict::Deny, format!("HTTP {status}: {}", body.trim())),
            Err(e) => (Verdict::Deny, e.to_string()),
        },
        Err(e) => (Verdict::Deny, e.to_string()),
    };
    out.push(ScenarioResult {
        name: "gateway → hello-app".into(),
        source: lab.pod("hello-gateway").identity().to_string(),
        destination: format!("hello-app:{HELLO_PORT}"),
        expected: verdict(decision.allowed),
        observed,
        reason: decision.reason,
        evidence,
    });

    // 2-3. The test pod, whose identity (sa/default) nobody granted.
    for (target, port, host) in [
        ("hello-app", HELLO_PORT, "hello-app.demo.svc.cluster.local"),
        ("postgres", 5432, "postgres.demo.svc.cluster.local"),
    ] {
        let decision = predict(lab, Some("test-pod"), target, port);
        let (observed, evidence) = dial_outcome(lab, "test-pod", host, port).await;
        out.push(ScenarioResult {
            name: format!("test-pod → {target}"),
            source: lab.pod("test-pod").identity().to_string(),
            destination: format!("{target}:{port}"),
            expected: verdict(decision.allowed),
            observed,
            reason: decision.reason,
            evidence,
        });
    }

    // 4. hello-app → postgres: a real query through the mesh.
    let decision = predict(lab, Some("hello-app"), "postgres", 5432);
    let (observed, evidence) = match &lab.postgres_missing {
        Some(why) => (Verdict::Deny, format!("no database in this run: {why}")),
        None => {
            let db = Database::new(
                DbConfig::new(
                    "postgres.demo.svc.cluster.local",
                    5432,
                    "hello",
                    "hello",
                    "hellodb",
                ),
                lab.dialer("hello-app"),
            );
            let status = db.probe(false).await;
            if status.reachable {
                (
                    Verdict::Allow,
                    format!(
                        "PostgreSQL {} answered in {:.2} ms",
                        status.server_version.unwrap_or_default(),
                        status.round_trip_ms.unwrap_or_default()
                    ),
                )
            } else {
                (Verdict::Deny, status.error.unwrap_or_default())
            }
        }
    };
    out.push(ScenarioResult {
        name: "hello-app → postgres".into(),
        source: lab.pod("hello-app").identity().to_string(),
        destination: "postgres:5432".into(),
        expected: verdict(decision.allowed && lab.postgres_missing.is_none()),
        observed,
        reason: if lab.postgres_missing.is_some() {
            "PostgreSQL is not installed, so this cannot succeed".into()
        } else {
            decision.reason
        },
        evidence,
    });

    // 5. Plaintext into a STRICT workload.
    out.push(plaintext(lab).await);

    // 6. A certificate rotated mid-connection.
    out.push(rotation(lab).await);
    out
}

async fn plaintext(lab: &LoopbackLab) -> ScenarioResult {
    let decision = predict(lab, None, "hello-app", HELLO_PORT);
    let node2 = &lab.node("node-2").core.metrics;
    let before = node2.refusal_count("inbound", "not_tls");
    let hbone = std::net::SocketAddr::new(lab.pod("hello-app").ips[0], 15008);
    let mut evidence = String::new();
    if let Ok(mut tcp) = TcpStream::connect(hbone).await {
        let _ = tcp
            .write_all(b"GET / HTTP/1.1\r\nHost: hello-app\r\n\r\n")
            .await;
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), tcp.read_to_end(&mut buf)).await;
        evidence = if buf.windows(4).any(|w| w == b"HTTP") {
            "an HTTP answer came back".into()
        } else {
            "the proxy closed the connection without an HTTP answer".into()
        };
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let refused = node2.refusal_count("inbound", "not_tls") > before;
    ScenarioResult {
        name: "plaintext → hello-app (STRICT)".into(),
        source: "a client without mesh identity".into(),
        destination: format!("hello-app {hbone}"),
        expected: verdict(decision.allowed),
        observed: verdict(!refused),
        reason: decision.reason,
        evidence: format!(
            "{evidence}; node-2 counted hbone_refusals_total{{reason=\"not_tls\"}}. Loopback mode has no redirection, \
             so plaintext is tried on the mesh port; --netns sends it through iptables to the 15006 listener"
        ),
    }
}

async fn rotation(lab: &LoopbackLab) -> ScenarioResult {
    let gateway = lab.pod("hello-gateway").identity().clone();
    let certs = &lab.node("node-1").core.certs;
    let result = async {
        let before = certs.get(&gateway).await.map_err(|e| e.to_string())?;
        let mut held = lab
            .dialer("hello-gateway")
            .connect("hello-app.demo.svc.cluster.local", HELLO_PORT)
            .await
            .map_err(|e| e.to_string())?;
        let (first, _) = http_get(&mut held, "/health", "*/*")
            .await
            .map_err(|e| e.to_string())?;
        let mut rx = certs.watch(&gateway);
        let generation = rx.borrow().generation;
        certs.renew_now(&gateway);
        tokio::time::timeout(
            Duration::from_secs(5),
            rx.wait_for(|s| s.generation > generation),
        )
        .await
        .map_err(|_| "no renewal within 5 s".to_string())?
        .map_err(|e| e.to_string())?;
        let after = certs.get(&gateway).await.map_err(|e| e.to_string())?;
        let (second, _) = http_get(&mut held, "/health", "*/*")
            .await
            .map_err(|e| format!("the held connection broke: {e}"))?;
        let mut fresh = lab
            .dialer("hello-gateway")
            .connect("hello-app.demo.svc.cluster.local", HELLO_PORT)
            .await
            .map_err(|e| e.to_string())?;
        let (third, _) = http_get(&mut fresh, "/health", "*/*")
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>((
            before.leaf.serial_hex.clone(),
            after.leaf.serial_hex.clone(),
            first,
            second,
            third,
        ))
    }
    .await;
    let (observed, evidence) = match result {
        Ok((old, new, a, b, c)) if old != new => (
            Verdict::Allow,
            format!(
                "serial {old} → {new}; the held connection answered {a} before and {b} after; a new connection answered {c}"
            ),
        ),
        Ok(_) => (Verdict::Deny, "the certificate did not change".into()),
        Err(e) => (Verdict::Deny, e),
    };
    ScenarioResult {
        name: "certificate rotated mid-connection".into(),
        source: gateway.to_string(),
        destination: format!("hello-app:{HELLO_PORT}"),
        expected: Verdict::Allow,
        observed,
        reason: "a renewed SVID serves new connections; established ones keep the old session"
            .into(),
        evidence,
    }
}
