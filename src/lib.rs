//! mailbridge: plaintext SMTP and IMAP on loopback for legacy devices,
//! authenticated TLS upstream to Gmail (or any provider of the same shape).
//!
//! Component map:
//! - [`config`]: `relay.toml` types, presets, validation.
//! - [`listener`]: the shared accept loop (cap, backoff, span per connection).
//! - [`disconnect`]: why the daemon closes a connection, logged once per close.
//! - [`hints`]: what to tell the admin about a failure (SMTP, IMAP, POP3 alike).
//! - [`smtp`]: inbound SMTP sessions (smtp-proto parsing, our state machine).
//! - [`spool`]: the durable on-disk queue (fsync before 250).
//! - [`delivery`]: the worker that sends spooled mail upstream, and the upstream SMTP client.
//! - [`imap`]: the IMAP proxy (pre-login parser, login swap).
//! - [`pop3`]: the POP3 proxy (pre-login state machine, login swap).
//! - [`pump`]: the post-login byte pump both proxies use.
//! - [`slots`]: per-account upstream connection slots.
//! - [`auth`]: local device logins (argon2) and brute-force slowdown.
//! - [`tls`]: rustls configs built once; the local acceptor per listener family.
//! - [`legacy_tls`]: the opt-in OpenSSL profile for old devices (`legacy-tls` feature).
//! - [`stream`]: a client connection, plaintext or local TLS (STARTTLS upgrade).
//! - [`init`]: `mailbridge init` (local CA, certificate, starter relay.toml).
//! - [`packaging`]: `mailbridge generate` (man page, completions, the Debian package's relay.toml and unit).
//! - [`secret`]: a string type that never prints itself.
//! - [`text`]: client and provider text made safe to print (escapes controls).
//! - [`metrics`]: Prometheus metrics, `/metrics` and `/healthz`.
//! - [`status`]: the status page (`/` on the metrics listener): recent events, queue, limits.
//! - [`reload`]: building the [`Context`]; live reload on SIGHUP.
#![forbid(unsafe_code)]

pub mod auth;
pub mod check;
pub mod cli;
pub mod config;
pub mod delivery;
pub mod disconnect;
pub mod hints;
pub mod imap;
pub mod init;
pub mod legacy_tls;
pub mod listener;
pub mod metrics;
pub mod oauth2;
pub mod packaging;
pub mod pop3;
pub mod prelogin;
pub mod pump;
pub mod reload;
pub mod secret;
pub mod slots;
pub mod smtp;
pub mod spool;
pub mod status;
pub mod stream;
pub mod text;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use crate::config::Config;
use crate::listener::{accept_loop, ListenerSpec};

