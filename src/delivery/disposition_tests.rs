//! The disposition table, case by case.

use std::time::{Duration, SystemTime};

use super::*;
use crate::delivery::reply::{Stage, Status};
use crate::spool::{EntryState, Envelope, QueueId};

const MIN: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

fn policy() -> Policy {
    Policy {
        retry_initial: MIN,
        retry_max: HOUR,
        expire_after: 24 * HOUR,
    }
}

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000)
}

/// An entry for `rcpts`, `age` in the queue, tried `attempts` times.
fn entry(rcpts: &[&str], age: Duration, attempts: u32) -> QueueEntry {
    let rcpts: Vec<String> = rcpts.iter().map(|s| s.to_string()).collect();
    QueueEntry {
        id: QueueId("0abc".into()),
        envelope: Envelope {
            account: "gmail".into(),
            mail_from: "dev@local".into(),
            recipients: rcpts.clone(),
            client: "127.0.0.1:1".into(),
            helo: "printer".into(),
            local_user: None,
            smtputf8: false,
            body_8bit: false,
        },
        state: EntryState::Queued,
        attempts,
        next_attempt: None,
        last_error: None,
        received_at: now() - age,
        queued_since: now() - age,
        size: 10,
        remaining: rcpts,
        failed_at: None,
        hold: None,
    }
}

fn upstream(stage: Stage, code: u16, rest: &str) -> Cause {
    Cause::Upstream {
        stage,
        reply: Reply::from_parts(code, rest),
    }
}

fn report(list: &[(&str, Status)]) -> DeliveryReport {
    let mut r = DeliveryReport::default();
    for (rcpt, s) in list {
        r.set(rcpt, s.clone());
    }
    if r.recipients.iter().any(|(_, s)| *s == Status::Delivered) {
        r.last_reply = Some(Reply::from_parts(250, "2.0.0 OK"));
    }
    r
}

fn decide(e: &QueueEntry, a: Attempt<'_>) -> Disposition {
    disposition(e, a, now(), policy())
}

#[test]
fn all_delivered_completes() {
    let e = entry(&["a@x", "b@x"], MIN, 0);
    let r = report(&[("a@x", Status::Delivered), ("b@x", Status::Delivered)]);
    let d = decide(&e, Attempt::Sent(&r));
    assert_eq!(d.delivered, vec!["a@x", "b@x"]);
    assert_eq!(d.reply.unwrap().to_string(), "250 2.0.0 OK");
    assert!(d.refused.is_empty());
    assert_eq!(d.then, Next::Complete);
}

#[test]
fn all_permanent_fails_the_entry_with_every_reply() {
    let e = entry(&["a@x", "b@x"], MIN, 2);
    let no = upstream(Stage::Rcpt, 550, "5.1.1 no such user");
    let r = report(&[
        ("a@x", Status::Permanent(no.clone())),
        (
            "b@x",
            Status::Permanent(upstream(Stage::Data, 554, "5.7.0 spam")),
        ),
    ]);
    let d = decide(&e, Attempt::Sent(&r));
    assert!(d.delivered.is_empty() && d.refused.is_empty() && d.reply.is_none());
    assert_eq!(
        d.then,
        Next::Fail {
            attempts: 3,
            reason: "<a@x>: RCPT TO: 550 5.1.1 no such user; <b@x>: DATA: 554 5.7.0 spam".into(),
            remaining: None,
        }
    );
}

#[test]
fn mixed_recipients_deliver_record_the_refused_and_defer_the_rest() {
    let e = entry(&["ok@x", "no@x", "later@x"], MIN, 0);
    let no = upstream(Stage::Rcpt, 550, "5.1.1 no");
    let later = upstream(Stage::Rcpt, 451, "4.3.0 busy");
    let r = report(&[
        ("ok@x", Status::Delivered),
        ("no@x", Status::Permanent(no.clone())),
        ("later@x", Status::Temporary(later)),
    ]);
    let d = decide(&e, Attempt::Sent(&r));
    assert_eq!(d.delivered, vec!["ok@x"]);
    assert_eq!(d.refused, vec![("no@x".to_string(), no)]);
    assert_eq!(
        d.then,
        Next::DeferUntil {
            at: now() + MIN,
            after: MIN,
            attempts: 1,
            remaining: vec!["later@x".into()],
            reason: "RCPT TO: 451 4.3.0 busy".into(),
            config: false,
        }
    );
}

#[test]
fn delivered_and_refused_complete_after_recording_the_refused() {
    let e = entry(&["ok@x", "no@x"], MIN, 0);
    let no = upstream(Stage::Rcpt, 550, "5.1.1 no");
    let r = report(&[("ok@x", Status::Delivered), ("no@x", Status::Permanent(no))]);
    let d = decide(&e, Attempt::Sent(&r));
    assert_eq!((d.delivered.len(), d.refused.len()), (1, 1));
    assert_eq!(d.then, Next::Complete);
}

