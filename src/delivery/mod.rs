//! Delivery: the worker that sends spooled mail upstream (schedule, retry with
//! backoff, temporary vs permanent failure, one log line per message event),
//! plus direct mode and the login check built on the same upstream client.
//!
//! The flow: the spool makes a message durable and hands it to the worker
//! ([`crate::spool::Handoff`]); the worker attempts it ([`upstream`]), gets a
//! typed [`DeliveryReport`] ([`reply`]), decides with the pure
//! [`disposition()`] and applies that decision ([`apply`]).
//!
//! - [`upstream`]: connections, TLS, AUTH, pooling, one transaction.
//! - [`starttls`]: the strict plaintext greeting/EHLO/STARTTLS before the handshake.
//! - [`reply`]: typed upstream replies and per-recipient status.
//! - [`outcome`]: error classification, the report, direct-mode replies.
//! - [`disposition`]: what to do after an attempt (pure); [`apply`]: doing it.
//! - [`schedule`]: which message is due next (oldest first, per-account back-off).
//! - [`direct`]: `mode = "direct"`; `mailbridge check` ([`crate::check`]) uses [`connect`].

mod apply;
mod direct;
pub mod disposition;
mod fold;
pub mod limits;
pub mod notify;
pub mod outcome;
mod reply;
mod schedule;
mod starttls;
mod transport;
mod upstream;
mod xoauth2;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info_span, Instrument};

pub use disposition::{backoff, disposition, Attempt, Disposition, Next, Policy};
pub use outcome::{ConnectFailure, DeliveryReport, DirectReply};
pub use reply::{Cause, Reply, Stage, Status};
pub(crate) use transport::account_tls;
pub use upstream::Upstream;
pub(crate) use upstream::{connect, no_password};
pub(crate) use xoauth2::failure as token_failure;

use crate::spool::{to_ms, Durable, EntryState, HoldReason, QueueEntry, QueueId, SpoolError};
use crate::text::Printable;
use crate::Context;
use apply::apply;
use schedule::Schedule;

/// How often the worker re-reads the queue directory: only a safety net for
/// changes `mailbridge queue` makes from another process (retry, release,
/// delete); this process's own messages arrive through the hand-off.
const RESCAN: Duration = Duration::from_secs(5);

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

