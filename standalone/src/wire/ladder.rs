//! One HBONE connection as a ladder: each packet that carries something
//! (bare TCP ACKs are counted, not shown) on a line with its time from the
//! connection's first packet, its size on the wire and its direction, then
//! what Wireshark's dissectors found in it — TCP flags, TLS handshake
//! messages with the SPIFFE IDs of the certificates, HTTP/2 frames with the
//! CONNECT's headers and the first bytes of the application's data.

use std::fmt::Write as _;

use super::decode::{Connection, H2Frame, Packet};

fn handshake_name(t: u8) -> &'static str {
    match t {
        1 => "ClientHello",
        2 => "ServerHello",
        4 => "NewSessionTicket",
        8 => "EncryptedExtensions",
        11 => "Certificate",
        13 => "CertificateRequest",
        15 => "CertificateVerify",
        20 => "Finished",
        _ => "handshake",
    }
}

fn suite_name(hex: &str) -> String {
    match hex {
        "0x1301" => "TLS_AES_128_GCM_SHA256".into(),
        "0x1302" => "TLS_AES_256_GCM_SHA384".into(),
        "0x1303" => "TLS_CHACHA20_POLY1305_SHA256".into(),
        other => other.to_string(),
    }
}

/// The first bytes of `data`, printable, with line ends shown.
pub fn preview(data: &[u8], max: usize) -> String {
    let mut out = String::new();
    for &b in data.iter().take(max) {
        match b {
            b'\r' => out.push_str("\\r"),
            b'\n' => out.push_str("\\n"),
            0x20..=0x7e => out.push(b as char),
            _ => out.push('.'),
        }
    }
    if data.len() > max {
        out.push('…');
    }
    out
}

fn frame_text(f: &H2Frame) -> String {
    let end = if f.end_stream { " END_STREAM" } else { "" };
    match f.kind {
        "HEADERS" => {
            let fields: Vec<String> = f.headers.iter().map(|(n, v)| format!("{n}: {v}")).collect();
            format!("HEADERS[{}]{end} {{ {} }}", f.stream, fields.join(", "))
        }
        "DATA" if f.data.is_empty() => format!("DATA[{}]{end} (empty)", f.stream),
        "DATA" => format!(
            "DATA[{}]{end} {} B \"{}\"",
            f.stream,
            f.length,
            preview(&f.data, 40)
        ),
        kind => format!("{kind}[{}]", f.stream),
    }
}

/// What one packet carries, in words; `None` for a bare ACK.
pub fn describe(p: &Packet) -> Option<String> {
    let mut parts = Vec::new();
    let mut flags = Vec::new();
    if p.syn {
        flags.push(if p.ack { "SYN, ACK" } else { "SYN" });
    }
    if p.fin {
        flags.push("FIN");
    }
    if p.reset {
        flags.push("RST");
    }
    if !flags.is_empty() {
        parts.push(format!("TCP {}", flags.join(", ")));
    }
    if !p.handshakes.is_empty() {
        let mut names: Vec<String> = Vec::new();
        for t in &p.handshakes {
            let name = handshake_name(*t);
            let detail = match t {
                1 => format!(
                    "{name} (ALPN {}, {}, offers {})",
                    if p.alpn.is_empty() {
                        "none".into()
                    } else {
                        p.alpn.join(",")
                    },
                    if p.sni.is_empty() {
                        "no SNI".to_string()
                    } else {
                        format!("SNI {}", p.sni.join(","))
                    },
                    p.cipher_suites
                        .iter()
                        .map(|s| suite_name(s))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                2 => format!(
                    "{name} ({})",
                    p.cipher_suites
                        .first()
                        .map_or("-".into(), |s| suite_name(s))
                ),
                11 if !p.spiffe_ids.is_empty() => {
                    format!("{name} [{}]", p.spiffe_ids.join(", "))
                }
                _ => name.to_string(),
            };
            names.push(detail);
        }
        parts.push(format!("TLS {}", names.join(", ")));
    }
    if p.preface {
        parts.push("HTTP/2 preface \"PRI * HTTP/2.0\"".into());
    }
    if !p.frames.is_empty() {
        let frames: Vec<String> = p.frames.iter().map(frame_text).collect();
        parts.push(format!("HTTP/2 {}", frames.join(", ")));
    }
    if parts.is_empty() && p.tcp_len > 0 {
        parts.push(format!("{} B of TLS records", p.tcp_len));
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// What one packet carries, in a few words for a diagram's arrow: the
/// frame that matters first (a CONNECT and its authority, a status, data),
/// the rest after it; `None` for a bare ACK.
pub fn summary(p: &Packet) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    for f in &p.frames {
        let header = |name: &str| {
            f.headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        match f.kind {
            "HEADERS" => match (header(":method"), header(":authority"), header(":status")) {
                (Some(m), Some(a), _) => parts.insert(0, format!("HEADERS[{}] {m} {a}", f.stream)),
                (_, _, Some(status)) => {
                    parts.insert(0, format!("HEADERS[{}] :status {status}", f.stream))
                }
                _ => parts.push(format!("HEADERS[{}]", f.stream)),
            },
            "DATA" if f.end_stream && f.data.is_empty() => {
                parts.push(format!("DATA[{}] END_STREAM", f.stream))
            }
            "DATA" => parts.insert(0, format!("DATA[{}] {} B", f.stream, f.length)),
            kind if !parts.iter().any(|p| p == kind) => parts.push(kind.to_string()),
            _ => {}
        }
    }
    if p.preface {
        parts.push("HTTP/2 preface".into());
    }
    // The messages that tell the story; the ladder lists every one.
    for t in p.handshakes.iter().filter(|t| matches!(t, 1 | 2 | 11 | 20)) {
        let name = handshake_name(*t);
        parts.push(match (t, p.spiffe_ids.first()) {
            (1, _) => format!("{name} (ALPN {}, no SNI)", p.alpn.join(",")),
            (11, Some(id)) => format!("{name} {id}"),
            _ => name.to_string(),
        });
    }
    if p.syn {
        parts.insert(
            0,
            if p.ack {
                "SYN, ACK".into()
            } else {
                "SYN".into()
            },
        );
    }
    if p.fin {
        parts.push("FIN".into());
    }
    if p.reset {
        parts.push("RST".into());
    }
    if parts.is_empty() && p.tcp_len > 0 {
        parts.push("TLS records".into());
    }
    (!parts.is_empty()).then(|| parts.join(", "))
}

/// The ladder of `connection`.
pub fn ladder(connection: &Connection, keys_used: bool) -> String {
    let mut out = String::new();
    let start = connection.packets.first().map_or(0.0, |p| p.time);
    let _ = writeln!(
        out,
        "HBONE connection {} → {} (TCP stream {} of the capture, {} packets{})",
        connection.client,
        connection.server,
        connection.stream,
        connection.packets.len(),
        if keys_used {
            ", TLS decrypted with the key log"
        } else {
            ", TLS not decrypted: no key log"
        }
    );
    let _ = writeln!(out, "{:>10} {:>7}      what", "ms", "bytes");
    let mut bare_acks = 0;
    for p in &connection.packets {
        let Some(what) = describe(p) else {
            bare_acks += 1;
            continue;
        };
        let arrow = if p.src == connection.client {
            "→"
        } else {
            "←"
        };
        let _ = writeln!(
            out,
            "{:>10.3} {:>7}  {arrow}  {what}",
            (p.time - start) * 1000.0,
            p.len
        );
    }
    let _ = writeln!(
        out,
        "(→ {} to {}, ← back; {bare_acks} bare TCP ACKs not shown)",
        connection.client, connection.server
    );
    out
}
