//! The inbound SMTP session as a state machine with no I/O: it takes one
//! complete command line at a time and says what to answer and what to do
//! next ([`Step`]). The connection loop does the reading, writing, password
//! checks, spooling and timing.

use std::borrow::Cow;

use smtp_proto::{
    Error as ParseError, Request, AUTH_LOGIN, AUTH_PLAIN, MAIL_BODY_8BITMIME, MAIL_SMTPUTF8,
};

use super::data::EndOfData;
use super::path;
use super::replies;
use super::sasl::{self, SaslError};
use crate::config::Config;
use crate::secret::Secret;
use crate::text::has_control;

/// After this many error replies the session is closed with 421.
pub const MAX_ERRORS: u32 = 20;

/// What the session needs from the configuration.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub hostname: String,
    pub max_message_size: u64,
    pub max_client_recipients: usize,
    pub require_auth: bool,
    /// AUTH is advertised and accepted (there are local users).
    pub auth_offered: bool,
    /// The account for clients that do not log in (only if it exists).
    pub default_account: Option<String>,
    /// Local TLS is configured: STARTTLS is offered on plaintext connections.
    pub starttls_offered: bool,
    /// `smtp.allow_lf_only_clients`: a client whose command lines all ended
    /// in a bare LF may end DATA with `<LF>.<LF>`.
    pub allow_lf_only_clients: bool,
}

impl SessionConfig {
    pub fn from_config(config: &Config) -> Self {
        SessionConfig {
            hostname: config.smtp.hostname.clone(),
            max_message_size: config.smtp.max_message_size,
            max_client_recipients: config.smtp.max_client_recipients,
            require_auth: config.smtp.require_auth,
            auth_offered: !config.users.is_empty(),
            default_account: config.default_account().map(|a| a.name.clone()),
            starttls_offered: config.tls.is_some(),
            allow_lf_only_clients: config.smtp.allow_lf_only_clients,
        }
    }
}

/// What the connection loop must do after a line.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Send this reply and read the next command.
    Reply(String),
    /// Send this reply and close the connection.
    Close(String),
    /// Check these credentials, then call [`Session::auth_succeeded`] or
    /// [`Session::auth_failed`].
    Authenticate { user: String, password: Secret },
    /// Send this (354) reply, read the message, then call
    /// [`Session::take_transaction`].
    Data(String),
    /// Send this (220) reply, discard any bytes read ahead, do the TLS
    /// handshake, then call [`Session::tls_started`].
    StartTls(String),
}

/// One mail transaction (MAIL .. DATA).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    /// The account that will send it.
    pub account: String,
    /// Reverse-path ("" for `MAIL FROM:<>`).
    pub mail_from: String,
    pub recipients: Vec<String>,
    pub smtputf8: bool,
    pub body_8bit: bool,
}

/// Where a multi-step AUTH exchange stands.
#[derive(Debug)]
enum AuthWait {
    Plain,
    LoginUser,
    LoginPassword(String),
}

#[derive(Debug)]
pub struct Session {
    cfg: SessionConfig,
    helo: Option<String>,
    esmtp: bool,
    /// (local user, its account) once authenticated.
    user: Option<(String, String)>,
    auth_wait: Option<AuthWait>,
    txn: Option<Transaction>,
    errors: u32,
    /// The connection runs over TLS (implicit or after STARTTLS).
    tls: bool,
    /// Some command line so far ended in CRLF: the client is not LF-only.
    crlf_seen: bool,
}

impl Session {
    pub fn new(cfg: SessionConfig) -> Self {
        Session {
            cfg,
            helo: None,
            esmtp: false,
            user: None,
            auth_wait: None,
            txn: None,
            errors: 0,
            tls: false,
            crlf_seen: false,
        }
    }

    /// The connection is now TLS (implicit TLS, or the STARTTLS handshake
    /// finished). Everything learnt before is forgotten (RFC 3207 4.2): the
    /// client must EHLO (and AUTH) again.
    pub fn tls_started(&mut self) {
        self.tls = true;
        self.helo = None;
        self.esmtp = false;
        self.user = None;
        self.auth_wait = None;
        self.txn = None;
    }

