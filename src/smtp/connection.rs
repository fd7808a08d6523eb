//! The tokio loop of one inbound SMTP connection: access check, banner,
//! a capped line reader (pipelining: every complete command in the buffer is
//! answered, replies are flushed before blocking on a read), the DATA
//! reader, idle timeout, shutdown, AUTH checks with brute-force slowdown, and
//! handing accepted messages to the spool (or upstream in direct mode), and
//! the STARTTLS upgrade (bytes pipelined after STARTTLS are discarded).
//!
//! Command lines are never logged: AUTH lines carry credentials.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::data::{DataOutcome, DataReader};
use super::intake::{Intake, Trace};
use super::replies;
use super::sender;
use super::session::{Session, SessionConfig, Step, Transaction};
use super::SmtpContext;
use crate::auth::Denied;
use crate::config::{ip_allowed, SmtpMode};
use crate::disconnect::{log_close, CloseReason};
use crate::secret::Secret;
use crate::spool::{Envelope, QueueId};
use crate::stream::ClientStream;

/// Longest command line, CRLF included.
pub const MAX_LINE: usize = 4096;
/// How long a message already in DATA may take to finish once shutdown starts.
const SHUTDOWN_DATA_GRACE: Duration = Duration::from_secs(30);
/// Slowest average DATA rate accepted once the first idle timeout has passed
/// (bytes/s): a client trickling a body just under the idle timeout per read
/// would otherwise hold its session for ever.
const MIN_DATA_RATE: f64 = 512.0;
/// Bytes read per call; also the idle buffer size.
const READ_CHUNK: usize = 4096;
/// A DATA read that waits this long first gives the connection's share of
/// the DATA budget back (see [`Intake::park`]); a client sending at full
/// speed never waits that long.
const PARK_AFTER: Duration = Duration::from_millis(50);

/// Why a read did not return bytes.
enum Stop {
    Eof,
    Idle,
    /// DATA arrived slower than [`MIN_DATA_RATE`] after the grace period.
    TooSlow,
    Shutdown,
    Io(std::io::Error),
}

struct Conn {
    stream: ClientStream,
    peer: SocketAddr,
    rbuf: BytesMut,
    wbuf: Vec<u8>,
    idle: Duration,
    /// Set when shutdown arrives during DATA: the message must end by then.
    data_deadline: Option<Instant>,
}

/// Serves one client until QUIT, an error, idle timeout or shutdown.
pub async fn serve(
    stream: ClientStream,
    peer: SocketAddr,
    ctx: Arc<SmtpContext>,
    shutdown: CancellationToken,
) {
    let host = ctx.config.smtp.hostname.clone();
    let mut conn = Conn {
        stream,
        peer,
        rbuf: BytesMut::new(),
        wbuf: Vec::new(),
        idle: ctx.config.smtp.idle_timeout,
        data_deadline: None,
    };
    if !ip_allowed(&ctx.config.smtp.allowed_networks, peer.ip()) {
        log_close(CloseReason::AccessDenied);
        conn.close_with(replies::ACCESS_DENIED).await;
        return;
    }
    debug!("connected");
    conn.wbuf
        .extend_from_slice(replies::banner(&host).as_bytes());
    let mut cfg = SessionConfig::from_config(&ctx.config);
    cfg.starttls_offered = ctx.tls.is_some();
    let mut session = Session::new(cfg);
    if conn.stream.is_tls() {
        session.tls_started();
    }
    match run(&mut conn, &mut session, &ctx, &shutdown).await {
        Ok(()) => debug!("closed"),
        Err(Stop::Eof) => debug!("client closed the connection"),
        Err(Stop::TooSlow) => {
            log_close(CloseReason::TooSlow);
            conn.close_with(&replies::too_slow(&host)).await;
        }
        Err(Stop::Idle) => {
            log_close(CloseReason::IdleTimeout);
            conn.close_with(&replies::idle_timeout(&host)).await;
        }
        Err(Stop::Shutdown) => {
            log_close(CloseReason::Shutdown);
            conn.close_with(&replies::shutting_down(&host)).await;
        }
        Err(Stop::Io(e)) => debug!(error = %e, "connection error"),
    }
}

