//! mailbridge: plaintext SMTP and IMAP on loopback for legacy devices,
//! authenticated TLS upstream to Gmail (or any provider of the same shape).
//!
//! Component map:
//! - [`config`]: `relay.toml` types, presets, validation.
//! - [`listener`]: the shared accept loop (cap, backoff, span per connection).
//! - [`disconnect`]: why the daemon closes a connection, logged once per close.
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
pub mod imap;
pub mod init;
pub mod legacy_tls;
pub mod listener;
pub mod metrics;
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
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use crate::config::Config;
use crate::listener::{accept_loop, ListenerSpec};

/// Everything a session or the worker needs, shared behind one `Arc`.
/// A config reload builds a new one (see [`reload`]); the spool, the wake-up,
/// the metrics and the counters inside `imap`/`auth` are shared between them.
pub struct Context {
    pub config: Arc<Config>,
    pub auth: auth::LocalAuth,
    pub spool: Arc<spool::Spool>,
    /// Signalled after each enqueue so the worker looks at the queue at once.
    pub wake_delivery: Arc<Notify>,
    /// Counters and health state for `/metrics` and `/healthz`.
    pub metrics: Arc<metrics::Metrics>,
    /// Recent events and session counts for the status page (survives reloads).
    pub status: Arc<status::Status>,
    /// Upstream SMTP clients (worker and direct mode).
    pub upstream: delivery::Upstream,
    /// IMAP proxy state (per-account connection counts, upstream TLS configs).
    pub imap: imap::ImapState,
    /// Local TLS of the SMTP listeners (STARTTLS and smtps) by
    /// `smtp.tls_profile`, built at start and on each reload (never per
    /// connection); `None` when `tls_cert`/`tls_key` are not configured.
    pub smtp_tls: Option<tls::LocalAcceptor>,
    /// The same for the IMAP listeners (STARTTLS and imaps), by `imap.tls_profile`.
    pub imap_tls: Option<tls::LocalAcceptor>,
    /// The same for the POP3 listeners (STLS and pop3s): always the modern profile.
    pub pop3_tls: Option<tls::LocalAcceptor>,
    /// POP3 proxy state (per-account session counts).
    pub pop3: pop3::Pop3State,
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
        let shared = reload::Shared {
            spool: Arc::new(
                spool::Spool::open(&config.smtp.spool_dir)?
                    .with_data_budget(config.smtp.data_buffer_budget)
                    .with_direct_loads(config.delivery.concurrency),
            ),
            wake_delivery: Arc::new(Notify::new()),
            metrics: Arc::new(metrics::Metrics::new()),
            status: Arc::new(status::Status::new()),
        };
        let ctx = Arc::new(reload::build_context(config.clone(), shared, None)?);
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
            Proto::Smtp | Proto::Smtps => ctx.smtp_tls.clone(),
            Proto::Imap | Proto::Imaps => ctx.imap_tls.clone(),
            Proto::Pop3 | Proto::Pop3s => ctx.pop3_tls.clone(),
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
                        match proto {
                            Proto::Smtp | Proto::Smtps => {
                                smtp::handle_connection(s, p, ctx, sd).await
                            }
                            Proto::Imap | Proto::Imaps => {
                                imap::handle_connection(s, p, ctx, sd).await
                            }
                            Proto::Pop3 | Proto::Pop3s => {
                                pop3::handle_connection(s, p, ctx, sd).await
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
