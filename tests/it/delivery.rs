//! The delivery worker end to end: the real daemon (in process, port 0), its
//! spool, and an in-process TLS SMTP upstream with a test CA.

use std::collections::HashSet;
use std::time::Duration;

use crate::support::ca::TestCa;
use crate::support::daemon::{start, start_in};
use crate::support::delivery::{config, eventually, feed, Opts, DOTTY, PASSWORD, USER};
use crate::support::smtp_upstream::{Mode, SmtpUpstream};
use mailbridge::spool::EntryState;

const WAIT: Duration = Duration::from_secs(10);

async fn upstream(ca: &TestCa, mode: Mode) -> SmtpUpstream {
    SmtpUpstream::start(&ca.server_cert(), mode, USER, PASSWORD).await
}

async fn queue_empty(d: &crate::support::daemon::TestDaemon) {
    let spool = &d.daemon.context.spool;
    eventually("queue empty", WAIT, || async {
        spool.list_queued().unwrap().is_empty().then_some(())
    })
    .await;
}

#[tokio::test]
async fn implicit_tls_auth_plain_dot_stuffing_byte_exact() {
    let ca = TestCa::new();
    let up = upstream(&ca, Mode::Implicit).await;
    let d = start(&config(&Opts::new(up.port(), "implicit", &ca.ca_file))).await;
    feed(&d, &["a@example.org"], DOTTY).await;
    let got = up.wait_for(1, WAIT).await;
    assert_eq!(got[0].data, DOTTY, "bytes must arrive exactly");
    assert_eq!(
        got[0].mail_from, USER,
        "envelope sender is the account address"
    );
    assert_eq!(got[0].rcpts, vec!["a@example.org"]);
    let auths = up.auths();
    assert_eq!(auths.len(), 1);
    assert_eq!(auths[0].mechanism, "PLAIN");
    assert_eq!(
        auths[0].password, PASSWORD,
        "spaces of the app password are removed"
    );
    queue_empty(&d).await;
    d.stop().await;
}

#[tokio::test]
async fn starttls_auth_login() {
    let ca = TestCa::new();
    let up = upstream(&ca, Mode::Starttls).await;
    up.script().mechanisms = Some(vec!["LOGIN"]);
    let d = start(&config(&Opts::new(up.port(), "starttls", &ca.ca_file))).await;
    feed(&d, &["b@example.org"], b"Subject: x\r\n\r\nhello\r\n").await;
    let got = up.wait_for(1, WAIT).await;
    assert_eq!(got[0].data, b"Subject: x\r\n\r\nhello\r\n");
    assert_eq!(up.auths()[0].mechanism, "LOGIN");
    assert!(up.auths()[0].ok);
    queue_empty(&d).await;
    d.stop().await;
}

#[tokio::test]
async fn wrong_ca_delivers_nothing_and_records_the_tls_error() {
    let ca = TestCa::new();
    let other = TestCa::named("some other CA");
    let up = SmtpUpstream::start(&other.server_cert(), Mode::Implicit, USER, PASSWORD).await;
    let d = start(&config(&Opts::new(up.port(), "implicit", &ca.ca_file))).await;
    let id = feed(&d, &["a@example.org"], b"x\r\n").await;
    let spool = &d.daemon.context.spool;
    let e = eventually("deferred", WAIT, || async {
        spool.entry(&id).ok().filter(|e| e.attempts >= 1)
    })
    .await;
    assert_eq!(e.state, EntryState::Deferred);
    let why = e.last_error.unwrap();
    assert!(why.contains("certificate"), "{why}");
    assert!(up.received().is_empty());
    assert!(
        up.auths().is_empty(),
        "no AUTH may be sent over an unverified connection"
    );
    d.stop().await;
}

