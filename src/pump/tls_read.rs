//! What the pump reads from ([`BulkRead`]), and reading a rustls stream
//! many TLS records per call: one socket read of up to [`READ_AHEAD`]
//! bytes of ciphertext into a per-thread buffer, fed to rustls record by
//! record and decrypted straight into the pump's buffer. tokio-rustls on
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
/// else one read of ciphertext from `io`, all of it decrypted into `buf`.
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
    let Some(room) = buf.len().checked_sub(MAX_RECORD).filter(|r| *r > 0) else {
        return Poll::Ready(Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "TLS read buffer shorter than one record",
        )));
    };
    let want = room.min(READ_AHEAD);
    loop {
        let mut filled = match drain(conn, buf) {
            Drained::Empty => 0,
            Drained::Bytes(n) => return Poll::Ready(Ok(n)),
            Drained::End(r) => return Poll::Ready(r),
        };
        // A TLS error held back while plaintext before it was handed out.
        conn.process_new_packets().map_err(tls_error)?;
        let read = CIPHERTEXT.with(|ct| {
            let mut ct = ct.borrow_mut();
            if ct.len() < READ_AHEAD {
                ct.resize(READ_AHEAD, 0);
            }
            let mut rb = ReadBuf::new(&mut ct[..want]);
            match Pin::new(&mut *io).poll_read(cx, &mut rb) {
                Poll::Pending => {
                    // Going idle: rustls may shrink its buffer, as it would
                    // before a read of its own that finds nothing.
                    let _ = conn.read_tls(&mut NothingYet);
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
            let mut input = rb.filled();
            if input.is_empty() {
                // TCP end of stream: rustls tells a clean close from a cut.
                conn.read_tls(&mut input)?;
                return Poll::Ready(Ok(()));
            }
            while !input.is_empty() {
                if conn.read_tls(&mut input)? == 0 {
                    break; // close_notify seen: what follows is ignored
                }
                if let Err(e) = conn.process_new_packets() {
                    // Hand out what came before; rustls keeps the error.
                    return Poll::Ready(if filled > 0 {
                        Ok(())
                    } else {
                        Err(tls_error(e))
                    });
                }
                match drain(conn, &mut buf[filled..]) {
                    Drained::Bytes(n) => filled += n,
                    Drained::Empty => {}
                    Drained::End(_) => break,
                }
            }
            Poll::Ready(Ok(()))
        });
        std::task::ready!(read)?;
        if filled > 0 {
            return Poll::Ready(Ok(filled));
        }
        // Only part of a record, or no application data: read again.
    }
}
