//! Reading a capture with Wireshark's dissectors: `tshark`, given the TLS
//! key log, decrypts TLS 1.3 and decodes HTTP/2 on 15008; its JSON output
//! (only the fields used here) becomes [`Packet`]s, grouped by TCP
//! connection into [`Connection`]s.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

use super::WireError;

/// The fields asked of tshark (`-e`), each an array per packet.
const FIELDS: &[&str] = &[
    "frame.number",
    "frame.time_relative",
    "frame.len",
    "ip.src",
    "ip.dst",
    "tcp.srcport",
    "tcp.dstport",
    "tcp.stream",
    "tcp.flags.syn",
    "tcp.flags.fin",
    "tcp.flags.reset",
    "tcp.flags.ack",
    "tcp.len",
    "tls.handshake.type",
    "tls.handshake.extensions_alpn_str",
    "tls.handshake.extensions_server_name",
    "tls.handshake.ciphersuite",
    "x509ce.uniformResourceIdentifier",
    "http2.magic",
    "http2.type",
    "http2.streamid",
    "http2.length",
    "http2.flags.end_stream",
    "http2.header.name",
    "http2.header.value",
    "http2.data.data",
    "http2.rst_stream.error",
];

/// One HTTP/2 frame inside a packet.
#[derive(Debug, Clone, PartialEq)]
pub struct H2Frame {
    /// The frame type's name (`HEADERS`, `DATA`, …).
    pub kind: &'static str,
    /// The HTTP/2 stream id (0: the connection itself).
    pub stream: u32,
    /// The frame's payload length.
    pub length: u32,
    /// Whether END_STREAM is set: the sender's last frame on the stream.
    pub end_stream: bool,
    /// For HEADERS: the decoded header fields.
    pub headers: Vec<(String, String)>,
    /// For DATA: the payload.
    pub data: Vec<u8>,
}

/// One packet, as decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Packet {
    /// tshark's frame number, from 1.
    pub number: u64,
    /// Seconds from the start of the capture.
    pub time: f64,
    /// Bytes on the wire.
    pub len: u32,
    /// The sender's address and port.
    pub src: SocketAddr,
    /// The receiver's address and port.
    pub dst: SocketAddr,
    /// tshark's TCP stream index: which connection it belongs to.
    pub stream: u32,
    /// TCP SYN: opens the connection.
    pub syn: bool,
    /// TCP FIN: the sender has no more to send.
    pub fin: bool,
    /// TCP RST: the connection is aborted.
    pub reset: bool,
    /// TCP ACK: acknowledges what the peer sent.
    pub ack: bool,
    /// TCP payload length in bytes (0 for a bare ACK).
    pub tcp_len: u32,
    /// TLS handshake message types (1 ClientHello, 2 ServerHello, …).
    pub handshakes: Vec<u8>,
    /// ALPN protocol names in its handshake messages (`h2` for HBONE).
    pub alpn: Vec<String>,
    /// Server names from its ClientHello's SNI extension.
    pub sni: Vec<String>,
    /// Cipher suites its handshake names: those offered, or the one chosen.
    pub cipher_suites: Vec<String>,
    /// URI SANs of the certificates carried (decrypted from the handshake).
    pub spiffe_ids: Vec<String>,
    /// The HTTP/2 connection preface.
    pub preface: bool,
    /// The HTTP/2 frames it carries, decrypted.
    pub frames: Vec<H2Frame>,
}

/// One TCP connection of the capture.
#[derive(Debug, Clone, PartialEq)]
pub struct Connection {
    /// tshark's TCP stream index.
    pub stream: u32,
    /// Who sent the SYN.
    pub client: SocketAddr,
    /// Who received the SYN (the HBONE side, port 15008).
    pub server: SocketAddr,
    /// Its packets, in capture order.
    pub packets: Vec<Packet>,
}

impl Connection {
    /// The `:authority` of its first CONNECT, if it carries one.
    pub fn connect_authority(&self) -> Option<&str> {
        self.packets
            .iter()
            .flat_map(|p| &p.frames)
            .find(|f| {
                f.headers
                    .iter()
                    .any(|(n, v)| n == ":method" && v == "CONNECT")
            })
            .and_then(|f| {
                f.headers
                    .iter()
                    .find(|(n, _)| n == ":authority")
                    .map(|(_, v)| v.as_str())
            })
    }
}

fn frame_kind(n: u32) -> &'static str {
    match n {
        0 => "DATA",
        1 => "HEADERS",
        2 => "PRIORITY",
        3 => "RST_STREAM",
        4 => "SETTINGS",
        5 => "PUSH_PROMISE",
        6 => "PING",
        7 => "GOAWAY",
        8 => "WINDOW_UPDATE",
        9 => "CONTINUATION",
        _ => "UNKNOWN",
    }
}

