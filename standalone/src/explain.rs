//! `demo --explain`: one connection's story, step by step, with the real
//! values of this run — written for someone who has never seen HBONE.
//!
//! Telling it is two steps kept apart: [`gather`] drives one real
//! connection and collects what happened into a [`Story`] (certificates,
//! route, TLS, CONNECT headers, the receiving proxy's own record of its
//! decision, bytes); [`Story`]'s `Display` narrates it. The narration is
//! thus testable on a fixed story, and another view of the same facts (a
//! wire ladder, JSON) can be written beside it.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::SystemTime;

use hbone_ca::identity::Identity;
use hbone_ca::inspect::{human_duration, rfc3339};
use hbone_ca::manager::Svid;
use hbone_workloads::http_get::{Get, get};

use hbone_ca::manager::FetchError;
use hbone_proxy::observe::refusal::Direction;
use hbone_proxy::outbound::OutboundError;
use hbone_proxy::outbound::pool::TlsInfo;
use hbone_workloads::dial::DialError;
use thiserror::Error;

use crate::lab::Lab;
use crate::lab::topology::{HELLO_PORT, Mode};
use crate::scenarios::predict;

/// Why the story could not be told: the step, and what failed in it.
#[derive(Debug, Error)]
pub enum ExplainError {
    /// The CA gave no certificate for one side of the connection.
    #[error("no certificate for {who}")]
    Certificate {
        /// Whose certificate was asked for (`"the gateway"` or `"hello-app"`).
        who: &'static str,
        /// Why fetching it failed.
        #[source]
        source: FetchError,
    },
    /// node-1's proxy could not open the HBONE tunnel to hello-app.
    #[error("opening the tunnel to hello-app")]
    Open(#[source] OutboundError),
    /// The route chosen for hello-app was not an HBONE tunnel (a direct connection, say).
    #[error("the connection did not use HBONE")]
    NotHbone,
    /// A socket operation failed at the named step.
    #[error("{step}")]
    Io {
        /// The step that failed, such as "a loopback socket pair".
        step: &'static str,
        /// The I/O error it returned.
        #[source]
        source: std::io::Error,
    },
    /// With ztunnel on a node, the gateway's connection to hello-app could not be dialed.
    #[error("dialing hello-app through ztunnel")]
    Dial(#[source] DialError),
}

fn io(step: &'static str) -> impl FnOnce(std::io::Error) -> ExplainError {
    move |source| ExplainError::Io { step, source }
}

/// What a workload's certificate says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SvidFacts {
    /// The SPIFFE ID the certificate carries.
    pub identity: Identity,
    /// The leaf certificate's serial number, in hex.
    pub serial: String,
    /// When the certificate expires.
    pub not_after: SystemTime,
    /// When the proxy plans to renew it (about half of its lifetime).
    pub refresh_at: SystemTime,
}

impl SvidFacts {
    fn of(svid: &Svid) -> Self {
        SvidFacts {
            identity: svid.identity.clone(),
            serial: svid.leaf.serial_hex.clone(),
            not_after: svid.leaf.not_after,
            refresh_at: svid.refresh_at,
        }
    }
}

/// How the application's connection reached the proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Capture {
    /// Loopback lab: the app asks the node's SOCKS5 port from its pod address.
    Socks5 {
        /// The node proxy's SOCKS5 listener.
        port: SocketAddr,
        /// The pod address the app connects from.
        from: IpAddr,
    },
    /// Network namespaces: iptables in the pod redirect to 15001.
    InPod,
}

/// The receiving proxy's verdict: as it recorded it, or (when its log has
/// no record) as the policies predict it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Found in the receiving proxy's own connection log.
    Recorded {
        /// The connection's id in that log.
        connection: u64,
        /// The proxy's admin address, whose `/debug/connections` shows the log.
        admin: Option<SocketAddr>,
        /// Whether the policies let the connection through.
        allowed: bool,
        /// Which policy rule decided, as the proxy wrote it.
        reason: String,
        /// Version, cipher and ALPN as the receiver saw them.
        tls: Option<(String, String, String)>,
    },
    /// Not in the log: the decision the policies predict, as text.
    Predicted(String),
}

