//! The post-login byte pump (IMAP and POP3): both directions at once,
//! counting bytes and watching for idleness (no byte either way) and
//! shutdown. It also holds the account's connection slot and frees it the
//! moment the upstream session ends.
//!
//! Buffers exist only while bytes are in flight: each direction reads into
//! a per-thread [`BUFFER`]-sized scratch buffer and writes from it at once;
//! only what the writer does not take right away is copied into a buffer
//! of the connection (exactly that size, freed once written). An idle
//! connection holds no pump buffer at all, and a busy one moves up to
//! 64 KiB per read and per write (one syscall and one wake-up per 64 KiB,
//! not per 4 KiB). A TLS side is read many records at a time
//! ([`tls_read`]): one `recv` of up to 64 KiB of ciphertext, decrypted into
//! the scratch buffer, then one write to the other side.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::disconnect::{log_close, CloseReason};
use crate::slots::AccountSlot;

mod tls_read;
pub use tls_read::BulkRead;

/// Most bytes moved per read (the per-thread scratch buffer's size): room
/// for a full [`tls_read::READ_AHEAD`] of ciphertext once decrypted.
const BUFFER: usize = tls_read::READ_AHEAD + tls_read::MAX_RECORD;
/// Once one side has closed, how long the other may take to follow.
pub const LINGER: Duration = Duration::from_secs(30);
/// Writes right after login get this long.
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the pump stopped.
#[derive(Debug)]
pub enum PumpEnd {
    /// Both sides finished (one closed, the other followed).
    Closed,
    /// One side closed and the other did not follow within [`LINGER`].
    LingerExpired,
    Idle,
    Shutdown,
    Error(io::Error),
}

impl std::fmt::Display for PumpEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PumpEnd::Closed => f.write_str("closed"),
            PumpEnd::LingerExpired => f.write_str("one side closed, the other did not follow"),
            PumpEnd::Idle => f.write_str("idle timeout"),
            PumpEnd::Shutdown => f.write_str("shutdown"),
            PumpEnd::Error(e) => write!(f, "error: {e}"),
        }
    }
}

#[derive(Debug)]
pub struct PumpStats {
    pub client_to_upstream: u64,
    pub upstream_to_client: u64,
    pub end: PumpEnd,
}

/// A stream that counts bytes read and notes when anything moved.
struct Tracked<'a, S> {
    inner: &'a mut S,
    read: &'a AtomicU64,
    /// Milliseconds since `epoch` of the last read or write, shared by both sides.
    activity: &'a AtomicU64,
    /// Milliseconds since `epoch` (plus one) of the first end of stream; 0 = none yet.
    eof_at: &'a AtomicU64,
    /// Wakes the pump loop so the shorter linger deadline takes effect.
    eof_signal: &'a Notify,
    epoch: Instant,
    /// Dropped when this side's reading ends (end of stream or error): for
    /// the upstream, its session is over, whatever the client still does.
    held: Option<AccountSlot>,
}

impl<S> Tracked<'_, S> {
    fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.activity.store(ms, Ordering::Relaxed);
    }

    fn saw_eof(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64 + 1;
        if self
            .eof_at
            .compare_exchange(0, ms, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            self.eof_signal.notify_one();
        }
    }
}

