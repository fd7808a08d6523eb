//! Lifecycle with the real binary: SIGTERM mid-session (SMTP 421, IMAP BYE,
//! exit 0), SIGHUP reload of the user list without touching sessions in
//! progress, a bad config on SIGHUP keeps the running one; JSON logs. Plus
//! `Daemon::reload` in process for a certificate that does not load.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::support::config::{user, Account};
use crate::support::smtp::{assert_ok, Client};
use base64::Engine;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader as TokioBufReader};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(10);

fn config(users: &[(&str, &str)]) -> String {
    let mut c = format!(
        r#"
[smtp]
listen = ["127.0.0.1:0"]

[imap]
listen = ["127.0.0.1:0"]

[delivery]
retry_initial = "1h"

{}"#,
        Account::new("me@example.com", "upstream-app-password")
    );
    for (name, pw) in users {
        c.push('\n');
        c.push_str(&user(name, pw, "acct"));
    }
    c
}

/// The binary, its log messages (JSON lines, parsed) and its addresses.
struct Running {
    child: Child,
    logs: mpsc::Receiver<serde_json::Value>,
    smtp: SocketAddr,
    imap: SocketAddr,
}

impl Running {
    fn start(dir: &Path) -> Running {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mailbridge"))
            .arg("-c")
            .arg(dir.join("relay.toml"))
            .args(["--log-format", "json", "run"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, logs) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                let v: serde_json::Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
                if tx.send(v).is_err() {
                    return;
                }
            }
        });
        let mut r = Running {
            child,
            logs,
            smtp: "0.0.0.0:0".parse().unwrap(),
            imap: "0.0.0.0:0".parse().unwrap(),
        };
        r.smtp = addr_in(&r.wait_log("SMTP listening on"));
        r.imap = addr_in(&r.wait_log("IMAP listening on"));
        r
    }

    /// The first log message (from now on) containing `needle`.
    fn wait_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self
                .logs
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no log line containing {needle:?}"));
            let msg = v["fields"]["message"].as_str().unwrap_or("").to_string();
            if msg.contains(needle) {
                return msg;
            }
        }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} failed");
    }

    /// Waits (bounded) for the process to exit; returns its success.
    fn wait_exit(&mut self) -> bool {
        crate::support::wait::blocking(
            || "the daemon to exit".into(),
            WAIT,
            || self.child.try_wait().unwrap(),
        )
        .success()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn addr_in(msg: &str) -> SocketAddr {
    msg.rsplit(' ').next().unwrap().parse().unwrap()
}

fn plain(user: &str, pw: &str) -> String {
    let b = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{pw}"));
    format!("AUTH PLAIN {b}")
}

async fn logged_in(addr: SocketAddr, user: &str, pw: &str) -> Client {
    let (mut c, greeting) = Client::connect(addr).await;
    assert_ok(&greeting, "220");
    assert_ok(&c.cmd("EHLO dev").await, "250");
    assert_ok(&c.cmd(&plain(user, pw)).await, "235");
    c
}

fn write_config(dir: &Path, text: &str) {
    std::fs::write(dir.join("relay.toml"), text).unwrap();
}

#[tokio::test]
async fn sigterm_mid_session_answers_421_and_bye_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &config(&[("old", "old pw")]));
    let mut d = Running::start(dir.path());

    let (mut smtp, greeting) = Client::connect(d.smtp).await;
    assert_ok(&greeting, "220");
    assert_ok(&smtp.cmd("EHLO dev").await, "250");
    let imap = TcpStream::connect(d.imap).await.unwrap();
    let mut imap = TokioBufReader::new(imap);
    let mut line = String::new();
    imap.read_line(&mut line).await.unwrap();
    assert!(line.starts_with("* OK"), "{line}");

    d.signal("-TERM");
    let reply = smtp.reply().await;
    assert!(reply.starts_with("421 4.3.0"), "{reply:?}");
    line.clear();
    tokio::time::timeout(WAIT, imap.read_line(&mut line))
        .await
        .unwrap()
        .unwrap();
    assert!(line.starts_with("* BYE"), "{line:?}");
    d.wait_log("stopped");
    assert!(d.wait_exit(), "exit status 0 after SIGTERM");
}

