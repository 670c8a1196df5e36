//! hello-app's database: configuration as the original app read it, a small
//! pool of connections opened through the workload's [`Dialer`], and a probe
//! that says what a person wants to know — reachable or not, which server,
//! how fast, and a visit counter that proves writes work.

use std::time::{Duration, Instant};

use serde::Serialize;
use thiserror::Error;
use tokio::sync::Mutex;

use crate::dial::{DialError, Dialer};

#[derive(Debug, Error)]
/// Why the database could not be used.
pub enum DbError {
    #[error("DATABASE_URL is not postgres://user:password@host:port/dbname: {0}")]
    /// `DATABASE_URL` does not parse.
    BadUrl(String),
    #[error("DB_PORT {0:?} is not a port number")]
    /// `DB_PORT` is not a port number.
    BadPort(String),
    #[error("cannot read DB_PASSWORD_FILE {path}: {source}")]
    /// `DB_PASSWORD_FILE` could not be read.
    PasswordFile {
        /// The file named.
        path: String,
        #[source]
        /// Why it could not be read.
        source: std::io::Error,
    },
    #[error(transparent)]
    /// The connection to the database could not be opened (or the mesh refused it).
    Dial(#[from] DialError),
    #[error("PostgreSQL: {0}")]
    /// PostgreSQL answered with an error.
    Postgres(#[from] tokio_postgres::Error),
    #[error("timed out after {0:?}")]
    /// No answer within this long.
    Timeout(Duration),
}

/// Where the database is and who to log in as.
#[derive(Clone)]
pub struct DbConfig {
    /// Host name or address of the server.
    pub host: String,
    /// Its port (5432 by default).
    pub port: u16,
    /// The user to log in as.
    pub user: String,
    password: String,
    /// The database to use.
    pub dbname: String,
}

impl std::fmt::Debug for DbConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "postgres://{}:***@{}:{}/{}",
            self.user, self.host, self.port, self.dbname
        )
    }
}

impl DbConfig {
    /// A configuration from its parts.
    pub fn new(host: &str, port: u16, user: &str, password: &str, dbname: &str) -> Self {
        DbConfig {
            host: host.into(),
            port,
            user: user.into(),
            password: password.into(),
            dbname: dbname.into(),
        }
    }

    /// `DATABASE_URL`, or `DB_HOST` (postgres), `DB_PORT` (5432), `DB_USER` (hello),
    /// `DB_PASSWORD` or `DB_PASSWORD_FILE` (hello), `DB_NAME` (hellodb).
    pub fn from_env() -> Result<Self, DbError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// From `DATABASE_URL`, or `DB_HOST`, `DB_PORT`, `DB_USER`, `DB_PASSWORD` (or `DB_PASSWORD_FILE`) and `DB_NAME`, looked up with `get` (the environment, in the app).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, DbError> {
        if let Some(url) = get("DATABASE_URL") {
            return Self::from_url(&url);
        }
        let port_text = get("DB_PORT").unwrap_or_else(|| "5432".into());
        let port = port_text.parse().map_err(|_| DbError::BadPort(port_text))?;
        let password = match get("DB_PASSWORD_FILE") {
            Some(path) => std::fs::read_to_string(&path)
                .map_err(|source| DbError::PasswordFile { path, source })?
                .trim_end()
                .to_string(),
            None => get("DB_PASSWORD").unwrap_or_else(|| "hello".into()),
        };
        Ok(DbConfig {
            host: get("DB_HOST").unwrap_or_else(|| "postgres".into()),
            port,
            user: get("DB_USER").unwrap_or_else(|| "hello".into()),
            password,
            dbname: get("DB_NAME").unwrap_or_else(|| "hellodb".into()),
        })
    }

    fn from_url(url: &str) -> Result<Self, DbError> {
        // The URL may hold a password: never echo it back.
        let bad = || DbError::BadUrl("the value is not shown, it may hold a password".into());
        let rest = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"))
            .ok_or_else(bad)?;
        let (auth, location) = rest.rsplit_once('@').ok_or_else(bad)?;
        let (user, password) = auth.split_once(':').unwrap_or((auth, ""));
        let (hostport, dbname) = location.split_once('/').ok_or_else(bad)?;
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().map_err(|_| bad())?),
            None => (hostport, 5432),
        };
        Ok(DbConfig::new(host, port, user, password, dbname))
    }
}

