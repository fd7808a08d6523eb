//! IMAP proxy: legacy clients log in here in plaintext with a local user;
//! we log in upstream over verified TLS with the account's real credentials
//! and then pass bytes through untouched.
//!
//! - [`framing`]: bounded line/literal reading; [`parser`]: the nom grammar;
//!   [`session`]: the pre-login state machine (no I/O); [`responses`]: every text.
//! - [`login`]: one login attempt; [`upstream`]: connect/TLS/LOGIN upstream;
//!   [`pump`]: the post-login byte pump.
//! - Local TLS: implicit (imaps listener) or STARTTLS before login; bytes a
//!   client pipelines after STARTTLS are discarded.

pub mod framing;
pub mod login;
pub mod parser;
pub mod responses;
pub mod sent_copy;
pub mod session;
pub mod upstream;

/// The byte pump is shared with POP3; kept reachable under its old path.
pub use crate::pump;
pub use crate::slots::AccountSlot;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, Instrument};

use crate::config::{ip_allowed, Config};
use crate::disconnect::{log_close, CloseReason};
use crate::stream::{say_and_close, ClientStream};
use crate::text::Printable;
use framing::{FrameError, LineBuffer};
use login::{LoggedIn, Outcome};
use session::{Session, Step};

/// Per-account upstream TLS configs (built once) and connection counters.
pub struct ImapState {
    /// Upstream connections held per account.
    accounts: HashMap<String, Arc<AtomicUsize>>,
    max_per_account: usize,
}

impl ImapState {
    pub fn new(config: &Config) -> ImapState {
        let accounts = config
            .accounts
            .iter()
            .map(|a| (a.name.clone(), Arc::new(AtomicUsize::new(0))))
            .collect();
        ImapState {
            accounts,
            max_per_account: config.imap.max_connections_per_account,
        }
    }

    /// Like [`ImapState::new`] for a reloaded config, keeping the connection
    /// counters of accounts that still exist (their sessions stay counted).
    pub fn reloaded(config: &Config, previous: &ImapState) -> ImapState {
        let mut state = ImapState::new(config);
        for (name, count) in state.accounts.iter_mut() {
            if let Some(old) = previous.accounts.get(name) {
                *count = old.clone();
            }
        }
        state
    }

    /// Takes one of the account's connection slots, if one is free.
    pub fn acquire(&self, account: &str) -> Option<AccountSlot> {
        AccountSlot::try_take(self.accounts.get(account)?, self.max_per_account)
    }

    /// Upstream connections currently held for `account`.
    pub fn connections(&self, account: &str) -> usize {
        self.accounts
            .get(account)
            .map_or(0, |a| a.load(Ordering::Acquire))
    }
}

/// What an IMAP listener uses; rebuilt on each reload (see [`crate::reload`]).
pub struct ImapContext {
    pub config: Arc<Config>,
    pub auth: Arc<crate::auth::LocalAuth>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Per-account upstream connection counts (survive reloads).
    pub state: ImapState,
    /// Each account's upstream TLS config.
    pub upstream_tls: Arc<crate::tls::UpstreamTls>,
    /// OAuth2 token managers (`auth = "oauth2"` accounts log in with XOAUTH2).
    pub tokens: Arc<crate::oauth2::Tokens>,
    /// Local TLS (STARTTLS and imaps) by `imap.tls_profile`; `None` without `tls_cert`/`tls_key`.
    pub tls: Option<crate::tls::LocalAcceptor>,
}

/// Serves one client connection from greeting to close.
pub async fn handle_connection(
    mut stream: ClientStream,
    peer: SocketAddr,
    ctx: Arc<ImapContext>,
    shutdown: CancellationToken,
) {
    if !ip_allowed(&ctx.config.imap.allowed_networks, peer.ip()) {
        log_close(CloseReason::AccessDenied);
        say_and_close(&mut stream, responses::NOT_ALLOWED).await;
        return;
    }
    let _active = ctx.metrics.imap_session();
    let mut buf = LineBuffer::default();
    let deadline = tokio::time::Instant::now() + ctx.config.imap.login_timeout;
    let mut session = match &ctx.tls {
        Some(_) => Session::with_starttls(),
        None => Session::new(),
    };
    if stream.is_tls() {
        session.tls_started();
    }
    let pre = async {
        stream
            .write_all(&responses::greeting(session.offers_starttls()))
            .await
            .ok()?;
        pre_login(&mut stream, &mut buf, &mut session, &ctx, peer.ip()).await
    };
    let ended = crate::prelogin::run(pre, deadline, &shutdown).await;
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
    let span = info_span!("imap", user = %Printable(&user), account = %logged.account);
    proxy(stream, *logged, client_rest, &ctx, &shutdown)
        .instrument(span)
        .await;
}