/// The command loop; `Ok` when the session ended with a reply already sent.
async fn run(
    conn: &mut Conn,
    session: &mut Session,
    ctx: &SmtpContext,
    shutdown: &CancellationToken,
) -> Result<(), Stop> {
    loop {
        let Some(line) = conn.next_line(shutdown).await? else {
            // An over-long line was discarded.
            let step = session.line_too_long();
            log_if_gave_up(session, &step);
            if conn.act_simple(step).await? {
                return Ok(());
            }
            continue;
        };
        let step = session.handle_line(&line);
        drop(line);
        let step = match step {
            Step::Authenticate { user, password } => {
                let step = authenticate(conn, session, ctx, shutdown, user, password).await?;
                // Too many errors is logged below; any other close here is a block.
                if matches!(step, Step::Close(_)) && !session.gave_up() {
                    log_close(CloseReason::AuthBlocked);
                }
                step
            }
            Step::Data(reply) => {
                conn.wbuf.extend_from_slice(reply.as_bytes());
                let reply = receive_message(conn, session, ctx, shutdown).await?;
                session.reply(reply)
            }
            Step::StartTls(reply) => match &ctx.tls {
                Some(acceptor) => {
                    let started = conn.start_tls(&reply, acceptor, shutdown).await;
                    if matches!(started, Err(Stop::Io(_))) {
                        ctx.metrics.tls_error("smtp");
                    }
                    started?;
                    session.tls_started();
                    continue;
                }
                None => session.reply(replies::TLS_NOT_AVAILABLE.into()),
            },
            other => other,
        };
        log_if_gave_up(session, &step);
        if conn.act_simple(step).await? {
            return Ok(());
        }
    }
}

/// Logs the close when the session gave up on the client for too many errors
/// (the other `Close` a command yields is QUIT, the client's own decision).
fn log_if_gave_up(session: &Session, step: &Step) {
    if matches!(step, Step::Close(_)) && session.gave_up() {
        log_close(CloseReason::TooManyErrors);
    }
}

/// Checks credentials through the login throttle.
async fn authenticate(
    conn: &mut Conn,
    session: &mut Session,
    ctx: &SmtpContext,
    shutdown: &CancellationToken,
    user: String,
    password: Secret,
) -> Result<Step, Stop> {
    let host = &ctx.config.smtp.hostname;
    let login = tokio::select! {
        r = ctx.auth.login(conn.peer.ip(), &user, &password) => r,
        _ = shutdown.cancelled() => return Err(Stop::Shutdown),
    };
    let denied = match login {
        Ok(account) => {
            info!(account = %account, "client authenticated");
            return Ok(session.auth_succeeded(user, account));
        }
        Err(d) => d,
    };
    if denied.was_verified() {
        ctx.metrics.auth_failure("smtp");
    }
    Ok(match denied {
        Denied::Failed => {
            debug!("authentication failed");
            session.auth_failed()
        }
        Denied::Blocked { .. } => Step::Close(replies::auth_blocked(host)),
        Denied::Busy => {
            // Not logged above debug: a flood would make one line per attempt.
            debug!("login refused for now: too many logins in progress from this address");
            session.reply(replies::AUTH_BUSY.into())
        }
    })
}

/// Reads the message after 354, streaming it to the spool, and answers it
/// (the final DATA reply). On an early return (client gone, timeout,
/// shutdown) the intake is dropped and its temp file removed.
async fn receive_message(
    conn: &mut Conn,
    session: &mut Session,
    ctx: &SmtpContext,
    shutdown: &CancellationToken,
) -> Result<String, Stop> {
    let reader = DataReader::new(ctx.config.smtp.max_message_size, session.end_of_data());
    // The Received id is the queue id, so a copy seen at the recipient
    // matches the log lines and `mailbridge queue`.
    let queue_id = QueueId::generate();
    let txn = session.take_transaction();
    let incoming = txn.as_ref().map(|txn| {
        let envelope = envelope(txn, session, conn.peer, false);
        ctx.spool.receive(queue_id.clone(), &envelope)
    });
    let trace = Trace {
        helo: session.helo().to_string(),
        peer: conn.peer.ip(),
        hostname: ctx.config.smtp.hostname.clone(),
        protocol: session.protocol(txn.as_ref().is_some_and(|t| t.smtputf8)),
        id: queue_id.to_string(),
    };
    let on_head = txn
        .as_ref()
        .and_then(|t| ctx.config.account(&t.account))
        .map(|a| {
            let account = a.clone();
            Box::new(move |start: &[u8]| warn_if_from_rewritten(start, &account))
                as super::intake::OnHead
        });
    let budget = ctx.spool.data_budget().clone();
    let mut intake = Intake::new(reader, incoming, trace, on_head, budget);
    let started = Instant::now();
    let mut received = conn.rbuf.len();
    let outcome = loop {
        let (used, outcome) = intake.take(&conn.rbuf).await;
        conn.rbuf.advance(used);
        if let Some(o) = outcome {
            break o;
        }
        let before = conn.rbuf.len();
        conn.read_data(shutdown, &mut intake).await?;
        received += conn.rbuf.len().saturating_sub(before);
        let slow_for = started.elapsed().saturating_sub(conn.idle);
        if (received as f64) < MIN_DATA_RATE * slow_for.as_secs_f64() {
            return Err(Stop::TooSlow);
        }
    };
    conn.shrink();
    let Some(txn) = txn else {
        intake.discard().await;
        return Ok(replies::NEED_MAIL.into());
    };
    match outcome {
        DataOutcome::TooBig => {
            intake.discard().await;
            info!(account = %txn.account, "message refused: over max_message_size");
            return Ok(replies::MESSAGE_TOO_BIG.into());
        }
        DataOutcome::NulByte => {
            intake.discard().await;
            info!(account = %txn.account, "message refused: contains NUL bytes");
            return Ok(replies::NUL_IN_MESSAGE.into());
        }
        DataOutcome::Complete => {}
    }
    let envelope = envelope(&txn, session, conn.peer, intake.eight_bit());
    Ok(hand_over(ctx, queue_id, &envelope, intake).await)
}

