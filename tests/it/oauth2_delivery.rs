//! SMTP delivery for `auth = "oauth2"` accounts, in-process daemon against
//! the in-process TLS upstream (XOAUTH2 with a set of valid tokens, a bad
//! one answered Gmail-style) and the HTTPS token endpoint: delivered with a
//! token; a token expiring mid-run refreshed once for concurrent deliveries
//! and the pooled connection of the old token not reused; a refused token
//! refreshed once and retried; refused twice -> waits with the reason; a
//! revoked grant -> held (typed), logged once, in `queue list --json`,
//! `/healthz` and metrics, then released by a new token file without a
//! restart; a password account next to it unaffected; no token in the logs
//! at trace level.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use mailbridge::oauth2::manager::REFRESH_MARGIN;
use mailbridge::oauth2::store::{now_ms, StoredToken, TokenStore};
use mailbridge::secret::Secret;
use mailbridge::spool::{EntryState, Envelope, HoldReason, QueueId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::ca::TestCa;
use crate::support::config::Account;
use crate::support::delivery::{eventually, PASSWORD, USER};
use crate::support::logs::{capture, LogBuf};
use crate::support::process::{queue, stdout};
use crate::support::smtp_upstream::{Mode, SmtpUpstream};
use crate::support::token_endpoint::{TokenServer, DEVICE_RT, REFRESHED_AT, ROTATED_RT};
use mailbridge::Daemon;

/// Long enough for the worker's 5 s rescan to come round twice.
const WAIT: Duration = Duration::from_secs(15);

/// The daemon's config: account "oauth" (XOAUTH2, tokens from `token_port`)
/// and "pw" (a password) at the same upstream, with the metrics listener.
fn toml(up: &SmtpUpstream, token_port: u16, ca: &TestCa, delivery: &str) -> String {
    toml_with(up, token_port, ca, delivery, None)
}

/// [`toml`], with "oauth"'s IMAP and POP3 servers at these ports.
fn toml_with(
    up: &SmtpUpstream,
    token_port: u16,
    ca: &TestCa,
    delivery: &str,
    mailboxes: Option<(u16, u16)>,
) -> String {
    let url = |p: &str| format!("https://localhost:{token_port}{p}");
    let mut oauth = Account::new(USER, "")
        .name("oauth")
        .password_line("")
        .ca_file(ca.ca_file.display())
        .smtp(up.port(), "implicit");
    if let Some((imap, pop3)) = mailboxes {
        oauth = oauth.imap(imap, "implicit").pop3(pop3, "implicit");
    }
    let oauth = oauth.line("auth = \"oauth2\"").line(&format!(
        "[accounts.oauth2]\nprovider = \"custom\"\nclient_id = \"dev-ok\"\nflow = \"device\"\n\
             scopes = [\"mail\", \"offline\"]\ntoken_url = \"{}\"\ndevice_url = \"{}\"",
        url("/token"),
        url("/device")
    ));
    let pw = Account::new(USER, "app pass word")
        .name("pw")
        .ca_file(ca.ca_file.display())
        .smtp(up.port(), "implicit");
    format!(
        "default_account = \"pw\"\n[smtp]\nlisten = [\"127.0.0.1:0\"]\n\n[imap]\nlisten = [\"127.0.0.1:0\"]\n\n\
         [metrics]\nlisten = \"127.0.0.1:0\"\n\n[delivery]\ntimeout = \"5s\"\n{delivery}\n\n{oauth}\n{pw}"
    )
}

/// A token file as `mailbridge auth` writes it, expiring `expires_in_ms` from now.
fn token(access: &str, refresh: &str, expires_at_ms: u64) -> StoredToken {
    StoredToken {
        access_token: Secret::new(access),
        refresh_token: Some(Secret::new(refresh)),
        expires_at_ms: Some(expires_at_ms),
        scopes: vec!["mail".into(), "offline".into()],
        // Obtained an hour ago, as a Microsoft or Google token: the full
        // refresh margin applies (a token living less than the margin is
        // refreshed at half its life instead).
        obtained_at_ms: now_ms().saturating_sub(3_600_000),
    }
}

fn store_token(spool_dir: &Path, t: &StoredToken) {
    TokenStore::new(spool_dir).save("oauth", t).unwrap();
}

struct Setup {
    ca: TestCa,
    up: SmtpUpstream,
    tokens: TokenServer,
    dir: tempfile::TempDir,
}

/// The upstream and the token endpoint; the daemon's spool is in `dir` (to
/// store the token before the daemon starts).
async fn setup() -> Setup {
    let ca = TestCa::new();
    let up = SmtpUpstream::start(&ca.server_cert(), Mode::Implicit, USER, PASSWORD).await;
    up.script().mechanisms = Some(vec!["PLAIN", "LOGIN", "XOAUTH2"]);
    let tokens = TokenServer::start(&ca).await;
    let dir = tempfile::tempdir().unwrap();
    Setup {
        ca,
        up,
        tokens,
        dir,
    }
}

impl Setup {
    fn spool_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("spool")
    }

    /// The daemon in-process, its relay.toml and spool in `dir`.
    async fn daemon(&self, delivery: &str) -> Daemon {
        let text = toml(&self.up, self.tokens.port, &self.ca, delivery);
        let path = self.dir.path().join("relay.toml");
        std::fs::write(&path, &text).unwrap();
        let config = mailbridge::config::Config::load(&path).unwrap();
        Daemon::start(config).await.unwrap()
    }

    fn refreshes(&self) -> usize {
        self.tokens.seen.lock().unwrap().refreshes.len()
    }
}

