//! Hints for the common set-up mistakes, in one place for SMTP, IMAP and
//! POP3 (delivery log, `mailbridge check`, the status page): a failure is
//! first classified as a [`Problem`] (from the error's types, from an
//! upstream reply's code and enhanced code, or, for text already stored in
//! the spool, from its words), and the problem has the hint.

use std::error::Error;

use crate::delivery::Reply;

/// A set-up mistake we know how to explain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// The certificate is signed by a CA we do not trust.
    UntrustedCa,
    /// The certificate is for another host name.
    WrongName,
    CertificateExpired,
    /// Any other certificate problem.
    Certificate,
    /// The server did not speak TLS where we expected it.
    NotTls,
    /// Nothing listens on the port.
    Refused,
    /// The server closed the connection.
    Closed,
    /// The host name does not resolve.
    Dns,
    /// The upstream refused the login.
    AuthRefused,
}

/// The hint added to an AUTH rejection.
pub const AUTH_HINT: &str = "the upstream refused the login: check username and the app password \
     (Gmail app passwords need 2-step verification on the Google account; spaces in the password are removed)";

impl Problem {
    /// From an error's cause chain, by type (rustls and I/O errors); errors
    /// that keep only a message need [`Problem::of_text`].
    pub fn of_error(e: &(dyn Error + 'static)) -> Option<Problem> {
        let mut src: Option<&(dyn Error + 'static)> = Some(e);
        while let Some(s) = src {
            if let Some(p) = s.downcast_ref::<rustls::Error>().and_then(of_rustls) {
                return Some(p);
            }
            if let Some(io) = s.downcast_ref::<std::io::Error>() {
                if let Some(p) = io
                    .get_ref()
                    .and_then(|i| i.downcast_ref::<rustls::Error>())
                    .and_then(of_rustls)
                {
                    return Some(p);
                }
                match io.kind() {
                    std::io::ErrorKind::ConnectionRefused => return Some(Problem::Refused),
                    std::io::ErrorKind::UnexpectedEof => return Some(Problem::Closed),
                    _ => {}
                }
            }
            src = s.source();
        }
        None
    }

    /// From an upstream reply: a refused login (`535`, `5.7.8`).
    pub fn of_reply(r: &Reply) -> Option<Problem> {
        let auth = r.code == 535
            || r.enhanced.as_deref() == Some("5.7.8")
            || r.text
                .to_ascii_lowercase()
                .contains("authentication failed");
        auth.then_some(Problem::AuthRefused)
    }

    /// From text already turned into words (a stored last error, an error
    /// type that keeps only its message).
    pub fn of_text(text: &str) -> Option<Problem> {
        let lower = text.to_ascii_lowercase();
        let p = if lower.contains("unknownissuer") || lower.contains("unknown issuer") {
            Problem::UntrustedCa
        } else if lower.contains("notvalidforname") || lower.contains("not valid for name") {
            Problem::WrongName
        } else if lower.contains("expired") {
            Problem::CertificateExpired
        } else if lower.contains("certificate") {
            Problem::Certificate
        } else if lower.contains("corrupt message") || lower.contains("invalidcontenttype") {
            Problem::NotTls
        } else if lower.contains("connection refused") {
            Problem::Refused
        } else if lower.contains("incomplete response") || lower.contains("unexpected eof") {
            Problem::Closed
        } else if lower.contains("failed to lookup") || lower.contains("name or service not known")
        {
            Problem::Dns
        } else {
            return None;
        };
        Some(p)
    }

    /// A problem with the server's certificate?
    pub fn is_certificate(self) -> bool {
        matches!(
            self,
            Problem::UntrustedCa
                | Problem::WrongName
                | Problem::CertificateExpired
                | Problem::Certificate
        )
    }

    /// What to tell the admin (the SMTP account's settings are named).
    pub fn hint(self) -> &'static str {
        match self {
            Problem::UntrustedCa => "the upstream's certificate is signed by a CA we do not trust: for a private CA or a \
         TLS-inspecting proxy add its certificate with ca_file",
            Problem::WrongName => "the upstream's certificate is not valid for this host name: check smtp.host",
            Problem::CertificateExpired => "the upstream's certificate has expired, or this machine's clock is wrong",
            Problem::Certificate => "the upstream's certificate was not accepted: check smtp.host, or add its CA with ca_file",
            Problem::NotTls => "the server did not speak TLS: is tls = \"implicit\" right for this port? 587 and 25 use \"starttls\", 465 uses \"implicit\"",
            Problem::Refused => "nothing listens there: check smtp.host and smtp.port",
            Problem::Closed => "the server closed the connection: wrong TLS mode for the port, or the server dropped us",
            Problem::Dns => "cannot resolve the host name: check smtp.host and DNS",
            Problem::AuthRefused => AUTH_HINT,
        }
    }
}

fn of_rustls(e: &rustls::Error) -> Option<Problem> {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(c) => Some(match c {
            C::UnknownIssuer => Problem::UntrustedCa,
            C::NotValidForName | C::NotValidForNameContext { .. } => Problem::WrongName,
            C::Expired | C::ExpiredContext { .. } => Problem::CertificateExpired,
            _ => Problem::Certificate,
        }),
        rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType) => {
            Some(Problem::NotTls)
        }
        _ => None,
    }
}

/// The transport hint for an error text (what `check` and the delivery log
/// add to a connection failure), if any. A refused login is not a transport
/// problem: its hint comes with the AUTH reply.
pub fn for_transport_text(text: &str) -> Option<&'static str> {
    Problem::of_text(text).map(Problem::hint)
}

/// The hint for a stored error text (the status page), including a refused
/// login. For a message that expired, the hint is about its last error.
pub fn for_stored_text(text: &str) -> Option<&'static str> {
    let text = text.split_once("; last error: ").map_or(text, |(_, e)| e);
    if let Some(p) = Problem::of_text(text) {
        return Some(p.hint());
    }
    // Stored as `[STAGE: ]550 5.7.8 text`.
    let reply = text.rsplit_once(": ").map_or(text, |(_, r)| r);
    let auth = text.starts_with("535")
        || text.contains("5.7.8")
        || text.to_ascii_lowercase().contains("authentication failed");
    let typed = reply
        .split_once(' ')
        .and_then(|(c, rest)| Some(Reply::from_parts(c.parse().ok()?, rest)))
        .and_then(|r| Problem::of_reply(&r));
    (auth || typed.is_some()).then_some(AUTH_HINT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_from_types_replies_and_text() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(Problem::of_error(&io), Some(Problem::Refused));
        let tls = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        assert_eq!(Problem::of_error(&tls), Some(Problem::UntrustedCa));
        assert_eq!(
            Problem::of_reply(&Reply::from_parts(535, "5.7.8 bad credentials")),
            Some(Problem::AuthRefused)
        );
        assert_eq!(Problem::of_reply(&Reply::from_parts(550, "5.1.1 no")), None);
        assert!(for_stored_text("connect to x: Connection refused")
            .unwrap()
            .contains("smtp.port"));
        assert_eq!(
            for_stored_text("535 5.7.8 bad credentials"),
            Some(AUTH_HINT)
        );
        assert_eq!(for_stored_text("451 4.3.0 try later"), None);
        assert_eq!(
            for_stored_text("expired after 1h in the queue; last error: 451 4.3.0 busy"),
            None
        );
    }
}
