//! `mailbridge queue ...` run as the real binary against a spool directory,
//! alone and while the daemon is delivering from it.

use std::time::Duration;

use crate::support::ca::TestCa;
use crate::support::daemon::start_in;
use crate::support::delivery::{
    config, envelope, eventually, feed, wait_failed, Opts, PASSWORD, USER,
};
use crate::support::process::{queue, stdout};
use crate::support::smtp_upstream::{Mode, SmtpUpstream};
use mailbridge::spool::{EntryState, QueueId, Spool};

/// A spool with one queued and one failed message, and a relay.toml pointing at it.
async fn prepared() -> (tempfile::TempDir, QueueId, QueueId) {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("relay.toml"),
        config(&Opts::new(1, "implicit", &ca.ca_file)),
    )
    .unwrap();
    let spool = Spool::open(&dir.path().join("spool")).unwrap();
    let queued = spool
        .enqueue(
            &envelope(&["a@example.org"]),
            b"Subject: first\r\n\r\nbody\r\n",
        )
        .await
        .unwrap();
    let failed = spool
        .enqueue(
            &envelope(&["b@example.org"]),
            b"Subject: second\r\n\r\nbody\r\n",
        )
        .await
        .unwrap();
    spool.fail(&failed, 1, "554 5.7.0 rejected", None).unwrap();
    (dir, queued, failed)
}

