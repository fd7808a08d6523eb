//! Delivery: the worker that sends spooled mail upstream (schedule, retry with
//! backoff, temporary vs permanent failure, one log line per message event),
//! plus direct mode and the login check built on the same upstream client.
//!
//! - [`upstream`]: connections, TLS, AUTH, pooling, one transaction.
//! - [`starttls`]: the strict plaintext greeting/EHLO/STARTTLS before the handshake.
//! - [`outcome`]: error classification, reasons and hints, direct-mode replies.
//! - [`schedule`]: which message is due next (oldest first, per-account back-off).
//! - [`direct`]: `mode = "direct"`; `mailbridge check` ([`crate::check`]) uses [`connect`].

mod direct;
mod fold;
pub mod limits;
pub mod notify;
pub mod outcome;
mod schedule;
mod starttls;
mod transport;
mod upstream;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, info_span, warn, Instrument};

pub use outcome::{ConnectFailure, DeliveryReport, DirectReply};
pub(crate) use transport::account_tls;
pub use upstream::Upstream;
pub(crate) use upstream::{connect, no_password};

use crate::spool::{to_ms, Deferral, QueueEntry, QueueId, SpoolError};
use crate::text::Printable;
use crate::Context;
use schedule::Schedule;

/// How often the worker re-reads the queue directory (picks up `mailbridge queue retry`).
const RESCAN: Duration = Duration::from_secs(5);

/// Delay before attempt `attempts + 1`: `initial` doubling, capped at `max`.
pub fn backoff(initial: Duration, max: Duration, attempts: u32) -> Duration {
    let factor = 1u32
        .checked_shl(attempts.saturating_sub(1).min(30))
        .unwrap_or(u32::MAX);
    initial.checked_mul(factor).unwrap_or(max).min(max)
}

/// What a delivery task reports back to the worker loop.
struct Done {
    id: QueueId,
    account: String,
    /// When to try again (unix ms); `None` when the entry is gone (delivered, failed, deleted).
    due_ms: Option<u64>,
    /// The account's connection failed, and why (back off the whole account).
    account_failed: Option<String>,
    /// A connection to the account worked.
    account_ok: bool,
    /// The account is at its daily limit: (until unix ms, recipients needed).
    limited: Option<(u64, usize)>,
}

/// Sends its `Done` to the worker loop when dropped (normally or by a panic).
struct Finish {
    tx: mpsc::UnboundedSender<Done>,
    done: Option<Done>,
}

impl Finish {
    fn send(mut self, done: Done) {
        self.done = Some(done);
    }
}

impl Drop for Finish {
    fn drop(&mut self) {
        if let Some(d) = self.done.take() {
            let _ = self.tx.send(d);
        }
    }
}

/// The delivery worker: woken by `ctx.wake_delivery` after each enqueue and by
/// timers for retries; on `shutdown` it stops taking messages and finishes the
/// ones in hand (each bounded by the delivery timeout).
pub async fn run(live: Arc<arc_swap::ArcSwap<Context>>, shutdown: CancellationToken) {
    let mut ctx = live.load_full();
    ctx.spool.recover();
    let cfg = ctx.config.delivery.clone();
    let mut sched = Schedule::new(cfg.retry_initial, cfg.retry_max);
    for f in rescan(&ctx, &mut sched) {
        notify::failure_notice(&ctx, &f).await;
    }
    let permits = Arc::new(Semaphore::new(cfg.concurrency.max(1)));
    let tasks = TaskTracker::new();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
    let mut next_rescan = tokio::time::Instant::now() + RESCAN;
    loop {
        // A config reload (SIGHUP) takes effect from the next pass.
        ctx = live.load_full();
        for (id, account) in ctx.spool.take_fresh() {
            sched.add(id, account, 0);
        }
        let now = crate::spool::now_ms();
        let limits = ctx.upstream.limits();
        sched.refresh_limits(now, |a, n| limits.wait_for(a, n));
        mark_limited(&ctx, &mut sched);
        while let Ok(permit) = permits.clone().try_acquire_owned() {
            let Some((id, account)) = sched.next_due(now) else {
                drop(permit);
                break;
            };
            let ctx2 = ctx.clone();
            let span = info_span!("delivery", account = %account);
            // Reports back even if the task dies, so the message is not stuck "in flight".
            let report = Finish {
                tx: done_tx.clone(),
                done: Some(Done {
                    id: id.clone(),
                    account: account.clone(),
                    due_ms: Some(to_ms(SystemTime::now() + cfg.retry_max)),
                    account_failed: None,
                    account_ok: false,
                    limited: None,
                }),
            };
            tasks.spawn(
                async move {
                    let done = deliver_one(&ctx2, id, account).await;
                    drop(permit);
                    report.send(done);
                }
                .instrument(span),
            );
        }
        // With every permit in use, a finishing task wakes us (no busy timer).
        let next = (permits.available_permits() > 0)
            .then(|| sched.next_wake())
            .flatten();
        let wake_at = next
            .map(|ms| {
                let wait = ms.saturating_sub(crate::spool::now_ms());
                tokio::time::Instant::now() + Duration::from_millis(wait)
            })
            .map_or(next_rescan, |t| t.min(next_rescan));
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ctx.wake_delivery.notified() => {}
            Some(done) = done_rx.recv() => finish(&mut sched, done),
            _ = tokio::time::sleep_until(wake_at) => {}
        }
        while let Ok(done) = done_rx.try_recv() {
            finish(&mut sched, done);
        }
        if tokio::time::Instant::now() >= next_rescan {
            for f in rescan(&ctx, &mut sched) {
                notify::failure_notice(&ctx, &f).await;
            }
            next_rescan = tokio::time::Instant::now() + RESCAN;
        }
    }
    tasks.close();
    tasks.wait().await;
    ctx.upstream.close_idle().await;
}

