//! What an upstream attempt came to: the error classification (temporary,
//! permanent, configuration) in one place, readable reasons with hints, and
//! the replies direct mode gives its clients.

use std::error::Error as _;

use lettre::transport::smtp::Error as SmtpError;

/// Why a connection to the upstream could not be used (no message-specific verdict).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectFailure {
    /// Network, TLS, timeout, 4xx greeting: try again later.
    Temporary(String),
    /// Our configuration is wrong (AUTH refused, no TLS offered, no password):
    /// not the message's fault, so the message waits, but the reason says what to fix.
    Config(String),
}

impl ConnectFailure {
    pub fn reason(&self) -> &str {
        match self {
            ConnectFailure::Temporary(s) | ConnectFailure::Config(s) => s,
        }
    }
}

/// The result of delivering one message to a set of recipients.
#[derive(Debug, Default, Clone)]
pub struct DeliveryReport {
    /// Recipients the upstream accepted the message for.
    pub delivered: Vec<String>,
    /// Recipients rejected permanently, with the upstream's reply.
    pub permanent: Vec<(String, String)>,
    /// Recipients to retry, with the reason.
    pub temporary: Vec<(String, String)>,
    /// The upstream's last positive reply to DATA (for the log line).
    pub last_reply: Option<String>,
    /// Set when the connection itself failed (before any transaction).
    pub connect_failure: Option<ConnectFailure>,
}

impl DeliveryReport {
    /// A one-line summary of why recipients are waiting (first temporary reason).
    pub fn temporary_reason(&self) -> Option<&str> {
        self.temporary.first().map(|(_, r)| r.as_str())
    }
}

/// The SMTP reply for a negative upstream response, e.g. `550 5.1.1 no such user`.
/// `None` if `e` is not a reply (network, TLS, parse errors).
pub fn reply_text(e: &SmtpError) -> Option<String> {
    let code = e.status()?;
    let msg = e.source().map(|s| s.to_string()).unwrap_or_default();
    Some(format!("{code} {msg}").trim_end().to_string())
}

/// How a failed command is to be treated.
pub enum Verdict {
    Permanent(String),
    Temporary(String),
    /// The connection is unusable (network/TLS/parse error): retry elsewhere.
    Broken(String),
}

pub fn classify(e: &SmtpError, stage: &str) -> Verdict {
    match reply_text(e) {
        Some(r) if e.is_permanent() => Verdict::Permanent(r),
        Some(r) => Verdict::Temporary(r),
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
    describe_text(&text, stage)
}

/// `stage: text (hint)` for an error already turned into text.
pub fn describe_text(text: &str, stage: &str) -> String {
    if text.to_ascii_lowercase().contains("timed out") {
        return format!("{stage}: timed out ({text})");
    }
    match hint_for(text) {
        Some(hint) => format!("{stage}: {text} ({hint})"),
        None => format!("{stage}: {text}"),
    }
}

/// The hint for the common set-up mistakes an error text shows (the one
/// `check` and the delivery log give), if any.
pub fn hint_for(text: &str) -> Option<&'static str> {
    let lower = text.to_ascii_lowercase();
    let hint = if lower.contains("unknownissuer") || lower.contains("unknown issuer") {
        "the upstream's certificate is signed by a CA we do not trust: for a private CA or a \
         TLS-inspecting proxy add its certificate with ca_file"
    } else if lower.contains("notvalidforname") || lower.contains("not valid for name") {
        "the upstream's certificate is not valid for this host name: check smtp.host"
    } else if lower.contains("expired") {
        "the upstream's certificate has expired, or this machine's clock is wrong"
    } else if lower.contains("certificate") {
        "the upstream's certificate was not accepted: check smtp.host, or add its CA with ca_file"
    } else if lower.contains("corrupt message") || lower.contains("invalidcontenttype") {
        "the server did not speak TLS: is tls = \"implicit\" right for this port? 587 and 25 use \"starttls\", 465 uses \"implicit\""
    } else if lower.contains("connection refused") {
        "nothing listens there: check smtp.host and smtp.port"
    } else if lower.contains("incomplete response") || lower.contains("unexpected eof") {
        "the server closed the connection: wrong TLS mode for the port, or the server dropped us"
    } else if lower.contains("failed to lookup") || lower.contains("name or service not known") {
        "cannot resolve the host name: check smtp.host and DNS"
    } else {
        ""
    };
    Some(hint).filter(|h| !h.is_empty())
}

