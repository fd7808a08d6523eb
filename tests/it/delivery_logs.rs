//! Delivery log lines: one per message event, with the queue id and the
//! upstream reply, and never a password. (The capture is per thread through
//! the crate's one global subscriber, see `support::logs`, so other tests
//! running in parallel neither disturb it nor leak into it.)

use std::time::Duration;

use crate::support::ca::TestCa;
use crate::support::daemon::start;
use crate::support::delivery::{config, eventually, feed, Opts, PASSWORD, USER};
use crate::support::logs::LogBuf;
use crate::support::smtp_upstream::{Mode, SmtpUpstream};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn log_lines_name_the_events_but_never_the_password() {
    use base64::Engine;
    let (logs, _guard) = LogBuf::capture();

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

    let text = logs.text();
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
