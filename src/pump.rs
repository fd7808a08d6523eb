//! The post-login byte pump (IMAP and POP3): both directions at once with small fixed
//! buffers (tokio's `copy_bidirectional`), counting bytes and watching for
//! idleness (no byte either way) and shutdown.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Per-direction copy buffer. Small on purpose: memory per idle connection.
const BUFFER: usize = 4096;
/// Once one side has closed, how long the other may take to follow.
const LINGER: Duration = Duration::from_secs(30);
/// Writes right after login get this long.
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the pump stopped.
#[derive(Debug)]
pub enum PumpEnd {
    /// Both sides finished (one closed, the other followed).
    Closed,
    Idle,
    Shutdown,
    Error(io::Error),
}

impl std::fmt::Display for PumpEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PumpEnd::Closed => f.write_str("closed"),
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

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut *self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.read.fetch_add(n as u64, Ordering::Relaxed);
            self.touch();
        } else if matches!(r, Poll::Ready(Ok(()))) && buf.remaining() > 0 {
            self.saw_eof();
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
pub async fn run<C, U>(
    client: &mut C,
    upstream: &mut U,
    idle: Duration,
    shutdown: &CancellationToken,
) -> PumpStats
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
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
        };
        let mut u = Tracked {
            inner: upstream,
            read: &from_upstream,
            activity: &activity,
            eof_at: &eof_at,
            eof_signal: &eof_signal,
            epoch,
        };
        let copy = tokio::io::copy_bidirectional_with_sizes(&mut c, &mut u, BUFFER, BUFFER);
        tokio::pin!(copy);
        loop {
            tokio::select! {
                r = &mut copy => break match r {
                    Ok(_) => PumpEnd::Closed,
                    Err(e) => PumpEnd::Error(e),
                },
                _ = tokio::time::sleep_until(deadline()) => {
                    if Instant::now() >= deadline() {
                        // A side that closed while the other lingered is a close, not idleness.
                        break if eof_at.load(Ordering::Relaxed) != 0 { PumpEnd::Closed } else { PumpEnd::Idle };
                    }
                }
                _ = eof_signal.notified() => {}
                _ = shutdown.cancelled() => break PumpEnd::Shutdown,
            }
        }
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
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn copies_both_ways_and_counts() {
        let (mut client_far, mut client) = tokio::io::duplex(1024);
        let (mut up_far, mut up) = tokio::io::duplex(1024);
        let sd = CancellationToken::new();
        let pump =
            tokio::spawn(
                async move { run(&mut client, &mut up, Duration::from_secs(10), &sd).await },
            );
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
        let stats = run(&mut client, &mut up, Duration::from_secs(3600), &sd).await;
        assert!(matches!(stats.end, PumpEnd::Closed));
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{:?} {:?}",
            start.elapsed(),
            stats
        );
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connection_ends() {
        let (_client_far, mut client) = tokio::io::duplex(64);
        let (_up_far, mut up) = tokio::io::duplex(64);
        let sd = CancellationToken::new();
        let stats = run(&mut client, &mut up, Duration::from_secs(30), &sd).await;
        assert!(matches!(stats.end, PumpEnd::Idle));
    }
}
