//! The pre-login state machine, without I/O: a framed command (or an
//! AUTHENTICATE response line) goes in, the reply to send and what to do next
//! comes out. Logging in itself (local check, upstream) is the caller's job.

use super::parser::{self, Command, ParseError};
use super::responses;
use crate::secret::Secret;

/// Credentials a client presented, with the tag to answer on.
#[derive(Debug)]
pub struct LoginRequest {
    pub tag: String,
    pub user: String,
    pub password: Secret,
}

#[derive(Debug)]
pub enum Step {
    /// Send this and read the next command.
    Reply(Vec<u8>),
    /// Send this and close the connection.
    Close(Vec<u8>),
    /// Send this continuation and read one AUTHENTICATE response line.
    Continue(Vec<u8>),
    /// Try to log in; the caller sends the outcome.
    Login(LoginRequest),
    /// Send this (tagged OK), discard anything read ahead, do the TLS
    /// handshake, then call [`Session::tls_started`].
    StartTls(Vec<u8>),
}

#[derive(Default)]
pub struct Session {
    /// The tag of an AUTHENTICATE waiting for its response line.
    pending_auth: Option<String>,
    /// Local TLS is configured (STARTTLS can be offered).
    starttls_configured: bool,
    /// The connection runs over TLS (implicit, or after STARTTLS).
    tls: bool,
}

impl Session {
    pub fn new() -> Self {
        Session::default()
    }

    /// A session on a server with local TLS: STARTTLS is offered until the
    /// connection is TLS.
    pub fn with_starttls() -> Self {
        Session {
            starttls_configured: true,
            ..Session::default()
        }
    }

    /// The connection is now TLS; the session starts over (RFC 3501 6.2.1:
    /// nothing learnt before the handshake is kept).
    pub fn tls_started(&mut self) {
        self.pending_auth = None;
        self.tls = true;
    }

    /// STARTTLS is advertised and accepted now.
    pub fn offers_starttls(&self) -> bool {
        self.starttls_configured && !self.tls
    }

    /// True when the next input is an AUTHENTICATE response line, not a command.
    pub fn expects_sasl_response(&self) -> bool {
        self.pending_auth.is_some()
    }

    /// Handles one complete command (literals inline, CRLF included).
    pub fn on_command(&mut self, input: &[u8]) -> Step {
        let parsed = match parser::parse_command(input) {
            Ok(p) => p,
            Err(ParseError::NoTag) => {
                return Step::Reply(responses::untagged_bad(
                    "Invalid command: expected a tag and a command",
                ))
            }
            Err(ParseError::Syntax { tag, what }) => {
                return Step::Reply(responses::syntax_error(&tag, what))
            }
        };
        let tag = parsed.tag;
        match parsed.command {
            Command::Capability => Step::Reply(responses::capability(&tag, self.offers_starttls())),
            Command::Noop => Step::Reply(responses::noop(&tag)),
            Command::Logout => Step::Close(responses::logout(&tag)),
            Command::Id => Step::Reply(responses::id(&tag)),
            Command::StartTls if self.offers_starttls() => {
                Step::StartTls(responses::starttls_ok(&tag))
            }
            Command::StartTls if self.tls => Step::Reply(responses::tls_already_active(&tag)),
            Command::StartTls => Step::Reply(responses::starttls_unavailable(&tag)),
            Command::Login { user, password } => Step::Login(LoginRequest {
                tag,
                user,
                password,
            }),
            Command::Authenticate { mechanism, .. } if mechanism != "PLAIN" => {
                Step::Reply(responses::mechanism_unsupported(&tag))
            }
            Command::Authenticate { initial: None, .. } => {
                self.pending_auth = Some(tag);
                Step::Continue(responses::SASL_CONTINUE.to_vec())
            }
            Command::Authenticate {
                initial: Some(ir), ..
            } => match parser::parse_sasl_response(&ir) {
                Ok(Some(msg)) => plain(tag, &msg),
                Ok(None) => Step::Reply(responses::authenticate_cancelled(&tag)),
                Err(parser::BadBase64) => Step::Reply(responses::sasl_malformed(&tag)),
            },
            Command::NotBeforeLogin(name) => Step::Reply(responses::login_first(&tag, &name)),
            Command::Unknown => Step::Reply(responses::unknown_command(&tag)),
        }
    }

    /// Handles the line answering our AUTHENTICATE continuation.
    pub fn on_sasl_response(&mut self, line: &[u8]) -> Step {
        let Some(tag) = self.pending_auth.take() else {
            return self.on_command(line);
        };
        let Some(body) = line.strip_suffix(b"\r\n") else {
            return Step::Reply(responses::sasl_malformed(&tag));
        };
        match parser::parse_sasl_response(body) {
            Ok(Some(msg)) => plain(tag, &msg),
            Ok(None) => Step::Reply(responses::authenticate_cancelled(&tag)),
            Err(parser::BadBase64) => Step::Reply(responses::sasl_malformed(&tag)),
        }
    }
}

