//! Local TLS on the client side of mailbridge: SMTP and IMAP STARTTLS,
//! the implicit-TLS listeners (smtps_listen, imaps_listen), discarding bytes
//! pipelined after STARTTLS, nothing offered when TLS is not configured, and
//! TLS 1.2/1.3 only.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use lettre::address::{Address, Envelope};
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::support::ca::TestCa;
use crate::support::config::{user, Account};
use crate::support::daemon::{self, TestDaemon};
use crate::support::imap_upstream::ImapUpstream;

const REAL_USER: &str = "real@example.com";
const REAL_PW: &str = "upstreamsecret";
const USER: &str = "dev";
const PW: &str = "devicepw";
const WAIT: Duration = Duration::from_secs(10);

struct Env {
    ca: TestCa,
    upstream: ImapUpstream,
    daemon: TestDaemon,
}

/// A daemon with an IMAP test upstream; with `tls`, the local certificate
/// (signed by the test CA) is configured and implicit-TLS listeners are open.
async fn env(tls: bool) -> Env {
    let ca = TestCa::new();
    let cert = ca.server_cert();
    let upstream = ImapUpstream::start(&cert, REAL_USER, REAL_PW).await;
    let cert_file = ca.dir.path().join("local.pem");
    let key_file = ca.dir.path().join("local.key");
    std::fs::write(&cert_file, &cert.cert_pem).unwrap();
    std::fs::write(&key_file, &cert.key_pem).unwrap();
    let (top, smtps, imaps) = if tls {
        (
            format!(
                "tls_cert = '{}'\ntls_key = '{}'\n",
                cert_file.display(),
                key_file.display()
            ),
            "smtps_listen = [\"127.0.0.1:0\"]",
            "imaps_listen = [\"127.0.0.1:0\"]",
        )
    } else {
        (String::new(), "", "")
    };
    let toml = format!(
        r#"{top}
[smtp]
listen = ["127.0.0.1:0"]
{smtps}
hostname = "relay.test"

[imap]
listen = ["127.0.0.1:0"]
{imaps}

[delivery]
retry_initial = "1h"

{account}
{user}"#,
        account = Account::new(REAL_USER, REAL_PW)
            .ca_file(ca.ca_file.display())
            .imap(upstream.port(), "implicit"),
        user = user(USER, PW, "acct"),
    );
    let daemon = daemon::start(&toml).await;
    Env {
        ca,
        upstream,
        daemon,
    }
}

fn lettre_tls(ca: &TestCa) -> TlsParameters {
    TlsParameters::builder("localhost".into())
        .add_root_certificate(Certificate::from_pem(ca.ca_pem.as_bytes()).unwrap())
        .build_rustls()
        .unwrap()
}

fn connector(ca: &TestCa) -> tokio_rustls::TlsConnector {
    ca.connector()
}

async fn tls_connect(ca: &TestCa, tcp: TcpStream) -> tokio_rustls::client::TlsStream<TcpStream> {
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(WAIT, connector(ca).connect(name, tcp))
        .await
        .expect("handshake timed out")
        .expect("handshake failed")
}

