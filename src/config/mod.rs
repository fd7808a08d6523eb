//! `relay.toml`: the serde types, defaults in one place, provider presets and
//! validation whose every error names the file, the key and what is wrong.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::secret::Secret;

mod exposure;
mod fields;
mod password;
mod perms;
pub mod provider;
mod raw;
mod validate;
pub use password::Password;
pub use provider::Provider;
use raw::RawConfig;

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
    pub pop3: Pop3Config,
    pub delivery: DeliveryConfig,
    pub accounts: Vec<Account>,
    pub users: Vec<User>,
    /// Certificate and key for local TLS (STARTTLS and the implicit-TLS listeners).
    pub tls: Option<LocalTls>,
    pub metrics: MetricsConfig,
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

/// Local TLS material (`tls_cert`, `tls_key`), PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalTls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `tls_profile` of a listener family: which TLS versions the local side accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsProfile {
    /// rustls, TLS 1.2 and 1.3 (the default).
    #[default]
    Modern,
    /// Also TLS 1.0/1.1 and RSA key exchange, through OpenSSL, for old
    /// printers; only in a build with the `legacy-tls` feature.
    Legacy,
}

/// `[metrics]`: the optional HTTP listener for /metrics and /healthz.
#[derive(Debug, Clone)]
pub struct MetricsConfig {
    pub listen: Option<SocketAddr>,
    /// Client addresses that may connect (default: loopback only).
    pub allowed_networks: Vec<IpNet>,
    /// Host names accepted in the `Host` header besides IP literals and
    /// `localhost` (lower case, no port, no trailing dot).
    pub allowed_hosts: Vec<String>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: None,
            allowed_networks: default_allowed(),
            allowed_hosts: Vec::new(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct SmtpConfig {
    pub listen: Vec<SocketAddr>,
    /// Implicit-TLS listeners (needs `tls_cert`/`tls_key`).
    pub smtps_listen: Vec<SocketAddr>,
    pub spool_dir: PathBuf,
    pub mode: SmtpMode,
    pub max_message_size: u64,
    /// Bytes of DATA that may wait in memory for their spool file, across
    /// all connections; a connection over it stops reading until there is room.
    pub data_buffer_budget: usize,
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
    /// Local TLS of STARTTLS and `smtps_listen`.
    pub tls_profile: TlsProfile,
    /// A client whose command lines all end in a bare LF may end DATA with
    /// `<LF>.<LF>` (old devices); CRLF sessions always need `<CR><LF>.<CR><LF>`.
    pub allow_lf_only_clients: bool,
}

#[derive(Debug, Clone)]
pub struct ImapConfig {
    pub listen: Vec<SocketAddr>,
    /// Implicit-TLS listeners (needs `tls_cert`/`tls_key`).
    pub imaps_listen: Vec<SocketAddr>,
    pub passthrough: bool,
    pub max_connections_per_account: usize,
    pub idle_timeout: Duration,
    pub login_timeout: Duration,
    pub allowed_networks: Vec<IpNet>,
    pub max_connections: usize,
    /// Local TLS of STARTTLS and `imaps_listen`.
    pub tls_profile: TlsProfile,
}

/// `[pop3]`: the POP3 proxy (off unless `listen` or `pop3s_listen` is set).
#[derive(Debug, Clone)]
pub struct Pop3Config {
    pub listen: Vec<SocketAddr>,
    /// Implicit-TLS listeners (needs `tls_cert`/`tls_key`).
    pub pop3s_listen: Vec<SocketAddr>,
    pub passthrough: bool,
    /// Upstream POP3 sessions per account at once (Gmail counts them).
    pub max_connections_per_account: usize,
    pub idle_timeout: Duration,
    pub login_timeout: Duration,
    pub allowed_networks: Vec<IpNet>,
    pub max_connections: usize,
}

impl Pop3Config {
    /// True when any POP3 listener is configured.
    pub fn enabled(&self) -> bool {
        !self.listen.is_empty() || !self.pop3s_listen.is_empty()
    }
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
    /// Bytes of whole messages held in memory for delivery at once (worker
    /// and direct mode together; see [`crate::spool::memory`]).
    pub message_buffer_budget: usize,
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
    pub provider: Provider,
    pub username: String,
    /// Envelope sender for relayed mail (defaults to `username`).
    pub address: String,
    /// The upstream password, or why there is no usable one.
    pub password: Password,
    pub smtp: Endpoint,
    pub imap: Endpoint,
    /// The POP3 upstream; `None` for providers without POP3 (iCloud) and
    /// custom accounts without a `pop3` table.
    pub pop3: Option<Endpoint>,
    /// `pop3_recent_mode = true`: log in to Gmail's POP3 as `recent:user`
    /// (the last 30 days of mail, including mail already downloaded elsewhere).
    pub pop3_recent_mode: bool,
    /// Extra trusted root certificates (PEM), added to the webpki roots.
    pub ca_file: Option<PathBuf>,
    /// Messages per rolling 24 h the worker sends at most (None: no cap).
    /// Defaults to 500 for `provider = "gmail"` (consumer quota).
    pub daily_limit: Option<u32>,
    /// Where to send a short report when a message fails permanently.
    pub notify: Option<String>,
    /// What to do with a client's IMAP APPEND to the Sent mailbox.
    pub sent_copy: SentCopy,
    /// Other `From:` addresses the provider lets this account send as
    /// (Gmail's verified "Send mail as" aliases); any other `From:` is warned about.
    pub send_as: Vec<String>,
    /// `auth = "oauth2"`: how tokens are obtained (`None`: password login).
    pub oauth2: Option<crate::oauth2::config::OAuth2Settings>,
}

/// IMAP APPEND to Sent: Gmail already files SMTP-sent mail there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SentCopy {
    /// Forward the APPEND upstream (the default).
    #[default]
    Keep,
    /// Answer OK without forwarding, avoiding a duplicate in Sent.
    Skip,
}

/// Gmail's consumer sending quota per 24 h.
pub const GMAIL_DAILY_LIMIT: u32 = 500;

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
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = std::fs::metadata(path).ok()?;
    let mode = meta.permissions().mode();
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let private = mode & 0o070 != 0
        && perms::group_is_private(meta.gid(), &read("/etc/group"), &read("/etc/passwd"));
    perms::open_to_others(mode, private).then(|| {
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
pub const DEFAULT_SPOOL_DIR: &str = "spool";
pub const DEFAULT_SMTP_MODE: SmtpMode = SmtpMode::Spool;
pub const DEFAULT_ALLOW_LF_ONLY_CLIENTS: bool = true;
pub const DEFAULT_PROVIDER: Provider = Provider::Gmail;
pub const DEFAULT_IMAP_PER_ACCOUNT: usize = 15;
pub const DEFAULT_RETRY_INITIAL: Duration = Duration::from_secs(60);
pub const DEFAULT_RETRY_MAX: Duration = Duration::from_secs(3600);
pub const DEFAULT_EXPIRE_AFTER: Duration = Duration::from_secs(5 * 86400);
pub const DEFAULT_DELIVERY_TIMEOUT: Duration = Duration::from_secs(120);
pub const DEFAULT_CONCURRENCY: usize = 4;
/// `delivery.concurrency` is clamped to 1..=this.
pub const MAX_CONCURRENCY: usize = 64;
/// Default `smtp.data_buffer_budget`: 16 MiB (256 connections' buffers).
pub const DEFAULT_DATA_BUFFER_BUDGET: usize = 16 * 1024 * 1024;
/// Smallest `smtp.data_buffer_budget`: one connection's buffer, so one
/// message can always make progress.
pub const MIN_DATA_BUFFER_BUDGET: usize = 64 * 1024;
/// Default `delivery.message_buffer_budget`: 24 MiB, so a large message is
/// delivered alone and small ones side by side.
pub const DEFAULT_MESSAGE_BUFFER_BUDGET: usize = 24 * 1024 * 1024;
/// Smallest `delivery.message_buffer_budget` (a larger message still goes,
/// alone).
pub const MIN_MESSAGE_BUFFER_BUDGET: usize = 64 * 1024;
/// RFC 1939 section 3: the inactivity autologout timer is at least 10 minutes.
pub const DEFAULT_POP3_IDLE: Duration = Duration::from_secs(10 * 60);
pub const DEFAULT_POP3_LOGIN_TIMEOUT: Duration = Duration::from_secs(60);
/// Gmail allows a handful of simultaneous POP3 sessions per account.
pub const DEFAULT_POP3_PER_ACCOUNT: usize = 5;

fn default_allowed() -> Vec<IpNet> {
    vec![
        "127.0.0.0/8".parse().expect("literal"),
        "::1/128".parse().expect("literal"),
    ]
}

/// The TLS mode a well-known port implies, if any.
pub fn tls_for_port(port: u16) -> Option<TlsMode> {
    match port {
        465 | 993 | 995 => Some(TlsMode::Implicit),
        25 | 587 | 143 | 110 => Some(TlsMode::Starttls),
        _ => None,
    }
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
mod pop3_tests;
#[cfg(test)]
mod tests;
