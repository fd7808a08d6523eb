//! `mailbridge queue hold` / `release` with the real binary: a held message is
//! not delivered while the daemon delivers others, and goes out once released;
//! list/show report it for people and in JSON.

use std::time::Duration;

use crate::support::ca::TestCa;
use crate::support::daemon::start_in;
use crate::support::delivery::{config, envelope, eventually, feed, Opts, PASSWORD, USER};
use crate::support::process::{queue, stdout};
use crate::support::smtp_upstream::{Mode, SmtpUpstream};
use mailbridge::spool::{EntryState, Spool};

/// Release is picked up by the worker's periodic rescan (every 5 s).
const WAIT: Duration = Duration::from_secs(15);

#[tokio::test]
async fn held_message_waits_until_released() {
    let ca = TestCa::new();
    let up = SmtpUpstream::start(&ca.server_cert(), Mode::Implicit, USER, PASSWORD).await;
    let toml = config(&Opts::new(up.port(), "implicit", &ca.ca_file));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("relay.toml"), &toml).unwrap();

    // Held before the daemon starts, so the worker never sees it due.
    let spool = Spool::open(&dir.path().join("spool")).unwrap();
    let held = spool
        .enqueue(
            &envelope(&["held@example.org"]),
            b"Subject: held\r\n\r\nwait\r\n",
        )
        .await
        .unwrap();
    let o = queue(dir.path(), &["hold", &held.0]);
    assert!(o.status.success(), "{o:?}");
    assert!(stdout(&o).contains("on hold"), "{}", stdout(&o));

    let o = queue(dir.path(), &["list"]);
    let out = stdout(&o);
    assert!(
        out.contains("on-hold") && out.contains("1 queued (1 on hold), 0 failed"),
        "{out}"
    );
    let o = queue(dir.path(), &["show", &held.0, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["state"], "on-hold");
    assert_eq!(v["hold"]["kind"], "admin", "the typed hold is shown");

    let d = start_in(&toml, dir).await;
    // Another message goes through: the worker runs, and skips the held one.
    feed(&d, &["other@example.org"], b"Subject: other\r\n\r\ngo\r\n").await;
    let got = up.wait_for(1, WAIT).await;
    assert_eq!(got[0].rcpts, vec!["other@example.org"]);
    let spool = &d.daemon.context.spool;
    assert_eq!(spool.entry(&held).unwrap().state, EntryState::OnHold);

    // While the daemon runs: a retry does not send it; release does.
    let o = queue(d.dir.path(), &["retry", &held.0]);
    assert!(stdout(&o).contains("on hold"), "{}", stdout(&o));
    let o = queue(d.dir.path(), &["release", &held.0]);
    assert!(o.status.success(), "{o:?}");
    let got = up.wait_for(2, WAIT).await;
    assert_eq!(got[1].rcpts, vec!["held@example.org"]);
    eventually("queue empty", WAIT, || async {
        spool.list_queued().unwrap().is_empty().then_some(())
    })
    .await;
    d.stop().await;
}

#[tokio::test]
async fn hold_refuses_failed_and_unknown_messages() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("relay.toml"),
        config(&Opts::new(1, "implicit", &ca.ca_file)),
    )
    .unwrap();
    let spool = Spool::open(&dir.path().join("spool")).unwrap();
    let id = spool
        .enqueue(&envelope(&["a@example.org"]), b"x\r\n")
        .await
        .unwrap();
    spool.fail(&id, 1, "550 no", None).unwrap();
    let o = queue(dir.path(), &["hold", &id.0]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("failed area"));
    let o = queue(dir.path(), &["release", "ffff"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no message with id ffff"));
}
