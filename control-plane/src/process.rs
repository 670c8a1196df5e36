//! One of the control plane's programs as a child process: its output in a
//! log file, stopped with the control plane (SIGTERM, then SIGKILL), and
//! killed by the kernel if hbone-lab itself dies first — so that no etcd or
//! istiod outlives the lab that started it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use thiserror::Error;

/// A program that failed to start or to become ready.
#[derive(Debug, Error)]
pub enum ProcessError {
    /// It could not be executed.
    #[error("cannot start {program} ({binary}): {source}")]
    Spawn {
        /// Which program.
        program: &'static str,
        /// Its binary.
        binary: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Its log file could not be made.
    #[error("cannot create {program}'s log {log}: {source}")]
    Log {
        /// Which program.
        program: &'static str,
        /// The log file.
        log: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// It exited while a step waited for it.
    #[error("{program} exited ({status}) while {step}; its log ({log}) ends with:\n{tail}")]
    Exited {
        /// Which program.
        program: &'static str,
        /// What was being waited for.
        step: String,
        /// How it ended.
        status: ExitStatus,
        /// Its log file.
        log: PathBuf,
        /// The log's last lines.
        tail: String,
    },
    /// A step did not finish in time.
    #[error("{program} did not finish {step} within {secs} s; its log ({log}) ends with:\n{tail}")]
    Timeout {
        /// Which program.
        program: &'static str,
        /// What was being waited for.
        step: String,
        /// How long was waited.
        secs: u64,
        /// Its log file.
        log: PathBuf,
        /// The log's last lines.
        tail: String,
    },
}

/// A running program.
#[derive(Debug)]
pub struct Program {
    /// Its name in messages.
    pub name: &'static str,
    child: Child,
    /// Where its standard output and error go.
    pub log: PathBuf,
}

impl Program {
    /// Starts `binary args…` in `cwd` with `env` added, its output into `log`.
    pub fn spawn(
        name: &'static str,
        binary: &Path,
        args: &[OsString],
        env: &[(&str, String)],
        cwd: &Path,
        log: PathBuf,
    ) -> Result<Program, ProcessError> {
        let out = std::fs::File::create(&log).map_err(|source| ProcessError::Log {
            program: name,
            log: log.clone(),
            source,
        })?;
        let err = out.try_clone().map_err(|source| ProcessError::Log {
            program: name,
            log: log.clone(),
            source,
        })?;
        let mut command = Command::new(binary);
        command
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        // SAFETY: `pre_exec` runs the closure in the child between fork and
        // exec, where only async-signal-safe calls are sound; prctl and
        // getppid are, and the closure allocates nothing and takes no lock.
        #[allow(unsafe_code)]
        unsafe {
            use std::os::unix::process::CommandExt;
            let parent = std::process::id() as i32;
            command.pre_exec(move || {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
                // The parent may have died between fork and prctl.
                if nix::unistd::getppid().as_raw() != parent {
                    return Err(std::io::Error::other("the parent exited"));
                }
                Ok(())
            });
        }
        let child = command.spawn().map_err(|source| ProcessError::Spawn {
            program: name,
            binary: binary.to_path_buf(),
            source,
        })?;
        Ok(Program { name, child, log })
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// How it ended, if it has.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Polls `ready` until it says yes, failing with the log's tail if the
    /// program exits first or `timeout` passes.
    pub async fn wait_until<F, Fut>(
        &mut self,
        step: &str,
        timeout: Duration,
        mut ready: F,
    ) -> Result<(), ProcessError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let start = Instant::now();
        loop {
            if let Some(status) = self.exited() {
                return Err(ProcessError::Exited {
                    program: self.name,
                    step: step.to_string(),
                    status,
                    log: self.log.clone(),
                    tail: self.log_tail(20),
                });
            }
            if ready().await {
                return Ok(());
            }
            if start.elapsed() > timeout {
                return Err(self.timeout(step, timeout));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The error for a step that took longer than `timeout`.
    pub fn timeout(&self, step: &str, timeout: Duration) -> ProcessError {
        ProcessError::Timeout {
            program: self.name,
            step: step.to_string(),
            secs: timeout.as_secs(),
            log: self.log.clone(),
            tail: self.log_tail(20),
        }
    }

    /// SIGTERM, up to `grace` to exit, then SIGKILL; waits for it.
    pub fn stop(&mut self, grace: Duration) {
        if self.exited().is_some() {
            return;
        }
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let start = Instant::now();
        while start.elapsed() < grace {
            if self.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}