#[test]
fn temporary_backs_off_doubling_up_to_the_cap() {
    let later = Status::Temporary(upstream(Stage::Mail, 421, "4.7.0 later"));
    let r = report(&[("a@x", later)]);
    for (attempts, after) in [(0, MIN), (1, 2 * MIN), (3, 8 * MIN), (20, HOUR)] {
        let d = decide(&entry(&["a@x"], MIN, attempts), Attempt::Sent(&r));
        match d.then {
            Next::DeferUntil { after: a, at, .. } => {
                assert_eq!((a, at), (after, now() + after), "attempt {attempts}")
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn temporary_after_expiry_fails_for_the_waiting_recipients() {
    let e = entry(&["ok@x", "later@x"], 24 * HOUR + MIN, 7);
    let r = report(&[
        ("ok@x", Status::Delivered),
        (
            "later@x",
            Status::Temporary(upstream(Stage::Rcpt, 451, "4.3.0 busy")),
        ),
    ]);
    let d = decide(&e, Attempt::Sent(&r));
    assert_eq!(d.delivered, vec!["ok@x"]);
    assert_eq!(
        d.then,
        Next::Fail {
            attempts: 8,
            reason: "expired after 1day 1m in the queue; last error: RCPT TO: 451 4.3.0 busy"
                .into(),
            remaining: Some(vec!["later@x".into()]),
        }
    );
}

#[test]
fn connection_failure_defers_every_recipient_and_config_ones_say_so() {
    let e = entry(&["a@x", "b@x"], MIN, 0);
    for (failure, config) in [
        (ConnectFailure::Temporary("connect: refused".into()), false),
        (ConnectFailure::Config("STARTTLS not offered".into()), true),
        (
            ConnectFailure::AuthRefused {
                reply: Reply::from_parts(535, "5.7.8 bad"),
                reason: "AUTH as u: 535 5.7.8 bad".into(),
            },
            true,
        ),
    ] {
        let why = failure.reason().to_string();
        let mut r = report(&[
            ("a@x", Status::Temporary(Cause::Connection(why.clone()))),
            ("b@x", Status::Temporary(Cause::Connection(why.clone()))),
        ]);
        r.connect_failure = Some(failure);
        match decide(&e, Attempt::Sent(&r)).then {
            Next::DeferUntil {
                remaining,
                reason,
                config: c,
                attempts: 1,
                ..
            } => assert_eq!((remaining.len(), reason, c), (2, why, config)),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn not_configured_holds_without_counting_an_attempt() {
    let e = entry(&["a@x"], 48 * HOUR, 3);
    let d = decide(
        &e,
        Attempt::NotConfigured("account \"gmail\" has no usable password"),
    );
    assert_eq!(
        d.then,
        Next::Hold {
            hold: HoldReason::Config {
                reason: "account \"gmail\" has no usable password".into()
            },
            reason: "account \"gmail\" has no usable password".into(),
            until: now() + HOUR,
        }
    );
}

#[test]
fn daily_limit_holds_until_the_next_slot() {
    let e = entry(&["a@x"], MIN, 0);
    let until = now() + 5 * HOUR;
    let d = decide(
        &e,
        Attempt::DailyLimit {
            until,
            reason: "daily limit (3 in 24h), next slot at x",
        },
    );
    assert_eq!(
        d.then,
        Next::Hold {
            hold: HoldReason::DailyLimit {
                until_ms: crate::spool::to_ms(until)
            },
            reason: "daily limit (3 in 24h), next slot at x".into(),
            until,
        }
    );
}

#[test]
fn needs_reauthorization_holds_for_the_account() {
    let d = decide(
        &entry(&["a@x"], MIN, 0),
        Attempt::NeedsReauthorization {
            reason: "invalid_grant",
        },
    );
    assert!(matches!(
        d.then,
        Next::Hold { hold: HoldReason::NeedsReauthorization { ref account, .. }, .. } if account == "gmail"
    ));
}

#[test]
fn an_attempt_that_found_the_grant_lost_holds_without_counting_an_attempt() {
    let report = DeliveryReport {
        connect_failure: Some(ConnectFailure::NeedsReauthorization(
            "run: mailbridge auth gmail".into(),
        )),
        ..DeliveryReport::default()
    };
    let d = decide(&entry(&["a@x"], MIN, 2), Attempt::Sent(&report));
    assert!(
        matches!(
            &d.then,
            Next::Hold { hold: HoldReason::NeedsReauthorization { account, reason }, .. }
                if account == "gmail" && reason.contains("mailbridge auth gmail")
        ),
        "{d:?}"
    );
    assert!(d.delivered.is_empty() && d.refused.is_empty());
}

#[test]
fn an_account_that_is_down_expires_its_messages_only_when_they_are_old() {
    let young = entry(&["a@x"], HOUR, 1);
    assert_eq!(
        decide(&young, Attempt::AccountDown("refused")).then,
        Next::Unchanged
    );
    let old = entry(&["a@x", "b@x"], 25 * HOUR, 4);
    assert_eq!(
        decide(&old, Attempt::AccountDown("connect: refused")).then,
        Next::Fail {
            attempts: 4,
            reason: "expired after 1day 1h in the queue; last error: connect: refused".into(),
            remaining: Some(vec!["a@x".into(), "b@x".into()]),
        }
    );
}

#[test]
fn backoff_doubles_and_caps() {
    let s = Duration::from_secs;
    assert_eq!(backoff(s(60), s(3600), 1), s(60));
    assert_eq!(backoff(s(60), s(3600), 2), s(120));
    assert_eq!(backoff(s(60), s(3600), 4), s(480));
    assert_eq!(backoff(s(60), s(3600), 10), s(3600));
    assert_eq!(backoff(s(60), s(3600), 500), s(3600));
}
