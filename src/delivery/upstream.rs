//! The upstream SMTP client: per-account TLS parameters built once, connect
//! (implicit TLS or STARTTLS, never AUTH in plaintext), AUTH, a small pool of
//! authenticated idle connections per account, and one message transaction
//! with per-recipient verdicts, recipients split into chunks.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::AsyncSmtpConnection;
use lettre::transport::smtp::commands::{Data, Rset};
use lettre::transport::smtp::extension::{ClientId, Extension};

use super::limits::{DailyLimits, Window};
use super::outcome::{classify, describe, ConnectFailure, DeliveryReport, Verdict};
use super::reply::{Cause, Reply, Stage, Status};
use super::starttls;
use super::transport::{self, account_tls, AccountTls};
use super::xoauth2;
use crate::config::{Account, Config, TlsMode};
use crate::oauth2::manager::TokenManager;
use crate::oauth2::Tokens;
use crate::secret::Secret;
use crate::spool::Envelope;

/// An idle connection older than this is closed rather than reused.
const IDLE_MAX: Duration = Duration::from_secs(30);
/// How long a reused connection may take to answer the RSET that checks it.
const RSET_TIMEOUT: Duration = Duration::from_secs(10);
/// The message goes to lettre in pieces of this many bytes (see `transaction`).
const SEND_PIECE: usize = 64 * 1024;

/// Upstream SMTP clients, one per account, with their idle connections.
pub struct Upstream {
    tls: HashMap<String, AccountTls>,
    hello: ClientId,
    max_recipients: usize,
    timeout: Duration,
    pool_size: usize,
    /// Idle connections per account, with when they went idle and the
    /// OAuth2 access token they logged in with (`None`: a password).
    idle: Mutex<HashMap<String, Vec<Idle>>>,
    /// The OAuth2 token managers (`auth = "oauth2"` accounts).
    tokens: Arc<Tokens>,
    /// Per-account daily send caps (`daily_limit`).
    limits: DailyLimits,
}

/// An idle authenticated connection: since when, and with which token.
type Idle = (AsyncSmtpConnection, Instant, Option<Secret>);

/// A raw SMTP command line (MAIL/RCPT with our own parameters, AUTH XOAUTH2).
pub(super) struct Line(pub(super) String);

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}\r\n", self.0)
    }
}

fn hello_name(hostname: &str) -> ClientId {
    match hostname.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(a)) => ClientId::Ipv4(a),
        Ok(std::net::IpAddr::V6(a)) => ClientId::Ipv6(a),
        Err(_) if !hostname.is_empty() && hostname.contains('.') => {
            ClientId::Domain(hostname.to_string())
        }
        Err(_) => ClientId::Domain("localhost.localdomain".into()),
    }
}

/// Opens a connection to `account`'s SMTP server: TLS as configured, EHLO,
/// AUTH (with the password, or for `auth = "oauth2"` with the access token
/// from `tokens`; `Some` is the token it logged in with).
/// Credentials are only ever sent over a verified TLS connection.
pub(crate) async fn connect(
    account: &Account,
    tls: &AccountTls,
    hello: &ClientId,
    connect_timeout: Duration,
    tokens: &Tokens,
) -> Result<(AsyncSmtpConnection, Option<Secret>), ConnectFailure> {
    match manager(tokens, account)? {
        Some(m) => {
            let token = xoauth2::token(account, &m).await?;
            xoauth2::connect(account, tls, hello, connect_timeout, &m, token)
                .await
                .map(|(c, t)| (c, Some(t)))
        }
        None => connect_password(account, tls, hello, connect_timeout)
            .await
            .map(|c| (c, None)),
    }
}

/// The account's token manager; `None` for a password account.
fn manager(
    tokens: &Tokens,
    account: &Account,
) -> Result<Option<Arc<TokenManager>>, ConnectFailure> {
    tokens
        .manager(account)
        .map_err(|e| ConnectFailure::Config(format!("account {:?}: {e}", account.name)))
}

