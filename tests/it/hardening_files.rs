//! Files on disk are private whatever the umask: the real binary, started
//! under `umask 022`, leaves every directory under the spool 0700 and every
//! file 0600 (queued message and its state, a failed entry, the failure
//! notice it caused, the daily-limit window).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::ca::TestCa;
use crate::support::config::{user, Account};
use crate::support::process::{write_config, Proc};
use crate::support::smtp::Smtp;
use crate::support::smtp_upstream::{Mode, SmtpUpstream};
use crate::support::wait::poll_until;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;

const USER: &str = "relay@example.com";
const APP_PASSWORD: &str = "qwertyuiopasdfgh";
const DEV: &str = "dev";
const DEV_PW: &str = "Dev-Secret-pw-4711";
const WAIT: Duration = Duration::from_secs(20);

fn config(live_port: u16, ca_file: &Path) -> String {
    let account = |name: &str, port: u16| {
        Account::new(USER, APP_PASSWORD)
            .name(name)
            .ca_file(ca_file.display())
            .smtp(port, "implicit")
    };
    format!(
        "default_account = \"live\"\n\
         [smtp]\nlisten = [\"127.0.0.1:0\"]\n\
         [imap]\nlisten = [\"127.0.0.1:0\"]\n\
         [delivery]\nretry_initial = \"100ms\"\nretry_max = \"400ms\"\n\
         {live}notify = \"admin@example.com\"\ndaily_limit = 100\n\
         {down}\
         {dev}",
        live = account("live", live_port),
        // Nothing listens on port 1: its mail stays queued.
        down = account("down", 1),
        dev = user(DEV, DEV_PW, "down"),
    )
}

/// The binary under `umask 022` (a typical login shell's).
fn under_umask_022(config: &Path) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg("umask 022; exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_mailbridge"))
        .arg("-c")
        .arg(config)
        .arg("run")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("NO_COLOR", "1");
    c
}

fn files_in(dir: &Path, ext: &str) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == ext))
                .collect()
        })
        .unwrap_or_default()
}

/// Every directory and file under `root` with its permission bits.
fn walk(root: &Path, out: &mut Vec<(PathBuf, bool, u32)>) {
    let meta = std::fs::symlink_metadata(root).unwrap();
    out.push((
        root.to_path_buf(),
        meta.is_dir(),
        meta.permissions().mode() & 0o7777,
    ));
    if meta.is_dir() {
        for e in std::fs::read_dir(root).unwrap() {
            walk(&e.unwrap().path(), out);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_is_private_under_umask_022() {
    let ca = TestCa::new();
    let up = SmtpUpstream::start(&ca.server_cert(), Mode::Implicit, USER, APP_PASSWORD).await;
    up.script().reject_rcpts.insert("bad@example.org".into());
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &config(up.port(), &ca.ca_file));
    let mut p = Proc::spawn(under_umask_022(&cfg));
    let smtp = p
        .smtp
        .unwrap_or_else(|| panic!("did not start: {}", p.text()));

    // Default account: one recipient delivered (the daily window is written),
    // one refused with 550 (a failed entry and a notice that is delivered).
    let (mut c, _) = Smtp::connect(smtp).await.unwrap();
    c.cmd("EHLO printer").await.unwrap();
    for (cmd, want) in [
        ("MAIL FROM:<dev@local>", "250"),
        ("RCPT TO:<good@example.org>", "250"),
        ("RCPT TO:<bad@example.org>", "250"),
        ("DATA", "354"),
    ] {
        let r = c.cmd(cmd).await.unwrap();
        assert!(r.starts_with(want), "{cmd}: {r}");
    }
    c.send(b"Subject: private\r\n\r\nbody\r\n.\r\n")
        .await
        .unwrap();
    assert!(c.reply().await.unwrap().starts_with("250"));
    // Logged in as `dev`: the "down" account, whose upstream refuses connections.
    let (mut c, _) = Smtp::connect(smtp).await.unwrap();
    c.cmd("EHLO printer").await.unwrap();
    let blob = STANDARD.encode(format!("\0{DEV}\0{DEV_PW}"));
    let r = c.cmd(&format!("AUTH PLAIN {blob}")).await.unwrap();
    assert!(r.starts_with("235"), "{r}");
    let r = c
        .mail("queued@example.org", b"Subject: stays\r\n\r\nx\r\n")
        .await;
    assert!(r.as_deref().is_some_and(|r| r.starts_with("250")), "{r:?}");

    let spool = dir.path().join("spool");
    let (queue, failed) = (spool.join("queue"), spool.join("failed"));
    poll_until(
        "delivery, failure, notice and deferral on disk",
        WAIT,
        || {
            up.received().len() == 2
                && files_in(&failed, "msg").len() == 1
                && files_in(&failed, "state").len() == 1
                && files_in(&queue, "msg").len() == 1
                && files_in(&queue, "state").len() == 1
                && spool.join("daily-limits.json").exists()
        },
    )
    .await;
    p.terminate();
    let notice = &up.received()[1];
    assert_eq!(
        notice.rcpts,
        vec!["admin@example.com"],
        "the notice went out"
    );

    let mut all = Vec::new();
    walk(&spool, &mut all);
    assert!(all.len() >= 10, "{all:?}");
    println!("{} paths under the spool checked", all.len());
    let wrong: Vec<_> = all
        .iter()
        .filter(|(_, is_dir, mode)| *mode != if *is_dir { 0o700 } else { 0o600 })
        .map(|(p, _, mode)| format!("{} {mode:o}", p.display()))
        .collect();
    assert!(wrong.is_empty(), "not private under umask 022: {wrong:#?}");
}
