//! Every reply the inbound SMTP server sends: one place for codes, enhanced
//! status codes (RFC 3463) and texts. Each reply ends with CRLF.

/// The greeting.
pub fn banner(host: &str) -> String {
    format!("220 {host} ESMTP mailbridge\r\n")
}

/// The EHLO reply with our extensions (STARTTLS only on a plaintext
/// connection when local TLS is configured).
pub fn ehlo(host: &str, max_size: u64, auth: bool, starttls: bool) -> String {
    let mut lines = vec![
        host.to_string(),
        "PIPELINING".into(),
        format!("SIZE {max_size}"),
        "8BITMIME".into(),
        "SMTPUTF8".into(),
        "ENHANCEDSTATUSCODES".into(),
    ];
    if starttls {
        lines.push("STARTTLS".into());
    }
    if auth {
        lines.push("AUTH PLAIN LOGIN".into());
    }
    multiline(250, &lines)
}

pub fn helo(host: &str) -> String {
    format!("250 {host}\r\n")
}

/// `code-line` ... `code line` for a multi-line reply.
fn multiline(code: u16, lines: &[String]) -> String {
    let mut out = String::new();
    for (i, l) in lines.iter().enumerate() {
        let sep = if i + 1 == lines.len() { ' ' } else { '-' };
        out.push_str(&format!("{code}{sep}{l}\r\n"));
    }
    out
}

pub const OK: &str = "250 2.0.0 Ok\r\n";
pub const MAIL_OK: &str = "250 2.1.0 Ok\r\n";
pub const RCPT_OK: &str = "250 2.1.5 Ok\r\n";
pub const START_DATA: &str = "354 End data with <CR><LF>.<CR><LF>\r\n";
pub const BYE: &str = "221 2.0.0 Bye\r\n";
pub const VRFY: &str =
    "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery\r\n";
pub const HELP: &str =
    "214 2.0.0 Commands: EHLO HELO AUTH MAIL RCPT DATA RSET NOOP VRFY HELP QUIT\r\n";

pub fn queued(id: &str) -> String {
    format!("250 2.0.0 Ok: queued as {id}\r\n")
}

// --- access and authentication
pub const ACCESS_DENIED: &str = "554 5.7.1 Access denied\r\n";
pub const AUTH_REQUIRED: &str = "530 5.7.0 Authentication required\r\n";
pub const AUTH_OK: &str = "235 2.7.0 Authentication successful\r\n";
pub const AUTH_FAILED: &str = "535 5.7.8 Authentication credentials invalid\r\n";
pub const AUTH_CANCELLED: &str = "501 5.7.0 Authentication cancelled\r\n";
pub const AUTH_BAD_BASE64: &str = "501 5.5.2 Invalid base64 data\r\n";
pub const AUTH_ALREADY: &str = "503 5.5.1 Already authenticated\r\n";
pub const AUTH_IN_TRANSACTION: &str = "503 5.5.1 AUTH not permitted during a mail transaction\r\n";
pub const AUTH_UNKNOWN_MECHANISM: &str = "504 5.5.4 Unrecognized authentication type\r\n";
pub const AUTH_NOT_AVAILABLE: &str = "502 5.5.1 AUTH not available\r\n";
/// Server challenge for AUTH PLAIN without an initial response (empty challenge).
pub const AUTH_PLAIN_CHALLENGE: &str = "334 \r\n";
/// base64("Username:")
pub const AUTH_LOGIN_USERNAME: &str = "334 VXNlcm5hbWU6\r\n";
/// base64("Password:")
pub const AUTH_LOGIN_PASSWORD: &str = "334 UGFzc3dvcmQ6\r\n";

/// Over the per-address cap on logins in progress: temporary, try again.
pub const AUTH_BUSY: &str =
    "454 4.7.0 Too many logins in progress from your address, try again later\r\n";

pub fn auth_blocked(host: &str) -> String {
    format!("421 4.7.0 {host} Too many failed logins, try again later\r\n")
}

// --- local TLS (RFC 3207)
pub const STARTTLS_READY: &str = "220 2.0.0 Ready to start TLS\r\n";
pub const TLS_ALREADY_ACTIVE: &str = "503 5.5.1 TLS already active\r\n";
pub const TLS_NOT_AVAILABLE: &str =
    "454 4.7.0 TLS not available: no local certificate configured\r\n";

// --- syntax and sequence
pub const LINE_TOO_LONG: &str = "500 5.5.2 Line too long\r\n";
pub const BAD_CHARACTERS: &str =
    "500 5.5.2 Invalid characters in command (NUL or invalid UTF-8)\r\n";