/// Marks the waiting messages of accounts at their daily limit held, with
/// the reason and the next slot (one state write per message and hold).
fn mark_limited(ctx: &Context, sched: &mut Schedule) {
    for (id, account) in sched.unmarked_limited() {
        let Ok(e) = ctx.spool.entry(&id) else {
            continue;
        };
        if matches!(
            e.state,
            crate::spool::EntryState::Failed | crate::spool::EntryState::OnHold
        ) {
            continue;
        }
        if let Some(full) = ctx.upstream.limits().full(&account, e.remaining.len()) {
            hold(ctx, &e, &full.reason(), full.wait);
        }
    }
}

fn finish(sched: &mut Schedule, done: Done) {
    if let Some((until, needed)) = done.limited {
        sched.limit(done.account.clone(), until, needed);
    }
    sched.finish(
        done.id,
        done.account,
        done.due_ms,
        done.account_failed,
        done.account_ok,
    );
}

/// Re-reads the queue (picks up `mailbridge queue retry/delete`), and fails
/// messages that expired while their account could not be reached (they are
/// not tried one by one during an outage, so they would never expire otherwise).
/// Returns the ids moved to the failed area (for failure notices).
fn rescan(ctx: &Context, sched: &mut Schedule) -> Vec<QueueId> {
    let mut failed = Vec::new();
    let entries = match ctx.spool.list_queued() {
        Ok(e) => e,
        Err(e) => {
            error!("cannot read the spool: {}", Printable(&e.to_string()));
            return failed;
        }
    };
    let now = crate::spool::now_ms();
    let expire = ctx.config.delivery.expire_after;
    let mut keep = Vec::with_capacity(entries.len());
    for e in entries {
        if e.state == crate::spool::EntryState::OnHold {
            continue; // `mailbridge queue hold`: waits for `release`
        }
        let expired = e.queued_since.elapsed().unwrap_or_default() >= expire;
        match sched.blocked_reason(&e.envelope.account, now) {
            Some(why) if expired => {
                let why = format!(
                    "expired after {} in the queue; last error: {why}",
                    humantime::format_duration(expire)
                );
                warn!(queue_id = %e.id, size = e.size, rcpts = e.remaining.len(), reply = %Printable(&why), "failed: moved to the failed area");
                ctx.metrics.message_failed(&e.envelope.account);
                ctx.status.failed(&e, &e.remaining, &why);
                if let Err(err) = ctx
                    .spool
                    .fail(&e.id, e.attempts, &why, Some(e.remaining.clone()))
                {
                    error!(queue_id = %e.id, "cannot move to the failed area: {err}");
                } else {
                    failed.push(e.id.clone());
                }
                sched.remove(&e.id);
            }
            _ => {
                // A daily-limit hold is released by the limiter, not by its time.
                let limit_hold = e.state == crate::spool::EntryState::Held
                    && e.last_error.as_deref().is_some_and(limits::is_limit_reason);
                let due = match e.next_attempt {
                    Some(t) if !limit_hold => to_ms(t),
                    _ => 0,
                };
                keep.push((e.id, e.envelope.account, due))
            }
        }
    }
    sched.reload(keep.into_iter());
    failed
}

