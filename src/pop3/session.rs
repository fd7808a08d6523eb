//! The POP3 pre-login state machine (AUTHORIZATION state, RFC 1939), without
//! I/O: one line goes in, the reply to send and what to do next comes out.
//! Logging in itself (local check, upstream) is the caller's job.
//!
//! Decisions: `NOOP` gets `-ERR` (RFC 1939 allows it only in TRANSACTION
//! state); `APOP` is refused (no plaintext password is stored here); a line
//! with NUL or other control bytes, or not UTF-8, gets `-ERR` and the session
//! goes on; too many errors in a row close it. Over-long lines are the
//! framing's business ([`MAX_LINE`]): they get [`responses::LINE_TOO_LONG`]
//! and the connection closes, since the rest of such a line cannot be told
//! apart from the next command.

use super::responses;
use crate::imap::parser::{parse_sasl_response, split_plain, BadBase64};
use crate::secret::Secret;

/// Longest line accepted before login, CRLF included. RFC 2449 caps commands
/// at 255 octets; we allow more (long passwords in AUTH PLAIN's base64) but
/// stay bounded.
pub const MAX_LINE: usize = 4096;
/// Errors (each answered) before the connection is closed.
pub const MAX_ERRORS: u32 = 20;

/// Credentials a client presented.
#[derive(Debug)]
pub struct LoginRequest {
    pub user: String,
    pub password: Secret,
}

#[derive(Debug)]
pub enum Step {
    /// Send this and read the next line.
    Reply(Vec<u8>),
    /// Send this and close the connection.
    Close(Vec<u8>),
    /// Send this continuation and read one AUTH response line.
    Continue(Vec<u8>),
    /// Try to log in; the caller sends the outcome.
    Login(LoginRequest),
    /// Send this (+OK), discard anything read ahead, do the TLS handshake,
    /// then call [`Session::tls_started`].
    StartTls(Vec<u8>),
}

#[derive(Default)]
pub struct Session {
    /// The name from USER, waiting for PASS.
    user: Option<String>,
    /// An AUTH PLAIN is waiting for its response line.
    pending_auth: bool,
    /// Local TLS is configured (STLS can be offered).
    stls_configured: bool,
    /// The connection runs over TLS (implicit, or after STLS).
    tls: bool,
    errors: u32,
}

impl Session {
    pub fn new() -> Self {
        Session::default()
    }

    /// A session on a server with local TLS: STLS is offered until the
    /// connection is TLS.
    pub fn with_stls() -> Self {
        Session {
            stls_configured: true,
            ..Session::default()
        }
    }

    /// The connection is now TLS; nothing learnt before it is kept (RFC 2595).
    pub fn tls_started(&mut self) {
        self.user = None;
        self.pending_auth = false;
        self.tls = true;
    }

    /// STLS is advertised and accepted now.
    pub fn offers_stls(&self) -> bool {
        self.stls_configured && !self.tls
    }

    /// Handles one line as read (terminator included, if any).
    pub fn on_line(&mut self, line: &[u8]) -> Step {
        let body = line
            .strip_suffix(b"\n")
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .unwrap_or(line);
        if self.pending_auth {
            self.pending_auth = false;
            return match parse_sasl_response(body) {
                Ok(Some(msg)) => self.plain(&msg),
                Ok(None) => self.error(responses::AUTH_CANCELLED),
                Err(BadBase64) => self.error(responses::SASL_MALFORMED),
            };
        }
        let Some(text) = std::str::from_utf8(body)
            .ok()
            .filter(|t| !t.chars().any(|c| c.is_control() && c != '\t'))
        else {
            return self.error(responses::BAD_LINE);
        };
        let (keyword, arg) = match text.split_once(' ') {
            Some((k, a)) => (k, Some(a)),
            None => (text, None),
        };
        let keyword = keyword.to_ascii_uppercase();
        // A PASS that does not follow USER must not leave a half login behind.
        let user = self.user.take();
        match keyword.as_str() {
            "CAPA" => Step::Reply(responses::capa(self.offers_stls())),
            "QUIT" => Step::Close(responses::QUIT.to_vec()),
            "USER" => match arg.map(str::trim).filter(|a| !a.is_empty()) {
                Some(name) => {
                    self.user = Some(name.to_string());
                    Step::Reply(responses::USER_OK.to_vec())
                }
                None => self.error(responses::USER_MISSING),
            },
            // RFC 1939 errata: the password is the rest of the line, spaces included.
            "PASS" => match user {
                Some(user) => Step::Login(LoginRequest {
                    user,
                    password: Secret::new(arg.unwrap_or("")),
                }),
                None => self.error(responses::USER_FIRST),
            },
            "AUTH" => self.auth(arg),
            "STLS" if self.offers_stls() => Step::StartTls(responses::STLS_OK.to_vec()),
            "STLS" if self.tls => self.error(responses::STLS_ACTIVE),
            "STLS" => self.error(responses::STLS_UNAVAILABLE),
            "APOP" => self.error(responses::APOP_REFUSED),
            "NOOP" => self.error(responses::NOOP_BEFORE_LOGIN),
            "STAT" | "LIST" | "RETR" | "DELE" | "RSET" | "TOP" | "UIDL" | "LAST" => {
                self.error(responses::LOGIN_FIRST)
            }
            _ => self.error(responses::UNKNOWN_COMMAND),
        }
    }

