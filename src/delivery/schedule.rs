//! The worker's in-memory schedule: which queued message is due next (oldest
//! first), which are in flight, and per-account back-off after a connection
//! failure (so an outage costs one attempt per interval, not one per message,
//! and acceptance order is kept when the upstream comes back).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use crate::spool::QueueId;

pub(super) struct Schedule {
    /// Waiting messages by id (ids sort by receipt time): (account, due unix ms).
    waiting: BTreeMap<QueueId, (String, u64)>,
    in_flight: HashSet<QueueId>,
    /// Account -> (blocked until unix ms, consecutive connection failures, reason).
    blocked: HashMap<String, (u64, u32, String)>,
    /// Account -> (at its daily limit until unix ms, recipients the next message needs).
    limited: HashMap<String, (u64, usize)>,
    /// Waiting messages already marked held for their account's daily limit.
    limit_marked: HashSet<QueueId>,
    initial: Duration,
    max: Duration,
}

impl Schedule {
    pub fn new(initial: Duration, max: Duration) -> Schedule {
        Schedule {
            waiting: BTreeMap::new(),
            in_flight: HashSet::new(),
            blocked: HashMap::new(),
            limited: HashMap::new(),
            limit_marked: HashSet::new(),
            initial,
            max,
        }
    }

    /// Adds (or updates) a waiting message, unless it is being delivered.
    pub fn add(&mut self, id: QueueId, account: String, due_ms: u64) {
        if !self.in_flight.contains(&id) {
            self.waiting.insert(id, (account, due_ms));
        }
    }

    /// Replaces the waiting set with what is on disk (in-flight ones excepted).
    pub fn reload(&mut self, entries: impl Iterator<Item = (QueueId, String, u64)>) {
        self.waiting = entries
            .filter(|(id, _, _)| !self.in_flight.contains(id))
            .map(|(id, a, due)| (id, (a, due)))
            .collect();
    }

    fn blocked_until(&self, account: &str) -> u64 {
        let limited = self.limited.get(account).map_or(0, |(until, _)| *until);
        self.blocked
            .get(account)
            .map_or(0, |(until, _, _)| *until)
            .max(limited)
    }

    /// `account` reached its daily limit: its messages wait until `until_ms`
    /// (or until [`Schedule::refresh_limits`] finds room earlier).
    pub fn limit(&mut self, account: String, until_ms: u64, needed: usize) {
        self.limited.insert(account, (until_ms, needed));
    }

    /// Waiting messages of accounts at their daily limit not marked yet
    /// (the caller marks them held, so `queue list` says why they wait).
    pub fn unmarked_limited(&mut self) -> Vec<(QueueId, String)> {
        let out: Vec<(QueueId, String)> = self
            .waiting
            .iter()
            .filter(|(id, (a, _))| self.limited.contains_key(a) && !self.limit_marked.contains(*id))
            .map(|(id, (a, _))| (id.clone(), a.clone()))
            .collect();
        self.limit_marked
            .extend(out.iter().map(|(id, _)| id.clone()));
        out
    }

    /// Re-asks `wait_for(account, needed)` for every limited account (the
    /// limiter's clock may have moved differently from ours).
    pub fn refresh_limits(
        &mut self,
        now_ms: u64,
        wait_for: impl Fn(&str, usize) -> Option<Duration>,
    ) {
        self.limited.retain(
            |account, (until, needed)| match wait_for(account, *needed) {
                None => false,
                Some(w) => {
                    *until = now_ms.saturating_add(w.as_millis() as u64);
                    true
                }
            },
        );
    }

    /// Why `account` is backing off, if it is.
    pub fn blocked_reason(&self, account: &str, now_ms: u64) -> Option<&str> {
        self.blocked
            .get(account)
            .filter(|(until, _, _)| *until > now_ms)
            .map(|(_, _, why)| why.as_str())
    }

    /// Forgets a waiting message (it left the queue).
    pub fn remove(&mut self, id: &QueueId) {
        self.waiting.remove(id);
        self.limit_marked.remove(id);
    }

