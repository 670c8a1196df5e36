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

/// Why capturing or decoding the wire failed.
#[derive(Debug, Error)]
pub enum WireError {
    /// Neither dumpcap nor tcpdump can be run.
    #[error(
        "no packet capture tool: install Wireshark's dumpcap or tcpdump (Debian: apt-get install tshark, or tcpdump)"
    )]
    NoCaptureTool,
    /// tshark, which decodes the capture, cannot be run.
    #[error(
        "tshark is not installed: Debian: apt-get install tshark (Wireshark's dissectors decode the capture)"
    )]
    NoTshark,
    /// A tool could not be started.
    #[error("cannot run {program}: {source}")]
    Run {
        /// The tool: `dumpcap`, `tcpdump` or `tshark`.
        program: &'static str,
        /// Why starting it failed.
        #[source]
        source: std::io::Error,
    },
    /// The capture tool stopped, or wrote nothing within 5 s: its name, and why.
    #[error("{0} stopped capturing: {1}")]
    CaptureEnded(&'static str, String),
    /// tshark failed on the capture.
    #[error("tshark could not read {file}: {message}")]
    Tshark {
        /// The capture file it was given.
        file: String,
        /// What tshark wrote on stderr.
        message: String,
    },
    /// tshark's output did not parse as JSON.
    #[error("tshark's output is not the JSON expected: {0}")]
    Output(#[from] serde_json::Error),
    /// The directory (named) holds no capture to decode.
    #[error("no capture in {0} (run `hbone-lab demo --netns --capture {0}` first)")]
    NoCapture(String),
}
