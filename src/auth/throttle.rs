//! Login throttling for every protocol that checks a password (SMTP AUTH,
//! IMAP LOGIN/AUTHENTICATE, any later one): at most a few attempts in flight
//! per client address, a growing delay before verifying, and a block of the
//! (address, user name) pair being guessed. The decisions are in [`Ledger`]
//! (pure, the clock passed in); [`Throttle`] does the waiting.
//!
//! An attempt is reserved atomically with the block check and counted while
//! it runs, so parallel guesses cannot all pass the check before the first
//! failure is recorded: an in-flight attempt counts as a failure until it
//! ends. The address as a whole is only slowed, never refused, because every
//! local program shares 127.0.0.1.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::warn;

/// Failures inside this window count together.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(10 * 60);
/// After this many failures for one user name from one address in the
/// window, that pair is refused without verifying...
pub const FAILURES_BEFORE_BLOCK: u32 = 10;
/// ...for this long.
pub const BLOCK_FOR: Duration = Duration::from_secs(15 * 60);
/// Login attempts from one address being delayed or verified at once. The
/// argon2 queue is first come, first served, so a login from another address
/// waits behind at most this many checks per busy address, however many
/// connections a flooding address opens.
pub const MAX_IN_FLIGHT_PER_ADDRESS: u32 = 2;
/// How long an attempt over the per-address cap waits for its turn before it
/// gets a temporary refusal.
pub const MAX_WAIT: Duration = Duration::from_secs(30);
/// Attempts from one address waiting for a place at most; beyond it new
/// ones get a temporary refusal at once.
pub const MAX_QUEUE_PER_ADDRESS: usize = 256;
/// Delay before the attempt after the first failure; it doubles per failure...
const FIRST_DELAY: Duration = Duration::from_millis(250);
/// ...up to this.
const MAX_DELAY: Duration = Duration::from_secs(8);
/// The address as a whole is slowed one delay step per this many failures
/// (for any user names), so a spray of names is slowed too.
const ADDRESS_FAILURES_PER_STEP: u32 = FAILURES_BEFORE_BLOCK;
/// Beyond this many records, finished ones are dropped.
const MAX_RECORDS: usize = 100_000;

/// One client address and the user name it tries. The name is kept as a
/// digest: records stay small whatever a client sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PairKey {
    ip: IpAddr,
    user: [u8; 16],
}

impl PairKey {
    pub fn new(ip: IpAddr, user: &str) -> Self {
        let digest = Sha256::digest(user.as_bytes());
        let mut short = [0u8; 16];
        short.copy_from_slice(&digest[..16]);
        PairKey { ip, user: short }
    }

    pub fn ip(&self) -> IpAddr {
        self.ip
    }
}

/// A place in an address's queue of waiting attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    key: PairKey,
    number: u64,
}

/// What to do with a login attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Reserved: wait this long (holding the reservation), then verify.
    Go { delay: Duration },
    /// Queued behind earlier attempts or the ones in flight: ask again with
    /// [`Ledger::retry`] when an attempt ends.
    Wait(Ticket),
    /// The address's queue is full: refuse for now.
    Full,
    /// The pair is blocked: refuse without verifying.
    Blocked,
}

/// Why a login was not accepted; each protocol maps it to its reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// Verified and wrong.
    Failed,
    /// The (address, user) pair is blocked; nothing was verified, unless
    /// `now`: this attempt's failure started the block.
    Blocked { now: bool },
    /// Waited longer than [`MAX_WAIT`] for a place, or the address's queue
    /// is full: try again later.
    Busy,
}

impl Denied {
    /// Was a password checked and found wrong (for the failure counters)?
    pub fn was_verified(self) -> bool {
        matches!(self, Denied::Failed | Denied::Blocked { now: true })
    }
}

/// Failures and attempts in flight, for an address or a pair.
#[derive(Debug, Clone, Copy)]
struct Counts {
    in_flight: u32,
    failures: u32,
    since: Instant,
}

impl Counts {
    fn new(now: Instant) -> Self {
        Counts {
            in_flight: 0,
            failures: 0,
            since: now,
        }
    }

    /// Forgets failures older than the window.
    fn refresh(&mut self, now: Instant) {
        if now.duration_since(self.since) > FAILURE_WINDOW {
            self.failures = 0;
            self.since = now;
        }
    }