/// TLS as configured and EHLO, not yet logged in.
pub(super) async fn open(
    account: &Account,
    tls: &AccountTls,
    hello: &ClientId,
    connect_timeout: Duration,
) -> Result<AsyncSmtpConnection, ConnectFailure> {
    let ep = &account.smtp;
    let tcp = transport::tcp(ep, connect_timeout)
        .await
        .map_err(ConnectFailure::Temporary)?;
    // Both paths hand lettre a verified TLS stream: AUTH never goes in plaintext.
    let (stream, stage) = match ep.tls {
        TlsMode::Implicit => {
            let stream = transport::tls_handshake(tcp, ep, tls.rustls.clone())
                .await
                .map_err(ConnectFailure::Temporary)?;
            (stream, format!("greeting/EHLO from {ep}"))
        }
        TlsMode::Starttls => {
            // Our own strict plaintext exchange: lettre's would take bytes
            // injected after the 220 as if they came over TLS.
            let mut tcp = tcp;
            starttls::negotiate(&mut tcp, hello)
                .await
                .map_err(|(phase, e)| starttls::failure(ep, phase, &e))?;
            let stream = transport::tls_handshake(tcp, ep, tls.rustls.clone())
                .await
                .map_err(ConnectFailure::Temporary)?;
            (
                stream.after_starttls(),
                format!("EHLO after STARTTLS with {ep}"),
            )
        }
    };
    AsyncSmtpConnection::connect_with_transport(Box::new(stream), hello)
        .await
        .map_err(|e| connect_error(&e, &stage))
}

/// [`open`], then AUTH PLAIN/LOGIN with the account's password.
async fn connect_password(
    account: &Account,
    tls: &AccountTls,
    hello: &ClientId,
    connect_timeout: Duration,
) -> Result<AsyncSmtpConnection, ConnectFailure> {
    let ep = &account.smtp;
    // No connection for an account that cannot log in.
    let Some(password) = account.password.secret() else {
        return Err(ConnectFailure::Config(no_password(account)));
    };
    let mut conn = open(account, tls, hello, connect_timeout).await?;
    let creds = Credentials::new(account.username.clone(), password.expose().to_string());
    if let Err(e) = conn
        .auth(&[Mechanism::Plain, Mechanism::Login], &creds)
        .await
    {
        conn.abort().await;
        let stage = format!("AUTH as {} at {ep}", account.username);
        return Err(match Reply::from_error(&e) {
            Some(reply) => ConnectFailure::AuthRefused {
                reason: format!(
                    "{stage}: {reply}; {}",
                    crate::hints::for_auth_reply(&reply, false, false)
                ),
                reply,
            },
            None => ConnectFailure::Config(describe(&e, &stage)),
        });
    }
    Ok(conn)
}

pub(crate) fn no_password(account: &Account) -> String {
    format!(
        "account {:?} has no usable password: {}",
        account.name,
        account.password.problem().unwrap_or("not configured")
    )
}

fn connect_error(e: &lettre::transport::smtp::Error, stage: &str) -> ConnectFailure {
    match Reply::from_error(e) {
        Some(reply) => ConnectFailure::Answered {
            stage: Stage::Connect,
            reason: format!("{stage}: {reply}"),
            reply,
        },
        None => ConnectFailure::Temporary(describe(e, stage)),
    }
}

/// Removes one trailing CRLF: lettre's codec appends `CRLF.CRLF` itself.
fn strip_final_crlf(message: &[u8]) -> &[u8] {
    message.strip_suffix(b"\r\n").unwrap_or(message)
}

impl Upstream {
    /// Builds the TLS parameters of every account once; the daily caps are
    /// counted on `window` (the one built at start-up, kept across reloads).
    pub fn new(
        config: &Config,
        window: Arc<Window>,
        tokens: Arc<Tokens>,
    ) -> Result<Upstream, String> {
        let mut tls = HashMap::new();
        for a in &config.accounts {
            tls.insert(a.name.clone(), account_tls(a)?);
        }
        Ok(Upstream {
            tls,
            hello: hello_name(&config.smtp.hostname),
            max_recipients: config.smtp.max_recipients.max(1),
            timeout: config.delivery.timeout,
            pool_size: config.delivery.concurrency.max(1),
            idle: Mutex::new(HashMap::new()),
            tokens,
            limits: DailyLimits::new(window, &config.accounts),
        })
    }

