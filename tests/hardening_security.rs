//! Security properties through the real binary: no open relay at start,
//! clients outside `allowed_networks` refused, brute force slowed then
//! refused (logged once per burst), no secret in any output at trace level,
//! and a warning for a config file others can read.

mod common;
mod hardening_support;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use common::ca::TestCa;
use common::imap_upstream::ImapUpstream;
use common::smtp_upstream::{Mode, SmtpUpstream};
use hardening_support::{command, write_config, Proc, Smtp};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

const REAL_USER: &str = "relay@example.com";
/// The account password as written in relay.toml (a Gmail app password with spaces)...
const APP_PASSWORD_SPACED: &str = "qwer tyui opas dfgh";
/// ...and as sent upstream.
const APP_PASSWORD: &str = "qwertyuiopasdfgh";
const DEV: &str = "dev";
const DEV_PW: &str = "Dev-Secret-pw-4711";
const WRONG_PW: &str = "Wrong-guess-pw-0815";

fn hash() -> &'static str {
    static H: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    H.get_or_init(|| mailbridge::auth::hash_password(DEV_PW).unwrap())
}

fn toml(smtp_port: u16, imap_port: u16, ca_file: &Path, extra_smtp: &str) -> String {
    format!(
        r#"
[smtp]
listen = ["127.0.0.1:0"]
{extra_smtp}

[imap]
listen = ["127.0.0.1:0"]

[delivery]
retry_initial = "100ms"
retry_max = "400ms"

[[accounts]]
name = "acct"
provider = "custom"
username = "{REAL_USER}"
password = "{APP_PASSWORD_SPACED}"
ca_file = "{ca}"
smtp = {{ host = "127.0.0.1", port = {smtp_port}, tls = "implicit" }}
imap = {{ host = "127.0.0.1", port = {imap_port}, tls = "implicit" }}

[[users]]
name = "{DEV}"
password_hash = "{hash}"
account = "acct"
"#,
        ca = ca_file.display(),
        hash = hash(),
    )
}

async fn connect_from(src: &str, to: SocketAddr) -> TcpStream {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(format!("{src}:0").parse().unwrap()).unwrap();
    sock.connect(to).await.unwrap()
}

/// A minimal IMAP line client.
struct Imap(BufReader<TcpStream>);

impl Imap {
    async fn new(s: TcpStream) -> (Imap, String) {
        let mut c = Imap(BufReader::new(s));
        let g = c.line().await;
        (c, g)
    }
    async fn line(&mut self) -> String {
        let mut l = String::new();
        tokio::time::timeout(Duration::from_secs(20), self.0.read_line(&mut l))
            .await
            .expect("IMAP read timed out")
            .unwrap();
        l.trim_end().to_string()
    }
    async fn send(&mut self, b: &[u8]) {
        self.0.get_mut().write_all(b).await.unwrap();
    }
    /// Lines up to the one tagged `tag`; returns that last one.
    async fn tagged(&mut self, tag: &str) -> String {
        loop {
            let l = self.line().await;
            assert!(!l.is_empty(), "EOF before {tag}");
            if l.starts_with(&format!("{tag} ")) {
                return l;
            }
        }
    }
}

fn b64(s: &str) -> String {
    STANDARD.encode(s)
}

#[test]
fn non_loopback_bind_open_to_all_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    for (listen, allowed) in [("0.0.0.0:0", "0.0.0.0/0"), ("[::]:0", "::/0")] {
        let extra = format!("listen = [\"{listen}\"]\nallowed_networks = [\"{allowed}\"]");
        let text = toml(1, 1, Path::new("/nonexistent"), &extra).replacen(
            "[smtp]\nlisten = [\"127.0.0.1:0\"]\n",
            "[smtp]\n",
            1,
        );
        let cfg = write_config(dir.path(), &text);
        let mut p = Proc::spawn(command(&cfg, &["run"]));
        let status = p.wait_exit(Duration::from_secs(20));
        assert_eq!(status.code(), Some(2), "{}", p.text());
        assert!(p.smtp.is_none(), "it listened: {}", p.text());
        let out = p.text();
        assert!(
            out.contains("configuration error") && out.contains("open relay"),
            "{out}"
        );
    }
    // Narrowing the allowlist (or requiring auth) makes the same bind legal.
    let text = toml(1, 1, Path::new("/nonexistent"), "")
        .replacen(
            "[smtp]\nlisten = [\"127.0.0.1:0\"]\n",
            "[smtp]\nlisten = [\"0.0.0.0:0\"]\nallowed_networks = [\"127.0.0.1/32\"]\n",
            1,
        )
        .replace("ca_file = \"/nonexistent\"\n", "");
    let cfg = write_config(dir.path(), &text);
    let p = Proc::spawn(command(&cfg, &["run"]));
    assert!(p.smtp.is_some(), "{}", p.text());
}

