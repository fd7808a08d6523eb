//! The SMTP side of the tests: a daemon config for the inbound tests, the one
//! raw SMTP client (strict [`Client`], and [`Smtp`] that tolerates the server
//! vanishing, over one reply reader), and access to what the spool stored.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::support::config::{user, Account};
use crate::support::daemon::{self, TestDaemon};
use mailbridge::spool::{QueueEntry, QueueId};

pub const USER: &str = "scanner";
pub const PASSWORD: &str = "correct horse battery";
pub const HOST: &str = "relay.test";
const WAIT: Duration = Duration::from_secs(10);

/// A config with one custom account whose upstream is unreachable (port 1)
/// and a long retry, so nothing leaves the spool during a test. `smtp_extra`
/// is added to the [smtp] table.
pub fn config(smtp_extra: &str) -> String {
    format!(
        r#"
[smtp]
listen = ["127.0.0.1:0"]
hostname = "{HOST}"
{smtp_extra}

[imap]
listen = ["127.0.0.1:0"]

[delivery]
retry_initial = "1h"

{account}
{user}"#,
        account = Account::new("me@example.com", "upstream-app-password"),
        user = user(USER, PASSWORD, "acct"),
    )
}

pub async fn start(smtp_extra: &str) -> TestDaemon {
    daemon::start(&config(smtp_extra)).await
}

/// How one reply read ended when it did not end with a whole reply.
enum ReadEnd {
    /// The server closed; what came of the reply before that.
    Eof(String),
    /// No byte within the deadline.
    Silent,
    Io(std::io::Error),
}

/// Reads one reply, all its lines joined (each as received).
async fn read_reply(r: &mut BufReader<TcpStream>, silence: Duration) -> Result<String, ReadEnd> {
    let mut out = String::new();
    loop {
        let mut line = String::new();
        let n = tokio::time::timeout(silence, r.read_line(&mut line))
            .await
            .map_err(|_| ReadEnd::Silent)?
            .map_err(ReadEnd::Io)?;
        if n == 0 {
            return Err(ReadEnd::Eof(out));
        }
        out.push_str(&line);
        if line.as_bytes().get(3) != Some(&b'-') {
            return Ok(out);
        }
    }
}

/// A raw SMTP client: write bytes, read whole (multi-line) replies.
pub struct Client {
    pub r: BufReader<TcpStream>,
}

impl Client {
    /// Connects and returns the client with the greeting read.
    pub async fn connect(addr: SocketAddr) -> (Client, String) {
        let s = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .unwrap()
            .unwrap();
        Client::from_stream(s).await
    }

    pub async fn from_stream(s: TcpStream) -> (Client, String) {
        let mut c = Client {
            r: BufReader::new(s),
        };
        let greeting = c.reply().await;
        (c, greeting)
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.r.get_mut().write_all(bytes).await.unwrap();
    }

    /// One reply, all its lines joined (each ending in CRLF). Empty on EOF.
    pub async fn reply(&mut self) -> String {
        let out = match read_reply(&mut self.r, WAIT).await {
            Ok(reply) | Err(ReadEnd::Eof(reply)) => reply,
            Err(ReadEnd::Silent) => panic!("reply timed out"),
            Err(ReadEnd::Io(e)) => panic!("reading the reply: {e}"),
        };
        for line in out.split_inclusive('\n') {
            assert!(line.ends_with("\r\n"), "reply line without CRLF: {line:?}");
        }
        out
    }

    /// Sends one command line (CRLF added) and reads its reply.
    pub async fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }

    /// Asserts the server closed the connection (EOF within the wait).
    pub async fn expect_closed(&mut self) {
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(WAIT, self.r.read(&mut buf))
            .await
            .expect("not closed")
            .unwrap_or(0);
        assert_eq!(
            n,
            0,
            "unexpected bytes: {:?}",
            String::from_utf8_lossy(&buf[..n])
        );
    }

    /// MAIL/RCPT/DATA with `body` (already dot-stuffed, ending before the
    /// final "."); returns the final reply.
    pub async fn send_mail(&mut self, from: &str, rcpts: &[&str], body: &[u8]) -> String {
        assert_ok(&self.cmd(&format!("MAIL FROM:<{from}>")).await, "250");
        for r in rcpts {
            assert_ok(&self.cmd(&format!("RCPT TO:<{r}>")).await, "250");
        }
        assert_ok(&self.cmd("DATA").await, "354");
        self.send(body).await;
        self.send(b"\r\n.\r\n").await;
        self.reply().await
    }
}

/// The same client for tests where the server may vanish (crash, overload,
/// a cut-off): every call returns `None` once the server is gone or silent.
pub struct Smtp {
    r: BufReader<TcpStream>,
}

