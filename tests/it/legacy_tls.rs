//! The `legacy` TLS profile of the local listeners (`--features legacy-tls`):
//! an OpenSSL client forced to TLS 1.0 with plain RSA key exchange (what an
//! old printer speaks) gets through SMTP STARTTLS, smtps and imaps with
//! `tls_profile = "legacy"`, and its mail reaches the (rustls, TLS 1.2+,
//! verified) upstream; the default profile refuses the same client.
#![cfg(feature = "legacy-tls")]

use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

use openssl::asn1::Asn1Time;
use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;
use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode, SslVersion};
use openssl::x509::extension::SubjectAlternativeName;
use openssl::x509::{X509NameBuilder, X509};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_openssl::SslStream;

use crate::support::ca::TestCa;
use crate::support::config::{user, Account};
use crate::support::daemon::{self, TestDaemon};
use crate::support::imap_upstream::ImapUpstream;
use crate::support::smtp_upstream::{Mode, SmtpUpstream};

const REAL_USER: &str = "real@example.com";
const REAL_PW: &str = "upstreamsecret";
const USER: &str = "printer";
const PW: &str = "devicepw";
const WAIT: Duration = Duration::from_secs(10);

/// A self-signed RSA certificate for the local listeners, written to `dir`:
/// plain RSA key exchange needs an RSA key (rcgen's default is ECDSA).
fn rsa_cert(dir: &Path) -> (String, String) {
    let key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", "localhost").unwrap();
    let name = name.build();
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(&name).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::days_from_now(30).unwrap())
        .unwrap();
    let san = SubjectAlternativeName::new()
        .dns("localhost")
        .ip("127.0.0.1")
        .build(&b.x509v3_context(None, None))
        .unwrap();
    b.append_extension(san).unwrap();
    b.sign(&key, MessageDigest::sha256()).unwrap();
    let (cert, key_file) = (dir.join("rsa.pem"), dir.join("rsa.key"));
    std::fs::write(&cert, b.build().to_pem().unwrap()).unwrap();
    std::fs::write(&key_file, key.private_key_to_pem_pkcs8().unwrap()).unwrap();
    (cert.display().to_string(), key_file.display().to_string())
}

struct Env {
    smtp_up: SmtpUpstream,
    imap_up: ImapUpstream,
    daemon: TestDaemon,
    _ca: TestCa,
}

/// A daemon with STARTTLS, smtps and imaps listeners whose `tls_profile` is
/// `profile` (`None`: the key is left out, i.e. the default) for both families.
async fn env(profile: Option<&str>) -> Env {
    let ca = TestCa::new();
    let up_cert = ca.server_cert();
    let smtp_up = SmtpUpstream::start(&up_cert, Mode::Implicit, REAL_USER, REAL_PW).await;
    let imap_up = ImapUpstream::start(&up_cert, REAL_USER, REAL_PW).await;
    let (cert, key) = rsa_cert(ca.dir.path());
    let profile = profile
        .map(|p| format!("tls_profile = \"{p}\""))
        .unwrap_or_default();
    let toml = format!(
        r#"tls_cert = '{cert}'
tls_key = '{key}'

[smtp]
listen = ["127.0.0.1:0"]
smtps_listen = ["127.0.0.1:0"]
hostname = "relay.test"
{profile}

[imap]
listen = ["127.0.0.1:0"]
imaps_listen = ["127.0.0.1:0"]
{profile}

[delivery]
retry_initial = "1h"

{account}
{user}"#,
        account = Account::new(REAL_USER, REAL_PW)
            .ca_file(ca.ca_file.display())
            .smtp(smtp_up.port(), "implicit")
            .imap(imap_up.port(), "implicit"),
        user = user(USER, PW, "acct"),
    );
    let daemon = daemon::start(&toml).await;
    Env {
        smtp_up,
        imap_up,
        daemon,
        _ca: ca,
    }
}

