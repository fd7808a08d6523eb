//! Inbound SMTP over real sockets against the real daemon: syntax tolerance,
//! message fix-ups, byte-exact storage, pipelining, AUTH and access control.
//! (Limits and hostile input: tests/smtp_limits.rs.)

use crate::support::smtp::*;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;

#[tokio::test]
async fn null_sender_space_after_colon_and_fixups_added() {
    let d = start("").await;
    let (mut c, greeting) = Client::connect(d.smtp_addr()).await;
    assert_eq!(greeting, format!("220 {HOST} ESMTP mailbridge\r\n"));
    let ehlo = c.cmd("EHLO printer.lan").await;
    for ext in [
        "PIPELINING",
        "SIZE 26214400",
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
        "AUTH PLAIN LOGIN",
    ] {
        assert!(
            ehlo.contains(&format!("250-{ext}\r\n")) || ehlo.contains(&format!("250 {ext}\r\n")),
            "{ext}: {ehlo}"
        );
    }
    assert_eq!(c.cmd("MAIL FROM:<>").await, "250 2.1.0 Ok\r\n");
    assert_eq!(c.cmd("RCPT TO: <to@example.com>").await, "250 2.1.5 Ok\r\n");
    assert_ok(&c.cmd("DATA").await, "354");
    c.send(b"Subject: scan\r\nFrom: printer@lan\r\n\r\nhello\r\n.\r\n")
        .await;
    let id = queue_id(&c.reply().await);
    let (entry, bytes) = stored(&d, &id);
    assert_eq!(entry.envelope.mail_from, "");
    assert_eq!(
        entry.envelope.recipients,
        vec!["to@example.com".to_string()]
    );
    assert_eq!(entry.envelope.account, "acct");
    assert_eq!(entry.envelope.helo, "printer.lan");
    assert_eq!(entry.envelope.local_user, None);
    let added = added_part(
        &bytes,
        b"Subject: scan\r\nFrom: printer@lan\r\n\r\nhello\r\n",
    );
    assert!(
        added.starts_with(&format!(
            "Received: from printer.lan (127.0.0.1)\r\n\tby {HOST} (mailbridge) with ESMTP id "
        )),
        "{added}"
    );
    assert!(added.contains("\r\nDate: "), "{added}");
    assert!(
        added.contains("\r\nMessage-ID: <") && added.contains(&format!("@{HOST}>\r\n")),
        "{added}"
    );

    // Date and Message-ID present: only Received is added; MAIL FROM with a space.
    assert_eq!(
        c.cmd("MAIL FROM: <a@example.com>").await,
        "250 2.1.0 Ok\r\n"
    );
    assert_eq!(c.cmd("RCPT TO:<to@example.com>").await, "250 2.1.5 Ok\r\n");
    assert_ok(&c.cmd("DATA").await, "354");
    let msg = b"Date: Mon, 1 Jan 2024 10:00:00 +0000\r\nMessage-ID: <m1@lan>\r\nSubject: x\r\n\r\nbody\r\n";
    c.send(msg).await;
    c.send(b".\r\n").await;
    let id = queue_id(&c.reply().await);
    let (_, bytes) = stored(&d, &id);
    let added = added_part(&bytes, msg);
    assert!(
        !added.contains("Date:") && !added.contains("Message-ID:"),
        "{added}"
    );
    assert_eq!(c.cmd("QUIT").await, "221 2.0.0 Bye\r\n");
    c.expect_closed().await;
    d.stop().await;
}

