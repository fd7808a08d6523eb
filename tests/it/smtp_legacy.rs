//! Habits of old devices end to end (issue 12): a client on the local side
//! over a raw socket, the real daemon, and a strict in-process TLS upstream.
//! An LF-only client's mail reaches the upstream with CRLF only; lines over
//! 998 octets are folded so an upstream enforcing RFC 5321's limit takes
//! them; the upstream's copy carries the queue id in its Received header.

use std::time::Duration;

use crate::support::ca::TestCa;
use crate::support::daemon::start;
use crate::support::delivery::{config, Opts, PASSWORD, USER};
use crate::support::smtp::{assert_crlf_only, assert_ok, queue_id, Client};
use crate::support::smtp_upstream::{Mode, SmtpUpstream};

const WAIT: Duration = Duration::from_secs(10);

/// An upstream that refuses DATA lines over 1000 octets (CRLF included).
async fn strict_upstream(ca: &TestCa) -> SmtpUpstream {
    let up = SmtpUpstream::start(&ca.server_cert(), Mode::Implicit, USER, PASSWORD).await;
    up.script().max_line_length = Some(1000);
    up
}

#[tokio::test]
async fn lf_only_client_gets_250_and_upstream_gets_crlf_only() {
    let ca = TestCa::new();
    let up = strict_upstream(&ca).await;
    let d = start(&config(&Opts::new(up.port(), "implicit", &ca.ca_file))).await;
    let (mut c, _) = Client::connect(d.smtp_addr()).await;
    for (line, code) in [
        ("HELO scanner\n", "250"),
        ("MAIL FROM:<scan@lan>\n", "250"),
        ("RCPT TO:<to@example.org>\n", "250"),
        ("DATA\n", "354"),
    ] {
        c.send(line.as_bytes()).await;
        assert_ok(&c.reply().await, code);
    }
    c.send(b"Subject: scan\nFrom: scan@lan\n\npage\n..dotted\n.\n")
        .await;
    let id = queue_id(&c.reply().await);
    let got = up.wait_for(1, WAIT).await;
    assert_crlf_only(&got[0].data);
    assert!(
        got[0]
            .data
            .ends_with(b"Subject: scan\r\nFrom: scan@lan\r\n\r\npage\r\n.dotted\r\n"),
        "{:?}",
        String::from_utf8_lossy(&got[0].data)
    );
    // The Received id the recipient sees is the queue id the client was told.
    let text = String::from_utf8_lossy(&got[0].data);
    assert!(text.contains(&format!(" id {id};\r\n")), "{text}");
    d.stop().await;
}

#[tokio::test]
async fn long_header_and_body_lines_are_folded_for_a_strict_upstream() {
    let ca = TestCa::new();
    let up = strict_upstream(&ca).await;
    let d = start(&config(&Opts::new(up.port(), "implicit", &ca.ca_file))).await;
    let (mut c, _) = Client::connect(d.smtp_addr()).await;
    assert_ok(&c.cmd("EHLO scanner").await, "250");
    // A scanner's base64 without line breaks, and a header value over the limit.
    let base64_line = "QUJD".repeat(1000); // 4000 octets
    let subject = format!("Subject: {}", "scan ".repeat(300)); // 1509 octets
    let body = format!("{subject}\r\nFrom: scan@lan\r\n\r\n{base64_line}\r\nend");
    let r = c
        .send_mail("scan@lan", &["to@example.org"], body.as_bytes())
        .await;
    queue_id(&r);
    let got = up.wait_for(1, WAIT).await;
    let data = &got[0].data;
    assert_crlf_only(data);
    let lines: Vec<&[u8]> = data.split(|b| *b == b'\n').collect();
    assert!(
        // `l` ends with the CR; with its LF a line is at most 1000 octets.
        lines.iter().all(|l| l.len() < 1000),
        "a line over 1000 octets reached the upstream"
    );
    let text = String::from_utf8_lossy(data);
    // The header stays one folded field; the body line is only broken by CRLFs.
    let (head, tail) = text.split_once("\r\n\r\n").unwrap();
    let unfolded = head.replace("\r\n ", " ");
    assert!(unfolded.contains("Subject: scan scan "), "{head}");
    assert!(
        !head.contains("\r\nscan"),
        "continuation must start with a space"
    );
    assert_eq!(tail.replace("\r\n", ""), format!("{base64_line}end"));
    d.stop().await;
}
