//! Waiting with a deadline: the one poll loop every test uses instead of a
//! sleep (async for tests on a runtime, blocking for std threads).

use std::future::Future;
use std::time::{Duration, Instant};

/// How often a condition is checked again.
const POLL: Duration = Duration::from_millis(20);

/// Polls `check` every 20 ms until it returns `Some`, or panics after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Polls `check` every 20 ms until it is true; panics after `timeout`.
pub async fn poll_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    eventually(what, timeout, || std::future::ready(check().then_some(()))).await
}

/// [`eventually`] for a plain thread (no runtime): blocks between checks.
/// `what` is called only for the panic message.
pub fn blocking<T>(
    what: impl Fn() -> String,
    timeout: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for: {}",
            what()
        );
        std::thread::sleep(POLL);
    }
}

/// A client with a 4 KiB receive buffer: the daemon's writes to it fill
/// the socket at once and come back short or pending, so the pump must
/// keep what the socket did not take.
pub async fn slow_client(addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(addr).await.unwrap()
}

/// Reads exactly `n` bytes in 1,000-byte reads (each within `timeout`) and
/// checks them against `expected`, naming the first byte that differs.
pub async fn read_slowly_and_compare<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
    expected: &[u8],
    timeout: Duration,
) {
    use tokio::io::AsyncReadExt;
    let mut got = vec![0u8; expected.len()];
    let mut at = 0;
    while at < got.len() {
        let end = (at + 1000).min(got.len());
        tokio::time::timeout(timeout, r.read_exact(&mut got[at..end]))
            .await
            .unwrap_or_else(|_| panic!("read timed out after {at} of {} bytes", got.len()))
            .unwrap();
        at = end;
    }
    let first_diff = got.iter().zip(expected).position(|(a, b)| a != b);
    assert!(
        first_diff.is_none(),
        "bytes differ from offset {first_diff:?}"
    );
}