impl Smtp {
    pub async fn connect(addr: SocketAddr) -> Option<(Smtp, String)> {
        let s = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr))
            .await
            .ok()?
            .ok()?;
        let (c, g) = Smtp::from_stream(s).await;
        Some((c, g?))
    }

    /// Wraps a connected stream; the greeting is `None` if none came.
    pub async fn from_stream(s: TcpStream) -> (Smtp, Option<String>) {
        let mut c = Smtp {
            r: BufReader::new(s),
        };
        let g = c.reply().await;
        (c, g)
    }

    pub async fn send(&mut self, bytes: &[u8]) -> Option<()> {
        self.r.get_mut().write_all(bytes).await.ok()
    }

    /// One whole reply (multi-line joined), `None` on EOF, error or 10 s silence.
    pub async fn reply(&mut self) -> Option<String> {
        self.reply_within(Duration::from_secs(10)).await
    }

    /// [`Smtp::reply`], with `None` only after `silence` without a byte.
    pub async fn reply_within(&mut self, silence: Duration) -> Option<String> {
        read_reply(&mut self.r, silence).await.ok()
    }

    pub async fn cmd(&mut self, line: &str) -> Option<String> {
        self.send(format!("{line}\r\n").as_bytes()).await?;
        self.reply().await
    }

    /// [`Smtp::cmd`] for a reply that may take up to `silence` (a throttled login).
    pub async fn cmd_within(&mut self, line: &str, silence: Duration) -> Option<String> {
        self.send(format!("{line}\r\n").as_bytes()).await?;
        self.reply_within(silence).await
    }

    /// MAIL/RCPT/DATA/body; the final reply, or `None` if the server went away
    /// or refused a step (then the reply so far is lost on purpose).
    pub async fn mail(&mut self, rcpt: &str, body: &[u8]) -> Option<String> {
        let r = self.cmd("MAIL FROM:<dev@local>").await?;
        if !r.starts_with("250") {
            return Some(r);
        }
        let r = self.cmd(&format!("RCPT TO:<{rcpt}>")).await?;
        if !r.starts_with("250") {
            return Some(r);
        }
        let r = self.cmd("DATA").await?;
        if !r.starts_with("354") {
            return Some(r);
        }
        self.send(body).await?;
        self.send(b".\r\n").await?;
        self.reply().await
    }
}

pub fn assert_ok(reply: &str, code: &str) {
    assert!(reply.starts_with(code), "expected {code}, got {reply:?}");
}

/// The queue id from "250 2.0.0 Ok: queued as ID".
pub fn queue_id(reply: &str) -> QueueId {
    let id = reply
        .trim_end()
        .rsplit(' ')
        .next()
        .unwrap_or_else(|| panic!("no queue id in {reply:?}"));
    assert!(reply.starts_with("250 2.0.0 Ok: queued as "), "{reply:?}");
    QueueId(id.to_string())
}

pub fn stored(d: &TestDaemon, id: &QueueId) -> (QueueEntry, Vec<u8>) {
    let spool = &d.daemon.context.spool;
    let entry = spool
        .list()
        .unwrap()
        .into_iter()
        .find(|e| &e.id == id)
        .unwrap_or_else(|| panic!("{id} not in the spool"));
    (entry, spool.read_message(id).unwrap())
}

pub fn queue_len(d: &TestDaemon) -> usize {
    d.daemon.context.spool.list().unwrap().len()
}

/// Asserts `stored` is `client` (the bytes the client meant, CRLF line ends)
/// with header lines added on top; returns the added part.
pub fn added_part(stored: &[u8], client: &[u8]) -> String {
    assert!(
        stored.ends_with(client),
        "stored message does not end with the client's bytes:\nstored: {:?}\nclient: {:?}",
        String::from_utf8_lossy(stored),
        String::from_utf8_lossy(client)
    );
    let added = String::from_utf8(stored[..stored.len() - client.len()].to_vec()).unwrap();
    assert!(added.starts_with("Received: from "), "{added:?}");
    added
}

/// A complete good transaction on a fresh connection: proves the daemon
/// still serves after whatever came before.
pub async fn assert_serves(d: &TestDaemon) {
    let (mut c, greeting) = Client::connect(d.smtp_addr()).await;
    assert_ok(&greeting, "220");
    assert_ok(&c.cmd("EHLO good").await, "250");
    let r = c
        .send_mail(
            "good@example.com",
            &["to@example.com"],
            b"Subject: good\r\n\r\nok",
        )
        .await;
    let id = queue_id(&r);
    let (_, bytes) = stored(d, &id);
    assert!(bytes.ends_with(b"Subject: good\r\n\r\nok\r\n"));
    assert_ok(&c.cmd("QUIT").await, "221");
}

/// Asserts `bytes` has no bare CR and no bare LF.
pub fn assert_crlf_only(bytes: &[u8]) {
    for (i, b) in bytes.iter().enumerate() {
        assert!(
            *b != b'\n' || (i > 0 && bytes[i - 1] == b'\r'),
            "bare LF at {i}"
        );
        assert!(
            *b != b'\r' || bytes.get(i + 1) == Some(&b'\n'),
            "bare CR at {i}"
        );
    }
}