fn plain(tag: String, msg: &[u8]) -> Step {
    match parser::split_plain(msg) {
        None => Step::Reply(responses::sasl_malformed(&tag)),
        Some((authz, user, _)) if !authz.is_empty() && authz != user => {
            Step::Reply(responses::authzid_refused(&tag))
        }
        Some((_, user, password)) => Step::Login(LoginRequest {
            tag,
            user,
            password,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(step: Step) -> String {
        match step {
            Step::Reply(b) | Step::Close(b) | Step::Continue(b) | Step::StartTls(b) => {
                String::from_utf8(b).unwrap()
            }
            Step::Login(r) => panic!("unexpected login {r:?}"),
        }
    }

    #[test]
    fn pre_login_commands() {
        let mut s = Session::new();
        assert!(reply(s.on_command(b"a CAPABILITY\r\n"))
            .contains("* CAPABILITY IMAP4rev1 LITERAL+ SASL-IR ID AUTH=PLAIN\r\na OK"));
        assert!(reply(s.on_command(b"b SELECT INBOX\r\n"))
            .starts_with("b BAD SELECT is not allowed before login"));
        assert!(reply(s.on_command(b"c XYZZY\r\n")).starts_with("c BAD Unknown"));
        assert!(reply(s.on_command(b"\x01\x02\r\n")).starts_with("* BAD"));
        assert!(reply(s.on_command(b"d STARTTLS\r\n")).starts_with("d BAD"));
        assert!(
            matches!(s.on_command(b"e LOGOUT\r\n"), Step::Close(b) if b.ends_with(b"e OK LOGOUT completed\r\n"))
        );
    }

    /// The RFC 2971 maximum ID gets the same answer as a short one.
    #[test]
    fn maximal_id_is_answered() {
        use crate::imap::parser::{maximal_id, IdForm};
        let mut s = Session::new();
        for form in [IdForm::Escaped, IdForm::Literal, IdForm::LiteralPlus] {
            assert_eq!(
                reply(s.on_command(&maximal_id("a", form))),
                String::from_utf8(responses::id("a")).unwrap(),
                "{form:?}"
            );
        }
    }

    #[test]
    fn authenticate_plain_flows() {
        let mut s = Session::new();
        // SASL-IR: "\0joe\0p w"
        match s.on_command(b"a AUTHENTICATE PLAIN AGpvZQBwIHc=\r\n") {
            Step::Login(r) => assert_eq!(
                (r.tag.as_str(), r.user.as_str(), r.password.expose()),
                ("a", "joe", "p w")
            ),
            s => panic!("{s:?}"),
        }
        assert!(matches!(
            s.on_command(b"b AUTHENTICATE PLAIN\r\n"),
            Step::Continue(_)
        ));
        assert!(s.expects_sasl_response());
        match s.on_sasl_response(b"am9lAGpvZQBwdw==\r\n") {
            Step::Login(r) => assert_eq!((r.tag.as_str(), r.user.as_str()), ("b", "joe")),
            s => panic!("{s:?}"),
        }
        assert!(!s.expects_sasl_response());
        assert!(matches!(
            s.on_command(b"c AUTHENTICATE PLAIN\r\n"),
            Step::Continue(_)
        ));
        assert!(reply(s.on_sasl_response(b"*\r\n")).starts_with("c BAD AUTHENTICATE cancelled"));
        assert!(reply(s.on_command(b"d AUTHENTICATE PLAIN =\r\n")).starts_with("d BAD Malformed"));
        assert!(reply(s.on_command(b"e AUTHENTICATE CRAM-MD5\r\n")).starts_with("e NO"));
        // authzid for somebody else: "bob\0joe\0pw"
        assert!(
            reply(s.on_command(b"f AUTHENTICATE PLAIN Ym9iAGpvZQBwdw==\r\n"))
                .starts_with("f NO [AUTHORIZATIONFAILED]")
        );
    }
}

#[cfg(test)]
mod starttls_tests {
    use super::*;

    #[test]
    fn starttls_only_when_configured_and_plaintext() {
        let mut s = Session::with_starttls();
        match s.on_command(b"a CAPABILITY\r\n") {
            Step::Reply(b) => assert!(String::from_utf8(b)
                .unwrap()
                .contains("AUTH=PLAIN STARTTLS\r\n")),
            s => panic!("{s:?}"),
        }
        assert!(
            matches!(s.on_command(b"b STARTTLS\r\n"), Step::StartTls(b) if b == b"b OK Begin TLS negotiation now\r\n")
        );
        s.tls_started();
        match s.on_command(b"c CAPABILITY\r\n") {
            Step::Reply(b) => assert!(!String::from_utf8(b).unwrap().contains("STARTTLS")),
            s => panic!("{s:?}"),
        }
        assert!(
            matches!(s.on_command(b"d STARTTLS\r\n"), Step::Reply(b) if b.starts_with(b"d BAD TLS is already active"))
        );
        let mut s = Session::new();
        assert!(
            matches!(s.on_command(b"e STARTTLS\r\n"), Step::Reply(b) if b.starts_with(b"e BAD"))
        );
    }
}