/// What the delivery worker, the metrics listener and the status page use,
/// plus each listener's own context ([`smtp::SmtpContext`],
/// [`imap::ImapContext`], [`pop3::Pop3Context`]: each gets only what it
/// uses). A config reload builds a new one (see [`reload`]); the spool, the
/// wake-up, the metrics, the status page and the counters inside
/// `imap`/`pop3`/`auth` are shared between them.
pub struct Context {
    pub config: Arc<Config>,
    pub spool: Arc<spool::Spool>,
    /// The spool's hand-off to the delivery worker: every enqueue announces
    /// itself on it; `notify_one` asks the worker to look again.
    pub wake_delivery: Arc<spool::Handoff>,
    /// Counters and health state for `/metrics` and `/healthz`.
    pub metrics: Arc<metrics::Metrics>,
    /// Recent events and session counts for the status page (survives reloads).
    pub status: Arc<status::Status>,
    /// OAuth2 token managers, shared by the worker, IMAP and POP3 (survive reloads).
    pub tokens: Arc<oauth2::Tokens>,
    /// Upstream SMTP clients (worker and direct mode; the same as `smtp.upstream`).
    pub upstream: Arc<delivery::Upstream>,
    /// The SMTP listeners' context (local TLS built at start and on each
    /// reload, never per connection).
    pub smtp: Arc<smtp::SmtpContext>,
    /// The IMAP listeners' context (per-account connection counts).
    pub imap: Arc<imap::ImapContext>,
    /// The POP3 listeners' context (per-account session counts).
    pub pop3: Arc<pop3::Pop3Context>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("spool: {0}")]
    Spool(#[from] spool::SpoolError),
    #[error("cannot listen on {addr} ({proto}): {source}")]
    Bind {
        proto: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Upstream(String),
    #[error("local TLS: {0}")]
    LocalTls(#[from] tls::TlsError),
}

/// How long sessions get to finish after shutdown begins (on top of the
/// delivery timeout) before the binary drops them. Nothing acknowledged is
/// lost: an accepted message is in the spool before its 250.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// A running daemon: its bound addresses and the handle to stop it.
pub struct Daemon {
    pub smtp_addrs: Vec<SocketAddr>,
    pub imap_addrs: Vec<SocketAddr>,
    /// Implicit-TLS listeners (`smtp.smtps_listen`, `imap.imaps_listen`).
    pub smtps_addrs: Vec<SocketAddr>,
    pub imaps_addrs: Vec<SocketAddr>,
    /// POP3 listeners (`pop3.listen`) and implicit TLS (`pop3.pop3s_listen`).
    pub pop3_addrs: Vec<SocketAddr>,
    pub pop3s_addrs: Vec<SocketAddr>,
    /// The metrics listener, when `[metrics] listen` is set.
    pub metrics_addr: Option<SocketAddr>,
    /// The context as started. Its spool, metrics and counters are shared with
    /// every reloaded context; for the current config use [`Daemon::current`].
    pub context: Arc<Context>,
    /// The context new connections and the worker use (swapped by reload).
    live: Arc<ArcSwap<Context>>,
    /// What every context shares (built once here, handed again on reload).
    shared: reload::Shared,
    shutdown: CancellationToken,
    sessions: TaskTracker,
    worker: TaskTracker,
}

impl Daemon {
    /// Opens the spool, binds every listener (port 0 picks a free port) and
    /// starts serving and delivering.
    pub async fn start(config: Config) -> Result<Daemon, StartError> {
        tls::install_crypto_provider();
        let config = Arc::new(config);
        reload::warn_config(&config);
        let shared = reload::Shared::open(&config)?;
        let ctx = Arc::new(reload::build_context(config.clone(), shared.clone(), None)?);
        let live = Arc::new(ArcSwap::new(ctx.clone()));
        let shutdown = CancellationToken::new();
        let sessions = TaskTracker::new();
        let worker = TaskTracker::new();

        let listeners = Listeners {
            ctx: &ctx,
            live: &live,
            shutdown: &shutdown,
            sessions: &sessions,
        };
        let smtp_addrs = listeners.start(Proto::Smtp)?;
        let imap_addrs = listeners.start(Proto::Imap)?;
        let smtps_addrs = listeners.start(Proto::Smtps)?;
        let imaps_addrs = listeners.start(Proto::Imaps)?;
        let pop3_addrs = listeners.start(Proto::Pop3)?;
        let pop3s_addrs = listeners.start(Proto::Pop3s)?;
        let metrics_addr = match config.metrics.listen {
            Some(addr) => Some(start_metrics(addr, &ctx, &live, &shutdown, &sessions).await?),
            None => None,
        };
        worker.spawn(delivery::run(live.clone(), shutdown.clone()));
        ctx.metrics.set_listening(true);
        Ok(Daemon {
            smtp_addrs,
            imap_addrs,
            smtps_addrs,
            imaps_addrs,
            pop3_addrs,
            pop3s_addrs,
            metrics_addr,
            context: ctx,
            live,
            shared,
            shutdown,
            sessions,
            worker,
        })
    }

    /// A token that, once cancelled, stops the daemon.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stops accepting, tells sessions to finish (421 / BYE), lets the worker
    /// finish the message in hand, and waits for all of it.
    pub async fn shutdown(self) {
        self.context.metrics.set_listening(false);
        self.shutdown.cancel();
        self.sessions.close();
        self.worker.close();
        self.sessions.wait().await;
        self.worker.wait().await;
    }
}

/// The client-facing listeners: plaintext (with optional STARTTLS) and implicit TLS.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Proto {
    Smtp,
    Imap,
    Smtps,
    Imaps,
    Pop3,
    Pop3s,
}

impl Proto {
    /// The local TLS acceptor for this listener's family (its `tls_profile`).
    fn acceptor(self, ctx: &Context) -> Option<tls::LocalAcceptor> {
        match self {
            Proto::Smtp | Proto::Smtps => ctx.smtp.tls.clone(),
            Proto::Imap | Proto::Imaps => ctx.imap.tls.clone(),
            Proto::Pop3 | Proto::Pop3s => ctx.pop3.tls.clone(),
        }
    }
}

/// What is needed to start the listeners.
struct Listeners<'a> {
    ctx: &'a Arc<Context>,
    live: &'a Arc<ArcSwap<Context>>,
    shutdown: &'a CancellationToken,
    sessions: &'a TaskTracker,
}

