//! Log lines for old-device habits (issue 12): the Received id at the
//! recipient is the queue id in the log, and a `From:` the provider will
//! rewrite is warned about once per sender address. (Log capture:
//! `support::logs`.)

use std::time::Duration;

use crate::support::ca::TestCa;
use crate::support::daemon::start;
use crate::support::delivery::{config, Opts, PASSWORD, USER};
use crate::support::smtp::{assert_ok, queue_id, Client};
use crate::support::smtp_upstream::{Mode, SmtpUpstream};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn received_id_matches_the_log_and_from_rewrite_is_warned_once() {
    let (logs, _guard) = crate::support::logs::capture(tracing::Level::INFO);

    let ca = TestCa::new();
    let up = SmtpUpstream::start(&ca.server_cert(), Mode::Implicit, USER, PASSWORD).await;
    let mut o = Opts::new(up.port(), "implicit", &ca.ca_file);
    o.password_line = "password = \"app pass word\"\nsend_as = [\"alias@example.org\"]";
    let d = start(&config(&o)).await;
    let (mut c, _) = Client::connect(d.smtp_addr()).await;
    assert_ok(&c.cmd("EHLO scanner").await, "250");
    let mut ids = Vec::new();
    for from in [
        "Scanner <scanner@office.example>",
        "Other name <SCANNER@office.example>",
        "alias@example.org",
        USER,
    ] {
        let body = format!("From: {from}\r\nSubject: s\r\n\r\nbody");
        let r = c
            .send_mail("scan@lan", &["to@example.org"], body.as_bytes())
            .await;
        ids.push(queue_id(&r));
    }
    let got = up.wait_for(4, WAIT).await;
    let text = logs.text();
    for id in &ids {
        // The log line of the acceptance names the id...
        assert!(
            text.lines()
                .any(|l| l.contains("message accepted") && l.contains(&format!("queue_id={id}"))),
            "{id}: {text}"
        );
        // ...and the upstream's copy carries it in the Received header.
        assert!(
            got.iter().any(|m| String::from_utf8_lossy(&m.data)
                .contains(&format!("(mailbridge) with ESMTP id {id};\r\n"))),
            "{id} not in a Received header upstream"
        );
    }
    let warnings: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("send_as"))
        .collect();
    assert_eq!(warnings.len(), 1, "{text}");
    assert!(
        warnings[0].contains("<scanner@office.example>"),
        "{}",
        warnings[0]
    );
    d.stop().await;
}
