//! mailbridge: plaintext SMTP and IMAP on loopback for legacy devices,
//! authenticated TLS upstream to Gmail (or any provider of the same shape).
//!
//! Component map:
//! - [`config`]: `relay.toml` types, presets, validation.
//! - [`listener`]: the shared accept loop (cap, backoff, span per connection).
//! - [`smtp`]: inbound SMTP sessions (smtp-proto parsing, our state machine).
//! - [`spool`]: the durable on-disk queue (fsync before 250).
//! - [`delivery`]: the worker that sends spooled mail upstream, and the upstream SMTP client.
//! - [`imap`]: the IMAP proxy (pre-login parser, login swap, byte pump).
//! - [`auth`]: local device logins (argon2) and brute-force slowdown.
//! - [`tls`]: rustls configs built once.
//! - [`secret`]: a string type that never prints itself.
#![forbid(unsafe_code)]

pub mod auth;
pub mod check;
pub mod cli;
pub mod config;
pub mod delivery;
pub mod imap;
pub mod listener;
pub mod secret;
pub mod smtp;
pub mod spool;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::Config;
use crate::listener::{accept_loop, ListenerSpec};

/// Everything a session or the worker needs, shared behind one `Arc`.
pub struct Context {
    pub config: Arc<Config>,
    pub auth: auth::LocalAuth,
    pub spool: spool::Spool,
    /// Signalled after each enqueue so the worker looks at the queue at once.
    pub wake_delivery: Notify,
    /// Upstream SMTP clients (worker and direct mode).
    pub upstream: delivery::Upstream,
    /// IMAP proxy state (per-account connection counts, upstream TLS configs).
    pub imap: imap::ImapState,
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
}

/// A running daemon: its bound addresses and the handle to stop it.
pub struct Daemon {
    pub smtp_addrs: Vec<SocketAddr>,
    pub imap_addrs: Vec<SocketAddr>,
    pub context: Arc<Context>,
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
        if let Some(w) = config.permission_warning() {
            warn!("{w}");
        }
        for a in &config.accounts {
            if let Some(problem) = &a.password_problem {
                warn!(account = %a.name, "NO USABLE PASSWORD: {problem}; mail for this account is held in the spool until it is fixed");
            }
        }
        let spool = spool::Spool::open(&config.smtp.spool_dir)?;
        let ctx = Arc::new(Context {
            auth: auth::LocalAuth::new(&config.users),
            spool,
            wake_delivery: Notify::new(),
            upstream: delivery::Upstream::new(&config)
                .map_err(|e| StartError::Upstream(e.to_string()))?,
            imap: imap::ImapState::new(&config).map_err(|e| StartError::Upstream(e.to_string()))?,
            config: config.clone(),
        });
        let shutdown = CancellationToken::new();
        let sessions = TaskTracker::new();
        let worker = TaskTracker::new();

        let mut smtp_addrs = Vec::new();
        for addr in &config.smtp.listen {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind {
                    proto: "smtp",
                    addr: *addr,
                    source,
                })?;
            let local = l.local_addr().map_err(|source| StartError::Bind {
                proto: "smtp",
                addr: *addr,
                source,
            })?;
            info!("SMTP listening on {local}");
            smtp_addrs.push(local);
            let ctx2 = ctx.clone();
            let sd = shutdown.clone();
            let spec = ListenerSpec {
                name: "smtp",
                max_connections: config.smtp.max_connections,
                busy_reply: b"421 4.7.0 Too many connections, try again later\r\n",
            };
            sessions.spawn(accept_loop(
                l,
                spec,
                shutdown.clone(),
                sessions.clone(),
                move |s, p| smtp::handle_connection(s, p, ctx2.clone(), sd.clone()),
            ));
        }
        let mut imap_addrs = Vec::new();
        for addr in &config.imap.listen {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind {
                    proto: "imap",
                    addr: *addr,
                    source,
                })?;
            let local = l.local_addr().map_err(|source| StartError::Bind {
                proto: "imap",
                addr: *addr,
                source,
            })?;
            info!("IMAP listening on {local}");
            imap_addrs.push(local);
            let ctx2 = ctx.clone();
            let sd = shutdown.clone();
            let spec = ListenerSpec {
                name: "imap",
                max_connections: config.imap.max_connections,
                busy_reply: b"* BYE [UNAVAILABLE] Too many connections, try again later\r\n",
            };
            sessions.spawn(accept_loop(
                l,
                spec,
                shutdown.clone(),
                sessions.clone(),
                move |s, p| imap::handle_connection(s, p, ctx2.clone(), sd.clone()),
            ));
        }
        worker.spawn(delivery::run(ctx.clone(), shutdown.clone()));
        Ok(Daemon {
            smtp_addrs,
            imap_addrs,
            context: ctx,
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
        self.shutdown.cancel();
        self.sessions.close();
        self.worker.close();
        self.sessions.wait().await;
        self.worker.wait().await;
    }
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
