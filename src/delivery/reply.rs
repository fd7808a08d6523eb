//! Typed upstream replies: a [`Reply`] (`code`, enhanced code, text), the
//! [`Stage`] it answered, why a recipient was not delivered ([`Cause`]) and
//! its [`Status`] after an attempt. Nothing here formats a reply into a
//! string that is parsed back later: decisions match on these types, and the
//! text form is only made for logs, the spool and the status page.

use std::error::Error as _;
use std::fmt;

use lettre::transport::smtp::response::Response;
use lettre::transport::smtp::Error as SmtpError;

/// One SMTP reply, e.g. `550 5.1.1 no such user` (multi-line text joined by spaces).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// The RFC 3463 enhanced status code (`5.1.1`), when the server gave one.
    pub enhanced: Option<String>,
    pub text: String,
}

impl Reply {
    pub fn new(code: u16, enhanced: &str, text: impl Into<String>) -> Reply {
        Reply {
            code,
            enhanced: Some(enhanced.to_string()),
            text: text.into(),
        }
    }

    /// `code` and the reply's text, whose first word may be an enhanced code.
    pub fn from_parts(code: u16, rest: &str) -> Reply {
        let rest = rest.trim();
        let (enhanced, text) = match rest.split_once(' ') {
            Some((e, t)) if is_enhanced(e) => (Some(e.to_string()), t.to_string()),
            _ if is_enhanced(rest) => (Some(rest.to_string()), String::new()),
            _ => (None, rest.to_string()),
        };
        Reply {
            code,
            enhanced,
            text,
        }
    }

    /// The reply a negative answer carries; `None` if `e` is not a reply
    /// (network, TLS, parse errors).
    pub fn from_error(e: &SmtpError) -> Option<Reply> {
        let code = u16::from(e.status()?);
        let msg = e.source().map(|s| s.to_string()).unwrap_or_default();
        Some(Reply::from_parts(code, &msg))
    }

    /// A positive answer (e.g. to the end of DATA).
    pub fn from_response(r: &Response) -> Reply {
        let lines: Vec<&str> = r.message().collect();
        Reply::from_parts(u16::from(r.code()), &lines.join(" "))
    }

    /// 5xx: the server will not accept it however often we ask.
    pub fn is_permanent(&self) -> bool {
        (500..600).contains(&self.code)
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if let Some(e) = &self.enhanced {
            write!(f, " {e}")?;
        }
        if !self.text.is_empty() {
            write!(f, " {}", self.text)?;
        }
        Ok(())
    }
}

/// Is `s` an enhanced status code (`class.subject.detail`, RFC 3463)?
pub(crate) fn is_enhanced(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() == 3
        && matches!(parts[0], "2" | "4" | "5")
        && parts[1..]
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
}

/// The step of the transaction a reply answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The connection: TCP, TLS, and the greeting and EHLO over TLS.
    Connect,
    /// The plaintext greeting, EHLO and STARTTLS before the handshake.
    Greeting,
    Ehlo,
    Starttls,
    Auth,
    Mail,
    Rcpt,
    Data,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Connect => "connect",
            Stage::Greeting => "greeting",
            Stage::Ehlo => "EHLO",
            Stage::Starttls => "STARTTLS",
            Stage::Auth => "AUTH",
            Stage::Mail => "MAIL FROM",
            Stage::Rcpt => "RCPT TO",
            Stage::Data => "DATA",
        })
    }
}

/// Why a recipient was not delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// The upstream answered `stage` with `reply`.
    Upstream { stage: Stage, reply: Reply },
    /// We refused it ourselves before asking (e.g. an address that cannot be sent).
    Local(Reply),
    /// No answer to act on: the connection failed, broke or timed out
    /// (a readable description with its hint).
    Connection(String),
}

impl Cause {
    /// The reply behind it, if there is one.
    pub fn reply(&self) -> Option<&Reply> {
        match self {
            Cause::Upstream { reply, .. } | Cause::Local(reply) => Some(reply),
            Cause::Connection(_) => None,
        }
    }
}

impl fmt::Display for Cause {
    /// The form logs, the spool and `queue list` show: `RCPT TO: 550 5.1.1 no such user`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::Upstream { stage, reply } => write!(f, "{stage}: {reply}"),
            Cause::Local(reply) => write!(f, "{reply}"),
            Cause::Connection(text) => f.write_str(text),
        }
    }
}

/// Where one recipient stands after an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Delivered,
    /// Try again later.
    Temporary(Cause),
    /// Never deliverable as it is.
    Permanent(Cause),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_split_the_enhanced_code_and_print_back_the_same() {
        let r = Reply::from_parts(550, "5.1.1 no such user");
        assert_eq!(
            (r.code, r.enhanced.as_deref(), r.text.as_str()),
            (550, Some("5.1.1"), "no such user")
        );
        assert_eq!(r.to_string(), "550 5.1.1 no such user");
        let r = Reply::from_parts(451, "try later");
        assert_eq!(
            (r.enhanced.as_deref(), r.to_string()),
            (None, "451 try later".into())
        );
        assert_eq!(Reply::from_parts(250, "").to_string(), "250");
        assert_eq!(Reply::from_parts(250, "2.0.0").to_string(), "250 2.0.0");
        let c = Cause::Upstream {
            stage: Stage::Rcpt,
            reply: Reply::from_parts(550, "5.1.1 no"),
        };
        assert_eq!(c.to_string(), "RCPT TO: 550 5.1.1 no");
        assert!(!is_enhanced("5.1") && !is_enhanced("6.1.1") && is_enhanced("4.7.0"));
    }
}
