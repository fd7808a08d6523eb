//! The upstream POP3 side: TCP connect, TLS (implicit, or STLS on a plain
//! connection, never credentials in the clear), the `+OK` greeting, and
//! USER/PASS with the account's credentials (or AUTH XOAUTH2 with an OAuth2 token). Errors are the IMAP upstream's
//! [`UpstreamError`] (the same failure kinds, the same hints).

use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::config::{Endpoint, TlsMode};
use crate::imap::framing::LineBuffer;
use crate::imap::upstream::{clip, frame_err, open_tcp, tls_error};
pub use crate::imap::upstream::{close, UpstreamError};
use crate::secret::Secret;

/// Longest upstream status line we read (RFC 2449: 512 octets; lenient).
const MAX_UPSTREAM_LINE: usize = 4096;

/// A TLS connection to the upstream plus what was read beyond the last line.
pub struct Connection {
    pub stream: TlsStream<TcpStream>,
    pub buffer: LineBuffer,
}

/// Connects, secures and reads the greeting, all within `timeout`.
pub async fn connect(
    endpoint: &Endpoint,
    tls: &Arc<ClientConfig>,
    timeout: Duration,
) -> Result<Connection, UpstreamError> {
    tokio::time::timeout(timeout, connect_inner(endpoint, tls))
        .await
        .map_err(|_| UpstreamError::Timeout("connecting and reading the greeting"))?
}

async fn connect_inner(
    endpoint: &Endpoint,
    tls: &Arc<ClientConfig>,
) -> Result<Connection, UpstreamError> {
    let (server_name, tcp) = open_tcp(endpoint).await?;
    let connector = TlsConnector::from(tls.clone());
    let mut buffer = LineBuffer::default();
    match endpoint.tls {
        TlsMode::Implicit => {
            let mut stream = connector
                .connect(server_name, tcp)
                .await
                .map_err(tls_error(endpoint))?;
            greeting(&mut buffer, &mut stream).await?;
            Ok(Connection { stream, buffer })
        }
        TlsMode::Starttls => {
            let mut tcp = tcp;
            greeting(&mut buffer, &mut tcp).await?;
            tcp.write_all(b"STLS\r\n").await?;
            let (ok, text) = status(&mut buffer, &mut tcp, "answering STLS").await?;
            if !ok {
                return Err(UpstreamError::Protocol(format!(
                    "server refused STLS ({text}); refusing to log in without TLS"
                )));
            }
            if !buffer.is_empty() {
                // Anything sent before the handshake could be an injected response.
                return Err(UpstreamError::Protocol(
                    "server sent data after accepting STLS".into(),
                ));
            }
            let stream = connector
                .connect(server_name, tcp)
                .await
                .map_err(tls_error(endpoint))?;
            Ok(Connection { stream, buffer })
        }
    }
}

/// Reads one status line: (it was `+OK`, the text after the status word).
async fn status<R: AsyncRead + Unpin>(
    buf: &mut LineBuffer,
    r: &mut R,
    when: &'static str,
) -> Result<(bool, String), UpstreamError> {
    let line = buf
        .read_line(r, MAX_UPSTREAM_LINE)
        .await
        .map_err(|e| frame_err(e, when))?;
    let text = String::from_utf8_lossy(&line).trim_end().to_string();
    let (word, rest) = text.split_once(' ').unwrap_or((text.as_str(), ""));
    if word.eq_ignore_ascii_case("+OK") {
        Ok((true, clip(rest)))
    } else if word.eq_ignore_ascii_case("-ERR") {
        Ok((false, clip(rest)))
    } else {
        Err(UpstreamError::Protocol(format!(
            "unexpected reply {when} (is this a POP3 server, and is the TLS mode right?): {}",
            clip(&text)
        )))
    }
}

async fn greeting<R: AsyncRead + Unpin>(
    buf: &mut LineBuffer,
    r: &mut R,
) -> Result<(), UpstreamError> {
    match status(buf, r, "before its greeting").await? {
        (true, _) => Ok(()),
        (false, text) => Err(UpstreamError::Protocol(format!(
            "server refused the connection: {text}"
        ))),
    }
}

/// The user name to send: Gmail's recent mode is a `recent:` prefix.
pub fn upstream_user(username: &str, recent_mode: bool) -> String {
    if recent_mode {
        format!("recent:{username}")
    } else {
        username.to_string()
    }
}