#[tokio::test]
async fn bare_lf_dot_stuffing_and_8bit_stored_exactly() {
    let d = start("").await;
    let (mut c, _) = Client::connect(d.smtp_addr()).await;
    c.cmd("EHLO dev").await;
    assert_ok(
        &c.cmd("MAIL FROM:<s\u{e9}nder@exampl\u{e9}.com> SMTPUTF8 BODY=8BITMIME")
            .await,
        "250",
    );
    assert_ok(&c.cmd("RCPT TO:<\u{fc}ser@example.com>").await, "250");
    assert_ok(&c.cmd("DATA").await, "354");
    // Bare LF line ends, a stuffed dot line (".." = "."), a stuffed ".hidden"
    // line, 8-bit Latin-1 and UTF-8 bytes.
    let mut sent: Vec<u8> =
        b"Subject: caf\xc3\xa9\nMessage-ID: <x@y>\nDate: Mon, 1 Jan 2024 10:00:00 +0000\n\n"
            .to_vec();
    sent.extend_from_slice(
        b"line1\n..\r\n..hidden\r\nlatin1 \xe9\xff\r\n\xf0\x9f\x98\x80\r\n.\r\n",
    );
    c.send(&sent).await;
    let id = queue_id(&c.reply().await);
    let (entry, bytes) = stored(&d, &id);
    let expected: &[u8] = b"Subject: caf\xc3\xa9\r\nMessage-ID: <x@y>\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\n\r\nline1\r\n.\r\n.hidden\r\nlatin1 \xe9\xff\r\n\xf0\x9f\x98\x80\r\n";
    let added = added_part(&bytes, expected);
    assert!(added.contains(" with UTF8SMTP id "), "{added}");
    assert!(entry.envelope.smtputf8 && entry.envelope.body_8bit);
    assert_eq!(entry.envelope.mail_from, "s\u{e9}nder@exampl\u{e9}.com");
    // No bare CR or LF anywhere in what upstream will get.
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'\n' {
            assert_eq!(bytes[i - 1], b'\r');
        }
        if *b == b'\r' {
            assert_eq!(bytes[i + 1], b'\n');
        }
    }
    d.stop().await;
}

#[tokio::test]
async fn pipelining_in_one_write() {
    let d = start("").await;
    let (mut c, _) = Client::connect(d.smtp_addr()).await;
    c.send(
        b"EHLO pipe\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nRCPT TO:<c@example.com>\r\nDATA\r\n\
Subject: p\r\n\r\npipelined\r\n.\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<d@example.com>\r\nDATA\r\nSubject: q\r\n\r\nsecond\r\n.\r\nQUIT\r\n",
    )
    .await;
    assert_ok(&c.reply().await, "250-relay.test");
    assert_ok(&c.reply().await, "250 2.1.0");
    assert_ok(&c.reply().await, "250 2.1.5");
    assert_ok(&c.reply().await, "250 2.1.5");
    assert_ok(&c.reply().await, "354");
    let first = queue_id(&c.reply().await);
    assert_ok(&c.reply().await, "250 2.1.0");
    assert_ok(&c.reply().await, "250 2.1.5");
    assert_ok(&c.reply().await, "354");
    let second = queue_id(&c.reply().await);
    assert_eq!(c.reply().await, "221 2.0.0 Bye\r\n");
    c.expect_closed().await;
    let (e1, b1) = stored(&d, &first);
    assert_eq!(e1.envelope.recipients.len(), 2);
    assert!(b1.ends_with(b"\r\n\r\npipelined\r\n"));
    let (e2, b2) = stored(&d, &second);
    assert_eq!(e2.envelope.recipients, vec!["d@example.com".to_string()]);
    assert!(b2.ends_with(b"\r\n\r\nsecond\r\n"));
    d.stop().await;
}

#[tokio::test]
async fn smuggling_payloads_do_not_end_the_message() {
    let d = start("").await;
    // `\r\n.\n` too: an LF-only client may end with it, a CRLF session may not.
    for payload in [&b"\n.\n"[..], b"\r\n.\r", b"\n.\r\n", b"\r\n.\n"] {
        let (mut c, _) = Client::connect(d.smtp_addr()).await;
        c.cmd("EHLO smuggler").await;
        let before = queue_len(&d);
        assert_ok(&c.cmd("MAIL FROM:<a@example.com>").await, "250");
        assert_ok(&c.cmd("RCPT TO:<b@example.com>").await, "250");
        assert_ok(&c.cmd("DATA").await, "354");
        let mut body = b"Subject: s\r\n\r\nfirst".to_vec();
        body.extend_from_slice(payload);
        body.extend_from_slice(b"MAIL FROM:<evil@example.com>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\nSubject: smuggled\r\n\r\nevil\r\n.\r\nQUIT\r\n");
        c.send(&body).await;
        // Exactly one message, holding the smuggled text as content.
        let id = queue_id(&c.reply().await);
        assert_eq!(c.reply().await, "221 2.0.0 Bye\r\n", "payload {payload:?}");
        c.expect_closed().await;
        assert_eq!(queue_len(&d), before + 1);
        let (entry, bytes) = stored(&d, &id);
        assert_eq!(entry.envelope.recipients, vec!["b@example.com".to_string()]);
        let expected: &[u8] = b"Subject: s\r\n\r\nfirst\r\n.\r\nMAIL FROM:<evil@example.com>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\nSubject: smuggled\r\n\r\nevil\r\n";
        added_part(&bytes, expected);
    }
    assert_serves(&d).await;
    d.stop().await;
}

