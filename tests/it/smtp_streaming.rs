//! DATA streamed to the spool as it arrives, over real sockets: a message far
//! larger than a connection's buffer arrives upstream byte for byte; an
//! unfinished DATA is already on disk in `tmp/` (not in memory) and leaves
//! nothing behind when its client goes; many large DATAs at once complete
//! under a budget that fits one connection's buffer (backpressure, no deadlock).

use std::path::Path;
use std::time::Duration;

use crate::support::ca::TestCa;
use crate::support::daemon::start;
use crate::support::delivery::{config, Opts, PASSWORD, USER};
use crate::support::smtp::{assert_ok, queue_id, Client};
use crate::support::smtp_upstream::{Mode, SmtpUpstream};
use crate::support::wait::eventually;

const WAIT: Duration = Duration::from_secs(30);

/// A body of about `size` bytes: CRLF lines of varying length, some starting
/// with "." (sent dot-stuffed), 8-bit bytes, headers with Date and Message-ID
/// (so the relay adds only its Received header).
fn body(size: usize) -> Vec<u8> {
    let mut m = b"From: scanner@local\r\nTo: a@example.org\r\nSubject: big scan\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <big@local>\r\n\r\n".to_vec();
    let mut n = 0usize;
    while m.len() < size {
        let len = 1 + (n * 7919) % 990;
        if n % 13 == 0 {
            m.push(b'.');
        }
        m.extend((0..len).map(|i| {
            if (i + n) % 97 == 0 {
                0xe9
            } else {
                b'a' + ((i + n) % 26) as u8
            }
        }));
        m.extend_from_slice(b"\r\n");
        n += 1;
    }
    m
}

/// `body` as sent after DATA: every line starting with "." gets another.
fn stuffed(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + body.len() / 50);
    let mut line_start = true;
    for &b in body {
        if line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        line_start = b == b'\n';
    }
    out
}

/// Files in `dir` and their sizes.
fn files(dir: &Path) -> Vec<(String, u64)> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    let len = e.metadata().map(|m| m.len()).unwrap_or(0);
                    (e.file_name().to_string_lossy().into_owned(), len)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Waits (polling, bounded by [`WAIT`]) until `f` holds.
async fn wait_until(what: &str, f: impl Fn() -> bool) {
    eventually(what, WAIT, || async { f().then_some(()) }).await
}

async fn start_data(c: &mut Client) {
    assert_ok(&c.cmd("EHLO dev").await, "250");
    assert_ok(&c.cmd("MAIL FROM:<scanner@local>").await, "250");
    assert_ok(&c.cmd("RCPT TO:<a@example.org>").await, "250");
    assert_ok(&c.cmd("DATA").await, "354");
}

#[tokio::test]
async fn message_larger_than_the_buffer_arrives_byte_identical() {
    big_message_arrives_whole("").await;
}

#[tokio::test]
async fn direct_mode_large_message_arrives_byte_identical_and_leaves_no_file() {
    big_message_arrives_whole("mode = \"direct\"").await;
}

/// A 3 MiB message through the relay (`smtp_extra` picks the mode) reaches
/// the upstream as our Received header plus exactly the client's bytes.
async fn big_message_arrives_whole(smtp_extra: &str) {
    let ca = TestCa::new();
    let up = SmtpUpstream::start(&ca.server_cert(), Mode::Implicit, USER, PASSWORD).await;
    let mut o = Opts::new(up.port(), "implicit", &ca.ca_file);
    o.smtp_extra = smtp_extra;
    let d = start(&config(&o)).await;
    let sent = body(3 * 1024 * 1024);
    let (mut c, _) = Client::connect(d.smtp_addr()).await;
    start_data(&mut c).await;
    c.send(&stuffed(&sent)).await;
    c.send(b".\r\n").await;
    let reply = c.reply().await;
    assert_ok(&reply, "250");
    let got = up.wait_for(1, WAIT).await;
    let data = &got[0].data;
    // Our Received header, then exactly the client's bytes.
    let received = format!(
        "Received: from dev (127.0.0.1)\r\n\tby {host} (mailbridge) with ESMTP id ",
        host = d.daemon.context.config.smtp.hostname
    );
    assert!(
        data.starts_with(received.as_bytes()),
        "{:?}",
        String::from_utf8_lossy(&data[..200.min(data.len())])
    );
    let head_end = data.windows(2).position(|w| w == b"\r\n").unwrap();
    let after_received = &data[head_end..];
    let body_at = after_received
        .windows(7)
        .position(|w| w == b"\r\nFrom:")
        .unwrap()
        + 2;
    assert_eq!(after_received[body_at..].len(), sent.len());
    assert!(
        after_received[body_at..] == sent[..],
        "body changed on the way"
    );
    // The client's Date and Message-ID were seen: none added.
    assert_eq!(
        String::from_utf8_lossy(data).matches("\r\nDate: ").count(),
        1
    );
    assert_eq!(
        String::from_utf8_lossy(data)
            .matches("Message-ID: ")
            .count(),
        1
    );
    if smtp_extra.contains("direct") {
        // Sent, not queued: no file left anywhere.
        assert!(files(&d.spool_dir().join("tmp")).is_empty());
        assert!(files(&d.spool_dir().join("queue")).is_empty());
    } else {
        let id = queue_id(&reply);
        let top = String::from_utf8_lossy(&data[..300]);
        assert!(top.contains(&format!(" id {id};")), "{top}");
    }
    d.stop().await;
}