/// Queues one message for `account` (without waking the worker).
async fn enqueue(d: &Daemon, account: &str, n: usize) -> QueueId {
    let envelope = Envelope {
        account: account.into(),
        mail_from: "scanner@local".into(),
        recipients: vec![format!("to{n}@example.org")],
        client: "127.0.0.1:40000".into(),
        helo: "scanner".into(),
        local_user: None,
        smtputf8: false,
        body_8bit: false,
    };
    let body = format!("Subject: {account} {n}\r\n\r\nhello\r\n");
    d.context
        .spool
        .enqueue(&envelope, body.as_bytes())
        .await
        .unwrap()
}

async fn feed(d: &Daemon, account: &str, n: usize) -> QueueId {
    let id = enqueue(d, account, n).await;
    d.context.wake_delivery.notify_one();
    id
}

/// (status code, body) of a GET to the metrics listener.
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut raw))
        .await
        .expect("metrics response timed out")
        .unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (
        head.split(' ').nth(1).unwrap().parse().unwrap(),
        body.into(),
    )
}

fn assert_no_token(logs: &LogBuf, tokens: &[&str]) {
    let text = logs.text();
    assert!(!text.is_empty(), "nothing was captured");
    for t in tokens.iter().chain([&DEVICE_RT, &ROTATED_RT]) {
        assert!(!text.contains(t), "{t} leaked into the log:\n{text}");
    }
}

#[tokio::test]
async fn mail_goes_out_with_the_token_next_to_a_password_account() {
    let (logs, _guard) = capture(tracing::Level::TRACE);
    let s = setup().await;
    store_token(
        &s.spool_dir(),
        &token("AT-good-1", DEVICE_RT, now_ms() + 3_600_000),
    );
    s.up.accept_token("AT-good-1");
    let d = s.daemon("").await;
    feed(&d, "oauth", 1).await;
    feed(&d, "pw", 2).await;
    let got = s.up.wait_for(2, WAIT).await;
    let by = |subject: &str| {
        got.iter()
            .find(|r| String::from_utf8_lossy(&r.data).contains(subject))
            .unwrap_or_else(|| panic!("{subject} not received: {got:#?}"))
    };
    assert_eq!(by("oauth 1").auth_secret, "AT-good-1");
    assert_eq!(
        by("pw 2").auth_secret,
        PASSWORD,
        "the password account as before"
    );
    let mechs: Vec<String> = s.up.auths().iter().map(|a| a.mechanism.clone()).collect();
    assert!(
        mechs.contains(&"XOAUTH2".to_string()) && mechs.contains(&"PLAIN".to_string()),
        "{mechs:?}"
    );
    assert_eq!(s.refreshes(), 0, "a valid token is used as it is");
    d.shutdown().await;
    assert_no_token(&logs, &["AT-good-1"]);
}