fn plain(user: &str, pass: &str) -> String {
    STANDARD.encode(format!("\0{user}\0{pass}"))
}

#[tokio::test]
async fn auth_plain_and_login_right_and_wrong() {
    let d = start("").await;
    let (mut c, _) = Client::connect(d.smtp_addr()).await;
    c.cmd("EHLO dev").await;
    assert_eq!(
        c.cmd(&format!("AUTH PLAIN {}", plain(USER, "wrong"))).await,
        "535 5.7.8 Authentication credentials invalid\r\n"
    );
    assert_eq!(c.cmd("AUTH PLAIN").await, "334 \r\n");
    assert_eq!(c.cmd("*").await, "501 5.7.0 Authentication cancelled\r\n");
    assert_eq!(c.cmd("AUTH PLAIN").await, "334 \r\n");
    assert_eq!(
        c.cmd(&plain(USER, PASSWORD)).await,
        "235 2.7.0 Authentication successful\r\n"
    );
    assert_ok(&c.cmd("AUTH PLAIN").await, "503 5.5.1");
    let r = c
        .send_mail("a@example.com", &["b@example.com"], b"Subject: authed")
        .await;
    let (entry, bytes) = stored(&d, &queue_id(&r));
    assert_eq!(entry.envelope.local_user.as_deref(), Some(USER));
    assert!(String::from_utf8_lossy(&bytes).contains(" with ESMTPA id "));

    let (mut c, _) = Client::connect(d.smtp_addr()).await;
    c.cmd("EHLO dev").await;
    assert_eq!(c.cmd("AUTH LOGIN").await, "334 VXNlcm5hbWU6\r\n");
    assert_eq!(c.cmd(&STANDARD.encode(USER)).await, "334 UGFzc3dvcmQ6\r\n");
    assert_ok(&c.cmd(&STANDARD.encode("nope")).await, "535 5.7.8");
    assert_eq!(
        c.cmd(&format!("AUTH LOGIN {}", STANDARD.encode(USER)))
            .await,
        "334 UGFzc3dvcmQ6\r\n"
    );
    assert_ok(&c.cmd(&STANDARD.encode(PASSWORD)).await, "235 2.7.0");
    d.stop().await;
}

#[tokio::test]
async fn require_auth_refuses_mail_before_auth() {
    let d = start("require_auth = true").await;
    let (mut c, _) = Client::connect(d.smtp_addr()).await;
    c.cmd("EHLO dev").await;
    assert_eq!(
        c.cmd("MAIL FROM:<a@example.com>").await,
        "530 5.7.0 Authentication required\r\n"
    );
    assert_ok(
        &c.cmd(&format!("AUTH PLAIN {}", plain(USER, PASSWORD)))
            .await,
        "235",
    );
    let r = c
        .send_mail("a@example.com", &["b@example.com"], b"Subject: x")
        .await;
    queue_id(&r);
    d.stop().await;
}

