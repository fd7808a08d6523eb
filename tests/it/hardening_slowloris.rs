//! Slowloris against the real binary: 150 SMTP and 150 IMAP clients each
//! send one byte a second and never finish a command. SMTP cuts them off by
//! the per-command deadline (a line must be complete within the idle timeout
//! of its first byte), IMAP by the pre-login deadline; the daemon's memory
//! does not grow with them, and a good client is served afterwards.
//! A client that trickles a message body after DATA is cut off by the
//! minimum DATA rate (512 B/s on average once the idle timeout has passed).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::support::config::Account;
use crate::support::process::{command, write_config, Proc};
use crate::support::smtp::Smtp;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const N: usize = 150;

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Connects, reads the greeting, then writes one byte of `drip` a second
/// until the server says something or closes. Returns what it said and when.
async fn dribble(addr: SocketAddr, drip: &'static [u8]) -> (String, Duration) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut buf = vec![0u8; 512];
    let n = s.read(&mut buf).await.unwrap();
    assert!(n > 0, "no greeting");
    let t = Instant::now();
    let mut i = 0;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let deadline = tokio::time::sleep(Duration::from_secs(15));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            r = s.read(&mut buf) => {
                let n = r.unwrap_or(0);
                return (String::from_utf8_lossy(&buf[..n]).into_owned(), t.elapsed());
            }
            _ = tick.tick() => {
                let _ = s.write_all(&drip[i % drip.len()..i % drip.len() + 1]).await;
                i += 1;
            }
            _ = &mut deadline => return ("(never cut off)".into(), t.elapsed()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_byte_a_second_clients_are_cut_off_without_holding_memory() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &format!(
            r#"
[smtp]
listen = ["127.0.0.1:0"]
hostname = "slow.test"
idle_timeout = "2s"

[imap]
listen = ["127.0.0.1:0"]
login_timeout = "2s"

[delivery]
retry_initial = "1h"

{}"#,
            Account::new("me@example.com", "x")
        ),
    );
    let p = Proc::spawn(command(&cfg, &["run"]));
    let (smtp, imap) = (p.smtp.unwrap(), p.imap.unwrap());
    let pid = p.child.id();
    let before = rss_kib(pid);

    let mut tasks = Vec::new();
    for _ in 0..N {
        tasks.push(tokio::spawn(dribble(
            smtp,
            b"NOOP aaaaaaaaaaaaaaaaaaaaaaaa",
        )));
        tasks.push(tokio::spawn(dribble(
            imap,
            b"a LOGIN aaaaaaaaaaaaaaaaaaaaa",
        )));
    }
    // Sample memory while all of them are connected and dribbling.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let during = rss_kib(pid);
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    let smtp_cut = "421 4.4.2 slow.test Error: timeout exceeded\r\n";
    let imap_cut = "* BYE Autologout; no login in time\r\n";
    let mut slowest = Duration::ZERO;
    for (said, after) in &results {
        assert!(
            said == smtp_cut || said == imap_cut,
            "{said:?} after {after:?}"
        );
        slowest = slowest.max(*after);
    }
    assert_eq!(results.iter().filter(|(s, _)| s == smtp_cut).count(), N);
    assert!(slowest < Duration::from_secs(5), "held for {slowest:?}");
    let grown = during.saturating_sub(before);
    println!(
        "slowloris: {} clients cut off within {slowest:.1?}; RSS {before} KiB before, {during} KiB with all connected (+{grown} KiB)",
        2 * N
    );
    assert!(
        grown < 40 * 1024,
        "RSS grew by {grown} KiB for {} slow clients",
        2 * N
    );
    // Still serving.
    let (mut c, g) = Smtp::connect(smtp).await.unwrap();
    assert!(g.starts_with("220 "));
    assert_eq!(c.cmd("NOOP").await.unwrap(), "250 2.0.0 Ok\r\n");
}

/// A client that trickles its message body (one byte every 300 ms, each read
/// well inside the idle timeout) is cut off by the minimum DATA rate.
#[tokio::test]
async fn trickled_message_body_is_cut_off() {
    let d = crate::support::daemon::start(&format!(
        r#"
[smtp]
listen = ["127.0.0.1:0"]
hostname = "slow.test"
idle_timeout = "1s"

[imap]
listen = ["127.0.0.1:0"]

[delivery]
retry_initial = "1h"

{}"#,
        Account::new("me@example.com", "x")
    ))
    .await;
    let mut s = TcpStream::connect(d.smtp_addr()).await.unwrap();
    s.write_all(
        b"EHLO trickle\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n",
    )
    .await
    .unwrap();
    let mut seen = Vec::new();
    let mut chunk = [0u8; 512];
    while !String::from_utf8_lossy(&seen).contains("\r\n354 ") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
            .await
            .expect("replies up to 354")
            .unwrap();
        assert!(
            n > 0,
            "closed before 354: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&chunk[..n]);
    }
    let started = Instant::now();
    let mut buf = vec![0u8; 256];
    let mut tick = tokio::time::interval(Duration::from_millis(300));
    let said = loop {
        tokio::select! {
            r = s.read(&mut buf) => {
                let n = r.unwrap_or(0);
                break String::from_utf8_lossy(&buf[..n]).into_owned();
            }
            _ = tick.tick() => {
                let _ = s.write_all(b"x").await;
            }
        }
        assert!(started.elapsed() < Duration::from_secs(20), "never cut off");
    };
    assert_eq!(
        said,
        "421 4.4.2 slow.test Error: message transfer too slow\r\n"
    );
    assert!(d.daemon.context.spool.list().unwrap().is_empty());
    d.stop().await;
}