#[tokio::test]
async fn a_token_expiring_mid_run_is_refreshed_once_for_concurrent_deliveries() {
    let (logs, _guard) = capture(tracing::Level::TRACE);
    let s = setup().await;
    // Due for refresh 4 s from now (expiry minus the refresh margin).
    let lead = Duration::from_secs(4);
    let due = tokio::time::Instant::now() + lead;
    let expires = now_ms() + (REFRESH_MARGIN + lead).as_millis() as u64;
    store_token(&s.spool_dir(), &token("AT-first-2", DEVICE_RT, expires));
    s.up.accept_token("AT-first-2");
    s.up.accept_token(REFRESHED_AT);
    let d = s.daemon("concurrency = 4").await;
    feed(&d, "oauth", 0).await;
    let got = s.up.wait_for(1, WAIT).await;
    assert_eq!(got[0].auth_secret, "AT-first-2");
    assert_eq!(s.refreshes(), 0);

    // The token's refresh time passes (the clock, not an event, is waited for);
    // its connection is still in the pool, idle for less than 30 s.
    tokio::time::sleep_until(due + Duration::from_millis(200)).await;
    for n in 1..=4 {
        enqueue(&d, "oauth", n).await;
    }
    d.context.wake_delivery.notify_one();
    let got = s.up.wait_for(5, WAIT).await;
    for r in &got[1..] {
        assert_eq!(
            r.auth_secret, REFRESHED_AT,
            "an old-token connection was reused: {r:#?}"
        );
        assert_ne!(r.connection, got[0].connection);
    }
    assert_eq!(
        s.refreshes(),
        1,
        "one token request for 4 concurrent deliveries"
    );
    d.shutdown().await;
    let text = logs.text();
    assert!(!text.contains("deferred"), "{text}");
    assert_no_token(&logs, &["AT-first-2", REFRESHED_AT]);
}

#[tokio::test]
async fn a_refused_token_is_refreshed_once_and_retried_on_a_new_connection() {
    let (logs, _guard) = capture(tracing::Level::TRACE);
    let s = setup().await;
    // Not expired by its file, but the provider no longer takes it.
    store_token(
        &s.spool_dir(),
        &token("AT-stale-3", DEVICE_RT, now_ms() + 3_600_000),
    );
    s.up.accept_token(REFRESHED_AT);
    let d = s.daemon("").await;
    feed(&d, "oauth", 1).await;
    let got = s.up.wait_for(1, WAIT).await;
    assert_eq!(got[0].auth_secret, REFRESHED_AT);
    let auths: Vec<(String, bool)> =
        s.up.auths()
            .iter()
            .map(|a| (a.password.clone(), a.ok))
            .collect();
    assert_eq!(
        auths,
        vec![
            ("AT-stale-3".to_string(), false),
            (REFRESHED_AT.to_string(), true)
        ]
    );
    assert_eq!(s.up.connections(), 2, "the retry is on a new connection");
    assert_eq!(s.refreshes(), 1);
    d.shutdown().await;
    let text = logs.text();
    assert!(!text.contains("deferred"), "{text}");
    assert!(text.contains("refused the OAuth2 access token"), "{text}");
    assert_no_token(&logs, &["AT-stale-3", REFRESHED_AT]);
}

#[tokio::test]
async fn a_token_refused_after_its_refresh_waits_with_the_providers_reply() {
    let (logs, _guard) = capture(tracing::Level::TRACE);
    let s = setup().await;
    store_token(
        &s.spool_dir(),
        &token("AT-stale-4", DEVICE_RT, now_ms() + 3_600_000),
    );
    // No token is accepted: the refreshed one is refused too.
    let d = s.daemon("retry_initial = \"1h\"\nretry_max = \"1h\"").await;
    let id = feed(&d, "oauth", 1).await;
    let spool = d.context.spool.clone();
    let e = eventually("deferred", WAIT, || async {
        spool
            .entry(&id)
            .ok()
            .filter(|e| e.state == EntryState::Deferred)
    })
    .await;
    assert_eq!(s.up.auths().len(), 2, "one retry, not more");
    assert_eq!(s.refreshes(), 1);
    let reason = e.last_error.unwrap_or_default();
    assert!(
        reason.contains("AUTH XOAUTH2") && reason.contains("535") && reason.contains("5.7.8"),
        "{reason}"
    );
    assert!(
        reason.contains("status 401") && reason.contains("OAuth2 token"),
        "{reason}"
    );
    assert!(s.up.received().is_empty());
    d.shutdown().await;
    let text = logs.text();
    assert!(
        text.contains("WARN") && text.contains("deferred"),
        "a config-type failure is a warning:\n{text}"
    );
    assert_no_token(&logs, &["AT-stale-4", REFRESHED_AT]);
}

