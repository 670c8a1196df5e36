//! The sending side: from a captured (or SOCKS5) TCP connection to the
//! destination, through an HBONE tunnel when the destination is meshed.
//!
//! The destination is looked up in the registry (a service VIP picks an
//! endpoint; a workload IP is itself). A meshed destination gets a CONNECT
//! stream to `<its IP>:15008` with `:authority` = `<its IP>:<target port>`,
//! carrying ztunnel's `forwarded`, `traceparent` and `baggage` headers; a
//! TCP-protocol or unknown destination gets plain passthrough.

pub mod capture;
pub mod pool;
pub mod socks5;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::{HeaderMap, HeaderValue};
use thiserror::Error;
use tokio::net::TcpStream;

use crate::observe::metrics::ConnectionLabels;
use crate::observe::refusal::{Direction, Reason};
use crate::observe::report::ConnectionReport;
use crate::outbound::pool::{Pool, PoolKey, Tunnel, TunnelError};
use crate::registry::{Destination, Protocol, Service, Workload};
use crate::state::ProxyCore;

/// Why an outbound connection could not be opened.
#[derive(Debug, Error)]
pub enum OutboundError {
    /// The registry cannot resolve the destination (a service without that port or any endpoint).
    #[error("no route to {0}: {1}")]
    NoRoute(SocketAddr, #[source] crate::registry::ResolveError),
    /// A destination that is not meshed could not be dialed.
    #[error("cannot reach {addr} directly: {source}")]
    Direct {
        /// The address dialed.
        addr: SocketAddr,
        /// The dial error.
        #[source]
        source: std::io::Error,
    },
    /// The destination is one of this proxy's own listeners, or its CA or
    /// control plane ([`crate::state::own_addrs`]).
    #[error("{0} is the proxy's own (its listener, CA or control plane)")]
    SelfCall(SocketAddr),
    /// The HBONE tunnel could not be opened.
    #[error(transparent)]
    Tunnel(#[from] TunnelError),
    /// The benchmark tunnel could not be opened.
    #[cfg(feature = "bench-rungs")]
    #[error("bench tunnel: {0}")]
    Bench(#[from] crate::bench_tunnel::BenchTunnelError),
}

impl OutboundError {
    /// The refusal reason this error is counted and logged under.
    pub fn reason(&self) -> Reason {
        match self {
            OutboundError::NoRoute(..) => Reason::NoRoute,
            OutboundError::SelfCall(_) => Reason::ProxyPort,
            OutboundError::Direct { .. } => Reason::ConnectFailed,
            OutboundError::Tunnel(t) => t.reason(),
            #[cfg(feature = "bench-rungs")]
            OutboundError::Bench(b) => b.reason(),
        }
    }
}

/// Where an outbound connection is going, as decided.
#[derive(Debug, Clone)]
pub struct Route {
    /// The address the client asked for: a service VIP, a workload IP or anything else.
    pub original: SocketAddr,
    /// Where it goes: the chosen endpoint's IP and target port, or `original` passed through.
    pub target: SocketAddr,
    /// The destination workload, when the registry knows it.
    pub workload: Option<Arc<Workload>>,
    /// The service the client dialed, if it dialed one.
    pub service: Option<Arc<Service>>,
}

/// An upstream ready to carry bytes.
pub enum Upstream {
    /// A CONNECT stream over a pooled HBONE connection.
    Tunnel(Box<Tunnel>),
    /// A plain TCP connection to a destination that is not meshed.
    Direct(TcpStream),
    /// A benchmark-only rung below HBONE ([`crate::bench_tunnel`]).
    #[cfg(feature = "bench-rungs")]
    Bench(crate::bench_tunnel::BenchUpstream),
}

/// The sending side the captured and SOCKS5 listeners share: routes each
/// connection and opens its upstream.
pub struct Outbound {
    core: Arc<ProxyCore>,
    pool: Arc<Pool>,
    round_robin: AtomicUsize,
}

impl Outbound {
    /// Routes with `core`'s registry and opens tunnels from `pool`.
    pub fn new(core: Arc<ProxyCore>, pool: Arc<Pool>) -> Self {
        Outbound {
            core,
            pool,
            round_robin: AtomicUsize::new(0),
        }
    }

    /// The HBONE connection pool the tunnels come from.
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// Decides the route for `dst` and opens the upstream.
    pub async fn open(
        &self,
        source: &Workload,
        client: SocketAddr,
        dst: SocketAddr,
    ) -> Result<(Upstream, Route), OutboundError> {
        // Boxed: the dial and handshake states are large and short-lived, and
        // the caller's task outlives them by as long as the connection idles.
        Box::pin(self.open_in_place(source, client, dst)).await
    }

    async fn open_in_place(
        &self,
        source: &Workload,
        client: SocketAddr,
        dst: SocketAddr,
    ) -> Result<(Upstream, Route), OutboundError> {
        if self.core.own.contains(dst) {
            return Err(OutboundError::SelfCall(dst));
        }
        let pick = self.round_robin.fetch_add(1, Ordering::Relaxed);
        let registry = self.core.registry();
        let destination = registry
            .resolve(dst, pick)
            .map_err(|e| OutboundError::NoRoute(dst, e))?;
        let (workload, addr, service) = match destination {
            Destination::Workload {
                workload,
                addr,
                service,
            } => (Some(workload), addr, service),
            Destination::External(addr) => (None, addr, None),
        };
        let route = Route {
            original: dst,
            target: addr,
            workload: workload.cloned(),
            service: service.cloned(),
        };
        if let Some(workload) = workload.filter(|w| w.protocol == Protocol::Hbone) {
            #[cfg(feature = "bench-rungs")]
            if let Some(mode) = self.core.bench_tunnel {
                let stream =
                    crate::bench_tunnel::open(&self.core, mode, source, workload, addr).await?;
                return Ok((Upstream::Bench(stream), route));
            }
            let key = PoolKey {
                source: source.identity().clone(),
                destination: workload.identity().clone(),
                addr: SocketAddr::new(addr.ip(), self.core.hbone_port),
                source_ip: self.core.bind_source_ip.then(|| source.ips[0]),
            };
            let headers = connect_headers(source, client, service.map(Arc::as_ref));
            let tunnel = self.pool.open(&key, addr, headers).await?;
            return Ok((Upstream::Tunnel(Box::new(tunnel)), route));
        }
        let stream = self
            .core
            .connect(Some(source), None, addr)
            .await
            .map_err(|source| OutboundError::Direct { addr, source })?;
        Ok((Upstream::Direct(stream), route))
    }

    /// The report of a connection from `client` (see
    /// [`crate::observe::report`]).
    pub fn report(&self, direction: Direction, client: SocketAddr) -> ConnectionReport<'_> {
        self.core.report(direction, Some(client), None)
    }

    /// Carries bytes between the client and the upstream until both sides
    /// are done. The labels are settled before the returned future starts:
    /// it lives as long as the connection, so it holds only what the copy and
    /// the report need.
    pub fn relay<'a>(
        &'a self,
        mut report: ConnectionReport<'a>,
        client: TcpStream,
        source: &'a Arc<Workload>,
        upstream: Upstream,
        route: Route,
    ) -> impl Future<Output = ()> + Send + 'a {
        let mtls = match upstream {
            Upstream::Tunnel(_) => true,
            #[cfg(feature = "bench-rungs")]
            Upstream::Bench(ref b) => b.mtls(),
            Upstream::Direct(_) => false,
        };
        let labels = ConnectionLabels::new(
            "source",
            Some(source),
            Some(source.identity().to_string()),
            route.workload.as_deref(),
            route.service.as_deref(),
            mtls,
        );
        let record = report.record();
        record.dst_addr = Some(route.target);
        record.src_workload = Some(source.clone());
        record.dst_workload = route.workload.clone();
        let open = report.open(labels);
        async move {
            // Bytes from the client on to the upstream, and back.
            let (onward, back, error) = match upstream {
                Upstream::Tunnel(tunnel) => {
                    let (send, recv, slot) = tunnel.into_stream();
                    let (moved, error) = crate::net::copy::bidirectional(client, send, recv).await;
                    drop(slot);
                    (moved.to_tunnel, moved.from_tunnel, error)
                }
                #[cfg(feature = "bench-rungs")]
                Upstream::Bench(bench) => bench.relay(client).await,
                Upstream::Direct(mut stream) => {
                    let mut client = client;
                    match tokio::io::copy_bidirectional(&mut client, &mut stream).await {
                        Ok((up, down)) => (up, down, None),
                        Err(e) => (0, 0, Some(e)),
                    }
                }
            };
            let error = error.as_ref().map(|e| e as &dyn std::fmt::Display);
            open.finish(back, onward, false, error);
        }
    }
}

