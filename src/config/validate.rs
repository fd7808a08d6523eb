//! Validation of the raw (as written) configuration into [`Config`]: one
//! function per section, in the order errors are reported. Every error
//! names the file and the key.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::exposure;
use super::fields::*;
use super::raw::*;
use super::*;
use crate::secret::Secret;

/// The file being validated: for errors and relative paths.
struct Source<'a> {
    path: &'a Path,
    base: PathBuf,
}

impl Source<'_> {
    fn err(&self, key: &str, msg: impl Into<String>) -> ConfigError {
        ConfigError::new(self.path, key, msg)
    }

    /// A path relative to the config file's directory.
    fn resolve(&self, p: PathBuf) -> PathBuf {
        if p.is_absolute() {
            p
        } else {
            self.base.join(p)
        }
    }
}

impl RawConfig {
    pub(super) fn validate(self, path: &Path) -> Result<Config, ConfigError> {
        let src = Source {
            path,
            base: path.parent().map(Path::to_path_buf).unwrap_or_default(),
        };
        let has_inline_secrets = self.accounts.iter().any(|a| a.password.is_some());
        let accounts = accounts(&src, self.accounts)?;
        let default_account = default_account(&src, self.default_account, &accounts)?;
        let users = users(&src, self.users, &accounts)?;
        let smtp = smtp(&src, self.smtp, &users)?;
        if default_account.is_none() && !smtp.require_auth {
            return Err(src.err(
                "default_account",
                "several accounts are configured: name the one for clients that do not log in",
            ));
        }
        let imap = imap(&src, self.imap)?;
        let pop3 = pop3_config(path, self.pop3, &users, &accounts)?;
        let delivery = delivery(&src, self.delivery)?;
        let tls = local_tls(&src, self.tls_cert, self.tls_key, &smtp, &imap, &pop3)?;
        let metrics = metrics(&src, self.metrics)?;
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

/// `[[accounts]]`: at least one, unique names.
fn accounts(src: &Source, raw: Vec<RawAccount>) -> Result<Vec<Account>, ConfigError> {
    let mut accounts: Vec<Account> = Vec::new();
    for (i, a) in raw.into_iter().enumerate() {
        let key = format!("accounts[{i}].name");
        if a.name.trim().is_empty() {
            return Err(src.err(&key, "must not be empty"));
        }
        if accounts.iter().any(|b| b.name == a.name) {
            return Err(src.err(&key, format!("duplicate account name {:?}", a.name)));
        }
        accounts.push(account(src, i, a)?);
    }
    if accounts.is_empty() {
        return Err(src.err("accounts", "at least one [[accounts]] entry is needed"));
    }
    Ok(accounts)
}

/// One `[[accounts]]` entry (the `i`th).
fn account(src: &Source, i: usize, mut a: RawAccount) -> Result<Account, ConfigError> {
    let key = |k: &str| format!("accounts[{i}].{k}");
    let provider = match Provider::from_name(&a.provider) {
        Some(p) => p,
        None => {
            let names: Vec<&str> = provider::ALL.iter().map(|p| p.name()).collect();
            return Err(src.err(
                &key("provider"),
                format!(
                    "unknown provider {:?}; one of: {}",
                    a.provider,
                    names.join(", ")
                ),
            ));
        }
    };
    let (smtp, imap, pop3) = resolve_endpoints(src.path, i, provider, &a)?;
    if a.pop3_recent_mode && !provider.has_pop3_recent_mode() {
        return Err(src.err(
            &key("pop3_recent_mode"),
            format!(
                "recent mode is a Gmail POP3 feature; provider {:?} has no such thing",
                a.provider
            ),
        ));
    }
    let has_password =
        a.password.is_some() || a.password_env.is_some() || a.password_file.is_some();
    let auth = a.auth.clone().unwrap_or_else(|| {
        provider
            .default_auth(a.oauth2.is_some(), has_password)
            .into()
    });
    let mut raw_oauth2 = a.oauth2.take();
    if let Some(tenant) = provider.microsoft_tenant() {
        if auth == "oauth2" && raw_oauth2.is_none() && a.auth.is_none() {
            return Err(src.err(
                &key("oauth2"),
                format!("provider {:?} signs in with OAuth2 (Microsoft turned passwords off): add an [accounts.oauth2] table with the client_id of the app you registered (see the README), then run mailbridge auth {}", a.provider, a.name),
            ));
        }
        raw_oauth2 = raw_oauth2.map(|r| crate::oauth2::config::with_server_preset(r, tenant));
    }
    let oauth2 = crate::oauth2::config::validate(Some(&auth), raw_oauth2, &src.base)
        .map_err(|e| src.err(&key(&e.key), e.message))?;
    let password = password(src, i, &a, oauth2.is_some())?;
    if a.username.trim().is_empty() {
        return Err(src.err(&key("username"), "must not be empty"));
    }
    let address = a.address.unwrap_or_else(|| a.username.clone());
    // It goes into MAIL FROM:<...> verbatim: no room for CR/LF or brackets.
    let unsafe_char = |c: char| c.is_control() || c.is_whitespace() || c == '<' || c == '>';
    if !address.contains('@') || address.contains(unsafe_char) {
        return Err(src.err(
            &key("address"),
            format!("{address:?} is not a mail address; set address = \"you@example.com\" (the envelope sender)"),
        ));
    }
    let daily_limit = match a.daily_limit {
        Some(0) => None,
        Some(n) => Some(n),
        None => provider.default_daily_limit(),
    };
    if let Some(n) = &a.notify {
        if !n.contains('@') {
            return Err(src.err(&key("notify"), format!("{n:?} is not a mail address")));
        }
    }
    if let Some(bad) = a.send_as.iter().find(|s| !s.contains('@')) {
        return Err(src.err(&key("send_as"), format!("{bad:?} is not a mail address")));
    }
    Ok(Account {
        name: a.name,
        provider,
        username: a.username,
        address,
        password,
        smtp,
        imap,
        pop3,
        pop3_recent_mode: a.pop3_recent_mode,
        ca_file: a.ca_file.map(|p| src.resolve(p)),
        daily_limit,
        notify: a.notify,
        sent_copy: a.sent_copy,
        send_as: a.send_as,
        oauth2,
    })
}

/// One of `password`, `password_env`, `password_file`, read now. A missing
/// or unreadable one is not an error: the account's mail waits in the spool.
fn password(src: &Source, i: usize, a: &RawAccount, oauth2: bool) -> Result<Password, ConfigError> {
    let given = [
        a.password.is_some(),
        a.password_env.is_some(),
        a.password_file.is_some(),
    ];
    if given.iter().filter(|x| **x).count() > 1 {
        return Err(src.err(
            &format!("accounts[{i}].password"),
            "give only one of password, password_env, password_file",
        ));
    }
    Ok(if let Some(p) = &a.password {
        Password::from_text(p, "the `password` key")
    } else if let Some(var) = &a.password_env {
        match std::env::var(var) {
            Ok(p) => Password::from_text(&p, &format!("environment variable {var}")),
            Err(_) => Password::Missing {
                why: format!("environment variable {var} (password_env) is not set"),
            },
        }
    } else if let Some(file) = &a.password_file {
        let file = src.resolve(file.clone());
        match std::fs::read_to_string(&file) {
            Ok(p) => Password::from_text(&p, &format!("file {}", file.display())),
            Err(e) => Password::Unreadable {
                why: format!("cannot read password_file {}: {e}", file.display()),
            },
        }
    } else if oauth2 {
        Password::NotNeeded
    } else {
        Password::Missing {
            why: "no password, password_env or password_file given".into(),
        }
    })
}

/// `default_account`: named, or the only account.
fn default_account(
    src: &Source,
    raw: Option<String>,
    accounts: &[Account],
) -> Result<Option<String>, ConfigError> {
    Ok(match raw {
        Some(n) if !accounts.iter().any(|a| a.name == n) => {
            return Err(src.err(
                "default_account",
                format!("no [[accounts]] entry is named {n:?}"),
            ))
        }
        Some(n) => Some(n),
        None if accounts.len() == 1 => Some(accounts[0].name.clone()),
        None => None,
    })
}

/// `[[users]]`: unique names, a known account, a PHC hash.
fn users(src: &Source, raw: Vec<RawUser>, accounts: &[Account]) -> Result<Vec<User>, ConfigError> {
    let mut users = Vec::new();
    let mut user_names = HashSet::new();
    for (i, u) in raw.into_iter().enumerate() {
        let key = |k: &str| format!("users[{i}].{k}");
        if u.name.is_empty() {
            return Err(src.err(&key("name"), "must not be empty"));
        }
        if !user_names.insert(u.name.clone()) {
            return Err(src.err(&key("name"), format!("duplicate user name {:?}", u.name)));
        }
        if !accounts.iter().any(|a| a.name == u.account) {
            return Err(src.err(
                &key("account"),
                format!("no [[accounts]] entry is named {:?}", u.account),
            ));
        }
        if argon2::PasswordHash::new(&u.password_hash).is_err() {
            return Err(src.err(
                &key("password_hash"),
                "not a PHC password hash; make one with `mailbridge hash-password`",
            ));
        }
        users.push(User {
            name: u.name,
            password_hash: Secret::new(u.password_hash),
            account: u.account,
        });
    }
    Ok(users)
}

/// `[smtp]`.
fn smtp(src: &Source, s: RawSmtp, users: &[User]) -> Result<SmtpConfig, ConfigError> {
    let path = src.path;
    let listen = parse_listen(path, "smtp.listen", s.listen, Some(DEFAULT_SMTP_LISTEN))?;
    let allowed = parse_nets(path, "smtp.allowed_networks", s.allowed_networks)?;
    let require_auth = s.require_auth.unwrap_or(false);
    let smtps_listen = parse_listen(path, "smtp.smtps_listen", s.smtps_listen, None)?;
    let all: Vec<SocketAddr> = listen.iter().chain(&smtps_listen).copied().collect();
    let unguarded = (!require_auth).then_some(exposure::OPEN_RELAY);
    exposure::refuse_open_access(path, "smtp", &all, &allowed, unguarded)?;
    if require_auth && users.is_empty() {
        return Err(src.err(
            "smtp.require_auth",
            "is true but no [[users]] are configured",
        ));
    }
    let max_message_size = s.max_message_size.unwrap_or(DEFAULT_MAX_MESSAGE_SIZE);
    if max_message_size < 1024 {
        return Err(src.err("smtp.max_message_size", "must be at least 1024 bytes"));
    }
    let data_buffer_budget = s.data_buffer_budget.unwrap_or(DEFAULT_DATA_BUFFER_BUDGET);
    if data_buffer_budget < MIN_DATA_BUFFER_BUDGET {
        return Err(src.err(
            "smtp.data_buffer_budget",
            format!("must be at least {MIN_DATA_BUFFER_BUDGET} bytes"),
        ));
    }
    let max_recipients = s.max_recipients.unwrap_or(DEFAULT_MAX_RECIPIENTS);
    if max_recipients == 0 {
        return Err(src.err("smtp.max_recipients", "must be at least 1"));
    }
    Ok(SmtpConfig {
        listen,
        smtps_listen,
        spool_dir: src.resolve(s.spool_dir.unwrap_or_else(|| DEFAULT_SPOOL_DIR.into())),
        mode: s.mode.unwrap_or(DEFAULT_SMTP_MODE),
        max_message_size,
        data_buffer_budget,
        max_recipients,
        max_client_recipients: s
            .max_client_recipients
            .unwrap_or(DEFAULT_MAX_CLIENT_RECIPIENTS)
            .max(1),
        allowed_networks: allowed,
        require_auth,
        hostname: s.hostname.unwrap_or_else(system_hostname),
        idle_timeout: s.idle_timeout.unwrap_or(DEFAULT_SMTP_IDLE),
        max_connections: s.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS).max(1),
        tls_profile: s.tls_profile.unwrap_or_default(),
        allow_lf_only_clients: s
            .allow_lf_only_clients
            .unwrap_or(DEFAULT_ALLOW_LF_ONLY_CLIENTS),
    })
}

/// `[imap]`.
fn imap(src: &Source, m: RawImap) -> Result<ImapConfig, ConfigError> {
    let path = src.path;
    let imap = ImapConfig {
        listen: parse_listen(path, "imap.listen", m.listen, Some(DEFAULT_IMAP_LISTEN))?,
        imaps_listen: parse_listen(path, "imap.imaps_listen", m.imaps_listen, None)?,
        passthrough: m.passthrough.unwrap_or(false),
        max_connections_per_account: m
            .max_connections_per_account
            .unwrap_or(DEFAULT_IMAP_PER_ACCOUNT)
            .max(1),
        idle_timeout: m.idle_timeout.unwrap_or(DEFAULT_IMAP_IDLE),
        login_timeout: m.login_timeout.unwrap_or(DEFAULT_IMAP_LOGIN_TIMEOUT),
        allowed_networks: parse_nets(path, "imap.allowed_networks", m.allowed_networks)?,
        max_connections: m.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS).max(1),
        tls_profile: m.tls_profile.unwrap_or_default(),
    };
    let all: Vec<SocketAddr> = imap
        .listen
        .iter()
        .chain(&imap.imaps_listen)
        .copied()
        .collect();
    let unguarded = imap.passthrough.then_some(exposure::OPEN_LOGIN_PROXY);
    exposure::refuse_open_access(path, "imap", &all, &imap.allowed_networks, unguarded)?;
    Ok(imap)
}