/// The pre-login loop. `Some` once logged in upstream; `None` to close.
async fn pre_login(
    stream: &mut ClientStream,
    buf: &mut LineBuffer,
    session: &mut Session,
    ctx: &Arc<ImapContext>,
    ip: IpAddr,
) -> Option<(String, Box<LoggedIn>)> {
    loop {
        let input = if session.expects_sasl_response() {
            buf.read_line(stream, framing::MAX_LINE).await
        } else {
            framing::read_command(buf, stream).await
        };
        let input = match input {
            Ok(i) => i,
            Err(FrameError::Closed) => return None,
            Err(FrameError::Io(e)) => {
                debug!(error = %e, "client read failed");
                return None;
            }
            Err(FrameError::TooLong { tag }) => {
                log_close(CloseReason::LineTooLong);
                let _ = stream
                    .write_all(&responses::line_too_long(tag.as_deref().unwrap_or("*")))
                    .await;
                return None;
            }
            Err(FrameError::LiteralTooLarge { tag }) => {
                log_close(CloseReason::LiteralTooLarge);
                let _ = stream
                    .write_all(&responses::literal_too_large(tag.as_deref().unwrap_or("*")))
                    .await;
                return None;
            }
        };
        let step = if session.expects_sasl_response() {
            session.on_sasl_response(&input)
        } else {
            session.on_command(&input)
        };
        match step {
            Step::Reply(b) | Step::Continue(b) => stream.write_all(&b).await.ok()?,
            Step::Close(b) => {
                debug!("client logged out before login");
                let _ = stream.write_all(&b).await;
                return None;
            }
            Step::StartTls(b) => {
                let acceptor = ctx.tls.as_ref()?;
                // Sent before the handshake, so in plaintext: never act on it.
                let early = buf.take_rest().len();
                stream
                    .upgrade_after(&b, early, acceptor, &ctx.metrics, "imap")
                    .await
                    .ok()?;
                session.tls_started();
                debug!("STARTTLS handshake done");
            }
            Step::Login(req) => {
                let user = req.user.clone();
                match login::attempt(req, ctx, ip).await {
                    Outcome::LoggedIn(l) => return Some((user, l)),
                    Outcome::Refused(b) => stream.write_all(&b).await.ok()?,
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
    ctx: &ImapContext,
    shutdown: &CancellationToken,
) {
    let LoggedIn {
        mut upstream,
        reply,
        slot,
        account,
        passthrough,
    } = logged;
    info!(passthrough, "logged in upstream");
    // sent_copy = "skip": read-ahead client bytes go through the filter too.
    let skip_sent = ctx
        .config
        .account(&account)
        .is_some_and(|a| a.sent_copy == crate::config::SentCopy::Skip);
    let (client_rest, filter_rest) = if skip_sent {
        (Vec::new(), client_rest)
    } else {
        (client_rest, Vec::new())
    };
    let upstream_rest = upstream.buffer.take_rest();
    let mut stream = upstream.stream;
    if !pump::hand_over(
        &mut client,
        &mut stream,
        &reply,
        &upstream_rest,
        &client_rest,
    )
    .await
    {
        debug!("connection lost right after login");
        upstream::close(&mut stream).await;
        return;
    }
    drop((reply, upstream_rest, client_rest));
    let idle = ctx.config.imap.idle_timeout;
    // Freed by the pump when the upstream session ends, or below once the
    // upstream is closed: never held by a client that merely stays connected.
    let mut slot = Some(slot);
    let stats = if skip_sent {
        let mut filtered = sent_copy::SentCopyFilter::new(&mut client);
        filtered.preload(&filter_rest);
        pump::run(&mut filtered, &mut stream, idle, shutdown, &mut slot).await
    } else {
        pump::run(&mut client, &mut stream, idle, shutdown, &mut slot).await
    };
    if slot.is_none() {
        debug!("upstream session over; account connection slot freed");
    }
    pump::say_goodbye(
        &mut client,
        &stats.end,
        responses::IDLE_TIMEOUT,
        responses::SHUTTING_DOWN,
    )
    .await;
    upstream::close(&mut stream).await;
    drop(slot);
    info!(
        bytes_from_client = stats.client_to_upstream,
        bytes_to_client = stats.upstream_to_client,
        end = %stats.end,
        "IMAP session ended"
    );
}