/// The next message handed over by the spool; pending forever without a receiver.
async fn handed(rx: &mut Option<mpsc::UnboundedReceiver<Durable>>) -> Option<Durable> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The delivery worker: told by the spool's hand-off about each message made
/// durable, woken by timers for retries; on `shutdown` it stops taking
/// messages and finishes the ones in hand (each bounded by the delivery timeout).
pub async fn run(live: Arc<arc_swap::ArcSwap<Context>>, shutdown: CancellationToken) {
    let mut ctx = live.load_full();
    let mut handoff = ctx.wake_delivery.take_receiver();
    let _ = ctx
        .spool
        .blocking(|s| {
            s.recover();
            Ok(())
        })
        .await;
    let cfg = ctx.config.delivery.clone();
    let mut sched = Schedule::new(cfg.retry_initial, cfg.retry_max);
    for f in rescan(&ctx, &mut sched).await {
        notify::failure_notice(&ctx, &f).await;
    }
    let permits = Arc::new(Semaphore::new(cfg.concurrency.max(1)));
    let tasks = TaskTracker::new();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
    let mut next_rescan = tokio::time::Instant::now() + RESCAN;
    loop {
        // A config reload (SIGHUP) takes effect from the next pass.
        ctx = live.load_full();
        let now = crate::spool::now_ms();
        let limits = ctx.upstream.limits();
        sched.refresh_limits(now, |a, n| limits.wait_for(a, n));
        mark_limited(&ctx, &mut sched).await;
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
            _ = ctx.wake_delivery.looked() => {}
            Some((id, account)) = handed(&mut handoff) => sched.add(id, account, 0),
            Some(done) = done_rx.recv() => finish(&mut sched, done),
            _ = tokio::time::sleep_until(wake_at) => {}
        }
        while let Some(Ok((id, account))) = handoff.as_mut().map(|h| h.try_recv()) {
            sched.add(id, account, 0);
        }
        while let Ok(done) = done_rx.try_recv() {
            finish(&mut sched, done);
        }
        if tokio::time::Instant::now() >= next_rescan {
            for f in rescan(&ctx, &mut sched).await {
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
async fn mark_limited(ctx: &Context, sched: &mut Schedule) {
    let policy = Policy::of(&ctx.config.delivery);
    for (id, account) in sched.unmarked_limited() {
        let Ok(e) = ctx.spool.blocking(move |s| s.entry(&id)).await else {
            continue;
        };
        if matches!(e.state, EntryState::Failed | EntryState::OnHold) {
            continue;
        }
        if let Some(full) = ctx.upstream.limits().full(&account, e.remaining.len()) {
            let now = SystemTime::now();
            let attempt = Attempt::DailyLimit {
                until: now + full.wait,
                reason: &full.reason(),
            };
            let d = disposition(&e, attempt, now, policy);
            apply(ctx, &e, None, d).await;
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
async fn rescan(ctx: &Context, sched: &mut Schedule) -> Vec<QueueId> {
    let mut failed = Vec::new();
    let entries = match ctx.spool.blocking(|s| s.list_queued()).await {
        Ok(e) => e,
        Err(e) => {
            error!("cannot read the spool: {}", Printable(&e.to_string()));
            return failed;
        }
    };
    let now = SystemTime::now();
    let policy = Policy::of(&ctx.config.delivery);
    let mut keep = Vec::with_capacity(entries.len());
    // Accounts held for re-authorization, and whether they have a token now.
    let mut reauthorized = std::collections::HashMap::new();
    for e in entries {
        let due = match &e.hold {
            Some(HoldReason::Admin) => continue, // `mailbridge queue hold`: waits for `release`
            // A daily-limit hold is released by the limiter, not by its time.
            Some(HoldReason::DailyLimit { .. }) => 0,
            // Released as soon as `mailbridge auth` has stored a new token.
            Some(HoldReason::NeedsReauthorization { account, .. }) => {
                if !reauthorized.contains_key(account) {
                    let ok = xoauth2::reauthorized(ctx, account).await;
                    reauthorized.insert(account.clone(), ok);
                }
                match reauthorized.get(account) {
                    Some(true) => 0,
                    _ => e.next_attempt.map_or(0, to_ms),
                }
            }
            _ => e.next_attempt.map_or(0, to_ms),
        };
        let down = sched
            .blocked_reason(&e.envelope.account, to_ms(now))
            .map(str::to_string);
        if let Some(why) = down {
            let d = disposition(&e, Attempt::AccountDown(&why), now, policy);
            if d.then != Next::Unchanged {
                failed.extend(apply(ctx, &e, None, d).await);
                sched.remove(&e.id);
                continue;
            }
        }
        keep.push((e.id, e.envelope.account, due));
    }
    sched.reload(keep.into_iter());
    failed
}

/// The attempt's outcome for the scheduler: when the entry is due again
/// (unix ms; `None` once it left the queue) and whether its account is now
/// at its daily limit (until, recipients needed).
fn schedule_after(entry: &QueueEntry, d: &Disposition) -> (Option<u64>, Option<(u64, usize)>) {
    match &d.then {
        Next::Complete | Next::Fail { .. } => (None, None),
        Next::Unchanged => (entry.next_attempt.map(to_ms), None),
        Next::DeferUntil { at, .. } => (Some(to_ms(*at)), None),
        // Looked at as soon as the limiter has room, which the schedule tracks.
        Next::Hold {
            hold: HoldReason::DailyLimit { until_ms },
            ..
        } => (
            Some(crate::spool::now_ms()),
            Some((*until_ms, entry.remaining.len())),
        ),
        Next::Hold { until, .. } => (Some(to_ms(*until)), None),
    }
}

/// Delivers one queued message: loads it, attempts it (unless the account
/// is not usable or at its limit), decides and applies the decision.
async fn deliver_one(ctx: &Context, id: QueueId, account_name: String) -> Done {
    let mut done = Done {
        id: id.clone(),
        account: account_name,
        due_ms: None,
        account_failed: None,
        account_ok: false,
        limited: None,
    };
    let loaded = ctx.spool.blocking(move |s| s.load_queued(&id)).await;
    let (entry, message) = match loaded {
        Ok(x) => x,
        Err(SpoolError::NotFound(_)) | Err(SpoolError::Corrupt { .. }) => return done,
        Err(e) => {
            error!(queue_id = %done.id, "cannot read spooled message: {}", Printable(&e.to_string()));
            done.due_ms = Some(to_ms(SystemTime::now() + ctx.config.delivery.retry_initial));
            return done;
        }
    };
    done.account = entry.envelope.account.clone();
    if entry.state == EntryState::OnHold {
        return done; // `mailbridge queue hold`: not delivered until released
    }
    let policy = Policy::of(&ctx.config.delivery);
    let decide = |attempt: Attempt<'_>| disposition(&entry, attempt, SystemTime::now(), policy);
    let usable = match ctx.config.account(&entry.envelope.account) {
        None => Err(format!(
            "no [[accounts]] entry is named {:?}",
            entry.envelope.account
        )),
        Some(a) if a.oauth2.is_none() && a.password.secret().is_none() => {
            Err(upstream::no_password(a))
        }
        Some(a) => Ok(a),
    };
    let account = match usable {
        Ok(a) => a,
        Err(reason) => {
            let d = decide(Attempt::NotConfigured(&reason));
            return finish_with(ctx, done, &entry, None, d).await;
        }
    };
    let needed = entry.remaining.len();
    let reservation = match ctx.upstream.limits().try_reserve(&account.name, needed) {
        Ok(r) => r,
        Err(full) => {
            // Never sent into the provider's 24 h block: wait in the spool.
            let attempt = Attempt::DailyLimit {
                until: SystemTime::now() + full.wait,
                reason: &full.reason(),
            };
            return finish_with(ctx, done, &entry, None, decide(attempt)).await;
        }
    };
    let started = std::time::Instant::now();
    let report = ctx
        .upstream
        .deliver(account, &entry.envelope, &entry.remaining, &message)
        .await;
    reservation.commit(report.delivered().len()).await;
    // A lost OAuth2 grant holds the mail; it does not back the account off.
    done.account_failed = report
        .connect_failure
        .as_ref()
        .filter(|f| !matches!(f, ConnectFailure::NeedsReauthorization(_)))
        .map(|f| f.reason().to_string());
    done.account_ok = done.account_failed.is_none();
    let last_reply = report.last_reply.as_ref().map(ToString::to_string);
    ctx.metrics.delivery_attempt(
        &account.name,
        started.elapsed(),
        done.account_failed.as_deref(),
        last_reply.as_deref(),
    );
    let d = decide(Attempt::Sent(&report));
    finish_with(ctx, done, &entry, Some(Arc::new(message)), d).await
}

/// Applies `d`, sends the notices it calls for, and fills in `done` for the scheduler.
async fn finish_with(
    ctx: &Context,
    mut done: Done,
    entry: &QueueEntry,
    message: Option<Arc<Vec<u8>>>,
    d: Disposition,
) -> Done {
    (done.due_ms, done.limited) = schedule_after(entry, &d);
    for f in apply(ctx, entry, message, d).await {
        notify::failure_notice(ctx, &f).await;
    }
    done
}
