//! Security properties through the real binary: no open relay at start,
//! clients outside `allowed_networks` refused, brute force slowed then
//! refused (logged once per burst), no secret in any output at trace level,
//! and a warning for a config file others can read.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::ca::TestCa;
use crate::support::config::{user, Account};
use crate::support::imap::Client as Imap;
use crate::support::imap_upstream::ImapUpstream;
use crate::support::process::{command, write_config, Proc};
use crate::support::smtp::Smtp;
use crate::support::smtp_upstream::{Mode, SmtpUpstream};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use mailbridge::auth::FAILURES_BEFORE_BLOCK;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;

const REAL_USER: &str = "relay@example.com";
/// The account password as written in relay.toml (a Gmail app password with spaces)...
const APP_PASSWORD_SPACED: &str = "qwer tyui opas dfgh";
/// ...and as sent upstream.
const APP_PASSWORD: &str = "qwertyuiopasdfgh";
const DEV: &str = "dev";
const DEV_PW: &str = "Dev-Secret-pw-4711";
const WRONG_PW: &str = "Wrong-guess-pw-0815";

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

{account}
{dev}"#,
        account = Account::new(REAL_USER, APP_PASSWORD_SPACED)
            .ca_file(ca_file.display())
            .smtp(smtp_port, "implicit")
            .imap(imap_port, "implicit"),
        dev = user(DEV, DEV_PW, "acct"),
    )
}

async fn connect_from(src: &str, to: SocketAddr) -> TcpStream {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(format!("{src}:0").parse().unwrap()).unwrap();
    sock.connect(to).await.unwrap()
}

/// Deadline for each IMAP read: a throttled login answers late.
const IMAP_WAIT: Duration = Duration::from_secs(60);

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
    let (_, g) = Imap::from_stream(connect_from("127.0.0.2", imap).await, IMAP_WAIT).await;
    assert_eq!(g, "* BYE Your address is not allowed to use this server");
    // The allowed address is served.
    let (mut c, g) = Smtp::connect(smtp).await.unwrap();
    assert!(g.starts_with("220 "), "{g}");
    assert!(c.cmd("NOOP").await.unwrap().starts_with("250"));
}

