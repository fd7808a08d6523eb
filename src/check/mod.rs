//! `mailbridge check`: the configuration is valid, and every account can log
//! in to its SMTP and IMAP servers (and POP3 when a POP3 listener is
//! configured); each problem comes with a hint. [`run`] returns a
//! [`Report`]; [`crate::cli::check`] prints it.
//!
//! - [`smtp`], [`imap`], [`pop3`]: one real login per protocol, on the
//!   protocol's own upstream connection code; `probe`: what IMAP and POP3 share.

pub mod imap;
pub mod pop3;
mod probe;
pub mod smtp;

use std::path::PathBuf;
use std::time::Duration;

use crate::config::{tls_for_port, Account, Config, Endpoint};
use crate::oauth2::Tokens;

use probe::ProxyProbe;

pub use imap::login as imap_login;
pub use pop3::login as pop3_login;
pub use smtp::login as smtp_login;

const CHECK_TIMEOUT: Duration = Duration::from_secs(20);

/// Everything `mailbridge check` found.
#[derive(Debug, Clone)]
pub struct Report {
    pub config: PathBuf,
    pub users: usize,
    /// The config file is readable by others (and how to fix it).
    pub permission_warning: Option<String>,
    pub accounts: Vec<AccountReport>,
}

impl Report {
    /// Every account has a usable password and every login worked.
    pub fn passed(&self) -> bool {
        self.accounts.iter().all(|a| {
            !matches!(a.password, PasswordCheck::Unusable(_))
                && a.probes.iter().all(|p| p.result.is_ok())
        })
    }
}

/// One account's checks.
#[derive(Debug, Clone)]
pub struct AccountReport {
    pub name: String,
    pub username: String,
    pub provider: String,
    pub password: PasswordCheck,
    /// The logins tried, in order (none when the password is unusable).
    pub probes: Vec<Probe>,
}

/// Whether the account's password can be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordCheck {
    Usable,
    /// Usable, but probably not what the provider expects.
    Suspicious(String),
    /// Missing or unreadable: no login is tried.
    Unusable(String),
}

/// Which upstream protocol a probe logged in to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Smtp,
    Imap,
    Pop3,
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Smtp => "smtp",
            Protocol::Imap => "imap",
            Protocol::Pop3 => "pop3",
        })
    }
}

/// One login attempt.
#[derive(Debug, Clone)]
pub struct Probe {
    pub protocol: Protocol,
    pub endpoint: Endpoint,
    /// The TLS mode does not match what the well-known port uses.
    pub port_hint: Option<String>,
    /// A one-line summary, or what is wrong and how to fix it (password scrubbed).
    pub result: Result<String, String>,
}

/// Runs every check.
pub async fn run(config: &Config) -> Report {
    crate::tls::install_crypto_provider();
    // The daemon's token files: `check` refreshes a token as the daemon would.
    let tokens = Tokens::new(&config.smtp.spool_dir);
    let mut accounts = Vec::new();
    for account in &config.accounts {
        let password = password_check(account);
        let mut probes = Vec::new();
        if !matches!(password, PasswordCheck::Unusable(_)) {
            let mut endpoints = vec![
                (Protocol::Smtp, account.smtp.clone()),
                (Protocol::Imap, account.imap.clone()),
            ];
            // POP3 only when a POP3 listener is configured (then the account must reach it).
            if let (true, Some(ep)) = (config.pop3.enabled(), &account.pop3) {
                endpoints.push((Protocol::Pop3, ep.clone()));
            }
            for (protocol, endpoint) in endpoints {
                let result = match protocol {
                    Protocol::Smtp => smtp::login(account, Some(&tokens), CHECK_TIMEOUT).await,
                    Protocol::Imap => imap::login(account, Some(&tokens), CHECK_TIMEOUT).await,
                    Protocol::Pop3 => pop3::login(account, Some(&tokens), CHECK_TIMEOUT).await,
                };
                probes.push(Probe {
                    protocol,
                    port_hint: port_hint(&endpoint),
                    endpoint,
                    result: result.map_err(|problem| scrub(&problem, account)),
                });
            }
        }
        accounts.push(AccountReport {
            name: account.name.clone(),
            username: account.username.clone(),
            provider: account.provider.to_string(),
            password,
            probes,
        });
    }
    Report {
        config: config.path.clone(),
        users: config.users.len(),
        permission_warning: config.permission_warning(),
        accounts,
    }
}