/// The hint added to an AUTH rejection.
pub const AUTH_HINT: &str = "the upstream refused the login: check username and the app password \
     (Gmail app passwords need 2-step verification on the Google account; spaces in the password are removed)";

/// A reply for an SMTP client of direct mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectReply {
    pub code: u16,
    pub enhanced: Option<String>,
    pub text: String,
}

impl DirectReply {
    pub fn new(code: u16, enhanced: &str, text: impl Into<String>) -> DirectReply {
        DirectReply {
            code,
            enhanced: Some(enhanced.to_string()),
            text: text.into(),
        }
    }

    /// Parses an upstream reply such as `550 5.1.1 no such user` (multi-line joined).
    pub fn from_upstream(reply: &str, fallback: u16) -> DirectReply {
        let (code, rest) = match reply.split_once(' ') {
            Some((c, rest)) => (
                c.parse::<u16>().ok().filter(|c| (200..600).contains(c)),
                rest,
            ),
            None => (reply.parse::<u16>().ok(), ""),
        };
        let Some(code) = code else {
            return DirectReply::new(
                fallback,
                if fallback >= 500 { "5.0.0" } else { "4.0.0" },
                reply,
            );
        };
        let (enhanced, text) = match rest.split_once(' ') {
            Some((e, t)) if is_enhanced(e) => (Some(e.to_string()), t.to_string()),
            _ if is_enhanced(rest) => (Some(rest.to_string()), String::new()),
            _ => (None, rest.to_string()),
        };
        DirectReply {
            code,
            enhanced,
            text,
        }
    }

    /// Upstream could not be reached or used.
    pub fn unavailable(reason: &str) -> DirectReply {
        DirectReply::new(451, "4.4.1", format!("upstream unavailable: {reason}"))
    }

    /// The account's daily send cap is reached (`daily_limit`).
    pub fn daily_limit(reason: &str) -> DirectReply {
        DirectReply::new(451, "4.7.0", format!("{reason}; try again later"))
    }

    pub fn no_password(reason: &str) -> DirectReply {
        DirectReply::new(451, "4.3.5", format!("relay account not usable: {reason}"))
    }

    pub fn delivered(reply: Option<&str>) -> DirectReply {
        match reply {
            Some(r) => {
                let mut d = DirectReply::from_upstream(r, 250);
                if d.code != 250 {
                    d = DirectReply::new(250, "2.0.0", r);
                }
                d
            }
            None => DirectReply::new(250, "2.0.0", "delivered"),
        }
    }

    pub fn spool_error() -> DirectReply {
        DirectReply::new(
            451,
            "4.3.1",
            "cannot record partially failed recipients, try again",
        )
    }
}

fn is_enhanced(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() == 3
        && matches!(parts[0], "2" | "4" | "5")
        && parts[1..]
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_upstream_replies() {
        let r = DirectReply::from_upstream("550 5.1.1 no such user", 451);
        assert_eq!(
            (r.code, r.enhanced.as_deref(), r.text.as_str()),
            (550, Some("5.1.1"), "no such user")
        );
        let r = DirectReply::from_upstream("451 try later", 451);
        assert_eq!(
            (r.code, r.enhanced, r.text.as_str()),
            (451, None, "try later")
        );
        let r = DirectReply::from_upstream("garbage", 451);
        assert_eq!(r.code, 451);
        let r = DirectReply::delivered(Some("250 2.0.0 OK id=1"));
        assert_eq!((r.code, r.text.as_str()), (250, "OK id=1"));
    }
}
