//! What the pump reads from ([`BulkRead`]), and reading a rustls stream
//! many TLS records per call: socket reads of up to [`READ_AHEAD`] bytes
//! of ciphertext into a per-thread buffer, fed to rustls record by record
//! and decrypted into the pump's buffer, until the socket has nothing more
//! or the buffer is nearly full (then one write to the other side). tokio-rustls on
//! its own reads at most 4 KiB of ciphertext per `recv` (rustls's read
//! size when it holds no partial record) and hands out one record per
//! read, so a 16 KiB record cost about four `recv`s and one `send` to the
//! client.
//!
//! No ciphertext is ever kept outside rustls: a call reads only as much as
//! the pump's buffer can take once decrypted (plaintext is never longer
//! than its ciphertext, plus at most one partial record rustls already
//! holds), so everything read is fed to rustls before the call returns.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use rustls::ConnectionCommon;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::TcpStream;

/// Most ciphertext read from the socket in one call (the per-thread buffer's size).
pub const READ_AHEAD: usize = 64 * 1024;
/// Longest TLS record rustls accepts (its `MAX_WIRE_SIZE`: header, 16 KiB
/// of plaintext and the most expansion TLS 1.2 allows): the most ciphertext
/// rustls can hold as a partial record, and so the most plaintext one
/// call can get beyond the ciphertext it reads.
pub const MAX_RECORD: usize = 5 + 16 * 1024 + 2048;
/// Another socket read in the same call only with room for this much more.
const MORE: usize = 16 * 1024;

