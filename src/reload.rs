//! Building the [`Context`] from a [`Config`], at start and on reload
//! (SIGHUP). A reload swaps in a new `Context` for new connections and the
//! worker's next pass; sessions in progress keep the one they started with.
//! Each listener gets its own context (SMTP, IMAP, POP3) with what it uses.
//! What must outlive a reload is shared ([`Shared`], built once): the spool,
//! the worker's hand-off, the daily-limit window, the metrics, the status
//! page's events, the IMAP and POP3 per-account connection counters and the
//! login-failure tracker. Listen addresses and the spool directory need a restart.

use std::sync::Arc;

use tracing::{error, info, warn};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::{auth, delivery, imap, pop3, smtp, spool, tls, Context, Daemon, StartError};

/// The parts of a [`Context`] that survive reloads: built once at start-up,
/// kept by the [`Daemon`] and handed to every context it builds.
#[derive(Clone)]
pub(crate) struct Shared {
    pub spool: Arc<spool::Spool>,
    /// The spool's hand-off to the worker (the same as `spool.handoff()`).
    pub wake_delivery: Arc<spool::Handoff>,
    pub metrics: Arc<Metrics>,
    pub status: Arc<crate::status::Status>,
    /// The daily-limit window (counts and reservations in progress).
    pub limits: Arc<delivery::limits::Window>,
    /// OAuth2 token managers, one per account (a refresh is shared by all).
    pub tokens: Arc<crate::oauth2::Tokens>,
}

impl Shared {
    /// Opens what lives as long as the daemon (the spool directory's files).
    pub(crate) fn open(config: &Config) -> Result<Shared, StartError> {
        let spool = Arc::new(
            spool::Spool::open(&config.smtp.spool_dir)?
                .with_data_budget(config.smtp.data_buffer_budget)
                .with_memory_budget(config.delivery.message_buffer_budget)
                .with_spares(spool::SPARE_FILES),
        );
        Ok(Shared {
            wake_delivery: spool.handoff(),
            limits: delivery::limits::Window::load(&config.smtp.spool_dir),
            tokens: Arc::new(crate::oauth2::Tokens::new(&config.smtp.spool_dir)),
            spool,
            metrics: Arc::new(Metrics::new()),
            status: Arc::new(crate::status::Status::new()),
        })
    }
}

/// Builds a context for `config`; with `previous`, keeps its counters and trackers.
pub(crate) fn build_context(
    config: Arc<Config>,
    shared: Shared,
    previous: Option<&Context>,
) -> Result<Context, StartError> {
    let local_tls = tls::LocalAcceptors::new(&config)?;
    for (section, acceptor) in [("smtp", &local_tls.smtp), ("imap", &local_tls.imap)] {
        if let Some(tls::LocalAcceptor::Legacy(a)) = acceptor {
            warn!(
                "{}",
                crate::legacy_tls::startup_warning(section, a.has_rsa_key())
            );
        }
    }
    let upstream_tls = Arc::new(tls::UpstreamTls::new(&config).map_err(StartError::Upstream)?);
    let imap_state = match previous {
        Some(p) => imap::ImapState::reloaded(&config, &p.imap.state),
        None => imap::ImapState::new(&config),
    };
    let pop3_state = match previous {
        Some(p) => pop3::Pop3State::reloaded(&config, &p.pop3.state),
        None => pop3::Pop3State::new(&config),
    };
    let auth = Arc::new(match previous {
        Some(p) => p.smtp.auth.reloaded(&config.users),
        None => auth::LocalAuth::new(&config.users),
    });
    let upstream = Arc::new(
        delivery::Upstream::new(&config, shared.limits.clone(), shared.tokens.clone())
            .map_err(|e| StartError::Upstream(e.to_string()))?,
    );
    let smtp = smtp::SmtpContext {
        config: config.clone(),
        auth: auth.clone(),
        spool: shared.spool.clone(),
        wake_delivery: shared.wake_delivery.clone(),
        metrics: shared.metrics.clone(),
        status: shared.status.clone(),
        upstream: upstream.clone(),
        tls: local_tls.smtp,
    };
    let imap = imap::ImapContext {
        config: config.clone(),
        auth: auth.clone(),
        metrics: shared.metrics.clone(),
        state: imap_state,
        upstream_tls: upstream_tls.clone(),
        tokens: shared.tokens.clone(),
        tls: local_tls.imap,
    };
    let pop3 = pop3::Pop3Context {
        config: config.clone(),
        auth,
        metrics: shared.metrics.clone(),
        state: pop3_state,
        upstream_tls,
        tokens: shared.tokens.clone(),
        tls: local_tls.pop3,
    };
    Ok(Context {
        spool: shared.spool,
        wake_delivery: shared.wake_delivery,
        upstream,
        smtp: Arc::new(smtp),
        imap: Arc::new(imap),
        pop3: Arc::new(pop3),
        metrics: shared.metrics,
        status: shared.status,
        tokens: shared.tokens,
        config,
    })
}

