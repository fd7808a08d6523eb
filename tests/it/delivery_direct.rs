//! Direct mode (`Upstream::send_direct`) and the login check (`check_login`)
//! against the in-process TLS SMTP upstream.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use crate::support::ca::TestCa;
use crate::support::daemon::start;
use crate::support::delivery::{config, envelope, Opts, PASSWORD, USER};
use crate::support::smtp_upstream::{Mode, SmtpUpstream, FORGED_AFTER_STARTTLS};
use mailbridge::check::smtp_login as check_login;
use mailbridge::config::{Account, Config};

fn account(o: &Opts) -> Account {
    Config::parse(&config(o), Path::new("/tmp/relay.toml"))
        .unwrap()
        .accounts
        .remove(0)
}

#[tokio::test]
async fn direct_mode_passes_upstream_replies_back() {
    let ca = TestCa::new();
    let up = SmtpUpstream::start(&ca.server_cert(), Mode::Implicit, USER, PASSWORD).await;
    let mut o = Opts::new(up.port(), "implicit", &ca.ca_file);
    o.smtp_extra = "mode = \"direct\"";
    let d = start(&config(&o)).await;
    let ctx = &d.daemon.context;
    let acct = ctx.config.account("test").unwrap();
    let env = envelope(&["a@example.org"]);

    let r = ctx
        .upstream
        .send_direct(acct, &env, std::sync::Arc::new(b"one\r\n"), &ctx.spool)
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    assert_eq!(up.received()[0].data, b"one\r\n");

    up.script().data_451 = 1;
    let r = ctx
        .upstream
        .send_direct(acct, &env, std::sync::Arc::new(b"two\r\n"), &ctx.spool)
        .await;
    assert_eq!(
        (r.code, r.enhanced.as_deref()),
        (451, Some("4.3.0")),
        "{r:?}"
    );

    up.script().data_reply = Some("554 5.7.0 rejected as spam".into());
    let r = ctx
        .upstream
        .send_direct(acct, &env, std::sync::Arc::new(b"three\r\n"), &ctx.spool)
        .await;
    assert_eq!(
        (r.code, r.enhanced.as_deref(), r.text.as_str()),
        (554, Some("5.7.0"), "rejected as spam")
    );
    up.script().data_reply = None;

    // Only some recipients rejected: 250, and the rejected one is kept in the failed area.
    up.script().reject_rcpts = HashSet::from(["bad@example.org".to_string()]);
    let env2 = envelope(&["a@example.org", "bad@example.org"]);
    let r = ctx
        .upstream
        .send_direct(acct, &env2, std::sync::Arc::new(b"four\r\n"), &ctx.spool)
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    let failed = ctx.spool.list_failed().unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].envelope.recipients, vec!["bad@example.org"]);
    assert!(
        ctx.spool.list_queued().unwrap().is_empty(),
        "direct mode queues nothing here"
    );
    d.stop().await;
}

#[tokio::test]
async fn direct_mode_unreachable_upstream_is_451_4_4_1() {
    let ca = TestCa::new();
    let mut o = Opts::new(1, "implicit", &ca.ca_file);
    o.smtp_extra = "mode = \"direct\"";
    let d = start(&config(&o)).await;
    let ctx = &d.daemon.context;
    let acct = ctx.config.account("test").unwrap();
    let r = ctx
        .upstream
        .send_direct(
            acct,
            &envelope(&["a@example.org"]),
            std::sync::Arc::new(b"x\r\n"),
            &ctx.spool,
        )
        .await;
    assert_eq!(
        (r.code, r.enhanced.as_deref()),
        (451, Some("4.4.1")),
        "{r:?}"
    );
    assert!(r.text.contains("refused"), "{r:?}");
    d.stop().await;
}

