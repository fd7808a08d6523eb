//! A client connection that is plaintext or local TLS, and can be upgraded
//! in the middle of a session (SMTP and IMAP STARTTLS). The TLS handshake
//! always runs in the connection's own task, bounded by [`HANDSHAKE_TIMEOUT`],
//! with the listener's [`LocalAcceptor`] (rustls, or OpenSSL for the legacy profile).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::legacy_tls;
use crate::tls::LocalAcceptor;

/// How long a client may take to complete a TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// One client connection.
pub enum ClientStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// TLS through OpenSSL (`tls_profile = "legacy"`).
    Legacy(Box<legacy_tls::Stream>),
    /// What is left after a failed upgrade: every read and write fails.
    Closed,
}

impl ClientStream {
    /// True once the connection runs over TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self, ClientStream::Tls(_) | ClientStream::Legacy(_))
    }

    /// Implicit TLS (smtps/imaps listeners): the handshake before anything
    /// else. `None` (logged) when it fails or takes too long, or when
    /// `shutdown` fires first (a silent client never delays shutdown).
    pub async fn accept_tls(
        tcp: TcpStream,
        acceptor: &LocalAcceptor,
        shutdown: &CancellationToken,
    ) -> Option<ClientStream> {
        tokio::select! {
            r = handshake(tcp, acceptor) => r.ok(),
            _ = shutdown.cancelled() => None,
        }
    }

    /// STARTTLS: turns a plaintext connection into TLS in place. The caller
    /// must have flushed its "go ahead" reply and must discard anything it
    /// read before this call (bytes a client pipelined after STARTTLS would
    /// otherwise be treated as if they came over TLS). On failure the stream
    /// is [`ClientStream::Closed`].
    pub async fn start_tls(&mut self, acceptor: &LocalAcceptor) -> io::Result<()> {
        match std::mem::replace(self, ClientStream::Closed) {
            ClientStream::Plain(tcp) => {
                *self = handshake(tcp, acceptor).await?;
                Ok(())
            }
            other => {
                *self = other;
                Err(io::Error::other("connection is not plaintext"))
            }
        }
    }
}

impl ClientStream {
    /// The STARTTLS/STLS step of a pre-login loop: sends `go_ahead`, then
    /// upgrades. `discarded` is how many bytes the caller dropped from its
    /// read buffer (sent in plaintext after the command: never acted on).
    /// A failed handshake counts as a TLS error for `listener` in `metrics`.
    pub async fn upgrade_after(
        &mut self,
        go_ahead: &[u8],
        discarded: usize,
        acceptor: &LocalAcceptor,
        metrics: &crate::metrics::Metrics,
        listener: &str,
    ) -> io::Result<()> {
        self.write_all(go_ahead).await?;
        self.flush().await?;
        if discarded > 0 {
            info!(
                bytes = discarded,
                listener, "discarding bytes sent after STARTTLS before the TLS handshake"
            );
        }
        let r = self.start_tls(acceptor).await;
        if r.is_err() {
            metrics.tls_error(listener);
        }
        r
    }
}

/// The server side of a handshake. Failures are logged at info: an admin
/// whose device only speaks SSLv3/TLS 1.0 needs to see why it cannot connect.
async fn handshake(tcp: TcpStream, acceptor: &LocalAcceptor) -> io::Result<ClientStream> {
    let e = match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept(tcp, acceptor)).await {
        Ok(Ok(s)) => return Ok(s),
        Ok(Err(e)) => e,
        Err(_) => io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"),
    };
    match acceptor {
        LocalAcceptor::Modern(_) => {
            info!(error = %e, "TLS handshake failed (this listener accepts TLS 1.2 and 1.3 only; a device that only speaks TLS 1.0/1.1 needs tls_profile = \"legacy\" in a build with the legacy-tls feature, or the plaintext port)")
        }
        LocalAcceptor::Legacy(_) => {
            info!(error = %e, "TLS handshake failed (legacy profile: TLS 1.0 to 1.3; devices limited to RSA key exchange also need an RSA certificate)")
        }
    }
    Err(e)
}

async fn accept(tcp: TcpStream, acceptor: &LocalAcceptor) -> io::Result<ClientStream> {
    match acceptor {
        LocalAcceptor::Modern(a) => {
            let tls = a.accept(tcp).await?;
            let (_, conn) = tls.get_ref();
            debug!(
                version = ?conn.protocol_version(),
                cipher = ?conn.negotiated_cipher_suite().map(|c| c.suite()),
                "TLS established"
            );
            Ok(ClientStream::Tls(Box::new(tls)))
        }
        LocalAcceptor::Legacy(a) => {
            let s = a.accept(tcp).await?;
            // At info: the admin wants to know which devices still need old TLS.
            let (version, cipher) = s.describe();
            info!(version, cipher, "TLS established (legacy profile)");
            Ok(ClientStream::Legacy(Box::new(s)))
        }
    }
}

/// Writes a short text (a sign-off) without waiting long.
pub async fn say<S: AsyncWrite + Unpin>(s: &mut S, text: &[u8]) {
    let _ = tokio::time::timeout(Duration::from_secs(5), s.write_all(text)).await;
}

/// [`say`], then closes politely without waiting long.
pub async fn say_and_close<S: AsyncWrite + Unpin>(s: &mut S, text: &[u8]) {
    say(s, text).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), s.shutdown()).await;
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "connection closed")
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            ClientStream::Legacy(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            ClientStream::Closed => Poll::Ready(Err(closed())),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            ClientStream::Legacy(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            ClientStream::Closed => Poll::Ready(Err(closed())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            ClientStream::Legacy(s) => Pin::new(s.as_mut()).poll_flush(cx),
            ClientStream::Closed => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            ClientStream::Legacy(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            ClientStream::Closed => Poll::Ready(Ok(())),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            ClientStream::Legacy(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            ClientStream::Closed => Poll::Ready(Err(closed())),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ClientStream::Plain(s) => s.is_write_vectored(),
            ClientStream::Tls(s) => s.is_write_vectored(),
            ClientStream::Legacy(s) => s.is_write_vectored(),
            ClientStream::Closed => false,
        }
    }
}