    /// The daily send caps and their rolling window.
    pub fn limits(&self) -> &DailyLimits {
        &self.limits
    }

    /// The whole-transaction timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Delivers `message` to `recipients` for `account`, within the delivery
    /// timeout. Every recipient ends up in exactly one list of the report.
    pub async fn deliver(
        &self,
        account: &Account,
        envelope: &Envelope,
        recipients: &[String],
        message: &[u8],
    ) -> DeliveryReport {
        let mut report = DeliveryReport::default();
        let mut connected = false;
        let fut = self.deliver_inner(
            account,
            envelope,
            recipients,
            message,
            &mut report,
            &mut connected,
        );
        if tokio::time::timeout(self.timeout, fut).await.is_err() {
            let reason = format!(
                "timed out after {} talking to {}",
                humantime::format_duration(self.timeout),
                account.smtp
            );
            settle_rest(&mut report, recipients, &reason);
            if !connected {
                report.connect_failure = Some(ConnectFailure::Temporary(reason));
            }
        }
        report
    }

    async fn deliver_inner(
        &self,
        account: &Account,
        envelope: &Envelope,
        recipients: &[String],
        message: &[u8],
        report: &mut DeliveryReport,
        connected: &mut bool,
    ) {
        let (mut conn, token) = match self.checkout(account).await {
            Ok(c) => c,
            Err(f) => {
                for r in recipients {
                    report.set(
                        r,
                        Status::Temporary(Cause::Connection(f.reason().to_string())),
                    );
                }
                report.connect_failure = Some(f);
                return;
            }
        };
        *connected = true;
        let mut params = String::new();
        let eight_bit = envelope.body_8bit || !message.is_ascii();
        if eight_bit && conn.server_info().supports_feature(Extension::EightBitMime) {
            params.push_str(" BODY=8BITMIME");
        }
        let utf8 = envelope.smtputf8 || recipients.iter().any(|r| !r.is_ascii());
        if utf8 && conn.server_info().supports_feature(Extension::SmtpUtfEight) {
            params.push_str(" SMTPUTF8");
        }
        // Lines over 998 octets would be refused by a strict upstream.
        let folded = super::fold::fold_long_lines(message, super::fold::MAX_LINE);
        let body = strip_final_crlf(&folded);
        for chunk in recipients.chunks(self.max_recipients) {
            match transaction(&mut conn, &account.address, &params, chunk, body, report).await {
                Ok(()) => {}
                Err(reason) => {
                    // The connection is broken: close it without a QUIT that could hang.
                    drop(conn);
                    settle_rest(report, recipients, &reason);
                    return;
                }
            }
        }
        self.checkin(&account.name, conn, token);
    }

    /// An authenticated connection: a reused idle one (checked with RSET) or a
    /// new one, with the OAuth2 token it logged in with. An idle connection
    /// that logged in with another token than the one in force now (expired,
    /// refreshed or refused since) is closed, not reused.
    async fn checkout(
        &self,
        account: &Account,
    ) -> Result<(AsyncSmtpConnection, Option<Secret>), ConnectFailure> {
        let manager = manager(&self.tokens, account)?;
        let token = match &manager {
            Some(m) => Some(xoauth2::token(account, m).await?),
            None => None,
        };
        loop {
            let idle = self
                .idle
                .lock()
                .ok()
                .and_then(|mut m| m.get_mut(&account.name).and_then(Vec::pop));
            let Some((mut conn, since, used)) = idle else {
                break;
            };
            if since.elapsed() < IDLE_MAX && used == token {
                let check = tokio::time::timeout(RSET_TIMEOUT, conn.command(Rset)).await;
                if matches!(check, Ok(Ok(_))) {
                    return Ok((conn, used));
                }
            }
            // Stale, silently dropped or logged in with an old token: close
            // without waiting for the server.
            drop(conn);
        }
        let tls = self.tls.get(&account.name).ok_or_else(|| {
            ConnectFailure::Config(format!("account {:?} is not configured", account.name))
        })?;
        match (manager, token) {
            (Some(m), Some(token)) => {
                xoauth2::connect(account, tls, &self.hello, self.timeout, &m, token)
                    .await
                    .map(|(c, t)| (c, Some(t)))
            }
            _ => connect_password(account, tls, &self.hello, self.timeout)
                .await
                .map(|c| (c, None)),
        }
    }

