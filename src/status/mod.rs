//! The status page (`GET /` on the metrics listener): what it remembers
//! ([`events`]: the last events and hourly counts, fed by the SMTP session
//! and the delivery worker), the [`Snapshot`] of everything it shows
//! (collected from the spool, the limits and the metrics off the runtime
//! threads), and the pure HTML rendering ([`render`]).
//!
//! One [`Status`] lives for the whole process and survives config reloads
//! (it is shared by every [`crate::Context`], like the metrics). The page is
//! read-only: nothing it serves changes the queue.

pub mod events;
pub mod render;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::metrics::UpstreamStatus;
use crate::spool::{EntryState, Envelope, QueueEntry, QueueId};
use crate::Context;
pub use events::{Event, EventKind, HourCounts};

/// Seconds between the page's own reloads (meta refresh).
pub const REFRESH_SECS: u32 = 10;

/// The in-memory state behind the page.
#[derive(Default)]
pub struct Status {
    inner: Mutex<Inner>,
    listeners: Mutex<Vec<ListenerCounter>>,
}

#[derive(Default)]
struct Inner {
    ring: events::Ring,
    hourly: events::Hourly,
    accounts: BTreeMap<String, AccountMemory>,
}

/// The last delivery and the last error of one account (time, reply).
#[derive(Debug, Clone, Default)]
struct AccountMemory {
    last_delivered: Option<(SystemTime, String)>,
    last_error: Option<(SystemTime, String)>,
    /// The last error was a deferral (the account's problem), not a failure.
    last_error_temporary: bool,
}

/// Sessions open on one listener.
#[derive(Clone)]
pub struct ListenerCounter {
    name: &'static str,
    addr: SocketAddr,
    open: Arc<AtomicI64>,
}

impl ListenerCounter {
    /// Counts one session until the guard is dropped.
    pub fn enter(&self) -> SessionGuard {
        self.open.fetch_add(1, Ordering::Relaxed);
        SessionGuard(self.open.clone())
    }
}

