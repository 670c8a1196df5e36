//! The addresses a connection must never be carried to: this proxy's own
//! listeners (every port it actually bound, random ones included) and the
//! CA and control plane it talks to.
//!
//! A pod that could send a SOCKS5 CONNECT to its node proxy's admin port
//! read `/config_dump` and `/certs` with the proxy's own reach (a hostile
//! pass, issue 30 finding 5). ztunnel refuses any destination that is one
//! of its own before looking anything up; so does every entry point here
//! (SOCKS5, captured outbound, plaintext inbound, HBONE CONNECT), counted
//! as `proxy_port`.
//!
//! A destination matches an own address when the ports are equal and the
//! IPs are, after unmapping an IPv4-mapped IPv6 address
//! (`::ffff:127.0.0.1` is 127.0.0.1). A listener on an unspecified address
//! (`0.0.0.0`, `::`) is reached through any loopback address, and a
//! destination `0.0.0.0` reaches whatever listens locally on its port, so
//! both count as a match.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use arc_swap::ArcSwap;

/// The set, read on every connection without a lock.
#[derive(Debug, Default)]
pub struct OwnAddrs(ArcSwap<Vec<SocketAddr>>);

impl OwnAddrs {
    /// Adds `addrs` to the set.
    pub fn add(&self, addrs: impl IntoIterator<Item = SocketAddr>) {
        let mut all = self.0.load().as_ref().clone();
        for addr in addrs {
            let addr = canonical(addr);
            if !all.contains(&addr) {
                all.push(addr);
            }
        }
        self.0.store(Arc::new(all));
    }

    /// Whether a connection to `dst` would reach one of the addresses.
    pub fn contains(&self, dst: SocketAddr) -> bool {
        let dst = canonical(dst);
        self.0.load().iter().any(|own| reaches(dst, *own))
    }

    /// Every address in the set.
    pub fn all(&self) -> Vec<SocketAddr> {
        self.0.load().as_ref().clone()
    }
}

fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), addr.port()),
            None => addr,
        },
        IpAddr::V4(_) => addr,
    }
}

fn reaches(dst: SocketAddr, own: SocketAddr) -> bool {
    dst.port() == own.port()
        && (dst.ip() == own.ip()
            || dst.ip().is_unspecified()
            || (own.ip().is_unspecified() && dst.ip().is_loopback()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn every_local_form_of_an_own_address_matches() {
        let own = OwnAddrs::default();
        own.add([a("127.0.11.1:15000"), a("0.0.0.0:15020"), a("[::]:15021")]);
        for hit in [
            "127.0.11.1:15000",
            "[::ffff:127.0.11.1]:15000",
            "0.0.0.0:15000",
            "127.0.0.1:15020",
            "127.9.9.9:15020",
            "[::1]:15021",
            "[::ffff:127.0.0.1]:15021",
        ] {
            assert!(own.contains(a(hit)), "{hit} reaches the proxy");
        }
        for miss in [
            "127.0.11.2:15000",
            "127.0.11.1:15001",
            "10.0.0.5:15020",
            "[2001:db8::1]:15021",
        ] {
            assert!(!own.contains(a(miss)), "{miss} is not the proxy");
        }
    }

    #[test]
    fn an_address_added_twice_is_kept_once_and_unmapped() {
        let own = OwnAddrs::default();
        own.add([a("[::ffff:127.0.0.1]:15012"), a("127.0.0.1:15012")]);
        assert_eq!(own.all(), [a("127.0.0.1:15012")]);
    }
}