/// 12 parallel failed logins for one user from one address: they are
/// verified in turn, each after a growing delay; the first 9 fail, the 10th
/// starts the block and the rest are refused unverified; then even the right
/// password is refused for that user from that address while another
/// address still logs in. Both protocols share the record; the block is
/// logged once per burst.
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
            .cmd_within(&format!("AUTH PLAIN {blob}"), Duration::from_secs(60))
            .await
            .unwrap_or_default();
        (r, t.elapsed())
    };
    let imap_try = |src: &'static str, pw: &'static str| async move {
        let t = Instant::now();
        let (mut c, _) = Imap::from_stream(connect_from(src, imap).await, IMAP_WAIT).await;
        c.send(format!("a LOGIN {DEV} \"{pw}\"\r\n").as_bytes())
            .await;
        (c.tagged_line("a").await, t.elapsed())
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

/// Logins in the parallel flood, and the position of the one among them
/// with the right password.
const FLOOD: usize = 200;
const RIGHT_AT: usize = 100;

/// Lets a flood attempt send its credentials only after `need` others have
/// sent theirs, and counts the ones sent.
#[derive(Clone)]
struct Gate {
    sent: Arc<watch::Sender<usize>>,
    need: usize,
}

impl Gate {
    async fn open(&self) {
        let _ = self.sent.subscribe().wait_for(|n| *n >= self.need).await;
    }
    fn sent(&self) {
        self.sent.send_modify(|n| *n += 1);
    }
}

/// What a flood saw.
struct Flood {
    /// Each flood attempt's reply, by position.
    replies: Vec<String>,
    /// How many flood replies had come back when the other address's login completed.
    done_when_other_finished: usize,
    other: String,
}

/// [`FLOOD`] logins as `dev` from 127.0.0.1 at once (`login(source, password,
/// gate)` returns the reply), the one at [`RIGHT_AT`] with the right password,
/// sent only after all before it have sent theirs; once every flood attempt
/// has sent its credentials, `dev` logs in from 127.0.0.2.
async fn flood<L, LF>(login: L) -> Flood
where
    L: Fn(&'static str, &'static str, Option<Gate>) -> LF,
    LF: std::future::Future<Output = String> + Send + 'static,
{
    let sent = Arc::new(watch::channel(0usize).0);
    let done = Arc::new(watch::channel(0usize).0);
    let runs: Vec<_> = (0..FLOOD)
        .map(|i| {
            let gate = Gate {
                sent: sent.clone(),
                need: if i == RIGHT_AT { RIGHT_AT } else { 0 },
            };
            let pw = if i == RIGHT_AT { DEV_PW } else { WRONG_PW };
            let run = login("127.0.0.1", pw, Some(gate));
            let done = done.clone();
            tokio::spawn(async move {
                let r = run.await;
                done.send_modify(|n| *n += 1);
                r
            })
        })
        .collect();
    // A guard against a hang, not a timing assertion.
    tokio::time::timeout(
        Duration::from_secs(60),
        sent.subscribe().wait_for(|n| *n >= FLOOD),
    )
    .await
    .expect("the flood did not get its credentials out")
    .unwrap();
    let t = Instant::now();
    let other = login("127.0.0.2", DEV_PW, None).await;
    let done_when_other_finished = *done.borrow();
    println!(
        "login from another address during the flood: {:.0?} ({done_when_other_finished} of {FLOOD} flood replies back)",
        t.elapsed()
    );
    let t = Instant::now();
    let mut replies = Vec::new();
    for r in runs {
        replies.push(r.await.unwrap());
    }
    println!("rest of the flood: {:.1?}", t.elapsed());
    Flood {
        replies,
        done_when_other_finished,
        other,
    }
}

/// The flood was refused (the right password too, unverified), no more
/// guesses were verified than the limit allows, the other address logged in
/// before the flood was over, and the block was logged once.
fn assert_flood_refused(f: &Flood, ok: &str, failed: &str, refused: [&str; 2], p: &Proc) {
    assert!(f.other.starts_with(ok), "other address: {}", f.other);
    assert!(
        f.done_when_other_finished < FLOOD,
        "the other address finished only after the flood"
    );
    let right = &f.replies[RIGHT_AT];
    assert!(
        refused.iter().any(|r| right.starts_with(r)),
        "the right password inside the flood: {right}"
    );
    let counts = |prefix: &str| f.replies.iter().filter(|r| r.starts_with(prefix)).count();
    let unexpected: Vec<_> = f
        .replies
        .iter()
        .filter(|r| {
            ![failed, refused[0], refused[1]]
                .iter()
                .any(|p| r.starts_with(p))
        })
        .collect();
    assert!(unexpected.is_empty(), "{unexpected:?}");
    assert!(
        counts(failed) < FAILURES_BEFORE_BLOCK as usize,
        "{} guesses verified",
        counts(failed)
    );
    assert!(counts(refused[0]) >= 1, "never blocked");
    let out = p.text();
    let blocks: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("too many failed logins"))
        .collect();
    assert_eq!(blocks.len(), 1, "{blocks:#?}");
    assert!(blocks[0].contains("127.0.0.1"), "{blocks:?}");
}

/// 200 parallel SMTP AUTH from 127.0.0.1 with the right password at
/// position 100: refused; meanwhile 127.0.0.2 logs in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_auth_flood_is_refused_while_another_address_logs_in() {
    let dir = tempfile::tempdir().unwrap();
    let text =
        toml(1, 1, Path::new("/nonexistent"), "").replace("ca_file = \"/nonexistent\"\n", "");
    let cfg = write_config(dir.path(), &text);
    let p = Proc::spawn(command(&cfg, &["run"]));
    let smtp = p.smtp.unwrap();
    let login = move |src: &'static str, pw: &'static str, gate: Option<Gate>| async move {
        let (mut c, _) = Smtp::from_stream(connect_from(src, smtp).await).await;
        c.cmd("EHLO flood").await.unwrap();
        if let Some(g) = &gate {
            g.open().await;
        }
        let blob = b64(&format!("\0{DEV}\0{pw}"));
        c.send(format!("AUTH PLAIN {blob}\r\n").as_bytes())
            .await
            .unwrap();
        if let Some(g) = &gate {
            g.sent();
        }
        c.reply_within(Duration::from_secs(60))
            .await
            .unwrap_or_default()
    };
    let f = flood(login).await;
    assert_flood_refused(&f, "235 ", "535 5.7.8", ["421 4.7.0", "454 4.7.0"], &p);
}