/// ztunnel's CONNECT headers: `forwarded` (with the service host when one was used),
/// a W3C `traceparent`, and `baggage` describing the source.
fn connect_headers(source: &Workload, client: SocketAddr, service: Option<&Service>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let mut forwarded = format!("for=\"{client}\"");
    if let Some(s) = service {
        forwarded.push_str(&format!(";host={}", s.hostname("cluster.local")));
    }
    let trace: u128 = rand::random();
    let span: u64 = rand::random();
    let app = source
        .labels
        .get("app")
        .cloned()
        .unwrap_or_else(|| source.name.to_string());
    let version = source
        .labels
        .get("version")
        .cloned()
        .unwrap_or_else(|| "latest".into());
    let baggage = format!(
        "k8s.cluster.name=Kubernetes,k8s.namespace.name={},k8s.pod.name={},service.name={app},service.version={version}",
        source.namespace, source.name
    );
    for (name, value) in [
        ("forwarded", forwarded),
        ("traceparent", format!("00-{trace:032x}-{span:016x}-01")),
        ("baggage", baggage),
    ] {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(labels: &[(&str, &str)]) -> Workload {
        Workload {
            name: "gw-7f9c".into(),
            namespace: "demo".into(),
            labels: std::sync::Arc::new(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Workload::default()
        }
    }

    #[test]
    fn connect_headers_describe_the_source_as_ztunnel_does() {
        let client: SocketAddr = "10.0.0.1:40000".parse().unwrap();
        let service = Service {
            name: "hello-app".into(),
            namespace: "demo".into(),
            hostname: None,
            vips: Vec::new(),
            ports: Default::default(),
            selector: None,
        };
        /// (the source's labels, the service dialed, `forwarded`, how `baggage` ends)
        type Case<'a> = (
            &'a [(&'a str, &'a str)],
            Option<&'a Service>,
            &'a str,
            &'a str,
        );
        let cases: [Case<'_>; 3] = [
            (
                &[],
                None,
                "for=\"10.0.0.1:40000\"",
                "service.name=gw-7f9c,service.version=latest",
            ),
            (
                &[("app", "gateway"), ("version", "v2")],
                None,
                "for=\"10.0.0.1:40000\"",
                "service.name=gateway,service.version=v2",
            ),
            (
                &[("app", "gateway")],
                Some(&service),
                "for=\"10.0.0.1:40000\";host=hello-app.demo.svc.cluster.local",
                "service.name=gateway,service.version=latest",
            ),
        ];
        for (labels, service, forwarded, baggage_end) in cases {
            let h = connect_headers(&source(labels), client, service);
            assert_eq!(h["forwarded"], forwarded, "{labels:?}");
            let baggage = h["baggage"].to_str().unwrap();
            assert!(
                baggage.starts_with(
                    "k8s.cluster.name=Kubernetes,k8s.namespace.name=demo,k8s.pod.name=gw-7f9c,"
                ) && baggage.ends_with(baggage_end),
                "{baggage}"
            );
            // 00-<32 hex trace>-<16 hex span>-01
            let trace = h["traceparent"].to_str().unwrap();
            let parts: Vec<&str> = trace.split('-').collect();
            assert_eq!(parts.len(), 4, "{trace}");
            assert_eq!((parts[0], parts[3]), ("00", "01"), "{trace}");
            assert_eq!((parts[1].len(), parts[2].len()), (32, 16), "{trace}");
        }
    }
}