#[tokio::test]
async fn a_revoked_grant_holds_the_mail_loudly_once_until_a_new_token_is_stored() {
    let (logs, _guard) = capture(tracing::Level::TRACE);
    let s = setup().await;
    // Expired, and its refresh token was revoked: the endpoint says invalid_grant.
    store_token(
        &s.spool_dir(),
        &token("AT-old-5", "RT-revoked-5", now_ms() - 1000),
    );
    // Held mail is due again only after an hour: the release must come from the token file.
    let d = s.daemon("retry_initial = \"1h\"\nretry_max = \"1h\"").await;
    let metrics = d.metrics_addr.unwrap();
    let ids = [feed(&d, "oauth", 1).await, feed(&d, "oauth", 2).await];
    let spool = d.context.spool.clone();
    for id in &ids {
        let e = eventually("held", WAIT, || async {
            spool.entry(id).ok().filter(|e| e.state == EntryState::Held)
        })
        .await;
        assert!(
            matches!(&e.hold, Some(HoldReason::NeedsReauthorization { account, reason })
                if account == "oauth" && reason.contains("invalid_grant")),
            "{:?}",
            e.hold
        );
    }
    // The password account is not affected.
    feed(&d, "pw", 3).await;
    let got = s.up.wait_for(1, WAIT).await;
    assert_eq!(got[0].auth_secret, PASSWORD);

    let o = queue(s.dir.path(), &["list", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let held: Vec<&serde_json::Value> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["hold"]["kind"] == "needs-reauthorization")
        .collect();
    assert_eq!(held.len(), 2, "{list:#}");
    assert_eq!(held[0]["state"], "held");
    assert_eq!(held[0]["hold"]["account"], "oauth");
    let text_list = stdout(&queue(s.dir.path(), &["list"]));
    assert!(text_list.contains("mailbridge auth oauth"), "{text_list}");

    let (status, body) = get(metrics, "/healthz").await;
    let h: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (status, h["status"].as_str()),
        (200, Some("degraded")),
        "{body}"
    );
    let why = h["reauthorization_needed"]["oauth"].as_str().unwrap_or("");
    assert!(
        why.contains("invalid_grant") && why.contains("mailbridge auth oauth"),
        "{body}"
    );
    let (_, m) = get(metrics, "/metrics").await;
    assert!(
        m.contains("mailbridge_oauth2_reauthorization_needed{account=\"oauth\"} 1"),
        "{m}"
    );
    for t in ["AT-old-5", "RT-revoked-5"] {
        assert!(!body.contains(t) && !m.contains(t) && !o.stdout.is_empty());
        assert!(!String::from_utf8_lossy(&o.stdout).contains(t));
    }

    // `mailbridge auth` stores a new token: picked up on the rescan, no restart.
    store_token(
        &s.spool_dir(),
        &token("AT-new-5", "RT-new-5", now_ms() + 3_600_000),
    );
    s.up.accept_token("AT-new-5");
    let got = s.up.wait_for(3, WAIT).await;
    let oauth: Vec<_> = got.iter().filter(|r| r.auth_secret == "AT-new-5").collect();
    assert_eq!(oauth.len(), 2, "{got:#?}");
    eventually("queue empty", WAIT, || async {
        spool.list_queued().unwrap().is_empty().then_some(())
    })
    .await;
    let (status, body) = get(metrics, "/healthz").await;
    assert_eq!(status, 200);
    assert!(body.contains("\"status\": \"ok\""), "{body}");
    let (_, m) = get(metrics, "/metrics").await;
    assert!(
        m.contains("mailbridge_oauth2_reauthorization_needed{account=\"oauth\"} 0"),
        "{m}"
    );
    assert_eq!(
        s.refreshes(),
        1,
        "the lost grant is not asked again on every rescan"
    );
    d.shutdown().await;

    let text = logs.text();
    let loud: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("ERROR") && l.contains("mailbridge auth oauth"))
        .collect();
    assert_eq!(loud.len(), 1, "logged loudly once per loss:\n{text}");
    assert!(text.contains("has an OAuth2 token again"), "{text}");
    assert_no_token(&logs, &["AT-old-5", "RT-revoked-5", "AT-new-5", "RT-new-5"]);
}