/// No prefix of 0 but the whole IPv4 space all the same: the guard judges
/// what the networks cover. The same goes for IMAP with `passthrough`.
#[test]
fn allowlist_covering_public_space_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let base =
        toml(1, 1, Path::new("/nonexistent"), "").replace("ca_file = \"/nonexistent\"\n", "");
    let pair = "allowed_networks = [\"0.0.0.0/1\", \"128.0.0.0/1\"]\n";
    let smtp = base.replacen(
        "[smtp]\nlisten = [\"127.0.0.1:0\"]\n",
        &format!("[smtp]\nlisten = [\"0.0.0.0:0\"]\n{pair}"),
        1,
    );
    let imap = base.replacen(
        "[imap]\nlisten = [\"127.0.0.1:0\"]\n",
        &format!("[imap]\nlisten = [\"0.0.0.0:0\"]\npassthrough = true\n{pair}"),
        1,
    );
    for (text, key, risk) in [
        (&smtp, "smtp.allowed_networks", "open relay"),
        (&imap, "imap.allowed_networks", "open login proxy"),
    ] {
        let cfg = write_config(dir.path(), text);
        let mut p = Proc::spawn(command(&cfg, &["run"]));
        let status = p.wait_exit(Duration::from_secs(20));
        assert_eq!(status.code(), Some(2), "{}", p.text());
        assert!(
            p.smtp.is_none() && p.imap.is_none(),
            "it listened: {}",
            p.text()
        );
        let out = p.text();
        assert!(
            out.contains("configuration error") && out.contains(key) && out.contains(risk),
            "{out}"
        );
    }
    // With a local login required, the same allowlist starts.
    let text = smtp.replacen(pair, &format!("{pair}require_auth = true\n"), 1);
    let cfg = write_config(dir.path(), &text);
    let p = Proc::spawn(command(&cfg, &["run"]));
    assert!(p.smtp.is_some(), "{}", p.text());
}

#[tokio::test]
async fn client_outside_allowed_networks_is_refused_by_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let text = toml(
        1,
        1,
        Path::new("/nonexistent"),
        "allowed_networks = [\"127.0.0.1/32\"]",
    )
    .replace("ca_file = \"/nonexistent\"\n", "")
    .replace(
        "[imap]\nlisten = [\"127.0.0.1:0\"]\n",
        "[imap]\nlisten = [\"127.0.0.1:0\"]\nallowed_networks = [\"127.0.0.1/32\"]\n",
    );
    let cfg = write_config(dir.path(), &text);
    let p = Proc::spawn(command(&cfg, &["run"]));
    let (smtp, imap) = (p.smtp.unwrap(), p.imap.unwrap());
    let mut r = BufReader::new(connect_from("127.0.0.2", smtp).await);
    let mut l = String::new();
    r.read_line(&mut l).await.unwrap();
    assert_eq!(l, "554 5.7.1 Access denied\r\n");
    let (_, g) = Imap::new(connect_from("127.0.0.2", imap).await).await;
    assert_eq!(g, "* BYE Your address is not allowed to use this server");
    // The allowed address is served.
    let (mut c, g) = Smtp::connect(smtp).await.unwrap();
    assert!(g.starts_with("220 "), "{g}");
    assert!(c.cmd("NOOP").await.unwrap().starts_with("250"));
}

