//! The upstream IMAP side: TCP connect, TLS (implicit, or STARTTLS on a
//! plain connection, never credentials in the clear), the greeting, and a
//! LOGIN built by us with safe quoting or literals.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::framing::{FrameError, LineBuffer};
use crate::config::{Endpoint, TlsMode};
use crate::hints::Problem;
use crate::secret::Secret;

/// Longest upstream line we read before login (greeting, CAPABILITY, status).
const MAX_UPSTREAM_LINE: usize = 64 * 1024;
/// Untagged data during LOGIN we are willing to hold and pass on.
const MAX_UNTAGGED: usize = 64 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot resolve {0}")]
    Resolve(String),
    #[error("cannot connect to {endpoint}: {source}")]
    Connect { endpoint: String, source: io::Error },
    #[error("timed out {0}")]
    Timeout(&'static str),
    #[error("TLS handshake with {endpoint} failed: {source}")]
    Tls { endpoint: String, source: io::Error },
    #[error("{0}")]
    Protocol(String),
    #[error("connection closed by the server {0}")]
    Closed(&'static str),
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// The server refused the login (tagged NO or BAD). `text` is the
    /// server's own status text (it never contains what we sent).
    #[error("login refused: {text}")]
    Rejected { text: String },
    /// XOAUTH2 refused: `failure` is the provider's decoded challenge
    /// (status 401: the token is invalid or expired, so refresh and retry once).
    #[error("OAuth2 token refused: {text}{}", failure.as_ref().map(|f| format!(" (status {})", f.status)).unwrap_or_default())]
    TokenRejected {
        text: String,
        failure: Option<crate::oauth2::sasl::XOAuth2Failure>,
    },
}

impl UpstreamError {
    /// The set-up mistake this shows, if it is one we know (the lookup
    /// SMTP delivery and the status page use too, see [`crate::hints`]).
    pub fn problem(&self) -> Option<Problem> {
        match self {
            UpstreamError::Rejected { .. } => Some(Problem::AuthRefused),
            UpstreamError::Resolve(_) => Some(Problem::Dns),
            UpstreamError::Connect { source, .. }
            | UpstreamError::Tls { source, .. }
            | UpstreamError::Io(source) => Problem::of_error(source),
            _ => None,
        }
    }

    /// A certificate problem (untrusted, wrong name, expired)?
    pub fn is_certificate(&self) -> bool {
        matches!(self, UpstreamError::Tls { .. })
            && self.problem().is_some_and(Problem::is_certificate)
    }
}

pub(crate) fn frame_err(e: FrameError, when: &'static str) -> UpstreamError {
    match e {
        FrameError::Closed => UpstreamError::Closed(when),
        FrameError::Io(e) => UpstreamError::Io(e),
        FrameError::TooLong { .. } | FrameError::LiteralTooLarge { .. } => {
            UpstreamError::Protocol(format!("server sent an over-long line {when}"))
        }
    }
}

/// A TLS connection to the upstream plus what was read beyond the last line.
pub struct Connection {
    pub stream: TlsStream<TcpStream>,
    pub buffer: LineBuffer,
    /// The server's greeting line (empty after STARTTLS, which has none).
    pub greeting: String,
}

/// Connects, secures and reads the greeting. Every step has a deadline.
pub async fn connect(
    endpoint: &Endpoint,
    tls: &Arc<ClientConfig>,
    timeout: Duration,
) -> Result<Connection, UpstreamError> {
    tokio::time::timeout(timeout, connect_inner(endpoint, tls))
        .await
        .map_err(|_| UpstreamError::Timeout("connecting and reading the greeting"))?
}

/// The TCP connection to `endpoint` and the name its certificate must carry
/// (shared with the POP3 upstream).
pub(crate) async fn open_tcp(
    endpoint: &Endpoint,
) -> Result<(ServerName<'static>, TcpStream), UpstreamError> {
    let server_name = ServerName::try_from(endpoint.host.clone()).map_err(|_| {
        UpstreamError::Resolve(format!("{:?} (not a valid host name)", endpoint.host))
    })?;
    let addr = (endpoint.host.as_str(), endpoint.port);
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| UpstreamError::Timeout("connecting"))?
        .map_err(|source| UpstreamError::Connect {
            endpoint: endpoint.to_string(),
            source,
        })?;
    let _ = tcp.set_nodelay(true);
    Ok((server_name, tcp))
}

/// The TLS error for a failed handshake with `endpoint`.
pub(crate) fn tls_error(endpoint: &Endpoint) -> impl Fn(io::Error) -> UpstreamError + '_ {
    move |source| UpstreamError::Tls {
        endpoint: endpoint.to_string(),
        source,
    }
}