#[tokio::test]
async fn sighup_reloads_users_and_keeps_sessions_and_rejects_a_bad_config() {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &config(&[("old", "old pw")]));
    let mut d = Running::start(dir.path());

    let mut session = logged_in(d.smtp, "old", "old pw").await;
    let (mut c, _) = Client::connect(d.smtp).await;
    assert_ok(&c.cmd("EHLO dev").await, "250");
    assert_ok(&c.cmd(&plain("new", "new pw")).await, "535");

    write_config(dir.path(), &config(&[("old", "old pw"), ("new", "new pw")]));
    d.signal("-HUP");
    d.wait_log("configuration reloaded");
    let mut fresh = logged_in(d.smtp, "new", "new pw").await;
    assert_ok(&fresh.cmd("QUIT").await, "221");

    // The session that started before the reload is untouched.
    let r = session
        .send_mail(
            "a@local",
            &["to@example.org"],
            b"Subject: s\r\n\r\nstill here",
        )
        .await;
    assert_ok(&r, "250");

    // A broken file is rejected with the config error; the running config stays.
    write_config(dir.path(), "[smtp\nlisten = 1\n");
    d.signal("-HUP");
    let msg = d.wait_log("reload rejected");
    assert!(msg.contains("relay.toml"), "names the file: {msg}");
    let mut again = logged_in(d.smtp, "new", "new pw").await;
    assert_ok(&again.cmd("QUIT").await, "221");
    assert_ok(&session.cmd("QUIT").await, "221");

    d.signal("-TERM");
    assert!(d.wait_exit());
}

#[tokio::test]
async fn reload_with_a_certificate_that_does_not_load_keeps_the_old_config() {
    let d = crate::support::daemon::start(&config(&[("old", "old pw")])).await;
    let before = d.daemon.current();
    let dir = d.dir.path();
    std::fs::write(dir.join("cert.pem"), "not a certificate").unwrap();
    std::fs::write(dir.join("key.pem"), "not a key").unwrap();
    let mut text = String::from("tls_cert = \"cert.pem\"\ntls_key = \"key.pem\"\n");
    text.push_str(&config(&[("old", "old pw"), ("new", "new pw")]));
    write_config(dir, &text);
    let new = mailbridge::config::Config::load(&dir.join("relay.toml")).unwrap();
    let err = d.daemon.reload(new).unwrap_err();
    assert!(err.contains("reload rejected"), "{err}");
    let now = d.daemon.current();
    assert!(std::sync::Arc::ptr_eq(&before, &now), "old context kept");
    assert!(now.config.user("new").is_none());

    // A good reload swaps the context but keeps the shared spool.
    write_config(dir, &config(&[("old", "old pw"), ("new", "new pw")]));
    let good = mailbridge::config::Config::load(&dir.join("relay.toml")).unwrap();
    d.daemon.reload(good).unwrap();
    let now = d.daemon.current();
    assert!(now.config.user("new").is_some());
    assert!(std::sync::Arc::ptr_eq(&now.spool, &before.spool));
    let mut s = logged_in(d.smtp_addr(), "new", "new pw").await;
    s.r.get_mut().write_all(b"QUIT\r\n").await.unwrap();
    d.stop().await;
}

fn connector(ca: &crate::support::ca::TestCa) -> tokio_rustls::TlsConnector {
    ca.connector()
}

/// Does an implicit-TLS handshake with `addr` succeed for a client trusting `ca`?
async fn handshake_ok(addr: SocketAddr, ca: &crate::support::ca::TestCa) -> bool {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(WAIT, connector(ca).connect(name, tcp))
        .await
        .unwrap()
        .is_ok()
}

