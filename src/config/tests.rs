//! Unit tests for parsing and validation.
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
    assert_eq!(a.password.secret().unwrap().expose(), "wxyzefghijklmnop");
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
    let t =
        format!("[smtp]\nlisten = [\"0.0.0.0:2525\"]\nallowed_networks = [\"0.0.0.0/0\"]\n{MIN}");
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
    match &c.accounts[0].password {
        Password::Missing { why } => assert!(why.contains("MAILBRIDGE_TEST_UNSET_VAR"), "{why}"),
        other => panic!("{other:?}"),
    }
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

#[test]
fn gmail_gets_daily_limit_custom_does_not() {
    let c = parse(MIN).unwrap();
    assert_eq!(c.accounts[0].daily_limit, Some(GMAIL_DAILY_LIMIT));
    assert_eq!(c.accounts[0].sent_copy, SentCopy::Keep);
    let c = parse(&format!("{MIN}daily_limit = 0\nsent_copy = \"skip\"\n")).unwrap();
    assert_eq!(c.accounts[0].daily_limit, None);
    assert_eq!(c.accounts[0].sent_copy, SentCopy::Skip);
}

#[test]
fn implicit_tls_listeners_need_cert_and_key() {
    let e = parse(&format!(
        "[smtp]\nsmtps_listen = [\"127.0.0.1:4465\"]\n{MIN}"
    ))
    .unwrap_err();
    assert_eq!(e.key, "smtp.smtps_listen");
    let t = format!("tls_cert = \"certs/localhost.pem\"\ntls_key = \"certs/localhost.key\"\n[imap]\nimaps_listen = [\"127.0.0.1:1993\"]\n[metrics]\nlisten = \"127.0.0.1:9925\"\n{MIN}");
    let c = parse(&t).unwrap();
    assert_eq!(
        c.tls.unwrap().cert,
        PathBuf::from("/etc/mailbridge/certs/localhost.pem")
    );
    assert_eq!(c.imap.imaps_listen.len(), 1);
    assert!(c.metrics.listen.is_some());
    let e = parse(&format!("tls_cert = \"a.pem\"\n{MIN}")).unwrap_err();
    assert_eq!(e.key, "tls_key");
}

#[test]
fn envelope_address_cannot_carry_smtp_syntax() {
    let t = format!("{MIN}address = \"me@example.com>\\r\\nRCPT TO:<x@y\"\n");
    let e = parse(&t).unwrap_err();
    assert_eq!(e.key, "accounts[0].address");
}

#[test]
fn lf_only_allowance_and_send_as() {
    let c = parse(MIN).unwrap();
    assert!(c.smtp.allow_lf_only_clients);
    assert!(c.accounts[0].send_as.is_empty());
    let c = parse(&format!(
        "[smtp]\nallow_lf_only_clients = false\n{MIN}send_as = [\"office@example.com\"]\n"
    ))
    .unwrap();
    assert!(!c.smtp.allow_lf_only_clients);
    assert_eq!(c.accounts[0].send_as, vec!["office@example.com"]);
    let e = parse(&format!("{MIN}send_as = [\"office\"]\n")).unwrap_err();
    assert_eq!(e.key, "accounts[0].send_as");
}

#[test]
fn allowlists_covering_public_space_need_a_login() {
    let user = "[[users]]\nname = \"dev\"\npassword_hash = \"$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$zJ0ZzP1nu0Bb/5kDv3r2Q1M4v8s3qQ4a8Yb6e2c2Cg8\"\naccount = \"gmail\"\n";
    for nets in [
        "\"0.0.0.0/1\", \"128.0.0.0/1\"",
        "\"192.168.1.0/24\", \"203.0.114.7/32\"",
        "\"::/1\"",
    ] {
        let smtp = format!("[smtp]\nlisten = [\"0.0.0.0:2525\"]\nallowed_networks = [{nets}]\n");
        let e = parse(&format!("{smtp}{MIN}")).unwrap_err();
        assert_eq!(e.key, "smtp.allowed_networks", "{nets}");
        assert!(e.message.contains("open relay") && e.message.contains("require_auth = true"));
        assert!(
            parse(&format!("{smtp}require_auth = true\n{MIN}{user}")).is_ok(),
            "{nets}"
        );
        let imap = format!("[imap]\nlisten = [\"[::]:1143\"]\nallowed_networks = [{nets}]\n");
        assert!(parse(&format!("{imap}{MIN}")).is_ok(), "{nets}");
        let e = parse(&format!("{imap}passthrough = true\n{MIN}")).unwrap_err();
        assert_eq!(e.key, "imap.allowed_networks", "{nets}");
        assert!(e.message.contains("open login proxy"), "{e}");
    }
    // Local networks only: no login needed, even with passthrough.
    let local = "allowed_networks = [\"10.0.0.0/8\", \"100.64.0.0/10\", \"fd00::/8\"]\n";
    let t = format!("[smtp]\nlisten = [\"0.0.0.0:2525\"]\n{local}[imap]\nlisten = [\"0.0.0.0:1143\"]\npassthrough = true\n{local}{MIN}");
    assert!(parse(&t).is_ok());
}

