//! Seeing the wire: one HBONE connection as the network carries it — TCP,
//! TLS 1.3, HTTP/2, a CONNECT, the application's bytes — decrypted with the
//! proxies' TLS key log and decoded by Wireshark's own dissectors.
//!
//! - [`capture`]: recording the node-to-node hop (dumpcap or tcpdump).
//! - [`decode`]: tshark over the capture and the key log, read into packets
//!   and connections.
//! - [`ladder`]: one connection as a ladder of lines, each with its real
//!   size and time.
//! - [`diagram`]: the same as an SVG sequence diagram.

pub mod capture;
pub mod decode;
pub mod diagram;
pub mod ladder;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum WireError {
    #[error(
        "no packet capture tool: install Wireshark's dumpcap or tcpdump (Debian: apt-get install tshark, or tcpdump)"
    )]
    NoCaptureTool,
    #[error(
        "tshark is not installed: Debian: apt-get install tshark (Wireshark's dissectors decode the capture)"
    )]
    NoTshark,
    #[error("cannot run {program}: {source}")]
    Run {
        program: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} stopped capturing: {1}")]
    CaptureEnded(&'static str, String),
    #[error("tshark could not read {file}: {message}")]
    Tshark { file: String, message: String },
    #[error("tshark's output is not the JSON expected: {0}")]
    Output(#[from] serde_json::Error),
    #[error("no capture in {0} (run `hbone-lab demo --netns --capture {0}` first)")]
    NoCapture(String),
}