/// Missing or unreadable, or (Gmail) not the 16 letters of an app password.
/// An `auth = "oauth2"` account needs none (its probes get the token).
fn password_check(account: &Account) -> PasswordCheck {
    if account.oauth2.is_some() {
        return PasswordCheck::Usable;
    }
    let Some(password) = account.password.secret() else {
        let why = account.password.problem().unwrap_or("no password");
        return PasswordCheck::Unusable(why.to_string());
    };
    let letters = password.expose().chars().count();
    match account.provider.app_password_letters() {
        Some(n) if n != letters => PasswordCheck::Suspicious(format!(
            "Gmail app passwords are {n} letters; this one has {letters} after removing spaces"
        )),
        _ => PasswordCheck::Usable,
    }
}

/// A hint when the TLS mode does not match what the well-known port uses.
fn port_hint(e: &Endpoint) -> Option<String> {
    let expected = tls_for_port(e.port)?;
    (expected != e.tls).then(|| {
        format!(
            "port {} normally uses {} TLS, but tls = \"{}\" is configured",
            e.port, expected, e.tls
        )
    })
}

/// Belt and braces: never show the password even if an error text carried it.
fn scrub(text: &str, account: &Account) -> String {
    match account.password.secret() {
        Some(p) if !p.is_empty() => text.replace(p.expose(), "***"),
        _ => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TlsMode;

    fn endpoint(port: u16, tls: TlsMode) -> Endpoint {
        Endpoint {
            host: "mail.example.com".into(),
            port,
            tls,
        }
    }

    #[test]
    fn port_hint_only_when_the_mode_disagrees_with_a_well_known_port() {
        assert_eq!(port_hint(&endpoint(465, TlsMode::Implicit)), None);
        assert_eq!(port_hint(&endpoint(2525, TlsMode::Implicit)), None);
        let hint = port_hint(&endpoint(465, TlsMode::Starttls)).unwrap();
        assert!(
            hint.starts_with("port 465 normally uses implicit TLS"),
            "{hint}"
        );
    }

    fn account(provider: &str, password: &str) -> Account {
        let text = format!(
            "[[accounts]]\nname = \"a\"\nprovider = \"{provider}\"\nusername = \"u@example.com\"\npassword = \"{password}\"\n\
             smtp = {{ host = \"h\", port = 465 }}\nimap = {{ host = \"h\", port = 993 }}\n"
        );
        let c = Config::parse(&text, std::path::Path::new("/x/relay.toml")).unwrap();
        c.accounts[0].clone()
    }

    #[test]
    fn password_check_flags_short_gmail_app_passwords_and_unusable_ones() {
        let ok = password_check(&account("gmail", "abcd efgh ijkl mnoq"));
        assert_eq!(ok, PasswordCheck::Usable);
        let short = password_check(&account("gmail", "abc"));
        assert!(
            matches!(&short, PasswordCheck::Suspicious(w) if w.contains("has 3")),
            "{short:?}"
        );
        assert_eq!(
            password_check(&account("custom", "abc")),
            PasswordCheck::Usable
        );
        let example = password_check(&account("custom", "abcd efgh ijkl mnop"));
        assert!(
            matches!(&example, PasswordCheck::Unusable(w) if w.contains("example")),
            "{example:?}"
        );
    }

    #[test]
    fn report_passes_only_when_every_probe_and_password_is_fine() {
        let probe = |result| Probe {
            protocol: Protocol::Smtp,
            endpoint: endpoint(465, TlsMode::Implicit),
            port_hint: None,
            result,
        };
        let report = |password, probes| Report {
            config: "relay.toml".into(),
            users: 0,
            permission_warning: None,
            accounts: vec![AccountReport {
                name: "a".into(),
                username: "u".into(),
                provider: "gmail".into(),
                password,
                probes,
            }],
        };
        assert!(report(PasswordCheck::Usable, vec![probe(Ok("ok".into()))]).passed());
        assert!(report(PasswordCheck::Suspicious("w".into()), vec![]).passed());
        assert!(!report(PasswordCheck::Usable, vec![probe(Err("no".into()))]).passed());
        assert!(!report(PasswordCheck::Unusable("none".into()), vec![]).passed());
    }
}
