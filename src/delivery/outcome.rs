//! What an upstream attempt came to: the error classification (temporary,
//! permanent, configuration) in one place, the per-recipient report, readable
//! reasons with hints, and the replies direct mode gives its clients.

use std::error::Error as _;

use lettre::transport::smtp::Error as SmtpError;

use super::reply::{Cause, Reply, Stage, Status};
use crate::hints::Problem;

/// Why a connection to the upstream could not be used (no message-specific verdict).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectFailure {
    /// Network, TLS, timeout: try again later.
    Temporary(String),
    /// The server refused the connection's `stage` (greeting, EHLO,
    /// STARTTLS) with `reply`: try again later.
    Answered {
        stage: Stage,
        reply: Reply,
        reason: String,
    },
    /// Our configuration is wrong (no TLS offered, no password):
    /// not the message's fault, so the message waits, but the reason says what to fix.
    Config(String),
    /// The upstream answered AUTH with `reply` (a configuration problem too;
    /// typed, so a token-based login can tell a refused grant from the rest).
    AuthRefused { reply: Reply, reason: String },
    /// The account's OAuth2 grant is gone (`mailbridge auth ACCOUNT` must be
    /// run): the mail is held, not retried, until a new token is stored.
    NeedsReauthorization(String),
}

impl ConnectFailure {
    pub fn reason(&self) -> &str {
        match self {
            ConnectFailure::Temporary(s)
            | ConnectFailure::Config(s)
            | ConnectFailure::NeedsReauthorization(s) => s,
            ConnectFailure::AuthRefused { reason, .. }
            | ConnectFailure::Answered { reason, .. } => reason,
        }
    }

    /// Not the upstream's state but our settings: worth a warning.
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            ConnectFailure::Config(_)
                | ConnectFailure::AuthRefused { .. }
                | ConnectFailure::NeedsReauthorization(_)
        )
    }
}

/// The result of delivering one message to a set of recipients.
#[derive(Debug, Default, Clone)]
pub struct DeliveryReport {
    /// Every recipient of the attempt, once, with where it stands.
    pub recipients: Vec<(String, Status)>,
    /// The upstream's last positive reply to DATA (for the log line).
    pub last_reply: Option<Reply>,
    /// Set when the connection itself failed (before any transaction).
    pub connect_failure: Option<ConnectFailure>,
}

impl DeliveryReport {
    /// Records `rcpt`'s status (the first one recorded for it stands).
    pub fn set(&mut self, rcpt: &str, status: Status) {
        if !self.recipients.iter().any(|(r, _)| r == rcpt) {
            self.recipients.push((rcpt.to_string(), status));
        }
    }

    /// Recipients the upstream accepted the message for.
    pub fn delivered(&self) -> Vec<String> {
        self.recipients
            .iter()
            .filter(|(_, s)| *s == Status::Delivered)
            .map(|(r, _)| r.clone())
            .collect()
    }

    /// Recipients rejected for good, with why.
    pub fn permanent(&self) -> Vec<(String, Cause)> {
        self.with(|s| match s {
            Status::Permanent(c) => Some(c),
            _ => None,
        })
    }

    /// Recipients to retry, with why.
    pub fn temporary(&self) -> Vec<(String, Cause)> {
        self.with(|s| match s {
            Status::Temporary(c) => Some(c),
            _ => None,
        })
    }

    fn with(&self, cause: impl Fn(&Status) -> Option<&Cause>) -> Vec<(String, Cause)> {
        self.recipients
            .iter()
            .filter_map(|(r, s)| cause(s).map(|c| (r.clone(), c.clone())))
            .collect()
    }

    /// A one-line summary of why recipients are waiting (first temporary reason).
    pub fn temporary_reason(&self) -> Option<String> {
        self.temporary().first().map(|(_, c)| c.to_string())
    }
}

/// How a failed command is to be treated.
pub enum Verdict {
    /// The server answered: 4xx or 5xx (see [`Reply::is_permanent`]).
    Answered(Reply),
    /// The connection is unusable (network/TLS/parse error): retry elsewhere.
    Broken(String),
}

