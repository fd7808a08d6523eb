//! The frame around a proxy's pre-login loop (IMAP and POP3): the login
//! deadline and shutdown, and the goodbye when either comes first.

use std::future::Future;

use crate::disconnect::{log_close, CloseReason};
use crate::stream::{say_and_close, ClientStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How the pre-login phase ended.
pub enum Ended<T> {
    LoggedIn(T),
    /// The loop gave up (client gone, QUIT/LOGOUT, fatal input).
    Closed,
    TimedOut,
    Shutdown,
}

/// Runs `pre` (greeting and the loop until login) until `deadline`, unless
/// `shutdown` fires first.
pub async fn run<T>(
    pre: impl Future<Output = Option<T>>,
    deadline: Instant,
    shutdown: &CancellationToken,
) -> Ended<T> {
    tokio::select! {
        r = tokio::time::timeout_at(deadline, pre) => match r {
            Ok(Some(x)) => Ended::LoggedIn(x),
            Ok(None) => Ended::Closed,
            Err(_) => Ended::TimedOut,
        },
        _ = shutdown.cancelled() => Ended::Shutdown,
    }
}

impl<T> Ended<T> {
    /// The login, or `None` after closing `stream` (saying `timed_out` or
    /// `shutting_down` first when that is why).
    pub async fn or_close(
        self,
        stream: &mut ClientStream,
        timed_out: &[u8],
        shutting_down: &[u8],
    ) -> Option<T> {
        match self {
            Ended::LoggedIn(x) => return Some(x),
            Ended::Closed => say_and_close(stream, b"").await,
            Ended::TimedOut => {
                log_close(CloseReason::LoginTimeout);
                say_and_close(stream, timed_out).await;
            }
            Ended::Shutdown => {
                log_close(CloseReason::Shutdown);
                say_and_close(stream, shutting_down).await
            }
        }
        None
    }
}