    fn auth(&mut self, arg: Option<&str>) -> Step {
        let Some(arg) = arg.map(str::trim).filter(|a| !a.is_empty()) else {
            return Step::Reply(responses::AUTH_LIST.to_vec());
        };
        let (mechanism, initial) = match arg.split_once(' ') {
            Some((m, i)) => (m, Some(i.trim())),
            None => (arg, None),
        };
        if !mechanism.eq_ignore_ascii_case("PLAIN") {
            return self.error(responses::MECHANISM_UNSUPPORTED);
        }
        match initial {
            None => {
                self.pending_auth = true;
                Step::Continue(responses::SASL_CONTINUE.to_vec())
            }
            Some(ir) => match parse_sasl_response(ir.as_bytes()) {
                Ok(Some(msg)) => self.plain(&msg),
                Ok(None) => self.error(responses::AUTH_CANCELLED),
                Err(BadBase64) => self.error(responses::SASL_MALFORMED),
            },
        }
    }

    fn plain(&mut self, msg: &[u8]) -> Step {
        match split_plain(msg) {
            None => self.error(responses::SASL_MALFORMED),
            Some((authz, user, _)) if !authz.is_empty() && authz != user => {
                self.error(responses::AUTHZID_REFUSED)
            }
            Some((_, user, password)) => Step::Login(LoginRequest { user, password }),
        }
    }

    /// A `-ERR` that keeps the session, until there have been too many.
    fn error(&mut self, text: &[u8]) -> Step {
        self.errors += 1;
        if self.errors >= MAX_ERRORS {
            let mut v = text.to_vec();
            v.extend_from_slice(responses::TOO_MANY_ERRORS);
            return Step::Close(v);
        }
        Step::Reply(text.to_vec())
    }

