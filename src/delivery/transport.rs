//! The byte stream under the upstream SMTP client: TCP with `TCP_NODELAY`
//! (lettre writes the message and the final `.` separately; with Nagle's
//! algorithm every message would wait for a delayed ACK, ~40 ms) and, for
//! implicit TLS, our own verified rustls handshake (webpki roots + `ca_file`).

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use lettre::transport::smtp::client::{AsyncTokioStream, TlsParameters};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::outcome::describe_text;
use crate::config::{Account, Endpoint};

/// TLS settings of one account, built once: rustls for implicit TLS, lettre's
/// parameters (same roots) for STARTTLS.
#[derive(Clone)]
pub struct AccountTls {
    pub rustls: Arc<ClientConfig>,
    pub lettre: TlsParameters,
}

/// The TLS settings for `account`: webpki roots plus its `ca_file`. Verification is never disabled.
pub fn account_tls(account: &Account) -> Result<AccountTls, String> {
    use lettre::transport::smtp::client::{Certificate, CertificateStore};
    let rustls = crate::tls::upstream_client_config(account.ca_file.as_deref())
        .map_err(|e| format!("account {:?}: {e}", account.name))?;
    let mut b = TlsParameters::builder(account.smtp.host.clone())
        .certificate_store(CertificateStore::WebpkiRoots);
    if let Some(path) = &account.ca_file {
        let pem = std::fs::read(path).map_err(|e| {
            format!(
                "account {:?}: cannot read ca_file {}: {e}",
                account.name,
                path.display()
            )
        })?;
        let cert = Certificate::from_pem(&pem).map_err(|e| {
            format!(
                "account {:?}: ca_file {}: {e}",
                account.name,
                path.display()
            )
        })?;
        b = b.add_root_certificate(cert);
    }
    let lettre = b
        .build_rustls()
        .map_err(|e| format!("account {:?}: TLS set-up: {e}", account.name))?;
    Ok(AccountTls { rustls, lettre })
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

/// The implicit-TLS handshake, certificate and host name verified.
pub async fn implicit_tls(
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
        .map(TlsTransport)
        .map_err(|e| describe_text(&e.to_string(), &stage))
}

/// An implicit-TLS stream handed to lettre as its transport.
pub struct TlsTransport(TlsStream<TcpStream>);

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
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsTransport {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl AsyncTokioStream for TlsTransport {
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.0.get_ref().0.peer_addr()
    }
}
