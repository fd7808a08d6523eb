//! Upstream replies in log lines are escaped: a reply carrying terminal
//! escape sequences, C1 controls or a bidi override cannot drive the
//! terminal of whoever reads the log. (Log capture: `support::logs`.)

use crate::support::ca::TestCa;
use crate::support::daemon::start;
use crate::support::delivery::{config, feed, wait_failed, Opts, PASSWORD, USER};
use crate::support::logs::LogBuf;
use crate::support::smtp_upstream::{Mode, SmtpUpstream};

#[tokio::test]
async fn upstream_reply_with_escape_sequences_is_logged_escaped() {
    let (logs, _guard) = LogBuf::capture();

    let ca = TestCa::new();
    let up = SmtpUpstream::start(&ca.server_cert(), Mode::Implicit, USER, PASSWORD).await;
    up.script().data_reply =
        Some("554 5.7.1 \x1b[2J\x1b]0;pwned\x07no\u{9b}31m \u{202e}gpj.exe\x7f".into());
    let d = start(&config(&Opts::new(up.port(), "implicit", &ca.ca_file))).await;
    let id = feed(&d, &["a@example.org"], b"x\r\n").await;
    let spool = &d.daemon.context.spool;
    wait_failed(spool, &id).await;
    d.stop().await;

    let text = logs.text();
    let raw: Vec<char> = text
        .chars()
        .filter(|c| {
            (c.is_control() && *c != '\n')
                || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        })
        .collect();
    assert!(raw.is_empty(), "raw {raw:?} in logs:\n{text}");
    assert!(
        text.contains("554 5.7.1 \\x1b[2J\\x1b]0;pwned\\x07no\\u{9b}31m \\u{202e}gpj.exe\\x7f"),
        "{text}"
    );
}