fn hex_bytes(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
    digits
        .chunks(2)
        .filter_map(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok())
        .collect()
}

/// One packet from tshark's `_source.layers` object.
fn packet(layers: &Value) -> Option<Packet> {
    let all = |name: &str| -> Vec<String> {
        layers
            .get(name)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let one = |name: &str| all(name).into_iter().next();
    let num = |name: &str| one(name).and_then(|v| v.parse::<u64>().ok());
    let flag = |name: &str| one(name).is_some_and(|v| v == "1" || v == "True");
    let addr = |ip: &str, port: &str| -> Option<SocketAddr> {
        Some(SocketAddr::new(
            one(ip)?.parse().ok()?,
            one(port)?.parse().ok()?,
        ))
    };
    let kinds: Vec<u32> = all("http2.type")
        .iter()
        .filter_map(|t| t.parse().ok())
        .collect();
    let streams = all("http2.streamid");
    let lengths = all("http2.length");
    let mut end_streams = all("http2.flags.end_stream").into_iter();
    let mut data = all("http2.data.data").into_iter();
    let names = all("http2.header.name");
    let values = all("http2.header.value");
    let mut headers: Vec<(String, String)> = names.into_iter().zip(values).collect();
    let mut frames = Vec::new();
    for (i, kind) in kinds.iter().enumerate() {
        let carries_end_stream = matches!(kind, 0 | 1);
        let end_stream = carries_end_stream && end_streams.next().is_some_and(|v| v == "1");
        frames.push(H2Frame {
            kind: frame_kind(*kind),
            stream: streams.get(i).and_then(|s| s.parse().ok()).unwrap_or(0),
            length: lengths.get(i).and_then(|s| s.parse().ok()).unwrap_or(0),
            end_stream,
            // tshark lists a packet's header fields together: they go to its first HEADERS frame.
            headers: if *kind == 1 {
                std::mem::take(&mut headers)
            } else {
                Vec::new()
            },
            data: if *kind == 0 {
                data.next().map(|d| hex_bytes(&d)).unwrap_or_default()
            } else {
                Vec::new()
            },
        });
    }
    Some(Packet {
        number: num("frame.number")?,
        time: one("frame.time_relative")?.parse().ok()?,
        len: num("frame.len")? as u32,
        src: addr("ip.src", "tcp.srcport")?,
        dst: addr("ip.dst", "tcp.dstport")?,
        stream: num("tcp.stream")? as u32,
        syn: flag("tcp.flags.syn"),
        fin: flag("tcp.flags.fin"),
        reset: flag("tcp.flags.reset"),
        ack: flag("tcp.flags.ack"),
        tcp_len: num("tcp.len").unwrap_or(0) as u32,
        handshakes: all("tls.handshake.type")
            .iter()
            .filter_map(|t| t.parse().ok())
            .collect(),
        alpn: all("tls.handshake.extensions_alpn_str"),
        sni: all("tls.handshake.extensions_server_name"),
        cipher_suites: all("tls.handshake.ciphersuite"),
        spiffe_ids: all("x509ce.uniformResourceIdentifier"),
        preface: layers.get("http2.magic").is_some(),
        frames,
    })
}

/// Parses tshark's JSON (`-T json -e …`).
pub fn parse(json: &str) -> Result<Vec<Packet>, WireError> {
    let all: Vec<Value> = serde_json::from_str(json)?;
    Ok(all
        .iter()
        .filter_map(|p| packet(p.get("_source")?.get("layers")?))
        .collect())
}

/// Whether tshark can be run.
pub fn have_tshark() -> bool {
    Command::new("tshark")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Decodes `capture` with tshark, decrypting with `keys` (the TLS key log).
pub fn decode(capture: &Path, keys: Option<&Path>) -> Result<Vec<Packet>, WireError> {
    if !have_tshark() {
        return Err(WireError::NoTshark);
    }
    let mut command = Command::new("tshark");
    command
        .arg("-r")
        .arg(capture)
        .args(["-d", "tcp.port==15008,tls", "-T", "json"]);
    if let Some(keys) = keys {
        command
            .arg("-o")
            .arg(format!("tls.keylog_file:{}", keys.display()));
    }
    for field in FIELDS {
        command.args(["-e", field]);
    }
    let out = command.output().map_err(|source| WireError::Run {
        program: "tshark",
        source,
    })?;
    if !out.status.success() {
        return Err(WireError::Tshark {
            file: capture.display().to_string(),
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    parse(&String::from_utf8_lossy(&out.stdout))
}

/// The packets grouped by TCP connection, in the order they began.
pub fn connections(packets: Vec<Packet>) -> Vec<Connection> {
    let mut out: Vec<Connection> = Vec::new();
    for p in packets {
        match out.iter_mut().find(|c| c.stream == p.stream) {
            Some(c) => c.packets.push(p),
            None => {
                let (client, server) = if p.syn && !p.ack {
                    (p.src, p.dst)
                } else if p.src.port() == 15008 {
                    (p.dst, p.src)
                } else {
                    (p.src, p.dst)
                };
                out.push(Connection {
                    stream: p.stream,
                    client,
                    server,
                    packets: vec![p],
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ladder::{ladder, summary};

    /// Three packets as tshark 4.x prints them (`-T json -e …`), from a real
    /// capture of the lab: the server's handshake flight, the CONNECT, and
    /// the first DATA frame.
    const SAMPLE: &str = r#"[
 {"_source": {"layers": {"frame.number": ["6"], "frame.time_relative": ["0.001087661"], "frame.len": ["1421"],
   "ip.src": ["10.244.2.10"], "ip.dst": ["10.244.1.10"], "tcp.srcport": ["15008"], "tcp.dstport": ["36892"],
   "tcp.stream": ["0"], "tcp.flags.syn": ["0"], "tcp.flags.ack": ["1"], "tcp.len": ["1355"],
   "tls.handshake.type": ["2", "8", "13", "11", "15", "20"], "tls.handshake.extensions_alpn_str": ["h2"],
   "x509ce.uniformResourceIdentifier": ["spiffe://cluster.local/ns/demo/sa/hello-app"],
   "tls.handshake.ciphersuite": ["0x1302"]}}},
 {"_source": {"layers": {"frame.number": ["12"], "frame.time_relative": ["0.002707571"], "frame.len": ["378"],
   "ip.src": ["10.244.1.10"], "ip.dst": ["10.244.2.10"], "tcp.srcport": ["36892"], "tcp.dstport": ["15008"],
   "tcp.stream": ["0"], "tcp.flags.ack": ["1"], "tcp.len": ["312"],
   "http2.type": ["4", "4", "8", "1"], "http2.streamid": ["0", "0", "0", "1"], "http2.length": ["24", "0", "4", "226"],
   "http2.flags.end_stream": ["0"],
   "http2.header.name": [":method", ":authority", "forwarded"],
   "http2.header.value": ["CONNECT", "10.244.2.10:8000", "for=\"10.244.1.10:39974\""]}}},
 {"_source": {"layers": {"frame.number": ["16"], "frame.time_relative": ["0.003953309"], "frame.len": ["275"],
   "ip.src": ["10.244.1.10"], "ip.dst": ["10.244.2.10"], "tcp.srcport": ["36892"], "tcp.dstport": ["15008"],
   "tcp.stream": ["0"], "tcp.flags.ack": ["1"], "tcp.len": ["209"],
   "http2.type": ["0"], "http2.streamid": ["1"], "http2.length": ["16"], "http2.flags.end_stream": ["0"],
   "http2.data.data": ["474554202f20485454502f312e310d0a"]}}}
]"#;

    #[test]
    fn tshark_json_becomes_packets_frames_and_a_connection() {
        let packets = parse(SAMPLE).unwrap();
        assert_eq!(packets.len(), 3);
        assert_eq!(packets[0].handshakes, [2, 8, 13, 11, 15, 20]);
        assert_eq!(
            packets[0].spiffe_ids,
            ["spiffe://cluster.local/ns/demo/sa/hello-app"]
        );
        let connect = &packets[1].frames[3];
        assert_eq!(
            (connect.kind, connect.stream, connect.end_stream),
            ("HEADERS", 1, false)
        );
        assert_eq!(
            connect.headers[1],
            (":authority".into(), "10.244.2.10:8000".into())
        );
        assert!(
            packets[1].frames[0].headers.is_empty(),
            "SETTINGS carries no headers"
        );
        assert_eq!(packets[2].frames[0].data, b"GET / HTTP/1.1\r\n");
        let all = connections(packets);
        assert_eq!(all.len(), 1);
        let c = &all[0];
        assert_eq!(
            c.client.to_string(),
            "10.244.1.10:36892",
            "the side that is not 15008"
        );
        assert_eq!(c.connect_authority(), Some("10.244.2.10:8000"));
        let text = ladder(c, true);
        assert!(
            text.contains("Certificate [spiffe://cluster.local/ns/demo/sa/hello-app]"),
            "{text}"
        );
        assert!(
            text.contains("HEADERS[1] { :method: CONNECT, :authority: 10.244.2.10:8000"),
            "{text}"
        );
        assert!(
            text.contains("DATA[1] 16 B \"GET / HTTP/1.1\\r\\n\""),
            "{text}"
        );
        assert_eq!(
            summary(&c.packets[1]).unwrap(),
            "HEADERS[1] CONNECT 10.244.2.10:8000, SETTINGS, WINDOW_UPDATE"
        );
        let svg = crate::wire::diagram::svg(c, ["a", "b", "c", "d"]);
        assert!(svg.starts_with("<svg") && svg.contains("CONNECT 10.244.2.10:8000"));
    }
}
