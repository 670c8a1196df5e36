//! `hbone-lab wire DIR`: one recorded HBONE connection, decrypted and
//! decoded by Wireshark's dissectors, as a ladder and an SVG diagram.

use std::path::{Path, PathBuf};

use clap::Args;
use hbone_standalone::wire::WireError;
use hbone_standalone::wire::decode::{Connection, connections, decode, have_tshark};
use hbone_standalone::wire::{diagram, ladder};

/// Decode a capture from `hbone-lab demo --netns --capture DIR`: tshark
/// decrypts the HBONE hop with DIR/keys.log and this prints one connection
/// as a ladder — TCP handshake, TLS ClientHello (ALPN h2, no SNI),
/// ServerHello, the certificates' SPIFFE IDs, the HTTP/2 preface and
/// SETTINGS, the CONNECT with its :authority and headers, :status 200, the
/// application's first bytes in DATA frames, the end — each line with its
/// time and size on the wire; and draws it to DIR/connection.svg.
///
///   sudo hbone-lab demo --netns --capture /tmp/wire
///   hbone-lab wire /tmp/wire
///   wireshark -o tls.keylog_file:/tmp/wire/keys.log /tmp/wire/mesh.pcapng
///
/// Needs Wireshark's tshark (Debian: apt-get install tshark); without it,
/// lists the packets' sizes and directions with tcpdump.
#[derive(Args)]
#[command(verbatim_doc_comment)]
pub struct WireArgs {
    /// The directory `demo --capture` wrote (mesh.pcapng or mesh.pcap, keys.log).
    dir: PathBuf,
    /// Which TCP connection of the capture (tshark's tcp.stream; default:
    /// the first that carries a CONNECT).
    #[arg(long)]
    stream: Option<u32>,
}

fn capture_in(dir: &Path) -> Result<PathBuf, WireError> {
    ["mesh.pcapng", "mesh.pcap"]
        .iter()
        .map(|name| dir.join(name))
        .find(|p| p.exists())
        .ok_or_else(|| WireError::NoCapture(dir.display().to_string()))
}

fn pick(all: &[Connection], stream: Option<u32>) -> Option<&Connection> {
    match stream {
        Some(n) => all.iter().find(|c| c.stream == n),
        None => all.iter().find(|c| c.connect_authority().is_some()),
    }
}

pub fn run(args: WireArgs) -> anyhow::Result<()> {
    let capture = capture_in(&args.dir)?;
    let keys = args.dir.join("keys.log");
    let keys = keys.exists().then_some(keys);
    if !have_tshark() {
        eprintln!("{}", WireError::NoTshark);
        eprintln!(
            "what tcpdump can say without the dissectors (sizes and directions, still encrypted):"
        );
        let status = std::process::Command::new("tcpdump")
            .args(["-nn", "-q", "-r"])
            .arg(&capture)
            .status();
        if status.is_err() {
            eprintln!("(tcpdump is not installed either: apt-get install tshark)");
        }
        anyhow::bail!("install tshark to decode the capture");
    }
    let all = connections(decode(&capture, keys.as_deref())?);
    println!("{} TCP connections in {}:", all.len(), capture.display());
    for c in &all {
        println!(
            "  stream {:>3}  {} → {}  {:>4} packets  {}",
            c.stream,
            c.client,
            c.server,
            c.packets.len(),
            c.connect_authority()
                .map_or("(no CONNECT seen)".to_string(), |a| format!("CONNECT {a}"))
        );
    }
    let Some(chosen) = pick(&all, args.stream) else {
        anyhow::bail!(match args.stream {
            Some(n) => format!("no TCP stream {n} in the capture"),
            None if keys.is_none() => {
                "no CONNECT could be read: there is no keys.log beside the capture to decrypt it"
                    .into()
            }
            None => "no connection in the capture carries a CONNECT".to_string(),
        });
    };
    println!();
    print!("{}", ladder::ladder(chosen, keys.is_some()));
    let server_app = chosen
        .connect_authority()
        .unwrap_or("the server")
        .to_string();
    let client = format!("client app ({})", chosen.client.ip());
    let server = format!("server app ({server_app})");
    let svg = diagram::svg(
        chosen,
        [
            &client,
            "its node proxy",
            "the server's node proxy",
            &server,
        ],
    );
    let out = args.dir.join("connection.svg");
    std::fs::write(&out, svg)?;
    println!("\nwrote {}", out.display());
    Ok(())
}