#[tokio::test]
async fn unfinished_data_is_on_disk_and_gone_when_the_client_leaves() {
    let d = crate::support::smtp::start("").await;
    let tmp = d.spool_dir().join("tmp");
    let queue = d.spool_dir().join("queue");
    let (mut c, _) = Client::connect(d.smtp_addr()).await;
    start_data(&mut c).await;
    let part = stuffed(&body(2 * 1024 * 1024));
    c.send(&part).await;
    // Never the final dot: the bytes are already in the temp file.
    wait_until("the unfinished message in tmp/", || {
        files(&tmp).iter().any(|(_, len)| *len >= 1024 * 1024)
    })
    .await;
    assert!(files(&queue).is_empty(), "nothing in queue/ before the end");
    drop(c);
    wait_until("tmp/ empty after the client left", || {
        files(&tmp).is_empty()
    })
    .await;
    assert!(files(&queue).is_empty());

    // Over the size limit: 552, and its temp file is gone by the reply.
    let d2 = crate::support::smtp::start("max_message_size = 1048576").await;
    let (mut c, _) = Client::connect(d2.smtp_addr()).await;
    start_data(&mut c).await;
    c.send(&part).await;
    c.send(b".\r\n").await;
    assert_ok(&c.reply().await, "552 5.3.4");
    assert!(files(&d2.spool_dir().join("tmp")).is_empty());
    assert!(files(&d2.spool_dir().join("queue")).is_empty());
    // The session goes on and the next message is stored whole.
    let r = c
        .send_mail(
            "scanner@local",
            &["a@example.org"],
            b"Subject: after\r\n\r\nok",
        )
        .await;
    let id = queue_id(&r);
    let stored = d2.daemon.context.spool.read_message(&id).unwrap();
    assert!(stored.ends_with(b"Subject: after\r\n\r\nok\r\n"));
    d.stop().await;
    d2.stop().await;
}

#[tokio::test]
async fn many_large_messages_at_once_under_a_one_buffer_budget() {
    // The budget holds one connection's buffer: the others wait for it
    // before reading on, and a connection waiting for its client hands it
    // on. A client that stalls mid-DATA (here for the whole test, with an
    // idle timeout far longer than the test) must not hold up the others.
    let d = crate::support::smtp::start("data_buffer_budget = 65536\nidle_timeout = \"10m\"").await;
    const CLIENTS: usize = 6;
    let sent = body(3 * 1024 * 1024);
    let wire = stuffed(&sent);
    let (mut stalled, _) = Client::connect(d.smtp_addr()).await;
    start_data(&mut stalled).await;
    stalled.send(&wire[..100_000]).await;
    let tmp = d.spool_dir().join("tmp");
    wait_until("the stalled client's bytes in tmp/", || {
        files(&tmp).iter().any(|(_, len)| *len >= 90_000)
    })
    .await;
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (mut c, _) = Client::connect(d.smtp_addr()).await;
        start_data(&mut c).await;
        clients.push(c);
    }
    let all = async {
        for chunk in wire.chunks(1024 * 1024) {
            for c in clients.iter_mut() {
                c.send(chunk).await;
            }
        }
        let mut ids = Vec::new();
        for c in clients.iter_mut() {
            c.send(b".\r\n").await;
            ids.push(queue_id(&c.reply().await));
        }
        ids
    };
    let ids = tokio::time::timeout(WAIT, all)
        .await
        .expect("concurrent DATAs did not complete");
    for id in &ids {
        let stored = d.daemon.context.spool.read_message(id).unwrap();
        assert!(stored.ends_with(&sent), "{id} stored whole");
    }
    // The stalled one finishes too.
    stalled.send(&wire[100_000..]).await;
    stalled.send(b".\r\n").await;
    let id = queue_id(&stalled.reply().await);
    assert!(d
        .daemon
        .context
        .spool
        .read_message(&id)
        .unwrap()
        .ends_with(&sent));
    assert!(files(&tmp).is_empty());
    d.stop().await;
}

#[test]
fn data_buffer_budget_below_one_buffer_is_refused() {
    let path = Path::new("/tmp/relay.toml");
    let err = mailbridge::config::Config::parse(
        &crate::support::smtp::config("data_buffer_budget = 65535"),
        path,
    )
    .expect_err("a budget below one connection's buffer must be refused")
    .to_string();
    assert!(err.contains("smtp.data_buffer_budget"), "{err}");
    let ok = mailbridge::config::Config::parse(&crate::support::smtp::config(""), path).unwrap();
    assert_eq!(ok.smtp.data_buffer_budget, 16 * 1024 * 1024);
}
