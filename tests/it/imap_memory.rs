//! Resident memory per idle proxied IMAP connection, measured on the real
//! `mailbridge` binary (its own process, so only the daemon's side counts):
//! VmRSS before and after opening many logged-in, idle connections.

use std::io::{BufRead, BufReader as StdBufReader};
use std::process::{Command, Stdio};

use crate::support::ca::TestCa;
use crate::support::config::{user, Account};
use crate::support::imap_upstream::ImapUpstream;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Kills the daemon however the test ends (a failed assertion included).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Opens `n` connections, 8 at a time, each logged in with a mailbox selected.
async fn open_logged_in(addr: std::net::SocketAddr, n: usize, out: &mut Vec<TcpStream>) {
    for batch in (0..n).collect::<Vec<_>>().chunks(8) {
        let tasks: Vec<_> = batch
            .iter()
            .map(|&i| tokio::spawn(open_one(addr, i)))
            .collect();
        for t in tasks {
            out.push(t.await.unwrap());
        }
    }
}

async fn open_one(addr: std::net::SocketAddr, i: usize) -> TcpStream {
    let mut s = BufReader::with_capacity(512, TcpStream::connect(addr).await.unwrap());
    let mut line = String::new();
    s.read_line(&mut line).await.unwrap();
    s.get_mut()
        .write_all(format!("a{i} LOGIN dev pw\r\ns{i} SELECT INBOX\r\n").as_bytes())
        .await
        .unwrap();
    loop {
        line.clear();
        s.read_line(&mut line).await.unwrap();
        assert!(
            !line.is_empty() && !line.starts_with(&format!("a{i} NO")),
            "{line}"
        );
        if line.starts_with(&format!("s{i} ")) {
            break;
        }
    }
    s.into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_proxied_connection_memory() {
    let ca = TestCa::new();
    let upstream =
        ImapUpstream::start(&ca.server_cert(), "real@example.com", "upstreamsecret").await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("relay.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[smtp]
listen = ["127.0.0.1:0"]
[imap]
listen = ["127.0.0.1:0"]
max_connections_per_account = 1000
{}{}"#,
            Account::new("real@example.com", "upstreamsecret")
                .ca_file(ca.ca_file.display())
                .imap(upstream.port(), "implicit"),
            user("dev", "pw", "acct"),
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_mailbridge"))
        .arg("--config")
        .arg(&config)
        .arg("run")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let child = KillOnDrop(child);
    let pid = child.0.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in StdBufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("IMAP listening on ").nth(1) {
                let _ = tx.send(rest.trim().to_string());
            }
        }
    });
    let addr: std::net::SocketAddr = rx
        .recv_timeout(std::time::Duration::from_secs(20))
        .expect("daemon did not start")
        .parse()
        .unwrap();

    let mut conns = Vec::new();
    // Warm up (thread pools, allocator arenas, the login cache).
    open_logged_in(addr, 16, &mut conns).await;
    let before = rss_kib(pid);
    const N: usize = 128;
    open_logged_in(addr, N, &mut conns).await;
    let after = rss_kib(pid);
    let per_conn = (after.saturating_sub(before)) as f64 / N as f64;
    println!("mailbridge RSS: {before} KiB -> {after} KiB with {N} more idle proxied connections: {per_conn:.1} KiB each");
    drop(child);
    drop(conns);
    assert!(
        per_conn < 50.0,
        "{per_conn:.1} KiB per idle proxied connection (goal: under 50)"
    );
}
