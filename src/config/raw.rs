//! The configuration as written (serde types); [`super::validate`] turns it into [`Config`].

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::*;

// ---------------------------------------------------------------------------
// Raw (as written) types.

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) default_account: Option<String>,
    #[serde(default)]
    pub(super) smtp: RawSmtp,
    #[serde(default)]
    pub(super) imap: RawImap,
    #[serde(default)]
    pub(super) pop3: RawPop3,
    #[serde(default)]
    pub(super) delivery: RawDelivery,
    #[serde(default)]
    pub(super) accounts: Vec<RawAccount>,
    #[serde(default)]
    pub(super) users: Vec<RawUser>,
    pub(super) tls_cert: Option<PathBuf>,
    pub(super) tls_key: Option<PathBuf>,
    #[serde(default)]
    pub(super) metrics: RawMetrics,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetrics {
    pub(super) listen: Option<String>,
    pub(super) allowed_networks: Option<Vec<String>>,
    pub(super) allowed_hosts: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSmtp {
    pub(super) listen: Option<Vec<String>>,
    pub(super) smtps_listen: Option<Vec<String>>,
    pub(super) spool_dir: Option<PathBuf>,
    pub(super) mode: Option<SmtpMode>,
    pub(super) max_message_size: Option<u64>,
    pub(super) data_buffer_budget: Option<usize>,
    pub(super) max_recipients: Option<usize>,
    pub(super) max_client_recipients: Option<usize>,
    pub(super) allowed_networks: Option<Vec<String>>,
    pub(super) require_auth: Option<bool>,
    pub(super) hostname: Option<String>,
    #[serde(default, deserialize_with = "opt_duration")]
    pub(super) idle_timeout: Option<Duration>,
    pub(super) max_connections: Option<usize>,
    pub(super) tls_profile: Option<TlsProfile>,
    pub(super) allow_lf_only_clients: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawImap {
    pub(super) listen: Option<Vec<String>>,
    pub(super) imaps_listen: Option<Vec<String>>,
    pub(super) passthrough: Option<bool>,
    pub(super) max_connections_per_account: Option<usize>,
    #[serde(default, deserialize_with = "opt_duration")]
    pub(super) idle_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "opt_duration")]
    pub(super) login_timeout: Option<Duration>,
    pub(super) allowed_networks: Option<Vec<String>>,
    pub(super) max_connections: Option<usize>,
    pub(super) tls_profile: Option<TlsProfile>,
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
pub(super) struct RawDelivery {
    #[serde(default, deserialize_with = "opt_duration")]
    pub(super) retry_initial: Option<Duration>,
    #[serde(default, deserialize_with = "opt_duration")]
    pub(super) retry_max: Option<Duration>,
    #[serde(default, deserialize_with = "opt_duration")]
    pub(super) expire_after: Option<Duration>,
    #[serde(default, deserialize_with = "opt_duration")]
    pub(super) timeout: Option<Duration>,
    pub(super) concurrency: Option<usize>,
    pub(super) message_buffer_budget: Option<usize>,
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
    /// `"password"` (default) or `"oauth2"`.
    pub(super) auth: Option<String>,
    pub(super) oauth2: Option<crate::oauth2::config::RawOAuth2>,
}

fn default_provider() -> String {
    DEFAULT_PROVIDER.name().into()
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
pub(super) struct RawUser {
    pub(super) name: String,
    pub(super) password_hash: String,
    pub(super) account: String,
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