/// One connection through two hbone-lab proxies, as it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Story {
    /// When the facts were gathered (durations are told from it).
    pub now: SystemTime,
    /// Who signed the certificates: the lab CA's URL, or istiod and its address.
    pub ca_url: String,
    /// The gateway's certificate.
    pub gateway: SvidFacts,
    /// hello-app's certificate.
    pub hello: SvidFacts,
    /// How the app's connection was handed to node-1's proxy.
    pub capture: Capture,
    /// The service address the app dialed: hello-app's VIP and port.
    pub vip: SocketAddr,
    /// The hello-app pod address the VIP resolved to.
    pub endpoint: IpAddr,
    /// The mTLS handshake between the two node proxies, as node-1 saw it.
    pub tls: TlsInfo,
    /// The CONNECT target: hello-app's own address and port, not the VIP.
    pub target: SocketAddr,
    /// The other headers node-1 sent with the CONNECT request, as (name, value).
    pub request_headers: Vec<(String, String)>,
    /// The gateway's principal as policies name it (`<trust domain>/ns/<ns>/sa/<sa>`).
    pub principal: String,
    /// What node-2 decided, as recorded or as predicted.
    pub verdict: Verdict,
    /// Bytes the application sent (its HTTP request).
    pub sent: usize,
    /// Bytes the application got back.
    pub received: usize,
    /// The status line of hello-app's answer.
    pub status: String,
    /// node-2's metrics address, when it serves metrics.
    pub metrics: Option<SocketAddr>,
    /// When the real istiod fed the lab: what it sent node-2.
    pub istiod: Option<IstiodSent>,
}

/// What istiod sent the receiving proxy over delta ADS, as that proxy
/// holds it: the target workload and the policies that apply to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IstiodSent {
    /// istiod's address.
    pub url: String,
    /// The workload record: uid, addresses, node, identity, protocol, listed policies.
    pub workload: String,
    /// The policies in force for it (listed by it, or namespace- or
    /// mesh-wide), as istiod's YAML.
    pub policies_yaml: String,
}

/// What the receiving node proxy holds from istiod for `workload`.
fn istiod_sent(url: String, node: &hbone_proxy::ProxyHandle, workload: &str) -> Option<IstiodSent> {
    use hbone_policies::authorization::Scope;
    let registry = node.core.registry();
    let w = registry.workloads.iter().find(|w| &*w.name == workload)?;
    let policies = node.core.policies();
    let root = policies.root_namespace().to_string();
    let applying: Vec<_> = policies
        .policies()
        .iter()
        .filter(|p| match p.scope {
            Scope::WorkloadSelector => w.authorization_policies().contains(&p.key()),
            Scope::Namespace => *p.namespace == *w.namespace,
            Scope::Global => p.namespace == root,
        })
        .collect();
    let ips: Vec<String> = w.ips.iter().map(ToString::to_string).collect();
    Some(IstiodSent {
        url,
        workload: format!(
            "uid {}, addresses [{}], node {}, identity {}, protocol {}, policies listed [{}]",
            w.uid,
            ips.join(", "),
            w.node,
            w.identity(),
            format!("{:?}", w.protocol).to_uppercase(),
            w.authorization_policies().join(", ")
        ),
        policies_yaml: hbone_policies::authorization::render::istiod_yaml(applying),
    })
}

/// What a ztunnel on one node showed of the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZtunnelNode {
    /// The node it runs on (`node-1` or `node-2`).
    pub node: String,
    /// ztunnel's process id.
    pub pid: u32,
    /// How many pods it acknowledged from its ZDS node agent.
    pub pods: usize,
    /// Its access log lines for this connection.
    pub access_log: Vec<String>,
    /// Its `istio_tcp_connections_opened_total` lines for hello-app.
    pub metrics: Vec<String>,
}

/// The same connection with ztunnel on a node: hbone-lab cannot look
/// inside ztunnel, so the story quotes ztunnel's own evidence — its access
/// log lines for the connection and its connection metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZtunnelStory {
    /// The lab's data plane, by name (`ztunnel` or `mixed`).
    pub dataplane: &'static str,
    /// How many xDS clients were connected to the lab's control plane.
    pub xds_clients: usize,
    /// The client pod's name.
    pub gateway: String,
    /// The client pod's SPIFFE ID.
    pub gateway_identity: Identity,
    /// The server pod's name.
    pub hello: String,
    /// The server pod's address.
    pub hello_ip: IpAddr,
    /// The status line of the answer.
    pub status: String,
    /// Bytes the client got back.
    pub received: usize,
    /// What each node's ztunnel showed.
    pub nodes: Vec<ZtunnelNode>,
}

