//! The status page's memory: a bounded ring of the last events (accepted,
//! delivered, deferred, failed) and the hourly delivered/deferred/failed
//! counts of the last 24 hours. Pure data structures; the clock is passed in.

use std::collections::VecDeque;
use std::time::{SystemTime, UNIX_EPOCH};

/// Events kept for the page (older ones are dropped).
pub const RING_CAPACITY: usize = 200;
/// Hours the chart covers.
pub const HOURS: usize = 24;
/// Longest reply kept per event (characters).
const MAX_REPLY: usize = 300;
/// Recipients kept per event (the rest are counted).
const MAX_RECIPIENTS: usize = 10;

/// What happened to a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Accepted,
    Delivered,
    Deferred,
    Failed,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Accepted => "accepted",
            EventKind::Delivered => "delivered",
            EventKind::Deferred => "deferred",
            EventKind::Failed => "failed",
        }
    }
}

/// One event as the page shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub at: SystemTime,
    pub kind: EventKind,
    pub queue_id: String,
    pub account: String,
    /// Up to [`MAX_RECIPIENTS`] recipients.
    pub recipients: Vec<String>,
    /// Recipients beyond those kept.
    pub more_recipients: usize,
    /// The provider's reply or the reason (bounded).
    pub reply: String,
    /// How many times in a row this happened (retries during an outage are
    /// folded into one event, `at` is the latest).
    pub repeats: u32,
}

impl Event {
    pub fn new(
        at: SystemTime,
        kind: EventKind,
        queue_id: &str,
        account: &str,
        recipients: &[String],
        reply: &str,
    ) -> Event {
        Event {
            at,
            kind,
            queue_id: queue_id.to_string(),
            account: account.to_string(),
            recipients: recipients.iter().take(MAX_RECIPIENTS).cloned().collect(),
            more_recipients: recipients.len().saturating_sub(MAX_RECIPIENTS),
            reply: reply.chars().take(MAX_REPLY).collect(),
            repeats: 1,
        }
    }
}

/// The last [`RING_CAPACITY`] events.
#[derive(Debug, Default)]
pub struct Ring {
    events: VecDeque<Event>,
}

impl Ring {
    /// Adds `e`; the same outcome of the same message as the newest event
    /// (a retry that failed the same way) only counts up that event.
    pub fn push(&mut self, e: Event) {
        if let Some(last) = self.events.back_mut() {
            if (last.kind, &last.queue_id, &last.account, &last.reply)
                == (e.kind, &e.queue_id, &e.account, &e.reply)
            {
                last.at = e.at;
                last.repeats = last.repeats.saturating_add(1);
                return;
            }
        }
        if self.events.len() == RING_CAPACITY {
            self.events.pop_front();
        }
        self.events.push_back(e);
    }

    /// Newest first.
    pub fn newest_first(&self) -> Vec<Event> {
        self.events.iter().rev().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

/// Delivered, deferred and failed in one hour.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HourCounts {
    pub delivered: u32,
    pub deferred: u32,
    pub failed: u32,
}

impl HourCounts {
    pub fn max(&self) -> u32 {
        self.delivered.max(self.deferred).max(self.failed)
    }
}

/// Counts per hour since the epoch, only the last [`HOURS`] kept.
#[derive(Debug, Default)]
pub struct Hourly {
    buckets: VecDeque<(u64, HourCounts)>,
}

/// The hour (since the Unix epoch) `t` falls in.
pub fn hour_of(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 3600)
}

impl Hourly {
    /// Counts `kind` in the hour of `at` (accepted events are not charted).
    pub fn add(&mut self, at: SystemTime, kind: EventKind) {
        let hour = hour_of(at);
        let slot = match self.buckets.iter_mut().find(|(h, _)| *h == hour) {
            Some((_, c)) => c,
            None => {
                self.buckets.push_back((hour, HourCounts::default()));
                self.buckets.make_contiguous().sort_by_key(|(h, _)| *h);
                while self.buckets.len() > HOURS {
                    self.buckets.pop_front();
                }
                match self.buckets.iter_mut().find(|(h, _)| *h == hour) {
                    Some((_, c)) => c,
                    None => return, // older than every kept hour
                }
            }
        };
        match kind {
            EventKind::Delivered => slot.delivered += 1,
            EventKind::Deferred => slot.deferred += 1,
            EventKind::Failed => slot.failed += 1,
            EventKind::Accepted => {}
        }
    }