    fn fail(&mut self, now: Instant) {
        self.refresh(now);
        self.failures += 1;
    }

    fn is_live(&self, now: Instant) -> bool {
        self.in_flight > 0
            || (self.failures > 0 && now.duration_since(self.since) <= FAILURE_WINDOW)
    }
}

#[derive(Debug, Clone, Copy)]
struct Pair {
    counts: Counts,
    blocked_until: Option<Instant>,
}

impl Pair {
    fn new(now: Instant) -> Self {
        Pair {
            counts: Counts::new(now),
            blocked_until: None,
        }
    }

    fn is_blocked(&self, now: Instant) -> bool {
        self.blocked_until.is_some_and(|t| t > now)
    }

    /// Ends an expired block (with its failures) and forgets old failures.
    fn refresh(&mut self, now: Instant) {
        if self.blocked_until.is_some_and(|t| t <= now) {
            self.blocked_until = None;
            self.counts.failures = 0;
            self.counts.since = now;
        }
        if self.blocked_until.is_none() {
            self.counts.refresh(now);
        }
    }
}

/// The delay before an attempt that follows `failures` failures.
fn delay_after(failures: u32) -> Duration {
    match failures {
        0 => Duration::ZERO,
        n => FIRST_DELAY
            .saturating_mul(1 << (n - 1).min(6))
            .min(MAX_DELAY),
    }
}

/// An address's counts and its attempts waiting for a place, oldest first.
#[derive(Debug)]
struct Address {
    counts: Counts,
    queue: VecDeque<Ticket>,
}

/// Whether a pair may start an attempt now (the address aside).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PairCheck {
    Blocked,
    /// At the limit with its attempts in flight: wait for their outcome.
    Full,
    /// Failures plus attempts in flight, each presumed to fail.
    Open {
        presumed: u32,
    },
}

/// Every address's and pair's record; all decisions, no waiting, no clock.
#[derive(Debug, Default)]
pub struct Ledger {
    addresses: HashMap<IpAddr, Address>,
    pairs: HashMap<PairKey, Pair>,
    next_ticket: u64,
}

impl Ledger {
    /// Decides on a new attempt. [`Admission::Go`] reserves it: the caller
    /// must end it with [`Ledger::succeed`], [`Ledger::fail`] or
    /// [`Ledger::abandon`]. [`Admission::Wait`] queues it behind the
    /// address's earlier attempts (first come, first served).
    pub fn admit(&mut self, key: PairKey, now: Instant) -> Admission {
        self.prune(now);
        if self.check_pair(key, now) == PairCheck::Blocked {
            return Admission::Blocked;
        }
        let address = self.addresses.entry(key.ip).or_insert_with(|| Address {
            counts: Counts::new(now),
            queue: VecDeque::new(),
        });
        if address.queue.len() >= MAX_QUEUE_PER_ADDRESS {
            return Admission::Full;
        }
        let ticket = Ticket {
            key,
            number: self.next_ticket,
        };
        self.next_ticket += 1;
        address.queue.push_back(ticket);
        self.retry(ticket, now)
    }

    /// Asks again for a queued attempt: [`Admission::Go`] (or `Blocked`)
    /// takes it off the queue, `Wait` keeps its place.
    pub fn retry(&mut self, ticket: Ticket, now: Instant) -> Admission {
        let key = ticket.key;
        let own = self.check_pair(key, now);
        if own == PairCheck::Blocked {
            self.give_up(ticket);
            return Admission::Blocked;
        }
        let Some(address) = self.addresses.get(&key.ip) else {
            return Admission::Full;
        };
        let Some(place) = address.queue.iter().position(|t| *t == ticket) else {
            // Not queued (gave up already): nothing to reserve.
            return Admission::Full;
        };
        if address.counts.in_flight >= MAX_IN_FLIGHT_PER_ADDRESS {
            return Admission::Wait(ticket);
        }
        // An earlier attempt that could start goes first.
        let ahead: Vec<PairKey> = address.queue.iter().take(place).map(|t| t.key).collect();
        if ahead
            .into_iter()
            .any(|k| matches!(self.check_pair(k, now), PairCheck::Open { .. }))
        {
            return Admission::Wait(ticket);
        }
        let PairCheck::Open { presumed } = own else {
            return Admission::Wait(ticket);
        };
        let Some(address) = self.addresses.get_mut(&key.ip) else {
            return Admission::Full;
        };
        address.queue.remove(place);
        address.counts.refresh(now);
        let delay = delay_after(presumed).max(delay_after(
            address.counts.failures / ADDRESS_FAILURES_PER_STEP,
        ));
        address.counts.in_flight += 1;
        if let Some(pair) = self.pairs.get_mut(&key) {
            pair.counts.in_flight += 1;
        }
        Admission::Go { delay }
    }

