//! `relay.toml`: the serde types, defaults in one place, provider presets and
//! validation whose every error names the file, the key and what is wrong.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer};

use crate::secret::Secret;

/// A configuration problem, always tied to the file and the key.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {key}: {message}")]
pub struct ConfigError {
    pub file: String,
    pub key: String,
    pub message: String,
}

impl ConfigError {
    fn new(file: &Path, key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.display().to_string(),
            key: key.into(),
            message: message.into(),
        }
    }
}

/// The validated configuration the daemon runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was loaded from (for messages and relative paths).
    pub path: PathBuf,
    pub default_account: Option<String>,
    pub smtp: SmtpConfig,
    pub imap: ImapConfig,
    pub delivery: DeliveryConfig,
    pub accounts: Vec<Account>,
    pub users: Vec<User>,
    /// True when an account's password is written in the file itself.
    pub has_inline_secrets: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpMode {
    /// Store and forward: 250 once the message is durable in the spool.
    Spool,
    /// Forward inside the client's transaction; the upstream's reply is the client's.
    Direct,
}

#[derive(Debug, Clone)]
pub struct SmtpConfig {
    pub listen: Vec<SocketAddr>,
    pub spool_dir: PathBuf,
    pub mode: SmtpMode,
    pub max_message_size: u64,
    /// Per upstream transaction; more recipients are split into several.
    pub max_recipients: usize,
    /// Per client transaction; beyond it RCPT gets 452.
    pub max_client_recipients: usize,
    pub allowed_networks: Vec<IpNet>,
    pub require_auth: bool,
    /// Name in our banner, EHLO reply and Received header.
    pub hostname: String,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

#[derive(Debug, Clone)]
pub struct ImapConfig {
    pub listen: Vec<SocketAddr>,
    pub passthrough: bool,
    pub max_connections_per_account: usize,
    pub idle_timeout: Duration,
    pub login_timeout: Duration,
    pub allowed_networks: Vec<IpNet>,
    pub max_connections: usize,
}

#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    pub retry_initial: Duration,
    pub retry_max: Duration,
    pub expire_after: Duration,
    /// Whole upstream transaction (connect to final reply).
    pub timeout: Duration,
    /// Messages delivered at once (upstream connections in use).
    pub concurrency: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// TLS from the first byte (SMTP 465, IMAP 993).
    Implicit,
    /// Plain connect, then STARTTLS, which must succeed before AUTH (SMTP 587, IMAP 143).
    Starttls,
}

impl fmt::Display for TlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TlsMode::Implicit => "implicit",
            TlsMode::Starttls => "starttls",
        })
    }
}

/// Where and how to reach an upstream server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{} ({} TLS)", self.host, self.port, self.tls)
    }
}

/// An upstream mailbox: where to send and read, and with which credentials.
#[derive(Debug, Clone)]
pub struct Account {
    pub name: String,
    pub provider: String,
    pub username: String,
    /// Envelope sender for relayed mail (defaults to `username`).
    pub address: String,
    /// `None` when no usable password was found; `password_problem` says why.
    pub password: Option<Secret>,
    pub password_problem: Option<String>,
    pub smtp: Endpoint,
    pub imap: Endpoint,
    /// Extra trusted root certificates (PEM), added to the webpki roots.
    pub ca_file: Option<PathBuf>,
}

/// A local login for a device.
#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    pub password_hash: Secret,
    pub account: String,
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(path, "(file)", format!("cannot read: {e}")))?;
        Config::parse(&text, path)
    }

    /// Parses `text` as if read from `path` (relative paths resolve against its directory).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let key = e
                .span()
                .map(|s| format!("line {}", line_of(text, s.start)))
                .unwrap_or_else(|| "(syntax)".into());
            ConfigError::new(path, key, e.message().trim().to_string())
        })?;
        raw.validate(path)
    }

    /// A warning if the file holds a password inline and other users may read it.
    pub fn permission_warning(&self) -> Option<String> {
        if !self.has_inline_secrets {
            return None;
        }
        mode_warning(&self.path)
    }

    pub fn account(&self, name: &str) -> Option<&Account> {
        self.accounts.iter().find(|a| a.name == name)
    }

    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.iter().find(|u| u.name == name)
    }

    /// The account for clients that do not log in.
    pub fn default_account(&self) -> Option<&Account> {
        self.default_account
            .as_deref()
            .and_then(|n| self.account(n))
    }
}

