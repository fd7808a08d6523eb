//! IMAP and POP3 proxy login for `auth = "oauth2"` accounts: the real daemon
//! on port 0, the in-process TLS upstreams (which take the configured
//! "password" as the one bearer token they accept) and the in-process HTTPS
//! token endpoint. The device logs in locally as before; upstream it is
//! XOAUTH2 with the stored token, a refused token gets one refresh and one
//! retry, and a lost grant is a temporary failure with one loud log line
//! until `mailbridge auth` writes a new token (no restart).

use std::time::Duration;

use mailbridge::oauth2::store::{now_ms, StoredToken, TokenStore};
use mailbridge::secret::Secret;

use crate::support::ca::TestCa;
use crate::support::config::{user, Account};
use crate::support::daemon::{self, TestDaemon};
use crate::support::imap::{Client as ImapClient, DEV, DEV_PW};
use crate::support::imap_upstream::{ImapUpstream, Mode};
use crate::support::logs::LogBuf;
use crate::support::pop3::Client as Pop3Client;
use crate::support::pop3_upstream::{retr_response, Pop3Upstream};
use crate::support::token_endpoint::*;

const USER: &str = "real@example.com";

/// Everything an OAuth2 proxy test needs.
struct Env {
    ca: TestCa,
    tokens: TokenServer,
    imap: ImapUpstream,
    pop3: Pop3Upstream,
    daemon: TestDaemon,
}

/// Upstreams accepting `accepted` as the bearer token, the daemon with one
/// OAuth2 account ("acct", device flow against the token endpoint).
async fn setup(accepted: &str) -> Env {
    let ca = TestCa::new();
    let tokens = TokenServer::start(&ca).await;
    let imap = ImapUpstream::start(&ca.server_cert(), USER, accepted).await;
    let pop3 = Pop3Upstream::start(&ca.server_cert(), USER, accepted, Mode::Implicit).await;
    let url = |p: &str| format!("https://localhost:{}{p}", tokens.port);
    let account = Account::new(USER, "")
        .password_line("auth = \"oauth2\"")
        .ca_file(ca.ca_file.display())
        .imap(imap.port(), "implicit")
        .pop3(pop3.port(), "implicit")
        .line(&format!(
            "[accounts.oauth2]\nprovider = \"custom\"\nclient_id = \"dev-ok\"\nflow = \"device\"\n\
             scopes = [\"mail\", \"offline\"]\ntoken_url = \"{}\"\ndevice_url = \"{}\"",
            url("/token"),
            url("/device")
        ));
    let toml = format!(
        "[smtp]\nlisten = [\"127.0.0.1:0\"]\n\n[imap]\nlisten = [\"127.0.0.1:0\"]\n\n\
         [pop3]\nlisten = [\"127.0.0.1:0\"]\n\n{account}\n{}",
        user(DEV, DEV_PW, "acct")
    );
    let daemon = daemon::start(&toml).await;
    Env {
        ca,
        tokens,
        imap,
        pop3,
        daemon,
    }
}

impl Env {
    fn store(&self) -> TokenStore {
        TokenStore::new(&self.daemon.spool_dir())
    }

    /// Writes the account's token file as `mailbridge auth` does.
    fn save(&self, access: &str, refresh: &str, expires_in: Duration) {
        let now = now_ms();
        self.store()
            .save(
                "acct",
                &StoredToken {
                    access_token: Secret::new(access),
                    refresh_token: Some(Secret::new(refresh)),
                    expires_at_ms: Some((now + expires_in.as_millis() as u64).saturating_sub(1)),
                    scopes: vec!["mail".into()],
                    obtained_at_ms: now,
                },
            )
            .unwrap();
    }

    async fn imap_login(&self) -> (ImapClient, Vec<String>) {
        let mut c = ImapClient::connect(self.daemon.imap_addr()).await;
        let reply = c.login_dev().await;
        (c, reply)
    }

    async fn pop3_login(&self) -> (Pop3Client<tokio::net::TcpStream>, String) {
        let addr = self.daemon.daemon.pop3_addrs[0];
        let mut c = Pop3Client::new(tokio::net::TcpStream::connect(addr).await.unwrap());
        assert_eq!(c.line().await, "+OK mailbridge POP3 ready");
        assert_eq!(c.cmd(&format!("USER {DEV}")).await, "+OK Send PASS");
        let reply = c.cmd(&format!("PASS {DEV_PW}")).await;
        (c, reply)
    }

    fn refreshes(&self) -> usize {
        self.tokens.seen.lock().unwrap().refreshes.len()
    }
}

/// The XOAUTH2 initial response the upstream must have received for `token`.
fn xoauth2_ir(token: &str) -> String {
    mailbridge::oauth2::sasl::initial_response(USER, &Secret::new(token))
        .unwrap()
        .expose()
        .to_string()
}