/// Either story, by the lab's data plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Told {
    /// Both nodes ran hbone-lab's proxy: the full story, from inside.
    HboneLab(Box<Story>),
    /// ztunnel ran on a node: the story from its own evidence.
    Ztunnel(Box<ZtunnelStory>),
}

impl fmt::Display for Told {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Told::HboneLab(story) => story.fmt(f),
            Told::Ztunnel(story) => story.fmt(f),
        }
    }
}

/// Tells the story of gateway → hello-app, opening one real connection.
pub async fn explain(lab: &Lab) -> Result<String, ExplainError> {
    Ok(gather(lab).await?.to_string())
}

/// Opens one real connection, gateway → hello-app, and keeps what happened.
pub async fn gather(lab: &Lab) -> Result<Told, ExplainError> {
    let gateway = std::sync::Arc::new(lab.pod("hello-gateway").clone());
    let hello = lab.pod("hello-app").clone();
    let (Some(node1), Some(node2)) = (lab.node("node-1"), lab.node("node-2")) else {
        return Ok(Told::Ztunnel(Box::new(gather_ztunnel(lab).await?)));
    };
    let certificate = |who| move |source| ExplainError::Certificate { who, source };
    let gw_svid = node1
        .core
        .certs
        .get(gateway.identity())
        .await
        .map_err(certificate("the gateway"))?;
    let app_svid = node2
        .core
        .certs
        .get(hello.identity())
        .await
        .map_err(certificate("hello-app"))?;
    let capture = match lab.mode {
        Mode::Loopback => Capture::Socks5 {
            port: node1.addrs.socks5.expect("socks5"),
            from: gateway.ips[0],
        },
        Mode::Netns => Capture::InPod,
    };
    let vip = SocketAddr::new(lab.mode.vips().0.parse().expect("literal"), HELLO_PORT);
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
    let request_headers = tunnel
        .request_headers
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_str().unwrap_or("?").to_string()))
        .collect();
    let target = route.target;
    let principal = gateway.identity().to_string();
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
        let gateway = gateway.clone();
        async move {
            let tunnel = hbone_proxy::outbound::Upstream::Tunnel(tunnel);
            let report = outbound.report(Direction::Outbound, client_addr);
            outbound
                .relay(report, proxy_side, &gateway, tunnel, route)
                .await;
        }
    });
    let answer = get(&mut app_side, &Get::once("hello-app", "/health"))
        .await
        .map_err(io("the request through the tunnel"))?;
    drop(app_side);
    let _ = relay.await;

    // The verdict as node-2 recorded it, not as predicted.
    let (_, recent) = node2.core.connections.snapshot();
    let seen = recent.iter().rev().find(|r| {
        r.dst_addr == target.to_string() && r.src_identity.as_deref() == Some(principal.as_str())
    });
    let verdict = match seen.and_then(|r| r.decision.as_ref().map(|d| (r, d))) {
        Some((record, decision)) => Verdict::Recorded {
            connection: record.id,
            admin: node2.addrs.admin,
            allowed: decision.allowed,
            reason: decision.reason.clone(),
            tls: record
                .tls
                .as_ref()
                .map(|t| (t.version.clone(), t.cipher.clone(), t.alpn.clone())),
        },
        None => Verdict::Predicted(
            predict(lab, Some("hello-gateway"), "hello-app", HELLO_PORT).to_string(),
        ),
    };
    let istiod = lab
        .istiod
        .as_ref()
        .and_then(|plane| istiod_sent(plane.control.istiod_url(), node2, "hello-app"));
    Ok(Told::HboneLab(Box::new(Story {
        now: SystemTime::now(),
        ca_url: match &lab.istiod {
            Some(plane) => format!("istiod, {}", plane.control.istiod_url()),
            None => lab.ca.url(),
        },
        istiod,
        gateway: SvidFacts::of(&gw_svid),
        hello: SvidFacts::of(&app_svid),
        capture,
        vip,
        endpoint: hello.ips[0],
        tls,
        target,
        request_headers,
        principal: gateway.identity().principal(),
        verdict,
        sent: answer.sent,
        received: answer.received,
        status: answer.status_line,
        metrics: node2.addrs.metrics,
    })))
}

