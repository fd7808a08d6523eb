//! Why the daemon itself closes a client connection (timeouts, limits,
//! refusals, shutdown), and the one info line per such close. The line
//! carries only the reason; the connection span adds listener, session and
//! peer. Client data never goes in it.

use std::fmt;

/// A close the daemon decided on (not the client hanging up or an I/O error).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The client address is not in the listener's `allowed_networks`.
    AccessDenied,
    /// The listener's `max_connections` was reached.
    ConnectionLimit,
    /// A command line longer than the protocol's limit.
    LineTooLong,
    /// An IMAP literal over the pre-login limit.
    LiteralTooLarge,
    /// Nothing from the client within the idle timeout.
    IdleTimeout,
    /// No IMAP login within `login_timeout`.
    LoginTimeout,
    /// A command or message body arriving slower than the minimum rate.
    TooSlow,
    /// Too many bad commands in one session.
    TooManyErrors,
    /// Too many failed logins from the client's address.
    AuthBlocked,
    /// The daemon is stopping.
    Shutdown,
}

impl CloseReason {
    /// The `reason` field value: stable, snake_case, for log searches.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::AccessDenied => "access_denied",
            CloseReason::ConnectionLimit => "connection_limit",
            CloseReason::LineTooLong => "line_too_long",
            CloseReason::LiteralTooLarge => "literal_too_large",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::LoginTimeout => "login_timeout",
            CloseReason::TooSlow => "too_slow",
            CloseReason::TooManyErrors => "too_many_errors",
            CloseReason::AuthBlocked => "auth_blocked",
            CloseReason::Shutdown => "shutdown",
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Logs that the daemon is closing the current connection, and why. Called
/// before the final reply is written, so the line exists by the time the
/// client sees the close.
pub fn log_close(reason: CloseReason) {
    tracing::info!(reason = reason.as_str(), "closing the connection");
}