/// Logs in with USER/PASS. `Rejected` (with the server's text, never what we
/// sent) when the server answers `-ERR`.
pub async fn login(
    conn: &mut Connection,
    user: &str,
    password: &Secret,
    timeout: Duration,
) -> Result<(), UpstreamError> {
    tokio::time::timeout(timeout, login_inner(conn, user, password))
        .await
        .map_err(|_| UpstreamError::Timeout("waiting for the PASS reply"))?
}

async fn login_inner(
    conn: &mut Connection,
    user: &str,
    password: &Secret,
) -> Result<(), UpstreamError> {
    let unsafe_byte = |s: &str| s.bytes().any(|b| b == 0 || b == b'\r' || b == b'\n');
    if unsafe_byte(user) || unsafe_byte(password.expose()) {
        return Err(UpstreamError::Protocol(
            "user name or password contains NUL, CR or LF, which POP3 cannot carry".into(),
        ));
    }
    let steps: [(&[u8], &[u8], &'static str); 2] = [
        (b"USER ", user.as_bytes(), "answering USER"),
        (b"PASS ", password.expose().as_bytes(), "answering PASS"),
    ];
    for (verb, arg, when) in steps {
        let mut line = Vec::with_capacity(verb.len() + arg.len() + 2);
        line.extend_from_slice(verb);
        line.extend_from_slice(arg);
        line.extend_from_slice(b"\r\n");
        conn.stream.write_all(&line).await?;
        conn.stream.flush().await?;
        let (ok, text) = status(&mut conn.buffer, &mut conn.stream, when).await?;
        if !ok {
            return Err(UpstreamError::Rejected { text });
        }
    }
    Ok(())
}

/// `AUTH XOAUTH2` (RFC 5034 exchange: the initial response after the
/// server's `+`, as Microsoft documents it). A refused token (a `+ <base64
/// JSON>` challenge answered with an empty line, then `-ERR`) is
/// [`UpstreamError::TokenRejected`].
pub async fn authenticate_xoauth2(
    conn: &mut Connection,
    user: &str,
    token: &Secret,
    timeout: Duration,
) -> Result<(), UpstreamError> {
    tokio::time::timeout(timeout, xoauth2_inner(conn, user, token))
        .await
        .map_err(|_| UpstreamError::Timeout("waiting for the AUTH reply"))?
}

async fn xoauth2_inner(
    conn: &mut Connection,
    user: &str,
    token: &Secret,
) -> Result<(), UpstreamError> {
    let ir = crate::oauth2::sasl::initial_response(user, token)
        .map_err(|e| UpstreamError::Protocol(e.to_string()))?;
    conn.stream.write_all(b"AUTH XOAUTH2\r\n").await?;
    conn.stream.flush().await?;
    let mut sent = false;
    let mut failure = None;
    loop {
        let line = conn
            .buffer
            .read_line(&mut conn.stream, MAX_UPSTREAM_LINE)
            .await
            .map_err(|e| frame_err(e, "during AUTH"))?;
        let text = String::from_utf8_lossy(&line).trim_end().to_string();
        if text.len() >= 3 && text[..3].eq_ignore_ascii_case("+OK") {
            return Ok(());
        }
        if let Some(rest) = text.strip_prefix("-ERR") {
            return Err(UpstreamError::TokenRejected {
                text: clip(rest.trim()),
                failure,
            });
        }
        let Some(data) = text.strip_prefix('+') else {
            return Err(UpstreamError::Protocol(format!(
                "unexpected reply during AUTH: {}",
                clip(&text)
            )));
        };
        if sent {
            // The error challenge; an empty response ends the exchange.
            failure = crate::oauth2::sasl::decode_failure(data.trim()).ok();
            conn.stream.write_all(b"\r\n").await?;
        } else {
            conn.stream
                .write_all(format!("{}\r\n", ir.expose()).as_bytes())
                .await?;
            sent = true;
        }
        conn.stream.flush().await?;
    }
}

/// Sends QUIT and waits briefly for the answer (for `mailbridge check`).
/// QUIT before any DELE changes nothing in the mailbox.
pub async fn quit(conn: &mut Connection) {
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        conn.stream.write_all(b"QUIT\r\n").await?;
        let _ = status(&mut conn.buffer, &mut conn.stream, "answering QUIT").await;
        conn.stream.shutdown().await
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_mode_prefixes_the_user() {
        assert_eq!(upstream_user("me@gmail.com", true), "recent:me@gmail.com");
        assert_eq!(upstream_user("me@gmail.com", false), "me@gmail.com");
    }
}