async fn connect_inner(
    endpoint: &Endpoint,
    tls: &Arc<ClientConfig>,
) -> Result<Connection, UpstreamError> {
    let (server_name, tcp) = open_tcp(endpoint).await?;
    let connector = TlsConnector::from(tls.clone());
    let tls_err = tls_error(endpoint);
    match endpoint.tls {
        TlsMode::Implicit => {
            let mut stream = connector.connect(server_name, tcp).await.map_err(tls_err)?;
            let mut buffer = LineBuffer::default();
            let greeting = read_greeting(&mut buffer, &mut stream).await?;
            Ok(Connection {
                stream,
                buffer,
                greeting,
            })
        }
        TlsMode::Starttls => {
            let mut tcp = tcp;
            let mut buffer = LineBuffer::default();
            read_greeting(&mut buffer, &mut tcp).await?;
            tcp.write_all(b"S0 STARTTLS\r\n").await?;
            let (ok, text) = read_tagged(&mut buffer, &mut tcp, "S0", &mut |_| {}).await?;
            if !ok {
                return Err(UpstreamError::Protocol(format!(
                    "server refused STARTTLS ({text}); refusing to log in without TLS"
                )));
            }
            if !buffer.is_empty() {
                // Anything sent before the handshake could be an injected response.
                return Err(UpstreamError::Protocol(
                    "server sent data after accepting STARTTLS".into(),
                ));
            }
            let stream = connector.connect(server_name, tcp).await.map_err(tls_err)?;
            Ok(Connection {
                stream,
                buffer,
                greeting: String::new(),
            })
        }
    }
}

async fn read_greeting<R: AsyncRead + Unpin>(
    buf: &mut LineBuffer,
    r: &mut R,
) -> Result<String, UpstreamError> {
    let line = buf
        .read_line(r, MAX_UPSTREAM_LINE)
        .await
        .map_err(|e| frame_err(e, "before its greeting"))?;
    let text = String::from_utf8_lossy(&line).trim_end().to_string();
    let upper = text.to_ascii_uppercase();
    if upper.starts_with("* OK") {
        Ok(text)
    } else if upper.starts_with("* BYE") {
        Err(UpstreamError::Protocol(format!(
            "server refused the connection: {}",
            clip(&text)
        )))
    } else if upper.starts_with("* PREAUTH") {
        Err(UpstreamError::Protocol(
            "server greeted with PREAUTH; cannot log in as the account".into(),
        ))
    } else {
        Err(UpstreamError::Protocol(format!(
            "unexpected greeting (is this an IMAP server, and is the TLS mode right?): {}",
            clip(&text)
        )))
    }
}

pub(crate) fn clip(s: &str) -> String {
    s.chars().take(200).collect()
}

/// Reads until the tagged status for `tag`; untagged lines go to `untagged`.
/// Returns (status was OK, the rest of the status line after the status word).
async fn read_tagged<R: AsyncRead + Unpin>(
    buf: &mut LineBuffer,
    r: &mut R,
    tag: &str,
    untagged: &mut (dyn FnMut(Vec<u8>) + Send),
) -> Result<(bool, String), UpstreamError> {
    let prefix = format!("{tag} ");
    loop {
        let line = buf
            .read_line(r, MAX_UPSTREAM_LINE)
            .await
            .map_err(|e| frame_err(e, "before answering"))?;
        if line.starts_with(prefix.as_bytes()) {
            let rest = String::from_utf8_lossy(&line[prefix.len()..])
                .trim_end()
                .to_string();
            let (status, text) = rest.split_once(' ').unwrap_or((rest.as_str(), ""));
            return Ok((status.eq_ignore_ascii_case("OK"), text.to_string()));
        }
        if line.starts_with(b"* BYE") {
            return Err(UpstreamError::Protocol(format!(
                "server closed the session: {}",
                clip(String::from_utf8_lossy(&line).trim_end())
            )));
        }
        untagged(line);
    }
}

/// How the upstream answered a successful LOGIN.
#[derive(Debug, Default)]
pub struct LoginReply {
    /// The response code for the client's tagged OK (e.g. `CAPABILITY ...`),
    /// folded in from an untagged CAPABILITY when the OK had none.
    pub code: Option<String>,
    /// Other untagged lines the server sent, to pass on unchanged.
    pub untagged: Vec<u8>,
}

/// One LOGIN argument, encoded so no byte can end the command early.
enum Arg {
    Quoted(Vec<u8>),
    Literal(Vec<u8>),
}

