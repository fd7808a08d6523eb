//! The configuration as written (serde types) and its validation into [`Config`].

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::exposure;
use super::fields::*;
use super::*;
use crate::secret::Secret;

// ---------------------------------------------------------------------------
// Raw (as written) types.

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    default_account: Option<String>,
    #[serde(default)]
    smtp: RawSmtp,
    #[serde(default)]
    imap: RawImap,
    #[serde(default)]
    pop3: RawPop3,
    #[serde(default)]
    delivery: RawDelivery,
    #[serde(default)]
    accounts: Vec<RawAccount>,
    #[serde(default)]
    users: Vec<RawUser>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    #[serde(default)]
    metrics: RawMetrics,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Option<String>,
    allowed_networks: Option<Vec<String>>,
    allowed_hosts: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSmtp {
    listen: Option<Vec<String>>,
    smtps_listen: Option<Vec<String>>,
    spool_dir: Option<PathBuf>,
    mode: Option<SmtpMode>,
    max_message_size: Option<u64>,
    data_buffer_budget: Option<usize>,
    max_recipients: Option<usize>,
    max_client_recipients: Option<usize>,
    allowed_networks: Option<Vec<String>>,
    require_auth: Option<bool>,
    hostname: Option<String>,
    #[serde(default, deserialize_with = "opt_duration")]
    idle_timeout: Option<Duration>,
    max_connections: Option<usize>,
    tls_profile: Option<TlsProfile>,
    allow_lf_only_clients: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawImap {
    listen: Option<Vec<String>>,
    imaps_listen: Option<Vec<String>>,
    passthrough: Option<bool>,
    max_connections_per_account: Option<usize>,
    #[serde(default, deserialize_with = "opt_duration")]
    idle_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "opt_duration")]
    login_timeout: Option<Duration>,
    allowed_networks: Option<Vec<String>>,
    max_connections: Option<usize>,
    tls_profile: Option<TlsProfile>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPop3 {
    pub(super) listen: Option<Vec<String>>,
    pub(super) pop3s_listen: Option<Vec<String>>,
    pub(super) passthrough: Option<bool>,
    pub(super) max_connections_per_account: Option<usize>,
    #[serde(default, deserialize_with = "opt_duration")]
    pub(super) idle_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "opt_duration")]
    pub(super) login_timeout: Option<Duration>,
    pub(super) allowed_networks: Option<Vec<String>>,
    pub(super) max_connections: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDelivery {
    #[serde(default, deserialize_with = "opt_duration")]
    retry_initial: Option<Duration>,
    #[serde(default, deserialize_with = "opt_duration")]
    retry_max: Option<Duration>,
    #[serde(default, deserialize_with = "opt_duration")]
    expire_after: Option<Duration>,
    #[serde(default, deserialize_with = "opt_duration")]
    timeout: Option<Duration>,
    concurrency: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAccount {
    pub(super) name: String,
    #[serde(default = "default_provider")]
    pub(super) provider: String,
    pub(super) username: String,
    pub(super) address: Option<String>,
    pub(super) password: Option<String>,
    pub(super) password_env: Option<String>,
    pub(super) password_file: Option<PathBuf>,
    pub(super) ca_file: Option<PathBuf>,
    pub(super) smtp: Option<RawEndpoint>,
    pub(super) imap: Option<RawEndpoint>,
    pub(super) pop3: Option<RawEndpoint>,
    #[serde(default)]
    pub(super) pop3_recent_mode: bool,
    pub(super) daily_limit: Option<u32>,
    pub(super) notify: Option<String>,
    #[serde(default)]
    pub(super) sent_copy: SentCopy,
    #[serde(default)]
    pub(super) send_as: Vec<String>,
}

fn default_provider() -> String {
    "gmail".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEndpoint {
    pub(super) host: Option<String>,
    pub(super) port: Option<u16>,
    pub(super) tls: Option<TlsMode>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    name: String,
    password_hash: String,
    account: String,
}

fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s: Option<String> = Option::deserialize(d)?;
    match s {
        None => Ok(None),
        Some(s) => humantime::parse_duration(s.trim()).map(Some).map_err(|e| {
            serde::de::Error::custom(format!(
                "bad duration {s:?} ({e}); use e.g. \"90s\", \"5m\", \"1h\", \"5d\""
            ))
        }),
    }
}

// ---------------------------------------------------------------------------
// Validation.

impl RawConfig {
    pub(super) fn validate(self, path: &Path) -> Result<Config, ConfigError> {
        let err = |key: &str, msg: String| ConfigError::new(path, key, msg);
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let resolve = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };

        // --- accounts
        let mut accounts = Vec::new();
        let mut names = HashSet::new();
        let has_inline_secrets = self.accounts.iter().any(|a| a.password.is_some());
        for (i, a) in self.accounts.into_iter().enumerate() {
            let key = |k: &str| format!("accounts[{i}].{k}");
            if a.name.trim().is_empty() {
                return Err(err(&key("name"), "must not be empty".into()));
            }
            if !names.insert(a.name.clone()) {
                return Err(err(
                    &key("name"),
                    format!("duplicate account name {:?}", a.name),
                ));
            }
            let (smtp, imap, pop3) = resolve_endpoints(path, i, &a)?;
            if a.pop3_recent_mode && !matches!(a.provider.as_str(), "gmail" | "custom") {
                return Err(err(
                    &key("pop3_recent_mode"),
                    format!(
                        "recent mode is a Gmail POP3 feature; provider {:?} has no such thing",
                        a.provider
                    ),
                ));
            }
            let sources = [
                a.password.is_some(),
                a.password_env.is_some(),
                a.password_file.is_some(),
            ]
            .iter()
            .filter(|x| **x)
            .count();
            if sources > 1 {
                return Err(err(
                    &key("password"),
                    "give only one of password, password_env, password_file".into(),
                ));
            }
            let (password, password_problem) = if let Some(p) = a.password {
                normalise_password(&p, "the `password` key")
            } else if let Some(var) = &a.password_env {
                match std::env::var(var) {
                    Ok(p) => normalise_password(&p, &format!("environment variable {var}")),
                    Err(_) => (
                        None,
                        Some(format!(
                            "environment variable {var} (password_env) is not set"
                        )),
                    ),
                }
            } else if let Some(file) = a.password_file {
                let file = resolve(file);
                match std::fs::read_to_string(&file) {
                    Ok(p) => normalise_password(&p, &format!("file {}", file.display())),
                    Err(e) => (
                        None,
                        Some(format!("cannot read password_file {}: {e}", file.display())),
                    ),
                }
            } else {
                (
                    None,
                    Some("no password, password_env or password_file given".into()),
                )
            };
            if a.username.trim().is_empty() {
                return Err(err(&key("username"), "must not be empty".into()));
            }
            let address = a.address.unwrap_or_else(|| a.username.clone());
            // It goes into MAIL FROM:<...> verbatim: no room for CR/LF or brackets.
            let unsafe_char = |c: char| c.is_control() || c.is_whitespace() || c == '<' || c == '>';
            if !address.contains('@') || address.contains(unsafe_char) {
                return Err(err(
                    &key("address"),
                    format!("{address:?} is not a mail address; set address = \"you@example.com\" (the envelope sender)"),
                ));
            }
            let daily_limit = match a.daily_limit {
                Some(0) => None,
                Some(n) => Some(n),
                None if a.provider == "gmail" => Some(GMAIL_DAILY_LIMIT),
                None => None,
            };
            if let Some(n) = &a.notify {
                if !n.contains('@') {
                    return Err(err(&key("notify"), format!("{n:?} is not a mail address")));
                }
            }
            if let Some(bad) = a.send_as.iter().find(|s| !s.contains('@')) {
                return Err(err(
                    &key("send_as"),
                    format!("{bad:?} is not a mail address"),
                ));
            }
            accounts.push(Account {
                name: a.name,
                provider: a.provider,
                username: a.username,
                address,
                password,
                password_problem,
                smtp,
                imap,
                pop3,
                pop3_recent_mode: a.pop3_recent_mode,
                ca_file: a.ca_file.map(resolve),
                daily_limit,
                notify: a.notify,
                sent_copy: a.sent_copy,
                send_as: a.send_as,
            });
        }
        if accounts.is_empty() {
            return Err(err(
                "accounts",
                "at least one [[accounts]] entry is needed".into(),
            ));
        }

        // --- default_account
        let default_account = match self.default_account {
            Some(n) if !names.contains(&n) => {
                return Err(err(
                    "default_account",
                    format!("no [[accounts]] entry is named {n:?}"),
                ))
            }
            Some(n) => Some(n),
            None if accounts.len() == 1 => Some(accounts[0].name.clone()),
            None => None,
        };

        // --- users
        let mut users = Vec::new();
        let mut user_names = HashSet::new();
        for (i, u) in self.users.into_iter().enumerate() {
            let key = |k: &str| format!("users[{i}].{k}");
            if u.name.is_empty() {
                return Err(err(&key("name"), "must not be empty".into()));
            }
            if !user_names.insert(u.name.clone()) {
                return Err(err(
                    &key("name"),
                    format!("duplicate user name {:?}", u.name),
                ));
            }
            if !names.contains(&u.account) {
                return Err(err(
                    &key("account"),
                    format!("no [[accounts]] entry is named {:?}", u.account),
                ));
            }
            if argon2::PasswordHash::new(&u.password_hash).is_err() {
                return Err(err(
                    &key("password_hash"),
                    "not a PHC password hash; make one with `mailbridge hash-password`".into(),
                ));
            }
            users.push(User {
                name: u.name,
                password_hash: Secret::new(u.password_hash),
                account: u.account,
            });
        }

        // --- smtp
        let s = self.smtp;
        let listen = parse_listen(path, "smtp.listen", s.listen, Some(DEFAULT_SMTP_LISTEN))?;
        let allowed = parse_nets(path, "smtp.allowed_networks", s.allowed_networks)?;
        let require_auth = s.require_auth.unwrap_or(false);
        let smtps_listen = parse_listen(path, "smtp.smtps_listen", s.smtps_listen, None)?;
        let all: Vec<SocketAddr> = listen.iter().chain(&smtps_listen).copied().collect();
        let unguarded = (!require_auth).then_some(exposure::OPEN_RELAY);
        exposure::refuse_open_access(path, "smtp", &all, &allowed, unguarded)?;
        if require_auth && users.is_empty() {
            return Err(err(
                "smtp.require_auth",
                "is true but no [[users]] are configured".into(),
            ));
        }
        let max_message_size = s.max_message_size.unwrap_or(DEFAULT_MAX_MESSAGE_SIZE);
        if max_message_size < 1024 {
            return Err(err(
                "smtp.max_message_size",
                "must be at least 1024 bytes".into(),
            ));
        }
        let data_buffer_budget = s.data_buffer_budget.unwrap_or(DEFAULT_DATA_BUFFER_BUDGET);
        if data_buffer_budget < MIN_DATA_BUFFER_BUDGET {
            return Err(err(
                "smtp.data_buffer_budget",
                format!("must be at least {MIN_DATA_BUFFER_BUDGET} bytes"),
            ));
        }
        let max_recipients = s.max_recipients.unwrap_or(DEFAULT_MAX_RECIPIENTS);
        if max_recipients == 0 {
            return Err(err("smtp.max_recipients", "must be at least 1".into()));
        }
        let hostname = s.hostname.unwrap_or_else(system_hostname);
        let smtp = SmtpConfig {
            listen,
            smtps_listen,
            spool_dir: resolve(s.spool_dir.unwrap_or_else(|| "spool".into())),
            mode: s.mode.unwrap_or(SmtpMode::Spool),
            max_message_size,
            data_buffer_budget,
            max_recipients,
            max_client_recipients: s
                .max_client_recipients
                .unwrap_or(DEFAULT_MAX_CLIENT_RECIPIENTS)
                .max(1),
            allowed_networks: allowed,
            require_auth,
            hostname,
            idle_timeout: s.idle_timeout.unwrap_or(DEFAULT_SMTP_IDLE),
            max_connections: s.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS).max(1),
            tls_profile: s.tls_profile.unwrap_or_default(),
            allow_lf_only_clients: s.allow_lf_only_clients.unwrap_or(true),
        };
        if default_account.is_none() && !smtp.require_auth {
            return Err(err(
                "default_account",
                "several accounts are configured: name the one for clients that do not log in"
                    .into(),
            ));
        }

        // --- imap
        let m = self.imap;
        let imap_listen = parse_listen(path, "imap.listen", m.listen, Some(DEFAULT_IMAP_LISTEN))?;
        let imap = ImapConfig {
            listen: imap_listen,
            imaps_listen: parse_listen(path, "imap.imaps_listen", m.imaps_listen, None)?,
            passthrough: m.passthrough.unwrap_or(false),
            max_connections_per_account: m.max_connections_per_account.unwrap_or(15).max(1),
            idle_timeout: m.idle_timeout.unwrap_or(DEFAULT_IMAP_IDLE),
            login_timeout: m.login_timeout.unwrap_or(DEFAULT_IMAP_LOGIN_TIMEOUT),
            allowed_networks: parse_nets(path, "imap.allowed_networks", m.allowed_networks)?,
            max_connections: m.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS).max(1),
            tls_profile: m.tls_profile.unwrap_or_default(),
        };
        let imap_all: Vec<SocketAddr> = imap
            .listen
            .iter()
            .chain(&imap.imaps_listen)
            .copied()
            .collect();
        let unguarded = imap.passthrough.then_some(exposure::OPEN_LOGIN_PROXY);
        exposure::refuse_open_access(path, "imap", &imap_all, &imap.allowed_networks, unguarded)?;

        // --- pop3
        let pop3 = pop3_config(path, self.pop3, &users, &accounts)?;

        // --- delivery
        let d = self.delivery;
        let delivery = DeliveryConfig {
            retry_initial: d.retry_initial.unwrap_or(Duration::from_secs(60)),
            retry_max: d.retry_max.unwrap_or(Duration::from_secs(3600)),
            expire_after: d.expire_after.unwrap_or(Duration::from_secs(5 * 86400)),
            timeout: d.timeout.unwrap_or(Duration::from_secs(120)),
            concurrency: d.concurrency.unwrap_or(4).clamp(1, 64),
        };
        if delivery.retry_initial.is_zero() {
            return Err(err(
                "delivery.retry_initial",
                "must be greater than 0".into(),
            ));
        }
        if delivery.retry_max < delivery.retry_initial {
            return Err(err(
                "delivery.retry_max",
                "must not be shorter than retry_initial".into(),
            ));
        }
        if delivery.timeout.is_zero() {
            return Err(err("delivery.timeout", "must be greater than 0".into()));
        }

        // --- local TLS
        let tls = match (self.tls_cert, self.tls_key) {
            (Some(cert), Some(key)) => Some(LocalTls {
                cert: resolve(cert),
                key: resolve(key),
            }),
            (None, None) => None,
            (Some(_), None) => {
                return Err(err("tls_key", "tls_cert is set but tls_key is not".into()))
            }
            (None, Some(_)) => {
                return Err(err("tls_cert", "tls_key is set but tls_cert is not".into()))
            }
        };
        if tls.is_none() && !smtp.smtps_listen.is_empty() {
            return Err(err(
                "smtp.smtps_listen",
                "needs tls_cert and tls_key (see `mailbridge init`)".into(),
            ));
        }
        if tls.is_none() && !imap.imaps_listen.is_empty() {
            return Err(err(
                "imap.imaps_listen",
                "needs tls_cert and tls_key (see `mailbridge init`)".into(),
            ));
        }

        check_tls_profile(path, "smtp.tls_profile", smtp.tls_profile, tls.is_some())?;
        check_tls_profile(path, "imap.tls_profile", imap.tls_profile, tls.is_some())?;
        if tls.is_none() && !pop3.pop3s_listen.is_empty() {
            return Err(err(
                "pop3.pop3s_listen",
                "needs tls_cert and tls_key (see `mailbridge init`)".into(),
            ));
        }

        // --- metrics
        let raw_metrics = self.metrics;
        let metrics = MetricsConfig {
            allowed_networks: parse_nets(
                path,
                "metrics.allowed_networks",
                raw_metrics.allowed_networks,
            )?,
            allowed_hosts: parse_host_names(
                path,
                "metrics.allowed_hosts",
                raw_metrics.allowed_hosts.unwrap_or_default(),
            )?,
            listen: match raw_metrics.listen {
                None => None,
                Some(l) => Some(l.trim().parse::<SocketAddr>().map_err(|_| {
                    err(
                        "metrics.listen",
                        format!("{l:?} is not an address:port such as \"127.0.0.1:9925\""),
                    )
                })?),
            },
        };

        Ok(Config {
            path: path.to_path_buf(),
            tls,
            metrics,
            default_account,
            smtp,
            imap,
            pop3,
            delivery,
            accounts,
            users,
            has_inline_secrets,
        })
    }
}