/// Decrements its listener's session count when dropped.
pub struct SessionGuard(Arc<AtomicI64>);

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Status {
    pub fn new() -> Status {
        Status::default()
    }

    /// Records one event: into the ring, the hourly counts, and the
    /// account's last delivery or last error.
    pub fn record(
        &self,
        kind: EventKind,
        queue_id: &dyn std::fmt::Display,
        account: &str,
        recipients: &[String],
        reply: &str,
    ) {
        let now = SystemTime::now();
        let event = Event::new(now, kind, &queue_id.to_string(), account, recipients, reply);
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        if matches!(
            kind,
            EventKind::Delivered | EventKind::Deferred | EventKind::Failed
        ) {
            inner.hourly.add(now, kind);
            let mem = inner.accounts.entry(account.to_string()).or_default();
            let slot = match kind {
                EventKind::Delivered => &mut mem.last_delivered,
                _ => &mut mem.last_error,
            };
            *slot = Some((now, event.reply.clone()));
            if kind != EventKind::Delivered {
                mem.last_error_temporary = kind == EventKind::Deferred;
            }
        }
        inner.ring.push(event);
    }

    /// An SMTP client's message was spooled.
    pub fn accepted(&self, id: &QueueId, envelope: &Envelope) {
        self.record(
            EventKind::Accepted,
            id,
            &envelope.account,
            &envelope.recipients,
            "",
        );
    }

    /// `e` was deferred for `rcpts` (will be retried).
    pub fn deferred(&self, e: &QueueEntry, rcpts: &[String], reply: &str) {
        self.message(EventKind::Deferred, e, rcpts, reply);
    }

    /// `e` failed for `rcpts` (moved to the failed area).
    pub fn failed(&self, e: &QueueEntry, rcpts: &[String], reply: &str) {
        self.message(EventKind::Failed, e, rcpts, reply);
    }

    /// `e` was delivered to `rcpts`, the upstream saying `reply`.
    pub fn delivered(&self, e: &QueueEntry, rcpts: &[String], reply: &str) {
        self.message(EventKind::Delivered, e, rcpts, reply);
    }

    fn message(&self, kind: EventKind, e: &QueueEntry, rcpts: &[String], reply: &str) {
        self.record(kind, &e.id, &e.envelope.account, rcpts, reply);
    }

    /// Some recipients of `e` were refused; they are in the failed area as `failed_id`.
    pub fn refused(
        &self,
        failed_id: &QueueId,
        e: &QueueEntry,
        refused: &[(String, String)],
        reply: &str,
    ) {
        let rcpts: Vec<String> = refused.iter().map(|(r, _)| r.clone()).collect();
        self.record(
            EventKind::Failed,
            failed_id,
            &e.envelope.account,
            &rcpts,
            reply,
        );
    }

    /// Registers a listener; its sessions are counted with [`ListenerCounter::enter`].
    pub fn listener(&self, name: &'static str, addr: SocketAddr) -> ListenerCounter {
        let c = ListenerCounter {
            name,
            addr,
            open: Arc::new(AtomicI64::new(0)),
        };
        if let Ok(mut l) = self.listeners.lock() {
            l.push(c.clone());
        }
        c
    }

    fn listener_views(&self) -> Vec<ListenerView> {
        self.listeners
            .lock()
            .map(|l| {
                l.iter()
                    .map(|c| ListenerView {
                        name: c.name.to_string(),
                        addr: c.addr.to_string(),
                        sessions: c.open.load(Ordering::Relaxed),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Everything the page shows, taken at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub now: SystemTime,
    pub version: String,
    pub accounts: Vec<AccountView>,
    pub listeners: Vec<ListenerView>,
    /// Newest first.
    pub events: Vec<Event>,
    /// The last 24 hours, oldest first.
    pub hourly: Vec<HourCounts>,
    /// Set when the spool could not be listed (counts are then missing).
    pub spool_error: Option<String>,
    pub refresh_secs: u32,
}

/// One account's row.
#[derive(Debug, Clone, Default)]
pub struct AccountView {
    pub name: String,
    /// In the current config (an unknown name only has mail in the spool).
    pub configured: bool,
    pub last_delivered: Option<(SystemTime, String)>,
    pub last_error: Option<(SystemTime, String)>,
    /// The last error was a deferral (will be retried), not a permanent failure.
    pub last_error_temporary: bool,
    /// What `check` would suggest for the last error (or the upstream's).
    pub hint: Option<&'static str>,
    /// The last connection outcome (login reached or not).
    pub upstream: Option<UpstreamStatus>,
    pub queue: QueueCounts,
    /// Recipients sent in the last 24 h and the `daily_limit`.
    pub daily: Option<(u32, u32)>,
}

/// One account's messages in the spool.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueCounts {
    pub queued: usize,
    pub deferred: usize,
    /// Held (a configuration problem or the daily limit) and on hold (by
    /// `mailbridge queue hold`): (reason, count), most frequent first.
    pub held: Vec<(String, usize)>,
    pub failed: usize,
    /// Age of the oldest message waiting (not counting failed ones).
    pub oldest: Option<Duration>,
}

impl QueueCounts {
    pub fn held_total(&self) -> usize {
        self.held.iter().map(|(_, n)| n).sum()
    }
}

/// One listener's row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerView {
    pub name: String,
    pub addr: String,
    pub sessions: i64,
}

/// What the page says about a message put on hold by the admin.
pub const ON_HOLD_REASON: &str =
    "on hold (mailbridge queue hold); release with mailbridge queue release";

/// Per-account counts from the spool listing (the one `queue list` uses).
pub fn summarize_queue(
    waiting: &[QueueEntry],
    failed: &[QueueEntry],
    now: SystemTime,
) -> BTreeMap<String, QueueCounts> {
    let mut out: BTreeMap<String, QueueCounts> = BTreeMap::new();
    let mut held: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    for e in waiting {
        let c = out.entry(e.envelope.account.clone()).or_default();
        match e.state {
            EntryState::Queued => c.queued += 1,
            EntryState::Deferred => c.deferred += 1,
            EntryState::Held | EntryState::OnHold => {
                let reason = match e.state {
                    EntryState::OnHold => ON_HOLD_REASON.to_string(),
                    _ => e.last_error.clone().unwrap_or_else(|| "held".into()),
                };
                *held
                    .entry(e.envelope.account.clone())
                    .or_default()
                    .entry(reason)
                    .or_default() += 1;
            }
            EntryState::Failed => c.failed += 1,
        }
        let age = now.duration_since(e.received_at).unwrap_or_default();
        c.oldest = Some(c.oldest.map_or(age, |o| o.max(age)));
    }
    for e in failed {
        out.entry(e.envelope.account.clone()).or_default().failed += 1;
    }
    for (account, reasons) in held {
        let mut list: Vec<(String, usize)> = reasons.into_iter().collect();
        list.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        if let Some(c) = out.get_mut(&account) {
            c.held = list;
        }
    }
    out
}

/// The hint `check` would give for an upstream error text, if any (the
/// shared lookup in [`crate::hints`]).
pub fn hint(text: &str) -> Option<&'static str> {
    crate::hints::for_stored_text(text)
}

/// Collects the snapshot: lists the spool (blocking file I/O: call it from
/// `spawn_blocking`), reads the limits, the metrics and the ring.
pub fn collect(ctx: &Context) -> Snapshot {
    let now = SystemTime::now();
    let listing = ctx
        .spool
        .list_queued()
        .and_then(|w| Ok((w, ctx.spool.list_failed()?)));
    let (queues, spool_error) = match listing {
        Ok((waiting, failed)) => (summarize_queue(&waiting, &failed, now), None),
        Err(e) => (BTreeMap::new(), Some(e.to_string())),
    };
    let (events, hourly, memory) = match ctx.status.inner.lock() {
        Ok(i) => (
            i.ring.newest_first(),
            i.hourly.last_24(now),
            i.accounts.clone(),
        ),
        Err(_) => (
            Vec::new(),
            vec![HourCounts::default(); events::HOURS],
            BTreeMap::new(),
        ),
    };
    let upstreams = ctx.metrics.upstreams();
    let limits = ctx.upstream.limits();
    let mut names: Vec<String> = ctx.config.accounts.iter().map(|a| a.name.clone()).collect();
    for name in queues.keys().chain(memory.keys()) {
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    let accounts = names
        .into_iter()
        .map(|name| {
            let mem = memory.get(&name).cloned().unwrap_or_default();
            let upstream = upstreams.get(&name).cloned();
            let unreachable = upstream
                .as_ref()
                .filter(|u| !u.reachable)
                .map(|u| u.detail.as_str());
            let hint = mem
                .last_error
                .as_ref()
                .and_then(|(_, e)| hint(e))
                .or_else(|| unreachable.and_then(hint));
            AccountView {
                configured: ctx.config.account(&name).is_some(),
                daily: limits.limit(&name).map(|l| (limits.used(&name), l)),
                queue: queues.get(&name).cloned().unwrap_or_default(),
                last_delivered: mem.last_delivered,
                last_error: mem.last_error,
                last_error_temporary: mem.last_error_temporary,
                hint,
                upstream,
                name,
            }
        })
        .collect();
    Snapshot {
        now,
        version: env!("CARGO_PKG_VERSION").to_string(),
        accounts,
        listeners: ctx.status.listener_views(),
        events,
        hourly,
        spool_error,
        refresh_secs: REFRESH_SECS,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(account: &str, state: EntryState, age_secs: u64, error: Option<&str>) -> QueueEntry {
        let now = SystemTime::now();
        QueueEntry {
            id: QueueId(format!("{account}-{age_secs}")),
            envelope: Envelope {
                account: account.into(),
                mail_from: "a@b".into(),
                recipients: vec!["c@d".into()],
                client: "127.0.0.1".into(),
                helo: "h".into(),
                local_user: None,
                smtputf8: false,
                body_8bit: false,
            },
            state,
            attempts: 0,
            next_attempt: None,
            last_error: error.map(str::to_string),
            received_at: now - Duration::from_secs(age_secs),
            queued_since: now - Duration::from_secs(age_secs),
            size: 10,
            remaining: vec!["c@d".into()],
            failed_at: None,
            hold: None,
        }
    }

    #[test]
    fn queue_counts_by_account_and_state_with_held_reasons() {
        let waiting = [
            entry("a", EntryState::Queued, 5, None),
            entry("a", EntryState::Deferred, 50, Some("451 later")),
            entry("a", EntryState::Held, 7, Some("no password")),
            entry("a", EntryState::Held, 8, Some("no password")),
            entry("a", EntryState::OnHold, 9, Some("451 later")),
            entry("b", EntryState::Queued, 1, None),
        ];
        let failed = [entry("b", EntryState::Failed, 1000, Some("550 no"))];
        let now = SystemTime::now();
        let s = summarize_queue(&waiting, &failed, now);
        let a = &s["a"];
        assert_eq!(
            (a.queued, a.deferred, a.failed, a.held_total()),
            (1, 1, 0, 3)
        );
        assert_eq!(a.held[0], ("no password".to_string(), 2));
        assert_eq!(a.held[1], (ON_HOLD_REASON.to_string(), 1));
        assert!(a.oldest.unwrap() >= Duration::from_secs(50));
        let b = &s["b"];
        assert_eq!((b.queued, b.failed), (1, 1));
        // Failed messages do not count as waiting.
        assert!(b.oldest.unwrap() < Duration::from_secs(100));
        assert!(summarize_queue(&[], &[], now).is_empty());
    }

    #[test]
    fn hints_follow_check() {
        assert!(hint("connect to x: Connection refused")
            .unwrap()
            .contains("smtp.port"));
        assert_eq!(
            hint("535 5.7.8 bad credentials"),
            Some(crate::hints::AUTH_HINT)
        );
        assert_eq!(hint("451 4.3.0 try later"), None);
        assert_eq!(
            hint("expired after 1h in the queue; last error: 451 4.3.0 busy"),
            None
        );
    }

    #[test]
    fn record_keeps_last_delivery_and_error_per_account() {
        let s = Status::new();
        let id = QueueId("q1".into());
        s.record(EventKind::Accepted, &id, "a", &["x@y".into()], "");
        s.record(EventKind::Deferred, &id, "a", &["x@y".into()], "451 later");
        s.record(EventKind::Delivered, &id, "a", &["x@y".into()], "250 ok");
        let inner = s.inner.lock().unwrap();
        let m = &inner.accounts["a"];
        assert_eq!(m.last_delivered.as_ref().unwrap().1, "250 ok");
        assert_eq!(m.last_error.as_ref().unwrap().1, "451 later");
        assert!(m.last_error_temporary);
        let list = inner.ring.newest_first();
        assert_eq!(list.len(), 3);
        assert_eq!(list[0].kind, EventKind::Delivered);
        let h = inner.hourly.last_24(SystemTime::now());
        assert_eq!(
            h[events::HOURS - 1],
            HourCounts {
                delivered: 1,
                deferred: 1,
                failed: 0
            }
        );
    }

    #[test]
    fn listener_sessions_count_while_guards_live() {
        let s = Status::new();
        let c = s.listener("smtp", "127.0.0.1:25".parse().unwrap());
        let g1 = c.enter();
        let _g2 = c.enter();
        assert_eq!(s.listener_views()[0].sessions, 2);
        drop(g1);
        assert_eq!(s.listener_views()[0].sessions, 1);
    }
}