    pub fn is_tls(&self) -> bool {
        self.tls
    }

    pub fn config(&self) -> &SessionConfig {
        &self.cfg
    }

    /// The HELO/EHLO name, or "unknown".
    pub fn helo(&self) -> &str {
        self.helo.as_deref().unwrap_or("unknown")
    }

    pub fn local_user(&self) -> Option<&str> {
        self.user.as_ref().map(|(u, _)| u.as_str())
    }

    /// Is an AUTH exchange waiting for a client response? (Such lines carry
    /// credentials: never log them.)
    pub fn in_auth_exchange(&self) -> bool {
        self.auth_wait.is_some()
    }

    /// The `with` protocol name for the Received header (RFC 3848, 6531).
    pub fn protocol(&self, smtputf8: bool) -> &'static str {
        let authed = self.user.is_some();
        match (smtputf8, self.esmtp, self.tls, authed) {
            (true, _, true, true) => "UTF8SMTPSA",
            (true, _, true, false) => "UTF8SMTPS",
            (true, _, false, true) => "UTF8SMTPA",
            (true, _, false, false) => "UTF8SMTP",
            (false, true, true, true) => "ESMTPSA",
            (false, true, true, false) => "ESMTPS",
            (false, true, false, true) => "ESMTPA",
            (false, true, false, false) => "ESMTP",
            (false, false, _, true) => "SMTPA",
            (false, false, _, false) => "SMTP",
        }
    }

    /// The transaction whose DATA was just read; the session is ready for the next MAIL.
    pub fn take_transaction(&mut self) -> Option<Transaction> {
        self.txn.take()
    }

    /// True once the session has closed on the client for too many errors.
    pub fn gave_up(&self) -> bool {
        self.errors >= MAX_ERRORS
    }

    /// A command line longer than the limit was discarded.
    pub fn line_too_long(&mut self) -> Step {
        self.auth_wait = None;
        self.count(Step::Reply(replies::LINE_TOO_LONG.into()))
    }

    /// Passes a reply made outside the state machine (e.g. after DATA)
    /// through the error counter.
    pub fn reply(&mut self, reply: String) -> Step {
        self.count(Step::Reply(reply))
    }

    /// The credentials from [`Step::Authenticate`] were right.
    pub fn auth_succeeded(&mut self, user: String, account: String) -> Step {
        self.user = Some((user, account));
        Step::Reply(replies::AUTH_OK.into())
    }

    /// The credentials were wrong (the loop has already waited its delay).
    pub fn auth_failed(&mut self) -> Step {
        self.count(Step::Reply(replies::AUTH_FAILED.into()))
    }

    /// Which "." lines end the coming DATA: the bare-LF form only for a
    /// client that has never sent a CRLF line (and only if allowed). A
    /// client that has, is a modern SMTP library; a bare-LF dot from it can
    /// only be forwarded content (SMTP smuggling).
    pub fn end_of_data(&self) -> EndOfData {
        if self.cfg.allow_lf_only_clients && !self.crlf_seen {
            EndOfData::BareLfAllowed
        } else {
            EndOfData::CrlfOnly
        }
    }

    /// One complete command line (ending in LF, at most the line limit).
    pub fn handle_line(&mut self, line: &[u8]) -> Step {
        if line.ends_with(b"\r\n") {
            self.crlf_seen = true;
        }
        let step = self.dispatch(line);
        self.count(step)
    }

    fn count(&mut self, step: Step) -> Step {
        let Step::Reply(reply) = &step else {
            return step;
        };
        if replies::code_of(reply) >= 500 {
            self.errors += 1;
            if self.errors >= MAX_ERRORS {
                return Step::Close(format!(
                    "{reply}{}",
                    replies::too_many_errors(&self.cfg.hostname)
                ));
            }
        }
        step
    }

    fn dispatch(&mut self, line: &[u8]) -> Step {
        if line.contains(&0) {
            self.auth_wait = None;
            return Step::Reply(replies::BAD_CHARACTERS.into());
        }
        let Ok(text) = std::str::from_utf8(line) else {
            self.auth_wait = None;
            return Step::Reply(replies::BAD_CHARACTERS.into());
        };
        if let Some(wait) = self.auth_wait.take() {
            return self.auth_continue(wait, text.trim_end_matches(['\r', '\n']));
        }
        let mut bytes = line.iter();
        match Request::parse(&mut bytes) {
            Ok(req) => self.request(req, text),
            Err(e) => Step::Reply(parse_error_reply(&e, text)),
        }
    }

    fn request(&mut self, req: Request<Cow<'_, str>>, line: &str) -> Step {
        let host = &self.cfg.hostname;
        match req {
            Request::Ehlo { host: client } | Request::Helo { host: client }
                if !helo_name_ok(&client, line) =>
            {
                Step::Reply(replies::BAD_HELO.into())
            }
            Request::Ehlo { host: client } => {
                self.helo = Some(client.into_owned());
                self.esmtp = true;
                self.txn = None;
                Step::Reply(replies::ehlo(
                    host,
                    self.cfg.max_message_size,
                    self.cfg.auth_offered,
                    self.cfg.starttls_offered && !self.tls,
                ))
            }
            Request::Helo { host: client } => {
                self.helo = Some(client.into_owned());
                self.esmtp = false;
                self.txn = None;
                Step::Reply(replies::helo(host))
            }
            Request::Auth {
                mechanism,
                initial_response,
            } => self.auth_start(mechanism, &initial_response),
            Request::Mail { from } => self.mail(from, line),
            Request::Rcpt { to } => self.rcpt(&to.address, line),
            Request::Data => match &self.txn {
                None => Step::Reply(replies::NEED_MAIL.into()),
                Some(t) if t.recipients.is_empty() => Step::Reply(replies::NEED_RCPT.into()),
                Some(_) => Step::Data(replies::START_DATA.into()),
            },
            Request::Rset => {
                self.txn = None;
                Step::Reply(replies::OK.into())
            }
            Request::Noop { .. } => Step::Reply(replies::OK.into()),
            Request::Vrfy { .. } => Step::Reply(replies::VRFY.into()),
            Request::Help { .. } => Step::Reply(replies::HELP.into()),
            Request::Quit => Step::Close(replies::BYE.into()),
            Request::Lhlo { .. }
            | Request::Bdat { .. }
            | Request::Expn { .. }
            | Request::Etrn { .. }
            | Request::Atrn { .. }
            | Request::Burl { .. } => Step::Reply(replies::NOT_IMPLEMENTED.into()),
            Request::StartTls if self.tls => Step::Reply(replies::TLS_ALREADY_ACTIVE.into()),
            Request::StartTls if !self.cfg.starttls_offered => {
                Step::Reply(replies::TLS_NOT_AVAILABLE.into())
            }
            Request::StartTls => Step::StartTls(replies::STARTTLS_READY.into()),
        }
    }

    fn mail(&mut self, from: smtp_proto::MailFrom<Cow<'_, str>>, line: &str) -> Step {
        if self.txn.is_some() {
            return Step::Reply(replies::NESTED_MAIL.into());
        }
        let account = match &self.user {
            Some((_, account)) => account.clone(),
            None if self.cfg.require_auth => return Step::Reply(replies::AUTH_REQUIRED.into()),
            None => match &self.cfg.default_account {
                Some(a) => a.clone(),
                None => return Step::Reply(replies::AUTH_REQUIRED.into()),
            },
        };
        // smtp-proto saturates huge SIZE values wrongly; read it ourselves.
        match declared_size(line.as_bytes()) {
            Ok(Some(size)) if size > self.cfg.max_message_size => {
                return Step::Reply(replies::MESSAGE_TOO_BIG.into())
            }
            Ok(_) => {}
            Err(()) => return Step::Reply(replies::bad_parameter("SIZE")),
        }
        let mail_from = match received_address(PathKind::Sender, &from.address, line) {
            Ok(a) => a,
            Err(reply) => return Step::Reply(reply.into()),
        };
        self.txn = Some(Transaction {
            account,
            smtputf8: from.flags & MAIL_SMTPUTF8 != 0 || !mail_from.is_ascii(),
            body_8bit: from.flags & MAIL_BODY_8BITMIME != 0,
            mail_from,
            recipients: Vec::new(),
        });
        Step::Reply(replies::MAIL_OK.into())
    }

    fn rcpt(&mut self, parsed: &str, line: &str) -> Step {
        let max = self.cfg.max_client_recipients;
        let Some(txn) = &mut self.txn else {
            return Step::Reply(replies::NEED_MAIL.into());
        };
        let address = match received_address(PathKind::Recipient, parsed, line) {
            Ok(a) => a,
            Err(reply) => return Step::Reply(reply.into()),
        };
        if txn.recipients.len() >= max {
            return Step::Reply(replies::TOO_MANY_RECIPIENTS.into());
        }
        if !address.is_ascii() {
            txn.smtputf8 = true;
        }
        txn.recipients.push(address);
        Step::Reply(replies::RCPT_OK.into())
    }

    fn auth_start(&mut self, mechanism: u64, initial: &str) -> Step {
        if !self.cfg.auth_offered {
            return Step::Reply(replies::AUTH_NOT_AVAILABLE.into());
        }
        if self.user.is_some() {
            return Step::Reply(replies::AUTH_ALREADY.into());
        }
        if self.txn.is_some() {
            return Step::Reply(replies::AUTH_IN_TRANSACTION.into());
        }
        match mechanism {
            AUTH_PLAIN if initial.is_empty() => {
                self.auth_wait = Some(AuthWait::Plain);
                Step::Reply(replies::AUTH_PLAIN_CHALLENGE.into())
            }
            AUTH_PLAIN => self.auth_continue(AuthWait::Plain, initial),
            AUTH_LOGIN if initial.is_empty() => {
                self.auth_wait = Some(AuthWait::LoginUser);
                Step::Reply(replies::AUTH_LOGIN_USERNAME.into())
            }
            AUTH_LOGIN => self.auth_continue(AuthWait::LoginUser, initial),
            _ => Step::Reply(replies::AUTH_UNKNOWN_MECHANISM.into()),
        }
    }

    /// A client response inside an AUTH exchange (`text` without CRLF).
    fn auth_continue(&mut self, wait: AuthWait, text: &str) -> Step {
        if text.trim() == "*" {
            return Step::Reply(replies::AUTH_CANCELLED.into());
        }
        let sasl_error = |e: SaslError| match e {
            SaslError::Base64 => Step::Reply(replies::AUTH_BAD_BASE64.into()),
            SaslError::Invalid => Step::Reply(replies::AUTH_FAILED.into()),
        };
        match wait {
            AuthWait::Plain => match sasl::decode_plain(text) {
                Ok((user, password)) => Step::Authenticate { user, password },
                Err(e) => sasl_error(e),
            },
            AuthWait::LoginUser => match sasl::decode_login_field(text) {
                Ok(user) => {
                    self.auth_wait = Some(AuthWait::LoginPassword(user.expose().to_string()));
                    Step::Reply(replies::AUTH_LOGIN_PASSWORD.into())
                }
                Err(e) => sasl_error(e),
            },
            AuthWait::LoginPassword(user) => match sasl::decode_login_field(text) {
                Ok(password) => Step::Authenticate { user, password },
                Err(e) => sasl_error(e),
            },
        }
    }
}

