//! Why the proxy refused something, as types: every refusal is counted in
//! `hbone_refusals_total{direction, reason}`, and with a typed reason a
//! typo cannot open a new metric series. `as_str` gives the label.
//!
//! Also how a refusal travels back to the client: the response header both
//! ends of an HBONE tunnel built by hbone-lab understand.

use std::fmt;

/// Response header that names why a CONNECT was refused, by its reason's
/// class only (`policy_denied`, never the policy: that stays in the
/// refusing proxy's log and `/debug/connections`). An hbone-lab addition;
/// ztunnel sends none, and its clients ignore it.
pub const REFUSAL_HEADER: &str = "hbone-lab-refusal";

/// Where the refused connection was going.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// HBONE arriving on 15008.
    Inbound,
    /// Captured outbound (15001).
    Outbound,
    /// Plaintext arriving on 15006.
    Plaintext,
    /// Through the SOCKS5 port (15080).
    Socks5,
    /// To the admin, metrics or readiness port.
    Admin,
}

impl Direction {
    /// The metric label (`hbone_refusals_total{direction}`) and the log field.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
            Direction::Plaintext => "plaintext",
            Direction::Socks5 => "socks5",
            Direction::Admin => "admin",
        }
    }

    /// The connection log's name: ztunnel's `inbound_plaintext` for the
    /// plaintext port, otherwise the same as [`Direction::as_str`].
    pub fn log_name(self) -> &'static str {
        match self {
            Direction::Plaintext => "inbound_plaintext",
            other => other.as_str(),
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

macro_rules! reasons {
    ($($variant:ident => $label:literal: $doc:literal,)*) => {
        /// Why a connection, handshake or stream was refused.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Reason {
            $(#[doc = $doc] $variant,)*
        }

        impl Reason {
            /// Every reason, for documentation and tests.
            pub const ALL: &'static [Reason] = &[$(Reason::$variant,)*];

            /// The metric label.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Reason::$variant => $label,)*
                }
            }
        }
    };
}

reasons! {
    PolicyDenied => "policy_denied": "An AuthorizationPolicy (or STRICT) refused it.",
    PolicyRevoked => "policy_revoked": "A policy change refused a stream that was already open.",
    NotTls => "not_tls": "Bytes that are not TLS arrived on the HBONE port.",
    HandshakeAborted => "handshake_aborted": "The peer went away during the TLS handshake.",
    HandshakeTimeout => "handshake_timeout": "No TLS handshake completed in time.",
    TlsHandshake => "tls_handshake": "The TLS handshake failed for another reason.",
    TlsVersion => "tls_version": "The peer offered no TLS version we speak (1.3 only).",
    NoClientCert => "no_client_cert": "The peer presented no certificate.",
    Alpn => "alpn": "The peer did not offer HTTP/2 (ALPN h2).",
    ExpiredCertificate => "expired_certificate": "The peer's certificate has expired.",
    CertificateNotYetValid => "certificate_not_yet_valid": "The peer's certificate is not valid yet.",
    UntrustedCertificate => "untrusted_certificate": "The peer's certificate does not chain to our roots.",
    CertificateRevoked => "certificate_revoked": "The peer's certificate is on the CA's revocation list.",
    BadCertificate => "bad_certificate": "The peer's certificate is unusable.",
    PeerAlert => "peer_alert": "The peer aborted the handshake with a TLS alert.",
    NoSpiffeId => "no_spiffe_id": "The peer's certificate carries no Istio SPIFFE identity.",
    ForeignTrustDomain => "foreign_trust_domain": "The peer's identity is in another trust domain.",
    UnexpectedServerIdentity => "unexpected_server_identity": "The server is not the identity we dialed.",
    NoCertificate => "no_certificate": "We have no certificate for the workload yet.",
    NoLocalWorkload => "no_local_workload": "The destination is not a workload on this node.",
    TooManyStreams => "too_many_streams": "The HBONE connection carries the most streams allowed.",
    TooManyConnections => "too_many_connections": "The proxy holds the most connections allowed (listeners.maxConnections).",
    NotConnect => "not_connect": "An HTTP/2 request that is not CONNECT.",
    BadAuthority => "bad_authority": "The CONNECT's :authority is not ip:port.",
    AuthorityMismatch => "authority_mismatch": "The CONNECT names another workload than the one dialed.",
    ProxyPort => "proxy_port": "The CONNECT aims at one of the proxy's own ports.",
    UpstreamUnreachable => "upstream_unreachable": "The destination application did not accept.",
    ConnectFailed => "connect_failed": "The TCP connect to the destination failed.",
    H2Error => "h2_error": "HTTP/2 with the destination proxy failed.",
    H2Handshake => "h2_handshake": "The client completed TLS but not the HTTP/2 handshake.",
    H2Abuse => "h2_abuse": "The peer crossed an HTTP/2 limit (rapid reset, too many errors) and its connection was closed.",
    ClientTimeout => "client_timeout": "The client connected and did not finish its part in time (its SOCKS5 request, its HTTP/2 preface).",
    BadRequest => "bad_request": "The destination proxy answered 400.",
    UpstreamUnavailable => "upstream_unavailable": "The destination proxy answered another error.",
    Timeout => "timeout": "The tunnel was not up in time.",
    NoRoute => "no_route": "Nowhere to send the connection.",
    NotRedirected => "not_redirected": "A captured connection without its original destination.",
    UnknownSource => "unknown_source": "The connection comes from no workload of this node.",
    NotSocks5 => "not_socks5": "Bytes that are not SOCKS5 arrived on the SOCKS5 port.",
    Socks5Method => "socks5_method": "The client offered no SOCKS5 method we accept.",
    Socks5Command => "socks5_command": "A SOCKS5 command other than CONNECT.",
    Socks5AddressType => "socks5_address_type": "A SOCKS5 address type we do not read.",
    Unresolvable => "unresolvable": "A name the registry does not know.",
    Socks5Io => "socks5_io": "The SOCKS5 exchange broke off.",
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_distinct_snake_case() {
        let mut seen = std::collections::BTreeSet::new();
        for r in Reason::ALL {
            let label = r.as_str();
            assert!(
                label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_' || b.is_ascii_digit()),
                "{label}"
            );
            assert!(seen.insert(label), "{label} twice");
        }
    }
}
