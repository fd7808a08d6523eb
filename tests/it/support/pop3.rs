//! Support for the POP3 proxy tests: a daemon wired to an in-process POP3
//! upstream over TLS, and a raw line-level POP3 client with deadlines.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::support::ca::TestCa;
use crate::support::config::{user, Account};
use crate::support::daemon::{self, TestDaemon};
use crate::support::pop3_upstream::{Mode, Pop3Upstream};

/// The account's real login at the upstream.
pub const REAL_USER: &str = "real@example.com";
pub const REAL_PW: &str = "upstreamsecret";
/// Local user and password.
pub const DEV: &str = "dev";
pub const DEV_PW: &str = "plain pw";

pub struct Setup {
    pub cap: usize,
    pub upstream_password: String,
    pub mode: Mode,
    /// Configure local TLS (STLS and a pop3s listener).
    pub local_tls: bool,
    pub recent_mode: bool,
    pub passthrough: bool,
    /// Trust a CA that did not sign the upstream's certificate.
    pub wrong_ca: bool,
    pub login_timeout: &'static str,
    pub idle_timeout: &'static str,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            cap: 5,
            upstream_password: REAL_PW.into(),
            mode: Mode::Implicit,
            local_tls: false,
            recent_mode: false,
            passthrough: false,
            wrong_ca: false,
            login_timeout: "60s",
            idle_timeout: "10m",
        }
    }
}

pub struct Env {
    pub ca: TestCa,
    pub other_ca: Option<TestCa>,
    pub upstream: Pop3Upstream,
    pub daemon: TestDaemon,
}

impl Env {
    pub fn addr(&self) -> SocketAddr {
        self.daemon.daemon.pop3_addrs[0]
    }

    pub fn pop3s_addr(&self) -> SocketAddr {
        self.daemon.daemon.pop3s_addrs[0]
    }

    /// Connects and reads the greeting.
    pub async fn client(&self) -> Client<TcpStream> {
        let mut c = Client::new(TcpStream::connect(self.addr()).await.unwrap());
        assert_eq!(c.line().await, "+OK mailbridge POP3 ready");
        c
    }

    /// A client logged in as `dev` with USER/PASS.
    pub async fn logged_in(&self) -> Client<TcpStream> {
        let mut c = self.client().await;
        c.login(DEV, DEV_PW).await;
        c
    }

    /// Upstream sessions the daemon counts for the account now.
    pub fn account_connections(&self) -> usize {
        self.daemon.daemon.context.pop3.state.connections("acct")
    }

    /// Waits (up to 5 s) until the daemon counts `n` sessions for the account.
    pub async fn wait_account_connections(&self, n: usize) {
        crate::support::wait::poll_until(
            &format!("{n} account connections"),
            Duration::from_secs(5),
            || self.account_connections() == n,
        )
        .await
    }

    /// A TLS client config trusting the test CA.
    pub fn connector(&self) -> tokio_rustls::TlsConnector {
        self.ca.connector()
    }
}

pub async fn setup(s: Setup) -> Env {
    let ca = TestCa::new();
    let cert = ca.server_cert();
    let upstream = Pop3Upstream::start(&cert, REAL_USER, &s.upstream_password, s.mode).await;
    let other_ca = s.wrong_ca.then(|| TestCa::named("some other CA"));
    let tls = if s.mode == Mode::Implicit {
        "implicit"
    } else {
        "starttls"
    };
    let (top, pop3s) = if s.local_tls {
        let cert_file = ca.dir.path().join("local.pem");
        let key_file = ca.dir.path().join("local.key");
        std::fs::write(&cert_file, &cert.cert_pem).unwrap();
        std::fs::write(&key_file, &cert.key_pem).unwrap();
        (
            format!(
                "tls_cert = '{}'\ntls_key = '{}'\n",
                cert_file.display(),
                key_file.display()
            ),
            "pop3s_listen = [\"127.0.0.1:0\"]",
        )
    } else {
        (String::new(), "")
    };
    let toml = format!(
        r#"{top}
[smtp]
listen = ["127.0.0.1:0"]

[imap]
listen = []

[pop3]
listen = ["127.0.0.1:0"]
{pop3s}
max_connections_per_account = {cap}
passthrough = {passthrough}
login_timeout = "{lt}"
idle_timeout = "{it}"

{account}
{dev}"#,
        cap = s.cap,
        passthrough = s.passthrough,
        lt = s.login_timeout,
        it = s.idle_timeout,
        account = Account::new(REAL_USER, REAL_PW)
            .ca_file(other_ca.as_ref().unwrap_or(&ca).ca_file.display())
            .pop3(upstream.port(), tls)
            .line(&format!("pop3_recent_mode = {}", s.recent_mode)),
        dev = user(DEV, DEV_PW, "acct"),
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

pub struct Client<S> {
    pub s: BufReader<S>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    pub fn new(s: S) -> Self {
        Client {
            s: BufReader::new(s),
        }
    }

    pub async fn send(&mut self, b: &[u8]) {
        self.s.get_mut().write_all(b).await.unwrap();
    }

    /// One line, raw (CRLF included); empty at EOF.
    pub async fn raw_line(&mut self) -> Vec<u8> {
        let mut v = Vec::new();
        tokio::time::timeout(READ_TIMEOUT, self.s.read_until(b'\n', &mut v))
            .await
            .expect("read timed out")
            .unwrap();
        v
    }

    /// One line (CRLF stripped); empty string at EOF.
    pub async fn line(&mut self) -> String {
        String::from_utf8_lossy(&self.raw_line().await)
            .trim_end_matches("\r\n")
            .to_string()
    }

    /// Sends `cmd` and returns the one-line reply.
    pub async fn cmd(&mut self, cmd: &str) -> String {
        self.send(format!("{cmd}\r\n").as_bytes()).await;
        self.line().await
    }

    /// The raw bytes of a multi-line reply, status line to "." included.
    pub async fn multi_raw(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let l = self.raw_line().await;
            assert!(
                !l.is_empty(),
                "EOF in a multi-line reply after {} bytes",
                out.len()
            );
            out.extend_from_slice(&l);
            if out.starts_with(b"-ERR") || l == b".\r\n" {
                return out;
            }
        }
    }

    pub async fn login(&mut self, user: &str, pw: &str) {
        assert_eq!(self.cmd(&format!("USER {user}")).await, "+OK Send PASS");
        assert_eq!(self.cmd(&format!("PASS {pw}")).await, "+OK Logged in");
    }

    /// Reads until the server closes; panics if it does not within the deadline.
    pub async fn read_to_eof(&mut self) -> Vec<u8> {
        let mut v = Vec::new();
        let r = tokio::time::timeout(READ_TIMEOUT, self.s.read_to_end(&mut v))
            .await
            .expect("server did not close");
        if let Err(e) = r {
            assert!(
                matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::BrokenPipe
                        | std::io::ErrorKind::UnexpectedEof
                ),
                "{e}"
            );
        }
        v
    }
}