fn encode_arg(s: &[u8]) -> Arg {
    if s.iter()
        .all(|b| (0x01..0x80).contains(b) && *b != b'\r' && *b != b'\n')
    {
        let mut q = Vec::with_capacity(s.len() + 2);
        q.push(b'"');
        for &b in s {
            if b == b'"' || b == b'\\' {
                q.push(b'\\');
            }
            q.push(b);
        }
        q.push(b'"');
        Arg::Quoted(q)
    } else {
        Arg::Literal(s.to_vec())
    }
}

/// The LOGIN command as pieces: after each piece but the last the server's
/// `+` continuation is needed (synchronising literals work everywhere).
fn login_pieces(tag: &str, user: &[u8], password: &[u8]) -> Vec<Vec<u8>> {
    let mut pieces = Vec::new();
    let mut cur = format!("{tag} LOGIN").into_bytes();
    for arg in [user, password] {
        cur.push(b' ');
        match encode_arg(arg) {
            Arg::Quoted(q) => cur.extend_from_slice(&q),
            Arg::Literal(l) => {
                cur.extend_from_slice(format!("{{{}}}\r\n", l.len()).as_bytes());
                pieces.push(std::mem::replace(&mut cur, l));
            }
        }
    }
    cur.extend_from_slice(b"\r\n");
    pieces.push(cur);
    pieces
}

/// Logs in with `user`/`password`. `Rejected` when the server says NO/BAD.
pub async fn login(
    conn: &mut Connection,
    user: &str,
    password: &Secret,
    timeout: Duration,
) -> Result<LoginReply, UpstreamError> {
    tokio::time::timeout(timeout, login_inner(conn, user, password))
        .await
        .map_err(|_| UpstreamError::Timeout("waiting for the LOGIN reply"))?
}

async fn login_inner(
    conn: &mut Connection,
    user: &str,
    password: &Secret,
) -> Result<LoginReply, UpstreamError> {
    if user.contains('\0') || password.expose().contains('\0') {
        return Err(UpstreamError::Protocol(
            "user name or password contains a NUL byte, which IMAP cannot carry".into(),
        ));
    }
    const TAG: &str = "L1";
    let pieces = login_pieces(TAG, user.as_bytes(), password.expose().as_bytes());
    let mut seen = Untagged::default();
    let mut collect = |line: Vec<u8>| seen.push(line);
    let last = pieces.len() - 1;
    for (i, piece) in pieces.iter().enumerate() {
        conn.stream.write_all(piece).await?;
        conn.stream.flush().await?;
        if i == last {
            break;
        }
        // Wait for the continuation; a tagged reply here means refusal.
        loop {
            let line = conn
                .buffer
                .read_line(&mut conn.stream, MAX_UPSTREAM_LINE)
                .await
                .map_err(|e| frame_err(e, "during LOGIN"))?;
            if line.starts_with(b"+") {
                break;
            }
            if line.starts_with(format!("{TAG} ").as_bytes()) {
                let text = String::from_utf8_lossy(&line[TAG.len() + 1..])
                    .trim_end()
                    .to_string();
                return Err(UpstreamError::Rejected { text: clip(&text) });
            }
            collect(line);
        }
    }
    let (ok, text) = read_tagged(&mut conn.buffer, &mut conn.stream, TAG, &mut collect).await?;
    if !ok {
        return Err(UpstreamError::Rejected { text: clip(&text) });
    }
    Ok(seen.finish(&text))
}

/// The untagged lines of a login exchange: CAPABILITY kept for the reply
/// code, the rest (bounded) passed on.
#[derive(Default)]
struct Untagged {
    reply: LoginReply,
    capability: Option<String>,
    len: usize,
}

impl Untagged {
    fn push(&mut self, line: Vec<u8>) {
        if line.len() >= 13 && line[..13].eq_ignore_ascii_case(b"* CAPABILITY ") {
            self.capability = Some(String::from_utf8_lossy(&line[2..]).trim_end().to_string());
        } else if line.starts_with(b"* ") && self.len + line.len() <= MAX_UNTAGGED {
            self.len += line.len();
            self.reply.untagged.extend_from_slice(&line);
        }
    }

    /// The reply for a tagged OK with status text `text`.
    fn finish(mut self, text: &str) -> LoginReply {
        self.reply.code = match text.strip_prefix('[').and_then(|t| t.split_once(']')) {
            Some((code, _)) => Some(code.to_string()),
            None => self.capability,
        };
        self.reply
    }
}

/// True when the greeting's CAPABILITY code lists `cap` (e.g. `SASL-IR`).
pub fn greeting_offers(greeting: &str, cap: &str) -> bool {
    greeting
        .split(['[', ']', ' '])
        .any(|w| w.eq_ignore_ascii_case(cap))
}