/// 12 parallel failed logins from one address: the first 9 are answered
/// after a growing delay, the rest refused; then even the right password is
/// refused from that address while another address still logs in. Both
/// protocols share the record; the block is logged once per address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brute_force_is_slowed_then_refused_and_logged_once() {
    let dir = tempfile::tempdir().unwrap();
    let text =
        toml(1, 1, Path::new("/nonexistent"), "").replace("ca_file = \"/nonexistent\"\n", "");
    let cfg = write_config(dir.path(), &text);
    let p = Proc::spawn(command(&cfg, &["run"]));
    let (smtp, imap) = (p.smtp.unwrap(), p.imap.unwrap());
    let wrong_plain = b64(&format!("\0{DEV}\0{WRONG_PW}"));

    let smtp_try = |src: &'static str, blob: String| async move {
        let t = Instant::now();
        let (mut c, _) = Smtp::from_stream(connect_from(src, smtp).await).await;
        c.cmd("EHLO brute").await.unwrap();
        let r = c
            .cmd(&format!("AUTH PLAIN {blob}"))
            .await
            .unwrap_or_default();
        (r, t.elapsed())
    };
    let imap_try = |src: &'static str, pw: &'static str| async move {
        let t = Instant::now();
        let (mut c, _) = Imap::new(connect_from(src, imap).await).await;
        c.send(format!("a LOGIN {DEV} \"{pw}\"\r\n").as_bytes())
            .await;
        (c.tagged("a").await, t.elapsed())
    };

    let started = Instant::now();
    let smtp_runs: Vec<_> = (0..12)
        .map(|_| tokio::spawn(smtp_try("127.0.0.3", wrong_plain.clone())))
        .collect();
    let imap_runs: Vec<_> = (0..12)
        .map(|_| tokio::spawn(imap_try("127.0.0.4", WRONG_PW)))
        .collect();
    let mut smtp_replies = Vec::new();
    for r in smtp_runs {
        smtp_replies.push(r.await.unwrap());
    }
    let mut imap_replies = Vec::new();
    for r in imap_runs {
        imap_replies.push(r.await.unwrap());
    }
    let count = |v: &[(String, Duration)], prefix: &str| {
        v.iter().filter(|(r, _)| r.starts_with(prefix)).count()
    };
    let slowest = |v: &[(String, Duration)], prefix: &str| {
        v.iter()
            .filter(|(r, _)| r.starts_with(prefix))
            .map(|(_, d)| *d)
            .max()
            .unwrap_or_default()
    };
    let failed = "535 5.7.8 Authentication credentials invalid";
    let blocked = "421 4.7.0";
    assert_eq!(count(&smtp_replies, failed), 9, "{smtp_replies:?}");
    assert_eq!(count(&smtp_replies, blocked), 3, "{smtp_replies:?}");
    assert!(
        slowest(&smtp_replies, failed) >= Duration::from_secs(4),
        "no growing delay: {smtp_replies:?}"
    );
    let imap_failed = "a NO [AUTHENTICATIONFAILED] Invalid credentials";
    let imap_blocked = "a NO [AUTHENTICATIONFAILED] Too many failed logins";
    assert_eq!(count(&imap_replies, imap_failed), 9, "{imap_replies:?}");
    assert_eq!(count(&imap_replies, imap_blocked), 3, "{imap_replies:?}");
    assert!(slowest(&imap_replies, imap_failed) >= Duration::from_secs(4));

    // Blocked addresses are refused even with the right password...
    let right = b64(&format!("\0{DEV}\0{DEV_PW}"));
    let (r, _) = smtp_try("127.0.0.3", right.clone()).await;
    assert!(r.starts_with(blocked), "{r}");
    let (r, _) = imap_try("127.0.0.4", DEV_PW).await;
    assert!(r.starts_with(imap_blocked), "{r}");
    // ...and refused at once, without a delay.
    let (r, d) = imap_try("127.0.0.3", WRONG_PW).await;
    assert!(r.starts_with(imap_blocked), "{r}");
    assert!(d < Duration::from_secs(2), "{d:?}");
    // Another address is not affected.
    let (r, _) = smtp_try("127.0.0.5", right).await;
    assert!(r.starts_with("235 "), "{r}");
    println!("brute force: 2 x 12 attempts in {:.1?}", started.elapsed());

    let out = p.text();
    let blocks: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("too many failed logins"))
        .collect();
    assert_eq!(blocks.len(), 2, "one line per burst: {blocks:#?}");
    assert!(blocks.iter().any(|l| l.contains("127.0.0.3")), "{blocks:?}");
    assert!(blocks.iter().any(|l| l.contains("127.0.0.4")), "{blocks:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_any_output_at_trace_level() {
    let ca = TestCa::new();
    let smtp_up =
        SmtpUpstream::start(&ca.server_cert(), Mode::Implicit, REAL_USER, APP_PASSWORD).await;
    let imap_up = ImapUpstream::start(&ca.server_cert(), REAL_USER, APP_PASSWORD).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &toml(smtp_up.port(), imap_up.port(), &ca.ca_file, ""),
    );
    let mut cmd = command(&cfg, &["run"]);
    cmd.env("RUST_LOG", "trace");
    let mut p = Proc::spawn(cmd);
    let (smtp, imap) = (p.smtp.unwrap(), p.imap.unwrap());

    // SMTP: wrong PLAIN, wrong LOGIN, right PLAIN, one message delivered upstream with AUTH.
    let wrong_plain = b64(&format!("\0{DEV}\0{WRONG_PW}"));
    let right_plain = b64(&format!("\0{DEV}\0{DEV_PW}"));
    let (mut c, _) = Smtp::connect(smtp).await.unwrap();
    c.cmd("EHLO secrets").await.unwrap();
    let r = c.cmd(&format!("AUTH PLAIN {wrong_plain}")).await.unwrap();
    assert!(r.starts_with("535"), "{r}");
    assert!(c.cmd("AUTH LOGIN").await.unwrap().starts_with("334"));
    c.cmd(&b64(DEV)).await.unwrap();
    assert!(c.cmd(&b64(WRONG_PW)).await.unwrap().starts_with("535"));
    let r = c.cmd(&format!("AUTH PLAIN {right_plain}")).await.unwrap();
    assert!(r.starts_with("235"), "{r}");
    let r = c
        .mail("to@example.org", b"Subject: secrets\r\n\r\nhello\r\n")
        .await
        .unwrap();
    assert!(r.starts_with("250"), "{r}");
    c.cmd("QUIT").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while smtp_up.received().is_empty() {
        assert!(
            Instant::now() < deadline,
            "not delivered: {:?}\n{}",
            smtp_up.auths(),
            p.text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(smtp_up
        .auths()
        .iter()
        .any(|a| a.ok && a.password == APP_PASSWORD));

    // IMAP: wrong LOGIN, right LOGIN (upstream login), AUTHENTICATE PLAIN both forms.
    let (mut i, _) = Imap::new(TcpStream::connect(imap).await.unwrap()).await;
    i.send(format!("a LOGIN {DEV} \"{WRONG_PW}\"\r\n").as_bytes())
        .await;
    assert!(i.tagged("a").await.starts_with("a NO"));
    i.send(format!("b LOGIN {DEV} {{{}}}\r\n", DEV_PW.len()).as_bytes())
        .await;
    assert!(i.line().await.starts_with("+ "));
    i.send(format!("{DEV_PW}\r\n").as_bytes()).await;
    let l = i.tagged("b").await;
    assert!(l.starts_with("b OK"), "{l}");
    i.send(b"c LOGOUT\r\n").await;
    i.tagged("c").await;
    let (mut i, _) = Imap::new(TcpStream::connect(imap).await.unwrap()).await;
    i.send(format!("a AUTHENTICATE PLAIN {right_plain}\r\n").as_bytes())
        .await;
    let l = i.tagged("a").await;
    assert!(l.starts_with("a OK"), "{l}");
    let (mut i, _) = Imap::new(TcpStream::connect(imap).await.unwrap()).await;
    i.send(b"a AUTHENTICATE PLAIN\r\n").await;
    assert!(i.line().await.starts_with("+"));
    i.send(format!("{right_plain}\r\n").as_bytes()).await;
    let l = i.tagged("a").await;
    assert!(l.starts_with("a OK"), "{l}");
    assert!(imap_up.logins().len() >= 3);
    drop(i);

    p.terminate();
    let out = p.text();
    assert!(out.contains("TRACE"), "trace logging is not on: {out}");
    let upstream_plain = b64(&format!("\0{REAL_USER}\0{APP_PASSWORD}"));
    let secrets = [
        DEV_PW,
        WRONG_PW,
        APP_PASSWORD,
        APP_PASSWORD_SPACED,
        "qwer tyui",
        &wrong_plain,
        &right_plain,
        &b64(WRONG_PW),
        &b64(DEV_PW),
        &b64(APP_PASSWORD),
        &upstream_plain,
    ];
    for s in secrets {
        assert!(!out.contains(s), "{s:?} appears in the output");
    }
    // Guard against a vacuous pass: the logs saw these sessions.
    assert!(out.contains("client authenticated"), "{out}");
}

#[test]
fn config_readable_by_others_warns_at_start_and_in_check() {
    let dir = tempfile::tempdir().unwrap();
    let text =
        toml(1, 1, Path::new("/nonexistent"), "").replace("ca_file = \"/nonexistent\"\n", "");
    let cfg = write_config(dir.path(), &text);
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).unwrap();
    let p = Proc::spawn(command(&cfg, &["run"]));
    assert!(p.smtp.is_some(), "{}", p.text());
    let want = format!("chmod 600 {}", cfg.display());
    hardening_support::wait_output(&p, &want, Duration::from_secs(10));
    drop(p);
    let mut p = Proc::spawn(command(&cfg, &["check"]));
    p.wait_exit(Duration::from_secs(60));
    assert!(p.text().contains(&want), "{}", p.text());
    assert!(p.text().contains("can be read by other users"));
    // Mode 600: no warning.
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut p = Proc::spawn(command(&cfg, &["check"]));
    p.wait_exit(Duration::from_secs(60));
    assert!(
        !p.text().contains("can be read by other users"),
        "{}",
        p.text()
    );
}