/// The same through IMAP LOGIN, with a real upstream for the login that succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imap_login_flood_is_refused_while_another_address_logs_in() {
    let ca = TestCa::new();
    let imap_up = ImapUpstream::start(&ca.server_cert(), REAL_USER, APP_PASSWORD).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &toml(1, imap_up.port(), &ca.ca_file, ""));
    let p = Proc::spawn(command(&cfg, &["run"]));
    let imap = p.imap.unwrap();
    let login = move |src: &'static str, pw: &'static str, gate: Option<Gate>| async move {
        let (mut c, _) = Imap::from_stream(connect_from(src, imap).await, IMAP_WAIT).await;
        if let Some(g) = &gate {
            g.open().await;
        }
        c.send(format!("a LOGIN {DEV} \"{pw}\"\r\n").as_bytes())
            .await;
        if let Some(g) = &gate {
            g.sent();
        }
        c.tagged_line("a").await
    };
    let f = flood(login).await;
    assert_flood_refused(
        &f,
        "a OK",
        "a NO [AUTHENTICATIONFAILED] Invalid credentials",
        [
            "a NO [AUTHENTICATIONFAILED] Too many failed logins",
            "a NO [UNAVAILABLE] Too many logins in progress",
        ],
        &p,
    );
    assert_eq!(
        imap_up.logins().len(),
        1,
        "only the other address got upstream"
    );
}

/// A valid login of one user between guesses at another user's password
/// (from the same address) does not reset the guessed pair: it is blocked
/// on schedule, its right password then refused, while the valid user still
/// logs in from that address and the guessed user from another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_logins_between_guesses_do_not_save_the_guessed_user() {
    const VICTIM: &str = "victim";
    const VICTIM_PW: &str = "Victim-Secret-pw-1234";
    let dir = tempfile::tempdir().unwrap();
    let text = toml(1, 1, Path::new("/nonexistent"), "")
        .replace("ca_file = \"/nonexistent\"\n", "")
        + "\n"
        + &user(VICTIM, VICTIM_PW, "acct");
    let cfg = write_config(dir.path(), &text);
    let p = Proc::spawn(command(&cfg, &["run"]));
    let smtp = p.smtp.unwrap();
    let login = |src: &'static str, user: &'static str, pw: &'static str| async move {
        let (mut c, _) = Smtp::from_stream(connect_from(src, smtp).await).await;
        c.cmd("EHLO alternating").await.unwrap();
        let blob = b64(&format!("\0{user}\0{pw}"));
        c.cmd_within(&format!("AUTH PLAIN {blob}"), Duration::from_secs(60))
            .await
            .unwrap_or_default()
    };
    for i in 1..=FAILURES_BEFORE_BLOCK {
        let r = login("127.0.0.1", DEV, DEV_PW).await;
        assert!(r.starts_with("235 "), "valid login {i}: {r}");
        let r = login("127.0.0.1", VICTIM, WRONG_PW).await;
        let want = if i < FAILURES_BEFORE_BLOCK {
            "535 5.7.8"
        } else {
            "421 4.7.0"
        };
        assert!(r.starts_with(want), "guess {i}: {r}");
    }
    let r = login("127.0.0.1", VICTIM, VICTIM_PW).await;
    assert!(
        r.starts_with("421 4.7.0"),
        "blocked pair, right password: {r}"
    );
    let r = login("127.0.0.1", DEV, DEV_PW).await;
    assert!(
        r.starts_with("235 "),
        "the address is slowed, not refused: {r}"
    );
    let r = login("127.0.0.2", VICTIM, VICTIM_PW).await;
    assert!(r.starts_with("235 "), "another address: {r}");
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
    let (mut i, _) = Imap::from_stream(TcpStream::connect(imap).await.unwrap(), IMAP_WAIT).await;
    i.send(format!("a LOGIN {DEV} \"{WRONG_PW}\"\r\n").as_bytes())
        .await;
    assert!(i.tagged_line("a").await.starts_with("a NO"));
    i.send(format!("b LOGIN {DEV} {{{}}}\r\n", DEV_PW.len()).as_bytes())
        .await;
    assert!(i.line().await.starts_with("+ "));
    i.send(format!("{DEV_PW}\r\n").as_bytes()).await;
    let l = i.tagged_line("b").await;
    assert!(l.starts_with("b OK"), "{l}");
    i.send(b"c LOGOUT\r\n").await;
    i.tagged_line("c").await;
    let (mut i, _) = Imap::from_stream(TcpStream::connect(imap).await.unwrap(), IMAP_WAIT).await;
    i.send(format!("a AUTHENTICATE PLAIN {right_plain}\r\n").as_bytes())
        .await;
    let l = i.tagged_line("a").await;
    assert!(l.starts_with("a OK"), "{l}");
    let (mut i, _) = Imap::from_stream(TcpStream::connect(imap).await.unwrap(), IMAP_WAIT).await;
    i.send(b"a AUTHENTICATE PLAIN\r\n").await;
    assert!(i.line().await.starts_with("+"));
    i.send(format!("{right_plain}\r\n").as_bytes()).await;
    let l = i.tagged_line("a").await;
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
    crate::support::process::wait_output(&p, &want, Duration::from_secs(10));
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
