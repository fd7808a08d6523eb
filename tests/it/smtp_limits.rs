//! Inbound SMTP limits and bad input over real sockets: each is answered
//! with the right reply, the session (or at least the daemon) keeps serving.

use std::time::{Duration, Instant};

use crate::support::smtp::*;
use tokio::io::AsyncWriteExt;

#[tokio::test]
async fn size_limit_at_mail_and_in_body() {
    let d = start("max_message_size = 2048").await;
    let (mut c, _) = Client::connect(d.smtp_addr()).await;
    let ehlo = c.cmd("EHLO dev").await;
    assert!(ehlo.contains("250-SIZE 2048\r\n"), "{ehlo}");
    assert_eq!(
        c.cmd("MAIL FROM:<a@example.com> SIZE=2049").await,
        "552 5.3.4 Message size exceeds fixed maximum message size\r\n"
    );
    assert_ok(
        &c.cmd("MAIL FROM:<a@example.com> SIZE=999999999999999999999999999")
            .await,
        "552 5.3.4",
    );
    // Undeclared, the body goes over: read to the end, then 552.
    let before = queue_len(&d);
    assert_ok(&c.cmd("MAIL FROM:<a@example.com> SIZE=100").await, "250");
    assert_ok(&c.cmd("RCPT TO:<b@example.com>").await, "250");
    assert_ok(&c.cmd("DATA").await, "354");
    let line = format!("{}\r\n", "x".repeat(78));
    for _ in 0..200 {
        c.send(line.as_bytes()).await;
    }
    c.send(b".\r\n").await;
    assert_ok(&c.reply().await, "552 5.3.4");
    assert_eq!(queue_len(&d), before);
    // The same session goes on.
    let r = c
        .send_mail("a@example.com", &["b@example.com"], b"Subject: small")
        .await;
    queue_id(&r);
    d.stop().await;
}

#[tokio::test]
async fn line_too_long_then_session_works() {
    let d = start("").await;
    let (mut c, _) = Client::connect(d.smtp_addr()).await;
    c.cmd("EHLO dev").await;
    let long = format!("NOOP {}", "a".repeat(100_000));
    assert_eq!(c.cmd(&long).await, "500 5.5.2 Line too long\r\n");
    let long = format!("MAIL FROM:<{}@example.com>", "a".repeat(5000));
    assert_eq!(c.cmd(&long).await, "500 5.5.2 Line too long\r\n");
    assert_eq!(c.cmd("NOOP").await, "250 2.0.0 Ok\r\n");
    let r = c
        .send_mail("a@example.com", &["b@example.com"], b"Subject: after")
        .await;
    queue_id(&r);
    d.stop().await;
}

#[tokio::test]
async fn too_many_recipients() {
    let d = start("").await;
    let (mut c, _) = Client::connect(d.smtp_addr()).await;
    c.cmd("EHLO dev").await;
    assert_ok(&c.cmd("MAIL FROM:<a@example.com>").await, "250");
    // Pipelined in one write, replies read after.
    let mut batch = String::new();
    for i in 0..1001 {
        batch.push_str(&format!("RCPT TO:<r{i}@example.com>\r\n"));
    }
    c.send(batch.as_bytes()).await;
    for i in 0..1000 {
        let r = c.reply().await;
        assert!(r.starts_with("250 2.1.5"), "rcpt {i}: {r}");
    }
    assert_eq!(c.reply().await, "452 4.5.3 Too many recipients\r\n");
    assert_ok(&c.cmd("DATA").await, "354");
    c.send(b"Subject: many\r\n\r\nx\r\n.\r\n").await;
    let (entry, _) = stored(&d, &queue_id(&c.reply().await));
    assert_eq!(entry.envelope.recipients.len(), 1000);
    d.stop().await;
}