impl<S: BulkRead> BulkRead for Tracked<'_, S> {
    fn poll_read_bulk(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let r = self.inner.poll_read_bulk(cx, buf);
        match r {
            Poll::Ready(Ok(0)) => {
                self.held = None;
                self.saw_eof();
            }
            Poll::Ready(Ok(n)) => {
                self.read.fetch_add(n as u64, Ordering::Relaxed);
                self.touch();
            }
            Poll::Ready(Err(_)) => self.held = None,
            Poll::Pending => {}
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut *self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}

thread_local! {
    /// Where every pump on this thread reads into (polls do not interleave).
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// One direction of the pump.
#[derive(Default)]
struct Direction {
    /// Bytes read but not yet taken by the writer (empty, unallocated, when idle).
    pending: Vec<u8>,
    /// How much of `pending` was written.
    at: usize,
    /// Written since the last flush.
    unflushed: bool,
    /// The reader ended; the writer is being shut down.
    read_done: bool,
    done: bool,
}

impl Direction {
    /// Moves bytes from `reader` to `writer` until one of them would block;
    /// ready once the reader ended and the writer was shut down.
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        mut writer: Pin<&mut W>,
    ) -> Poll<io::Result<()>>
    where
        R: BulkRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            if self.done {
                return Poll::Ready(Ok(()));
            }
            while self.at < self.pending.len() {
                let n =
                    std::task::ready!(writer.as_mut().poll_write(cx, &self.pending[self.at..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.at += n;
                self.unflushed = true;
            }
            if !self.pending.is_empty() {
                self.pending = Vec::new();
                self.at = 0;
            }
            if self.read_done {
                std::task::ready!(writer.as_mut().poll_shutdown(cx))?;
                self.done = true;
                continue;
            }
            let read = SCRATCH.with(|scratch| {
                let mut scratch = scratch.borrow_mut();
                if scratch.len() < BUFFER {
                    scratch.resize(BUFFER, 0);
                }
                match reader.poll_read_bulk(cx, &mut scratch[..]) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                    Poll::Ready(Ok(0)) => {
                        self.read_done = true;
                        Poll::Ready(Ok(()))
                    }
                    Poll::Ready(Ok(n)) => {
                        let filled = &scratch[..n];
                        let mut at = 0;
                        while at < filled.len() {
                            match writer.as_mut().poll_write(cx, &filled[at..]) {
                                Poll::Ready(Ok(0)) => {
                                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()))
                                }
                                Poll::Ready(Ok(n)) => {
                                    at += n;
                                    self.unflushed = true;
                                }
                                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                                Poll::Pending => break,
                            }
                        }
                        if at < filled.len() {
                            // The writer is full: keep the rest, exactly its size.
                            self.pending = filled[at..].to_vec();
                        }
                        Poll::Ready(Ok(()))
                    }
                }
            });
            match read {
                Poll::Ready(r) => r?,
                Poll::Pending => {
                    // Nothing more to read now: push out what the writer buffered.
                    if self.unflushed {
                        std::task::ready!(writer.as_mut().poll_flush(cx))?;
                        self.unflushed = false;
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

/// Copies both ways until both readers ended (each end passed on as a
/// shutdown of the other side's writer) or either side fails.
async fn copy_both<A, B>(a: &mut A, b: &mut B) -> io::Result<()>
where
    A: BulkRead + AsyncWrite + Unpin + ?Sized,
    B: BulkRead + AsyncWrite + Unpin + ?Sized,
{
    let mut a_to_b = Direction::default();
    let mut b_to_a = Direction::default();
    std::future::poll_fn(|cx| {
        let ab = a_to_b.poll_copy(cx, &mut *a, Pin::new(&mut *b))?;
        let ba = b_to_a.poll_copy(cx, &mut *b, Pin::new(&mut *a))?;
        if ab.is_ready() && ba.is_ready() {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    })
    .await
}

/// The client's last words when the daemon ends a pumped session: `idle` or
/// `shutting_down` (logged as the close reason); nothing when a side closed
/// or failed (there is no one left to tell).
pub async fn say_goodbye<C: AsyncWrite + Unpin>(
    client: &mut C,
    end: &PumpEnd,
    idle: &[u8],
    shutting_down: &[u8],
) {
    let (reason, text) = match end {
        PumpEnd::Idle => (CloseReason::IdleTimeout, idle),
        PumpEnd::Shutdown => (CloseReason::Shutdown, shutting_down),
        PumpEnd::Closed | PumpEnd::LingerExpired | PumpEnd::Error(_) => return,
    };
    log_close(reason);
    crate::stream::say(client, text).await;
}

/// Right after login: sends the client `reply` and whatever the upstream sent
/// beyond its login answer, and the upstream whatever the client pipelined
/// after its login command. False if either side is gone or too slow.
pub async fn hand_over<C, U>(
    client: &mut C,
    upstream: &mut U,
    reply: &[u8],
    upstream_rest: &[u8],
    client_rest: &[u8],
) -> bool
where
    C: AsyncWrite + Unpin,
    U: AsyncWrite + Unpin,
{
    let handover = async {
        client.write_all(reply).await?;
        client.write_all(upstream_rest).await?;
        upstream.write_all(client_rest).await?;
        upstream.flush().await
    };
    matches!(
        tokio::time::timeout(HANDOVER_TIMEOUT, handover).await,
        Ok(Ok(()))
    )
}

/// Copies between `client` and `upstream` until both directions end, no byte
/// moves for `idle`, or `shutdown` fires. Once one side has closed the other
/// gets [`LINGER`] to follow. The caller closes the streams.
///
/// `slot` is released as soon as reading from the upstream ends (it closed
/// after LOGOUT, or dropped us), before its close is passed on to the
/// client: a client that keeps its socket open after LOGOUT holds no slot.
/// Otherwise it is handed back for the caller to drop once it has closed
/// the upstream.
pub async fn run<C, U>(
    client: &mut C,
    upstream: &mut U,
    idle: Duration,
    shutdown: &CancellationToken,
    slot: &mut Option<AccountSlot>,
) -> PumpStats
where
    C: BulkRead + AsyncWrite + Unpin,
    U: BulkRead + AsyncWrite + Unpin,
{
    let from_client = AtomicU64::new(0);
    let from_upstream = AtomicU64::new(0);
    let activity = AtomicU64::new(0);
    let eof_at = AtomicU64::new(0);
    let eof_signal = Notify::new();
    let epoch = Instant::now();
    let deadline = || {
        let idle_end = epoch + Duration::from_millis(activity.load(Ordering::Relaxed)) + idle;
        match eof_at.load(Ordering::Relaxed) {
            0 => idle_end,
            ms => idle_end.min(epoch + Duration::from_millis(ms) + LINGER),
        }
    };
    let end = {
        let mut c = Tracked {
            inner: client,
            read: &from_client,
            activity: &activity,
            eof_at: &eof_at,
            eof_signal: &eof_signal,
            epoch,
            held: None,
        };
        let mut u = Tracked {
            inner: upstream,
            read: &from_upstream,
            activity: &activity,
            eof_at: &eof_at,
            eof_signal: &eof_signal,
            epoch,
            held: slot.take(),
        };
        let end = {
            let copy = copy_both(&mut c, &mut u);
            tokio::pin!(copy);
            loop {
                tokio::select! {
                    r = &mut copy => break match r {
                        Ok(_) => PumpEnd::Closed,
                        Err(e) => PumpEnd::Error(e),
                    },
                    _ = tokio::time::sleep_until(deadline()) => {
                        if Instant::now() >= deadline() {
                            // A side that closed while the other lingered is not idleness.
                            break if eof_at.load(Ordering::Relaxed) != 0 { PumpEnd::LingerExpired } else { PumpEnd::Idle };
                        }
                    }
                    _ = eof_signal.notified() => {}
                    _ = shutdown.cancelled() => break PumpEnd::Shutdown,
                }
            }
        };
        *slot = u.held.take();
        end
    };
    PumpStats {
        client_to_upstream: from_client.load(Ordering::Relaxed),
        upstream_to_client: from_upstream.load(Ordering::Relaxed),
        end,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn copies_both_ways_and_counts() {
        let (mut client_far, mut client) = tokio::io::duplex(1024);
        let (mut up_far, mut up) = tokio::io::duplex(1024);
        let sd = CancellationToken::new();
        let pump = tokio::spawn(async move {
            run(
                &mut client,
                &mut up,
                Duration::from_secs(10),
                &sd,
                &mut None,
            )
            .await
        });
        let big = vec![7u8; 100_000];
        let big2 = big.clone();
        let w = tokio::spawn(async move {
            up_far.write_all(&big2).await.unwrap();
            up_far.shutdown().await.unwrap();
            let mut got = Vec::new();
            up_far.read_to_end(&mut got).await.unwrap();
            got
        });
        client_far.write_all(b"a NOOP\r\n").await.unwrap();
        client_far.shutdown().await.unwrap();
        let mut got = Vec::new();
        client_far.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, big);
        assert_eq!(w.await.unwrap(), b"a NOOP\r\n");
        let stats = pump.await.unwrap();
        assert_eq!(
            (stats.client_to_upstream, stats.upstream_to_client),
            (8, 100_000)
        );
        assert!(matches!(stats.end, PumpEnd::Closed));
    }

    #[tokio::test(start_paused = true)]
    async fn half_closed_connection_ends_after_linger() {
        let (client_far, mut client) = tokio::io::duplex(64);
        let (_up_far, mut up) = tokio::io::duplex(64);
        drop(client_far);
        let sd = CancellationToken::new();
        let start = Instant::now();
        let hour = Duration::from_secs(3600);
        let stats = run(&mut client, &mut up, hour, &sd, &mut None).await;
        assert!(matches!(stats.end, PumpEnd::LingerExpired));
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{:?} {:?}",
            start.elapsed(),
            stats
        );
    }

    fn held_slot() -> (Arc<AtomicUsize>, Option<AccountSlot>) {
        let counter = Arc::new(AtomicUsize::new(0));
        let slot = AccountSlot::try_take(&counter, 1);
        assert!(slot.is_some());
        (counter, slot)
    }

    /// The upstream answers LOGOUT and closes; the client keeps its socket
    /// open. The slot is free by the time the client sees our close, while
    /// the pump still lingers for the client.
    #[tokio::test(start_paused = true)]
    async fn slot_is_freed_when_the_upstream_closes() {
        let (mut client_far, mut client) = tokio::io::duplex(1024);
        let (mut up_far, mut up) = tokio::io::duplex(1024);
        let (counter, mut slot) = held_slot();
        let sd = CancellationToken::new();
        let pump = tokio::spawn(async move {
            let hour = Duration::from_secs(3600);
            let stats = run(&mut client, &mut up, hour, &sd, &mut slot).await;
            (stats, slot.is_none())
        });
        client_far.write_all(b"a LOGOUT\r\n").await.unwrap();
        let mut cmd = [0u8; 10];
        up_far.read_exact(&mut cmd).await.unwrap();
        up_far.write_all(b"* BYE\r\na OK\r\n").await.unwrap();
        drop(up_far);
        let mut got = Vec::new();
        client_far.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"* BYE\r\na OK\r\n");
        assert_eq!(
            counter.load(Ordering::SeqCst),
            0,
            "slot still held after our FIN"
        );
        assert!(!pump.is_finished());
        let (stats, freed) = pump.await.unwrap();
        assert!(matches!(stats.end, PumpEnd::LingerExpired), "{stats:?}");
        assert!(freed);
    }

    /// Ended by us (idle): the slot comes back to the caller, still held,
    /// to be dropped once the upstream is closed.
    #[tokio::test(start_paused = true)]
    async fn idle_connection_ends_and_hands_the_slot_back() {
        let (_client_far, mut client) = tokio::io::duplex(64);
        let (_up_far, mut up) = tokio::io::duplex(64);
        let (counter, mut slot) = held_slot();
        let sd = CancellationToken::new();
        let stats = run(
            &mut client,
            &mut up,
            Duration::from_secs(30),
            &sd,
            &mut slot,
        )
        .await;
        assert!(matches!(stats.end, PumpEnd::Idle));
        assert_eq!(counter.load(Ordering::SeqCst), 1);
        drop(slot);
        assert_eq!(counter.load(Ordering::SeqCst), 0);
    }
}