#[tokio::test]
async fn list_and_show() {
    let (dir, queued, failed) = prepared().await;
    let o = queue(dir.path(), &["list"]);
    assert!(o.status.success(), "{o:?}");
    let out = stdout(&o);
    assert!(out.contains(&queued.0) && out.contains(&failed.0), "{out}");
    assert!(out.contains("554 5.7.0 rejected"), "{out}");
    assert!(out.contains("1 queued, 1 failed"), "{out}");

    let o = queue(dir.path(), &["list", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let arr = v.as_array().unwrap();
    assert_eq!(arr.len(), 2);
    assert_eq!(arr[0]["id"], queued.0.as_str());
    assert_eq!(arr[0]["state"], "queued");
    assert_eq!(arr[1]["state"], "failed");
    assert_eq!(arr[1]["last_error"], "554 5.7.0 rejected");

    let o = queue(dir.path(), &["show", &failed.0]);
    let out = stdout(&o);
    assert!(out.contains("state:        failed"), "{out}");
    assert!(out.contains("Subject: second"), "{out}");
    let o = queue(dir.path(), &["show", &queued.0, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["recipients"][0], "a@example.org");

    let o = queue(dir.path(), &["show", "ffff"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no message with id ffff"));
}

#[tokio::test]
async fn retry_and_delete() {
    let (dir, queued, failed) = prepared().await;
    let spool = Spool::open(&dir.path().join("spool")).unwrap();
    assert!(queue(dir.path(), &["retry", &failed.0]).status.success());
    assert_eq!(spool.entry(&failed).unwrap().state, EntryState::Queued);
    assert!(queue(dir.path(), &["retry"]).status.success());
    assert!(queue(dir.path(), &["delete", &queued.0]).status.success());
    assert!(spool.entry(&queued).is_err());
    let o = queue(dir.path(), &["delete", &queued.0]);
    assert_eq!(o.status.code(), Some(1));
    let o = queue(dir.path(), &["delete", "../../relay"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(dir.path().join("relay.toml").exists());
}

#[tokio::test]
async fn delete_while_the_worker_delivers_it() {
    let ca = TestCa::new();
    let up = SmtpUpstream::start(&ca.server_cert(), Mode::Implicit, USER, PASSWORD).await;
    up.script().hang_data = 1;
    let mut o = Opts::new(up.port(), "implicit", &ca.ca_file);
    o.delivery_extra = "concurrency = 1";
    let toml = config(&o).replace("timeout = \"5s\"", "timeout = \"1s\"");
    let d = start_in(&toml, tempfile::tempdir().unwrap()).await;
    let id = feed(&d, &["a@example.org"], b"doomed\r\n").await;
    let attempts = &up.shared.data_attempts;
    eventually("upstream hangs on it", Duration::from_secs(10), || async {
        (attempts.load(std::sync::atomic::Ordering::SeqCst) >= 1).then_some(())
    })
    .await;
    let out = queue(d.dir.path(), &["delete", &id.0]);
    assert!(out.status.success(), "{out:?}");
    // The worker survives: the next message goes through, the deleted one never reappears.
    feed(&d, &["b@example.org"], b"next\r\n").await;
    let got = up.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got[0].data, b"next\r\n");
    let spool = &d.daemon.context.spool;
    eventually("queue empty", Duration::from_secs(10), || async {
        spool.list().unwrap().is_empty().then_some(())
    })
    .await;
    d.stop().await;
}

#[tokio::test]
async fn show_warns_when_the_provider_will_rewrite_from() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let mut o = Opts::new(1, "implicit", &ca.ca_file);
    o.password_line = "password = \"app pass word\"\nsend_as = [\"Alias@Example.org\"]";
    std::fs::write(dir.path().join("relay.toml"), config(&o)).unwrap();
    let spool = Spool::open(&dir.path().join("spool")).unwrap();
    let mut ids = Vec::new();
    for from in [
        "\"Office, Scanner\" <scanner@office.example>",
        "=?UTF-8?Q?B=C3=BCro?= <alias@EXAMPLE.org>",
        &format!("Relay (account) <{USER}>"),
    ] {
        let msg = format!("From: {from}\r\nSubject: s\r\n\r\nbody\r\n");
        let id = spool
            .enqueue(&envelope(&["a@example.org"]), msg.as_bytes())
            .await
            .unwrap();
        ids.push(id);
    }
    let out = stdout(&queue(dir.path(), &["show", &ids[0].0]));
    assert!(
        out.contains("warning:      From: <scanner@office.example> is neither"),
        "{out}"
    );
    let o = queue(dir.path(), &["show", &ids[0].0, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["warning"].as_str().unwrap().contains("send_as"), "{v}");
    for id in &ids[1..] {
        let out = stdout(&queue(dir.path(), &["show", &id.0]));
        assert!(!out.contains("warning:"), "{out}");
        let o = queue(dir.path(), &["show", &id.0, "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert!(v.get("warning").is_none(), "{v}");
    }
}

/// Would a terminal act on this character (a control other than the line
/// ends and TAB, or a bidi override)?
fn drives_a_terminal(c: char) -> bool {
    (c.is_control() && !matches!(c, '\n' | '\t'))
        || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

fn assert_printable(what: &str, out: &str) {
    let bad: Vec<char> = out.chars().filter(|c| drives_a_terminal(*c)).collect();
    assert!(bad.is_empty(), "{what}: raw {bad:?} in {out:?}");
}

/// Escape sequences in a message's headers (sent by the client) and in the
/// upstream's reply are shown escaped by `queue list` and `queue show`, text
/// and JSON, so the terminal running them cannot be driven; JSON values
/// stay exact. An entry spooled before HELO names and addresses were checked
/// is shown escaped too.
#[tokio::test]
async fn client_and_provider_text_is_shown_escaped() {
    let ca = TestCa::new();
    let up = SmtpUpstream::start(&ca.server_cert(), Mode::Implicit, USER, PASSWORD).await;
    let reply = "554 5.7.1 \x1b[2J\x1b]0;pwned\x07rejected\u{9b}31m \u{202e}txt.exe";
    up.script().data_reply = Some(reply.into());
    let toml = config(&Opts::new(up.port(), "implicit", &ca.ca_file));
    let d = start_in(&toml, tempfile::tempdir().unwrap()).await;
    let (mut c, _) = crate::support::smtp::Client::connect(d.smtp_addr()).await;
    crate::support::smtp::assert_ok(&c.cmd("EHLO device").await, "250");
    let message = "From: \x1b[1mboss\x1b[0m <b@example.org>\r\n\
                   Subject: \x1b]8;;http://evil/\x07click\x1b]8;;\x07 a\x08b \u{85}\u{2066}\r\n\r\nbody";
    let r = c
        .send_mail("s@example.org", &["a@example.org"], message.as_bytes())
        .await;
    let id = crate::support::smtp::queue_id(&r);
    let spool = &d.daemon.context.spool;
    wait_failed(spool, &id).await;
    // As an older version spooled it: control characters in the envelope.
    let mut old = envelope(&["r\x1b[8m@example.org"]);
    old.mail_from = "\"s\x1b[5m\"@example.org".into();
    old.helo = "h\x1b[31mx\u{202d}".into();
    let old_id = spool
        .enqueue(&old, b"Subject: old\rfake\r\n\r\nx\r\n")
        .await
        .unwrap();
    let dir = d.stop().await;

    let list = stdout(&queue(dir.path(), &["list"]));
    assert_printable("queue list", &list);
    assert!(
        list.contains("554 5.7.1 \\x1b[2J\\x1b]0;pwned\\x07rejected\\u{9b}31m \\u{202e}txt.exe"),
        "{list}"
    );
    assert!(list.contains("r\\x1b[8m@example.org"), "{list}");

    let show = stdout(&queue(dir.path(), &["show", &id.0]));
    assert_printable("queue show", &show);
    assert!(
        show.contains("From: \\x1b[1mboss\\x1b[0m <b@example.org>"),
        "{show}"
    );
    assert!(
        show.contains(
            "Subject: \\x1b]8;;http://evil/\\x07click\\x1b]8;;\\x07 a\\x08b \\u{85}\\u{2066}"
        ),
        "{show}"
    );
    assert!(show.contains("\\x1b]0;pwned"), "{show}");

    let show_old = stdout(&queue(dir.path(), &["show", &old_id.0]));
    assert_printable("queue show (old entry)", &show_old);
    assert!(
        show_old.contains("from:         <\"s\\x1b[5m\"@example.org>"),
        "{show_old}"
    );
    assert!(
        show_old.contains("(HELO h\\x1b[31mx\\u{202d})"),
        "{show_old}"
    );
    assert!(
        show_old.contains("recipients:   r\\x1b[8m@example.org"),
        "{show_old}"
    );
    assert!(show_old.contains("Subject: old\\x0dfake"), "{show_old}");

    for args in [&["list", "--json"][..], &["show", &id.0, "--json"]] {
        let o = queue(dir.path(), args);
        let json = stdout(&o);
        assert_printable("--json", &json);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        let entry = if v.is_array() { v[0].clone() } else { v };
        let last_error = entry["last_error"].as_str().unwrap();
        assert!(last_error.ends_with(reply), "{last_error:?}");
    }
}
