//! What to do with a queued message after an attempt, or instead of one:
//! [`disposition`] is pure (the entry, what happened, the time, the retry
//! policy in; a [`Disposition`] out) and holds every rule of the table:
//! delivered, refused, deferred with back-off, expired (the one place that
//! rule lives), held for our configuration or the daily limit. Applying it
//! to the spool, the log and the metrics is [`super::apply`]'s job.

use std::time::{Duration, SystemTime};

use super::outcome::{ConnectFailure, DeliveryReport};
use super::reply::{Cause, Reply};
use crate::config::DeliveryConfig;
use crate::spool::{HoldReason, QueueEntry};

/// The retry settings the decision depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub retry_initial: Duration,
    pub retry_max: Duration,
    pub expire_after: Duration,
}

impl Policy {
    pub fn of(cfg: &DeliveryConfig) -> Policy {
        Policy {
            retry_initial: cfg.retry_initial,
            retry_max: cfg.retry_max,
            expire_after: cfg.expire_after,
        }
    }
}

/// What happened to the message, or why it was not tried.
#[derive(Debug, Clone, Copy)]
pub enum Attempt<'a> {
    /// Tried: what the upstream said for each recipient.
    Sent(&'a DeliveryReport),
    /// Not tried: our configuration is wrong (unknown account, no usable password).
    NotConfigured(&'a str),
    /// Not tried: the account is at its daily limit until `until`.
    DailyLimit { until: SystemTime, reason: &'a str },
    /// Not tried: the account's OAuth2 grant must be renewed.
    NeedsReauthorization { reason: &'a str },
    /// Not tried: the account is backing off after connection failures (`why`).
    AccountDown(&'a str),
}

/// The decision for one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disposition {
    /// Recipients this attempt delivered, and the upstream's reply.
    pub delivered: Vec<String>,
    pub reply: Option<Reply>,
    /// Recipients refused for good while the entry itself goes on (others
    /// were delivered or wait): recorded as a new entry in the failed area.
    pub refused: Vec<(String, Cause)>,
    /// What becomes of the entry.
    pub then: Next,
}

/// What becomes of the entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Nothing is left to deliver: remove it.
    Complete,
    /// Try `remaining` again `after` from now (at `at`). `config` marks a
    /// configuration problem (logged as a warning).
    DeferUntil {
        at: SystemTime,
        after: Duration,
        attempts: u32,
        remaining: Vec<String>,
        reason: String,
        config: bool,
    },
    /// Move it to the failed area (`remaining`: the recipients it failed for,
    /// `None` for all it had).
    Fail {
        attempts: u32,
        reason: String,
        remaining: Option<Vec<String>>,
    },
    /// Wait until `until` without counting an attempt.
    Hold {
        hold: HoldReason,
        reason: String,
        until: SystemTime,
    },
    /// Leave it as it is.
    Unchanged,
}

/// Delay before attempt `attempts + 1`: `initial` doubling, capped at `max`.
pub fn backoff(initial: Duration, max: Duration, attempts: u32) -> Duration {
    let factor = 1u32
        .checked_shl(attempts.saturating_sub(1).min(30))
        .unwrap_or(u32::MAX);
    initial.checked_mul(factor).unwrap_or(max).min(max)
}

/// The decision table (see the module's header).
pub fn disposition(
    entry: &QueueEntry,
    attempt: Attempt<'_>,
    now: SystemTime,
    policy: Policy,
) -> Disposition {
    let mut d = Disposition {
        delivered: Vec::new(),
        reply: None,
        refused: Vec::new(),
        then: Next::Unchanged,
    };
    let hold = |hold: HoldReason, reason: &str, until: SystemTime| Next::Hold {
        hold,
        reason: reason.to_string(),
        until,
    };
    d.then = match attempt {
        Attempt::NotConfigured(reason) => hold(
            HoldReason::Config {
                reason: reason.to_string(),
            },
            reason,
            now + policy.retry_max,
        ),
        Attempt::DailyLimit { until, reason } => hold(
            HoldReason::DailyLimit {
                until_ms: crate::spool::to_ms(until),
            },
            reason,
            until,
        ),
        Attempt::NeedsReauthorization { reason } => hold(
            HoldReason::NeedsReauthorization {
                account: entry.envelope.account.clone(),
                reason: reason.to_string(),
            },
            reason,
            now + policy.retry_max,
        ),
        Attempt::AccountDown(why) => {
            expired(entry, now, policy, entry.attempts, &entry.remaining, why)
                .unwrap_or(Next::Unchanged)
        }
        // Tried, but the OAuth2 grant is gone: held like `NeedsReauthorization`.
        Attempt::Sent(DeliveryReport {
            connect_failure: Some(ConnectFailure::NeedsReauthorization(reason)),
            ..
        }) => hold(
            HoldReason::NeedsReauthorization {
                account: entry.envelope.account.clone(),
                reason: reason.to_string(),
            },
            reason,
            now + policy.retry_max,
        ),
        Attempt::Sent(report) => {
            d.delivered = report.delivered();
            d.reply = report
                .last_reply
                .clone()
                .filter(|_| !d.delivered.is_empty());
            let permanent = report.permanent();
            let temporary = report.temporary();
            let attempts = entry.attempts.saturating_add(1);
            if !permanent.is_empty() && d.delivered.is_empty() && temporary.is_empty() {
                Next::Fail {
                    attempts,
                    reason: join_reasons(&permanent),
                    remaining: None,
                }
            } else {
                d.refused = permanent;
                match temporary.first() {
                    None => Next::Complete,
                    Some((_, cause)) => {
                        let reason = cause.to_string();
                        let remaining: Vec<String> =
                            temporary.iter().map(|(r, _)| r.clone()).collect();
                        expired(entry, now, policy, attempts, &remaining, &reason).unwrap_or_else(
                            || {
                                let after =
                                    backoff(policy.retry_initial, policy.retry_max, attempts);
                                Next::DeferUntil {
                                    at: now + after,
                                    after,
                                    attempts,
                                    remaining,
                                    reason,
                                    config: report
                                        .connect_failure
                                        .as_ref()
                                        .is_some_and(ConnectFailure::is_config),
                                }
                            },
                        )
                    }
                }
            }
        }
    };
    d
}

/// The expiry rule: a message in the queue for `expire_after` fails with
/// its last error, for the recipients still waiting.
fn expired(
    entry: &QueueEntry,
    now: SystemTime,
    policy: Policy,
    attempts: u32,
    remaining: &[String],
    last_error: &str,
) -> Option<Next> {
    let age = now.duration_since(entry.queued_since).unwrap_or_default();
    (age >= policy.expire_after).then(|| Next::Fail {
        attempts,
        reason: format!(
            "expired after {} in the queue; last error: {last_error}",
            humantime::format_duration(Duration::from_secs(age.as_secs()))
        ),
        remaining: Some(remaining.to_vec()),
    })
}

/// `<a@x>: RCPT TO: 550 ...; <b@y>: ...` (the failed area's reason).
pub fn join_reasons(list: &[(String, Cause)]) -> String {
    list.iter()
        .map(|(r, cause)| format!("<{r}>: {cause}"))
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
#[path = "disposition_tests.rs"]
mod tests;
