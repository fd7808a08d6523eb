//! `sent_copy = "skip"` end to end: a client's APPEND to the Sent mailbox is
//! answered OK by mailbridge and never reaches the (in-process, TLS) IMAP
//! upstream; everything else passes through.

use crate::support::ca::TestCa;
use crate::support::config::{user, Account};
use crate::support::daemon::{self, TestDaemon};
use crate::support::imap::Client;
use crate::support::imap_upstream::ImapUpstream;

const REAL_USER: &str = "real@example.com";
const REAL_PW: &str = "upstreamsecret";
const MSG: &[u8] = b"From: me@example.com\r\nSubject: sent copy\r\n\r\nhello\r\n";

struct Env {
    _ca: TestCa,
    upstream: ImapUpstream,
    daemon: TestDaemon,
}

async fn setup(sent_copy: Option<&str>, sent_mailbox: Option<&str>) -> Env {
    let ca = TestCa::new();
    let upstream = ImapUpstream::start(&ca.server_cert(), REAL_USER, REAL_PW).await;
    *upstream.shared.sent_mailbox.lock().unwrap() = sent_mailbox.map(str::to_string);
    let toml = format!(
        r#"
[smtp]
listen = ["127.0.0.1:0"]

[imap]
listen = ["127.0.0.1:0"]

{account}
{dev}"#,
        account = Account::new(REAL_USER, REAL_PW)
            .ca_file(ca.ca_file.display())
            .imap(upstream.port(), "implicit")
            .line(
                &sent_copy
                    .map(|s| format!("sent_copy = \"{s}\""))
                    .unwrap_or_default()
            ),
        dev = user("dev", "devpw", "acct"),
    );
    let daemon = daemon::start(&toml).await;
    Env {
        _ca: ca,
        upstream,
        daemon,
    }
}

impl Env {
    async fn logged_in(&self) -> Client {
        let mut c = Client::connect(self.daemon.imap_addr()).await;
        c.send(b"a LOGIN dev devpw\r\n").await;
        let lines = c.tagged("a").await;
        assert!(lines.last().unwrap().starts_with("a OK"), "{lines:?}");
        c
    }

    /// Commands the upstream got after login, as text.
    fn commands(&self) -> Vec<String> {
        self.upstream
            .shared
            .commands
            .lock()
            .unwrap()
            .iter()
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect()
    }

    /// Waits until the upstream got a command starting with `prefix`.
    async fn upstream_got(&self, prefix: &str) {
        self.upstream
            .wait_for(prefix, |_| {
                self.commands().iter().any(|c| c.starts_with(prefix))
            })
            .await;
    }
}

fn append(tag: &str, mailbox: &str, sync: bool) -> Vec<u8> {
    format!(
        "{tag} APPEND {mailbox} (\\Seen) {{{}{}}}\r\n",
        MSG.len(),
        if sync { "" } else { "+" }
    )
    .into_bytes()
}

