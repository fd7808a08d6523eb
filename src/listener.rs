//! The shared accept loop: a connection cap (semaphore permit moved into each
//! task), backoff on accept errors, one tracing span per connection, and
//! draining on shutdown. Protocol work (and any TLS handshake) happens in the
//! spawned task, never in the loop.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info_span, warn, Instrument};

static SESSION_IDS: AtomicU64 = AtomicU64::new(1);

/// A process-unique, increasing session number for logs.
pub fn next_session_id() -> u64 {
    SESSION_IDS.fetch_add(1, Ordering::Relaxed)
}

/// Pending connections the kernel queues per listener. `TcpListener::bind`
/// asks for 128, which overflows when hundreds of devices reconnect at once
/// (connects then stall for a SYN retry); this matches Linux's default cap.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds `addr` for listening (SO_REUSEADDR, a deep accept backlog).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// How one listener behaves.
#[derive(Clone, Copy)]
pub struct ListenerSpec {
    /// "smtp" or "imap": the span's `listener` field.
    pub name: &'static str,
    pub max_connections: usize,
    /// Written to a client that arrives when the cap is reached, then closed.
    pub busy_reply: &'static [u8],
}

/// Accepts until `shutdown`, running `handler` for each connection in its own
/// task tracked by `tasks` (so the caller can wait for them to drain).
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    spec: ListenerSpec,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    handler: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(spec.max_connections));
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        let (mut stream, peer) = match accepted {
            Ok(x) => {
                backoff = Duration::from_millis(5);
                x
            }
            Err(e) => {
                // EMFILE and friends: wait instead of spinning, keep serving.
                warn!(listener = spec.name, error = %e, "accept failed; backing off {:?}", backoff);
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let id = next_session_id();
        let span = info_span!("conn", listener = spec.name, session = id, peer = %peer);
        match permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let fut = handler(stream, peer);
                tasks.spawn(
                    async move {
                        fut.await;
                        drop(permit);
                    }
                    .instrument(span),
                );
            }
            Err(_) => {
                let busy = spec.busy_reply;
                tasks.spawn(
                    async move {
                        crate::disconnect::log_close(
                            crate::disconnect::CloseReason::ConnectionLimit,
                        );
                        let _ = tokio::time::timeout(Duration::from_secs(5), async {
                            let _ = stream.write_all(busy).await;
                            let _ = stream.shutdown().await;
                        })
                        .await;
                    }
                    .instrument(span),
                );
            }
        }
    }
}