    fn checkin(&self, account: &str, conn: AsyncSmtpConnection, token: Option<Secret>) {
        if conn.has_broken() {
            return;
        }
        if let Ok(mut m) = self.idle.lock() {
            let v = m.entry(account.to_string()).or_default();
            if v.len() < self.pool_size {
                v.push((conn, Instant::now(), token));
            }
        }
    }

    /// Closes every idle connection (at shutdown).
    pub async fn close_idle(&self) {
        let all: Vec<_> = self
            .idle
            .lock()
            .map(|mut m| m.drain().flat_map(|(_, v)| v).collect())
            .unwrap_or_default();
        for (mut c, _, _) in all {
            let _ = tokio::time::timeout(Duration::from_secs(2), c.quit()).await;
        }
    }
}

/// Marks every recipient not yet in the report as temporarily failed with `reason`.
fn settle_rest(report: &mut DeliveryReport, recipients: &[String], reason: &str) {
    for r in recipients {
        report.set(r, Status::Temporary(Cause::Connection(reason.to_string())));
    }
}

/// One MAIL/RCPT.../DATA transaction. `Err` means the connection is unusable
/// (the caller settles the rest); replies are recorded per recipient.
async fn transaction(
    conn: &mut AsyncSmtpConnection,
    from: &str,
    params: &str,
    rcpts: &[String],
    body: &[u8],
    report: &mut DeliveryReport,
) -> Result<(), String> {
    let all = |report: &mut DeliveryReport, stage: Stage, reply: Reply, list: &[String]| {
        for r in list {
            report.set(r, answered(stage, reply.clone()));
        }
    };
    if let Err(e) = conn
        .command(Line(format!("MAIL FROM:<{from}>{params}")))
        .await
    {
        return match classify(&e, "MAIL FROM") {
            Verdict::Answered(reply) => {
                all(report, Stage::Mail, reply, rcpts);
                rset(conn).await
            }
            Verdict::Broken(r) => Err(r),
        };
    }
    let mut accepted = Vec::new();
    for r in rcpts {
        // Sent exactly as received (a quoted local part stays quoted), so it
        // must still be one path on one line.
        if !crate::smtp::path::fits_in_brackets(r) {
            let reply = Reply::new(553, "5.1.3", "invalid recipient address");
            report.set(r, Status::Permanent(Cause::Local(reply)));
            continue;
        }
        match conn.command(Line(format!("RCPT TO:<{r}>"))).await {
            Ok(_) => accepted.push(r.clone()),
            Err(e) => match classify(&e, "RCPT TO") {
                Verdict::Answered(reply) => report.set(r, answered(Stage::Rcpt, reply)),
                Verdict::Broken(reason) => return Err(reason),
            },
        }
    }
    if accepted.is_empty() {
        return rset(conn).await;
    }
    let result = match conn.command(Data).await {
        // In pieces: lettre dot-stuffs each into its own buffer, so this
        // sends without a second whole copy of the message.
        Ok(_) => conn.message_iter(body.chunks(SEND_PIECE)).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(resp) => {
            report.last_reply = Some(Reply::from_response(&resp));
            for r in &accepted {
                report.set(r, Status::Delivered);
            }
            Ok(())
        }
        Err(e) => match classify(&e, "DATA") {
            Verdict::Answered(reply) => {
                all(report, Stage::Data, reply, &accepted);
                rset(conn).await
            }
            Verdict::Broken(r) => Err(r),
        },
    }
}

/// A recipient's status from the server's negative answer to `stage`.
fn answered(stage: Stage, reply: Reply) -> Status {
    let permanent = reply.is_permanent();
    let cause = Cause::Upstream { stage, reply };
    if permanent {
        Status::Permanent(cause)
    } else {
        Status::Temporary(cause)
    }
}

async fn rset(conn: &mut AsyncSmtpConnection) -> Result<(), String> {
    conn.command(Rset)
        .await
        .map(|_| ())
        .map_err(|e| describe(&e, "RSET"))
}
