//! Support for the IMAP proxy tests: a daemon wired to an in-process IMAPS
//! upstream, and a raw line-level IMAP client with deadlines.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::common::ca::TestCa;
use crate::common::daemon::{self, TestDaemon};
use crate::common::imap_upstream::{ImapUpstream, Mode};

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

/// Hashes of DEV_PW and ODD_PW, made once per test binary (argon2 is slow
/// in debug builds).
fn hashes() -> &'static (String, String) {
    static H: std::sync::OnceLock<(String, String)> = std::sync::OnceLock::new();
    H.get_or_init(|| {
        (
            mailbridge::auth::hash_password(DEV_PW).unwrap(),
            mailbridge::auth::hash_password(ODD_PW).unwrap(),
        )
    })
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
[[accounts]]
name = "acct"
provider = "custom"
username = "{REAL_USER}"
password = '{apw}'
ca_file = '{ca_file}'
imap = {{ host = "127.0.0.1", port = {port}, tls = "{tls}" }}
smtp = {{ host = "127.0.0.1", port = 1, tls = "implicit" }}

[[users]]
name = "{DEV}"
password_hash = "{h1}"
account = "acct"

[[users]]
name = "{ODD}"
password_hash = "{h2}"
account = "acct"
"#,
        passthrough = s.passthrough,
        cap = s.cap,
        lt = s.login_timeout,
        it = s.idle_timeout,
        apw = s.account_password,
        port = upstream.port(),
        h1 = hashes().0,
        h2 = hashes().1,
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

pub struct Client {
    pub s: BufReader<TcpStream>,
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
        }
    }

    pub async fn send(&mut self, b: &[u8]) {
        self.s.get_mut().write_all(b).await.unwrap();
    }

    /// One line (CRLF stripped); empty string at EOF.
    pub async fn line(&mut self) -> String {
        let mut v = Vec::new();
        tokio::time::timeout(READ_TIMEOUT, self.s.read_until(b'\n', &mut v))
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
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                ),
                "{e}"
            );
        }
        v
    }
}