#[cfg(unix)]
fn mode_warning(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    (mode & 0o077 != 0).then(|| {
        format!(
            "{} holds a password and can be read by other users (mode {:o}); run: chmod 600 {}",
            path.display(),
            mode & 0o777,
            path.display()
        )
    })
}

#[cfg(not(unix))]
fn mode_warning(_path: &Path) -> Option<String> {
    None
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

// ---------------------------------------------------------------------------
// Defaults: the one place they live.

pub const DEFAULT_SMTP_LISTEN: &str = "127.0.0.1:2525";
pub const DEFAULT_IMAP_LISTEN: &str = "127.0.0.1:1143";
pub const DEFAULT_MAX_MESSAGE_SIZE: u64 = 25 * 1024 * 1024;
pub const DEFAULT_MAX_RECIPIENTS: usize = 100;
pub const DEFAULT_MAX_CLIENT_RECIPIENTS: usize = 1000;
pub const DEFAULT_SMTP_IDLE: Duration = Duration::from_secs(5 * 60);
pub const DEFAULT_IMAP_IDLE: Duration = Duration::from_secs(30 * 60);
pub const DEFAULT_IMAP_LOGIN_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_MAX_CONNECTIONS: usize = 2000;

fn default_allowed() -> Vec<IpNet> {
    vec![
        "127.0.0.0/8".parse().expect("literal"),
        "::1/128".parse().expect("literal"),
    ]
}

/// Provider presets: (smtp, imap).
fn preset(provider: &str) -> Option<(Endpoint, Endpoint)> {
    let ep = |host: &str, port, tls| Endpoint {
        host: host.into(),
        port,
        tls,
    };
    use TlsMode::*;
    Some(match provider {
        "gmail" => (
            ep("smtp.gmail.com", 465, Implicit),
            ep("imap.gmail.com", 993, Implicit),
        ),
        "outlook" => (
            ep("smtp-mail.outlook.com", 587, Starttls),
            ep("outlook.office365.com", 993, Implicit),
        ),
        "yahoo" => (
            ep("smtp.mail.yahoo.com", 465, Implicit),
            ep("imap.mail.yahoo.com", 993, Implicit),
        ),
        "icloud" => (
            ep("smtp.mail.me.com", 587, Starttls),
            ep("imap.mail.me.com", 993, Implicit),
        ),
        "fastmail" => (
            ep("smtp.fastmail.com", 465, Implicit),
            ep("imap.fastmail.com", 993, Implicit),
        ),
        _ => return None,
    })
}

pub const PROVIDERS: &[&str] = &["gmail", "outlook", "yahoo", "icloud", "fastmail", "custom"];

/// The TLS mode a well-known port implies, if any.
pub fn tls_for_port(port: u16) -> Option<TlsMode> {
    match port {
        465 | 993 => Some(TlsMode::Implicit),
        25 | 587 | 143 => Some(TlsMode::Starttls),
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// Raw (as written) types.

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    default_account: Option<String>,
    #[serde(default)]
    smtp: RawSmtp,
    #[serde(default)]
    imap: RawImap,
    #[serde(default)]
    delivery: RawDelivery,
    #[serde(default)]
    accounts: Vec<RawAccount>,
    #[serde(default)]
    users: Vec<RawUser>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSmtp {
    listen: Option<Vec<String>>,
    spool_dir: Option<PathBuf>,
    mode: Option<SmtpMode>,
    max_message_size: Option<u64>,
    max_recipients: Option<usize>,
    max_client_recipients: Option<usize>,
    allowed_networks: Option<Vec<String>>,
    require_auth: Option<bool>,
    hostname: Option<String>,
    #[serde(default, deserialize_with = "opt_duration")]
    idle_timeout: Option<Duration>,
    max_connections: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawImap {
    listen: Option<Vec<String>>,
    passthrough: Option<bool>,
    max_connections_per_account: Option<usize>,
    #[serde(default, deserialize_with = "opt_duration")]
    idle_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "opt_duration")]
    login_timeout: Option<Duration>,
    allowed_networks: Option<Vec<String>>,
    max_connections: Option<usize>,
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
struct RawAccount {
    name: String,
    #[serde(default = "default_provider")]
    provider: String,
    username: String,
    address: Option<String>,
    password: Option<String>,
    password_env: Option<String>,
    password_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    smtp: Option<RawEndpoint>,
    imap: Option<RawEndpoint>,
}

fn default_provider() -> String {
    "gmail".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEndpoint {
    host: Option<String>,
    port: Option<u16>,
    tls: Option<TlsMode>,
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
    fn validate(self, path: &Path) -> Result<Config, ConfigError> {
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
            let (smtp, imap) = resolve_endpoints(path, i, &a)?;
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
                normalise_password(&p, "password")
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
            if !address.contains('@') {
                return Err(err(
                    &key("address"),
                    format!("{address:?} is not a mail address; set address = \"you@example.com\" (the envelope sender)"),
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
                ca_file: a.ca_file.map(resolve),
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
        let listen = parse_listen(path, "smtp.listen", s.listen, DEFAULT_SMTP_LISTEN)?;
        let allowed = parse_nets(path, "smtp.allowed_networks", s.allowed_networks)?;
        let require_auth = s.require_auth.unwrap_or(false);
        check_open_relay(path, "smtp", &listen, &allowed, require_auth)?;
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
        let max_recipients = s.max_recipients.unwrap_or(DEFAULT_MAX_RECIPIENTS);
        if max_recipients == 0 {
            return Err(err("smtp.max_recipients", "must be at least 1".into()));
        }
        let hostname = s.hostname.unwrap_or_else(system_hostname);
        let smtp = SmtpConfig {
            listen,
            spool_dir: resolve(s.spool_dir.unwrap_or_else(|| "spool".into())),
            mode: s.mode.unwrap_or(SmtpMode::Spool),
            max_message_size,
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
        let imap_listen = parse_listen(path, "imap.listen", m.listen, DEFAULT_IMAP_LISTEN)?;
        let imap = ImapConfig {
            listen: imap_listen,
            passthrough: m.passthrough.unwrap_or(false),
            max_connections_per_account: m.max_connections_per_account.unwrap_or(15).max(1),
            idle_timeout: m.idle_timeout.unwrap_or(DEFAULT_IMAP_IDLE),
            login_timeout: m.login_timeout.unwrap_or(DEFAULT_IMAP_LOGIN_TIMEOUT),
            allowed_networks: parse_nets(path, "imap.allowed_networks", m.allowed_networks)?,
            max_connections: m.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS).max(1),
        };

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

        Ok(Config {
            path: path.to_path_buf(),
            default_account,
            smtp,
            imap,
            delivery,
            accounts,
            users,
            has_inline_secrets,
        })
    }
}

fn system_hostname() -> String {
    hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// The placeholder in the shipped relay.toml.
const EXAMPLE_APP_PASSWORD: &str = "abcdefghijklmnop";

/// Removes all whitespace (Gmail shows app passwords as `abcd efgh ijkl mnop`).
fn normalise_password(p: &str, source: &str) -> (Option<Secret>, Option<String>) {
    let cleaned: String = p.chars().filter(|c| !c.is_whitespace()).collect();
    if cleaned == EXAMPLE_APP_PASSWORD {
        (None, Some(format!("the password from {source} is still the example \"abcd efgh ijkl mnop\"; put the account's app password there")))
    } else if cleaned.is_empty() {
        (None, Some(format!("the password from {source} is empty")))
    } else {
        (Some(Secret::new(cleaned)), None)
    }
}

fn resolve_endpoints(
    path: &Path,
    i: usize,
    a: &RawAccount,
) -> Result<(Endpoint, Endpoint), ConfigError> {
    let preset = if a.provider == "custom" {
        None
    } else {
        match preset(&a.provider) {
            Some(p) => Some(p),
            None => {
                return Err(ConfigError::new(
                    path,
                    format!("accounts[{i}].provider"),
                    format!(
                        "unknown provider {:?}; one of: {}",
                        a.provider,
                        PROVIDERS.join(", ")
                    ),
                ))
            }
        }
    };
    let one = |proto: &str,
               raw: &Option<RawEndpoint>,
               preset: Option<Endpoint>|
     -> Result<Endpoint, ConfigError> {
        let key = format!("accounts[{i}].{proto}");
        let e = |m: String| ConfigError::new(path, key.clone(), m);
        match (raw, preset) {
            (None, Some(p)) => Ok(p),
            (None, None) => Err(e(format!(
                "provider = \"custom\" needs {proto} = {{ host = \"...\", port = ..., tls = \"implicit\" | \"starttls\" }}"
            ))),
            (Some(r), preset) => {
                let host = r
                    .host
                    .clone()
                    .or_else(|| preset.as_ref().map(|p| p.host.clone()))
                    .ok_or_else(|| e("host is required".into()))?;
                if host.trim().is_empty() {
                    return Err(e("host must not be empty".into()));
                }
                let port = r
                    .port
                    .or_else(|| preset.as_ref().map(|p| p.port))
                    .ok_or_else(|| e("port is required".into()))?;
                if port == 0 {
                    return Err(e("port must not be 0".into()));
                }
                let tls = match r.tls {
                    Some(t) => t,
                    None => match tls_for_port(port) {
                        Some(t) => t,
                        None => preset
                            .as_ref()
                            .filter(|p| p.port == port)
                            .map(|p| p.tls)
                            .ok_or_else(|| e(format!("tls is required for port {port} (\"implicit\" or \"starttls\")")))?,
                    },
                };
                Ok(Endpoint { host, port, tls })
            }
        }
    };
    Ok((
        one("smtp", &a.smtp, preset.clone().map(|p| p.0))?,
        one("imap", &a.imap, preset.map(|p| p.1))?,
    ))
}

fn parse_listen(
    path: &Path,
    key: &str,
    raw: Option<Vec<String>>,
    default: &str,
) -> Result<Vec<SocketAddr>, ConfigError> {
    let raw = raw.unwrap_or_else(|| vec![default.to_string()]);
    raw.iter()
        .map(|s| {
            s.trim().parse::<SocketAddr>().map_err(|_| {
                ConfigError::new(
                    path,
                    key,
                    format!("{s:?} is not an address:port such as \"127.0.0.1:2525\""),
                )
            })
        })
        .collect()
}

fn parse_nets(path: &Path, key: &str, raw: Option<Vec<String>>) -> Result<Vec<IpNet>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(default_allowed());
    };
    let nets = raw
        .iter()
        .map(|s| {
            let s = s.trim();
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    ConfigError::new(
                        path,
                        key,
                        format!("{s:?} is not a network such as \"192.168.1.0/24\""),
                    )
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if nets.is_empty() {
        return Err(ConfigError::new(
            path,
            key,
            "is empty: no client could connect",
        ));
    }
    Ok(nets)
}

/// Never an open relay: a listener reachable from other hosts needs either a
/// real allowlist or local authentication.
fn check_open_relay(
    path: &Path,
    section: &str,
    listen: &[SocketAddr],
    allowed: &[IpNet],
    require_auth: bool,
) -> Result<(), ConfigError> {
    let exposed = listen.iter().any(|a| !a.ip().is_loopback());
    let open = allowed.iter().any(|n| n.prefix_len() == 0);
    if exposed && open && !require_auth {
        return Err(ConfigError::new(
            path,
            format!("{section}.allowed_networks"),
            "a non-loopback listen address with allowed_networks open to every address would make an open relay; \
             narrow allowed_networks (e.g. [\"192.168.1.0/24\"]) or set require_auth = true",
        ));
    }
    Ok(())
}

/// Is `ip` inside one of `nets`? (IPv4-mapped IPv6 addresses count as IPv4.)
pub fn ip_allowed(nets: &[IpNet], ip: std::net::IpAddr) -> bool {
    let ip = match ip {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map(std::net::IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    nets.iter().any(|n| n.contains(&ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = r#"
[[accounts]]
name = "gmail"
username = "you@gmail.com"
password = "wxyz efgh ijkl mnop"
"#;

    fn parse(t: &str) -> Result<Config, ConfigError> {
        Config::parse(t, Path::new("/etc/mailbridge/relay.toml"))
    }

    #[test]
    fn minimal_config_gets_defaults_and_gmail_preset() {
        let c = parse(MIN).unwrap();
        let a = &c.accounts[0];
        assert_eq!(a.password.as_ref().unwrap().expose(), "wxyzefghijklmnop");
        assert_eq!(
            a.smtp,
            Endpoint {
                host: "smtp.gmail.com".into(),
                port: 465,
                tls: TlsMode::Implicit
            }
        );
        assert_eq!(a.imap.port, 993);
        assert_eq!(c.default_account.as_deref(), Some("gmail"));
        assert_eq!(
            c.smtp.listen,
            vec!["127.0.0.1:2525".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(c.smtp.spool_dir, PathBuf::from("/etc/mailbridge/spool"));
        assert_eq!(c.smtp.max_message_size, 26214400);
        assert_eq!(c.delivery.retry_initial, Duration::from_secs(60));
    }

    #[test]
    fn shipped_relay_toml_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("relay.toml");
        let c = Config::load(&path).unwrap();
        assert_eq!(c.default_account.as_deref(), Some("gmail"));
        assert_eq!(c.smtp.mode, SmtpMode::Spool);
        assert_eq!(
            c.imap.listen,
            vec!["127.0.0.1:1143".parse::<SocketAddr>().unwrap()]
        );
    }

    #[test]
    fn smtp_override_keeps_preset_host() {
        let t = format!("{MIN}smtp = {{ port = 587 }}\n");
        let c = parse(&t).unwrap();
        assert_eq!(
            c.accounts[0].smtp,
            Endpoint {
                host: "smtp.gmail.com".into(),
                port: 587,
                tls: TlsMode::Starttls
            }
        );
    }

    #[test]
    fn custom_provider_needs_both_tables() {
        let t = MIN.replace("username", "provider = \"custom\"\nusername")
            + "smtp = { host = \"mail.example.com\", port = 465 }\n";
        let e = parse(&t).unwrap_err();
        assert_eq!(e.key, "accounts[0].imap");
        assert!(e
            .to_string()
            .starts_with("/etc/mailbridge/relay.toml: accounts[0].imap:"));
    }

    #[test]
    fn unknown_key_names_line() {
        let e = parse(&format!("{MIN}passwrd = \"x\"\n")).unwrap_err();
        assert!(e.key.starts_with("line "), "{e}");
        assert!(e.message.contains("passwrd"), "{e}");
    }

    #[test]
    fn open_relay_refused() {
        let t = format!(
            "[smtp]\nlisten = [\"0.0.0.0:2525\"]\nallowed_networks = [\"0.0.0.0/0\"]\n{MIN}"
        );
        let e = parse(&t).unwrap_err();
        assert_eq!(e.key, "smtp.allowed_networks");
        let t = format!(
            "[smtp]\nlisten = [\"0.0.0.0:2525\"]\nallowed_networks = [\"192.168.1.0/24\"]\n{MIN}"
        );
        assert!(parse(&t).is_ok());
    }

    #[test]
    fn bad_duration_is_explained() {
        let e = parse(&format!("[delivery]\nretry_initial = \"soon\"\n{MIN}")).unwrap_err();
        assert!(e.message.contains("bad duration"), "{e}");
    }

    #[test]
    fn missing_password_env_is_a_problem_not_an_error() {
        let t = MIN.replace(
            "password = \"wxyz efgh ijkl mnop\"",
            "password_env = \"MAILBRIDGE_TEST_UNSET_VAR\"",
        );
        let c = parse(&t).unwrap();
        assert!(c.accounts[0].password.is_none());
        assert!(c.accounts[0]
            .password_problem
            .as_ref()
            .unwrap()
            .contains("MAILBRIDGE_TEST_UNSET_VAR"));
    }

    #[test]
    fn errors_never_contain_the_password() {
        let t = MIN.replace("you@gmail.com", "nobody");
        let e = parse(&t).unwrap_err();
        assert!(!e.to_string().contains("wxyz"));
    }

    #[test]
    fn ipv4_mapped_addresses_match_v4_networks() {
        let nets = default_allowed();
        assert!(ip_allowed(&nets, "::ffff:127.0.0.1".parse().unwrap()));
        assert!(!ip_allowed(&nets, "10.0.0.1".parse().unwrap()));
    }

    #[cfg(unix)]
    #[test]
    fn world_readable_file_with_password_warns() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.toml");
        std::fs::write(&path, MIN).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let w = Config::load(&path).unwrap().permission_warning().unwrap();
        assert!(w.contains("chmod 600"), "{w}");
        assert!(!w.contains("wxyz"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(Config::load(&path).unwrap().permission_warning().is_none());
    }
}