#[tokio::test]
async fn plaintext_upstream_without_starttls_gets_no_credentials() {
    let ca = TestCa::new();
    let up = upstream(&ca, Mode::PlainOnly).await;
    let d = start(&config(&Opts::new(up.port(), "starttls", &ca.ca_file))).await;
    let id = feed(&d, &["a@example.org"], b"x\r\n").await;
    let spool = &d.daemon.context.spool;
    let e = eventually("deferred", WAIT, || async {
        spool.entry(&id).ok().filter(|e| e.attempts >= 1)
    })
    .await;
    assert!(e.last_error.unwrap().contains("STARTTLS"));
    assert!(up.auths().is_empty());
    d.stop().await;
}

#[tokio::test]
async fn temporary_failure_then_success() {
    let ca = TestCa::new();
    let up = upstream(&ca, Mode::Implicit).await;
    up.script().data_451 = 1;
    let d = start(&config(&Opts::new(up.port(), "implicit", &ca.ca_file))).await;
    feed(&d, &["a@example.org"], b"retry me\r\n").await;
    let got = up.wait_for(1, WAIT).await;
    assert_eq!(got[0].data, b"retry me\r\n");
    assert_eq!(
        up.shared
            .data_attempts
            .load(std::sync::atomic::Ordering::SeqCst),
        2
    );
    queue_empty(&d).await;
    d.stop().await;
}

#[tokio::test]
async fn permanent_failure_goes_to_the_failed_area() {
    let ca = TestCa::new();
    let up = upstream(&ca, Mode::Implicit).await;
    up.script().data_reply = Some("554 5.7.0 message rejected as spam".into());
    let d = start(&config(&Opts::new(up.port(), "implicit", &ca.ca_file))).await;
    let id = feed(&d, &["a@example.org"], b"spam\r\n").await;
    let spool = &d.daemon.context.spool;
    let e = eventually("failed", WAIT, || async {
        spool
            .entry(&id)
            .ok()
            .filter(|e| e.state == EntryState::Failed)
    })
    .await;
    let why = e.last_error.unwrap();
    assert!(why.contains("554 5.7.0 message rejected as spam"), "{why}");
    assert_eq!(spool.read_message(&id).unwrap(), b"spam\r\n");
    assert!(spool.list_queued().unwrap().is_empty());
    assert_eq!(
        up.shared
            .data_attempts
            .load(std::sync::atomic::Ordering::SeqCst),
        1,
        "never retried"
    );
    d.stop().await;
}

#[tokio::test]
async fn one_bad_recipient_does_not_block_the_others() {
    let ca = TestCa::new();
    let up = upstream(&ca, Mode::Implicit).await;
    up.script().reject_rcpts = HashSet::from(["bad@example.org".to_string()]);
    let d = start(&config(&Opts::new(up.port(), "implicit", &ca.ca_file))).await;
    feed(
        &d,
        &["good1@example.org", "bad@example.org", "good2@example.org"],
        b"hi\r\n",
    )
    .await;
    let got = up.wait_for(1, WAIT).await;
    assert_eq!(got[0].rcpts, vec!["good1@example.org", "good2@example.org"]);
    queue_empty(&d).await;
    let failed = d.daemon.context.spool.list_failed().unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].envelope.recipients, vec!["bad@example.org"]);
    assert!(failed[0]
        .last_error
        .as_deref()
        .unwrap()
        .contains("550 5.1.1"));
    d.stop().await;
}

#[tokio::test]
async fn restart_resumes_queued_mail() {
    let ca = TestCa::new();
    let up = upstream(&ca, Mode::Implicit).await;
    up.script().data_451 = 1_000_000;
    let toml = config(&Opts::new(up.port(), "implicit", &ca.ca_file));
    let d = start(&toml).await;
    let id = feed(&d, &["a@example.org"], b"survive a restart\r\n").await;
    let spool = &d.daemon.context.spool;
    eventually("deferred", WAIT, || async {
        spool.entry(&id).ok().filter(|e| e.attempts >= 1)
    })
    .await;
    let dir = d.stop().await;
    assert!(up.received().is_empty());
    up.script().data_451 = 0;
    let d = start_in(&toml, dir).await;
    let got = up.wait_for(1, WAIT).await;
    assert_eq!(got[0].data, b"survive a restart\r\n");
    queue_empty(&d).await;
    d.stop().await;
}

