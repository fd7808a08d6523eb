//! Permanent-failure notices end to end: a 554 from the test upstream makes
//! the daemon queue a short report to the account's `notify` address, sent
//! through the same account; a notice that fails itself is not reported.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::support::ca::TestCa;
use crate::support::daemon::{start, TestDaemon};
use crate::support::delivery::{config, eventually, feed, Opts, PASSWORD, USER};
use crate::support::smtp_upstream::{Mode, SmtpUpstream};
use mailbridge::spool::Spool;

const WAIT: Duration = Duration::from_secs(10);
const REJECT: &str = "554 5.7.1 message rejected by policy";
const ORIGINAL: &[u8] = b"From: scanner@local\r\nTo: a@example.org\r\nSubject: Quarterly report\r\nMessage-ID: <q1@local>\r\n\r\nSECRET BODY TEXT\r\n";

async fn setup(ca: &TestCa, times: Option<usize>) -> (SmtpUpstream, TestDaemon) {
    let up = SmtpUpstream::start(&ca.server_cert(), Mode::Implicit, USER, PASSWORD).await;
    {
        let mut s = up.script();
        s.data_reply = Some(REJECT.into());
        s.data_reply_times = times;
    }
    // The account table is last in the config: this key belongs to it.
    let toml = format!(
        "{}notify = \"admin@example.com\"\n",
        config(&Opts::new(up.port(), "implicit", &ca.ca_file))
    );
    let d = start(&toml).await;
    (up, d)
}

#[tokio::test]
async fn a_554_at_data_sends_a_notice_with_the_reply_and_headers() {
    let ca = TestCa::new();
    let (up, d) = setup(&ca, Some(1)).await;
    feed(&d, &["a@example.org"], ORIGINAL).await;
    let got = up.wait_for(1, WAIT).await;
    let notice = &got[0];
    assert_eq!(notice.rcpts, vec!["admin@example.com"]);
    assert_eq!(notice.mail_from, USER, "sent through the same account");
    let text = String::from_utf8_lossy(&notice.data).into_owned();
    let failed = d.daemon.context.spool.list_failed().unwrap();
    assert_eq!(failed.len(), 1, "the original is in the failed area");
    for want in [
        format!("From: <{USER}>\r\n"),
        "To: <admin@example.com>\r\n".to_string(),
        "Subject: Undelivered mail: Quarterly report\r\n".to_string(),
        "X-Mailbridge-Notice: failure\r\n".to_string(),
        REJECT.to_string(),
        failed[0].id.0.clone(),
        "a@example.org".to_string(),
        "Message-ID: <q1@local>\r\n".to_string(),
    ] {
        assert!(text.contains(&want), "missing {want:?} in:\n{text}");
    }
    assert!(!text.contains("SECRET BODY TEXT"), "no body: {text}");
    d.stop().await;
}

#[tokio::test]
async fn a_failing_notice_does_not_create_another() {
    let ca = TestCa::new();
    let (up, d) = setup(&ca, None).await;
    feed(&d, &["a@example.org"], ORIGINAL).await;
    let spool = &d.daemon.context.spool;
    eventually("original and notice failed", WAIT, || async {
        (spool.list_failed().unwrap().len() >= 2).then_some(())
    })
    .await;
    // Shutting down waits for the worker's tasks: anything they would queue is queued.
    let dir = d.stop().await;
    let spool = Spool::open(&dir.path().join("spool")).unwrap();
    let failed = spool.list_failed().unwrap();
    assert_eq!(failed.len(), 2, "{failed:#?}");
    assert!(spool.list_queued().unwrap().is_empty());
    assert_eq!(
        failed[1].envelope.mail_from, "",
        "a notice has a null sender"
    );
    assert_eq!(failed[1].envelope.recipients, vec!["admin@example.com"]);
    assert_eq!(up.shared.data_attempts.load(Ordering::SeqCst), 2);
    assert!(up.received().is_empty());
}

#[tokio::test]
async fn an_expired_message_is_reported_too() {
    let ca = TestCa::new();
    let up = SmtpUpstream::start(&ca.server_cert(), Mode::Implicit, USER, PASSWORD).await;
    up.script().data_reply = Some("451 4.3.0 try again later".into());
    let mut o = Opts::new(up.port(), "implicit", &ca.ca_file);
    o.delivery_extra = "expire_after = \"1s\"";
    let d = start(&format!("{}notify = \"admin@example.com\"\n", config(&o))).await;
    feed(&d, &["a@example.org"], ORIGINAL).await;
    let spool = &d.daemon.context.spool;
    eventually("original expired", WAIT, || async {
        (!spool.list_failed().unwrap().is_empty()).then_some(())
    })
    .await;
    up.script().data_reply = None;
    let got = up.wait_for(1, WAIT).await;
    let text = String::from_utf8_lossy(&got[0].data).into_owned();
    assert_eq!(got[0].rcpts, vec!["admin@example.com"]);
    assert!(text.contains("expired after"), "{text}");
    assert!(text.contains("451 4.3.0 try again later"), "{text}");
    d.stop().await;
}
