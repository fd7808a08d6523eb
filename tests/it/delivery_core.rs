//! The delivery core's hand-off and typed holds, end to end: messages made
//! durable by any producer reach the worker at once (not at the next
//! rescan), and a daily-limit hold is recognised by its type, not its text.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use crate::support::ca::TestCa;
use crate::support::daemon::{start, start_in};
use crate::support::delivery::{config, envelope, feed, Opts, PASSWORD, USER};
use crate::support::smtp_upstream::{Mode, SmtpUpstream};
use crate::support::wait::eventually;
use mailbridge::delivery::limits::ManualClock;
use mailbridge::spool::{HoldReason, Spool};

/// Well below the worker's 5 s rescan: only the hand-off can be this quick.
const PROMPT: Duration = Duration::from_secs(3);

#[tokio::test]
async fn an_enqueue_wakes_the_worker_without_anyone_notifying_it() {
    let ca = TestCa::new();
    let up = SmtpUpstream::start(&ca.server_cert(), Mode::Implicit, USER, PASSWORD).await;
    let d = start(&config(&Opts::new(up.port(), "implicit", &ca.ca_file))).await;
    let ctx = d.daemon.context.clone();
    ctx.spool
        .enqueue(&envelope(&["a@example.org"]), b"Subject: s\r\n\r\nbody\r\n")
        .await
        .unwrap();
    let got = up.wait_for(1, PROMPT).await;
    assert_eq!(got[0].rcpts, vec!["a@example.org"]);
    d.stop().await;
}

#[tokio::test]
async fn direct_mode_hands_its_deferred_recipients_to_the_worker() {
    let ca = TestCa::new();
    let up = SmtpUpstream::start(&ca.server_cert(), Mode::Implicit, USER, PASSWORD).await;
    let mut o = Opts::new(up.port(), "implicit", &ca.ca_file);
    o.smtp_extra = "mode = \"direct\"";
    let d = start(&config(&o)).await;
    let ctx = d.daemon.context.clone();
    let acct = ctx.config.account("test").unwrap();
    up.script().busy_rcpts_once = HashSet::from(["busy@example.org".to_string()]);
    let env = envelope(&["a@example.org", "busy@example.org"]);
    let r = ctx
        .upstream
        .send_direct(
            acct,
            &env,
            std::sync::Arc::new(b"Subject: s\r\n\r\nx\r\n"),
            &ctx.spool,
        )
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    // The busy recipient was queued; the worker heard of it and sent it.
    let got = up.wait_for(2, PROMPT).await;
    assert_eq!(got[0].rcpts, vec!["a@example.org"]);
    assert_eq!(got[1].rcpts, vec!["busy@example.org"]);
    d.stop().await;
}

#[tokio::test]
async fn a_daily_limit_hold_is_known_by_its_type_not_its_wording() {
    let ca = TestCa::new();
    let up = SmtpUpstream::start(&ca.server_cert(), Mode::Implicit, USER, PASSWORD).await;
    let dir = tempfile::tempdir().unwrap();
    let spool_dir = dir.path().join("spool");
    // A message held for the daily limit a day from now, under a reworded
    // reason; the account has no cap any more, so the limiter has room now.
    let id = {
        let spool = Spool::open(&spool_dir).unwrap();
        let id = spool
            .enqueue(&envelope(&["a@example.org"]), b"Subject: held\r\n\r\nx\r\n")
            .await
            .unwrap();
        let later = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
            + 86_400_000;
        let state = format!(
            r#"{{"attempts":0,"next_attempt_ms":{later},"last_error":"provider quota reached, waiting","hold":{{"kind":"daily-limit","until_ms":{later}}}}}"#
        );
        std::fs::write(spool_dir.join(format!("queue/{id}.state")), state).unwrap();
        id
    };
    let d = start_in(&config(&Opts::new(up.port(), "implicit", &ca.ca_file)), dir).await;
    let got = up.wait_for(1, PROMPT).await;
    assert_eq!(got[0].rcpts, vec!["a@example.org"]);
    let spool = &d.daemon.context.spool;
    eventually("delivered entry removed", PROMPT, || async {
        spool.entry(&id).is_err().then_some(())
    })
    .await;
    d.stop().await;
}

#[tokio::test]
async fn a_reload_keeps_the_daily_limit_window() {
    let ca = TestCa::new();
    let up = SmtpUpstream::start(&ca.server_cert(), Mode::Implicit, USER, PASSWORD).await;
    let toml = config(&Opts::new(up.port(), "implicit", &ca.ca_file)).replace(
        "provider = \"custom\"",
        "provider = \"custom\"\ndaily_limit = 1",
    );
    let d = start(&toml).await;
    // The window's clock says two days ago: only the window itself (not
    // its file read again) still counts the first message after the reload.
    let two_days = Duration::from_secs(2 * 86_400);
    let clock = ManualClock::new(std::time::SystemTime::now() - two_days);
    d.daemon
        .context
        .upstream
        .limits()
        .set_clock(Arc::new(clock));
    let first = feed(&d, &["a@example.org"], b"Subject: 1\r\n\r\nx\r\n").await;
    up.wait_for(1, PROMPT).await;
    let spool = d.daemon.context.spool.clone();
    eventually("first one done", PROMPT, || async {
        spool.entry(&first).is_err().then_some(())
    })
    .await;
    let path = d.dir.path().join("relay.toml");
    d.daemon
        .reload(mailbridge::config::Config::load(&path).unwrap())
        .unwrap();
    assert_eq!(d.daemon.current().upstream.limits().used("test"), 1);
    // The reloaded worker still counts the first message: the second waits.
    let id = feed(&d, &["b@example.org"], b"Subject: 2\r\n\r\nx\r\n").await;
    let held = eventually("held for the daily limit", PROMPT, || async {
        spool
            .entry(&id)
            .ok()
            .filter(|e| matches!(e.hold, Some(HoldReason::DailyLimit { .. })))
    })
    .await;
    assert!(
        held.last_error
            .unwrap()
            .starts_with("daily limit (1 in 24h)"),
        "the reason is still shown"
    );
    assert_eq!(up.received().len(), 1);
    d.stop().await;
}
