//! Support for the IMAP proxy tests: a daemon wired to an in-process IMAPS
//! upstream, and a raw line-level IMAP client with deadlines.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::support::ca::TestCa;
use crate::support::config::{user, Account};
use crate::support::daemon::{self, TestDaemon};
use crate::support::imap_upstream::{ImapUpstream, Mode};

/// The account's real login at the upstream.
pub const REAL_USER: &str = "real@example.com";
/// Local user with a simple password.
pub const DEV: &str = "dev";
pub const DEV_PW: &str = "plainpw";
/// Local user whose password needs every kind of quoting.
pub const ODD: &str = "odd";
pub const ODD_PW: &str = "p w\"\\{5}\u{e4}";

pub struct Setup {
    pub passthrough: bool,
    pub cap: usize,
    /// The account password in relay.toml and the one the upstream accepts.
    pub account_password: String,
    pub upstream_password: String,
    pub mode: Mode,
    pub untagged_caps: bool,
    /// Use a CA that did not sign the upstream's certificate.
    pub wrong_ca: bool,
    pub login_timeout: &'static str,
    pub idle_timeout: &'static str,
    pub allowed_networks: Option<&'static str>,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            passthrough: false,
            cap: 15,
            account_password: "upstreamsecret".into(),
            upstream_password: "upstreamsecret".into(),
            mode: Mode::Implicit,
            untagged_caps: false,
            wrong_ca: false,
            login_timeout: "60s",
            idle_timeout: "30m",
            allowed_networks: None,
        }
    }
}

pub struct Env {
    pub ca: TestCa,
    pub other_ca: Option<TestCa>,
    pub upstream: ImapUpstream,
    pub daemon: TestDaemon,
}

impl Env {
    pub fn addr(&self) -> SocketAddr {
        self.daemon.imap_addr()
    }

    pub async fn client(&self) -> Client {
        Client::connect(self.addr()).await
    }

    /// A client that has logged in as `dev`.
    pub async fn logged_in(&self) -> Client {
        let mut c = self.client().await;
        let lines = c.login_dev().await;
        assert!(lines.last().unwrap().starts_with("a OK"), "{lines:?}");
        c
    }

    /// Upstream connections the daemon currently counts for the account.
    pub fn account_connections(&self) -> usize {
        self.daemon.daemon.context.imap.state.connections("acct")
    }
}

pub async fn setup(s: Setup) -> Env {
    let ca = TestCa::new();
    let upstream = ImapUpstream::start_with(
        &ca.server_cert(),
        REAL_USER,
        &s.upstream_password,
        s.mode,
        s.untagged_caps,
    )
    .await;
    let other_ca = s.wrong_ca.then(|| TestCa::named("some other CA"));
    let ca_file = other_ca
        .as_ref()
        .unwrap_or(&ca)
        .ca_file
        .display()
        .to_string();
    let tls = if s.mode == Mode::Implicit {
        "implicit"
    } else {
        "starttls"
    };
    let allowed = s
        .allowed_networks
        .map(|n| format!("allowed_networks = [\"{n}\"]\n"))
        .unwrap_or_default();
    let toml = format!(
        r#"
[smtp]
listen = ["127.0.0.1:0"]

[imap]
listen = ["127.0.0.1:0"]
passthrough = {passthrough}
max_connections_per_account = {cap}
login_timeout = "{lt}"
idle_timeout = "{it}"
{allowed}
{account}
{dev}
{odd}"#,
        passthrough = s.passthrough,
        cap = s.cap,
        lt = s.login_timeout,
        it = s.idle_timeout,
        account = Account::new(REAL_USER, &s.account_password)
            .ca_file(ca_file)
            .imap(upstream.port(), tls),
        dev = user(DEV, DEV_PW, "acct"),
        odd = user(ODD, ODD_PW, "acct"),
    );
    let daemon = daemon::start(&toml).await;
    Env {
        ca,
        other_ca,
        upstream,
        daemon,
    }
}

/// Deadline for any single read in tests.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The one raw IMAP client of the tests: line-level, a deadline on every read.
pub struct Client {
    pub s: BufReader<TcpStream>,
    /// Deadline for each read ([`READ_TIMEOUT`] unless made with another).
    read_timeout: Duration,
}

impl Client {
    /// Connects and reads the greeting.
    pub async fn connect(addr: SocketAddr) -> Client {
        let mut c = Client::connect_raw(addr).await;
        let g = c.line().await;
        assert!(
            g.starts_with("* OK [CAPABILITY IMAP4rev1 LITERAL+ SASL-IR ID AUTH=PLAIN]"),
            "{g}"
        );
        c
    }

    pub async fn connect_raw(addr: SocketAddr) -> Client {
        Client {
            s: BufReader::new(TcpStream::connect(addr).await.unwrap()),
            read_timeout: READ_TIMEOUT,
        }
    }

    /// Wraps a connected stream and reads the greeting (returned unchecked);
    /// each read may take up to `read_timeout` (a throttled login answers late).
    pub async fn from_stream(s: TcpStream, read_timeout: Duration) -> (Client, String) {
        let mut c = Client {
            s: BufReader::new(s),
            read_timeout,
        };
        let greeting = c.line().await;
        (c, greeting)
    }

    pub async fn send(&mut self, b: &[u8]) {
        self.s.get_mut().write_all(b).await.unwrap();
    }

    /// One line (CRLF stripped); empty string at EOF.
    pub async fn line(&mut self) -> String {
        let mut v = Vec::new();
        tokio::time::timeout(self.read_timeout, self.s.read_until(b'\n', &mut v))
            .await
            .expect("read timed out")
            .unwrap();
        String::from_utf8_lossy(&v)
            .trim_end_matches("\r\n")
            .to_string()
    }

    /// Sends `a LOGIN` as [`DEV`]; the lines up to the tagged answer.
    pub async fn login_dev(&mut self) -> Vec<String> {
        self.send(format!("a LOGIN {DEV} {DEV_PW}\r\n").as_bytes())
            .await;
        self.tagged("a").await
    }

    /// Lines up to and including the one tagged `tag`.
    pub async fn tagged(&mut self, tag: &str) -> Vec<String> {
        let mut out = Vec::new();
        loop {
            let l = self.line().await;
            assert!(!l.is_empty(), "EOF before {tag} reply; got {out:?}");
            let done = l.starts_with(&format!("{tag} "));
            out.push(l);
            if done {
                return out;
            }
        }
    }

    /// Only the line tagged `tag` (the untagged ones before it skipped).
    pub async fn tagged_line(&mut self, tag: &str) -> String {
        self.tagged(tag).await.pop().unwrap_or_default()
    }

    /// Reads until the server closes; panics if it does not within the deadline.
    pub async fn read_to_eof(&mut self) -> Vec<u8> {
        let mut v = Vec::new();
        let r = tokio::time::timeout(self.read_timeout, self.s.read_to_end(&mut v))
            .await
            .expect("server did not close");
        if let Err(e) = r {
            assert!(
                matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                ),
                "{e}"
            );
        }
        v
    }
}