impl Listeners<'_> {
    /// Binds and serves every address of `proto`; a TLS handshake runs in
    /// each connection's task. Returns the bound addresses.
    fn start(&self, proto: Proto) -> Result<Vec<SocketAddr>, StartError> {
        let config = &self.ctx.config;
        let (name, addrs, max_connections, busy_reply): (_, _, _, &'static [u8]) = match proto {
            Proto::Smtp => (
                "smtp",
                &config.smtp.listen,
                config.smtp.max_connections,
                b"421 4.7.0 Too many connections, try again later\r\n",
            ),
            Proto::Imap => (
                "imap",
                &config.imap.listen,
                config.imap.max_connections,
                b"* BYE [UNAVAILABLE] Too many connections, try again later\r\n",
            ),
            // Not TLS yet: a client that meets the cap gets a closed socket.
            Proto::Smtps => (
                "smtps",
                &config.smtp.smtps_listen,
                config.smtp.max_connections,
                b"",
            ),
            Proto::Imaps => (
                "imaps",
                &config.imap.imaps_listen,
                config.imap.max_connections,
                b"",
            ),
            Proto::Pop3 => (
                "pop3",
                &config.pop3.listen,
                config.pop3.max_connections,
                b"-ERR [SYS/TEMP] Too many connections, try again later\r\n",
            ),
            Proto::Pop3s => (
                "pop3s",
                &config.pop3.pop3s_listen,
                config.pop3.max_connections,
                b"",
            ),
        };
        let implicit_tls = matches!(proto, Proto::Smtps | Proto::Imaps | Proto::Pop3s);
        let spec = ListenerSpec {
            name,
            max_connections,
            busy_reply,
        };
        let mut bound = Vec::new();
        if addrs.is_empty() {
            return Ok(bound);
        }
        if implicit_tls && proto.acceptor(self.ctx).is_none() {
            // Config validation makes this unreachable; refuse rather than panic.
            return Err(StartError::Upstream(format!(
                "{name} listeners need tls_cert and tls_key"
            )));
        }
        for addr in addrs {
            let bind_err = |source| StartError::Bind {
                proto: name,
                addr: *addr,
                source,
            };
            let l = listener::bind(*addr).map_err(bind_err)?;
            let local = l.local_addr().map_err(bind_err)?;
            if implicit_tls {
                info!(
                    "{} (implicit TLS) listening on {local}",
                    name.to_uppercase()
                );
            } else {
                info!("{} listening on {local}", name.to_uppercase());
            }
            bound.push(local);
            let counter = self.ctx.status.listener(name, local);
            let (live, sd) = (self.live.clone(), self.shutdown.clone());
            self.sessions.spawn(accept_loop(
                l,
                spec,
                self.shutdown.clone(),
                self.sessions.clone(),
                move |s, p| {
                    // The current context: a reload may have changed users or the certificate.
                    let (ctx, sd) = (live.load_full(), sd.clone());
                    let session = counter.enter();
                    async move {
                        let _session = session;
                        let s = if implicit_tls {
                            let Some(acceptor) = proto.acceptor(&ctx) else {
                                return;
                            };
                            let Some(s) = stream::ClientStream::accept_tls(s, &acceptor, &sd).await
                            else {
                                ctx.metrics.tls_error(name);
                                return;
                            };
                            s
                        } else {
                            stream::ClientStream::Plain(s)
                        };
                        // Each protocol's session in its own allocation: this
                        // future is one type for every listener, and inline it
                        // would be as large as the largest session (SMTP's), so
                        // every idle IMAP connection would pay for an SMTP one.
                        match proto {
                            Proto::Smtp | Proto::Smtps => {
                                Box::pin(smtp::handle_connection(s, p, ctx.smtp.clone(), sd)).await
                            }
                            Proto::Imap | Proto::Imaps => {
                                Box::pin(imap::handle_connection(s, p, ctx.imap.clone(), sd)).await
                            }
                            Proto::Pop3 | Proto::Pop3s => {
                                Box::pin(pop3::handle_connection(s, p, ctx.pop3.clone(), sd)).await
                            }
                        }
                    }
                },
            ));
        }
        Ok(bound)
    }
}

/// Binds the metrics listener and serves `/metrics` and `/healthz` on it,
/// with the spool probe `/healthz` reports (first run before serving).
async fn start_metrics(
    addr: SocketAddr,
    ctx: &Arc<Context>,
    live: &Arc<ArcSwap<Context>>,
    shutdown: &CancellationToken,
    sessions: &TaskTracker,
) -> Result<SocketAddr, StartError> {
    let bind_err = |source| StartError::Bind {
        proto: "metrics",
        addr,
        source,
    };
    let l = listener::bind(addr).map_err(bind_err)?;
    let local = l.local_addr().map_err(bind_err)?;
    metrics::http::warn_if_exposed(local, &ctx.config.metrics.allowed_networks);
    info!("metrics listening on http://{local}/metrics (health: /healthz, status page: /)");
    let (m, spool) = (ctx.metrics.clone(), ctx.spool.clone());
    let _ = tokio::task::spawn_blocking(move || m.probe_spool(&spool)).await;
    sessions.spawn(metrics::probe::run_every_interval(
        ctx.metrics.clone(),
        ctx.spool.clone(),
        shutdown.clone(),
    ));
    sessions.spawn(metrics::http::serve(
        l,
        live.clone(),
        shutdown.clone(),
        sessions.clone(),
    ));
    Ok(local)
}

/// Runs the daemon until `stop` completes, then shuts down cleanly.
pub async fn run(
    config: Config,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), StartError> {
    let daemon = Daemon::start(config).await?;
    stop.await;
    info!("shutting down");
    daemon.shutdown().await;
    info!("stopped");
    Ok(())
}