/// What the status page shows about the database.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DbStatus {
    /// Whether a query came back.
    pub reachable: bool,
    /// `SELECT version()`, when it did.
    pub server_version: Option<String>,
    /// How long the round trip took.
    pub round_trip_ms: Option<f64>,
    /// The page's visit counter, kept in the database.
    pub visits: Option<i64>,
    /// Why the database could not be used, if it could not.
    pub error: Option<String>,
    /// `host:port` of the server asked.
    pub target: String,
}

/// A few PostgreSQL connections, opened on demand and dropped on error, so a
/// database that went away and came back is picked up again.
pub struct Database {
    config: DbConfig,
    dialer: Dialer,
    idle: Mutex<Vec<tokio_postgres::Client>>,
    max_idle: usize,
    timeout: Duration,
}

impl Database {
    /// Connections to `config`'s server, opened through `dialer`.
    pub fn new(config: DbConfig, dialer: Dialer) -> Self {
        Database {
            config,
            dialer,
            idle: Mutex::new(Vec::new()),
            max_idle: 4,
            timeout: Duration::from_secs(3),
        }
    }

    /// Where the database is.
    pub fn config(&self) -> &DbConfig {
        &self.config
    }

    async fn open(&self) -> Result<tokio_postgres::Client, DbError> {
        let stream = self
            .dialer
            .connect(&self.config.host, self.config.port)
            .await?;
        let mut pg = tokio_postgres::Config::new();
        pg.user(&self.config.user)
            .password(&self.config.password)
            .dbname(&self.config.dbname)
            .application_name("hello-app");
        let (client, connection) = pg.connect_raw(stream, tokio_postgres::NoTls).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "database connection ended");
            }
        });
        Ok(client)
    }

    async fn client(&self) -> Result<tokio_postgres::Client, DbError> {
        while let Some(client) = self.idle.lock().await.pop() {
            if !client.is_closed() {
                return Ok(client);
            }
        }
        self.open().await
    }

    async fn give_back(&self, client: tokio_postgres::Client) {
        let mut idle = self.idle.lock().await;
        if idle.len() < self.max_idle && !client.is_closed() {
            idle.push(client);
        }
    }

    /// Runs the status queries: round trip, version, and a recorded visit.
    pub async fn probe(&self, record_visit: bool) -> DbStatus {
        let target = format!(
            "{}:{}/{}",
            self.config.host, self.config.port, self.config.dbname
        );
        let work = async {
            let client = self.client().await?;
            let started = Instant::now();
            client.simple_query("SELECT 1").await?;
            let rtt = started.elapsed().as_secs_f64() * 1000.0;
            let version: String = client.query_one("SHOW server_version", &[]).await?.get(0);
            client
                .batch_execute("CREATE TABLE IF NOT EXISTS visits (id BIGSERIAL PRIMARY KEY, at TIMESTAMPTZ NOT NULL DEFAULT now())")
                .await?;
            if record_visit {
                client
                    .execute("INSERT INTO visits DEFAULT VALUES", &[])
                    .await?;
            }
            let visits: i64 = client
                .query_one("SELECT count(*) FROM visits", &[])
                .await?
                .get(0);
            self.give_back(client).await;
            Ok::<_, DbError>((version, rtt, visits))
        };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(Ok((version, rtt, visits))) => DbStatus {
                reachable: true,
                server_version: Some(version),
                round_trip_ms: Some((rtt * 100.0).round() / 100.0),
                visits: Some(visits),
                error: None,
                target,
            },
            Ok(Err(e)) => DbStatus::down(target, e.to_string()),
            Err(_) => DbStatus::down(target, DbError::Timeout(self.timeout).to_string()),
        }
    }
}

impl DbStatus {
    fn down(target: String, error: String) -> Self {
        DbStatus {
            reachable: false,
            server_version: None,
            round_trip_ms: None,
            visits: None,
            error: Some(error),
            target,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_from_env_and_url() {
        let c = DbConfig::from_lookup(|_| None).unwrap();
        assert_eq!(
            format!("{c:?}"),
            "postgres://hello:***@postgres:5432/hellodb"
        );
        let c = DbConfig::from_lookup(|k| {
            (k == "DATABASE_URL").then(|| "postgres://u:secret@db:6543/x".into())
        })
        .unwrap();
        assert_eq!(
            (c.host.as_str(), c.port, c.user.as_str(), c.dbname.as_str()),
            ("db", 6543, "u", "x")
        );
        assert!(
            !format!("{c:?}").contains("secret"),
            "the password is never printed"
        );
        assert!(DbConfig::from_lookup(|k| (k == "DB_PORT").then(|| "x".into())).is_err());
    }
}