#[tokio::test]
async fn recipients_are_split_into_chunks_of_max_recipients() {
    let ca = TestCa::new();
    let up = upstream(&ca, Mode::Implicit).await;
    let d = start(&config(&Opts::new(up.port(), "implicit", &ca.ca_file))).await;
    let rcpts: Vec<String> = (0..150).map(|i| format!("r{i}@example.org")).collect();
    let refs: Vec<&str> = rcpts.iter().map(String::as_str).collect();
    feed(&d, &refs, b"many\r\n").await;
    let got = up.wait_for(2, WAIT).await;
    assert_eq!(got[0].rcpts.len(), 100);
    assert_eq!(got[1].rcpts.len(), 50);
    let all: Vec<String> = got.iter().flat_map(|r| r.rcpts.clone()).collect();
    assert_eq!(all, rcpts);
    queue_empty(&d).await;
    d.stop().await;
}

#[tokio::test]
async fn hanging_upstream_times_out_and_is_retried() {
    let ca = TestCa::new();
    let up = upstream(&ca, Mode::Implicit).await;
    up.script().hang_data = 1;
    let mut o = Opts::new(up.port(), "implicit", &ca.ca_file);
    o.delivery_extra = "concurrency = 1";
    let toml = config(&o).replace("timeout = \"5s\"", "timeout = \"1s\"");
    let d = start(&toml).await;
    let id = feed(&d, &["a@example.org"], b"patience\r\n").await;
    let got = up.wait_for(1, WAIT).await;
    assert_eq!(got[0].data, b"patience\r\n");
    assert_eq!(
        up.shared
            .data_attempts
            .load(std::sync::atomic::Ordering::SeqCst),
        2
    );
    queue_empty(&d).await;
    assert!(d.daemon.context.spool.entry(&id).is_err());
    d.stop().await;
}

#[tokio::test]
async fn one_connection_carries_many_messages() {
    let ca = TestCa::new();
    let up = upstream(&ca, Mode::Implicit).await;
    let mut o = Opts::new(up.port(), "implicit", &ca.ca_file);
    o.delivery_extra = "concurrency = 1";
    let d = start(&config(&o)).await;
    for i in 0..5 {
        feed(
            &d,
            &["a@example.org"],
            format!("message {i}\r\n").as_bytes(),
        )
        .await;
    }
    let got = up.wait_for(5, WAIT).await;
    let bodies: Vec<Vec<u8>> = got.iter().map(|r| r.data.clone()).collect();
    let expected: Vec<Vec<u8>> = (0..5)
        .map(|i| format!("message {i}\r\n").into_bytes())
        .collect();
    assert_eq!(bodies, expected, "order of acceptance kept");
    assert_eq!(up.connections(), 1);
    assert_eq!(up.auths().len(), 1);
    d.stop().await;
}

#[tokio::test]
async fn account_without_password_holds_mail() {
    let ca = TestCa::new();
    let up = upstream(&ca, Mode::Implicit).await;
    let mut o = Opts::new(up.port(), "implicit", &ca.ca_file);
    o.password_line = "password_env = \"MAILBRIDGE_TEST_NEVER_SET\"";
    let d = start(&config(&o)).await;
    let id = feed(&d, &["a@example.org"], b"wait\r\n").await;
    let spool = &d.daemon.context.spool;
    let e = eventually("held", WAIT, || async {
        spool
            .entry(&id)
            .ok()
            .filter(|e| e.state == EntryState::Held)
    })
    .await;
    assert!(e.last_error.unwrap().contains("MAILBRIDGE_TEST_NEVER_SET"));
    assert_eq!(up.connections(), 0);
    d.stop().await;
}