    /// A queued attempt stops waiting (timed out, client gone).
    pub fn give_up(&mut self, ticket: Ticket) {
        if let Some(address) = self.addresses.get_mut(&ticket.key.ip) {
            address.queue.retain(|t| *t != ticket);
        }
    }

    /// The pair's standing now (its record refreshed, created if new).
    fn check_pair(&mut self, key: PairKey, now: Instant) -> PairCheck {
        let pair = self.pairs.entry(key).or_insert_with(|| Pair::new(now));
        pair.refresh(now);
        if pair.is_blocked(now) {
            return PairCheck::Blocked;
        }
        // Every attempt in flight may yet fail: with them the pair must stay
        // under the limit, so no more guesses are verified than it allows.
        let presumed = pair.counts.failures + pair.counts.in_flight;
        if presumed >= FAILURES_BEFORE_BLOCK {
            PairCheck::Full
        } else {
            PairCheck::Open { presumed }
        }
    }

    /// The password was right: the pair's failures are forgotten (those of
    /// other user names from the same address, and the address's, stay).
    pub fn succeed(&mut self, key: PairKey, now: Instant) {
        self.leave(key);
        if let Some(pair) = self.pairs.get_mut(&key) {
            if !pair.is_blocked(now) {
                pair.counts.failures = 0;
                pair.counts.since = now;
            }
        }
    }

    /// The password was wrong: counted for the address and the pair; the
    /// failure that reaches the limit blocks the pair.
    pub fn fail(&mut self, key: PairKey, now: Instant) -> Denied {
        self.leave(key);
        if let Some(address) = self.addresses.get_mut(&key.ip) {
            address.counts.fail(now);
        }
        let pair = self.pairs.entry(key).or_insert_with(|| Pair::new(now));
        pair.refresh(now);
        if pair.is_blocked(now) {
            return Denied::Blocked { now: false };
        }
        pair.counts.fail(now);
        if pair.counts.failures >= FAILURES_BEFORE_BLOCK {
            pair.blocked_until = Some(now + BLOCK_FOR);
            return Denied::Blocked { now: true };
        }
        Denied::Failed
    }

    /// The attempt ended without a verdict (client gone, shutdown, a
    /// problem on our side): it frees its place and counts for nothing.
    pub fn abandon(&mut self, key: PairKey) {
        self.leave(key);
    }

    fn leave(&mut self, key: PairKey) {
        if let Some(a) = self.addresses.get_mut(&key.ip) {
            a.counts.in_flight = a.counts.in_flight.saturating_sub(1);
        }
        if let Some(p) = self.pairs.get_mut(&key) {
            p.counts.in_flight = p.counts.in_flight.saturating_sub(1);
        }
    }

    /// Drops finished records once there are many (a spray of user names).
    fn prune(&mut self, now: Instant) {
        if self.pairs.len() > MAX_RECORDS {
            self.pairs
                .retain(|_, p| p.is_blocked(now) || p.counts.is_live(now));
        }
        if self.addresses.len() > MAX_RECORDS {
            self.addresses
                .retain(|_, a| !a.queue.is_empty() || a.counts.is_live(now));
        }
    }
}

/// The shared [`Ledger`] and the waiting around it. One per process, kept
/// across config reloads.
#[derive(Debug, Default)]
pub struct Throttle {
    ledger: Mutex<Ledger>,
    /// Signalled whenever an attempt ends, so waiting attempts look again.
    changed: Notify,
}