/// A line-level client over any stream.
struct Lines<S> {
    s: BufReader<S>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Lines<S> {
    fn new(s: S) -> Self {
        Lines {
            s: BufReader::new(s),
        }
    }

    async fn send(&mut self, b: &[u8]) {
        self.s.get_mut().write_all(b).await.unwrap();
        self.s.get_mut().flush().await.unwrap();
    }

    /// One line with its CRLF; empty at EOF.
    async fn line(&mut self) -> String {
        let mut v = Vec::new();
        tokio::time::timeout(WAIT, self.s.read_until(b'\n', &mut v))
            .await
            .expect("read timed out")
            .unwrap();
        String::from_utf8(v).unwrap()
    }

    /// A whole SMTP reply (all its lines).
    async fn reply(&mut self) -> String {
        let mut out = String::new();
        loop {
            let l = self.line().await;
            out.push_str(&l);
            if l.len() < 4 || l.as_bytes()[3] != b'-' {
                return out;
            }
        }
    }

    /// IMAP lines up to and including the one tagged `tag`.
    async fn tagged(&mut self, tag: &str) -> Vec<String> {
        let mut out = Vec::new();
        loop {
            let l = self.line().await;
            assert!(!l.is_empty(), "EOF before {tag}: {out:?}");
            let done = l.starts_with(&format!("{tag} "));
            out.push(l);
            if done {
                return out;
            }
        }
    }

    /// The stream, after checking nothing more was received.
    fn into_inner(self) -> S {
        assert!(
            self.s.buffer().is_empty(),
            "unexpected bytes before the TLS handshake: {:?}",
            String::from_utf8_lossy(self.s.buffer())
        );
        self.s.into_inner()
    }
}

fn envelope() -> Envelope {
    Envelope::new(
        Some("scanner@example.com".parse::<Address>().unwrap()),
        vec!["me@example.com".parse::<Address>().unwrap()],
    )
    .unwrap()
}

/// The stored message for the queue id in lettre's reply.
fn stored(d: &TestDaemon, resp: &lettre::transport::smtp::response::Response) -> Vec<u8> {
    assert_eq!(resp.code().to_string(), "250");
    let text = resp.message().collect::<Vec<_>>().join(" ");
    let id = mailbridge::spool::QueueId(text.rsplit(' ').next().unwrap().to_string());
    d.daemon.context.spool.read_message(&id).unwrap()
}

fn received_with(message: &[u8]) -> String {
    let text = String::from_utf8_lossy(message);
    let received = text.split("\r\n\r\n").next().unwrap();
    let i = received.find(" with ").expect("Received header has `with`");
    received[i + 6..]
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn smtp_starttls_with_lettre_spools_the_message() {
    let e = env(true).await;
    let port = e.daemon.smtp_addr().port();
    let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(port)
        .tls(Tls::Required(lettre_tls(&e.ca)))
        .build();
    let resp = transport
        .send_raw(&envelope(), b"Subject: over starttls\r\n\r\nHello")
        .await
        .unwrap();
    let msg = stored(&e.daemon, &resp);
    assert_eq!(received_with(&msg), "ESMTPS");
    // AUTH after STARTTLS (the session was reset; lettre EHLOs again).
    let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(port)
        .tls(Tls::Required(lettre_tls(&e.ca)))
        .credentials(Credentials::new(USER.into(), PW.into()))
        .authentication(vec![Mechanism::Plain])
        .build();
    let resp = transport
        .send_raw(&envelope(), b"Subject: authed\r\n\r\nHello")
        .await
        .unwrap();
    assert_eq!(received_with(&stored(&e.daemon, &resp)), "ESMTPSA");
    e.daemon.stop().await;
}

#[tokio::test]
async fn smtp_implicit_tls_and_a_silent_client_blocks_nobody() {
    let e = env(true).await;
    let smtps = e.daemon.daemon.smtps_addrs[0];
    // A client that connects and never starts its handshake: the handshake
    // runs in its own task, so others are served meanwhile.
    let _silent = TcpStream::connect(smtps).await.unwrap();
    let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(smtps.port())
        .tls(Tls::Wrapper(lettre_tls(&e.ca)))
        .build();
    let resp = transport
        .send_raw(&envelope(), b"Subject: smtps\r\n\r\nHello")
        .await
        .unwrap();
    assert_eq!(received_with(&stored(&e.daemon, &resp)), "ESMTPS");
    // EHLO on the TLS port does not offer STARTTLS again; STARTTLS is refused.
    let tls = tls_connect(&e.ca, TcpStream::connect(smtps).await.unwrap()).await;
    let mut c = Lines::new(tls);
    assert!(c.reply().await.starts_with("220 relay.test"));
    c.send(b"EHLO dev\r\n").await;
    let ehlo = c.reply().await;
    assert!(
        ehlo.starts_with("250-relay.test") && !ehlo.contains("STARTTLS"),
        "{ehlo}"
    );
    c.send(b"STARTTLS\r\n").await;
    assert_eq!(c.reply().await, "503 5.5.1 TLS already active\r\n");
    e.daemon.stop().await;
}

#[tokio::test]
async fn smtp_bytes_pipelined_after_starttls_are_discarded() {
    let e = env(true).await;
    let mut c = Lines::new(TcpStream::connect(e.daemon.smtp_addr()).await.unwrap());
    assert!(c.reply().await.starts_with("220 "));
    c.send(b"EHLO dev\r\n").await;
    let ehlo = c.reply().await;
    assert!(ehlo.contains("250-STARTTLS\r\n"), "{ehlo}");
    // The RSET arrives in plaintext in the same segment as STARTTLS.
    c.send(b"MAIL FROM:<a@example.com>\r\n").await;
    assert!(c.reply().await.starts_with("250 2.1.0"));
    c.send(b"STARTTLS\r\nRSET\r\n").await;
    assert_eq!(c.reply().await, "220 2.0.0 Ready to start TLS\r\n");
    // No plaintext reply to RSET may follow (into_inner checks the buffer,
    // and a stray "250" would break the handshake).
    let tls = tls_connect(&e.ca, c.into_inner()).await;
    let mut c = Lines::new(tls);
    // First thing over TLS: VRFY's 252. A leaked RSET reply would be a 250.
    c.send(b"VRFY x\r\n").await;
    assert!(c.reply().await.starts_with("252 "));
    // The session was reset: the earlier MAIL is gone, EHLO shows no STARTTLS.
    c.send(b"RCPT TO:<b@example.com>\r\n").await;
    assert!(c.reply().await.starts_with("503 5.5.1"));
    c.send(b"EHLO dev\r\n").await;
    assert!(!c.reply().await.contains("STARTTLS"));
    c.send(b"QUIT\r\n").await;
    assert!(c.reply().await.starts_with("221 "));
    e.daemon.stop().await;
}

#[tokio::test]
async fn imap_starttls_then_login_reaches_upstream() {
    let e = env(true).await;
    let mut c = Lines::new(TcpStream::connect(e.daemon.imap_addr()).await.unwrap());
    let greeting = c.line().await;
    assert!(greeting.contains("AUTH=PLAIN STARTTLS]"), "{greeting}");
    assert!(!greeting.contains("LOGINDISABLED"));
    // A LOGIN pipelined after STARTTLS (plaintext) must not be acted on.
    c.send(format!("a STARTTLS\r\nb LOGIN {USER} {PW}\r\n").as_bytes())
        .await;
    assert_eq!(c.line().await, "a OK Begin TLS negotiation now\r\n");
    let tls = tls_connect(&e.ca, c.into_inner()).await;
    let mut c = Lines::new(tls);
    c.send(b"c CAPABILITY\r\n").await;
    let caps = c.tagged("c").await;
    assert!(caps[0].starts_with("* CAPABILITY IMAP4rev1"), "{caps:?}");
    assert!(!caps[0].contains("STARTTLS"), "{caps:?}");
    assert_eq!(caps.len(), 2, "{caps:?}");
    assert!(e.upstream.logins().is_empty());
    c.send(b"d STARTTLS\r\n").await;
    assert!(c.line().await.starts_with("d BAD TLS is already active"));
    c.send(format!("e LOGIN {USER} {PW}\r\n").as_bytes()).await;
    let r = c.tagged("e").await;
    assert!(r.last().unwrap().starts_with("e OK"), "{r:?}");
    let logins = e.upstream.logins();
    assert_eq!(logins.len(), 1);
    assert!(String::from_utf8_lossy(&logins[0]).contains(REAL_USER));
    c.send(b"f NOOP\r\n").await;
    assert!(c.tagged("f").await.last().unwrap().starts_with("f OK"));
    e.daemon.stop().await;
}

#[tokio::test]
async fn imap_implicit_tls_login() {
    let e = env(true).await;
    let imaps = e.daemon.daemon.imaps_addrs[0];
    let tls = tls_connect(&e.ca, TcpStream::connect(imaps).await.unwrap()).await;
    let mut c = Lines::new(tls);
    let greeting = c.line().await;
    assert!(
        greeting.starts_with("* OK [CAPABILITY IMAP4rev1") && !greeting.contains("STARTTLS"),
        "{greeting}"
    );
    c.send(format!("a LOGIN {USER} {PW}\r\n").as_bytes()).await;
    let r = c.tagged("a").await;
    assert!(r.last().unwrap().starts_with("a OK"), "{r:?}");
    assert_eq!(e.upstream.logins().len(), 1);
    c.send(b"b LOGOUT\r\n").await;
    assert!(c.tagged("b").await.last().unwrap().starts_with("b OK"));
    e.daemon.stop().await;
}

#[tokio::test]
async fn starttls_not_offered_without_local_tls() {
    let e = env(false).await;
    assert!(e.daemon.daemon.smtps_addrs.is_empty() && e.daemon.daemon.imaps_addrs.is_empty());
    let mut c = Lines::new(TcpStream::connect(e.daemon.smtp_addr()).await.unwrap());
    c.reply().await;
    c.send(b"EHLO dev\r\n").await;
    assert!(!c.reply().await.contains("STARTTLS"));
    c.send(b"STARTTLS\r\n").await;
    assert!(c.reply().await.starts_with("454 4.7.0"));
    // Still a working plaintext session.
    c.send(b"NOOP\r\n").await;
    assert!(c.reply().await.starts_with("250"));

    let mut c = Lines::new(TcpStream::connect(e.daemon.imap_addr()).await.unwrap());
    assert!(!c.line().await.contains("STARTTLS"));
    c.send(b"a CAPABILITY\r\nb STARTTLS\r\n").await;
    assert!(!c.tagged("a").await[0].contains("STARTTLS"));
    assert!(c.line().await.starts_with("b BAD"));
    e.daemon.stop().await;
}

/// A rustls client limited to one protocol version.
async fn handshake_with(
    ca: &TestCa,
    addr: SocketAddr,
    v: &'static rustls::SupportedProtocolVersion,
) -> bool {
    let mut roots = rustls::RootCertStore::empty();
    for c in mailbridge::tls::load_certs(&ca.ca_file).unwrap() {
        roots.add(c).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_protocol_versions(&[v])
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let r = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await;
    match r {
        Ok(mut s) => {
            let mut b = [0u8; 3];
            s.read_exact(&mut b).await.is_ok() && &b == b"220"
        }
        Err(_) => false,
    }
}

/// `openssl s_client` forced to one version; true if the handshake succeeded.
fn openssl_handshake(addr: SocketAddr, flag: &str) -> Option<bool> {
    let out = std::process::Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            flag,
            "-cipher",
            "DEFAULT@SECLEVEL=0",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "New, TLSv1.2, Cipher is ..." on success, "Cipher is (NONE)" on failure.
    Some(text.contains("Cipher is ") && !text.contains("Cipher is (NONE)"))
}

#[tokio::test]
async fn only_tls_12_and_13_are_accepted() {
    let e = env(true).await;
    let smtps = e.daemon.daemon.smtps_addrs[0];
    assert!(handshake_with(&e.ca, smtps, &rustls::version::TLS13).await);
    assert!(handshake_with(&e.ca, smtps, &rustls::version::TLS12).await);
    // rustls cannot speak TLS 1.0/1.1; openssl can, if it is installed.
    let ok12 = tokio::task::spawn_blocking(move || openssl_handshake(smtps, "-tls1_2"))
        .await
        .unwrap();
    if let Some(ok12) = ok12 {
        assert!(ok12, "openssl -tls1_2 should succeed (control)");
        for flag in ["-tls1", "-tls1_1"] {
            let ok = tokio::task::spawn_blocking(move || openssl_handshake(smtps, flag))
                .await
                .unwrap();
            assert_eq!(ok, Some(false), "openssl {flag} must be refused");
        }
    }
    e.daemon.stop().await;
}
