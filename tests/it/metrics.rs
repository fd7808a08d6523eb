//! The metrics listener over real HTTP: `/metrics` scraped and parsed (the
//! counters move after a message goes through), `/healthz` (200, upstream
//! reachability, 503 when the spool cannot be written), unknown paths; who
//! may ask (allowed_networks, the Host check against DNS rebinding); and that
//! /healthz does not write to the spool per request. The status page `/`:
//! what it shows after mail was delivered and refused (escaped), and that it
//! gets the same access checks.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::support::ca::TestCa;
use crate::support::daemon::{start, TestDaemon};
use crate::support::delivery::{config, eventually, Opts, PASSWORD, USER};
use crate::support::smtp::{assert_ok, Client};
use crate::support::smtp_upstream::{Mode, SmtpUpstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(10);

/// (status code, content type, body) of one GET.
async fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    send(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n"),
    )
    .await
}

/// (status code, content type, body) of one raw request head.
async fn send(addr: SocketAddr, request: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut raw))
        .await
        .expect("response timed out")
        .unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("no header end");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let ctype = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Type: "))
        .unwrap_or("")
        .to_string();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .expect("Content-Length")
        .parse()
        .unwrap();
    assert_eq!(len, body.len(), "Content-Length matches the body");
    (status, ctype, body.to_string())
}

/// Samples of the exposition text: `name{labels}` -> value.
fn parse(text: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (key, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        out.insert(key.to_string(), value);
    }
    out
}

async fn scrape(d: &TestDaemon) -> HashMap<String, f64> {
    let (status, ctype, body) = get(d.daemon.metrics_addr.unwrap(), "/metrics").await;
    assert_eq!(status, 200);
    assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
    assert!(body.trim_end().ends_with("# EOF"), "{body}");
    parse(&body)
}

fn metrics_config(port: u16, ca: &TestCa) -> String {
    let mut c = config(&Opts::new(port, "implicit", &ca.ca_file));
    c.push_str("\n[metrics]\nlisten = \"127.0.0.1:0\"\n");
    c.push('\n');
    c.push_str(&crate::support::config::user("dev", "device pw", "test"));
    c
}

#[tokio::test]
async fn counters_move_after_a_message_and_health_reports_upstream() {
    let ca = TestCa::new();
    let up = SmtpUpstream::start(&ca.server_cert(), Mode::Implicit, USER, PASSWORD).await;
    let d = start(&metrics_config(up.port(), &ca)).await;

    let before = scrape(&d).await;
    assert_eq!(before.get("mailbridge_queue_messages"), Some(&0.0));
    assert_eq!(before.get("mailbridge_imap_sessions_active"), Some(&0.0));
    assert_eq!(
        before.get("mailbridge_messages_accepted_total{account=\"test\"}"),
        None
    );

    let (mut c, greeting) = Client::connect(d.smtp_addr()).await;
    assert_ok(&greeting, "220");
    assert_ok(&c.cmd("EHLO printer").await, "250");
    let r = c
        .send_mail("p@local", &["to@example.org"], b"Subject: m\r\n\r\nhi")
        .await;
    assert_ok(&r, "250");
    up.wait_for(1, WAIT).await;

    let after = eventually("delivered counter", WAIT, || async {
        let m = scrape(&d).await;
        (m.get("mailbridge_messages_delivered_total{account=\"test\"}") == Some(&1.0)).then_some(m)
    })
    .await;
    assert_eq!(
        after.get("mailbridge_messages_accepted_total{account=\"test\"}"),
        Some(&1.0)
    );
    assert_eq!(
        after.get("mailbridge_upstream_latency_seconds_count{account=\"test\"}"),
        Some(&1.0)
    );
    assert_eq!(after.get("mailbridge_queue_messages"), Some(&0.0));
    // The group commit: one message made durable, with two flushes at most
    // (its file's fsync and the directory's).
    assert_eq!(before.get("mailbridge_spool_commits_total"), Some(&0.0));
    assert_eq!(after.get("mailbridge_spool_commits_total"), Some(&1.0));
    let flushes = after.get("mailbridge_spool_flushes_total").copied();
    assert!(
        flushes.is_some_and(|f| (1.0..=2.0).contains(&f)),
        "{flushes:?}"
    );

    // An IMAP client connection shows in the sessions gauge while open.
    let imap = TcpStream::connect(d.imap_addr()).await.unwrap();
    eventually("imap gauge up", WAIT, || async {
        (scrape(&d).await.get("mailbridge_imap_sessions_active") == Some(&1.0)).then_some(())
    })
    .await;
    drop(imap);
    eventually("imap gauge down", WAIT, || async {
        (scrape(&d).await.get("mailbridge_imap_sessions_active") == Some(&0.0)).then_some(())
    })
    .await;

    let (status, ctype, body) = get(d.daemon.metrics_addr.unwrap(), "/healthz").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(ctype, "application/json");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "ok");
    assert_eq!(v["listeners_up"], true);
    assert_eq!(v["spool_writable"], true);
    assert_eq!(v["upstreams"]["test"]["reachable"], true, "{body}");

    let (status, _, _) = get(d.daemon.metrics_addr.unwrap(), "/nope").await;
    assert_eq!(status, 404);
    d.stop().await;
}

