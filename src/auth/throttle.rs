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

use std::collections::HashMap;
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

/// What to do with a new login attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Reserved: wait this long (holding the reservation), then verify.
    Go { delay: Duration },
    /// Too many attempts in flight (from the address, or for the pair with
    /// the failures it already has): wait for one to end.
    Busy,
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
    /// Over the per-address cap for longer than [`MAX_WAIT`]: try again later.
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

/// Every address's and pair's record; all decisions, no waiting, no clock.
#[derive(Debug, Default)]
pub struct Ledger {
    addresses: HashMap<IpAddr, Counts>,
    pairs: HashMap<PairKey, Pair>,
}

impl Ledger {
    /// Decides on a new attempt and, for [`Admission::Go`], reserves it:
    /// the caller must end it with [`Ledger::succeed`], [`Ledger::fail`] or
    /// [`Ledger::abandon`].
    pub fn admit(&mut self, key: PairKey, now: Instant) -> Admission {
        self.prune(now);
        let pair = self.pairs.entry(key).or_insert_with(|| Pair::new(now));
        pair.refresh(now);
        if pair.is_blocked(now) {
            return Admission::Blocked;
        }
        let address = self
            .addresses
            .entry(key.ip)
            .or_insert_with(|| Counts::new(now));
        address.refresh(now);
        // Every attempt in flight may yet fail: with them the pair must stay
        // under the limit, so no more guesses are verified than it allows.
        let presumed = pair.counts.failures + pair.counts.in_flight;
        if address.in_flight >= MAX_IN_FLIGHT_PER_ADDRESS || presumed >= FAILURES_BEFORE_BLOCK {
            return Admission::Busy;
        }
        let delay =
            delay_after(presumed).max(delay_after(address.failures / ADDRESS_FAILURES_PER_STEP));
        pair.counts.in_flight += 1;
        address.in_flight += 1;
        Admission::Go { delay }
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
        self.addresses
            .entry(key.ip)
            .or_insert_with(|| Counts::new(now))
            .fail(now);
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
            a.in_flight = a.in_flight.saturating_sub(1);
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
            self.addresses.retain(|_, a| a.is_live(now));
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

    /// Reserves an attempt for `user` from `ip`: waits (up to [`MAX_WAIT`])
    /// while the address has too many in flight, then the growing delay,
    /// holding the reservation. Refuses at once when the pair is blocked.
    pub async fn admit(self: &Arc<Self>, ip: IpAddr, user: &str) -> Result<Attempt, Denied> {
        let key = PairKey::new(ip, user);
        let deadline = Instant::now() + MAX_WAIT;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before looking, so an attempt ending in between wakes us.
            changed.as_mut().enable();
            let admission = self.ledger().admit(key, Instant::now());
            match admission {
                Admission::Go { delay } => {
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
                Admission::Busy => {
                    if tokio::time::timeout_at(deadline, changed).await.is_err() {
                        return Err(Denied::Busy);
                    }
                }
            }
        }
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
        self.throttle.changed.notify_waiters();
    }

    /// Records the failure; logs the one that starts a block.
    pub fn failed(mut self) -> Denied {
        self.open = false;
        let denied = self.throttle.ledger().fail(self.key, Instant::now());
        self.throttle.changed.notify_waiters();
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
            self.throttle.changed.notify_waiters();
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

    #[test]
    fn parallel_attempts_are_capped_per_address_and_never_exceed_the_limit() {
        let mut l = Ledger::default();
        let k = key("127.0.0.1", "dev");
        let t0 = Instant::now();
        let mut verified = 0;
        let mut blocked_at = None;
        // 200 attempts at once, served as places free up.
        for round in 0..200 {
            let admitted: Vec<_> = (0..200)
                .map(|_| l.admit(k, t0))
                .filter(|a| matches!(a, Admission::Go { .. }))
                .collect();
            assert!(admitted.len() as u32 <= MAX_IN_FLIGHT_PER_ADDRESS);
            if admitted.is_empty() {
                assert_eq!(l.admit(k, t0), Admission::Blocked);
                blocked_at = Some(round);
                break;
            }
            for _ in &admitted {
                verified += 1;
                l.fail(k, t0);
            }
        }
        assert!(blocked_at.is_some());
        assert_eq!(verified, FAILURES_BEFORE_BLOCK);
        // Another address is not held up.
        assert!(matches!(
            l.admit(key("127.0.0.2", "dev"), t0),
            Admission::Go { .. }
        ));
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
        assert_eq!(l.admit(k, t0), Admission::Busy);
        l.succeed(k, t0);
        assert_eq!(go(l.admit(k, t0)), Duration::ZERO);
    }

    #[test]
    fn abandoned_attempt_frees_its_place_and_counts_nothing() {
        let mut l = Ledger::default();
        let k = key("127.0.0.1", "dev");
        let t0 = Instant::now();
        go(l.admit(k, t0));
        go(l.admit(k, t0));
        assert_eq!(l.admit(k, t0), Admission::Busy);
        l.abandon(k);
        assert_eq!(go(l.admit(k, t0)), FIRST_DELAY, "one still in flight");
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