#[tokio::test]
async fn lettre_client_with_auth() {
    use lettre::address::{Address, Envelope};
    use lettre::transport::smtp::authentication::{Credentials, Mechanism};
    use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

    let d = start("require_auth = true").await;
    let envelope = Envelope::new(
        Some("scanner@example.com".parse::<Address>().unwrap()),
        vec!["me@example.com".parse::<Address>().unwrap()],
    )
    .unwrap();
    // lettre dot-stuffs on send; the stored bytes must be these again.
    let message = b"From: scanner@example.com\r\nTo: me@example.com\r\nSubject: lettre\r\nMessage-ID: <l@example.com>\r\n\r\nHello\r\n.\r\n..two dots\r\n.x\r\nend\r\n";
    for mech in [Mechanism::Plain, Mechanism::Login] {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
            .port(d.smtp_addr().port())
            .credentials(Credentials::new(USER.into(), PASSWORD.into()))
            .authentication(vec![mech])
            .build();
        // send_raw appends CRLF.CRLF itself: give it the message without its last CRLF.
        let resp = transport
            .send_raw(&envelope, &message[..message.len() - 2])
            .await
            .unwrap();
        assert_eq!(resp.code().to_string(), "250");
        let text = resp.message().collect::<Vec<_>>().join(" ");
        let id = text.rsplit(' ').next().unwrap().to_string();
        let (entry, bytes) = stored(&d, &mailbridge::spool::QueueId(id));
        assert_eq!(entry.envelope.local_user.as_deref(), Some(USER));
        let added = added_part(&bytes, message);
        assert!(
            added.contains("Date: ") && !added.contains("Message-ID"),
            "{added}"
        );
    }
    // Wrong password: lettre sees the 535.
    let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(d.smtp_addr().port())
        .credentials(Credentials::new(USER.into(), "wrong".into()))
        .authentication(vec![Mechanism::Plain])
        .build();
    let err = transport
        .send_raw(&envelope, b"Subject: x\r\n\r\nx")
        .await
        .unwrap_err();
    assert_eq!(
        err.status().map(|c| c.to_string()),
        Some("535".to_string()),
        "{err}"
    );
    d.stop().await;
}

#[tokio::test]
async fn client_outside_allowed_networks_gets_554() {
    let d = start("allowed_networks = [\"127.0.0.1/32\"]").await;
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let s = sock.connect(d.smtp_addr()).await.unwrap();
    let (mut c, greeting) = Client::from_stream(s).await;
    assert_eq!(greeting, "554 5.7.1 Access denied\r\n");
    c.expect_closed().await;
    assert_serves(&d).await;
    d.stop().await;
}

#[tokio::test]
async fn shutdown_tells_idle_sessions() {
    let d = start("").await;
    let (mut c, _) = Client::connect(d.smtp_addr()).await;
    assert_ok(&c.cmd("EHLO dev").await, "250");
    let stopping = tokio::spawn(d.stop());
    assert_eq!(
        c.reply().await,
        format!("421 4.3.0 {HOST} shutting down\r\n")
    );
    c.expect_closed().await;
    stopping.await.unwrap();
}

#[tokio::test]
async fn direct_mode_passes_the_upstream_verdict_back() {
    // The upstream (port 1) refuses connections: the client gets a 4xx and
    // nothing is acknowledged or queued.
    let d = start("mode = \"direct\"").await;
    let (mut c, _) = Client::connect(d.smtp_addr()).await;
    c.cmd("EHLO dev").await;
    let r = c
        .send_mail("a@example.com", &["b@example.com"], b"Subject: direct")
        .await;
    assert!(r.starts_with("451 4.4.1 "), "{r}");
    assert_eq!(queue_len(&d), 0);
    assert_ok(&c.cmd("NOOP").await, "250");
    d.stop().await;
}

#[tokio::test]
async fn shutdown_lets_a_message_in_data_finish() {
    let d = start("").await;
    let (mut c, _) = Client::connect(d.smtp_addr()).await;
    c.cmd("EHLO dev").await;
    assert_ok(&c.cmd("MAIL FROM:<a@example.com>").await, "250");
    assert_ok(&c.cmd("RCPT TO:<b@example.com>").await, "250");
    assert_ok(&c.cmd("DATA").await, "354");
    c.send(b"Subject: in flight\r\n\r\nfirst half\r\n").await;
    let spool = d.daemon.context.clone();
    let token = d.daemon.shutdown_token();
    let stopping = tokio::spawn(d.stop());
    token.cancelled().await;
    c.send(b"second half\r\n.\r\n").await;
    let id = queue_id(&c.reply().await);
    assert_eq!(
        c.reply().await,
        format!("421 4.3.0 {HOST} shutting down\r\n")
    );
    c.expect_closed().await;
    let _dir = stopping.await.unwrap();
    let bytes = spool.spool.read_message(&id).unwrap();
    assert!(bytes.ends_with(b"first half\r\nsecond half\r\n"));
}

