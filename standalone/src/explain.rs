//! `demo --explain`: one connection's story, step by step, with the real
//! values of this run — written for someone who has never seen HBONE.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::SystemTime;

use hbone_ca::inspect::{human_duration, rfc3339};
use hbone_ca::manager::Svid;
use hbone_workloads::http_get::{Get, get};

use hbone_ca::manager::FetchError;
use hbone_proxy::outbound::OutboundError;
use hbone_workloads::dial::DialError;
use thiserror::Error;

use crate::lab::Lab;
use crate::scenarios::predict;
use crate::topology::{HELLO_PORT, Mode};

/// Why the story could not be told: the step, and what failed in it.
#[derive(Debug, Error)]
pub enum ExplainError {
    #[error("no certificate for {who}")]
    Certificate {
        who: &'static str,
        #[source]
        source: FetchError,
    },
    #[error("opening the tunnel to hello-app")]
    Open(#[source] OutboundError),
    #[error("the connection did not use HBONE")]
    NotHbone,
    #[error("{step}")]
    Io {
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("dialing hello-app through ztunnel")]
    Dial(#[source] DialError),
}

fn io(step: &'static str) -> impl FnOnce(std::io::Error) -> ExplainError {
    move |source| ExplainError::Io { step, source }
}

fn svid_lines(out: &mut String, who: &str, svid: &Svid) {
    let now = SystemTime::now();
    let left = svid.leaf.not_after.duration_since(now).unwrap_or_default();
    let renew = svid.refresh_at.duration_since(now).unwrap_or_default();
    let _ = writeln!(out, "   {who}: {}", svid.identity);
    let _ = writeln!(
        out,
        "      serial {}, valid until {} ({} from now)",
        svid.leaf.serial_hex,
        rfc3339(svid.leaf.not_after),
        human_duration(left)
    );
    let _ = writeln!(
        out,
        "      its proxy will renew it at {} (in {}), half of its lifetime",
        rfc3339(svid.refresh_at),
        human_duration(renew)
    );
}

/// Tells the story of gateway → hello-app, opening one real connection.
pub async fn explain(lab: &Lab) -> Result<String, ExplainError> {
    let gateway = std::sync::Arc::new(lab.pod("hello-gateway").clone());
    let hello = lab.pod("hello-app").clone();
    let (Some(node1), Some(node2)) = (lab.node("node-1"), lab.node("node-2")) else {
        return explain_ztunnel(lab).await;
    };
    let gw_svid = node1
        .core
        .certs
        .get(gateway.identity())
        .await
        .map_err(|source| ExplainError::Certificate {
            who: "the gateway",
            source,
        })?;
    let app_svid = node2
        .core
        .certs
        .get(hello.identity())
        .await
        .map_err(|source| ExplainError::Certificate {
            who: "hello-app",
            source,
        })?;

    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(
        w,
        "How one request travels: the gateway calls hello-app through the mesh\n"
    );
    let _ = writeln!(
        w,
        "1. Identities. Each workload has an X.509 certificate (an SVID) whose only name is a SPIFFE ID."
    );
    let _ = writeln!(
        w,
        "   The node proxies made a key pair in memory, sent a CSR to the CA ({}) and got these back:",
        lab.ca.url()
    );
    svid_lines(w, "gateway", &gw_svid);
    svid_lines(w, "hello-app", &app_svid);

    let vip = SocketAddr::new(lab.mode.vips().0.parse().expect("literal"), HELLO_PORT);
    let _ = writeln!(
        w,
        "\n2. The application opens a plain TCP connection to hello-app.demo.svc.cluster.local:{HELLO_PORT}."
    );
    match lab.mode {
        Mode::Loopback => {
            let _ = writeln!(
                w,
                "   In this loopback lab it asks node-1's SOCKS5 port ({}) from its own pod address {};",
                node1.addrs.socks5.expect("socks5"),
                gateway.ips[0]
            );
            let _ = writeln!(
                w,
                "   in a cluster (and with --netns), iptables inside the pod redirect it to the proxy's port 15001 instead."
            );
        }
        Mode::Netns => {
            let _ = writeln!(
                w,
                "   Inside the gateway pod's network namespace, iptables (nat OUTPUT) redirect it to port 15001,"
            );
            let _ = writeln!(
                w,
                "   where node-1's proxy listens in that same namespace — ambient's in-pod mode. The app never knows."
            );
        }
    }
    let _ = writeln!(
        w,
        "   node-1 resolves the service VIP {vip} to the endpoint {}:{HELLO_PORT} (hello-app, on node-2).",
        hello.ips[0]
    );

    let client_addr = SocketAddr::new(gateway.ips[0], 50000);
    let (upstream, route) = node1
        .outbound
        .open(&gateway, client_addr, vip)
        .await
        .map_err(ExplainError::Open)?;
    let hbone_proxy::outbound::Upstream::Tunnel(tunnel) = upstream else {
        return Err(ExplainError::NotHbone);
    };
    let tls = tunnel.tls.clone();
    let _ = writeln!(
        w,
        "\n3. mTLS. node-1 connects from {} to {} — port 15008 is HBONE — and runs a TLS handshake:",
        tls.local, tls.peer
    );
    let _ = writeln!(
        w,
        "   version {}, cipher {}, ALPN \"{}\" (HTTP/2), no SNI, no session resumption.",
        tls.version, tls.cipher, tls.alpn
    );
    let _ = writeln!(
        w,
        "   node-1 presents the gateway's certificate ({}); node-2 presents hello-app's ({}).",
        gw_svid.leaf.serial_hex, app_svid.leaf.serial_hex
    );
    let _ = writeln!(
        w,
        "   Each side checks the other's chain up to the mesh root; node-1 also checks that the server's"
    );
    let _ = writeln!(
        w,
        "   SPIFFE ID is exactly {} — a stolen certificate of another workload would be refused.",
        hello.identity()
    );

    let _ = writeln!(
        w,
        "\n4. The tunnel. Over that connection node-1 sends one HTTP/2 request per proxied TCP connection:"
    );
    let _ = writeln!(w, "   :method = CONNECT");
    let _ = writeln!(
        w,
        "   :authority = {}   (the workload's own address and port, not the VIP)",
        route.target
    );
    for (name, value) in &tunnel.request_headers {
        let _ = writeln!(w, "   {name} = {}", value.to_str().unwrap_or("?"));
    }

    let route_target = route.target;
    let gateway_identity = gateway.identity().clone();
    // Carry one real request through the tunnel, from a socket pair on loopback.
    let pair = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(io("a loopback socket pair"))?;
    let pair_addr = pair.local_addr().map_err(io("a loopback socket pair"))?;
    let (app_side, accepted) =
        tokio::join!(tokio::net::TcpStream::connect(pair_addr), pair.accept());
    let mut app_side = app_side.map_err(io("a loopback socket pair"))?;
    let (proxy_side, _) = accepted.map_err(io("a loopback socket pair"))?;
    let relay = tokio::spawn({
        let outbound = node1.outbound.clone();
        async move {
            outbound
                .relay(
                    proxy_side,
                    client_addr,
                    &gateway,
                    hbone_proxy::outbound::Upstream::Tunnel(tunnel),
                    route,
                )
                .await;
        }
    });
    let answer = get(&mut app_side, &Get::once("hello-app", "/health"))
        .await
        .map_err(io("the request through the tunnel"))?;
    drop(app_side);
    let _ = relay.await;
    let status = &answer.status_line;

    // Step 5 as node-2 recorded it, not as predicted.
    let target = route_target.to_string();
    let principal = gateway_identity.to_string();
    let (_, recent) = node2.core.connections.snapshot();
    let seen = recent
        .iter()
        .rev()
        .find(|r| r.dst_addr == target && r.src_identity.as_deref() == Some(principal.as_str()));
    let _ = writeln!(
        w,
        "\n5. The policy check, on the receiving side (node-2), before anything reached hello-app —"
    );
    match seen.and_then(|r| r.decision.as_ref().map(|d| (r, d))) {
        Some((record, decision)) => {
            let _ = writeln!(
                w,
                "   as node-2 itself recorded it (connection {} in http://{}/debug/connections):",
                record.id,
                node2.addrs.admin.map_or("-".into(), |a| a.to_string())
            );
            let _ = writeln!(
                w,
                "   peer principal {} → {}: {}",
                gateway_identity.principal(),
                if decision.allowed { "allow" } else { "deny" },
                decision.reason
            );
            let _ = writeln!(
                w,
                "   over {} {}, ALPN {}; it then dialed {target} and answered 200.",
                record.tls.as_ref().map_or("-", |t| t.version.as_str()),
                record.tls.as_ref().map_or("-", |t| t.cipher.as_str()),
                record.tls.as_ref().map_or("-", |t| t.alpn.as_str()),
            );
        }
        None => {
            let decision = predict(lab, Some("hello-gateway"), "hello-app", HELLO_PORT);
            let _ = writeln!(
                w,
                "   node-2's connection log has no record of it; the policies predict: {} → {decision}",
                gateway_identity.principal()
            );
        }
    }
    let _ = writeln!(
        w,
        "\n6. The bytes. The application sent {} bytes (an HTTP GET /health) and received {} bytes (\"{status}\").",
        answer.sent, answer.received
    );
    let _ = writeln!(
        w,
        "   The application never saw TLS, certificates or HTTP/2: the proxies did it all. The metrics at"
    );
    let _ = writeln!(
        w,
        "   http://{}/metrics count this connection under istio_tcp_connections_opened_total.",
        node2.addrs.metrics.expect("metrics")
    );
    Ok(out)
}

/// The same connection with ztunnel on a node: hbone-lab cannot look
/// inside ztunnel, so the story quotes ztunnel's own evidence — its access
/// log lines for the connection and its connection metrics.
async fn explain_ztunnel(lab: &Lab) -> Result<String, ExplainError> {
    let gateway = lab.pod("hello-gateway").clone();
    let hello = lab.pod("hello-app").clone();
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(
        w,
        "How one request travels with {} as the data plane: the gateway calls hello-app\n",
        lab.dataplane.name()
    );
    let _ = writeln!(
        w,
        "1. The roles around ztunnel are hbone-lab's: istiod (its CA and xDS on 127.0.0.1:15012 in the node's namespace) and istio-cni (a ZDS node agent that handed ztunnel each pod's network namespace)."
    );
    for z in &lab.ztunnels {
        let status = z.agent.status();
        let _ = writeln!(
            w,
            "   {}: ztunnel pid {} holds {} pod(s) over ZDS; xDS clients: {}",
            z.node,
            z.ztunnel.pid(),
            status.acked.len(),
            lab.xds
                .as_ref()
                .map(|x| x.clients().iter().filter(|c| c.connected).count())
                .unwrap_or(0)
        );
    }
    let offsets: Vec<usize> = lab.ztunnels.iter().map(|z| z.log_len()).collect();
    let mut tcp = lab
        .dialer("hello-gateway")
        .connect("hello-app.demo.svc.cluster.local", HELLO_PORT)
        .await
        .map_err(ExplainError::Dial)?;
    let client = tcp.local_addr().map_err(io("the client's address"))?;
    let answer = get(&mut tcp, &Get::once("hello-app", "/health"))
        .await
        .map_err(io("the request through ztunnel"))?;
    let status = &answer.status_line;
    let _ = writeln!(
        w,
        "\n2. {} ({}) opened a plain TCP connection to hello-app.demo.svc.cluster.local:{HELLO_PORT}; iptables in its pod sent it to the node proxy's 15001, which carried it over HBONE to {} ({}:15008). Answer: \"{status}\" ({} bytes).",
        gateway.name,
        gateway.identity(),
        hello.name,
        hello.ips[0],
        answer.received
    );
    // ztunnel writes its access log line when the connection ends.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    for (z, offset) in lab.ztunnels.iter().zip(offsets) {
        let (lines, _) = z.log_since(offset);
        let _ = writeln!(w, "\n   ztunnel on {} logged:", z.node);
        // The source ztunnel logs the client's own address; the destination
        // ztunnel logs the source pod's HBONE socket, so match by workload.
        let ours = |l: &&String| {
            l.contains("access")
                && (l.contains(&format!("src.addr={client}"))
                    || (z.node != gateway.node && l.contains("src.workload=\"hello-gateway\"")))
        };
        for line in lines.iter().filter(ours) {
            let _ = writeln!(w, "     {line}");
        }
        let metrics = crate::ztunnel::http_get(
            Some(&z.ztunnel.netns_path()),
            ([127, 0, 0, 1], 15020).into(),
            "/metrics",
        )
        .await
        .map(|(_, body)| body)
        .unwrap_or_default();
        for line in metrics
            .lines()
            .filter(|l| l.starts_with("istio_tcp_connections_opened_total"))
            .filter(|l| l.contains("hello-app"))
        {
            let _ = writeln!(w, "     metric: {line}");
        }
    }
    Ok(out)
}