/// Delivers one queued message and records the outcome in the spool.
async fn deliver_one(ctx: &Context, id: QueueId, account_name: String) -> Done {
    let mut done = Done {
        id: id.clone(),
        account: account_name,
        due_ms: None,
        account_failed: None,
        account_ok: false,
        limited: None,
    };
    let (entry, message) = match ctx.spool.load_queued(&id) {
        Ok(x) => x,
        Err(SpoolError::NotFound(_)) | Err(SpoolError::Corrupt { .. }) => return done,
        Err(e) => {
            error!(queue_id = %id, "cannot read spooled message: {}", Printable(&e.to_string()));
            done.due_ms = Some(to_ms(SystemTime::now() + ctx.config.delivery.retry_initial));
            return done;
        }
    };
    done.account = entry.envelope.account.clone();
    if entry.state == crate::spool::EntryState::OnHold {
        return done; // `mailbridge queue hold`: not delivered until released
    }
    let cfg = &ctx.config.delivery;
    let Some(account) = ctx.config.account(&entry.envelope.account) else {
        let reason = format!(
            "no [[accounts]] entry is named {:?}",
            entry.envelope.account
        );
        done.due_ms = hold(ctx, &entry, &reason, cfg.retry_max);
        return done;
    };
    if account.password.secret().is_none() {
        let reason = upstream::no_password(account);
        done.due_ms = hold(ctx, &entry, &reason, cfg.retry_max);
        return done;
    }
    let needed = entry.remaining.len();
    let reservation = match ctx.upstream.limits().try_reserve(&account.name, needed) {
        Ok(r) => r,
        Err(full) => {
            // Never sent into the provider's 24 h block: wait in the spool.
            hold(ctx, &entry, &full.reason(), full.wait);
            done.due_ms = Some(crate::spool::now_ms());
            done.limited = Some((to_ms(SystemTime::now() + full.wait), needed));
            return done;
        }
    };
    let started = std::time::Instant::now();
    let report = ctx
        .upstream
        .deliver(account, &entry.envelope, &entry.remaining, &message)
        .await;
    reservation.commit(report.delivered.len());
    done.account_failed = report
        .connect_failure
        .as_ref()
        .map(|f| f.reason().to_string());
    done.account_ok = done.account_failed.is_none();
    let last_reply = report.last_reply.as_deref();
    let failure = done.account_failed.as_deref();
    ctx.metrics
        .delivery_attempt(&account.name, started.elapsed(), failure, last_reply);
    let mut failed = Vec::new();
    done.due_ms = record(ctx, &entry, &message, report, &mut failed);
    for f in failed {
        notify::failure_notice(ctx, &f).await;
    }
    done
}

/// Marks an entry held (a configuration problem) without counting an attempt.
fn hold(ctx: &Context, entry: &QueueEntry, reason: &str, wait: Duration) -> Option<u64> {
    let next = SystemTime::now() + wait;
    let d = Deferral {
        attempts: entry.attempts,
        next_attempt: next,
        reason: reason.to_string(),
        held: true,
        remaining: Some(entry.remaining.clone()),
    };
    if entry.state != crate::spool::EntryState::Held {
        warn!(queue_id = %entry.id, size = entry.size, rcpts = entry.remaining.len(), "held: {}", Printable(reason));
    }
    if let Err(e) = ctx.spool.defer(&entry.id, &d) {
        error!(queue_id = %entry.id, "cannot record hold: {e}");
    }
    Some(to_ms(next))
}