pub fn classify(e: &SmtpError, stage: &str) -> Verdict {
    match Reply::from_error(e) {
        Some(r) => Verdict::Answered(r),
        None => Verdict::Broken(describe(e, stage)),
    }
}

/// A readable description of a lettre error with its cause chain, plus a hint
/// for the common set-up mistakes. Never contains credentials (lettre errors
/// do not carry them).
pub fn describe(e: &SmtpError, stage: &str) -> String {
    let mut text = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let t = s.to_string();
        if !text.contains(&t) {
            text.push_str(": ");
            text.push_str(&t);
        }
        src = s.source();
    }
    if e.is_timeout() || text.contains("timed out") {
        return format!("{stage}: timed out ({text})");
    }
    while let Some(i) = text.find("Connection error: Connection error: ") {
        text.replace_range(i..i + "Connection error: ".len(), "");
    }
    let problem = Problem::of_error(e).or_else(|| Problem::of_text(&text));
    with_hint(&text, stage, problem.map(Problem::hint))
}

/// `stage: text (hint)` for an error already turned into text.
pub fn describe_text(text: &str, stage: &str) -> String {
    if text.to_ascii_lowercase().contains("timed out") {
        return format!("{stage}: timed out ({text})");
    }
    with_hint(text, stage, crate::hints::for_transport_text(text))
}

fn with_hint(text: &str, stage: &str, hint: Option<&str>) -> String {
    match hint {
        Some(hint) => format!("{stage}: {text} ({hint})"),
        None => format!("{stage}: {text}"),
    }
}

/// A reply for an SMTP client of direct mode: the upstream's own, or ours.
pub type DirectReply = Reply;

impl Reply {
    /// A reply for the client from why its recipient was not delivered:
    /// the upstream's reply as it is, else `fallback` with a generic enhanced code.
    pub fn for_client(cause: &Cause, fallback: u16) -> Reply {
        match cause.reply() {
            Some(r) => r.clone(),
            None => Reply::new(
                fallback,
                if fallback >= 500 { "5.0.0" } else { "4.0.0" },
                cause.to_string(),
            ),
        }
    }

    /// Upstream could not be reached or used.
    pub fn unavailable(reason: &str) -> Reply {
        Reply::new(451, "4.4.1", format!("upstream unavailable: {reason}"))
    }

    /// The account's daily send cap is reached (`daily_limit`).
    pub fn daily_limit(reason: &str) -> Reply {
        Reply::new(451, "4.7.0", format!("{reason}; try again later"))
    }

    pub fn no_password(reason: &str) -> Reply {
        Reply::new(451, "4.3.5", format!("relay account not usable: {reason}"))
    }

    /// The client's 250 after an upstream's positive reply to DATA.
    pub fn delivered(reply: Option<&Reply>) -> Reply {
        match reply {
            Some(r) if r.code == 250 => r.clone(),
            Some(r) => Reply::new(250, "2.0.0", r.to_string()),
            None => Reply::new(250, "2.0.0", "delivered"),
        }
    }

    pub fn spool_error() -> Reply {
        Reply::new(
            451,
            "4.3.1",
            "cannot record partially failed recipients, try again",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_replies_come_from_the_typed_cause() {
        let upstream = Cause::Upstream {
            stage: Stage::Rcpt,
            reply: Reply::from_parts(550, "5.1.1 no such user"),
        };
        let r = Reply::for_client(&upstream, 554);
        assert_eq!(
            (r.code, r.enhanced.as_deref(), r.text.as_str()),
            (550, Some("5.1.1"), "no such user")
        );
        let r = Reply::for_client(&Cause::Connection("RSET: broken".into()), 451);
        assert_eq!((r.code, r.enhanced.as_deref()), (451, Some("4.0.0")));
        let r = Reply::delivered(Some(&Reply::from_parts(250, "2.0.0 OK id=1")));
        assert_eq!((r.code, r.text.as_str()), (250, "OK id=1"));
    }
}