impl Story {
    fn svid(&self, f: &mut fmt::Formatter<'_>, who: &str, svid: &SvidFacts) -> fmt::Result {
        let from_now =
            |t: SystemTime| human_duration(t.duration_since(self.now).unwrap_or_default());
        writeln!(f, "   {who}: {}", svid.identity)?;
        writeln!(
            f,
            "      serial {}, valid until {} ({} from now)",
            svid.serial,
            rfc3339(svid.not_after),
            from_now(svid.not_after)
        )?;
        writeln!(
            f,
            "      its proxy will renew it at {} (in {}), half of its lifetime",
            rfc3339(svid.refresh_at),
            from_now(svid.refresh_at)
        )
    }
}

impl fmt::Display for Story {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "How one request travels: the gateway calls hello-app through the mesh\n"
        )?;
        writeln!(
            f,
            "1. Identities. Each workload has an X.509 certificate (an SVID) whose only name is a SPIFFE ID."
        )?;
        writeln!(
            f,
            "   The node proxies made a key pair in memory, sent a CSR to the CA ({}) and got these back:",
            self.ca_url
        )?;
        self.svid(f, "gateway", &self.gateway)?;
        self.svid(f, "hello-app", &self.hello)?;

        writeln!(
            f,
            "\n2. The application opens a plain TCP connection to hello-app.demo.svc.cluster.local:{HELLO_PORT}."
        )?;
        match &self.capture {
            Capture::Socks5 { port, from } => {
                writeln!(
                    f,
                    "   In this loopback lab it asks node-1's SOCKS5 port ({port}) from its own pod address {from};"
                )?;
                writeln!(
                    f,
                    "   in a cluster (and with --netns), iptables inside the pod redirect it to the proxy's port 15001 instead."
                )?;
            }
            Capture::InPod => {
                writeln!(
                    f,
                    "   Inside the gateway pod's network namespace, iptables (nat OUTPUT) redirect it to port 15001,"
                )?;
                writeln!(
                    f,
                    "   where node-1's proxy listens in that same namespace — ambient's in-pod mode. The app never knows."
                )?;
            }
        }
        writeln!(
            f,
            "   node-1 resolves the service VIP {} to the endpoint {}:{HELLO_PORT} (hello-app, on node-2).",
            self.vip, self.endpoint
        )?;

        let tls = &self.tls;
        writeln!(
            f,
            "\n3. mTLS. node-1 connects from {} to {} — port 15008 is HBONE — and runs a TLS handshake:",
            tls.local, tls.peer
        )?;
        writeln!(
            f,
            "   version {}, cipher {}, ALPN \"{}\" (HTTP/2), no SNI, no session resumption.",
            tls.version, tls.cipher, tls.alpn
        )?;
        writeln!(
            f,
            "   node-1 presents the gateway's certificate ({}); node-2 presents hello-app's ({}).",
            self.gateway.serial, self.hello.serial
        )?;
        writeln!(
            f,
            "   Each side checks the other's chain up to the mesh root; node-1 also checks that the server's"
        )?;
        writeln!(
            f,
            "   SPIFFE ID is exactly {} — a stolen certificate of another workload would be refused.",
            self.hello.identity
        )?;

        writeln!(
            f,
            "\n4. The tunnel. Over that connection node-1 sends one HTTP/2 request per proxied TCP connection:"
        )?;
        writeln!(f, "   :method = CONNECT")?;
        writeln!(
            f,
            "   :authority = {}   (the workload's own address and port, not the VIP)",
            self.target
        )?;
        for (name, value) in &self.request_headers {
            writeln!(f, "   {name} = {value}")?;
        }

        writeln!(
            f,
            "\n5. The policy check, on the receiving side (node-2), before anything reached hello-app —"
        )?;
        match &self.verdict {
            Verdict::Recorded {
                connection,
                admin,
                allowed,
                reason,
                tls,
            } => {
                writeln!(
                    f,
                    "   as node-2 itself recorded it (connection {connection} in http://{}/debug/connections):",
                    admin.map_or("-".into(), |a| a.to_string())
                )?;
                let verdict = if *allowed { "allow" } else { "deny" };
                writeln!(
                    f,
                    "   peer principal {} → {verdict}: {reason}",
                    self.principal
                )?;
                let (version, cipher, alpn) = tls.clone().unwrap_or_else(|| {
                    let dash = || "-".to_string();
                    (dash(), dash(), dash())
                });
                writeln!(
                    f,
                    "   over {version} {cipher}, ALPN {alpn}; it then dialed {} and answered 200.",
                    self.target
                )?;
            }
            Verdict::Predicted(decision) => writeln!(
                f,
                "   node-2's connection log has no record of it; the policies predict: {} → {decision}",
                self.principal
            )?,
        }
        if let Some(sent) = &self.istiod {
            writeln!(
                f,
                "   It decided on what istiod ({}) sent it over delta ADS. The workload:",
                sent.url
            )?;
            writeln!(f, "     {}", sent.workload)?;
            writeln!(f, "   and the policies in force for it, as received:")?;
            for line in sent.policies_yaml.lines() {
                writeln!(f, "     {line}")?;
            }
        }
        writeln!(
            f,
            "\n6. The bytes. The application sent {} bytes (an HTTP GET /health) and received {} bytes (\"{}\").",
            self.sent, self.received, self.status
        )?;
        writeln!(
            f,
            "   The application never saw TLS, certificates or HTTP/2: the proxies did it all. The metrics at"
        )?;
        writeln!(
            f,
            "   http://{}/metrics count this connection under istio_tcp_connections_opened_total.",
            self.metrics.map_or("-".into(), |a| a.to_string())
        )
    }
}

