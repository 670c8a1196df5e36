//! Does the application at the other end answer? The question a client in
//! an ambient pod must ask to learn whether a connection was allowed: its
//! TCP connect always succeeds — into its own pod's proxy — so only the
//! application's first answer tells "allowed" from "refused" (closed or
//! reset at once: an identity refusal) and from "dropped" (nothing comes
//! back: a packet filter).

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// What to say to the application, and what counts as its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    /// `GET /health` and an HTTP status line.
    Http,
    /// PostgreSQL's SSLRequest and its one-byte reply ('S' or 'N').
    Postgres,
    /// A TLS handshake with the target's name as SNI, checked against the
    /// public web roots: what an SNI egress rule lets through or resets.
    Tls,
}

impl std::str::FromStr for ProbeKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "http" => Ok(ProbeKind::Http),
            "postgres" => Ok(ProbeKind::Postgres),
            "tls" => Ok(ProbeKind::Tls),
            other => Err(format!(
                "unknown probe kind `{other}`: use http, postgres or tls"
            )),
        }
    }
}

/// How a probe ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// The application answered (the answer, in a few words).
    Answered(String),
    /// The connection closed or reset without an answer.
    Refused(String),
    /// Nothing came back in time.
    TimedOut,
}

impl ProbeOutcome {
    /// True when the application answered.
    pub fn allowed(&self) -> bool {
        matches!(self, ProbeOutcome::Answered(_))
    }

    /// The process exit code `app probe` uses: 0 answered, 1 refused, 2 timed out.
    pub fn exit_code(&self) -> i32 {
        match self {
            ProbeOutcome::Answered(_) => 0,
            ProbeOutcome::Refused(_) => 1,
            ProbeOutcome::TimedOut => 2,
        }
    }
}

impl std::fmt::Display for ProbeOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProbeOutcome::Answered(a) => write!(f, "answered: {a}"),
            ProbeOutcome::Refused(why) => write!(
                f,
                "refused: the connection closed without an answer ({why})"
            ),
            ProbeOutcome::TimedOut => f.write_str("no answer in time (dropped on the way?)"),
        }
    }
}

const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 4, 210, 22, 47];

/// Sends the probe on an open connection and waits up to `timeout` for the answer.
pub async fn probe<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    kind: ProbeKind,
    host: &str,
    timeout: Duration,
) -> ProbeOutcome {
    let exchange = async {
        match kind {
            ProbeKind::Http => {
                // Only the status line is read: a probe must not wait for a body.
                let request = crate::http_get::Get::once(host, "/health").request();
                stream.write_all(request.as_bytes()).await?;
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n") && head.len() < 256 {
                    if stream.read(&mut byte).await? == 0 {
                        return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
                    }
                    head.push(byte[0]);
                }
                Ok::<_, std::io::Error>(String::from_utf8_lossy(&head).trim().to_string())
            }
            ProbeKind::Postgres => {
                stream.write_all(&SSL_REQUEST).await?;
                let mut one = [0u8; 1];
                stream.read_exact(&mut one).await?;
                Ok(format!("PostgreSQL answered '{}'", one[0] as char))
            }
            ProbeKind::Tls => {
                let name = rustls::pki_types::ServerName::try_from(host.to_string())
                    .map_err(std::io::Error::other)?;
                let connector = tokio_rustls::TlsConnector::from(crate::external::client_tls(None));
                let tls = connector.connect(name, &mut *stream).await?;
                let (_, session) = tls.get_ref();
                Ok(format!(
                    "TLS handshake completed ({:?})",
                    session
                        .protocol_version()
                        .unwrap_or(rustls::ProtocolVersion::Unknown(0))
                ))
            }
        }
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(answer)) => ProbeOutcome::Answered(answer),
        Ok(Err(e)) => ProbeOutcome::Refused(e.to_string()),
        Err(_) => ProbeOutcome::TimedOut,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::{TcpListener, TcpStream};

    #[tokio::test]
    async fn answered_refused_and_timed_out() {
        let listener = TcpListener::bind("127.64.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            // 1st: answers like PostgreSQL; 2nd: closes at once; 3rd: says nothing.
            let (mut a, _) = listener.accept().await.unwrap();
            let mut req = [0u8; 8];
            a.read_exact(&mut req).await.unwrap();
            a.write_all(b"N").await.unwrap();
            let (b, _) = listener.accept().await.unwrap();
            drop(b);
            let (_c, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        let short = Duration::from_millis(300);
        let mut s = TcpStream::connect(addr).await.unwrap();
        let first = probe(&mut s, ProbeKind::Postgres, "db", short).await;
        assert_eq!(
            first,
            ProbeOutcome::Answered("PostgreSQL answered 'N'".into())
        );
        let mut s = TcpStream::connect(addr).await.unwrap();
        let second = probe(&mut s, ProbeKind::Http, "web", short).await;
        assert!(matches!(second, ProbeOutcome::Refused(_)), "{second}");
        assert_eq!(second.exit_code(), 1);
        let mut s = TcpStream::connect(addr).await.unwrap();
        let third = probe(&mut s, ProbeKind::Postgres, "db", short).await;
        assert_eq!(third, ProbeOutcome::TimedOut);
        assert_eq!(third.exit_code(), 2);
    }
}
