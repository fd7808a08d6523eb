//! Upstream replies in log lines are escaped: a reply carrying terminal
//! escape sequences, C1 controls or a bidi override cannot drive the
//! terminal of whoever reads the log. Its own test binary, like
//! delivery_logs.rs, so its thread-local subscriber sees every event.

mod common;
mod delivery_common;

use std::time::Duration;

use common::ca::TestCa;
use common::daemon::start;
use common::smtp_upstream::{Mode, SmtpUpstream};
use delivery_common::{config, eventually, feed, Opts, PASSWORD, USER};
use mailbridge::spool::EntryState;

#[derive(Clone, Default)]
struct LogBuf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuf {
    type Writer = LogBuf;
    fn make_writer(&'a self) -> LogBuf {
        self.clone()
    }
}

#[tokio::test]
async fn upstream_reply_with_escape_sequences_is_logged_escaped() {
    let logs = LogBuf::default();
    let sub = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(logs.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(sub);

    let ca = TestCa::new();
    let up = SmtpUpstream::start(&ca.server_cert(), Mode::Implicit, USER, PASSWORD).await;
    up.script().data_reply =
        Some("554 5.7.1 \x1b[2J\x1b]0;pwned\x07no\u{9b}31m \u{202e}gpj.exe\x7f".into());
    let d = start(&config(&Opts::new(up.port(), "implicit", &ca.ca_file))).await;
    let id = feed(&d, &["a@example.org"], b"x\r\n").await;
    let spool = &d.daemon.context.spool;
    eventually("failed", Duration::from_secs(10), || async {
        spool
            .entry(&id)
            .ok()
            .filter(|e| e.state == EntryState::Failed)
    })
    .await;
    d.stop().await;

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
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