/// The reply for a command smtp-proto could not parse (`line` without NULs).
fn parse_error_reply(e: &ParseError, line: &str) -> String {
    match e {
        ParseError::UnknownCommand => replies::UNKNOWN_COMMAND.into(),
        ParseError::InvalidSenderAddress => PathKind::Sender.refusal(line).into(),
        ParseError::InvalidRecipientAddress => PathKind::Recipient.refusal(line).into(),
        ParseError::SyntaxError { syntax } => replies::syntax(syntax),
        ParseError::InvalidParameter { param } => replies::bad_parameter(param),
        ParseError::UnsupportedParameter { .. } => replies::UNSUPPORTED_PARAMETER.into(),
        // Only complete lines are parsed, so these mean a malformed line.
        ParseError::NeedsMoreData { .. }
        | ParseError::ResponseTooLong
        | ParseError::InvalidResponse { .. } => replies::syntax("command not understood"),
    }
}

/// Which envelope path a MAIL or RCPT line carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PathKind {
    Sender,
    Recipient,
}

impl PathKind {
    /// The reply refusing this line's path: `553` (mailbox name not allowed,
    /// RFC 5321 4.2.3) if it holds a control character, as Postfix refuses
    /// non-printables, else `501` (syntax). The enhanced code is X.1.7 for a
    /// sender and X.1.3 for a recipient either way (RFC 3463 3.2).
    fn refusal(self, line: &str) -> &'static str {
        match (self, path::has_control_in_path(line)) {
            (PathKind::Sender, true) => replies::SENDER_CONTROL_CHARACTERS,
            (PathKind::Sender, false) => replies::BAD_SENDER,
            (PathKind::Recipient, true) => replies::RECIPIENT_CONTROL_CHARACTERS,
            (PathKind::Recipient, false) => replies::BAD_RECIPIENT,
        }
    }
}

