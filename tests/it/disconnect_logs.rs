//! Every close the daemon decides on is logged at info with its reason, in
//! SMTP and IMAP alike, and without the client's bytes: each case is driven
//! over a real socket against the in-process daemon with an INFO-level log
//! capture (per thread, through the crate's one global subscriber: see
//! `support::logs`).

use std::sync::Mutex;

use crate::support::logs::LogBuf;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The log capture, and the cases whose close line was missing (all are
/// reported at the end).
struct Checker {
    logs: LogBuf,
    misses: Mutex<Vec<String>>,
}

impl Checker {
    fn len(&self) -> usize {
        self.logs.len()
    }

    /// Checks that since byte `from` one info line says the `listener`
    /// connection was closed for `reason`; records a miss otherwise. The
    /// daemon logs before its last reply, so by the time the client has seen
    /// the close the line is there.
    fn assert_close(&self, from: usize, listener: &str, reason: &str) {
        let text = self.logs.text();
        let new = &text[from..];
        let lines: Vec<&str> = new
            .lines()
            .filter(|l| l.contains("closing the connection"))
            .collect();
        let want = format!("reason=\"{reason}\"");
        let hits = lines
            .iter()
            .filter(|l| l.contains(&want) && l.contains(&format!("listener=\"{listener}\"")))
            .count();
        if hits != 1 || !lines.iter().all(|l| l.contains(" INFO ")) {
            self.misses.lock().unwrap().push(format!(
                "want one {listener} info line with {want}; close lines since the case began: {lines:?}"
            ));
        }
    }

    fn misses(&self) -> Vec<String> {
        self.misses.lock().unwrap().clone()
    }
}

/// Bytes the clients send that must never show up in a log line.
const CLIENT_MARK: &str = "CLIENTMARKq7";

#[tokio::test]
async fn every_daemon_decided_close_is_logged_with_its_reason() {
    // INFO: a close logged at debug would not be captured.
    let (logs, _guard) = crate::support::logs::capture(tracing::Level::INFO);
    let check = Checker {
        logs,
        misses: Mutex::default(),
    };
    smtp_cases(&check).await;
    imap_cases(&check).await;

    let misses = check.misses();
    assert!(
        misses.is_empty(),
        "{} cases:\n{}",
        misses.len(),
        misses.join("\n")
    );
    let text = check.logs.text();
    assert!(
        !text.contains(CLIENT_MARK),
        "client bytes in the logs:\n{text}"
    );
}

async fn smtp_cases(logs: &Checker) {
    use crate::support::smtp::{assert_ok, start, Client};

    // Access denied.
    let d = start("allowed_networks = [\"10.0.0.0/8\"]").await;
    let from = logs.len();
    let (mut c, greeting) = Client::connect(d.smtp_addr()).await;
    assert_ok(&greeting, "554 5.7.1");
    c.expect_closed().await;
    logs.assert_close(from, "smtp", "access_denied");
    d.stop().await;

    // Too many errors, idle timeout.
    let d = start("idle_timeout = \"1s\"").await;
    let from = logs.len();
    let (mut c, _) = Client::connect(d.smtp_addr()).await;
    c.send(format!("{CLIENT_MARK}\r\n").repeat(20).as_bytes())
        .await;
    for _ in 0..20 {
        assert_ok(&c.reply().await, "502 5.5.2");
    }
    assert_ok(&c.reply().await, "421 4.7.0");
    c.expect_closed().await;
    logs.assert_close(from, "smtp", "too_many_errors");

    let from = logs.len();
    let (mut c, _) = Client::connect(d.smtp_addr()).await;
    assert_ok(&c.cmd("EHLO dev").await, "250");
    assert_ok(&c.reply().await, "421 4.4.2");
    c.expect_closed().await;
    logs.assert_close(from, "smtp", "idle_timeout");

    // A body trickled one byte per 300 ms: each read inside the idle
    // timeout, the average rate under the minimum.
    let from = logs.len();
    let (mut c, _) = Client::connect(d.smtp_addr()).await;
    assert_ok(&c.cmd("MAIL FROM:<a@example.com>").await, "250");
    assert_ok(&c.cmd("RCPT TO:<b@example.com>").await, "250");
    assert_ok(&c.cmd("DATA").await, "354");
    let started = std::time::Instant::now();
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(300));
    let mut buf = [0u8; 256];
    let reply = loop {
        tokio::select! {
            r = c.r.read(&mut buf) => break String::from_utf8_lossy(&buf[..r.unwrap_or(0)]).into_owned(),
            _ = tick.tick() => {
                assert!(started.elapsed() < std::time::Duration::from_secs(20), "never cut off");
                let _ = c.r.get_mut().write_all(b"x").await;
            }
        }
    };
    assert!(reply.contains("too slow"), "{reply:?}");
    logs.assert_close(from, "smtp", "too_slow");
    d.stop().await;

    // Connection limit, shutdown. A fresh daemon, so no earlier session
    // still holds the one permit.
    let d = start("max_connections = 1").await;
    let (mut held, _) = Client::connect(d.smtp_addr()).await;
    let from = logs.len();
    let (mut c, busy) = Client::connect(d.smtp_addr()).await;
    assert_ok(&busy, "421 4.7.0");
    c.expect_closed().await;
    logs.assert_close(from, "smtp", "connection_limit");

    let from = logs.len();
    assert_ok(&held.cmd("EHLO dev").await, "250");
    d.stop().await;
    assert_ok(&held.reply().await, "421 4.3.0");
    logs.assert_close(from, "smtp", "shutdown");
}