    /// A login attempt failed; the failure counts like any other error.
    pub fn login_failed(&mut self) {
        self.errors += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(step: Step) -> String {
        match step {
            Step::Reply(b) | Step::Close(b) | Step::Continue(b) | Step::StartTls(b) => {
                String::from_utf8(b).unwrap()
            }
            Step::Login(r) => panic!("unexpected login {r:?}"),
        }
    }

    fn login(step: Step) -> (String, String) {
        match step {
            Step::Login(r) => (r.user, r.password.expose().to_string()),
            s => panic!("expected a login, got {s:?}"),
        }
    }

    #[test]
    fn capa_lists_user_sasl_plain_and_no_apop() {
        let mut s = Session::new();
        let capa = text(s.on_line(b"CAPA\r\n"));
        assert!(capa.starts_with("+OK"), "{capa}");
        assert!(capa.contains("\r\nUSER\r\n"), "{capa}");
        assert!(capa.contains("\r\nSASL PLAIN\r\n"), "{capa}");
        assert!(!capa.contains("APOP") && !capa.contains("STLS"), "{capa}");
        assert!(capa.ends_with("\r\n.\r\n"), "{capa}");
        let mut s = Session::with_stls();
        assert!(text(s.on_line(b"capa\r\n")).contains("\r\nSTLS\r\n"));
        // No APOP timestamp in the greeting either.
        assert!(!responses::GREETING.contains(&b'<'));
    }

    #[test]
    fn user_pass() {
        let mut s = Session::new();
        assert!(text(s.on_line(b"PASS x\r\n")).starts_with("-ERR Send USER first"));
        assert!(text(s.on_line(b"USER\r\n")).starts_with("-ERR USER needs"));
        assert_eq!(text(s.on_line(b"user joe\r\n")), "+OK Send PASS\r\n");
        assert_eq!(
            login(s.on_line(b"PASS p w  x\r\n")),
            ("joe".into(), "p w  x".into())
        );
        // The USER is used up: a second PASS needs a new USER.
        assert!(text(s.on_line(b"PASS again\r\n")).starts_with("-ERR Send USER first"));
        // Any other command between USER and PASS forgets the USER.
        s.on_line(b"USER joe\r\n");
        s.on_line(b"CAPA\r\n");
        assert!(text(s.on_line(b"PASS pw\r\n")).starts_with("-ERR Send USER first"));
        // Bare LF is accepted.
        s.on_line(b"USER joe\n");
        assert_eq!(login(s.on_line(b"PASS pw\n")), ("joe".into(), "pw".into()));
    }

    #[test]
    fn auth_plain_forms() {
        let mut s = Session::new();
        // "\0joe\0p w"
        assert_eq!(
            login(s.on_line(b"AUTH PLAIN AGpvZQBwIHc=\r\n")),
            ("joe".into(), "p w".into())
        );
        assert!(matches!(s.on_line(b"AUTH PLAIN\r\n"), Step::Continue(b) if b == b"+ \r\n"));
        assert_eq!(
            login(s.on_line(b"am9lAGpvZQBwdw==\r\n")),
            ("joe".into(), "pw".into())
        );
        assert!(matches!(s.on_line(b"auth plain\r\n"), Step::Continue(_)));
        assert_eq!(text(s.on_line(b"*\r\n")), "-ERR AUTH cancelled\r\n");
        assert!(matches!(s.on_line(b"AUTH PLAIN\r\n"), Step::Continue(_)));
        assert!(text(s.on_line(b"!!not base64!!\r\n")).starts_with("-ERR Malformed"));
        // After a bad response the session reads commands again.
        assert!(text(s.on_line(b"CAPA\r\n")).starts_with("+OK"));
        assert!(text(s.on_line(b"AUTH PLAIN =\r\n")).starts_with("-ERR Malformed"));
        assert!(text(s.on_line(b"AUTH PLAIN %%%\r\n")).starts_with("-ERR Malformed"));
        assert!(text(s.on_line(b"AUTH PLAIN *\r\n")).starts_with("-ERR AUTH cancelled"));
        assert!(text(s.on_line(b"AUTH CRAM-MD5\r\n")).starts_with("-ERR Unsupported"));
        assert_eq!(text(s.on_line(b"AUTH\r\n")), "+OK\r\nPLAIN\r\n.\r\n");
        // authzid for somebody else: "bob\0joe\0pw"
        assert!(text(s.on_line(b"AUTH PLAIN Ym9iAGpvZQBwdw==\r\n")).starts_with("-ERR [AUTH]"));
        // authzid equal to the user is fine: "joe\0joe\0pw"
        assert_eq!(
            login(s.on_line(b"AUTH PLAIN am9lAGpvZQBwdw==\r\n")).0,
            "joe"
        );
    }

    #[test]
    fn refusals_before_login() {
        let mut s = Session::new();
        assert!(text(s.on_line(b"APOP joe 0123456789abcdef\r\n"))
            .starts_with("-ERR APOP is not supported"));
        assert!(text(s.on_line(b"NOOP\r\n")).starts_with("-ERR NOOP is only valid after login"));
        for cmd in [
            "STAT", "LIST", "RETR 1", "DELE 1", "RSET", "TOP 1 0", "UIDL", "LAST",
        ] {
            assert!(
                text(s.on_line(format!("{cmd}\r\n").as_bytes())).starts_with("-ERR Log in first"),
                "{cmd}"
            );
        }
        assert!(text(s.on_line(b"XYZZY\r\n")).starts_with("-ERR Unknown"));
        assert!(text(s.on_line(b"\r\n")).starts_with("-ERR Unknown"));
        assert!(text(s.on_line(b"USER a\0b\r\n")).starts_with("-ERR Invalid command line"));
        assert!(text(s.on_line(b"USER \xff\xfe\r\n")).starts_with("-ERR Invalid command line"));
        assert!(text(s.on_line(b"STLS\r\n")).starts_with("-ERR STLS is not offered"));
        assert!(matches!(s.on_line(b"QUIT\r\n"), Step::Close(b) if b.starts_with(b"+OK")));
    }

    #[test]
    fn stls_only_when_configured_and_plaintext() {
        let mut s = Session::with_stls();
        s.on_line(b"USER joe\r\n");
        assert!(matches!(s.on_line(b"STLS\r\n"), Step::StartTls(b) if b.starts_with(b"+OK")));
        s.tls_started();
        assert!(!text(s.on_line(b"CAPA\r\n")).contains("STLS"));
        assert!(text(s.on_line(b"STLS\r\n")).starts_with("-ERR TLS is already active"));
    }

    #[test]
    fn stls_forgets_a_user_given_before_it() {
        let mut s = Session::with_stls();
        s.on_line(b"USER joe\r\n");
        s.tls_started();
        assert!(text(s.on_line(b"PASS pw\r\n")).starts_with("-ERR Send USER first"));
    }

    #[test]
    fn too_many_errors_close() {
        let mut s = Session::new();
        for _ in 1..MAX_ERRORS {
            assert!(matches!(s.on_line(b"BOGUS\r\n"), Step::Reply(_)));
        }
        match s.on_line(b"BOGUS\r\n") {
            Step::Close(b) => assert!(b.ends_with(responses::TOO_MANY_ERRORS)),
            s => panic!("{s:?}"),
        }
    }
}
