//! The per-account daily send cap end to end: the real daemon, a TLS test
//! upstream, a small `daily_limit` and a clock the test moves.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::support::ca::TestCa;
use crate::support::daemon::{start, start_in, TestDaemon};
use crate::support::delivery::{config, eventually, feed, Opts, PASSWORD, USER};
use crate::support::process::{queue, stdout};
use crate::support::smtp_upstream::{Mode, SmtpUpstream};
use mailbridge::delivery::limits::{ManualClock, FILE_NAME, WINDOW};
use mailbridge::spool::EntryState;

const WAIT: Duration = Duration::from_secs(10);

fn msg(n: usize) -> Vec<u8> {
    format!("From: scanner@local\r\nTo: a@example.org\r\nSubject: scan {n}\r\n\r\npage {n}\r\n")
        .into_bytes()
}

fn clock_for(d: &TestDaemon) -> Arc<ManualClock> {
    let clock = Arc::new(ManualClock::new(SystemTime::now()));
    d.daemon.context.upstream.limits().set_clock(clock.clone());
    clock
}

/// Waits until exactly `n` queued entries are held for the daily limit.
async fn held_for_limit(d: &TestDaemon, n: usize) {
    let spool = &d.daemon.context.spool;
    eventually("messages held for the daily limit", WAIT, || async {
        let q = spool.list_queued().unwrap();
        let held = q
            .iter()
            .filter(|e| {
                e.state == EntryState::Held
                    && e.last_error
                        .as_deref()
                        .is_some_and(|r| r.starts_with("daily limit (3 in 24h), next slot at "))
            })
            .count();
        (q.len() == n && held == n).then_some(())
    })
    .await;
}

fn queue_list(dir: &Path) -> String {
    stdout(&queue(dir, &["list"]))
}

#[tokio::test]
async fn cap_holds_past_the_limit_releases_after_24h_and_survives_restart() {
    let ca = TestCa::new();
    let up = SmtpUpstream::start(&ca.server_cert(), Mode::Implicit, USER, PASSWORD).await;
    // The account table is last in the config: these keys belong to it.
    let toml = format!(
        "{}daily_limit = 3\n",
        config(&Opts::new(up.port(), "implicit", &ca.ca_file))
    );
    let d = start(&toml).await;
    let _clock = clock_for(&d);
    for n in 1..=5 {
        feed(&d, &["a@example.org"], &msg(n)).await;
    }
    up.wait_for(3, WAIT).await;
    held_for_limit(&d, 2).await;
    assert_eq!(up.received().len(), 3, "never more than the cap");
    assert_eq!(d.daemon.context.upstream.limits().used("test"), 3);
    let listing = queue_list(d.dir.path());
    assert!(
        listing.contains("held") && listing.contains("daily limit (3 in 24h), next slot at "),
        "{listing}"
    );

    // Restart: the count comes back from the spool directory.
    let dir = d.stop().await;
    let file = std::fs::read_to_string(dir.path().join("spool").join(FILE_NAME)).unwrap();
    assert!(file.contains("\"test\""), "{file}");
    let d = start_in(&toml, dir).await;
    let clock = clock_for(&d);
    assert_eq!(d.daemon.context.upstream.limits().used("test"), 3);
    feed(&d, &["a@example.org"], &msg(6)).await;
    held_for_limit(&d, 3).await;
    assert_eq!(up.received().len(), 3, "still capped after the restart");

    // A day later the window has room again: the held mail goes out.
    clock.advance(WINDOW + Duration::from_secs(1));
    d.daemon.context.wake_delivery.notify_one();
    let got = up.wait_for(6, WAIT).await;
    let subjects: Vec<String> = got
        .iter()
        .map(|r| {
            let t = String::from_utf8_lossy(&r.data).into_owned();
            t.lines()
                .find(|l| l.starts_with("Subject: "))
                .unwrap_or("")
                .to_string()
        })
        .collect();
    for n in 1..=6 {
        assert!(
            subjects.contains(&format!("Subject: scan {n}")),
            "{subjects:?}"
        );
    }
    let spool = &d.daemon.context.spool;
    eventually("queue empty", WAIT, || async {
        spool.list_queued().unwrap().is_empty().then_some(())
    })
    .await;
    assert_eq!(d.daemon.context.upstream.limits().used("test"), 3);
    d.stop().await;
}

#[tokio::test]
async fn recipients_count_toward_the_cap_and_no_cap_means_no_hold() {
    let ca = TestCa::new();
    let up = SmtpUpstream::start(&ca.server_cert(), Mode::Implicit, USER, PASSWORD).await;
    let toml = format!(
        "{}daily_limit = 3\n",
        config(&Opts::new(up.port(), "implicit", &ca.ca_file))
    );
    let d = start(&toml).await;
    let _clock = clock_for(&d);
    // Two recipients, then two more: the second message would make 4.
    feed(&d, &["a@example.org", "b@example.org"], &msg(1)).await;
    up.wait_for(1, WAIT).await;
    feed(&d, &["c@example.org", "d@example.org"], &msg(2)).await;
    held_for_limit(&d, 1).await;
    assert_eq!(up.received().len(), 1);
    assert_eq!(d.daemon.context.upstream.limits().used("test"), 2);
    d.stop().await;

    // "custom" provider without daily_limit: no cap at all.
    let up2 = SmtpUpstream::start(&ca.server_cert(), Mode::Implicit, USER, PASSWORD).await;
    let d = start(&config(&Opts::new(up2.port(), "implicit", &ca.ca_file))).await;
    for n in 1..=5 {
        feed(&d, &["a@example.org"], &msg(n)).await;
    }
    up2.wait_for(5, WAIT).await;
    d.stop().await;
}

#[tokio::test]
async fn direct_mode_answers_451_past_the_cap() {
    let ca = TestCa::new();
    let up = SmtpUpstream::start(&ca.server_cert(), Mode::Implicit, USER, PASSWORD).await;
    let mut o = Opts::new(up.port(), "implicit", &ca.ca_file);
    o.smtp_extra = "mode = \"direct\"";
    let d = start(&format!("{}daily_limit = 3\n", config(&o))).await;
    let clock = clock_for(&d);
    let ctx = &d.daemon.context;
    let acct = ctx.config.account("test").unwrap();
    let env = crate::support::delivery::envelope(&["a@example.org", "b@example.org"]);
    let r = ctx
        .upstream
        .send_direct(acct, &env, std::sync::Arc::new(msg(1)), &ctx.spool)
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    let r = ctx
        .upstream
        .send_direct(acct, &env, std::sync::Arc::new(msg(2)), &ctx.spool)
        .await;
    assert_eq!(
        (r.code, r.enhanced.as_deref()),
        (451, Some("4.7.0")),
        "{r:?}"
    );
    assert!(r.text.starts_with("daily limit (3 in 24h)"), "{r:?}");
    assert_eq!(up.received().len(), 1);
    clock.advance(WINDOW);
    let r = ctx
        .upstream
        .send_direct(acct, &env, std::sync::Arc::new(msg(3)), &ctx.spool)
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    d.stop().await;
}
