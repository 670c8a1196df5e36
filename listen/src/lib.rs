//! hbone-listen: how every port of hbone-lab accepts connections.
//!
//! A hostile pass over the lab's ports (issue 30) found that the one port
//! built with bounds — HBONE's 15008 — held, and every other fell over: the
//! CA port kept 20 000 half-finished TLS handshakes until the process ran
//! out of descriptors, and 20 000 admin requests that never finished their
//! headers starved a node's real traffic. So there is one way to accept,
//! and every listener uses it:
//!
//! - [`limit`]: a per-listener cap on connections held at once. Past it, a
//!   new connection is closed as soon as it is accepted and counted — a
//!   storm costs a refusal each, not memory or descriptors.
//! - [`Acceptor`]: the accept loop's one step — backs off (10 ms doubling
//!   to 1 s) while the process is out of descriptors instead of spinning,
//!   applies the cap, and hands over each connection with its place under
//!   the cap ([`Admitted`]), given back when the connection is dropped.
//! - [`Bounds`]: how long a client may take to finish its handshake or
//!   headers, how long one request may take, and the cap — the figures
//!   every server of the lab is configured with, in one place.
//!
//! The protocol above the socket applies the time bounds itself (TLS
//! handshake, HTTP header read, gRPC request timeout), since only it knows
//! where its first bytes end; this crate gives them the figures.

#![forbid(unsafe_code)]

mod acceptor;
pub mod limit;

use std::time::Duration;

pub use acceptor::{Acceptor, Admitted};
pub use limit::{ConnectionLimit, Permit};

/// The bounds of one listener against clients that have not authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Connections held at once; past it new ones are closed at accept and
    /// counted. 0: no cap.
    pub max_connections: usize,
    /// How long a client has to finish its TLS handshake or send its
    /// request headers after connecting.
    pub first_bytes: Duration,
    /// How long one request may take, its body included (not a stream:
    /// an xDS stream lives as long as its client).
    pub request: Duration,
    /// Streams one HTTP/2 connection may have open at once.
    pub streams_per_connection: u32,
}

impl Bounds {
    /// The CA and control-plane port (15012): node proxies keep one
    /// connection each with a stream or two, and a certificate request is
    /// a few kilobytes answered in milliseconds.
    pub const CONTROL_PLANE: Bounds = Bounds {
        max_connections: 1024,
        first_bytes: Duration::from_secs(10),
        request: Duration::from_secs(10),
        streams_per_connection: 16,
    };

    /// Admin, metrics and readiness: read by people and scrapers, one
    /// short GET at a time.
    pub const ADMIN: Bounds = Bounds {
        max_connections: 64,
        first_bytes: Duration::from_secs(10),
        request: Duration::from_secs(30),
        streams_per_connection: 1,
    };
}