impl Throttle {
    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        // A panic elsewhere cannot leave the counters half-updated in a way
        // that matters more than refusing every login would.
        self.ledger.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reserves an attempt for `user` from `ip`: waits its turn (up to
    /// [`MAX_WAIT`]) behind the address's earlier attempts, then the growing
    /// delay, holding the reservation. Refuses at once when the pair is
    /// blocked, and as soon as it becomes blocked while waiting.
    pub async fn admit(self: &Arc<Self>, ip: IpAddr, user: &str) -> Result<Attempt, Denied> {
        let key = PairKey::new(ip, user);
        let deadline = Instant::now() + MAX_WAIT;
        let mut place: Option<Queued> = None;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before looking, so an attempt ending in between wakes us.
            changed.as_mut().enable();
            let admission = {
                let mut ledger = self.ledger();
                match &place {
                    None => ledger.admit(key, Instant::now()),
                    Some(q) => ledger.retry(q.ticket, Instant::now()),
                }
            };
            match admission {
                Admission::Go { delay } => {
                    // Off the queue: the ones behind may move up.
                    drop(place);
                    let attempt = Attempt {
                        throttle: self.clone(),
                        key,
                        open: true,
                    };
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    return Ok(attempt);
                }
                Admission::Blocked => return Err(Denied::Blocked { now: false }),
                Admission::Full => return Err(Denied::Busy),
                Admission::Wait(ticket) => {
                    place.get_or_insert_with(|| Queued {
                        throttle: self.clone(),
                        ticket,
                    });
                    if tokio::time::timeout_at(deadline, changed).await.is_err() {
                        return Err(Denied::Busy);
                    }
                }
            }
        }
    }

    fn changed(&self) {
        self.changed.notify_waiters();
    }
}

/// A place in the queue; leaving it (admitted, refused, timed out or the
/// client gone) lets the ones behind move up.
struct Queued {
    throttle: Arc<Throttle>,
    ticket: Ticket,
}

impl Drop for Queued {
    fn drop(&mut self) {
        self.throttle.ledger().give_up(self.ticket);
        self.throttle.changed();
    }
}

/// A reserved login attempt. End it with [`Attempt::succeeded`] or
/// [`Attempt::failed`]; dropped without either, it counts for nothing.
#[derive(Debug)]
pub struct Attempt {
    throttle: Arc<Throttle>,
    key: PairKey,
    open: bool,
}

impl Attempt {
    pub fn succeeded(mut self) {
        self.open = false;
        self.throttle.ledger().succeed(self.key, Instant::now());
        self.throttle.changed();
    }

