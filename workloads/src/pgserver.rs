//! A throwaway PostgreSQL server, started from the installed server binaries
//! into a temporary directory: what the demo runs, and what the tests talk to.
//!
//! PostgreSQL refuses to run as root, so under root the data directory is
//! given to the `postgres` system user (or `nobody`) and every server command
//! runs as that user via `setpriv`.

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use thiserror::Error;

#[derive(Debug, Error)]
/// Why the PostgreSQL server could not be run.
pub enum PgError {
    #[error(
        "no PostgreSQL server binaries found (looked for initdb in $PG_BIN, /usr/lib/postgresql/*/bin and PATH); \
         on Debian: apt-get install postgresql"
    )]
    /// No `initdb` found: PostgreSQL is not installed.
    NotInstalled,
    #[error("{step} failed: {detail}")]
    /// A setup step (initdb, starting, creating the database) failed.
    Step {
        /// The step.
        step: String,
        /// What it printed.
        detail: String,
    },
    #[error("i/o: {0}")]
    /// A file or process could not be used.
    Io(#[from] std::io::Error),
    #[error("PostgreSQL did not accept connections within {0:?}; its log:\n{1}")]
    /// The server did not accept connections in time (the wait, and its log).
    NotReady(Duration, String),
}

/// The directory holding `initdb`, `postgres` and `pg_ctl`.
pub fn find_binaries() -> Result<PathBuf, PgError> {
    if let Some(dir) = std::env::var_os("PG_BIN").map(PathBuf::from)
        && dir.join("initdb").is_file()
    {
        return Ok(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .find(|d| d.join("initdb").is_file() && d.join("postgres").is_file())
        .ok_or(PgError::NotInstalled)
}

/// A free TCP port on `ip` (bound and released; the small race is acceptable for tests and demos).
pub fn free_port(ip: IpAddr) -> std::io::Result<u16> {
    Ok(TcpListener::bind((ip, 0))?.local_addr()?.port())
}

/// A running PostgreSQL with one database and one password user.
pub struct PgServer {
    bin: PathBuf,
    dir: tempfile::TempDir,
    run_as: Option<String>,
    /// The network namespace the server runs in, if not this one.
    netns: Option<PathBuf>,
    /// Where it listens.
    pub addr: SocketAddr,
    /// The password user.
    pub user: String,
    /// Its password.
    pub password: String,
    /// The database created.
    pub dbname: String,
    child: Option<Child>,
}

impl PgServer {
    /// initdb + start + create the database; listens on `ip` (port 0 picks one).
    pub fn start(
        ip: IpAddr,
        port: u16,
        user: &str,
        password: &str,
        dbname: &str,
    ) -> Result<Self, PgError> {
        Self::start_in(None, ip, port, user, password, dbname)
    }

    /// Like [`PgServer::start`], with the server inside the network
    /// namespace at `netns` (entered with `nsenter`), listening on `ip` there.
    pub fn start_in(
        netns: Option<&Path>,
        ip: IpAddr,
        port: u16,
        user: &str,
        password: &str,
        dbname: &str,
    ) -> Result<Self, PgError> {
        let bin = find_binaries()?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("hbone-lab-pg-{}-", std::process::id()))
            .tempdir()?;
        let run_as = if nix::unistd::geteuid().is_root() {
            Some(unprivileged_user())
        } else {
            None
        };
        if let Some(user) = &run_as {
            chown(dir.path(), user)?;
        }
        let port = if port == 0 { free_port(ip)? } else { port };
        let mut server = PgServer {
            bin,
            dir,
            run_as,
            netns: netns.map(Path::to_path_buf),
            addr: SocketAddr::new(ip, port),
            user: user.into(),
            password: password.into(),
            dbname: dbname.into(),
            child: None,
        };
        server.init()?;
        server.launch()?;
        server.create_database()?;
        Ok(server)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn command(&self, program: &str) -> Command {
        // nsenter and setpriv exec in place, so the child's pid is the
        // server's own (signals reach PostgreSQL, not a wrapper).
        let mut prefix: Vec<String> = Vec::new();
        if let Some(ns) = &self.netns {
            prefix.extend([
                "nsenter".into(),
                format!("--net={}", ns.display()),
                "--".into(),
            ]);
        }
        if let Some(user) = &self.run_as {
            prefix.extend([
                "setpriv".into(),
                format!("--reuid={user}"),
                format!("--regid={user}"),
                "--init-groups".into(),
                "--".into(),
            ]);
        }
        let exe = self.bin.join(program);
        match prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(exe);
                c
            }
            None => Command::new(exe),
        }
    }

    fn answers_on_socket(&self) -> bool {
        let mut c = self.command("pg_isready");
        c.args([
            "-q",
            "-h",
            &self.dir.path().display().to_string(),
            "-p",
            &self.addr.port().to_string(),
        ]);
        c.stdin(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    }

    /// The server's Unix socket: present once it accepts connections, in
    /// whichever network namespace it listens.
    fn socket_path(&self) -> PathBuf {
        self.dir
            .path()
            .join(format!(".s.PGSQL.{}", self.addr.port()))
    }

    fn run(&self, step: &str, mut command: Command) -> Result<(), PgError> {
        let out = command.stdin(Stdio::null()).output()?;
        if out.status.success() {
            Ok(())
        } else {
            Err(PgError::Step {
                step: step.into(),
                detail: format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            })
        }
    }

    fn init(&self) -> Result<(), PgError> {
        let pwfile = self.dir.path().join("pwfile");
        std::fs::write(&pwfile, &self.password)?;
        if let Some(user) = &self.run_as {
            chown(&pwfile, user)?;
        }
        let mut c = self.command("initdb");
        c.arg("-D")
            .arg(self.data())
            .args([
                "-U",
                &self.user,
                "--auth-host=scram-sha-256",
                "--auth-local=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ])
            .arg(format!("--pwfile={}", pwfile.display()));
        self.run("initdb", c)?;
        // Accept password logins from any address the server listens on.
        let hba = self.data().join("pg_hba.conf");
        let mut text = std::fs::read_to_string(&hba)?;
        text.push_str("host all all 0.0.0.0/0 scram-sha-256\n");
        std::fs::write(&hba, text)?;
        Ok(())
    }

    fn launch(&mut self) -> Result<(), PgError> {
        let log = std::fs::File::create(self.dir.path().join("postgres.log"))?;
        if let Some(user) = &self.run_as {
            chown(&self.dir.path().join("postgres.log"), user)?;
        }
        let mut c = self.command("postgres");
        c.arg("-D")
            .arg(self.data())
            .args(["-c", &format!("listen_addresses={}", self.addr.ip())])
            .args(["-p", &self.addr.port().to_string()])
            .args([
                "-c",
                &format!("unix_socket_directories={}", self.dir.path().display()),
            ])
            .args(["-c", "fsync=off", "-c", "full_page_writes=off"])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log));
        self.child = Some(c.spawn()?);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            // The Unix socket is what the setup steps use (createdb), and
            // PostgreSQL opens it after its TCP listener: a TCP answer alone
            // let createdb race it. The socket works in either namespace.
            if self.socket_path().exists() && self.answers_on_socket() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(PgError::NotReady(Duration::from_secs(20), self.log()))
    }

    fn create_database(&self) -> Result<(), PgError> {
        let mut c = self.command("createdb");
        c.args([
            "-h",
            &self.dir.path().display().to_string(),
            "-p",
            &self.addr.port().to_string(),
            "-U",
            &self.user,
            &self.dbname,
        ]);
        self.run("createdb", c)
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    /// Stops the server (fast shutdown); the data stays for [`PgServer::restart`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGINT asks PostgreSQL for a fast shutdown.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGINT,
            );
            let _ = child.wait();
        }
    }

    /// Starts the stopped server again on the same address.
    pub fn restart(&mut self) -> Result<(), PgError> {
        self.stop();
        self.launch()
    }

    /// True until stopped.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn unprivileged_user() -> String {
    let exists = |u: &str| {
        Command::new("id")
            .arg(u)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if exists("postgres") {
        "postgres".into()
    } else {
        "nobody".into()
    }
}

fn chown(path: &Path, user: &str) -> Result<(), PgError> {
    let out = Command::new("chown")
        .arg("-R")
        .arg(user)
        .arg(path)
        .output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(PgError::Step {
            step: format!("chown {user} {}", path.display()),
            detail: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}