/// The error-level lines telling the administrator to run `mailbridge auth acct`.
fn loud_lines(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| l.contains("ERROR") && l.contains("mailbridge auth acct"))
        .collect()
}

fn assert_no_token(text: &str) {
    for secret in [
        DEVICE_AT,
        DEVICE_RT,
        REFRESHED_AT,
        ROTATED_RT,
        "RT-revoked",
        &xoauth2_ir(DEVICE_AT),
        &xoauth2_ir(REFRESHED_AT),
    ] {
        assert!(!text.contains(secret), "{secret} leaked: {text}");
    }
}

#[tokio::test]
async fn imap_logs_in_upstream_with_xoauth2_and_pumps_bytes() {
    let env = setup(DEVICE_AT).await;
    env.save(DEVICE_AT, DEVICE_RT, Duration::from_secs(3600));
    let (mut c, reply) = env.imap_login().await;
    assert!(
        reply.last().unwrap().starts_with("a OK [CAPABILITY"),
        "{reply:?}"
    );
    let logins = env.imap.logins();
    assert_eq!(logins.len(), 1, "{logins:?}");
    let login = String::from_utf8_lossy(&logins[0]).to_string();
    assert!(login.starts_with("L1 AUTHENTICATE XOAUTH2"), "{login}");
    assert!(!login.contains("LOGIN"), "no password login: {login}");
    c.send(b"b SELECT INBOX\r\nc FETCH 1 BODY[]\r\n").await;
    assert_eq!(
        c.tagged_line("b").await,
        "b OK [READ-WRITE] SELECT completed"
    );
    let mut fetched = Vec::new();
    while !fetched.ends_with(b"c OK FETCH completed\r\n") {
        let n = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::io::AsyncBufReadExt::read_until(&mut c.s, b'\n', &mut fetched),
        )
        .await
        .unwrap()
        .unwrap();
        assert!(n > 0, "EOF in FETCH: {}", String::from_utf8_lossy(&fetched));
    }
    let body = crate::support::imap_upstream::message(1);
    let mut want = format!("* 1 FETCH (UID 1 BODY[] {{{}}}\r\n", body.len()).into_bytes();
    want.extend_from_slice(&body);
    want.extend_from_slice(b")\r\nc OK FETCH completed\r\n");
    assert!(
        fetched == want,
        "bytes through the pump as the upstream sent them"
    );
    assert_eq!(env.refreshes(), 0, "a valid token is used as it is");
}

#[tokio::test]
async fn imap_refused_token_gets_one_refresh_and_one_retry() {
    let (logs, _guard) = LogBuf::capture();
    // The stored token is valid by its expiry but the server refuses it.
    let env = setup(REFRESHED_AT).await;
    env.save(DEVICE_AT, DEVICE_RT, Duration::from_secs(3600));
    let (_c, reply) = env.imap_login().await;
    assert!(reply.last().unwrap().starts_with("a OK "), "{reply:?}");
    assert_eq!(env.refreshes(), 1);
    assert_eq!(env.imap.logins().len(), 2, "one retry");
    let saved = env.store().load("acct").unwrap().unwrap();
    assert_eq!(saved.access_token.expose(), REFRESHED_AT);
    assert_eq!(saved.refresh_token.unwrap().expose(), ROTATED_RT);
    // The next session reuses the fresh token: no refresh, one login.
    let (_c2, reply) = env.imap_login().await;
    assert!(reply.last().unwrap().starts_with("a OK "), "{reply:?}");
    assert_eq!(env.refreshes(), 1);
    assert_eq!(env.imap.logins().len(), 3);
    assert_no_token(&logs.text());
}

#[tokio::test]
async fn imap_token_refused_even_after_refresh_is_an_auth_failure_without_a_loop() {
    let env = setup("AT-the-server-wants-another").await;
    env.save(DEVICE_AT, DEVICE_RT, Duration::from_secs(3600));
    let (_c, reply) = env.imap_login().await;
    let last = reply.last().unwrap();
    assert!(
        last.starts_with("a NO [AUTHENTICATIONFAILED]") && last.contains("OAuth2"),
        "{last}"
    );
    assert_eq!(env.refreshes(), 1, "one refresh");
    assert_eq!(env.imap.logins().len(), 2, "one retry, no more");
}