#[tokio::test]
async fn bad_commands_get_replies() {
    let d = start("").await;
    let (mut c, _) = Client::connect(d.smtp_addr()).await;
    let cases: &[(&[u8], &str)] = &[
        (b"XYZZY\r\n", "502 5.5.2"),
        (b"\r\n", "502 5.5.2"),
        (b"NOOP \0\r\n", "500 5.5.2"),
        (b"MAIL FROM:<\xff\xfe@example.com>\r\n", "500 5.5.2"),
        (b"RCPT TO:<a@example.com>\r\n", "503 5.5.1"),
        (b"DATA\r\n", "503 5.5.1"),
        (b"MAIL FROM:<a b@example.com>\r\n", "501 5.1.7"),
        (b"MAIL FROM:a@example.com\r\n", "501 5.5.4"),
        (b"MAIL FROM:<a@example.com> BODY=9BIT\r\n", "501 5.5.4"),
        (b"MAIL FROM:<a@example.com> FOO=1\r\n", "555 5.5.4"),
        (b"HELO\r\n", "501 5.5.4"),
        (b"VRFY someone\r\n", "252 2.5.0"),
        (b"HELP\r\n", "214 2.0.0"),
        (b"STARTTLS\r\n", "454 4.7.0"),
        (b"AUTH CRAM-MD5\r\n", "504 5.5.4"),
        (b"AUTH PLAIN !!!\r\n", "501 5.5.2"),
        (b"MAIL FROM:<a@example.com> AUTH=<>\r\n", "250 2.1.0"),
        (b"MAIL FROM:<a@example.com>\r\n", "503 5.5.1"),
        (b"RCPT TO:<postmaster>\r\n", "501 5.1.3"),
        (b"RSET\r\n", "250 2.0.0"),
    ];
    for (input, expected) in cases {
        c.send(input).await;
        let r = c.reply().await;
        assert!(
            r.starts_with(expected),
            "{:?}: expected {expected}, got {r:?}",
            String::from_utf8_lossy(input)
        );
    }
    assert_eq!(c.cmd("QUIT").await, "221 2.0.0 Bye\r\n");
    assert_serves(&d).await;
    d.stop().await;
}

#[tokio::test]
async fn too_many_errors_closes_the_session() {
    let d = start("").await;
    let (mut c, _) = Client::connect(d.smtp_addr()).await;
    c.send("BOGUS\r\n".repeat(25).as_bytes()).await;
    for _ in 0..19 {
        assert_ok(&c.reply().await, "502 5.5.2");
    }
    assert_ok(&c.reply().await, "502 5.5.2");
    assert_eq!(
        c.reply().await,
        format!("421 4.7.0 {HOST} Error: too many errors\r\n")
    );
    c.expect_closed().await;
    assert_serves(&d).await;
    d.stop().await;
}

#[tokio::test]
async fn idle_client_gets_421() {
    let d = start("idle_timeout = \"1s\"").await;
    let (mut c, _) = Client::connect(d.smtp_addr()).await;
    assert_ok(&c.cmd("EHLO dev").await, "250");
    let t = Instant::now();
    assert_eq!(
        c.reply().await,
        format!("421 4.4.2 {HOST} Error: timeout exceeded\r\n")
    );
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
    c.expect_closed().await;
    // Also in the middle of DATA.
    let (mut c, _) = Client::connect(d.smtp_addr()).await;
    assert_ok(&c.cmd("MAIL FROM:<a@example.com>").await, "250");
    assert_ok(&c.cmd("RCPT TO:<b@example.com>").await, "250");
    assert_ok(&c.cmd("DATA").await, "354");
    c.send(b"Subject: slow\r\n").await;
    assert_ok(&c.reply().await, "421 4.4.2");
    c.expect_closed().await;
    assert_eq!(queue_len(&d), 0);
    assert_serves(&d).await;
    d.stop().await;
}

#[tokio::test]
async fn slow_command_is_cut_off() {
    // One byte every 200 ms never lets the idle timer fire, but the whole
    // line must arrive within the timeout of its first byte.
    let d = start("idle_timeout = \"1s\"").await;
    let (mut c, _) = Client::connect(d.smtp_addr()).await;
    let t = Instant::now();
    let writer = async {
        for b in b"NOOP and more..." {
            if c.r.get_mut().write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), writer)
        .await
        .unwrap();
    let r = c.reply().await;
    assert!(r.starts_with("421 4.4.2"), "{r:?}");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert_serves(&d).await;
    d.stop().await;
}

#[tokio::test]
async fn spool_write_error_is_452_and_nothing_acknowledged() {
    let d = start("").await;
    let tmp = d.spool_dir().join("tmp");
    let aside = d.spool_dir().join("tmp.aside");
    std::fs::rename(&tmp, &aside).unwrap();
    std::fs::write(&tmp, b"not a directory").unwrap();
    let (mut c, _) = Client::connect(d.smtp_addr()).await;
    c.cmd("EHLO dev").await;
    let r = c
        .send_mail("a@example.com", &["b@example.com"], b"Subject: lost?")
        .await;
    assert_eq!(r, "452 4.3.1 Insufficient system storage\r\n");
    assert_eq!(queue_len(&d), 0);
    // Space comes back: the same session is served.
    std::fs::remove_file(&tmp).unwrap();
    std::fs::rename(&aside, &tmp).unwrap();
    let r = c
        .send_mail("a@example.com", &["b@example.com"], b"Subject: ok")
        .await;
    queue_id(&r);
    d.stop().await;
}