async fn gather_ztunnel(lab: &Lab) -> Result<ZtunnelStory, ExplainError> {
    let gateway = lab.pod("hello-gateway").clone();
    let hello = lab.pod("hello-app").clone();
    let xds_clients = lab
        .xds
        .as_ref()
        .map(|x| x.clients().iter().filter(|c| c.connected).count())
        .unwrap_or(0);
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
    // ztunnel writes its access log line when the connection ends.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let mut nodes = Vec::new();
    for (z, offset) in lab.ztunnels.iter().zip(offsets) {
        let (lines, _) = z.log_since(offset);
        // The source ztunnel logs the client's own address; the destination
        // ztunnel logs the source pod's HBONE socket, so match by workload.
        let ours = |l: &&String| {
            l.contains("access")
                && (l.contains(&format!("src.addr={client}"))
                    || (*z.node != *gateway.node && l.contains("src.workload=\"hello-gateway\"")))
        };
        let metrics = hbone_harness::ztunnel::http_get(
            Some(z.ztunnel.netns()),
            ([127, 0, 0, 1], 15020).into(),
            "/metrics",
        )
        .await
        .map(|(_, body)| body)
        .unwrap_or_default();
        nodes.push(ZtunnelNode {
            node: z.node.clone(),
            pid: z.ztunnel.pid(),
            pods: z.agent.status().acked.len(),
            access_log: lines.iter().filter(ours).cloned().collect(),
            metrics: metrics
                .lines()
                .filter(|l| l.starts_with("istio_tcp_connections_opened_total"))
                .filter(|l| l.contains("hello-app"))
                .map(String::from)
                .collect(),
        });
    }
    Ok(ZtunnelStory {
        dataplane: lab.dataplane.name(),
        xds_clients,
        gateway: gateway.name.to_string(),
        gateway_identity: gateway.identity().clone(),
        hello: hello.name.to_string(),
        hello_ip: hello.ips[0],
        status: answer.status_line,
        received: answer.received,
        nodes,
    })
}

