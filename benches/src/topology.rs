//! The benchmark path: a client pod and a server pod, each in its own
//! network namespace, joined by a veth pair — the same two-namespace path
//! on which one ztunnel per pod namespace (dedicated mode) is measured.
//! Capture rules in the client pod send its outbound TCP to port 15001
//! while a mesh subject runs, exempting the proxies' own marked sockets.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use hbone_harness::netns::{NetNs, NetnsError, outbound_capture_rules, veth};
use hbone_proxy::net::pod_sockets::{self, Netns, bind_listener, tcp_socket};
use hbone_workloads::dial::{Connect, Dialer, futures_lite::BoxedConnect};

/// The client pod's address.
pub const CLIENT_IP: &str = "10.253.0.1";
/// The server pod's address.
pub const SERVER_IP: &str = "10.253.0.2";

/// The benchmark's two pods: a network namespace each, joined by a veth.
pub struct Topology {
    /// The client pod.
    pub client: NetNs,
    /// The server pod.
    pub server: NetNs,
}

/// Opens sockets inside a namespace (the load generator's client side).
#[derive(Debug)]
struct InNamespace(Netns);

impl Connect for InNamespace {
    fn connect(&self, addr: SocketAddr) -> BoxedConnect {
        let netns = self.0.clone();
        Box::pin(async move {
            let socket =
                tcp_socket(Some(&netns), addr, None, None).map_err(std::io::Error::other)?;
            socket.connect(addr).await
        })
    }
}

/// The capture chain; [`Topology::capture`] jumps to it or not.
const CAPTURE_CHAIN: &str = "HBONE_LAB_OUTPUT";
/// The CA is infrastructure, not workload traffic: a dedicated-mode ztunnel
/// dials it from inside the pod, unmarked, and must not be sent to itself.
const CA_PORT: u16 = 15012;

impl Topology {
    /// Creates both namespaces and the veth between them (root).
    pub fn create() -> Result<Self, NetnsError> {
        let tag = std::process::id() % 100_000;
        let client = NetNs::create(&format!("hlb-c-{tag}"))?;
        let server = NetNs::create(&format!("hlb-s-{tag}"))?;
        veth(
            &client,
            "eth0",
            &format!("{CLIENT_IP}/24"),
            &server,
            "eth0",
            &format!("{SERVER_IP}/24"),
        )?;
        for rule in outbound_capture_rules(CAPTURE_CHAIN, &[CA_PORT]) {
            client.exec(
                "iptables",
                &rule.iter().map(String::as_str).collect::<Vec<_>>(),
            )?;
        }
        // Connection-rate runs open tens of thousands of connections from
        // one address to one port: without reuse of TIME_WAIT ports and the
        // wider ephemeral range, every subject (direct too) fell from ~5500
        // to ~500 connections/s once the ports ran out. The range starts
        // above every port the subjects listen on (15xxx, 52xx).
        for ns in [&client, &server] {
            ns.exec(
                "sysctl",
                &[
                    "-qw",
                    "net.ipv4.tcp_tw_reuse=1",
                    "net.ipv4.ip_local_port_range=20000 65535",
                ],
            )?;
        }
        Ok(Topology { client, server })
    }

    /// The server pod's address.
    pub fn server_ip(&self) -> IpAddr {
        SERVER_IP.parse().expect("literal")
    }

    /// Turns the client pod's redirection to 15001 on or off.
    /// Idempotent: the jump into the capture chain is present exactly when `on`.
    pub fn capture(&self, on: bool) -> Result<(), NetnsError> {
        let rule = |action: &str| {
            self.client.exec(
                "iptables",
                &["-t", "nat", action, "OUTPUT", "-j", CAPTURE_CHAIN],
            )
        };
        let present = rule("-C").is_ok();
        match (on, present) {
            (true, false) => rule("-A").map(|_| ()),
            (false, true) => rule("-D").map(|_| ()),
            _ => Ok(()),
        }
    }

    /// The load generator's way out of the client pod.
    pub fn client_dialer(&self) -> Dialer {
        Dialer::Custom(Arc::new(InNamespace(self.client.sockets().clone())))
    }

    /// A listener inside the server pod.
    pub fn server_listener(&self, port: u16) -> Result<tokio::net::TcpListener, NetnsError> {
        let std = bind_listener(
            Some(self.server.sockets()),
            SocketAddr::new(self.server_ip(), port),
        )?;
        tokio::net::TcpListener::from_std(std).map_err(|source| {
            NetnsError::Inside(pod_sockets::NetnsError::Socket {
                path: self.server.path(),
                source,
            })
        })
    }
}