#[tokio::test]
async fn auth_failures_and_unreachable_upstream_are_reported() {
    let ca = TestCa::new();
    // Nothing listens on port 1: the upstream is unreachable.
    let d = start(&metrics_config(1, &ca)).await;
    let (mut c, _) = Client::connect(d.smtp_addr()).await;
    assert_ok(&c.cmd("EHLO printer").await, "250");
    let r = c
        .send_mail("p@local", &["to@example.org"], b"Subject: m\r\n\r\nhi")
        .await;
    assert_ok(&r, "250");
    let m = eventually("deferred counter", WAIT, || async {
        let m = scrape(&d).await;
        m.get("mailbridge_messages_deferred_total{account=\"test\"}")
            .is_some_and(|v| *v >= 1.0)
            .then_some(m)
    })
    .await;
    assert_eq!(m.get("mailbridge_queue_messages"), Some(&1.0));
    assert!(m["mailbridge_queue_oldest_age_seconds"] >= 0.0);
    let (status, _, body) = get(d.daemon.metrics_addr.unwrap(), "/healthz").await;
    assert_eq!(
        status, 200,
        "upstream trouble is reported, not fatal: {body}"
    );
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["upstreams"]["test"]["reachable"], false, "{body}");
    assert!(!v["upstreams"]["test"]["detail"]
        .as_str()
        .unwrap()
        .is_empty());

    // A bad local login counts.
    let (mut c, _) = Client::connect(d.smtp_addr()).await;
    assert_ok(&c.cmd("EHLO printer").await, "250");
    // "\0dev\0wrong"
    assert_ok(&c.cmd("AUTH PLAIN AGRldgB3cm9uZw==").await, "535");
    eventually("auth failure counter", WAIT, || async {
        scrape(&d)
            .await
            .get("mailbridge_auth_failures_total{protocol=\"smtp\"}")
            .is_some_and(|v| *v >= 1.0)
            .then_some(())
    })
    .await;
    d.stop().await;
}

#[tokio::test]
async fn healthz_is_503_when_the_spool_cannot_be_written() {
    let ca = TestCa::new();
    let d = start(&metrics_config(1, &ca)).await;
    let addr = d.daemon.metrics_addr.unwrap();
    let ctx = &d.daemon.context;
    assert_eq!(get(addr, "/healthz").await.0, 200);
    // Root ignores permission bits, so take the directory away instead.
    let tmp = d.spool_dir().join("tmp");
    std::fs::remove_dir_all(&tmp).unwrap();
    // The probe runs on a timer; run it now instead of waiting for it.
    ctx.metrics.probe_spool(&ctx.spool);
    let (status, _, body) = get(addr, "/healthz").await;
    assert_eq!(status, 503, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["spool_writable"], false);
    assert!(v["spool_error"].as_str().unwrap().contains("tmp"), "{body}");
    assert!(v["spool_checked_at"].is_string(), "{body}");
    // Still unhealthy on every request until a probe sees it fixed.
    assert_eq!(get(addr, "/healthz").await.0, 503);
    std::fs::create_dir(&tmp).unwrap();
    ctx.metrics.probe_spool(&ctx.spool);
    assert_eq!(get(addr, "/healthz").await.0, 200);
    d.stop().await;
}

/// Modification and change times of `dir`, and its entry count.
fn dir_state(dir: &std::path::Path) -> (std::time::SystemTime, i64, usize) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(dir).unwrap();
    let count = std::fs::read_dir(dir).unwrap().count();
    (
        m.modified().unwrap(),
        m.ctime_nsec() + m.ctime() * 1_000_000_000,
        count,
    )
}