    /// The oldest message that is due and whose account is not backing off; it
    /// becomes in flight.
    pub fn next_due(&mut self, now_ms: u64) -> Option<(QueueId, String)> {
        let id = self
            .waiting
            .iter()
            .find(|(_, (account, due))| *due <= now_ms && self.blocked_until(account) <= now_ms)
            .map(|(id, _)| id.clone())?;
        let (account, _) = self.waiting.remove(&id)?;
        self.limit_marked.remove(&id);
        self.in_flight.insert(id.clone());
        Some((id, account))
    }

    /// When something next becomes due (unix ms), if anything waits.
    pub fn next_wake(&self) -> Option<u64> {
        self.waiting
            .values()
            .map(|(account, due)| (*due).max(self.blocked_until(account)))
            .min()
    }

    /// A delivery task ended: reschedule it if it is still queued, and update
    /// the account's back-off.
    pub fn finish(
        &mut self,
        id: QueueId,
        account: String,
        due_ms: Option<u64>,
        account_failed: Option<String>,
        account_ok: bool,
    ) {
        self.in_flight.remove(&id);
        if let Some(why) = account_failed {
            let failures = self.blocked.get(&account).map_or(0, |(_, f, _)| *f) + 1;
            let wait = super::backoff(self.initial, self.max, failures);
            let until = crate::spool::now_ms() + wait.as_millis() as u64;
            self.blocked.insert(account.clone(), (until, failures, why));
        } else if account_ok {
            self.blocked.remove(&account);
        }
        if let Some(due) = due_ms {
            self.waiting.insert(id, (account, due));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> QueueId {
        QueueId(s.into())
    }

    #[test]
    fn oldest_due_first_and_accounts_back_off() {
        let mut s = Schedule::new(Duration::from_secs(60), Duration::from_secs(3600));
        s.add(id("02"), "a".into(), 0);
        s.add(id("01"), "a".into(), 0);
        s.add(id("03"), "b".into(), 0);
        let (first, _) = s.next_due(10).unwrap();
        assert_eq!(first, id("01"));
        // The account's connection failed: its other messages wait, b's do not.
        s.finish(
            first,
            "a".into(),
            Some(crate::spool::now_ms() + 60_000),
            Some("down".into()),
            false,
        );
        let now = crate::spool::now_ms();
        assert_eq!(s.next_due(now).unwrap().0, id("03"));
        assert!(s.next_due(now).is_none());
        assert!(s.next_wake().unwrap() >= now + 59_000);
        assert_eq!(s.blocked_reason("a", now), Some("down"));
        // Once the account works again, acceptance order is kept.
        s.blocked.clear();
        assert!(s.next_due(now).unwrap().0 == id("02"));
        assert!(s.next_due(now + 61_000).unwrap().0 == id("01"));
    }

    #[test]
    fn a_limited_account_waits_until_the_limiter_has_room() {
        let mut s = Schedule::new(Duration::from_secs(1), Duration::from_secs(8));
        s.add(id("01"), "a".into(), 0);
        s.add(id("02"), "a".into(), 0);
        s.add(id("03"), "b".into(), 0);
        s.limit("a".into(), 86_400_000, 1);
        assert_eq!(s.unmarked_limited().len(), 2);
        assert!(s.unmarked_limited().is_empty(), "marked once");
        assert_eq!(s.next_due(10).unwrap().0, id("03"));
        assert!(s.next_due(10).is_none());
        assert_eq!(s.next_wake(), Some(86_400_000));
        s.refresh_limits(10, |_, _| Some(Duration::from_secs(5)));
        assert_eq!(s.next_wake(), Some(5_010));
        s.refresh_limits(10, |_, _| None);
        assert_eq!(s.next_due(10).unwrap().0, id("01"));
    }

    #[test]
    fn in_flight_is_not_added_twice() {
        let mut s = Schedule::new(Duration::from_secs(1), Duration::from_secs(8));
        s.add(id("01"), "a".into(), 0);
        let (x, _) = s.next_due(1).unwrap();
        s.add(x.clone(), "a".into(), 0);
        s.reload(vec![(x.clone(), "a".to_string(), 0)].into_iter());
        assert!(s.next_due(1).is_none());
        s.finish(x, "a".into(), None, None, true);
        assert!(s.next_wake().is_none());
    }
}