thread_local! {
    /// Where every TLS read on this thread puts ciphertext (polls do not interleave).
    static CIPHERTEXT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// A stream the pump reads from: `Ready(Ok(0))` is the end of the stream;
/// `buf` is never empty. TLS streams fill it with many records at once.
pub trait BulkRead {
    fn poll_read_bulk(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>>;
}

/// One `poll_read` of `r`: the [`BulkRead`] of streams with nothing better.
pub fn poll_read_once<R: AsyncRead + Unpin + ?Sized>(
    r: &mut R,
    cx: &mut Context<'_>,
    buf: &mut [u8],
) -> Poll<io::Result<usize>> {
    let mut rb = ReadBuf::new(buf);
    std::task::ready!(Pin::new(r).poll_read(cx, &mut rb))?;
    Poll::Ready(Ok(rb.filled().len()))
}

/// The upstream side of IMAP and POP3.
impl BulkRead for tokio_rustls::client::TlsStream<TcpStream> {
    fn poll_read_bulk(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let (io, conn) = self.get_mut();
        poll_read_tls(io, &mut **conn, cx, buf)
    }
}

/// A client connection with local TLS.
impl BulkRead for tokio_rustls::server::TlsStream<TcpStream> {
    fn poll_read_bulk(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let (io, conn) = self.get_mut();
        poll_read_tls(io, &mut **conn, cx, buf)
    }
}

/// A client connection: local TLS read many records at a time.
impl BulkRead for crate::stream::ClientStream {
    fn poll_read_bulk(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        match self {
            crate::stream::ClientStream::Tls(s) => s.poll_read_bulk(cx, buf),
            other => poll_read_once(other, cx, buf),
        }
    }
}

/// IMAP with `sent_copy = "skip"`: the client's bytes after the filter.
impl<S: AsyncRead + tokio::io::AsyncWrite + Unpin> BulkRead
    for crate::imap::sent_copy::SentCopyFilter<'_, S>
{
    fn poll_read_bulk(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        poll_read_once(self, cx, buf)
    }
}

#[cfg(test)]
impl BulkRead for tokio::io::DuplexStream {
    fn poll_read_bulk(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        poll_read_once(self, cx, buf)
    }
}

/// What [`drain`] found in rustls's received plaintext.
enum Drained {
    /// Nothing decrypted and waiting; the stream goes on.
    Empty,
    Bytes(usize),
    /// The stream is over: `Ok(0)` after the peer's close_notify, or its
    /// error (a TCP end of stream without close_notify is `UnexpectedEof`).
    End(io::Result<usize>),
}

/// Moves the plaintext rustls holds into `buf`.
fn drain<D>(conn: &mut ConnectionCommon<D>, buf: &mut [u8]) -> Drained {
    if buf.is_empty() {
        return Drained::Bytes(0);
    }
    match io::Read::read(&mut conn.reader(), buf) {
        Ok(0) => Drained::End(Ok(0)),
        Ok(n) => Drained::Bytes(n),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Drained::Empty,
        Err(e) => Drained::End(Err(e)),
    }
}

/// A reader with nothing to read yet: lets rustls shrink its buffer, as it
/// does before every read, without reading or seeing an end of stream.
struct NothingYet;

impl io::Read for NothingYet {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Err(io::ErrorKind::WouldBlock.into())
    }
}

fn tls_error(e: rustls::Error) -> io::Error {
    // As tokio-rustls reports it.
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Reads from the TLS connection `conn` over `io` into `buf` (at least
/// [`MAX_RECORD`] + 1 bytes long): first what rustls decrypted earlier,
/// else reads of ciphertext from `io` (up to [`READ_AHEAD`] each, while
/// the socket has more and `buf` has room), all of it decrypted into `buf`.
/// The same results as tokio-rustls's `poll_read`: `Ok(0)` after
/// close_notify, `UnexpectedEof` for a TCP end without it, `InvalidData`
/// for a TLS error (after the plaintext before it was handed out).
pub fn poll_read_tls<IO, D>(
    io: &mut IO,
    conn: &mut ConnectionCommon<D>,
    cx: &mut Context<'_>,
    buf: &mut [u8],
) -> Poll<io::Result<usize>>
where
    IO: AsyncRead + Unpin,
{
    if buf.len() <= MAX_RECORD {
        return Poll::Ready(Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "TLS read buffer shorter than one record",
        )));
    }
    let mut filled = 0;
    loop {
        if filled == 0 {
            match drain(conn, buf) {
                Drained::Empty => {}
                Drained::Bytes(n) => return Poll::Ready(Ok(n)),
                Drained::End(r) => return Poll::Ready(r),
            }
            // A TLS error held back while the plaintext before it was handed out.
            conn.process_new_packets().map_err(tls_error)?;
        }
        let room = buf.len() - filled;
        if filled > 0 && room < MAX_RECORD + MORE {
            return Poll::Ready(Ok(filled));
        }
        let want = (room - MAX_RECORD).min(READ_AHEAD);
        let step = CIPHERTEXT.with(|ct| {
            let mut ct = ct.borrow_mut();
            if ct.len() < READ_AHEAD {
                ct.resize(READ_AHEAD, 0);
            }
            let mut rb = ReadBuf::new(&mut ct[..want]);
            match Pin::new(&mut *io).poll_read(cx, &mut rb) {
                Poll::Pending => return Step::Pending,
                Poll::Ready(Err(e)) => return Step::Failed(e),
                Poll::Ready(Ok(())) => {}
            }
            let mut input = rb.filled();
            if input.is_empty() {
                // TCP end of stream: rustls tells a clean close from a cut.
                return match conn.read_tls(&mut input) {
                    Ok(_) => Step::End,
                    Err(e) => Step::Failed(e),
                };
            }
            while !input.is_empty() {
                match conn.read_tls(&mut input) {
                    Ok(0) => return Step::End, // close_notify seen: what follows is ignored
                    Ok(_) => {}
                    Err(e) => return Step::Failed(e),
                }
                if let Err(e) = conn.process_new_packets() {
                    // Hand out what came before; rustls keeps the error.
                    return Step::Failed(tls_error(e));
                }
                match drain(conn, &mut buf[filled..]) {
                    Drained::Bytes(n) => filled += n,
                    Drained::Empty => {}
                    Drained::End(_) => return Step::End,
                }
            }
            Step::Read
        });
        match step {
            // More may have come meanwhile: one write for all of it.
            Step::Read => {}
            _ if filled > 0 => return Poll::Ready(Ok(filled)),
            Step::Pending => {
                // Going idle: rustls may shrink its buffer, as it would
                // before a read of its own that finds nothing.
                let _ = conn.read_tls(&mut NothingYet);
                return Poll::Pending;
            }
            // The next call reports it (rustls keeps TLS errors and the end
            // of stream; a socket error comes back or becomes an end).
            Step::Failed(e) => return Poll::Ready(Err(e)),
            // Nothing decrypted yet (part of a record, or no application
            // data), or the end: the drain above tells which.
            Step::End => {}
        }
    }
}

/// How one read of ciphertext went.
enum Step {
    /// Ciphertext read and fed to rustls.
    Read,
    /// The socket has nothing now.
    Pending,
    /// TCP end of stream or close_notify.
    End,
    Failed(io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    type Client = tokio_rustls::client::TlsStream<TcpStream>;
    type Server = tokio_rustls::server::TlsStream<TcpStream>;

    /// A TLS connection over 127.0.0.1 with a self-signed certificate made now.
    async fn tls_pair() -> (Client, Server) {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let der = made.cert.der().clone();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(made.key_pair.serialize_der().into());
        let server = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![der.clone()], key)
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der).unwrap();
        let client = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let accept = async {
            let (tcp, _) = l.accept().await.unwrap();
            tokio_rustls::TlsAcceptor::from(Arc::new(server))
                .accept(tcp)
                .await
                .unwrap()
        };
        let connect = async {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            tokio_rustls::TlsConnector::from(Arc::new(client))
                .connect(name, tcp)
                .await
                .unwrap()
        };
        let (c, s) = tokio::join!(connect, accept);
        (c, s)
    }

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i % 251) as u8).collect()
    }

    /// Every `poll_read_bulk` until the end: the bytes, each call's size, and how it ended.
    async fn read_all(c: &mut Client) -> (Vec<u8>, Vec<usize>, io::Result<()>) {
        let mut buf = vec![0u8; READ_AHEAD + MAX_RECORD];
        let (mut got, mut sizes) = (Vec::new(), Vec::new());
        loop {
            match std::future::poll_fn(|cx| c.poll_read_bulk(cx, &mut buf)).await {
                Ok(0) => return (got, sizes, Ok(())),
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    sizes.push(n);
                }
                Err(e) => return (got, sizes, Err(e)),
            }
        }
    }

    /// 64 KiB already waiting in the socket (four records) come out of one
    /// call, not one record per call; then close_notify ends the stream.
    #[tokio::test]
    async fn many_records_per_read_and_close_notify_ends_it() {
        let (mut c, mut s) = tls_pair().await;
        let sent = data(64 * 1024 + 5_000);
        s.write_all(&sent).await.unwrap();
        s.shutdown().await.unwrap();
        let (got, sizes, end) = read_all(&mut c).await;
        assert!(end.is_ok(), "{end:?}");
        assert!(got == sent, "bytes differ");
        assert!(sizes[0] > 16 * 1024, "first read {sizes:?}");
    }

    /// A TCP end without close_notify: the data, then `UnexpectedEof`.
    #[tokio::test]
    async fn tcp_end_without_close_notify_is_unexpected_eof() {
        let (mut c, mut s) = tls_pair().await;
        let sent = data(100_000);
        s.write_all(&sent).await.unwrap();
        s.flush().await.unwrap();
        s.get_mut().0.shutdown().await.unwrap();
        let (got, _, end) = read_all(&mut c).await;
        assert!(got == sent, "bytes differ");
        assert_eq!(end.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }

    /// A forged record after good data: the good data first, then the TLS
    /// error (`InvalidData`, as tokio-rustls reports it), not a silent end.
    #[tokio::test]
    async fn bad_record_after_data_hands_out_the_data_then_fails() {
        let (mut c, mut s) = tls_pair().await;
        let sent = data(40_000);
        s.write_all(&sent).await.unwrap();
        s.flush().await.unwrap();
        let forged = [&[0x17u8, 0x03, 0x03, 0x00, 0x20][..], &[0x55; 0x20]].concat();
        s.get_mut().0.write_all(&forged).await.unwrap();
        let (got, _, end) = read_all(&mut c).await;
        assert!(got == sent, "bytes differ");
        assert_eq!(end.unwrap_err().kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn buffer_shorter_than_a_record_is_refused() {
        let (mut c, _s) = tls_pair().await;
        let mut small = [0u8; 1024];
        let r = std::future::poll_fn(|cx| c.poll_read_bulk(cx, &mut small)).await;
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::InvalidInput);
    }
}