/// `AUTHENTICATE XOAUTH2` with an OAuth2 access token, the initial response
/// inline when the greeting offers SASL-IR (RFC 4959), else after the `+`.
/// A refused token (the provider's `+ <base64 JSON>` challenge, answered
/// with an empty line, then NO) is [`UpstreamError::TokenRejected`].
pub async fn authenticate_xoauth2(
    conn: &mut Connection,
    user: &str,
    token: &Secret,
    timeout: Duration,
) -> Result<LoginReply, UpstreamError> {
    tokio::time::timeout(timeout, xoauth2_inner(conn, user, token))
        .await
        .map_err(|_| UpstreamError::Timeout("waiting for the AUTHENTICATE reply"))?
}

async fn xoauth2_inner(
    conn: &mut Connection,
    user: &str,
    token: &Secret,
) -> Result<LoginReply, UpstreamError> {
    let ir = crate::oauth2::sasl::initial_response(user, token)
        .map_err(|e| UpstreamError::Protocol(e.to_string()))?;
    const TAG: &str = "L1";
    let sasl_ir = greeting_offers(&conn.greeting, "SASL-IR");
    if sasl_ir {
        conn.stream
            .write_all(format!("{TAG} AUTHENTICATE XOAUTH2 {}\r\n", ir.expose()).as_bytes())
            .await?;
    } else {
        conn.stream
            .write_all(format!("{TAG} AUTHENTICATE XOAUTH2\r\n").as_bytes())
            .await?;
    }
    conn.stream.flush().await?;
    let mut seen = Untagged::default();
    let mut sent_ir = sasl_ir;
    let mut failure = None;
    let prefix = format!("{TAG} ");
    loop {
        let line = conn
            .buffer
            .read_line(&mut conn.stream, MAX_UPSTREAM_LINE)
            .await
            .map_err(|e| frame_err(e, "during AUTHENTICATE"))?;
        if line.starts_with(b"+") {
            let data = String::from_utf8_lossy(&line[1..]).trim().to_string();
            if sent_ir {
                // The error challenge; an empty response ends the exchange.
                failure = crate::oauth2::sasl::decode_failure(&data).ok();
                conn.stream.write_all(b"\r\n").await?;
            } else {
                conn.stream
                    .write_all(format!("{}\r\n", ir.expose()).as_bytes())
                    .await?;
                sent_ir = true;
            }
            conn.stream.flush().await?;
            continue;
        }
        if line.starts_with(prefix.as_bytes()) {
            let rest = String::from_utf8_lossy(&line[prefix.len()..])
                .trim_end()
                .to_string();
            let (status, text) = rest.split_once(' ').unwrap_or((rest.as_str(), ""));
            if status.eq_ignore_ascii_case("OK") {
                return Ok(seen.finish(text));
            }
            return Err(UpstreamError::TokenRejected {
                text: clip(text),
                failure,
            });
        }
        if line.starts_with(b"* BYE") {
            return Err(UpstreamError::Protocol(format!(
                "server closed the session: {}",
                clip(String::from_utf8_lossy(&line).trim_end())
            )));
        }
        seen.push(line);
    }
}

/// Sends LOGOUT and waits briefly for the answer (for `mailbridge check`).
pub async fn logout(conn: &mut Connection) {
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        conn.stream.write_all(b"L2 LOGOUT\r\n").await?;
        let _ = read_tagged(&mut conn.buffer, &mut conn.stream, "L2", &mut |_| {}).await;
        conn.stream.shutdown().await
    })
    .await;
}

/// Closes a stream politely, without waiting long.
pub async fn close<S: AsyncWrite + Unpin>(s: &mut S) {
    let _ = tokio::time::timeout(Duration::from_secs(2), s.shutdown()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_quoting() {
        let p = login_pieces("L1", b"me@x.com", b"a b\"c\\d{5}");
        assert_eq!(
            p,
            vec![b"L1 LOGIN \"me@x.com\" \"a b\\\"c\\\\d{5}\"\r\n".to_vec()]
        );
        let p = login_pieces("L1", b"me", b"p\r\nL2 DELETE INBOX");
        assert_eq!(
            p,
            vec![
                b"L1 LOGIN \"me\" {18}\r\n".to_vec(),
                b"p\r\nL2 DELETE INBOX\r\n".to_vec()
            ]
        );
        let p = login_pieces("L1", "j\u{f6}".as_bytes(), b"pw");
        assert_eq!(
            p,
            vec![
                b"L1 LOGIN {3}\r\n".to_vec(),
                b"j\xc3\xb6 \"pw\"\r\n".to_vec()
            ]
        );
    }
}