/// Logs, once per sender address, that the provider will likely rewrite `From:`.
fn warn_if_from_rewritten(message: &[u8], account: &crate::config::Account) {
    let Some(warning) = sender::rewrite_warning(message, account) else {
        return;
    };
    if sender::from_address(message).is_some_and(|f| sender::first_warning_for(&f)) {
        warn!(account = %account.name, "{warning}; add it to send_as once it is a verified alias");
    }
}

fn envelope(txn: &Transaction, session: &Session, peer: SocketAddr, eight_bit: bool) -> Envelope {
    Envelope {
        account: txn.account.clone(),
        mail_from: txn.mail_from.clone(),
        recipients: txn.recipients.clone(),
        client: peer.ip().to_string(),
        helo: session.helo().to_string(),
        local_user: session.local_user().map(str::to_string),
        smtputf8: txn.smtputf8,
        body_8bit: txn.body_8bit || eight_bit,
    }
}

/// Spools the message (or sends it upstream in direct mode); returns the reply.
async fn hand_over(ctx: &SmtpContext, id: QueueId, envelope: &Envelope, intake: Intake) -> String {
    if ctx.config.smtp.mode == SmtpMode::Direct {
        let Some(account) = ctx.config.account(&envelope.account) else {
            intake.discard().await;
            return replies::NO_DIRECT_UPSTREAM.into();
        };
        // In memory only within the budget the worker's messages share.
        let message = match intake.into_message(ctx.spool.memory()).await {
            Ok(m) => m,
            Err(e) => {
                warn!(error = %e, "spool write failed; message not accepted");
                return replies::SPOOL_ERROR.into();
            }
        };
        let size = message.len();
        let r = ctx
            .upstream
            .send_direct(account, envelope, Arc::new(message), &ctx.spool)
            .await;
        debug!(
            trace_id = %id,
            size,
            recipients = envelope.recipients.len(),
            account = %envelope.account,
            code = r.code,
            "direct mode reply"
        );
        return replies::relayed(r.code, r.enhanced.as_deref(), &r.text);
    }
    match intake.commit(&ctx.spool, envelope).await {
        Ok(size) => {
            info!(
                queue_id = %id,
                size,
                recipients = envelope.recipients.len(),
                account = %envelope.account,
                "message accepted"
            );
            ctx.metrics.message_accepted(&envelope.account);
            ctx.status.accepted(&id, envelope);
            replies::queued(&id.to_string())
        }
        Err(e) => {
            warn!(error = %e, "spool write failed; message not accepted");
            replies::SPOOL_ERROR.into()
        }
    }
}

impl Conn {
    /// Queues a reply; on `Close` flushes and closes. Returns true when closed.
    async fn act_simple(&mut self, step: Step) -> Result<bool, Stop> {
        match step {
            Step::Reply(r) | Step::Data(r) => {
                self.wbuf.extend_from_slice(r.as_bytes());
                Ok(false)
            }
            Step::Close(r) => {
                self.close_with(&r).await;
                Ok(true)
            }
            Step::Authenticate { .. } | Step::StartTls(_) => Ok(false),
        }
    }

    /// Sends the STARTTLS go-ahead and upgrades the connection. Whatever the
    /// client sent after STARTTLS before the handshake arrived in plaintext
    /// (command injection, CVE-2011-0411): it is discarded, never answered.
    async fn start_tls(
        &mut self,
        reply: &str,
        acceptor: &crate::tls::LocalAcceptor,
        shutdown: &CancellationToken,
    ) -> Result<(), Stop> {
        self.wbuf.extend_from_slice(reply.as_bytes());
        self.flush().await?;
        if !self.rbuf.is_empty() {
            info!(
                bytes = self.rbuf.len(),
                "discarding bytes sent after STARTTLS before the TLS handshake"
            );
        }
        self.rbuf = BytesMut::new();
        tokio::select! {
            r = self.stream.start_tls(acceptor) => r.map_err(Stop::Io)?,
            // The half-done handshake is dropped with its socket: nothing to say.
            _ = shutdown.cancelled() => return Err(Stop::Shutdown),
        }
        debug!("STARTTLS handshake done");
        Ok(())
    }