/// An old device: TLS 1.0 only, AES128-SHA (RSA key exchange) only, no
/// certificate check. `tls1 = false` gives a current OpenSSL client instead.
async fn device_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    s: S,
    tls1: bool,
) -> Result<SslStream<S>, openssl::ssl::Error> {
    let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
    if tls1 {
        b.set_min_proto_version(Some(SslVersion::TLS1)).unwrap();
        b.set_max_proto_version(Some(SslVersion::TLS1)).unwrap();
        b.set_cipher_list("AES128-SHA:@SECLEVEL=0").unwrap();
    }
    b.set_verify(SslVerifyMode::NONE);
    let ssl = b
        .build()
        .configure()
        .unwrap()
        .verify_hostname(false)
        .into_ssl("localhost")
        .unwrap();
    let mut tls = SslStream::new(ssl, s).unwrap();
    tokio::time::timeout(WAIT, Pin::new(&mut tls).connect())
        .await
        .expect("handshake hung")?;
    Ok(tls)
}

/// An old device connected to an implicit-TLS port (TLS 1.0 with RSA checked).
async fn old_device_at(addr: SocketAddr) -> SslStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = device_handshake(tcp, true)
        .await
        .expect("TLS 1.0 handshake");
    assert_tls1_rsa(&tls);
    tls
}

fn assert_tls1_rsa<S>(tls: &SslStream<S>) {
    assert_eq!(tls.ssl().version_str(), "TLSv1");
    let cipher = tls.ssl().current_cipher().unwrap().name();
    assert_eq!(cipher, "AES128-SHA");
}

