//! What the CLI's end-to-end tests share: running the binary, reading its
//! output, knowing whether this run may create network namespaces.

#![allow(dead_code)] // each test file uses its own part

use std::process::{Child, Command, Output};

/// Runs `hbone-lab args…` and returns what it did, whatever it was.
pub fn hbone_lab(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hbone-lab"))
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("run hbone-lab")
}

/// Runs `hbone-lab args…` and fails the test, with its stderr, unless it succeeds.
pub fn hbone_lab_ok(args: &[&str]) -> Output {
    let out = hbone_lab(args);
    assert!(
        out.status.success(),
        "hbone-lab {args:?} failed:\n{}",
        text(&out.stderr)
    );
    out
}

/// A child process killed (and reaped) when the test ends, however it ends.
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Root, as the namespace tests need (CI runs as root).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}