/// `[delivery]`.
fn delivery(src: &Source, d: RawDelivery) -> Result<DeliveryConfig, ConfigError> {
    let delivery = DeliveryConfig {
        retry_initial: d.retry_initial.unwrap_or(DEFAULT_RETRY_INITIAL),
        retry_max: d.retry_max.unwrap_or(DEFAULT_RETRY_MAX),
        expire_after: d.expire_after.unwrap_or(DEFAULT_EXPIRE_AFTER),
        timeout: d.timeout.unwrap_or(DEFAULT_DELIVERY_TIMEOUT),
        concurrency: d
            .concurrency
            .unwrap_or(DEFAULT_CONCURRENCY)
            .clamp(1, MAX_CONCURRENCY),
        message_buffer_budget: d
            .message_buffer_budget
            .unwrap_or(DEFAULT_MESSAGE_BUFFER_BUDGET),
    };
    if delivery.message_buffer_budget < MIN_MESSAGE_BUFFER_BUDGET {
        return Err(src.err(
            "delivery.message_buffer_budget",
            format!("must be at least {MIN_MESSAGE_BUFFER_BUDGET} bytes"),
        ));
    }
    if delivery.retry_initial.is_zero() {
        return Err(src.err("delivery.retry_initial", "must be greater than 0"));
    }
    if delivery.retry_max < delivery.retry_initial {
        return Err(src.err(
            "delivery.retry_max",
            "must not be shorter than retry_initial",
        ));
    }
    if delivery.timeout.is_zero() {
        return Err(src.err("delivery.timeout", "must be greater than 0"));
    }
    Ok(delivery)
}