#[tokio::test]
async fn reload_picks_up_a_new_local_certificate() {
    let (old_ca, new_ca) = (
        crate::support::ca::TestCa::named("old CA"),
        crate::support::ca::TestCa::named("new CA"),
    );
    let dir = tempfile::tempdir().unwrap();
    let install = |ca: &crate::support::ca::TestCa| {
        let cert = ca.server_cert();
        std::fs::write(dir.path().join("local.pem"), &cert.cert_pem).unwrap();
        std::fs::write(dir.path().join("local.key"), &cert.key_pem).unwrap();
    };
    install(&old_ca);
    let text = format!(
        "tls_cert = \"local.pem\"\ntls_key = \"local.key\"\n{}",
        config(&[("old", "old pw")]).replace(
            "[smtp]\nlisten = [\"127.0.0.1:0\"]",
            "[smtp]\nlisten = [\"127.0.0.1:0\"]\nsmtps_listen = [\"127.0.0.1:0\"]"
        )
    );
    let d = crate::support::daemon::start_in(&text, dir).await;
    let smtps = d.daemon.smtps_addrs[0];
    assert!(handshake_ok(smtps, &old_ca).await);
    assert!(!handshake_ok(smtps, &new_ca).await);

    let dir = d.dir.path().to_path_buf();
    let cert = new_ca.server_cert();
    std::fs::write(dir.join("local.pem"), &cert.cert_pem).unwrap();
    std::fs::write(dir.join("local.key"), &cert.key_pem).unwrap();
    let new = mailbridge::config::Config::load(&dir.join("relay.toml")).unwrap();
    d.daemon.reload(new).unwrap();
    assert!(handshake_ok(smtps, &new_ca).await, "new certificate served");
    assert!(!handshake_ok(smtps, &old_ca).await);
    d.stop().await;
}

#[tokio::test]
async fn sigterm_lets_the_worker_finish_the_message_in_hand() {
    use crate::support::delivery::{Opts, PASSWORD, USER};
    use crate::support::smtp_upstream::{Mode, SmtpUpstream};
    let ca = crate::support::ca::TestCa::new();
    let up = SmtpUpstream::start(&ca.server_cert(), Mode::Implicit, USER, PASSWORD).await;
    up.script().hang_data = 1;
    let toml = crate::support::delivery::config(&Opts::new(up.port(), "implicit", &ca.ca_file))
        .replace("timeout = \"5s\"", "timeout = \"1s\"");
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &toml);
    let mut d = Running::start(dir.path());
    let (mut c, _) = Client::connect(d.smtp).await;
    assert_ok(&c.cmd("EHLO dev").await, "250");
    let r = c
        .send_mail("a@local", &["to@example.org"], b"Subject: s\r\n\r\nin hand")
        .await;
    assert_ok(&r, "250");
    let attempts = &up.shared.data_attempts;
    crate::support::delivery::eventually("upstream has the message", WAIT, || async {
        (attempts.load(std::sync::atomic::Ordering::SeqCst) >= 1).then_some(())
    })
    .await;
    d.signal("-TERM");
    assert!(d.wait_exit(), "exit status 0");
    // The attempt was finished (timed out and recorded), not cut off; the message is kept.
    let spool = mailbridge::spool::Spool::open(&dir.path().join("spool")).unwrap();
    let queued = spool.list_queued().unwrap();
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].attempts, 1, "{:?}", queued[0]);
    assert_eq!(queued[0].state, mailbridge::spool::EntryState::Deferred);
}

#[tokio::test]
async fn reload_keeps_imap_sessions_and_their_per_account_count() {
    let env = crate::support::imap::setup(crate::support::imap::Setup {
        cap: 1,
        ..Default::default()
    })
    .await;
    let mut first = env.logged_in().await;
    assert_eq!(env.account_connections(), 1);
    let path = env.daemon.dir.path().join("relay.toml");
    let same = mailbridge::config::Config::load(&path).unwrap();
    env.daemon.daemon.reload(same).unwrap();

    // The cap still counts the session that started before the reload.
    let mut second = env.client().await;
    second
        .send(
            format!(
                "b LOGIN {} {}\r\n",
                crate::support::imap::DEV,
                crate::support::imap::DEV_PW
            )
            .as_bytes(),
        )
        .await;
    let lines = second.tagged("b").await;
    assert!(!lines.last().unwrap().starts_with("b OK"), "{lines:?}");
    // ...and that session still works.
    first.send(b"c NOOP\r\n").await;
    let lines = first.tagged("c").await;
    assert!(lines.last().unwrap().starts_with("c OK"), "{lines:?}");
    drop(first);
    crate::support::delivery::eventually("slot freed", WAIT, || async {
        (env.account_connections() == 0).then_some(())
    })
    .await;
    let _third = env.logged_in().await;
}