#[tokio::test]
async fn damaged_spool_entry_is_moved_aside_and_the_rest_delivered() {
    let ca = TestCa::new();
    let up = upstream(&ca, Mode::Implicit).await;
    let toml = config(&Opts::new(up.port(), "implicit", &ca.ca_file));
    let dir = tempfile::tempdir().unwrap();
    let queue = dir.path().join("spool/queue");
    std::fs::create_dir_all(&queue).unwrap();
    std::fs::write(queue.join("00000000000001-0bad.msg"), b"{not json\n").unwrap();
    let d = start_in(&toml, dir).await;
    feed(&d, &["a@example.org"], b"fine\r\n").await;
    up.wait_for(1, WAIT).await;
    assert!(d
        .spool_dir()
        .join("corrupt/00000000000001-0bad.msg")
        .exists());
    d.stop().await;
}

#[tokio::test]
async fn outage_then_recovery_delivers_everything_in_order() {
    let ca = TestCa::new();
    let up = upstream(&ca, Mode::Implicit).await;
    up.script().greeting = Some("421 4.3.2 service not available".into());
    let mut o = Opts::new(up.port(), "implicit", &ca.ca_file);
    o.delivery_extra = "concurrency = 1";
    let d = start(&config(&o)).await;
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(feed(&d, &["a@example.org"], format!("n{i:02}\r\n").as_bytes()).await);
    }
    let spool = &d.daemon.context.spool;
    let first = &ids[0];
    let e = eventually("first attempt", WAIT, || async {
        spool.entry(first).ok().filter(|e| e.attempts >= 1)
    })
    .await;
    assert!(e.last_error.unwrap().contains("421 4.3.2"));
    // The outage costs one attempt per back-off interval, not one per message.
    let tried_during_outage = up.connections();
    up.script().greeting = None;
    let got = up.wait_for(20, WAIT).await;
    let bodies: Vec<String> = got
        .iter()
        .map(|r| String::from_utf8_lossy(&r.data).into_owned())
        .collect();
    let expected: Vec<String> = (0..20).map(|i| format!("n{i:02}\r\n")).collect();
    assert_eq!(bodies, expected, "order of acceptance kept");
    assert!(
        tried_during_outage < 10,
        "{tried_during_outage} connections during the outage"
    );
    assert!(spool.list_failed().unwrap().is_empty());
    queue_empty(&d).await;
    d.stop().await;
}

#[tokio::test]
async fn expired_message_goes_to_the_failed_area() {
    let ca = TestCa::new();
    let mut o = Opts::new(1, "implicit", &ca.ca_file);
    o.delivery_extra = "expire_after = \"300ms\"";
    let d = start(&config(&o)).await;
    let id = feed(&d, &["a@example.org"], b"too late\r\n").await;
    let spool = &d.daemon.context.spool;
    let e = eventually("expired", WAIT, || async {
        spool
            .entry(&id)
            .ok()
            .filter(|e| e.state == EntryState::Failed)
    })
    .await;
    let why = e.last_error.unwrap();
    assert!(
        why.contains("expired after") && why.contains("refused"),
        "{why}"
    );
    d.stop().await;
}

/// Not a timed test: `cargo test --release --test delivery throughput -- --ignored --nocapture`
/// prints how fast the spool and worker move 2,000 small messages to the test upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn throughput() {
    let ca = TestCa::new();
    let up = upstream(&ca, Mode::Implicit).await;
    let d = start(&config(&Opts::new(up.port(), "implicit", &ca.ca_file))).await;
    let n = 2000;
    let body = format!("Subject: load\r\n\r\n{}\r\n", "x".repeat(1000));
    let t0 = std::time::Instant::now();
    let mut feeders = Vec::new();
    for _ in 0..10 {
        let ctx = d.daemon.context.clone();
        let body = body.clone();
        feeders.push(tokio::spawn(async move {
            for _ in 0..n / 10 {
                let env = crate::support::delivery::envelope(&["a@example.org"]);
                ctx.spool.enqueue(&env, body.as_bytes()).await.unwrap();
                ctx.wake_delivery.notify_one();
            }
        }));
    }
    for f in feeders {
        f.await.unwrap();
    }
    let spooled = t0.elapsed();
    up.wait_for(n, Duration::from_secs(120)).await;
    let all = t0.elapsed();
    eprintln!(
        "{n} messages: enqueued at {:.0}/s, delivered at {:.0}/s over {} upstream connections",
        n as f64 / spooled.as_secs_f64(),
        n as f64 / all.as_secs_f64(),
        up.connections()
    );
    d.stop().await;
}