/// Logs what an admin should fix in a config that is otherwise valid.
pub(crate) fn warn_config(config: &Config) {
    if let Some(w) = config.permission_warning() {
        warn!("{w}");
    }
    let store = crate::oauth2::store::TokenStore::new(&config.smtp.spool_dir);
    for a in &config.accounts {
        if a.oauth2.is_none() && a.provider.refuses_passwords() {
            warn!(account = %a.name, provider = %a.provider, "this account logs in with a password, but Microsoft refuses basic authentication for IMAP, POP and SMTP (535 5.7.139); set auth = \"oauth2\" with an [accounts.oauth2] table (README)");
        }
        if let Some(problem) = a.password.problem() {
            warn!(account = %a.name, "NO USABLE PASSWORD: {problem}; mail for this account is held in the spool until it is fixed");
        }
        if a.oauth2.is_some() && store.stamp(&a.name).is_none() {
            warn!(account = %a.name, "NO OAUTH2 TOKEN stored for this account yet: run `mailbridge auth {}`; its mail is held in the spool until then", a.name);
        }
    }
}

/// Settings a reload cannot change (they belong to bound sockets or open files).
fn needs_restart(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if old.smtp.listen != new.smtp.listen {
        changed.push("smtp.listen");
    }
    if old.smtp.smtps_listen != new.smtp.smtps_listen {
        changed.push("smtp.smtps_listen");
    }
    if old.imap.listen != new.imap.listen {
        changed.push("imap.listen");
    }
    if old.imap.imaps_listen != new.imap.imaps_listen {
        changed.push("imap.imaps_listen");
    }
    if old.pop3.listen != new.pop3.listen {
        changed.push("pop3.listen");
    }
    if old.pop3.pop3s_listen != new.pop3.pop3s_listen {
        changed.push("pop3.pop3s_listen");
    }
    if old.pop3.max_connections != new.pop3.max_connections {
        changed.push("pop3.max_connections");
    }
    if old.metrics.listen != new.metrics.listen {
        changed.push("metrics.listen");
    }
    if old.smtp.spool_dir != new.smtp.spool_dir {
        changed.push("smtp.spool_dir");
    }
    if old.smtp.max_connections != new.smtp.max_connections {
        changed.push("smtp.max_connections");
    }
    if old.smtp.data_buffer_budget != new.smtp.data_buffer_budget {
        changed.push("smtp.data_buffer_budget");
    }
    if old.imap.max_connections != new.imap.max_connections {
        changed.push("imap.max_connections");
    }
    if old.delivery.concurrency != new.delivery.concurrency {
        changed.push("delivery.concurrency");
    }
    if old.delivery.message_buffer_budget != new.delivery.message_buffer_budget {
        changed.push("delivery.message_buffer_budget");
    }
    changed
}

impl Daemon {
    /// The context new connections get now (after any reload).
    pub fn current(&self) -> Arc<Context> {
        self.live.load_full()
    }

    /// Applies `config` to new connections and the delivery worker; sessions
    /// in progress are left alone. On error (e.g. a certificate that does not
    /// load) nothing changes and the error is logged and returned.
    pub fn reload(&self, config: Config) -> Result<(), String> {
        let old = self.live.load_full();
        let metrics = old.metrics.clone();
        let config = Arc::new(config);
        let ctx = match build_context(config.clone(), self.shared.clone(), Some(&old)) {
            Ok(c) => c,
            Err(e) => {
                let msg = format!(
                    "configuration reload rejected, keeping the running configuration: {e}"
                );
                error!("{msg}");
                metrics.reload(false);
                return Err(msg);
            }
        };
        let fixed = needs_restart(&old.config, &config);
        if !fixed.is_empty() {
            warn!(
                "configuration reload: {} changed; this needs a restart (the old values stay in force)",
                fixed.join(", ")
            );
        }
        warn_config(&config);
        self.live.store(Arc::new(ctx));
        metrics.reload(true);
        // The worker picks the new accounts and limits up on its next pass.
        old.wake_delivery.notify_one();
        info!(
            accounts = config.accounts.len(),
            users = config.users.len(),
            "configuration reloaded from {}",
            config.path.display()
        );
        Ok(())
    }
}