    /// The next complete command line, or `None` if one was too long (its
    /// bytes are discarded up to its LF without being buffered). A line must
    /// be complete within the idle timeout of its first byte (slow clients).
    async fn next_line(&mut self, shutdown: &CancellationToken) -> Result<Option<BytesMut>, Stop> {
        let mut discarding = false;
        let mut deadline: Option<Instant> = None;
        loop {
            if let Some(pos) = self.rbuf.iter().position(|b| *b == b'\n') {
                if discarding || pos + 1 > MAX_LINE {
                    self.rbuf.advance(pos + 1);
                    return Ok(None);
                }
                return Ok(Some(self.rbuf.split_to(pos + 1)));
            }
            if discarding || self.rbuf.len() > MAX_LINE {
                discarding = true;
                self.rbuf.clear();
            }
            if deadline.is_none() && (discarding || !self.rbuf.is_empty()) {
                deadline = Some(Instant::now() + self.idle);
            }
            self.read_command(shutdown, deadline).await?;
        }
    }

    /// Flushes pending replies, then waits for more command bytes (until
    /// the idle timeout or `deadline`, whichever is first).
    async fn read_command(
        &mut self,
        shutdown: &CancellationToken,
        deadline: Option<Instant>,
    ) -> Result<(), Stop> {
        self.flush().await?;
        if shutdown.is_cancelled() {
            return Err(Stop::Shutdown);
        }
        self.rbuf.reserve(READ_CHUNK);
        let idle_end = Instant::now() + self.idle;
        let end = deadline.map_or(idle_end, |d| d.min(idle_end));
        let n = tokio::select! {
            _ = shutdown.cancelled() => return Err(Stop::Shutdown),
            r = tokio::time::timeout_at(end, self.stream.read_buf(&mut self.rbuf)) => match r {
                Err(_) => return Err(Stop::Idle),
                Ok(Err(e)) => return Err(Stop::Io(e)),
                Ok(Ok(n)) => n,
            },
        };
        if n == 0 {
            return Err(Stop::Eof);
        }
        Ok(())
    }

    /// Waits for more message bytes. Shutdown does not cut a message short
    /// at once: it gets [`SHUTDOWN_DATA_GRACE`] to finish. A wait longer than
    /// [`PARK_AFTER`] parks `intake` (its budget goes back) and goes on.
    async fn read_data(
        &mut self,
        shutdown: &CancellationToken,
        intake: &mut Intake,
    ) -> Result<(), Stop> {
        self.flush().await?;
        self.rbuf.reserve(READ_CHUNK);
        let idle_end = Instant::now() + self.idle;
        let park_at = Instant::now() + PARK_AFTER;
        loop {
            let end = self.data_deadline.map_or(idle_end, |d| d.min(idle_end));
            let r = tokio::select! {
                _ = shutdown.cancelled(), if self.data_deadline.is_none() => {
                    self.data_deadline = Some(Instant::now() + SHUTDOWN_DATA_GRACE);
                    continue;
                }
                _ = tokio::time::sleep_until(park_at), if intake.can_park() => {
                    intake.park().await;
                    continue;
                }
                r = tokio::time::timeout_at(end, self.stream.read_buf(&mut self.rbuf)) => r,
            };
            return match r {
                Err(_) if self.data_deadline.is_some_and(|d| d <= Instant::now()) => {
                    Err(Stop::Shutdown)
                }
                Err(_) => Err(Stop::Idle),
                Ok(Err(e)) => Err(Stop::Io(e)),
                Ok(Ok(0)) => Err(Stop::Eof),
                Ok(Ok(_)) => Ok(()),
            };
        }
    }

    /// Frees a buffer that grew while reading a large message.
    fn shrink(&mut self) {
        if self.rbuf.capacity() > 4 * READ_CHUNK && self.rbuf.len() <= READ_CHUNK {
            let mut fresh = BytesMut::with_capacity(READ_CHUNK);
            fresh.extend_from_slice(&self.rbuf);
            self.rbuf = fresh;
        }
    }

    async fn flush(&mut self) -> Result<(), Stop> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let r = tokio::time::timeout(self.idle, self.stream.write_all(&self.wbuf)).await;
        self.wbuf.clear();
        if self.wbuf.capacity() > 4 * READ_CHUNK {
            self.wbuf = Vec::new();
        }
        match r {
            Err(_) => Err(Stop::Idle),
            Ok(Err(e)) => Err(Stop::Io(e)),
            Ok(Ok(())) => Ok(()),
        }
    }

    /// Sends pending replies plus `last`, then closes (bounded in time).
    async fn close_with(&mut self, last: &str) {
        self.wbuf.extend_from_slice(last.as_bytes());
        let _ = self.flush().await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.stream.shutdown()).await;
    }
}
