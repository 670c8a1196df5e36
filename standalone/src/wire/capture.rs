//! Recording the node-to-node hop with the field's own packet tools:
//! Wireshark's `dumpcap` (pcapng) where installed, else `tcpdump` (pcap),
//! run inside a node's network namespace on its link to the other node,
//! keeping only HBONE (TCP 15008).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hbone_harness::netns::NetNs;

use super::WireError;

/// Which capture tool is on PATH, and the file name it writes.
fn tool() -> Option<(&'static str, &'static str)> {
    let works = |program: &str| {
        Command::new(program)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    };
    if works("dumpcap") {
        Some(("dumpcap", "mesh.pcapng"))
    } else if works("tcpdump") {
        Some(("tcpdump", "mesh.pcap"))
    } else {
        None
    }
}

/// A capture running in the background.
pub struct Capture {
    child: Child,
    /// The file it writes: `mesh.pcapng` (dumpcap) or `mesh.pcap` (tcpdump).
    pub file: PathBuf,
    /// The tool running: `dumpcap` or `tcpdump`.
    pub tool: &'static str,
}

impl Capture {
    /// Starts capturing HBONE on `interface` inside `ns`, into `dir`, and
    /// waits until the tool is writing.
    pub fn start(ns: &NetNs, interface: &str, dir: &Path) -> Result<Capture, WireError> {
        let (tool, name) = tool().ok_or(WireError::NoCaptureTool)?;
        let file = dir.join(name);
        let _ = std::fs::remove_file(&file);
        let mut command = ns.command(tool);
        match tool {
            "dumpcap" => command.args(["-q", "-i", interface, "-f", "tcp port 15008", "-w"]),
            _ => command.args(["-U", "-n", "-i", interface, "-w"]),
        };
        command.arg(&file);
        if tool == "tcpdump" {
            command.args(["tcp", "port", "15008"]);
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|source| WireError::Run {
                program: tool,
                source,
            })?;
        let mut capture = Capture { child, file, tool };
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::metadata(&capture.file).map_or(0, |m| m.len()) == 0 {
            if let Ok(Some(status)) = capture.child.try_wait() {
                return Err(WireError::CaptureEnded(tool, status.to_string()));
            }
            if Instant::now() > deadline {
                return Err(WireError::CaptureEnded(
                    tool,
                    "nothing written within 5 s".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // The file header is out; give the tool a moment to open the interface.
        std::thread::sleep(Duration::from_millis(200));
        capture.child.try_wait().ok();
        Ok(capture)
    }

    /// Stops the tool (SIGINT, so it flushes) and returns the file.
    pub fn stop(mut self) -> PathBuf {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return self.file.clone();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.file.clone()
    }
}