#[tokio::test]
async fn an_oauth2_account_without_a_token_is_warned_about_at_start_not_for_a_password() {
    let (logs, _guard) = capture(tracing::Level::INFO);
    let s = setup().await;
    let d = s.daemon("").await;
    d.shutdown().await;
    let text = logs.text();
    assert!(
        text.contains("NO OAUTH2 TOKEN") && text.contains("run `mailbridge auth oauth`"),
        "{text}"
    );
    assert!(!text.contains("NO USABLE PASSWORD"), "{text}");
}

#[tokio::test]
async fn check_refreshes_the_token_and_logs_in_with_xoauth2_to_smtp_imap_and_pop3() {
    use crate::support::imap_upstream::ImapUpstream;
    use crate::support::pop3_upstream::{self, Pop3Upstream};

    let (logs, _guard) = capture(tracing::Level::TRACE);
    let s = setup().await;
    // Expired: check must refresh it first (DEVICE_RT -> REFRESHED_AT).
    store_token(
        &s.spool_dir(),
        &token("AT-old-6", DEVICE_RT, now_ms() - 1000),
    );
    s.up.accept_token(REFRESHED_AT);
    let imap = ImapUpstream::start(&s.ca.server_cert(), USER, REFRESHED_AT).await;
    let pop3 = Pop3Upstream::start(
        &s.ca.server_cert(),
        USER,
        REFRESHED_AT,
        pop3_upstream::Mode::Implicit,
    )
    .await;
    let ports = Some((imap.port(), pop3.port()));
    let text = toml_with(&s.up, s.tokens.port, &s.ca, "", ports)
        .replace("[imap]\n", "[pop3]\nlisten = [\"127.0.0.1:0\"]\n\n[imap]\n");
    let path = s.dir.path().join("relay.toml");
    std::fs::write(&path, &text).unwrap();
    let config = mailbridge::config::Config::load(&path).unwrap();
    let report = mailbridge::check::run(&config).await;
    let oauth = report.accounts.iter().find(|a| a.name == "oauth").unwrap();
    let results: Vec<_> = oauth
        .probes
        .iter()
        .map(|p| (p.protocol, p.result.clone()))
        .collect();
    assert_eq!(results.len(), 3, "{results:?}");
    for (proto, r) in &results {
        assert!(r.is_ok(), "{proto}: {r:?}");
    }
    assert!(
        results[0].1.as_ref().unwrap().contains("with XOAUTH2"),
        "{results:?}"
    );
    assert_eq!(s.refreshes(), 1, "one refresh shared by the three logins");
    let xoauth2: Vec<bool> =
        s.up.auths()
            .iter()
            .filter(|a| a.mechanism == "XOAUTH2")
            .map(|a| a.ok)
            .collect();
    assert_eq!(
        xoauth2,
        vec![true],
        "one SMTP XOAUTH2 login (the password account used PLAIN)"
    );
    let shown = format!("{report:?}");
    for t in ["AT-old-6", REFRESHED_AT, DEVICE_RT, ROTATED_RT] {
        assert!(!shown.contains(t), "{t} in the check report: {shown}");
    }
    // Without a token: every probe says to run `mailbridge auth`.
    TokenStore::new(&s.spool_dir()).remove("oauth").unwrap();
    let report = mailbridge::check::run(&config).await;
    let oauth = report.accounts.iter().find(|a| a.name == "oauth").unwrap();
    for p in &oauth.probes {
        let e = p.result.as_ref().unwrap_err();
        assert!(e.contains("mailbridge auth oauth"), "{e}");
    }
    drop(logs);
}
