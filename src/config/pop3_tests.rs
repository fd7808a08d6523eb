//! Unit tests for the `[pop3]` section and the per-account POP3 keys.
use super::*;

fn parse(t: &str) -> Result<Config, ConfigError> {
    Config::parse(t, Path::new("/etc/mailbridge/relay.toml"))
}

fn hash() -> &'static str {
    static H: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    H.get_or_init(|| crate::auth::hash_password("pw").unwrap())
}

fn account(provider: &str, extra: &str) -> String {
    format!(
        "[[accounts]]\nname = \"a\"\nprovider = \"{provider}\"\nusername = \"u@example.com\"\npassword = \"x\"\n{extra}\n"
    )
}

fn with_user(pop3: &str, provider: &str, extra: &str) -> String {
    format!(
        "{pop3}\n{}\n[[users]]\nname = \"dev\"\npassword_hash = \"{}\"\naccount = \"a\"\n",
        account(provider, extra),
        hash()
    )
}

#[test]
fn pop3_is_off_by_default_with_rfc_timeouts() {
    let c = parse(&account("gmail", "")).unwrap();
    assert!(c.pop3.listen.is_empty() && c.pop3.pop3s_listen.is_empty());
    assert!(!c.pop3.enabled());
    assert_eq!(c.pop3.idle_timeout, Duration::from_secs(600));
    assert_eq!(c.pop3.max_connections_per_account, DEFAULT_POP3_PER_ACCOUNT);
}

#[test]
fn pop3_presets() {
    for (provider, host) in [
        ("gmail", "pop.gmail.com"),
        ("outlook", "outlook.office365.com"),
        ("yahoo", "pop.mail.yahoo.com"),
        ("fastmail", "pop.fastmail.com"),
    ] {
        let c = parse(&account(provider, "")).unwrap();
        assert_eq!(
            c.accounts[0].pop3,
            Some(Endpoint {
                host: host.into(),
                port: 995,
                tls: TlsMode::Implicit
            }),
            "{provider}"
        );
    }
    assert_eq!(
        parse(&account("icloud", "")).unwrap().accounts[0].pop3,
        None
    );
    // A custom account: port 110 implies STLS.
    let c = parse(&account(
        "custom",
        "smtp = { host = \"h\", port = 465 }\nimap = { host = \"h\", port = 993 }\npop3 = { host = \"h\", port = 110 }",
    ))
    .unwrap();
    assert_eq!(c.accounts[0].pop3.as_ref().unwrap().tls, TlsMode::Starttls);
    // Overriding a preset's port keeps its host.
    let c = parse(&account(
        "gmail",
        "pop3 = { port = 1995, tls = \"implicit\" }",
    ))
    .unwrap();
    assert_eq!(c.accounts[0].pop3.as_ref().unwrap().host, "pop.gmail.com");
}

#[test]
fn icloud_with_a_pop3_listener_is_an_error_naming_the_key() {
    let e = parse(&with_user(
        "[pop3]\nlisten = [\"127.0.0.1:1110\"]",
        "icloud",
        "",
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("accounts[0].pop3"), "{e}");
    assert!(e.contains("iCloud Mail offers no POP3"), "{e}");
    // Without a POP3 listener iCloud is fine.
    assert!(parse(&with_user("", "icloud", "")).is_ok());
}

#[test]
fn custom_without_pop3_and_a_listener_is_an_error() {
    let e = parse(&with_user(
        "[pop3]\nlisten = [\"127.0.0.1:1110\"]",
        "custom",
        "smtp = { host = \"h\", port = 465 }\nimap = { host = \"h\", port = 993 }",
    ))
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("accounts[0].pop3") && e.contains("add pop3 ="),
        "{e}"
    );
}

#[test]
fn recent_mode_is_gmail_only() {
    let c = parse(&account("gmail", "pop3_recent_mode = true")).unwrap();
    assert!(c.accounts[0].pop3_recent_mode);
    let e = parse(&account("yahoo", "pop3_recent_mode = true"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("accounts[0].pop3_recent_mode"), "{e}");
}

#[test]
fn pop3s_needs_local_tls() {
    let e = parse(&format!(
        "[pop3]\npop3s_listen = [\"127.0.0.1:1995\"]\n{}",
        account("gmail", "")
    ))
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("pop3.pop3s_listen") && e.contains("tls_cert"),
        "{e}"
    );
}

#[test]
fn passthrough_on_an_open_network_is_refused() {
    let e = parse(&format!(
        "[pop3]\nlisten = [\"0.0.0.0:1110\"]\npassthrough = true\nallowed_networks = [\"0.0.0.0/0\"]\n{}",
        account("gmail", "")
    ))
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("pop3.allowed_networks") && e.contains("open proxy"),
        "{e}"
    );
    // Without passthrough every login is checked locally: allowed.
    assert!(parse(&format!(
        "[pop3]\nlisten = [\"0.0.0.0:1110\"]\nallowed_networks = [\"0.0.0.0/0\"]\n{}",
        account("gmail", "")
    ))
    .is_ok());
    let e = parse(&format!(
        "[pop3]\nlisten = [\"nope\"]\n{}",
        account("gmail", "")
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("pop3.listen"), "{e}");
}