// --- tls_profile (the legacy profile itself: crate::legacy_tls)

const CERT: &str = "tls_cert = \"certs/localhost.pem\"\ntls_key = \"certs/localhost.key\"\n";

#[test]
fn tls_profile_defaults_to_modern() {
    let c = parse(&format!("{CERT}{MIN}")).unwrap();
    assert_eq!(c.smtp.tls_profile, TlsProfile::Modern);
    assert_eq!(c.imap.tls_profile, TlsProfile::Modern);
    let c = parse(&format!("{CERT}[smtp]\ntls_profile = \"modern\"\n{MIN}")).unwrap();
    assert_eq!(c.smtp.tls_profile, TlsProfile::Modern);
}

#[test]
fn tls_profile_unknown_is_refused() {
    let e = parse(&format!("{CERT}[smtp]\ntls_profile = \"old\"\n{MIN}")).unwrap_err();
    assert!(e.to_string().contains("unknown variant `old`"), "{e}");
}

#[cfg(not(feature = "legacy-tls"))]
#[test]
fn tls_profile_legacy_without_the_feature_refuses_to_start() {
    for section in ["smtp", "imap"] {
        let t = format!("{CERT}[{section}]\ntls_profile = \"legacy\"\n{MIN}");
        let e = parse(&t).unwrap_err();
        assert_eq!(e.key, format!("{section}.tls_profile"));
        assert!(
            e.to_string()
                .contains("cargo build --release --features legacy-tls"),
            "{e}"
        );
    }
}

#[cfg(feature = "legacy-tls")]
#[test]
fn tls_profile_legacy_with_the_feature_parses_and_needs_a_certificate() {
    let c = parse(&format!("{CERT}[imap]\ntls_profile = \"legacy\"\n{MIN}")).unwrap();
    assert_eq!(c.imap.tls_profile, TlsProfile::Legacy);
    assert_eq!(c.smtp.tls_profile, TlsProfile::Modern);
    let e = parse(&format!("[smtp]\ntls_profile = \"legacy\"\n{MIN}")).unwrap_err();
    assert_eq!(e.key, "smtp.tls_profile");
    assert!(e.to_string().contains("tls_cert and tls_key"), "{e}");
}

#[test]
fn metrics_access_keys_default_to_loopback_and_check_host_names() {
    let c = parse(MIN).unwrap();
    assert_eq!(c.metrics.allowed_networks, default_allowed());
    assert!(c.metrics.allowed_hosts.is_empty());
    let c = parse(&format!(
        "[metrics]\nlisten = \"127.0.0.1:9925\"\nallowed_networks = [\"192.168.1.0/24\"]\nallowed_hosts = [\"Relay.LAN.\", \"nas\"]\n{MIN}"
    ))
    .unwrap();
    assert_eq!(
        c.metrics.allowed_networks,
        vec!["192.168.1.0/24".parse::<IpNet>().unwrap()]
    );
    assert_eq!(c.metrics.allowed_hosts, ["relay.lan", "nas"]);
    for bad in ["relay.lan:9925", "http://relay.lan", "", "a..b", "bad name"] {
        let e = parse(&format!("[metrics]\nallowed_hosts = [\"{bad}\"]\n{MIN}")).unwrap_err();
        assert_eq!(e.key, "metrics.allowed_hosts", "{bad:?}");
    }
    let e = parse(&format!("[metrics]\nallowed_networks = []\n{MIN}")).unwrap_err();
    assert_eq!(e.key, "metrics.allowed_networks");
}