/// Line-level talk over any stream.
struct Talk<S> {
    s: BufReader<S>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Talk<S> {
    fn new(s: S) -> Self {
        Talk {
            s: BufReader::new(s),
        }
    }

    async fn line(&mut self) -> String {
        let mut v = Vec::new();
        tokio::time::timeout(WAIT, self.s.read_until(b'\n', &mut v))
            .await
            .expect("read timed out")
            .unwrap();
        String::from_utf8(v).unwrap()
    }

    /// Sends `cmd` (unless empty) and returns the whole SMTP reply.
    async fn smtp(&mut self, cmd: &str) -> String {
        if !cmd.is_empty() {
            self.s.get_mut().write_all(cmd.as_bytes()).await.unwrap();
            self.s.get_mut().flush().await.unwrap();
        }
        let mut out = String::new();
        loop {
            let l = self.line().await;
            out.push_str(&l);
            if l.len() < 4 || l.as_bytes()[3] != b'-' {
                return out;
            }
        }
    }

    fn into_inner(self) -> S {
        assert!(self.s.buffer().is_empty());
        self.s.into_inner()
    }
}

/// Plaintext SMTP up to the STARTTLS go-ahead; returns the raw socket.
async fn smtp_until_starttls(addr: SocketAddr) -> TcpStream {
    let mut c = Talk::new(TcpStream::connect(addr).await.unwrap());
    assert!(c.smtp("").await.starts_with("220 relay.test"));
    assert!(c.smtp("EHLO printer\r\n").await.contains("250-STARTTLS"));
    assert_eq!(
        c.smtp("STARTTLS\r\n").await,
        "220 2.0.0 Ready to start TLS\r\n"
    );
    c.into_inner()
}

/// One message through an established TLS session (greeting already read
/// when `greeted`); returns the 250 reply to the final dot.
async fn send_mail<S: AsyncRead + AsyncWrite + Unpin>(
    tls: S,
    subject: &str,
    greeted: bool,
) -> String {
    let mut c = Talk::new(tls);
    if !greeted {
        assert!(c.smtp("").await.starts_with("220 relay.test"));
    }
    let ehlo = c.smtp("EHLO printer\r\n").await;
    assert!(
        ehlo.starts_with("250-relay.test") && !ehlo.contains("STARTTLS"),
        "{ehlo}"
    );
    assert!(c
        .smtp("MAIL FROM:<scanner@example.com>\r\n")
        .await
        .starts_with("250"));
    assert!(c
        .smtp("RCPT TO:<me@example.com>\r\n")
        .await
        .starts_with("250"));
    assert!(c.smtp("DATA\r\n").await.starts_with("354"));
    let msg = format!("Subject: {subject}\r\n\r\nscan attached\r\n.\r\n");
    let done = c.smtp(&msg).await;
    assert!(c.smtp("QUIT\r\n").await.starts_with("221"));
    done
}

#[tokio::test]
async fn legacy_smtp_starttls_accepts_a_tls1_rsa_device_and_delivers() {
    let e = env(Some("legacy")).await;
    let tcp = smtp_until_starttls(e.daemon.smtp_addr()).await;
    let tls = device_handshake(tcp, true)
        .await
        .expect("TLS 1.0 handshake");
    assert_tls1_rsa(&tls);
    let done = send_mail(tls, "starttls scan", true).await;
    assert!(done.starts_with("250 2.0.0"), "{done}");
    let got = e.smtp_up.wait_for(1, WAIT).await;
    let data = String::from_utf8_lossy(&got[0].data);
    assert!(data.contains("Subject: starttls scan"), "{data}");
    assert!(data.contains(" with ESMTPS "), "{data}");
    e.daemon.stop().await;
}

#[tokio::test]
async fn legacy_smtps_accepts_tls1_and_modern_clients_still_get_tls13() {
    let e = env(Some("legacy")).await;
    let smtps = e.daemon.daemon.smtps_addrs[0];
    let tls = old_device_at(smtps).await;
    let done = send_mail(tls, "smtps scan", false).await;
    assert!(done.starts_with("250 2.0.0"), "{done}");
    let got = e.smtp_up.wait_for(1, WAIT).await;
    assert!(String::from_utf8_lossy(&got[0].data).contains("Subject: smtps scan"));
    // The profile only widens what is accepted: a current client gets TLS 1.3.
    let tls = device_handshake(TcpStream::connect(smtps).await.unwrap(), false)
        .await
        .expect("modern handshake");
    assert_eq!(tls.ssl().version_str(), "TLSv1.3");
    e.daemon.stop().await;
}

#[tokio::test]
async fn modern_profile_refuses_tls1_on_every_local_tls_listener() {
    let e = env(None).await;
    let tcp = smtp_until_starttls(e.daemon.smtp_addr()).await;
    assert!(device_handshake(tcp, true).await.is_err());
    let smtps = e.daemon.daemon.smtps_addrs[0];
    let tcp = TcpStream::connect(smtps).await.unwrap();
    assert!(device_handshake(tcp, true).await.is_err());
    let imaps = e.daemon.daemon.imaps_addrs[0];
    let tcp = TcpStream::connect(imaps).await.unwrap();
    assert!(device_handshake(tcp, true).await.is_err());
    // The same listeners serve a current client, and the daemon goes on.
    let tls = device_handshake(TcpStream::connect(smtps).await.unwrap(), false)
        .await
        .expect("modern handshake");
    let done = send_mail(tls, "modern", false).await;
    assert!(done.starts_with("250 2.0.0"), "{done}");
    e.daemon.stop().await;
}

#[tokio::test]
async fn legacy_imaps_accepts_a_tls1_device_and_logs_in_upstream() {
    let e = env(Some("legacy")).await;
    let imaps = e.daemon.daemon.imaps_addrs[0];
    let tls = old_device_at(imaps).await;
    let mut c = Talk::new(tls);
    let greeting = c.line().await;
    assert!(
        greeting.starts_with("* OK [CAPABILITY IMAP4rev1"),
        "{greeting}"
    );
    assert!(!greeting.contains("STARTTLS"), "{greeting}");
    c.s.get_mut()
        .write_all(format!("a LOGIN {USER} {PW}\r\n").as_bytes())
        .await
        .unwrap();
    let mut last = c.line().await;
    while !last.starts_with("a ") {
        last = c.line().await;
    }
    assert!(last.starts_with("a OK"), "{last}");
    assert_eq!(e.imap_up.logins().len(), 1);
    e.daemon.stop().await;
}