    /// The last [`HOURS`] hours ending with the hour of `now`, oldest first
    /// (hours without events are zero).
    pub fn last_24(&self, now: SystemTime) -> Vec<HourCounts> {
        last_24(self.buckets.iter().copied(), hour_of(now))
    }
}

/// The [`HOURS`] hours ending with `now_hour`, oldest first, from sparse buckets.
pub fn last_24(buckets: impl Iterator<Item = (u64, HourCounts)>, now_hour: u64) -> Vec<HourCounts> {
    let mut out = vec![HourCounts::default(); HOURS];
    let first = now_hour.saturating_sub(HOURS as u64 - 1);
    for (h, c) in buckets {
        if (first..=now_hour).contains(&h) {
            out[(h - first) as usize] = c;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(hours: u64, secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_000_000 * 3600 + hours * 3600 + secs)
    }

    fn ev(n: usize) -> Event {
        Event::new(
            at(0, 0),
            EventKind::Accepted,
            &format!("q{n}"),
            "a",
            &[],
            "",
        )
    }

    #[test]
    fn ring_is_bounded_and_newest_first() {
        let mut r = Ring::default();
        assert!(r.is_empty());
        for n in 0..RING_CAPACITY + 5 {
            r.push(ev(n));
        }
        assert_eq!(r.len(), RING_CAPACITY);
        let list = r.newest_first();
        assert_eq!(list[0].queue_id, format!("q{}", RING_CAPACITY + 4));
        assert_eq!(list[RING_CAPACITY - 1].queue_id, "q5");
    }

    #[test]
    fn the_same_retry_outcome_folds_into_one_event() {
        let mut r = Ring::default();
        let deferred =
            |secs| Event::new(at(0, secs), EventKind::Deferred, "q1", "a", &[], "451 busy");
        r.push(deferred(1));
        r.push(deferred(2));
        r.push(deferred(3));
        assert_eq!(r.len(), 1);
        let e = &r.newest_first()[0];
        assert_eq!((e.repeats, e.at), (3, at(0, 3)));
        // Another reply, another message or another outcome is a new event.
        r.push(Event::new(
            at(0, 4),
            EventKind::Deferred,
            "q1",
            "a",
            &[],
            "421 down",
        ));
        r.push(Event::new(
            at(0, 5),
            EventKind::Deferred,
            "q2",
            "a",
            &[],
            "421 down",
        ));
        r.push(Event::new(
            at(0, 6),
            EventKind::Delivered,
            "q2",
            "a",
            &[],
            "421 down",
        ));
        assert_eq!(r.len(), 4);
    }

    #[test]
    fn events_bound_recipients_and_replies() {
        let rcpts: Vec<String> = (0..15).map(|i| format!("r{i}@x")).collect();
        let e = Event::new(
            at(0, 0),
            EventKind::Failed,
            "q",
            "a",
            &rcpts,
            &"x".repeat(5000),
        );
        assert_eq!(e.recipients.len(), 10);
        assert_eq!(e.more_recipients, 5);
        assert_eq!(e.reply.chars().count(), MAX_REPLY);
    }

    #[test]
    fn hourly_counts_fall_in_their_hour_and_old_hours_drop_out() {
        let mut h = Hourly::default();
        h.add(at(0, 10), EventKind::Delivered);
        h.add(at(0, 3599), EventKind::Delivered);
        h.add(at(1, 0), EventKind::Deferred);
        h.add(at(5, 0), EventKind::Failed);
        h.add(at(5, 1), EventKind::Accepted);
        let l = h.last_24(at(5, 100));
        assert_eq!(l.len(), HOURS);
        assert_eq!(l[HOURS - 1].failed, 1);
        assert_eq!(l[HOURS - 5].deferred, 1);
        assert_eq!(l[HOURS - 6].delivered, 2);
        assert_eq!(l[HOURS - 6].max(), 2);
        // A day later the first hour is out of the window.
        let l = h.last_24(at(24, 0));
        assert_eq!(l.iter().map(|c| c.delivered).sum::<u32>(), 0);
        assert_eq!(l.iter().map(|c| c.deferred).sum::<u32>(), 1);
        // Memory stays bounded over many hours.
        for i in 0..100 {
            h.add(at(10 + i, 0), EventKind::Delivered);
        }
        assert!(h.buckets.len() <= HOURS);
        assert_eq!(
            h.last_24(at(109, 0))
                .iter()
                .map(|c| c.delivered)
                .sum::<u32>(),
            24
        );
    }
}
