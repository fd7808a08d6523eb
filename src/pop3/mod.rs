//! POP3 proxy: legacy clients log in here in plaintext with a local user;
//! we log in upstream over verified TLS with the account's real credentials
//! (USER/PASS with the app password) and then pass bytes through untouched.
//!
//! - [`session`]: the pre-login state machine (no I/O); [`responses`]: every text.
//! - [`login`]: one login attempt; [`upstream`]: connect/TLS/USER/PASS upstream.
//! - Lines are read with the IMAP [`LineBuffer`]; after login the shared
//!   [`crate::pump`] moves bytes; sessions hold a [`crate::slots`] slot.
//! - Local TLS: implicit (pop3s listener) or STLS before login; bytes a
//!   client pipelines after STLS are discarded.

pub mod login;
pub mod responses;
pub mod session;
pub mod upstream;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, Instrument};

use crate::config::{ip_allowed, Config};
use crate::disconnect::{log_close, CloseReason};
use crate::imap::framing::{FrameError, LineBuffer};
use crate::prelogin;
use crate::pump;
use crate::slots::AccountSlots;
use crate::stream::{say_and_close, ClientStream};
use crate::text::Printable;
use login::{LoggedIn, Outcome};
use session::{Session, Step};

/// POP3 proxy state: the per-account session counters (upstream TLS configs
/// are the IMAP proxy's, built once per account).
pub struct Pop3State {
    pub slots: AccountSlots,
}

/// What a POP3 listener uses; rebuilt on each reload (see [`crate::reload`]).
pub struct Pop3Context {
    pub config: Arc<Config>,
    pub auth: Arc<crate::auth::LocalAuth>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Per-account session counts (survive reloads).
    pub state: Pop3State,
    /// Each account's upstream TLS config (shared with IMAP).
    pub upstream_tls: Arc<crate::tls::UpstreamTls>,
    /// OAuth2 token managers (`auth = "oauth2"` accounts log in with XOAUTH2).
    pub tokens: Arc<crate::oauth2::Tokens>,
    /// Local TLS (STLS and pop3s): always the modern profile.
    pub tls: Option<crate::tls::LocalAcceptor>,
}

impl Pop3State {
    pub fn new(config: &Config) -> Pop3State {
        Pop3State {
            slots: AccountSlots::new(
                config.accounts.iter().map(|a| a.name.as_str()),
                config.pop3.max_connections_per_account,
            ),
        }
    }

    /// Keeps the counters of accounts that still exist across a reload.
    pub fn reloaded(config: &Config, previous: &Pop3State) -> Pop3State {
        Pop3State {
            slots: AccountSlots::reloaded(
                config.accounts.iter().map(|a| a.name.as_str()),
                config.pop3.max_connections_per_account,
                &previous.slots,
            ),
        }
    }

    /// Upstream POP3 sessions currently held for `account`.
    pub fn connections(&self, account: &str) -> usize {
        self.slots.held(account)
    }
}

/// Serves one client connection from greeting to close.
pub async fn handle_connection(
    mut stream: ClientStream,
    peer: SocketAddr,
    ctx: Arc<Pop3Context>,
    shutdown: CancellationToken,
) {
    if !ip_allowed(&ctx.config.pop3.allowed_networks, peer.ip()) {
        log_close(CloseReason::AccessDenied);
        say_and_close(&mut stream, responses::NOT_ALLOWED).await;
        return;
    }
    let _active = ctx.metrics.pop3_session();
    let mut buf = LineBuffer::default();
    let deadline = tokio::time::Instant::now() + ctx.config.pop3.login_timeout;
    let mut session = match &ctx.tls {
        Some(_) => Session::with_stls(),
        None => Session::new(),
    };
    if stream.is_tls() {
        session.tls_started();
    }
    let pre = async {
        stream.write_all(responses::GREETING).await.ok()?;
        pre_login(&mut stream, &mut buf, &mut session, &ctx, peer.ip()).await
    };
    let ended = prelogin::run(pre, deadline, &shutdown).await;
    let Some((user, logged)) = ended
        .or_close(
            &mut stream,
            responses::LOGIN_TIMEOUT,
            responses::SHUTTING_DOWN,
        )
        .await
    else {
        return;
    };
    let client_rest = buf.take_rest();
    drop(buf);
    let span = info_span!("pop3", user = %Printable(&user), account = %logged.account);
    proxy(stream, *logged, client_rest, &ctx, &shutdown)
        .instrument(span)
        .await;
}

