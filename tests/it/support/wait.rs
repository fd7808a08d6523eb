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