impl fmt::Display for ZtunnelStory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "How one request travels with {} as the data plane: the gateway calls hello-app\n",
            self.dataplane
        )?;
        writeln!(
            f,
            "1. The roles around ztunnel are hbone-lab's: istiod (its CA and xDS on 127.0.0.1:15012 in the node's namespace) and istio-cni (a ZDS node agent that handed ztunnel each pod's network namespace)."
        )?;
        for z in &self.nodes {
            writeln!(
                f,
                "   {}: ztunnel pid {} holds {} pod(s) over ZDS; xDS clients: {}",
                z.node, z.pid, z.pods, self.xds_clients
            )?;
        }
        writeln!(
            f,
            "\n2. {} ({}) opened a plain TCP connection to hello-app.demo.svc.cluster.local:{HELLO_PORT}; iptables in its pod sent it to the node proxy's 15001, which carried it over HBONE to {} ({}:15008). Answer: \"{}\" ({} bytes).",
            self.gateway,
            self.gateway_identity,
            self.hello,
            self.hello_ip,
            self.status,
            self.received
        )?;
        for z in &self.nodes {
            writeln!(f, "\n   ztunnel on {} logged:", z.node)?;
            for line in &z.access_log {
                writeln!(f, "     {line}")?;
            }
            for line in &z.metrics {
                writeln!(f, "     metric: {line}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn story(verdict: Verdict) -> Story {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let svid = |sa: &str, serial: &str| SvidFacts {
            identity: format!("spiffe://cluster.local/ns/demo/sa/{sa}")
                .parse()
                .unwrap(),
            serial: serial.into(),
            not_after: now + Duration::from_secs(24 * 3600),
            refresh_at: now + Duration::from_secs(12 * 3600),
        };
        Story {
            now,
            ca_url: "https://127.0.0.1:15012".into(),
            gateway: svid("hello-gateway-istio", "aa:01"),
            hello: svid("hello-app", "bb:02"),
            capture: Capture::InPod,
            vip: "10.96.0.10:8000".parse().unwrap(),
            endpoint: "10.244.2.3".parse().unwrap(),
            tls: TlsInfo {
                version: "TLSv1_3".into(),
                cipher: "TLS13_AES_128_GCM_SHA256".into(),
                alpn: "h2".into(),
                local: "10.244.1.1:40000".parse().unwrap(),
                peer: "10.244.2.3:15008".parse().unwrap(),
            },
            target: "10.244.2.3:8000".parse().unwrap(),
            request_headers: vec![("forwarded".into(), "for=\"10.244.1.5:50000\"".into())],
            principal: "cluster.local/ns/demo/sa/hello-gateway-istio".into(),
            verdict,
            sent: 60,
            received: 180,
            status: "HTTP/1.1 200 OK".into(),
            metrics: Some("10.244.2.1:15020".parse().unwrap()),
            istiod: None,
        }
    }

    #[test]
    fn the_story_tells_each_fact_where_it_belongs() {
        let recorded = Verdict::Recorded {
            connection: 7,
            admin: Some("10.244.2.1:15000".parse().unwrap()),
            allowed: true,
            reason: "ALLOW policy demo/hello-app-policy rules[0] matches".into(),
            tls: Some((
                "TLSv1_3".into(),
                "TLS13_AES_128_GCM_SHA256".into(),
                "h2".into(),
            )),
        };
        let text = story(recorded).to_string();
        for expected in [
            "serial aa:01, valid until 2027-01-16T08:00:00Z (24h 00m from now)",
            "(in 12h 00m), half of its lifetime",
            "iptables (nat OUTPUT) redirect it to port 15001",
            "resolves the service VIP 10.96.0.10:8000 to the endpoint 10.244.2.3:8000",
            "connects from 10.244.1.1:40000 to 10.244.2.3:15008",
            ":authority = 10.244.2.3:8000",
            "   forwarded = for=\"10.244.1.5:50000\"",
            "connection 7 in http://10.244.2.1:15000/debug/connections",
            "peer principal cluster.local/ns/demo/sa/hello-gateway-istio → allow: ALLOW policy",
            "sent 60 bytes (an HTTP GET /health) and received 180 bytes (\"HTTP/1.1 200 OK\")",
        ] {
            assert!(
                text.contains(expected),
                "{expected:?} is missing from\n{text}"
            );
        }
        let steps: Vec<_> = text
            .lines()
            .filter(|l| l.starts_with(char::is_numeric))
            .collect();
        assert_eq!(steps.len(), 6, "six numbered steps:\n{text}");
    }

    #[test]
    fn fed_by_istiod_the_story_quotes_what_istiod_sent() {
        let mut told = story(Verdict::Predicted("allow".into()));
        told.istiod = Some(IstiodSent {
            url: "https://127.0.0.1:40123".into(),
            workload: "uid Kubernetes//Pod/demo/hello-app, policies listed [demo/hello-app-policy]"
                .into(),
            policies_yaml: "- name: hello-app-policy\n  namespace: demo\n".into(),
        });
        let text = told.to_string();
        for expected in [
            "what istiod (https://127.0.0.1:40123) sent it over delta ADS",
            "     uid Kubernetes//Pod/demo/hello-app, policies listed [demo/hello-app-policy]",
            "     - name: hello-app-policy",
        ] {
            assert!(
                text.contains(expected),
                "{expected:?} is missing from\n{text}"
            );
        }
    }

    #[test]
    fn without_a_record_the_story_says_it_predicts() {
        let text = story(Verdict::Predicted("deny (no ALLOW policy matches)".into())).to_string();
        assert!(
            text.contains("has no record of it; the policies predict: cluster.local/ns/demo/sa/hello-gateway-istio → deny"),
            "{text}"
        );
        assert!(!text.contains("/debug/connections"), "{text}");
    }
}
