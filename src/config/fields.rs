//! Parsing and checking of single values and parts of the configuration:
//! listen addresses, networks, host names, provider endpoints, the local TLS profile and
//! the `[pop3]` section. Every error names the file and the key.

use std::net::SocketAddr;
use std::path::Path;

use ipnet::IpNet;

use super::raw::{RawAccount, RawEndpoint, RawPop3};
use super::*;

pub(super) fn system_hostname() -> String {
    hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// The account's (smtp, imap, pop3) endpoints; pop3 is `None` when the
/// provider has none and the account gives no `pop3` table.
pub(super) fn resolve_endpoints(
    path: &Path,
    i: usize,
    provider: Provider,
    a: &RawAccount,
) -> Result<(Endpoint, Endpoint, Option<Endpoint>), ConfigError> {
    let preset = provider.preset();
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
    let pop3_preset = provider.pop3_preset();
    let pop3 = match (&a.pop3, &pop3_preset) {
        (None, None) => None,
        _ => Some(one("pop3", &a.pop3, pop3_preset)?),
    };
    Ok((
        one("smtp", &a.smtp, preset.clone().map(|p| p.0))?,
        one("imap", &a.imap, preset.map(|p| p.1))?,
        pop3,
    ))
}

pub(super) fn parse_listen(
    path: &Path,
    key: &str,
    raw: Option<Vec<String>>,
    default: Option<&str>,
) -> Result<Vec<SocketAddr>, ConfigError> {
    let raw = raw.unwrap_or_else(|| default.map(|d| vec![d.to_string()]).unwrap_or_default());
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

pub(super) fn parse_nets(
    path: &Path,
    key: &str,
    raw: Option<Vec<String>>,
) -> Result<Vec<IpNet>, ConfigError> {
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

/// DNS names for `metrics.allowed_hosts`: letters, digits, `-` and `.`,
/// stored lower case without a trailing dot (the `Host` check compares so).
pub(super) fn parse_host_names(
    path: &Path,
    key: &str,
    raw: Vec<String>,
) -> Result<Vec<String>, ConfigError> {
    raw.into_iter()
        .map(|h| {
            let name = h.trim().trim_end_matches('.').to_ascii_lowercase();
            let valid = !name.is_empty()
                && name.len() <= 253
                && name.split('.').all(|l| {
                    !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                });
            if valid {
                Ok(name)
            } else {
                Err(ConfigError::new(
                    path,
                    key,
                    format!(
                        "{h:?} is not a host name such as \"mailbridge.lan\" (no port, no scheme)"
                    ),
                ))
            }
        })
        .collect()
}

/// `tls_profile = "legacy"` needs local TLS and a build that has it.
pub(super) fn check_tls_profile(
    path: &Path,
    key: &str,
    profile: TlsProfile,
    has_tls: bool,
) -> Result<(), ConfigError> {
    if profile == TlsProfile::Modern {
        return Ok(());
    }
    if !crate::legacy_tls::AVAILABLE {
        return Err(ConfigError::new(
            path,
            key,
            crate::legacy_tls::not_built_message(),
        ));
    }
    if !has_tls {
        return Err(ConfigError::new(
            path,
            key,
            "\"legacy\" needs tls_cert and tls_key (an RSA certificate for devices limited to RSA key exchange)",
        ));
    }
    Ok(())
}

/// `[pop3]`, checked against the accounts its users can reach.
pub(super) fn pop3_config(
    path: &Path,
    p: RawPop3,
    users: &[User],
    accounts: &[Account],
) -> Result<Pop3Config, ConfigError> {
    let err = |key: &str, msg: String| ConfigError::new(path, key, msg);
    let listen = parse_listen(path, "pop3.listen", p.listen, None)?;
    let pop3s_listen = parse_listen(path, "pop3.pop3s_listen", p.pop3s_listen, None)?;
    let allowed_networks = parse_nets(path, "pop3.allowed_networks", p.allowed_networks)?;
    let passthrough = p.passthrough.unwrap_or(false);
    let all: Vec<SocketAddr> = listen.iter().chain(&pop3s_listen).copied().collect();
    // Passthrough hands any client's credentials to the upstream: an open
    // proxy unless the listener is local or the allowlist is real.
    let exposed = all.iter().any(|a| !a.ip().is_loopback());
    if passthrough && exposed && allowed_networks.iter().any(|n| n.prefix_len() == 0) {
        return Err(err(
            "pop3.allowed_networks",
            "passthrough = true with a non-loopback listen address and allowed_networks open to every address \
             would make an open proxy; narrow allowed_networks (e.g. [\"192.168.1.0/24\"]) or set passthrough = false"
                .into(),
        ));
    }
    let config = Pop3Config {
        listen,
        pop3s_listen,
        passthrough,
        max_connections_per_account: p
            .max_connections_per_account
            .unwrap_or(DEFAULT_POP3_PER_ACCOUNT)
            .max(1),
        idle_timeout: p.idle_timeout.unwrap_or(DEFAULT_POP3_IDLE),
        login_timeout: p.login_timeout.unwrap_or(DEFAULT_POP3_LOGIN_TIMEOUT),
        allowed_networks,
        max_connections: p.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS).max(1),
    };
    if config.enabled() {
        for (i, a) in accounts.iter().enumerate() {
            let used = users.iter().any(|u| u.account == a.name);
            if a.pop3.is_some() || !used {
                continue;
            }
            let message = if a.provider == Provider::Icloud {
                "iCloud Mail offers no POP3, but [pop3] listen is set and local users log in to this account; \
                 use IMAP for it, or move those users to another account"
                    .to_string()
            } else {
                "[pop3] listen is set and local users log in to this account, but it has no POP3 server; \
                 add pop3 = { host = \"...\", port = 995, tls = \"implicit\" }"
                    .to_string()
            };
            return Err(err(&format!("accounts[{i}].pop3"), message));
        }
    }
    Ok(config)
}
