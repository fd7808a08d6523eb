//! Delivery log lines: one per message event, with the queue id and the
//! upstream reply, and never a password. Its own test binary, because a
//! thread-local tracing subscriber can miss events while other tests of the
//! same process register call sites concurrently.

mod common;
mod delivery_common;

use std::time::Duration;

use common::ca::TestCa;
use common::daemon::start;
use common::smtp_upstream::{Mode, SmtpUpstream};
use delivery_common::{config, eventually, feed, Opts, PASSWORD, USER};

const WAIT: Duration = Duration::from_secs(10);

/// Captured log output (all levels) for the current thread's tasks.
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
async fn log_lines_name_the_events_but_never_the_password() {
    use base64::Engine;
    let logs = LogBuf::default();
    let sub = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(logs.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(sub);

    let ca = TestCa::new();
    let up = SmtpUpstream::start(&ca.server_cert(), Mode::Implicit, USER, PASSWORD).await;
    let mut o = Opts::new(up.port(), "implicit", &ca.ca_file);
    o.password_line = "password = \"wrong pass word\"";
    let d = start(&config(&o)).await;
    let bad = feed(&d, &["a@example.org"], b"x\r\n").await;
    let spool = &d.daemon.context.spool;
    eventually("deferred", WAIT, || async {
        spool.entry(&bad).ok().filter(|e| e.attempts >= 1)
    })
    .await;
    d.stop().await;

    let d = start(&config(&Opts::new(up.port(), "implicit", &ca.ca_file))).await;
    let good = feed(&d, &["a@example.org"], b"y\r\n").await;
    up.wait_for(1, WAIT).await;
    let spool = &d.daemon.context.spool;
    eventually("queue empty", WAIT, || async {
        spool.list_queued().unwrap().is_empty().then_some(())
    })
    .await;
    d.stop().await;

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        text.contains("deferred") && text.contains("535 5.7.8"),
        "{text}"
    );
    assert!(
        text.contains("delivered") && text.contains(&good.0),
        "{text}"
    );
    let b64 = base64::engine::general_purpose::STANDARD;
    for secret in [
        "wrongpassword".to_string(),
        "wrong pass word".to_string(),
        PASSWORD.to_string(),
        b64.encode(format!("\0{USER}\0{PASSWORD}")),
        b64.encode(format!("\0{USER}\0wrongpassword")),
        b64.encode(PASSWORD),
    ] {
        assert!(
            !text.contains(&secret),
            "secret {secret:?} in logs:\n{text}"
        );
    }
}
