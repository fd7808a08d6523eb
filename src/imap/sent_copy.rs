//! `sent_copy = "skip"`: the client stream wrapper used by the post-login
//! pump. A client's `APPEND` to the Sent mailbox is answered OK locally and
//! its message literal discarded as it streams by (never buffered, never
//! forwarded), because Gmail already files SMTP-sent mail in Sent.
//!
//! Only command lines are parsed (tag, APPEND, mailbox as atom, quoted string
//! or literal, then the message literal `{n}` / `{n+}`), in a line buffer of
//! at most [`MAX_LINE`]; every other byte passes through as is. Literals of
//! every client command are tracked so their contents are never taken for a
//! command. Which mailbox is Sent is learned from the upstream's LIST
//! responses (`\Sent`, RFC 6154) as they pass by; until then the names
//! "[Gmail]/Sent Mail" and "Sent" are assumed. Our own replies go to the
//! client only between two complete upstream responses (the upstream side
//! tracks lines and literals too), so they never land inside one.
//!
//! `client`: the client side (commands, literals, APPEND recogniser);
//! `server`: the upstream side (response boundaries, LIST learning).

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::responses;

mod client;
mod server;

#[cfg(test)]
use client::trailing_literal;
use client::ClientSide;
#[cfg(test)]
use server::Learned;
use server::ServerSide;

/// Longest line held for parsing (client command lines, upstream LIST lines).
pub const MAX_LINE: usize = 8 * 1024;
/// Longest mailbox name accepted as a literal (longer ones are forwarded untouched).
const MAX_NAME_LITERAL: u64 = 1024;
/// Bytes kept of a line that is not held (enough to see a trailing `{n+}`).
const TAIL: usize = 32;
/// Fallback names of the Sent mailbox before a LIST told us.
const FALLBACK_SENT: &[&[u8]] = &[b"[Gmail]/Sent Mail", b"Sent"];
/// Names learned from LIST (a few at most).
const MAX_LEARNED: usize = 8;
/// Client reads processed per poll before yielding (fairness while discarding).
const READ_BUDGET: usize = 32;

/// The client stream with `sent_copy = "skip"` applied; give it to the pump
/// in place of the client stream.
pub struct SentCopyFilter<'a, S> {
    inner: &'a mut S,
    client: ClientSide,
    server: ServerSide,
    /// Filtered client bytes not yet handed to the pump.
    out: Vec<u8>,
    out_pos: usize,
    /// Our replies waiting for a response boundary.
    inject: Vec<u8>,
    inject_pos: usize,
    read_eof: bool,
    read_waker: Option<Waker>,
}

impl<'a, S> SentCopyFilter<'a, S> {
    pub fn new(inner: &'a mut S) -> Self {
        SentCopyFilter {
            inner,
            client: ClientSide::new(),
            server: ServerSide::default(),
            out: Vec::new(),
            out_pos: 0,
            inject: Vec::new(),
            inject_pos: 0,
            read_eof: false,
            read_waker: None,
        }
    }

    /// Client bytes read ahead before the pump started (sent after LOGIN).
    pub fn preload(&mut self, data: &[u8]) {
        let (learned, out, inject) = (&self.server.learned, &mut self.out, &mut self.inject);
        self.client.feed(data, learned, out, inject);
    }

    fn injecting(&self) -> bool {
        self.inject_pos < self.inject.len()
    }
}

impl<S: AsyncWrite + Unpin> SentCopyFilter<'_, S> {
    /// Writes our pending replies (only call at a response boundary).
    fn poll_inject(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.injecting() {
            let n =
                ready!(Pin::new(&mut *self.inner).poll_write(cx, &self.inject[self.inject_pos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.inject_pos += n;
        }
        self.inject.clear();
        self.inject_pos = 0;
        Pin::new(&mut *self.inner).poll_flush(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for SentCopyFilter<'_, S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        for _ in 0..READ_BUDGET {
            if this.injecting() && this.server.at_boundary() {
                ready!(this.poll_inject(cx))?;
            }
            if this.out_pos < this.out.len() {
                let k = (this.out.len() - this.out_pos).min(buf.remaining());
                buf.put_slice(&this.out[this.out_pos..this.out_pos + k]);
                this.out_pos += k;
                if this.out_pos == this.out.len() {
                    this.out.clear();
                    this.out_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.read_eof {
                return Poll::Ready(Ok(()));
            }
            let mut tmp = [0u8; 4096];
            let mut rb = ReadBuf::new(&mut tmp);
            match Pin::new(&mut *this.inner).poll_read(cx, &mut rb) {
                Poll::Pending => {
                    this.read_waker = Some(cx.waker().clone());
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) if rb.filled().is_empty() => {
                    this.client.finish(&mut this.out);
                    this.read_eof = true;
                }
                Poll::Ready(Ok(())) => {
                    let (learned, out, inject) =
                        (&this.server.learned, &mut this.out, &mut this.inject);
                    this.client.feed(rb.filled(), learned, out, inject);
                }
            }
        }
        // Discarding a large literal: let other tasks run.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for SentCopyFilter<'_, S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.injecting() && this.server.at_boundary() {
            ready!(this.poll_inject(cx))?;
        }
        // While a reply waits, write up to the next line or literal end only,
        // so it can go out at the next boundary.
        let len = if this.injecting() {
            this.server.chunk_len(buf)
        } else {
            buf.len()
        };
        let n = ready!(Pin::new(&mut *this.inner).poll_write(cx, &buf[..len]))?;
        this.server.feed(&buf[..n], &mut this.client);
        if this.injecting() && this.server.at_boundary() {
            if let Some(w) = this.read_waker.take() {
                w.wake();
            }
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.injecting() && this.server.at_boundary() {
            ready!(this.poll_inject(cx))?;
        }
        Pin::new(&mut *this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