async fn imap_cases(logs: &Checker) {
    use crate::support::imap::{setup, Client, Setup};

    // Access denied.
    let env = setup(Setup {
        allowed_networks: Some("10.0.0.0/8"),
        ..Setup::default()
    })
    .await;
    let from = logs.len();
    let mut c = Client::connect_raw(env.addr()).await;
    assert!(c.line().await.starts_with("* BYE"));
    c.read_to_eof().await;
    logs.assert_close(from, "imap", "access_denied");
    env.daemon.stop().await;

    // Line too long, literal too large, login timeout, idle, shutdown.
    let env = setup(Setup {
        login_timeout: "2s",
        idle_timeout: "1s",
        ..Setup::default()
    })
    .await;
    let from = logs.len();
    let mut c = env.client().await;
    let mut line = format!("a LOGIN {CLIENT_MARK}").into_bytes();
    line.resize(mailbridge::imap::framing::MAX_LINE + 20_000, b'x');
    let _ = c.s.get_mut().write_all(&line).await;
    assert_eq!(c.line().await, "a BAD Command line too long; closing");
    c.read_to_eof().await;
    logs.assert_close(from, "imap", "line_too_long");

    let from = logs.len();
    let mut c = env.client().await;
    c.send(format!("b LOGIN {CLIENT_MARK} {{100000000}}\r\n").as_bytes())
        .await;
    assert_eq!(
        c.line().await,
        "b BAD Literal too large before login; closing"
    );
    c.read_to_eof().await;
    logs.assert_close(from, "imap", "literal_too_large");

    let from = logs.len();
    let mut c = env.client().await;
    assert_eq!(c.line().await, "* BYE Autologout; no login in time");
    c.read_to_eof().await;
    logs.assert_close(from, "imap", "login_timeout");

    let from = logs.len();
    let mut c = env.logged_in().await;
    assert_eq!(c.line().await, "* BYE Autologout; idle for too long");
    c.read_to_eof().await;
    logs.assert_close(from, "imap", "idle_timeout");

    let from = logs.len();
    let mut c = env.client().await;
    env.daemon.stop().await;
    assert_eq!(c.line().await, "* BYE mailbridge shutting down");
    logs.assert_close(from, "imap", "shutdown");
}