pub const UNKNOWN_COMMAND: &str = "502 5.5.2 Command not recognized\r\n";
pub const NOT_IMPLEMENTED: &str = "502 5.5.1 Command not implemented\r\n";
pub const BAD_SENDER: &str = "501 5.1.7 Bad sender address syntax\r\n";
pub const BAD_RECIPIENT: &str = "501 5.1.3 Bad recipient address syntax\r\n";
/// A sender with a control character (553: mailbox name not allowed,
/// RFC 5321 4.2.3; 5.1.7: bad sender's mailbox address syntax, RFC 3463).
pub const SENDER_CONTROL_CHARACTERS: &str =
    "553 5.1.7 Control characters are not allowed in the sender address\r\n";
/// A recipient with a control character (553; 5.1.3: bad destination
/// mailbox address syntax, RFC 3463).
pub const RECIPIENT_CONTROL_CHARACTERS: &str =
    "553 5.1.3 Control characters are not allowed in the recipient address\r\n";
/// A HELO/EHLO name with a control character (5.5.2: syntax error, RFC 3463).
pub const BAD_HELO: &str = "501 5.5.2 Control characters are not allowed in the HELO/EHLO name\r\n";
pub const UNSUPPORTED_PARAMETER: &str = "555 5.5.4 Unsupported MAIL or RCPT parameter\r\n";
pub const NEED_MAIL: &str = "503 5.5.1 Bad sequence of commands: need MAIL first\r\n";
pub const NESTED_MAIL: &str = "503 5.5.1 Bad sequence of commands: nested MAIL\r\n";
pub const NEED_RCPT: &str = "503 5.5.1 Bad sequence of commands: need RCPT first\r\n";

pub fn syntax(usage: &str) -> String {
    format!("501 5.5.4 Syntax: {usage}\r\n")
}

pub fn bad_parameter(param: &str) -> String {
    format!("501 5.5.4 Invalid parameter {param}\r\n")
}

// --- limits and failures
pub const NUL_IN_MESSAGE: &str =
    "554 5.6.0 Message contains NUL bytes, which SMTP does not allow; not accepted\r\n";
pub const MESSAGE_TOO_BIG: &str = "552 5.3.4 Message size exceeds fixed maximum message size\r\n";
pub const TOO_MANY_RECIPIENTS: &str = "452 4.5.3 Too many recipients\r\n";
pub const SPOOL_ERROR: &str = "452 4.3.1 Insufficient system storage\r\n";
pub const NO_DIRECT_UPSTREAM: &str = "451 4.3.0 Upstream delivery not available\r\n";

pub fn idle_timeout(host: &str) -> String {
    format!("421 4.4.2 {host} Error: timeout exceeded\r\n")
}

pub fn too_slow(host: &str) -> String {
    format!("421 4.4.2 {host} Error: message transfer too slow\r\n")
}

pub fn too_many_errors(host: &str) -> String {
    format!("421 4.7.0 {host} Error: too many errors\r\n")
}

pub fn shutting_down(host: &str) -> String {
    format!("421 4.3.0 {host} shutting down\r\n")
}

/// The upstream's reply (direct mode), made safe to pass on: a valid code,
/// no CR/LF inside a line, multi-line text kept as continuation lines.
pub fn relayed(code: u16, enhanced: Option<&str>, text: &str) -> String {
    let code = if (200..=599).contains(&code) {
        code
    } else {
        451
    };
    let enhanced = enhanced
        .filter(|e| e.len() <= 16 && e.bytes().all(|b| b.is_ascii_digit() || b == b'.'))
        .map(|e| format!("{e} "))
        .unwrap_or_default();
    let lines: Vec<String> = text
        .split(['\r', '\n'])
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let clean: String = l.chars().filter(|c| !c.is_control()).take(400).collect();
            format!("{enhanced}{clean}")
        })
        .collect();
    if lines.is_empty() {
        return format!("{code} {enhanced}(no text from upstream)\r\n");
    }
    multiline(code, &lines)
}

/// The reply code at the start of a reply (0 if malformed).
pub fn code_of(reply: &str) -> u16 {
    reply.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ehlo_lists_extensions_last_line_with_space() {
        let r = ehlo("mx.local", 100, true, false);
        assert!(r.starts_with("250-mx.local\r\n250-PIPELINING\r\n250-SIZE 100\r\n"));
        assert!(r.ends_with("250 AUTH PLAIN LOGIN\r\n"));
        let r = ehlo("mx.local", 100, false, false);
        assert!(r.ends_with("250 ENHANCEDSTATUSCODES\r\n"));
        assert!(!r.contains("AUTH") && !r.contains("STARTTLS"));
        let r = ehlo("mx.local", 100, true, true);
        assert!(r.ends_with("250-STARTTLS\r\n250 AUTH PLAIN LOGIN\r\n"));
    }

    #[test]
    fn relayed_reply_is_sanitised() {
        assert_eq!(
            relayed(451, Some("4.3.0"), "try later"),
            "451 4.3.0 try later\r\n"
        );
        assert_eq!(
            relayed(554, Some("5.7.1"), "no\r\nway"),
            "554-5.7.1 no\r\n554 5.7.1 way\r\n"
        );
        assert_eq!(relayed(999, None, ""), "451 (no text from upstream)\r\n");
    }
}