    /// Records the failure; logs the one that starts a block.
    pub fn failed(mut self) -> Denied {
        self.open = false;
        let denied = self.throttle.ledger().fail(self.key, Instant::now());
        self.throttle.changed();
        if denied == (Denied::Blocked { now: true }) {
            warn!(
                client = %self.key.ip(),
                "too many failed logins; refusing logins for that user name from this address for a while"
            );
        }
        denied
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if self.open {
            self.throttle.ledger().abandon(self.key);
            self.throttle.changed();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ip: &str, user: &str) -> PairKey {
        PairKey::new(ip.parse().unwrap(), user)
    }

    fn go(a: Admission) -> Duration {
        match a {
            Admission::Go { delay } => delay,
            other => panic!("not admitted: {other:?}"),
        }
    }

    #[test]
    fn failures_grow_the_delay_before_verifying_then_block_the_pair() {
        let mut l = Ledger::default();
        let k = key("127.0.0.9", "dev");
        let t0 = Instant::now();
        let mut last = Duration::ZERO;
        for i in 0..FAILURES_BEFORE_BLOCK - 1 {
            let d = go(l.admit(k, t0));
            assert!(d >= last, "attempt {i}: {d:?} < {last:?}");
            last = d;
            assert_eq!(l.fail(k, t0), Denied::Failed);
        }
        assert_eq!(last, MAX_DELAY);
        go(l.admit(k, t0));
        assert_eq!(l.fail(k, t0), Denied::Blocked { now: true });
        // Blocked: nothing more is let through to verification, until the
        // block expires.
        assert_eq!(l.admit(k, t0), Admission::Blocked);
        assert_eq!(
            l.admit(k, t0 + BLOCK_FOR - Duration::from_secs(1)),
            Admission::Blocked
        );
        let after = t0 + BLOCK_FOR + Duration::from_secs(1);
        assert!(matches!(l.admit(k, after), Admission::Go { .. }));
    }

    #[test]
    fn first_attempt_is_not_delayed_and_failures_leave_the_window() {
        let mut l = Ledger::default();
        let k = key("127.0.0.9", "dev");
        let t0 = Instant::now();
        assert_eq!(go(l.admit(k, t0)), Duration::ZERO);
        l.fail(k, t0);
        assert_eq!(go(l.admit(k, t0)), FIRST_DELAY);
        l.fail(k, t0);
        let later = t0 + FAILURE_WINDOW + Duration::from_secs(1);
        assert_eq!(go(l.admit(k, later)), Duration::ZERO);
    }

    fn wait(a: Admission) -> Ticket {
        match a {
            Admission::Wait(t) => t,
            other => panic!("not queued: {other:?}"),
        }
    }

    #[test]
    fn parallel_attempts_are_served_in_order_and_never_exceed_the_limit() {
        let mut l = Ledger::default();
        let k = key("127.0.0.1", "dev");
        let t0 = Instant::now();
        // 200 attempts at once: two start, the rest queue in arrival order.
        let mut queued = Vec::new();
        let mut running = Vec::new();
        for i in 0..200 {
            match l.admit(k, t0) {
                Admission::Go { .. } => running.push(i),
                Admission::Wait(t) => queued.push((i, t)),
                other => panic!("{i}: {other:?}"),
            }
        }
        assert_eq!(running, [0, 1]);
        let mut verified = Vec::new();
        let mut refused = Vec::new();
        while let Some(i) = running.pop() {
            verified.push(i);
            l.fail(k, t0);
            // Every waiter looks again when an attempt ends.
            queued.retain(|&(j, t)| match l.retry(t, t0) {
                Admission::Go { .. } => {
                    running.push(j);
                    false
                }
                Admission::Wait(_) => true,
                Admission::Blocked => {
                    refused.push(j);
                    false
                }
                Admission::Full => panic!("{j} lost its place"),
            });
            assert!(running.len() as u32 <= MAX_IN_FLIGHT_PER_ADDRESS);
        }
        verified.sort();
        assert_eq!(verified, (0..FAILURES_BEFORE_BLOCK).collect::<Vec<_>>());
        assert!(queued.is_empty());
        assert_eq!(refused.len(), 200 - FAILURES_BEFORE_BLOCK as usize);
        assert!(refused.contains(&100), "the 100th is refused unverified");
        assert_eq!(l.admit(k, t0), Admission::Blocked);
        // Another address is not held up.
        assert_eq!(go(l.admit(key("127.0.0.2", "dev"), t0)), Duration::ZERO);
    }

    #[test]
    fn a_waiter_whose_pair_must_wait_does_not_hold_up_other_users() {
        let mut l = Ledger::default();
        let (dev, other) = (key("127.0.0.1", "dev"), key("127.0.0.1", "other"));
        let t0 = Instant::now();
        for _ in 0..FAILURES_BEFORE_BLOCK - 1 {
            go(l.admit(dev, t0));
            l.fail(dev, t0);
        }
        // dev's last allowed guess is in flight; the next dev attempt waits
        // for its outcome, but "other" behind it takes the free place.
        go(l.admit(dev, t0));
        let dev_waiting = wait(l.admit(dev, t0));
        assert!(matches!(l.admit(other, t0), Admission::Go { .. }));
        assert_eq!(l.retry(dev_waiting, t0), Admission::Wait(dev_waiting));
        assert_eq!(l.fail(dev, t0), Denied::Blocked { now: true });
        assert_eq!(l.retry(dev_waiting, t0), Admission::Blocked);
    }

    #[test]
    fn a_full_queue_refuses_for_now_and_leaving_it_lets_the_next_move_up() {
        let mut l = Ledger::default();
        let t0 = Instant::now();
        let k = key("127.0.0.1", "dev");
        go(l.admit(k, t0));
        go(l.admit(k, t0));
        let first = wait(l.admit(k, t0));
        let second = wait(l.admit(key("127.0.0.1", "b"), t0));
        for i in 2..MAX_QUEUE_PER_ADDRESS {
            wait(l.admit(key("127.0.0.1", &format!("u{i}")), t0));
        }
        assert_eq!(l.admit(k, t0), Admission::Full);
        l.abandon(k);
        l.give_up(first);
        assert!(matches!(l.retry(second, t0), Admission::Go { .. }));
    }

    #[test]
    fn in_flight_attempts_count_as_failures_until_they_end() {
        let mut l = Ledger::default();
        let k = key("127.0.0.1", "dev");
        let t0 = Instant::now();
        for _ in 0..FAILURES_BEFORE_BLOCK - 1 {
            go(l.admit(k, t0));
            l.fail(k, t0);
        }
        // One place left before the block: the second waits for the first.
        go(l.admit(k, t0));
        let t = wait(l.admit(k, t0));
        l.succeed(k, t0);
        assert_eq!(go(l.retry(t, t0)), Duration::ZERO);
    }

    #[test]
    fn abandoned_attempt_frees_its_place_and_counts_nothing() {
        let mut l = Ledger::default();
        let k = key("127.0.0.1", "dev");
        let t0 = Instant::now();
        go(l.admit(k, t0));
        go(l.admit(k, t0));
        let t = wait(l.admit(k, t0));
        l.abandon(k);
        assert_eq!(go(l.retry(t, t0)), FIRST_DELAY, "one still in flight");
        l.abandon(k);
        l.abandon(k);
        assert_eq!(go(l.admit(k, t0)), Duration::ZERO);
    }

    #[test]
    fn success_for_one_user_keeps_the_failures_of_another() {
        let mut l = Ledger::default();
        let (dev, victim) = (key("127.0.0.1", "dev"), key("127.0.0.1", "victim"));
        let t0 = Instant::now();
        let mut last = None;
        for _ in 0..FAILURES_BEFORE_BLOCK {
            go(l.admit(dev, t0));
            l.succeed(dev, t0);
            go(l.admit(victim, t0));
            last = Some(l.fail(victim, t0));
        }
        assert_eq!(last, Some(Denied::Blocked { now: true }));
        assert_eq!(l.admit(victim, t0), Admission::Blocked);
        // The address is slowed, not refused: dev still logs in.
        assert_eq!(go(l.admit(dev, t0)), FIRST_DELAY);
        l.succeed(dev, t0);
    }

    #[test]
    fn success_clears_only_its_own_pair() {
        let mut l = Ledger::default();
        let k = key("127.0.0.1", "dev");
        let t0 = Instant::now();
        for _ in 0..3 {
            go(l.admit(k, t0));
            l.fail(k, t0);
        }
        go(l.admit(k, t0));
        l.succeed(k, t0);
        assert_eq!(go(l.admit(k, t0)), Duration::ZERO);
    }

    #[test]
    fn a_spray_of_user_names_slows_the_address_but_blocks_no_new_name() {
        let mut l = Ledger::default();
        let t0 = Instant::now();
        for i in 0..100 {
            let k = key("127.0.0.1", &format!("user{i}"));
            go(l.admit(k, t0));
            assert_eq!(l.fail(k, t0), Denied::Failed);
        }
        let fresh = key("127.0.0.1", "dev");
        assert_eq!(go(l.admit(fresh, t0)), MAX_DELAY);
        l.succeed(fresh, t0);
        assert_eq!(go(l.admit(key("127.0.0.2", "dev"), t0)), Duration::ZERO);
    }

    #[test]
    fn verdicts_say_whether_a_password_was_checked() {
        assert!(Denied::Failed.was_verified());
        assert!(Denied::Blocked { now: true }.was_verified());
        assert!(!Denied::Blocked { now: false }.was_verified());
        assert!(!Denied::Busy.was_verified());
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_attempts_take_freed_places_or_give_up_after_max_wait() {
        let t = Arc::new(Throttle::default());
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let a = t.admit(ip, "dev").await.unwrap();
        let b = t.admit(ip, "other").await.unwrap();
        // Third waits; the first ending lets it in.
        let waiting = tokio::spawn({
            let t = t.clone();
            async move { t.admit(ip, "third").await.map(drop) }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        a.succeeded();
        assert_eq!(waiting.await.unwrap(), Ok(()));
        // Nothing ends: after MAX_WAIT a temporary refusal.
        let c = t.admit(ip, "c").await.unwrap();
        let started = Instant::now();
        assert_eq!(t.admit(ip, "d").await.map(drop), Err(Denied::Busy));
        assert!(started.elapsed() >= MAX_WAIT);
        drop((b, c));
        assert!(t.admit(ip, "d").await.is_ok());
    }
}