/// Sends `line` with a bare LF and reads the reply.
async fn lf_cmd(c: &mut Client, line: &str) -> String {
    c.send(format!("{line}\n").as_bytes()).await;
    c.reply().await
}

#[tokio::test]
async fn lf_only_client_is_answered_and_ends_data_with_lf_dot_lf() {
    let d = start("").await;
    let (mut c, _) = Client::connect(d.smtp_addr()).await;
    assert_ok(&lf_cmd(&mut c, "HELO oldscanner").await, "250");
    assert_ok(&lf_cmd(&mut c, "MAIL FROM:<scan@lan>").await, "250");
    assert_ok(&lf_cmd(&mut c, "RCPT TO:<to@example.com>").await, "250");
    assert_ok(&lf_cmd(&mut c, "DATA").await, "354");
    c.send(b"Subject: scan\nFrom: scan@lan\n\npage 1\n..dot\n.\n")
        .await;
    let id = queue_id(&c.reply().await);
    let (_, bytes) = stored(&d, &id);
    added_part(
        &bytes,
        b"Subject: scan\r\nFrom: scan@lan\r\n\r\npage 1\r\n.dot\r\n",
    );
    assert_crlf_only(&bytes);
    // A second message on the same session, then QUIT, all bare LF.
    assert_ok(&lf_cmd(&mut c, "MAIL FROM:<scan@lan>").await, "250");
    assert_ok(&lf_cmd(&mut c, "RCPT TO:<to@example.com>").await, "250");
    assert_ok(&lf_cmd(&mut c, "DATA").await, "354");
    c.send(b"Subject: 2\n\nx\n.\nQUIT\n").await;
    queue_id(&c.reply().await);
    assert_eq!(c.reply().await, "221 2.0.0 Bye\r\n");
    c.expect_closed().await;
    d.stop().await;
}

#[tokio::test]
async fn crlf_then_lf_session_and_switched_off_allowance_need_crlf_dot_crlf() {
    // One CRLF line makes a session strict; `allow_lf_only_clients = false`
    // makes every session strict. Either way "\n.\n" is content.
    for (extra, first) in [
        ("", "HELO mixed\r\n"),
        ("allow_lf_only_clients = false", "HELO old\n"),
    ] {
        let d = start(extra).await;
        let (mut c, _) = Client::connect(d.smtp_addr()).await;
        c.send(first.as_bytes()).await;
        assert_ok(&c.reply().await, "250");
        assert_ok(&lf_cmd(&mut c, "MAIL FROM:<scan@lan>").await, "250");
        assert_ok(&lf_cmd(&mut c, "RCPT TO:<to@example.com>").await, "250");
        assert_ok(&lf_cmd(&mut c, "DATA").await, "354");
        c.send(b"Subject: s\n\nfirst\n.\nNOOP\nmore\r\n.\r\n").await;
        let id = queue_id(&c.reply().await);
        let (_, bytes) = stored(&d, &id);
        added_part(&bytes, b"Subject: s\r\n\r\nfirst\r\n.\r\nNOOP\r\nmore\r\n");
        assert_eq!(queue_len(&d), 1, "{extra}");
        d.stop().await;
    }
}

#[tokio::test]
async fn nul_in_data_is_refused_before_250_and_nothing_is_stored() {
    let d = start("").await;
    let (mut c, _) = Client::connect(d.smtp_addr()).await;
    c.cmd("EHLO dev").await;
    let r = c
        .send_mail(
            "a@example.com",
            &["b@example.com"],
            b"Subject: x\r\n\r\na\0b",
        )
        .await;
    assert_eq!(
        r,
        "554 5.6.0 Message contains NUL bytes, which SMTP does not allow; not accepted\r\n"
    );
    assert_eq!(queue_len(&d), 0);
    // The session goes on.
    let r = c
        .send_mail(
            "a@example.com",
            &["b@example.com"],
            b"Subject: x\r\n\r\nclean",
        )
        .await;
    let id = queue_id(&r);
    // Its Received id is the queue id of the reply and of `queue list`.
    let listed = d.daemon.context.spool.list().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, id);
    let (_, bytes) = stored(&d, &id);
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.contains(&format!(" id {id};\r\n")), "{text}");
    d.stop().await;
}