#[tokio::test]
async fn healthz_requests_do_not_touch_the_spool() {
    let ca = TestCa::new();
    let d = start(&metrics_config(1, &ca)).await;
    let addr = d.daemon.metrics_addr.unwrap();
    let probe = d.daemon.context.metrics.spool_probe();
    let dirs = [d.spool_dir(), d.spool_dir().join("tmp")];
    // A timed probe may legitimately land inside a round (every 15 s):
    // then that round proves nothing, and it is run again.
    for _round in 0..3 {
        let runs = probe.runs();
        let before: Vec<_> = dirs.iter().map(|p| dir_state(p)).collect();
        for _ in 0..100 {
            let (status, _, body) = get(addr, "/healthz").await;
            assert_eq!(status, 200, "{body}");
        }
        if probe.runs() != runs {
            continue;
        }
        let after: Vec<_> = dirs.iter().map(|p| dir_state(p)).collect();
        assert_eq!(before, after, "100 /healthz requests changed the spool");
        d.stop().await;
        return;
    }
    panic!("a spool probe ran inside every round");
}

#[tokio::test]
async fn the_spool_probe_runs_on_a_timer() {
    let ca = TestCa::new();
    let d = start(&metrics_config(1, &ca)).await;
    let probe = d.daemon.context.metrics.spool_probe();
    let first = probe.runs();
    assert!(first >= 1, "probed once before serving");
    tokio::time::pause();
    tokio::time::advance(mailbridge::metrics::probe::PROBE_INTERVAL + Duration::from_secs(1)).await;
    let deadline = std::time::Instant::now() + WAIT;
    while probe.runs() == first {
        assert!(std::time::Instant::now() < deadline, "no timed probe");
        tokio::task::yield_now().await;
    }
    tokio::time::resume();
    d.stop().await;
}

#[tokio::test]
async fn host_header_must_name_this_machine_or_an_allowed_name() {
    let ca = TestCa::new();
    let mut c = metrics_config(1, &ca);
    c = c.replace(
        "[metrics]\n",
        "[metrics]\nallowed_hosts = [\"Mailbridge.LAN\"]\n",
    );
    let d = start(&c).await;
    let addr = d.daemon.metrics_addr.unwrap();
    let port = addr.port();
    let req = |host: &str| format!("GET /metrics HTTP/1.1\r\nHost: {host}\r\n\r\n");
    for host in [
        format!("127.0.0.1:{port}"),
        "127.0.0.1".to_string(),
        format!("localhost:{port}"),
        "[::1]".to_string(),
        format!("mailbridge.lan:{port}"),
    ] {
        let (status, _, body) = send(addr, &req(&host)).await;
        assert_eq!(status, 200, "Host {host}: {body}");
    }
    // DNS rebinding: a page on evil.example whose name now points here.
    for host in [
        format!("evil.example:{port}"),
        "localhost.evil.example".to_string(),
        "127.0.0.1.nip.io".to_string(),
    ] {
        let (status, _, body) = send(addr, &req(&host)).await;
        assert_eq!(status, 421, "Host {host}: {body}");
        let page = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
        let (status, _, body) = send(addr, &page).await;
        assert_eq!(status, 421, "status page, Host {host}: {body}");
        assert!(
            !body.contains("mailbridge_"),
            "no metrics in the refusal: {body}"
        );
    }
    let (status, _, _) = send(addr, "GET /healthz HTTP/1.1\r\n\r\n").await;
    assert_eq!(status, 400, "HTTP/1.1 without Host");
    let two = "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil.example\r\n\r\n";
    assert_eq!(send(addr, two).await.0, 400, "two Host headers");
    let (status, _, _) = send(addr, "GET /healthz HTTP/1.0\r\n\r\n").await;
    assert_eq!(status, 200, "HTTP/1.0 may omit Host");
    d.stop().await;
}

#[tokio::test]
async fn clients_outside_metrics_allowed_networks_get_403() {
    let ca = TestCa::new();
    let c = metrics_config(1, &ca).replace(
        "[metrics]\n",
        "[metrics]\nallowed_networks = [\"10.0.0.0/8\"]\n",
    );
    let d = start(&c).await;
    let addr = d.daemon.metrics_addr.unwrap();
    for path in ["/metrics", "/healthz", "/"] {
        let (status, _, body) = get(addr, path).await;
        assert_eq!(status, 403, "{path}: {body}");
        assert!(!body.contains("mailbridge status"), "{body}");
        assert!(
            !body.contains("mailbridge_") && !body.contains("upstreams"),
            "{body}"
        );
    }
    // The list follows a reload: back to the default (loopback) answers.
    let path = d.dir.path().join("relay.toml");
    std::fs::write(&path, metrics_config(1, &ca)).unwrap();
    let config = mailbridge::config::Config::load(&path).unwrap();
    d.daemon.reload(config).unwrap();
    assert_eq!(get(addr, "/healthz").await.0, 200);
    d.stop().await;
}