#[tokio::test]
async fn shutdown_finishes_the_message_in_hand_and_keeps_it_queued() {
    let ca = TestCa::new();
    let up = upstream(&ca, Mode::Implicit).await;
    up.script().hang_data = 1;
    let toml = config(&Opts::new(up.port(), "implicit", &ca.ca_file))
        .replace("timeout = \"5s\"", "timeout = \"1s\"");
    let d = start(&toml).await;
    let id = feed(&d, &["a@example.org"], b"in hand\r\n").await;
    let attempts = &up.shared.data_attempts;
    eventually("upstream hangs on it", WAIT, || async {
        (attempts.load(std::sync::atomic::Ordering::SeqCst) >= 1).then_some(())
    })
    .await;
    let t0 = std::time::Instant::now();
    let dir = d.stop().await;
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "shutdown bounded by the delivery timeout"
    );
    let spool = mailbridge::spool::Spool::open(&dir.path().join("spool")).unwrap();
    let e = spool.entry(&id).unwrap();
    assert_eq!(e.state, EntryState::Deferred);
    assert!(e.last_error.unwrap().contains("timed out"));
}

#[tokio::test]
async fn eight_bit_message_is_declared_and_arrives_unchanged() {
    let ca = TestCa::new();
    let up = upstream(&ca, Mode::Implicit).await;
    let d = start(&config(&Opts::new(up.port(), "implicit", &ca.ca_file))).await;
    let msg = "Subject: =?utf-8?q?caf=C3=A9?=\r\n\r\ncafé crème\r\n".as_bytes();
    let mut env = crate::support::delivery::envelope(&["a@example.org"]);
    env.body_8bit = true;
    d.daemon.context.spool.enqueue(&env, msg).await.unwrap();
    d.daemon.context.wake_delivery.notify_one();
    let got = up.wait_for(1, WAIT).await;
    assert_eq!(got[0].data, msg);
    assert!(
        got[0].mail_params.contains("BODY=8BITMIME"),
        "{:?}",
        got[0].mail_params
    );
    d.stop().await;
}

/// A quoted local part is a different mailbox from its unquoted text: it goes
/// from the client through the spool to the upstream exactly as received.
#[tokio::test]
async fn quoted_local_part_reaches_the_upstream_quoted() {
    let ca = TestCa::new();
    let up = upstream(&ca, Mode::Implicit).await;
    let d = start(&config(&Opts::new(up.port(), "implicit", &ca.ca_file))).await;
    let (mut c, _) = crate::support::smtp::Client::connect(d.smtp_addr()).await;
    crate::support::smtp::assert_ok(&c.cmd("EHLO device").await, "250");
    let reply = c
        .send_mail(
            "\"x y\"@example.com",
            &["\"a b\"@example.com", "\"c\\\"d\"@example.com"],
            b"Subject: quoted\r\n\r\nhi",
        )
        .await;
    let id = crate::support::smtp::queue_id(&reply);
    let got = up.wait_for(1, WAIT).await;
    // The test upstream records what was between `RCPT TO:<` and `>`.
    assert_eq!(
        got[0].rcpts,
        vec!["\"a b\"@example.com", "\"c\\\"d\"@example.com"]
    );
    queue_empty(&d).await;
    assert!(
        d.daemon.context.spool.entry(&id).is_err(),
        "delivered and removed"
    );
    d.stop().await;
}
