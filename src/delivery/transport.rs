//! The byte stream under the upstream SMTP client: TCP with `TCP_NODELAY`
//! (lettre writes the message and the final `.` separately; with Nagle's
//! algorithm every message would wait for a delayed ACK, ~40 ms) and our own
//! verified rustls handshake (webpki roots + `ca_file`), for implicit TLS and
//! after our own STARTTLS exchange ([`super::starttls`]) alike.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use lettre::transport::smtp::client::AsyncTokioStream;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::outcome::describe_text;
use crate::config::{Account, Endpoint};

/// TLS settings of one account, built once; used for implicit TLS and STARTTLS.
#[derive(Clone)]
pub struct AccountTls {
    pub rustls: Arc<ClientConfig>,
}

/// The TLS settings for `account`: webpki roots plus its `ca_file`. Verification is never disabled.
pub fn account_tls(account: &Account) -> Result<AccountTls, String> {
    let rustls = crate::tls::upstream_client_config(account.ca_file.as_deref())
        .map_err(|e| format!("account {:?}: {e}", account.name))?;
    Ok(AccountTls { rustls })
}

/// Connects TCP (bounded by `timeout`) with `TCP_NODELAY`.
pub async fn tcp(ep: &Endpoint, timeout: Duration) -> Result<TcpStream, String> {
    let stage = format!("connecting to {ep}");
    let s = tokio::time::timeout(timeout, TcpStream::connect((ep.host.as_str(), ep.port)))
        .await
        .map_err(|_| describe_text("connection timed out", &stage))?
        .map_err(|e| describe_text(&e.to_string(), &stage))?;
    let _ = s.set_nodelay(true);
    Ok(s)
}

/// The TLS handshake (implicit TLS, or after STARTTLS was accepted),
/// certificate and host name verified.
pub async fn tls_handshake(
    tcp: TcpStream,
    ep: &Endpoint,
    config: Arc<ClientConfig>,
) -> Result<TlsTransport, String> {
    let stage = format!("TLS handshake with {ep}");
    let name = ServerName::try_from(ep.host.clone())
        .map_err(|_| format!("{stage}: {:?} is not a valid host name", ep.host))?;
    TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map(|stream| TlsTransport {
            stream,
            prelude: b"",
        })
        .map_err(|e| describe_text(&e.to_string(), &stage))
}

/// Handed to lettre in place of the greeting a server does not repeat after
/// STARTTLS; lettre reads it, ignores its text and sends EHLO over TLS.
const GREETING_AFTER_STARTTLS: &[u8] = b"220 TLS established after STARTTLS\r\n";

/// A verified TLS stream handed to lettre as its transport.
pub struct TlsTransport {
    stream: TlsStream<TcpStream>,
    /// Served before the stream's own bytes (made here, never from the network).
    prelude: &'static [u8],
}

impl TlsTransport {
    /// For a stream secured by STARTTLS: lettre's connect reads a greeting
    /// first, so it gets a local one (see [`GREETING_AFTER_STARTTLS`]).
    pub fn after_starttls(self) -> TlsTransport {
        TlsTransport {
            prelude: GREETING_AFTER_STARTTLS,
            ..self
        }
    }
}

impl fmt::Debug for TlsTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TlsTransport")
    }
}

impl AsyncRead for TlsTransport {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prelude.is_empty() {
            let n = self.prelude.len().min(buf.remaining());
            buf.put_slice(&self.prelude[..n]);
            self.prelude = &self.prelude[n..];
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsTransport {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

impl AsyncTokioStream for TlsTransport {
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.stream.get_ref().0.peer_addr()
    }
}