/// Applies a delivery report to the spool and logs it; returns the next due time.
fn record(
    ctx: &Context,
    entry: &QueueEntry,
    message: &[u8],
    report: DeliveryReport,
    failed: &mut Vec<QueueId>,
) -> Option<u64> {
    let cfg = &ctx.config.delivery;
    let id = &entry.id;
    let attempts = entry.attempts.saturating_add(1);
    let (size, rcpts) = (entry.size, entry.remaining.len());
    if !report.delivered.is_empty() {
        info!(
            queue_id = %id, size, rcpts = report.delivered.len(),
            reply = %Printable(report.last_reply.as_deref().unwrap_or("")),
            "delivered"
        );
        ctx.metrics.message_delivered(&entry.envelope.account);
        ctx.status.delivered(entry, &report);
    }
    if !report.permanent.is_empty() {
        let reason = join_reasons(&report.permanent);
        if report.delivered.is_empty() && report.temporary.is_empty() {
            warn!(queue_id = %id, size, rcpts, reply = %Printable(&reason), "failed: moved to the failed area");
            ctx.metrics.message_failed(&entry.envelope.account);
            ctx.status.failed(entry, &entry.remaining, &reason);
            if let Err(e) = ctx.spool.fail(id, attempts, &reason, None) {
                error!(queue_id = %id, "cannot move to the failed area: {e}");
            } else {
                failed.push(id.clone());
            }
            return None;
        }
        match ctx
            .spool
            .record_failed(&entry.envelope, message, &report.permanent)
        {
            Ok(fid) => {
                ctx.status.refused(&fid, entry, &report.permanent, &reason);
                warn!(
                    queue_id = %id, failed_id = %fid, size, rcpts = report.permanent.len(), reply = %Printable(&reason),
                    "failed for some recipients: recorded in the failed area"
                );
                failed.push(fid);
            }
            Err(e) => {
                error!(queue_id = %id, reply = %Printable(&reason), "recipients failed but cannot be recorded: {}", Printable(&e.to_string()))
            }
        }
    }
    let Some(reason) = report.temporary_reason().map(str::to_string) else {
        if let Err(e) = ctx.spool.complete(id) {
            error!(queue_id = %id, "delivered but cannot remove from the spool: {e}");
        }
        return None;
    };
    let remaining: Vec<String> = report.temporary.iter().map(|(r, _)| r.clone()).collect();
    let age = entry.queued_since.elapsed().unwrap_or_default();
    if age >= cfg.expire_after {
        let why = format!(
            "expired after {} in the queue; last error: {reason}",
            humantime::format_duration(Duration::from_secs(age.as_secs()))
        );
        warn!(queue_id = %id, size, rcpts = remaining.len(), reply = %Printable(&why), "failed: moved to the failed area");
        ctx.metrics.message_failed(&entry.envelope.account);
        ctx.status.failed(entry, &remaining, &why);
        if let Err(e) = ctx.spool.fail(id, attempts, &why, Some(remaining)) {
            error!(queue_id = %id, "cannot move to the failed area: {e}");
        } else {
            failed.push(id.clone());
        }
        return None;
    }
    let delay = backoff(cfg.retry_initial, cfg.retry_max, attempts);
    let next = SystemTime::now() + delay;
    let config_problem = matches!(report.connect_failure, Some(ConnectFailure::Config(_)));
    if config_problem {
        warn!(queue_id = %id, size, rcpts = remaining.len(), attempts, retry_in = %humantime::format_duration(delay), reply = %Printable(&reason), "deferred");
    } else {
        info!(queue_id = %id, size, rcpts = remaining.len(), attempts, retry_in = %humantime::format_duration(delay), reply = %Printable(&reason), "deferred");
    }
    ctx.metrics.message_deferred(&entry.envelope.account);
    ctx.status.deferred(entry, &remaining, &reason);
    let d = Deferral {
        attempts,
        next_attempt: next,
        reason,
        held: false,
        remaining: Some(remaining),
    };
    if let Err(e) = ctx.spool.defer(id, &d) {
        error!(queue_id = %id, "cannot record deferral: {e}");
    }
    Some(to_ms(next))
}

fn join_reasons(list: &[(String, String)]) -> String {
    list.iter()
        .map(|(r, reply)| format!("<{r}>: {reply}"))
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let s = Duration::from_secs;
        assert_eq!(backoff(s(60), s(3600), 1), s(60));
        assert_eq!(backoff(s(60), s(3600), 2), s(120));
        assert_eq!(backoff(s(60), s(3600), 4), s(480));
        assert_eq!(backoff(s(60), s(3600), 10), s(3600));
        assert_eq!(backoff(s(60), s(3600), 500), s(3600));
    }
}
