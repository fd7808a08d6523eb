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
#[path = "throttle_tests.rs"]
mod tests;