/// `tls_cert` and `tls_key`: both or neither; the implicit-TLS listeners and
/// the legacy profile need them.
fn local_tls(
    src: &Source,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    smtp: &SmtpConfig,
    imap: &ImapConfig,
    pop3: &Pop3Config,
) -> Result<Option<LocalTls>, ConfigError> {
    let tls = match (cert, key) {
        (Some(cert), Some(key)) => Some(LocalTls {
            cert: src.resolve(cert),
            key: src.resolve(key),
        }),
        (None, None) => None,
        (Some(_), None) => return Err(src.err("tls_key", "tls_cert is set but tls_key is not")),
        (None, Some(_)) => return Err(src.err("tls_cert", "tls_key is set but tls_cert is not")),
    };
    let needs_tls = "needs tls_cert and tls_key (see `mailbridge init`)";
    if tls.is_none() && !smtp.smtps_listen.is_empty() {
        return Err(src.err("smtp.smtps_listen", needs_tls));
    }
    if tls.is_none() && !imap.imaps_listen.is_empty() {
        return Err(src.err("imap.imaps_listen", needs_tls));
    }
    let path = src.path;
    check_tls_profile(path, "smtp.tls_profile", smtp.tls_profile, tls.is_some())?;
    check_tls_profile(path, "imap.tls_profile", imap.tls_profile, tls.is_some())?;
    if tls.is_none() && !pop3.pop3s_listen.is_empty() {
        return Err(src.err("pop3.pop3s_listen", needs_tls));
    }
    Ok(tls)
}

/// `[metrics]`.
fn metrics(src: &Source, m: RawMetrics) -> Result<MetricsConfig, ConfigError> {
    let path = src.path;
    Ok(MetricsConfig {
        allowed_networks: parse_nets(path, "metrics.allowed_networks", m.allowed_networks)?,
        allowed_hosts: parse_host_names(
            path,
            "metrics.allowed_hosts",
            m.allowed_hosts.unwrap_or_default(),
        )?,
        listen: match m.listen {
            None => None,
            Some(l) => Some(l.trim().parse::<SocketAddr>().map_err(|_| {
                src.err(
                    "metrics.listen",
                    format!("{l:?} is not an address:port such as \"127.0.0.1:9925\""),
                )
            })?),
        },
    })
}