#[tokio::test]
async fn check_login_ok_and_wrong_password() {
    let ca = TestCa::new();
    let up = SmtpUpstream::start(&ca.server_cert(), Mode::Starttls, USER, PASSWORD).await;
    let o = Opts::new(up.port(), "starttls", &ca.ca_file);
    let ok = check_login(&account(&o), None, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(ok.contains("logged in as relay@example.com"), "{ok}");

    let mut o = Opts::new(up.port(), "starttls", &ca.ca_file);
    o.password_line = "password = \"wrong secret\"";
    let err = check_login(&account(&o), None, Duration::from_secs(5))
        .await
        .unwrap_err();
    eprintln!("{err}");
    assert!(err.contains("535"), "{err}");
    assert!(err.contains("2-step verification"), "{err}");
    assert!(
        !err.contains("wrongsecret") && !err.contains("wrong secret"),
        "password leaked: {err}"
    );
}

#[tokio::test]
async fn check_login_explains_tls_mode_and_certificate_problems() {
    let ca = TestCa::new();
    // Implicit TLS against a server that starts in plaintext (like 587).
    let plain = SmtpUpstream::start(&ca.server_cert(), Mode::Starttls, USER, PASSWORD).await;
    let err = check_login(
        &account(&Opts::new(plain.port(), "implicit", &ca.ca_file)),
        None,
        Duration::from_secs(3),
    )
    .await
    .unwrap_err();
    eprintln!("{err}");
    assert!(err.contains("implicit"), "{err}");

    // STARTTLS against an implicit-TLS server (like 465): no greeting ever comes.
    let tls = SmtpUpstream::start(&ca.server_cert(), Mode::Implicit, USER, PASSWORD).await;
    let err = check_login(
        &account(&Opts::new(tls.port(), "starttls", &ca.ca_file)),
        None,
        Duration::from_millis(700),
    )
    .await
    .unwrap_err();
    eprintln!("{err}");
    assert!(err.contains("no SMTP greeting"), "{err}");

    // A certificate from a CA we do not trust.
    let other = TestCa::named("untrusted CA");
    let err = check_login(
        &account(&Opts::new(tls.port(), "implicit", &other.ca_file)),
        None,
        Duration::from_secs(3),
    )
    .await
    .unwrap_err();
    eprintln!("{err}");
    assert!(err.contains("ca_file"), "{err}");
    assert!(tls.auths().is_empty() && plain.auths().is_empty());
}

#[tokio::test]
async fn check_login_explains_wrong_name_and_expired_certificates() {
    let ca = TestCa::new();
    let wrong = SmtpUpstream::start(&ca.wrong_name_cert(), Mode::Implicit, USER, PASSWORD).await;
    let err = check_login(
        &account(&Opts::new(wrong.port(), "implicit", &ca.ca_file)),
        None,
        Duration::from_secs(3),
    )
    .await
    .unwrap_err();
    assert!(err.contains("not valid for this host name"), "{err}");
    let expired = SmtpUpstream::start(&ca.expired_cert(), Mode::Starttls, USER, PASSWORD).await;
    let err = check_login(
        &account(&Opts::new(expired.port(), "starttls", &ca.ca_file)),
        None,
        Duration::from_secs(3),
    )
    .await
    .unwrap_err();
    assert!(err.contains("expired"), "{err}");
    assert!(wrong.auths().is_empty() && expired.auths().is_empty());
}

#[tokio::test]
async fn check_login_refuses_replies_injected_after_starttls() {
    let ca = TestCa::new();
    let up = SmtpUpstream::start(&ca.server_cert(), Mode::Starttls, USER, PASSWORD).await;
    up.script().after_starttls = Some(FORGED_AFTER_STARTTLS.into());
    let err = check_login(
        &account(&Opts::new(up.port(), "starttls", &ca.ca_file)),
        None,
        Duration::from_secs(5),
    )
    .await
    .expect_err("a login check must not pass on injected replies");
    eprintln!("{err}");
    assert!(err.contains("data after accepting STARTTLS"), "{err}");
    assert!(up.auths().is_empty(), "AUTH was sent: {:?}", up.auths());
}