/// The pre-login loop. `Some` once logged in upstream; `None` to close.
async fn pre_login(
    stream: &mut ClientStream,
    buf: &mut LineBuffer,
    session: &mut Session,
    ctx: &Arc<Pop3Context>,
    ip: IpAddr,
) -> Option<(String, Box<LoggedIn>)> {
    loop {
        let line = match buf.read_line(stream, session::MAX_LINE).await {
            Ok(l) => l,
            Err(FrameError::TooLong { .. } | FrameError::LiteralTooLarge { .. }) => {
                log_close(CloseReason::LineTooLong);
                let _ = stream.write_all(responses::LINE_TOO_LONG).await;
                return None;
            }
            Err(FrameError::Closed) => return None,
            Err(FrameError::Io(e)) => {
                debug!(error = %e, "client read failed");
                return None;
            }
        };
        match session.on_line(&line) {
            Step::Reply(b) | Step::Continue(b) => stream.write_all(&b).await.ok()?,
            Step::Close(b) => {
                let _ = stream.write_all(&b).await;
                return None;
            }
            Step::StartTls(b) => {
                let acceptor = ctx.tls.as_ref()?;
                // Sent before the handshake, so in plaintext: never act on it.
                let early = buf.take_rest().len();
                stream
                    .upgrade_after(&b, early, acceptor, &ctx.metrics, "pop3")
                    .await
                    .ok()?;
                session.tls_started();
                debug!("STLS handshake done");
            }
            Step::Login(req) => {
                let user = req.user.clone();
                match login::attempt(req, ctx, ip).await {
                    Outcome::LoggedIn(l) => return Some((user, l)),
                    Outcome::Refused(b) => {
                        session.login_failed();
                        stream.write_all(b).await.ok()?
                    }
                }
            }
        }
    }
}

/// After login: answer the client, pass on anything read ahead, pump bytes.
async fn proxy(
    mut client: ClientStream,
    logged: LoggedIn,
    client_rest: Vec<u8>,
    ctx: &Pop3Context,
    shutdown: &CancellationToken,
) {
    let LoggedIn {
        upstream,
        slot,
        account: _,
        passthrough,
    } = logged;
    info!(passthrough, "logged in upstream");
    ctx.metrics.pop3_login();
    let mut up = upstream.buffer;
    let upstream_rest = up.take_rest();
    let mut stream = upstream.stream;
    let handed_over = pump::hand_over(
        &mut client,
        &mut stream,
        responses::LOGGED_IN,
        &upstream_rest,
        &client_rest,
    )
    .await;
    if !handed_over {
        debug!("connection lost right after login");
        upstream::close(&mut stream).await;
        return;
    }
    drop((upstream_rest, client_rest));
    // Freed by the pump when the upstream session ends (QUIT answered and
    // closed), or below: never held by a client that merely stays connected.
    let mut slot = Some(slot);
    let stats = pump::run(
        &mut client,
        &mut stream,
        ctx.config.pop3.idle_timeout,
        shutdown,
        &mut slot,
    )
    .await;
    pump::say_goodbye(
        &mut client,
        &stats.end,
        responses::IDLE_TIMEOUT,
        responses::SHUTTING_DOWN,
    )
    .await;
    upstream::close(&mut stream).await;
    upstream::close(&mut client).await;
    drop(slot);
    info!(
        bytes_from_client = stats.client_to_upstream,
        bytes_to_client = stats.upstream_to_client,
        end = %stats.end,
        "POP3 session ended"
    );
}