#[test]
fn message_buffer_budget_defaults_to_24_mib_and_has_a_floor() {
    assert_eq!(
        parse(MIN).unwrap().delivery.message_buffer_budget,
        24 * 1024 * 1024
    );
    let set = |v: usize| parse(&format!("[delivery]\nmessage_buffer_budget = {v}\n{MIN}"));
    assert_eq!(set(65536).unwrap().delivery.message_buffer_budget, 65536);
    let e = set(65535).unwrap_err().to_string();
    assert!(
        e.contains("delivery.message_buffer_budget") && e.contains("at least 65536"),
        "{e}"
    );
}

fn microsoft(provider: &str, extra: &str) -> Result<Config, ConfigError> {
    parse(&format!(
        "[[accounts]]\nname = \"ms\"\nprovider = \"{provider}\"\nusername = \"me@example.com\"\n{extra}"
    ))
}

#[test]
fn outlook_and_microsoft365_default_to_oauth2_with_the_microsoft_preset() {
    use crate::oauth2::config::{Flow, Provider as OAuth2Provider};
    let table = "[accounts.oauth2]\nclient_id = \"00000000-1111-2222-3333-444444444444\"\n";
    let c = microsoft("outlook", table).unwrap();
    let a = &c.accounts[0];
    let s = a.oauth2.as_ref().expect("oauth2 without auth = \"oauth2\"");
    assert_eq!(s.provider, OAuth2Provider::Microsoft);
    assert_eq!(s.tenant.as_deref(), Some("consumers"));
    assert_eq!(s.flow, Flow::Device);
    assert_eq!(
        s.token_url,
        "https://login.microsoftonline.com/consumers/oauth2/v2.0/token"
    );
    assert_eq!(a.smtp.host, "smtp-mail.outlook.com");

    let c = microsoft("microsoft365", table).unwrap();
    let a = &c.accounts[0];
    let s = a.oauth2.as_ref().unwrap();
    assert_eq!(s.tenant.as_deref(), Some("organizations"));
    assert!(s
        .scopes
        .iter()
        .any(|x| x.ends_with("IMAP.AccessAsUser.All")));
    assert_eq!(
        (a.smtp.host.as_str(), a.smtp.port),
        ("smtp.office365.com", 587)
    );
    assert_eq!(a.pop3.as_ref().unwrap().port, 995);

    // A tenant the user wrote wins; client credentials need the tenant's own id.
    let c = microsoft(
        "microsoft365",
        &format!("{table}tenant = \"contoso.onmicrosoft.com\"\nflow = \"client_credentials\"\nclient_secret = \"s\"\n"),
    )
    .unwrap();
    let s = c.accounts[0].oauth2.as_ref().unwrap();
    assert_eq!(s.tenant.as_deref(), Some("contoso.onmicrosoft.com"));
    assert_eq!(s.scopes, vec!["https://outlook.office365.com/.default"]);
    let e = microsoft(
        "microsoft365",
        &format!("{table}flow = \"client_credentials\"\nclient_secret = \"s\"\n"),
    )
    .unwrap_err();
    assert_eq!(e.key, "accounts[0].oauth2.tenant");
    let e = microsoft(
        "outlook",
        &format!("{table}flow = \"client_credentials\"\nclient_secret = \"s\"\n"),
    )
    .unwrap_err();
    assert_eq!(e.key, "accounts[0].oauth2.tenant");
}

#[test]
fn microsoft_accounts_without_an_oauth2_table_are_told_what_to_add() {
    let e = microsoft("outlook", "").unwrap_err();
    assert_eq!(e.key, "accounts[0].oauth2");
    assert!(e.to_string().contains("client_id"), "{e}");
    assert!(e.to_string().contains("mailbridge auth ms"), "{e}");
    // A config written before OAuth2 (password only) keeps loading as a password account.
    let c = microsoft("outlook", "password = \"old-app-password\"\n").unwrap();
    assert!(c.accounts[0].oauth2.is_none());
    assert!(c.accounts[0].password.secret().is_some());
    // And auth = "password" can be written explicitly.
    let c = microsoft("microsoft365", "auth = \"password\"\npassword = \"pw\"\n").unwrap();
    assert!(c.accounts[0].oauth2.is_none());
    let e = microsoft(
        "microsoft365",
        "auth = \"password\"\n[accounts.oauth2]\nclient_id = \"x\"\n",
    )
    .unwrap_err();
    assert_eq!(e.key, "accounts[0].oauth2");
}