#[tokio::test]
async fn imap_lost_grant_is_a_temporary_failure_logged_once_then_recovered_by_a_new_token() {
    let (logs, _guard) = LogBuf::capture();
    let env = setup(DEVICE_AT).await;
    // Expired, and its refresh token was revoked.
    env.save(DEVICE_AT, "RT-revoked", Duration::ZERO);
    for _ in 0..3 {
        let (mut c, reply) = env.imap_login().await;
        let last = reply.last().unwrap();
        assert!(last.starts_with("a NO [UNAVAILABLE] "), "{last}");
        assert!(last.contains("mailbridge auth"), "{last}");
        assert_no_token(last);
        // The session stays usable: the device may try again.
        c.send(b"z NOOP\r\n").await;
        assert!(c.tagged_line("z").await.starts_with("z OK"));
    }
    assert_eq!(env.refreshes(), 1, "the lost grant is remembered");
    assert_eq!(
        env.imap.connections(),
        0,
        "no upstream connection without a token"
    );
    let text = logs.text();
    let loud = loud_lines(&text);
    assert_eq!(loud.len(), 1, "one loud line per loss: {text}");
    assert!(loud[0].contains("invalid_grant"), "{}", loud[0]);

    // `mailbridge auth acct` wrote a new token: picked up without a restart.
    env.save(DEVICE_AT, DEVICE_RT, Duration::from_secs(3600));
    let (_c, reply) = env.imap_login().await;
    assert!(reply.last().unwrap().starts_with("a OK "), "{reply:?}");
    assert_no_token(&logs.text());
}

#[tokio::test]
async fn no_stored_token_is_the_same_temporary_failure_logged_once() {
    let (logs, _guard) = LogBuf::capture();
    let env = setup(DEVICE_AT).await;
    for _ in 0..2 {
        let (_c, reply) = env.imap_login().await;
        assert!(
            reply.last().unwrap().starts_with("a NO [UNAVAILABLE] "),
            "{reply:?}"
        );
        let (_p, reply) = env.pop3_login().await;
        assert!(reply.starts_with("-ERR [SYS/TEMP] "), "{reply}");
    }
    let text = logs.text();
    assert_eq!(loud_lines(&text).len(), 1, "{text}");
    assert_eq!(env.refreshes(), 0);
}

#[tokio::test]
async fn pop3_logs_in_upstream_with_xoauth2_and_retrieves_bytes_identical() {
    let env = setup(DEVICE_AT).await;
    env.save(DEVICE_AT, DEVICE_RT, Duration::from_secs(3600));
    let (mut c, reply) = env.pop3_login().await;
    assert_eq!(reply, "+OK Logged in");
    assert!(env.pop3.logins().is_empty(), "no USER/PASS upstream");
    assert_eq!(env.pop3.lines()[0], b"AUTH XOAUTH2\r\n");
    for n in 1..=3 {
        c.send(format!("RETR {n}\r\n").as_bytes()).await;
        assert!(c.multi_raw().await == retr_response(n), "RETR {n}");
    }
    assert_eq!(env.refreshes(), 0);
}

#[tokio::test]
async fn pop3_refused_token_gets_one_refresh_and_one_retry() {
    let (logs, _guard) = LogBuf::capture();
    let env = setup(REFRESHED_AT).await;
    env.save(DEVICE_AT, DEVICE_RT, Duration::from_secs(3600));
    let (mut c, reply) = env.pop3_login().await;
    assert_eq!(reply, "+OK Logged in");
    assert_eq!(env.refreshes(), 1);
    assert_eq!(env.pop3.connections(), 2, "one retry on a new connection");
    assert!(c.cmd("STAT").await.starts_with("+OK 3 "));
    assert_no_token(&logs.text());
}

#[tokio::test]
async fn pop3_lost_grant_is_a_temporary_failure_then_recovered() {
    let env = setup(DEVICE_AT).await;
    env.save(DEVICE_AT, "RT-revoked", Duration::ZERO);
    let (mut c, reply) = env.pop3_login().await;
    assert!(reply.starts_with("-ERR [SYS/TEMP] "), "{reply}");
    assert!(reply.contains("mailbridge auth"), "{reply}");
    assert_no_token(&reply);
    assert_eq!(env.pop3.connections(), 0);
    // Still in AUTHORIZATION: the device can log in again once re-authorized.
    env.save(DEVICE_AT, DEVICE_RT, Duration::from_secs(3600));
    assert_eq!(c.cmd(&format!("USER {DEV}")).await, "+OK Send PASS");
    assert_eq!(c.cmd(&format!("PASS {DEV_PW}")).await, "+OK Logged in");
    assert!(c.cmd("STAT").await.starts_with("+OK 3 "));
    let _ = &env.ca;
}

#[tokio::test]
async fn a_microsoft_account_with_an_explicit_password_is_warned_about_at_start() {
    let (logs, _guard) = LogBuf::capture();
    let toml = "[smtp]\nlisten = [\"127.0.0.1:0\"]\n\n[imap]\nlisten = []\n\n\
                [[accounts]]\nname = \"hotmail\"\nprovider = \"outlook\"\nusername = \"me@outlook.com\"\n\
                auth = \"password\"\npassword = \"old-app-password\"\n";
    let d = daemon::start(toml).await;
    let text = logs.text();
    assert!(
        text.contains("WARN") && text.contains("Microsoft refuses basic authentication"),
        "{text}"
    );
    assert!(!text.contains("old-app-password"), "{text}");
    d.stop().await;
}
