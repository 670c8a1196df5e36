//! The one HTTP/1.1 GET the lab's tools, stories and tests send — over any
//! stream (a socket made in a pod's namespace, a tunnel), so that each
//! caller keeps its own way of connecting and none writes its own request
//! line or status parsing.
//!
//! Two framings: `Connection: close` and read to the end (a one-shot
//! check), or keep the connection open and read exactly `Content-Length`
//! bytes (several requests on one connection).

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// How the answer's end is found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Ask the server to close, and read until it does.
    UntilClose,
    /// Keep the connection; read the head, then `Content-Length` bytes.
    ContentLength,
}

/// A GET to send.
#[derive(Debug, Clone, Copy)]
pub struct Get<'a> {
    /// The `Host` header.
    pub host: &'a str,
    /// The path asked for.
    pub path: &'a str,
    /// An `Accept` header, if any.
    pub accept: Option<&'a str>,
    /// How the answer's end is found.
    pub framing: Framing,
}

impl<'a> Get<'a> {
    /// `GET path` to `host`, the connection closed after the answer.
    pub fn once(host: &'a str, path: &'a str) -> Self {
        Get {
            host,
            path,
            accept: None,
            framing: Framing::UntilClose,
        }
    }

    /// The request's bytes.
    pub fn request(&self) -> String {
        let mut request = format!("GET {} HTTP/1.1\r\nHost: {}\r\n", self.path, self.host);
        if let Some(accept) = self.accept {
            request.push_str(&format!("Accept: {accept}\r\n"));
        }
        if self.framing == Framing::UntilClose {
            request.push_str("Connection: close\r\n");
        }
        request.push_str("\r\n");
        request
    }
}

/// What came back.
#[derive(Debug, Clone, Default)]
pub struct Answer {
    /// The status code (0 when the status line is not HTTP).
    pub status: u16,
    /// The status line.
    pub status_line: String,
    /// The body, as received.
    pub body: Vec<u8>,
    /// Bytes written and read, head included.
    pub sent: usize,
    /// Bytes read, head included.
    pub received: usize,
}

impl Answer {
    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// The status code of an HTTP status line (`HTTP/1.1 200 OK`), or 0.
pub fn status_of(line: &str) -> u16 {
    line.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Sends `get` on `stream` and reads the answer.
pub async fn get<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    get: &Get<'_>,
) -> io::Result<Answer> {
    let request = get.request();
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    let head_end = match get.framing {
        Framing::UntilClose => {
            stream.read_to_end(&mut raw).await?;
            head_end(&raw).unwrap_or(raw.len())
        }
        Framing::ContentLength => {
            let mut chunk = [0u8; 8192];
            let end = loop {
                if let Some(end) = head_end(&raw) {
                    break end;
                }
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                raw.extend_from_slice(&chunk[..n]);
            };
            let length = content_length(&raw[..end]);
            while raw.len() < end + length {
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    break;
                }
                raw.extend_from_slice(&chunk[..n]);
            }
            // Bytes past the body are not this answer's.
            raw.truncate(end + length);
            end
        }
    };
    let head = String::from_utf8_lossy(&raw[..head_end]);
    let status_line = head.lines().next().unwrap_or_default().to_string();
    Ok(Answer {
        status: status_of(&status_line),
        status_line,
        body: raw[head_end..].to_vec(),
        sent: request.len(),
        received: raw.len(),
    })
}

fn head_end(raw: &[u8]) -> Option<usize> {
    raw.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

fn content_length(head: &[u8]) -> usize {
    String::from_utf8_lossy(head)
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_exactly_the_content_length_and_leaves_the_rest() {
        let (mut client, mut server) = tokio::io::duplex(4096);
        let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloNEXT";
        let serve = async {
            let mut buf = [0u8; 256];
            let n = server.read(&mut buf).await.unwrap();
            server.write_all(answer).await.unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        };
        let request = Get {
            host: "hello-app",
            path: "/health",
            accept: Some("application/json"),
            framing: Framing::ContentLength,
        };
        let (sent, got) = tokio::join!(serve, get(&mut client, &request));
        let got = got.unwrap();
        assert_eq!(
            sent,
            "GET /health HTTP/1.1\r\nHost: hello-app\r\nAccept: application/json\r\n\r\n"
        );
        assert_eq!((got.status, got.text().as_str()), (200, "hello"));
    }

    #[tokio::test]
    async fn until_close_reads_everything_and_asks_to_close() {
        let (mut client, mut server) = tokio::io::duplex(4096);
        let serve = async {
            let mut buf = [0u8; 256];
            let n = server.read(&mut buf).await.unwrap();
            server
                .write_all(b"HTTP/1.0 403 Forbidden\r\n\r\nno")
                .await
                .unwrap();
            drop(server);
            String::from_utf8_lossy(&buf[..n]).into_owned()
        };
        let request = Get::once("x", "/");
        let (sent, got) = tokio::join!(serve, get(&mut client, &request));
        let got = got.unwrap();
        assert!(sent.contains("Connection: close\r\n"), "{sent}");
        assert_eq!(got.status, 403);
        assert_eq!(got.status_line, "HTTP/1.0 403 Forbidden");
        assert_eq!(got.text(), "no");
    }

    #[test]
    fn a_status_line_that_is_not_http_has_status_zero() {
        assert_eq!(status_of("SSH-2.0-OpenSSH"), 0);
        assert_eq!(status_of("HTTP/1.1 503 Service Unavailable"), 503);
    }
}