#[tokio::test]
async fn no_metrics_listener_unless_configured() {
    let ca = TestCa::new();
    let d = start(&config(&Opts::new(1, "implicit", &ca.ca_file))).await;
    assert!(d.daemon.metrics_addr.is_none());
    d.stop().await;
}

/// The status page after one message went through and one was refused with
/// a hostile reply: account row, counts, events newest first, the chart, the
/// listeners' sessions; the reply shown escaped, never as markup.
#[tokio::test]
async fn status_page_shows_accounts_events_and_escaped_replies() {
    let ca = TestCa::new();
    let up = SmtpUpstream::start(&ca.server_cert(), Mode::Implicit, USER, PASSWORD).await;
    let hostile = "554 5.7.0 <script>alert(\"x\")</script> & 'q'";
    {
        let mut s = up.script();
        s.data_reply = Some(hostile.to_string());
        s.data_reply_times = Some(1);
    }
    let d = start(&metrics_config(up.port(), &ca)).await;
    let addr = d.daemon.metrics_addr.unwrap();

    let (status, ctype, body) = get(addr, "/").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(ctype, "text/html; charset=utf-8");
    assert!(body.contains("data-account=\"test\""), "{body}");
    assert!(
        body.contains("No events since the daemon started."),
        "{body}"
    );

    let (mut c, greeting) = Client::connect(d.smtp_addr()).await;
    assert_ok(&greeting, "220");
    assert_ok(&c.cmd("EHLO printer").await, "250");
    let r = c
        .send_mail(
            "p@local",
            &["first@example.org"],
            b"Subject: <b>x</b>\r\n\r\nhi",
        )
        .await;
    assert_ok(&r, "250");
    eventually("first message failed", WAIT, || async {
        let failed = d.daemon.context.spool.list_failed().unwrap();
        (failed.len() == 1).then_some(())
    })
    .await;
    let r = c
        .send_mail("p@local", &["second@example.org"], b"Subject: ok\r\n\r\nhi")
        .await;
    assert_ok(&r, "250");
    up.wait_for(1, WAIT).await;

    // The SMTP client is still connected: one session on the smtp listener.
    let body = eventually("delivered event on the page", WAIT, || async {
        let (_, _, body) = get(addr, "/").await;
        body.contains("data-kind=\"delivered\"").then_some(body)
    })
    .await;
    assert!(
        !body.contains("<script>alert"),
        "reply must be escaped: {body}"
    );
    assert!(
        body.contains(
            "554 5.7.0 &lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;q&#39;"
        ),
        "{body}"
    );
    assert!(
        body.contains("<span data-state=\"failed\">1 failed</span>"),
        "{body}"
    );
    assert!(
        body.contains("<span data-state=\"queued\">0 queued</span>"),
        "{body}"
    );
    assert!(
        body.contains("mail is flowing") || body.contains("needs attention"),
        "{body}"
    );
    assert!(body.contains("first@example.org") && body.contains("second@example.org"));
    // Newest first: the delivery of the second message before the failure of the first.
    let delivered = body.find("data-kind=\"delivered\"").unwrap();
    let failed = body.find("data-kind=\"failed\"").unwrap();
    let accepted = body.rfind("data-kind=\"accepted\"").unwrap();
    assert!(delivered < failed && failed < accepted, "{body}");
    assert!(
        body.contains("<svg") && body.contains("1 delivered, 0 deferred, 1 failed"),
        "{body}"
    );
    let smtp = format!(
        "<tr data-listener=\"smtp\"><td>smtp</td><td>{}</td><td class=\"sessions\">1</td>",
        d.smtp_addr()
    );
    assert!(body.contains(&smtp), "{body}");
    c.cmd("QUIT").await;
    drop(c);
    eventually("smtp session gone", WAIT, || async {
        let (_, _, body) = get(addr, "/").await;
        body.contains(&smtp.replace(">1</td>", ">0</td>"))
            .then_some(())
    })
    .await;
    // A reload keeps the events (the status is shared like the metrics).
    let path = d.dir.path().join("relay.toml");
    std::fs::write(&path, metrics_config(up.port(), &ca)).unwrap();
    let config = mailbridge::config::Config::load(&path).unwrap();
    d.daemon.reload(config).unwrap();
    let (_, _, body) = get(addr, "/").await;
    assert!(
        body.contains("data-kind=\"delivered\"") && body.contains("1 failed"),
        "{body}"
    );
    // Read-only: other methods are refused.
    let post = format!("POST / HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\n\r\n");
    let (status, _, _) = send(addr, &post).await;
    assert_eq!(status, 405);
    d.stop().await;
}
