//! Helpers for delivery tests (shared by tests/delivery*.rs and tests/queue_cli.rs): a daemon config pointing at a test SMTP
//! upstream, feeding messages into the spool, and polling with a deadline.

#![allow(dead_code)]
use std::path::Path;
use std::time::Duration;

use mailbridge::spool::{EntryState, Envelope, QueueEntry, QueueId, Spool};

use crate::support::config::Account;
use crate::support::daemon::TestDaemon;
pub use crate::support::wait::eventually;

/// Knobs for [`config`].
pub struct Opts<'a> {
    pub port: u16,
    pub tls: &'a str,
    pub ca_file: &'a Path,
    /// The account's password line (e.g. `password = "app pass word"`).
    pub password_line: &'a str,
    pub smtp_extra: &'a str,
    pub delivery_extra: &'a str,
}

impl<'a> Opts<'a> {
    pub fn new(port: u16, tls: &'a str, ca_file: &'a Path) -> Opts<'a> {
        Opts {
            port,
            tls,
            ca_file,
            password_line: "password = \"app pass word\"",
            smtp_extra: "",
            delivery_extra: "",
        }
    }
}

/// The upstream password after spaces are removed from `app pass word`.
pub const PASSWORD: &str = "apppassword";
pub const USER: &str = "relay@example.com";

pub fn config(o: &Opts) -> String {
    format!(
        r#"
[smtp]
listen = ["127.0.0.1:0"]
{smtp_extra}

[imap]
listen = ["127.0.0.1:0"]

[delivery]
retry_initial = "100ms"
retry_max = "400ms"
timeout = "5s"
{delivery_extra}

{account}"#,
        smtp_extra = o.smtp_extra,
        delivery_extra = o.delivery_extra,
        account = Account::new(USER, "")
            .name("test")
            .password_line(o.password_line)
            .ca_file(o.ca_file.display())
            .smtp(o.port, o.tls),
    )
}

pub fn envelope(rcpts: &[&str]) -> Envelope {
    Envelope {
        account: "test".into(),
        mail_from: "scanner@local".into(),
        recipients: rcpts.iter().map(|s| s.to_string()).collect(),
        client: "127.0.0.1:40000".into(),
        helo: "scanner".into(),
        local_user: None,
        smtputf8: false,
        body_8bit: false,
    }
}

/// A message with lines that need dot-stuffing.
pub const DOTTY: &[u8] = b"From: scanner@local\r\nTo: a@example.org\r\nSubject: dots\r\nMessage-ID: <1@local>\r\n\r\n.leading dot\r\n..two dots\r\n.\r\nend\r\n";

/// Puts a message in the daemon's spool and wakes the worker.
pub async fn feed(d: &TestDaemon, rcpts: &[&str], message: &[u8]) -> QueueId {
    let ctx = &d.daemon.context;
    let id = ctx.spool.enqueue(&envelope(rcpts), message).await.unwrap();
    ctx.wake_delivery.notify_one();
    id
}

/// Waits until `id` is in the failed area and returns its entry.
pub async fn wait_failed(spool: &Spool, id: &QueueId) -> QueueEntry {
    eventually("failed", Duration::from_secs(10), || async {
        spool
            .entry(id)
            .ok()
            .filter(|e| e.state == EntryState::Failed)
    })
    .await
}