/// The address to keep for a MAIL/RCPT line that smtp-proto parsed as
/// `parsed`: the path exactly as the client sent it (a quoted local part
/// stays quoted), "" for a null reverse-path, or the reply refusing it
/// (control characters, not a mailbox, a null forward-path).
fn received_address(kind: PathKind, parsed: &str, line: &str) -> Result<String, &'static str> {
    if path::has_control_in_path(line) {
        return Err(kind.refusal(line));
    }
    // smtp-proto turns `<>` (and `<postmaster>`) into "".
    if parsed.is_empty() && kind == PathKind::Sender {
        return Ok(String::new());
    }
    match path::as_received(line) {
        Some(address) if is_mailbox(address) => Ok(address.to_string()),
        _ => Err(kind.refusal(line)),
    }
}

/// May a HELO/EHLO line with this name (as smtp-proto parsed it) be taken?
/// The name must be free of control characters, and so must the rest of the
/// line (`line` as received, which still holds a bare CR smtp-proto would
/// drop) apart from TABs between the words and the final CRLF.
fn helo_name_ok(name: &str, line: &str) -> bool {
    let line = line.trim_end_matches(['\r', '\n']);
    !has_control(name) && !line.chars().any(|c| c.is_control() && c != '\t')
}

/// `local@domain` with both parts present (we relay only to real mailboxes).
fn is_mailbox(address: &str) -> bool {
    address
        .rsplit_once('@')
        .is_some_and(|(local, domain)| !local.is_empty() && !domain.is_empty())
}

/// The `SIZE=` value on a MAIL line: `Ok(None)` if absent, `Ok(Some(u64::MAX))`
/// if too large to represent, `Err` if not a number.
fn declared_size(line: &[u8]) -> Result<Option<u64>, ()> {
    // Parameters follow the closing '>' of the reverse-path.
    let Some(close) = line.iter().position(|b| *b == b'>') else {
        return Ok(None);
    };
    let params = &line[close + 1..];
    for word in params.split(|b| b.is_ascii_whitespace()) {
        if word.len() >= 5 && word[..5].eq_ignore_ascii_case(b"SIZE=") {
            let digits = &word[5..];
            if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
                return Err(());
            }
            let value = std::str::from_utf8(digits)
                .ok()
                .and_then(|d| d.parse::<u64>().ok())
                .unwrap_or(u64::MAX);
            return Ok(Some(value));
        }
    }
    Ok(None)
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