#[tokio::test]
async fn append_to_sent_is_answered_locally_and_others_pass() {
    let env = setup(Some("skip"), None).await;
    let mut c = env.logged_in().await;

    // Synchronising literal: our continuation, then our OK.
    c.send(&append("b", "\"[Gmail]/Sent Mail\"", true)).await;
    assert!(c.line().await.starts_with("+ "));
    c.send(MSG).await;
    c.send(b"\r\n").await;
    let r = c.tagged("b").await;
    assert!(r.last().unwrap().starts_with("b OK"), "{r:?}");
    assert!(r.last().unwrap().contains("not stored"), "{r:?}");

    // Non-synchronising literal, fallback name "Sent" as an atom.
    let mut cmd = append("c", "Sent", false);
    cmd.extend_from_slice(MSG);
    cmd.extend_from_slice(b"\r\n");
    c.send(&cmd).await;
    let r = c.tagged("c").await;
    assert!(r.last().unwrap().contains("not stored"), "{r:?}");

    // Another mailbox goes upstream (its continuation comes from there).
    c.send(&append("d", "INBOX", true)).await;
    assert_eq!(c.line().await, "+ go ahead");
    c.send(MSG).await;
    c.send(b"\r\n").await;
    let r = c.tagged("d").await;
    assert_eq!(r.last().unwrap(), "d OK APPEND completed", "{r:?}");

    // A literal of another command that looks like an APPEND to Sent.
    let lit = b"f APPEND \"[Gmail]/Sent Mail\" {5}\r\n";
    c.send(format!("e SEARCH TEXT {{{}}}\r\n", lit.len()).as_bytes())
        .await;
    assert_eq!(c.line().await, "+ go ahead");
    c.send(lit).await;
    c.send(b"\r\n").await;
    let r = c.tagged("e").await;
    assert_eq!(r.last().unwrap(), "e OK SEARCH completed", "{r:?}");

    c.send(b"g NOOP\r\n").await;
    c.tagged("g").await;
    env.upstream_got("g NOOP").await;
    let cmds = env.commands();
    assert!(
        !cmds
            .iter()
            .any(|c| c.starts_with("b ") || c.starts_with("c ")),
        "{cmds:?}"
    );
    let mut d = append("d", "INBOX", true);
    d.extend_from_slice(MSG);
    d.extend_from_slice(b"\r\n");
    assert!(cmds.contains(&String::from_utf8(d).unwrap()), "{cmds:?}");
    let mut e = format!("e SEARCH TEXT {{{}}}\r\n", lit.len()).into_bytes();
    e.extend_from_slice(lit);
    e.extend_from_slice(b"\r\n");
    assert!(cmds.contains(&String::from_utf8(e).unwrap()), "{cmds:?}");
}

#[tokio::test]
async fn the_sent_mailbox_is_learned_from_list() {
    let env = setup(Some("skip"), Some("[Gmail]/Gesendet")).await;
    let mut c = env.logged_in().await;
    c.send(b"l LIST \"\" \"*\"\r\n").await;
    let r = c.tagged("l").await;
    assert!(r.iter().any(|l| l.contains("\\Sent")), "{r:?}");

    let mut m = append("m", "\"[Gmail]/Gesendet\"", false);
    m.extend_from_slice(MSG);
    m.extend_from_slice(b"\r\n");
    c.send(&m).await;
    let r = c.tagged("m").await;
    assert!(r.last().unwrap().contains("not stored"), "{r:?}");

    // Once learned, the fallback name is an ordinary mailbox (a label).
    let mut n = append("n", "\"[Gmail]/Sent Mail\"", false);
    n.extend_from_slice(MSG);
    n.extend_from_slice(b"\r\n");
    c.send(&n).await;
    let r = c.tagged("n").await;
    assert_eq!(r.last().unwrap(), "n OK APPEND completed", "{r:?}");
    env.upstream_got("n APPEND").await;
    assert!(!env.commands().iter().any(|c| c.starts_with("m ")));
}

#[tokio::test]
async fn keep_forwards_append_to_sent() {
    let env = setup(None, None).await;
    let mut c = env.logged_in().await;
    let mut b = append("b", "\"[Gmail]/Sent Mail\"", false);
    b.extend_from_slice(MSG);
    b.extend_from_slice(b"\r\n");
    c.send(&b).await;
    let r = c.tagged("b").await;
    assert_eq!(r.last().unwrap(), "b OK APPEND completed", "{r:?}");
    env.upstream_got("b APPEND").await;
}

#[tokio::test]
async fn a_large_append_to_sent_is_discarded_as_it_streams() {
    let env = setup(Some("skip"), None).await;
    let mut c = env.logged_in().await;
    let big = vec![b'x'; 4 * 1024 * 1024];
    c.send(format!("big APPEND \"[Gmail]/Sent Mail\" {{{}}}\r\n", big.len()).as_bytes())
        .await;
    assert!(c.line().await.starts_with("+ "));
    for chunk in big.chunks(64 * 1024) {
        c.send(chunk).await;
    }
    c.send(b"\r\nz NOOP\r\n").await;
    let r = c.tagged("big").await;
    assert!(r.last().unwrap().contains("not stored"), "{r:?}");
    c.tagged("z").await;
    env.upstream_got("z NOOP").await;
    let cmds = env.commands();
    assert!(
        cmds.iter().all(|c| c.len() < 1024),
        "nothing of it upstream"
    );
}
