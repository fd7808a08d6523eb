//! The per-account daily send cap (`daily_limit`): a rolling 24 h window of
//! what was sent, persisted in `<spool_dir>/daily-limits.json` (written
//! atomically, a damaged file is moved aside), reservations so concurrent
//! deliveries never overshoot, and the clock it is measured with (injectable,
//! so tests can move a day forward).
//!
//! The window ([`Window`]) is loaded once at start-up and handed to every
//! [`DailyLimits`] a config (re)load builds, so a reload keeps the count and
//! the reservations of deliveries in progress; the caps come from the config.
//!
//! What counts: **recipients**, not messages. Gmail counts every recipient of
//! a message toward its daily quota ("500 recipients per day" for consumer
//! accounts; one message to 3 people uses 3), so counting recipients that the
//! upstream accepted is never below Gmail's own count, whichever way a given
//! account type is measured, and the cap keeps us out of Gmail's 24 h block.
//! Only recipients the upstream accepted count; a transaction that delivered
//! nothing costs nothing.

use std::collections::{HashMap, VecDeque};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::config::Account;
use crate::spool::{from_ms, to_ms};

/// The rolling window the cap is counted on.
pub const WINDOW: Duration = Duration::from_secs(24 * 60 * 60);
/// The file under the spool directory.
pub const FILE_NAME: &str = "daily-limits.json";
/// How a hold for the daily limit starts its reason (`queue list` shows it).
pub const REASON_PREFIX: &str = "daily limit";

/// Where "now" comes from.
pub trait Clock: Send + Sync {
    fn now(&self) -> SystemTime;
}

/// The system's wall clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that moves only when told to (for tests).
pub struct ManualClock(Mutex<SystemTime>);

impl ManualClock {
    pub fn new(start: SystemTime) -> ManualClock {
        ManualClock(Mutex::new(start))
    }

    pub fn advance(&self, by: Duration) {
        if let Ok(mut t) = self.0.lock() {
            *t += by;
        }
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        self.0
            .lock()
            .map(|t| *t)
            .unwrap_or_else(|_| SystemTime::now())
    }
}

/// The cap is reached: what to tell the admin and when to look again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Full {
    pub limit: u32,
    /// When (on the limiter's clock) enough of the window has expired.
    pub next_slot: SystemTime,
    /// How long from now that is.
    pub wait: Duration,
}

impl Full {
    /// `daily limit (500 in 24h), next slot at 2026-11-27T05:40:12Z`.
    pub fn reason(&self) -> String {
        let when = time::OffsetDateTime::from(self.next_slot)
            .replace_nanosecond(0)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_else(|| "?".into());
        format!(
            "{REASON_PREFIX} ({} in 24h), next slot at {when}",
            self.limit
        )
    }
}

/// Recipients reserved for a delivery in progress; released on drop unless
/// [`Reservation::commit`] records what was actually delivered.
#[derive(Debug)]
pub struct Reservation<'a> {
    limits: &'a DailyLimits,
    account: String,
    n: u32,
}

impl Reservation<'_> {
    /// Records `delivered` recipients as sent now, releases the reservation
    /// and writes the window to its file (off the runtime threads).
    pub async fn commit(self, delivered: usize) {
        let delivered = u32::try_from(delivered).unwrap_or(u32::MAX);
        let snapshot = self.limits.record(&self.account, delivered);
        let window = self.limits.shared.clone();
        // Releases the reservation before the write.
        drop(self);
        if let Some((seq, snapshot)) = snapshot {
            let _ = crate::spool::off_runtime(move || {
                window.save(seq, &snapshot);
                Ok(())
            })
            .await;
        }
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.n == 0 {
            return;
        }
        if let Ok(mut s) = self.limits.shared.state.lock() {
            if let Some(r) = s.reserved.get_mut(&self.account) {
                *r = r.saturating_sub(self.n);
            }
        }
    }
}

#[derive(Default)]
struct State {
    /// Per account: (unix ms, recipients) sent, oldest first.
    sent: HashMap<String, VecDeque<(u64, u32)>>,
    /// Per account: recipients of deliveries in progress.
    reserved: HashMap<String, u32>,
    /// Changes so far (orders the file writes).
    changes: u64,
}

/// The file's shape.
#[derive(Serialize, Deserialize)]
struct Persisted {
    v: u32,
    accounts: HashMap<String, Vec<(u64, u32)>>,
}

/// What a config reload must not lose: the window (with reservations of
/// deliveries in progress), its file and the clock.
pub struct Window {
    path: PathBuf,
    state: Mutex<State>,
    clock: RwLock<Arc<dyn Clock>>,
    /// The change last written to the file (writes never go back in time).
    saved: Mutex<u64>,
}

impl Window {
    /// The window persisted under `spool_dir` (a missing file is an empty
    /// window; a damaged one is moved aside with a warning and the window
    /// starts empty).
    pub fn load(spool_dir: &Path) -> Arc<Window> {
        let path = spool_dir.join(FILE_NAME);
        // Written 0600 from now on; one from an older version is tightened.
        crate::spool::make_private(&path, crate::spool::FILE_MODE);
        let mut state = State::default();
        for (account, list) in load(&path) {
            let mut list: Vec<_> = list.into_iter().filter(|(_, n)| *n > 0).collect();
            list.sort_unstable();
            state.sent.insert(account, list.into());
        }
        Arc::new(Window {
            path,
            state: Mutex::new(state),
            clock: RwLock::new(Arc::new(SystemClock)),
            saved: Mutex::new(0),
        })
    }

    /// Writes change `seq`'s snapshot, unless a later one is already written.
    fn save(&self, seq: u64, snapshot: &Persisted) {
        let Ok(mut saved) = self.saved.lock() else {
            return;
        };
        if *saved >= seq {
            return;
        }
        match save(&self.path, snapshot) {
            Ok(()) => *saved = seq,
            Err(e) => warn!(
                "cannot write {}: {e} (the daily count is kept in memory only)",
                self.path.display()
            ),
        }
    }
}

/// Every account's cap, counted on the shared [`Window`].
pub struct DailyLimits {
    limits: HashMap<String, u32>,
    shared: Arc<Window>,
}

impl std::fmt::Debug for DailyLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DailyLimits")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl DailyLimits {
    /// The caps of `accounts`, counted on `window`.
    pub fn new(window: Arc<Window>, accounts: &[Account]) -> DailyLimits {
        let limits: HashMap<String, u32> = accounts
            .iter()
            .filter_map(|a| a.daily_limit.map(|l| (a.name.clone(), l)))
            .collect();
        DailyLimits {
            limits,
            shared: window,
        }
    }

    /// The caps of `accounts` on the window persisted under `spool_dir`
    /// (what a new process starts from).
    pub fn open(spool_dir: &Path, accounts: &[Account]) -> DailyLimits {
        DailyLimits::new(Window::load(spool_dir), accounts)
    }

    /// Replaces the clock (tests).
    pub fn set_clock(&self, clock: Arc<dyn Clock>) {
        if let Ok(mut c) = self.shared.clock.write() {
            *c = clock;
        }
    }

    pub fn now(&self) -> SystemTime {
        self.shared
            .clock
            .read()
            .map(|c| c.now())
            .unwrap_or_else(|_| SystemTime::now())
    }

    /// The account's cap, if it has one.
    pub fn limit(&self, account: &str) -> Option<u32> {
        self.limits.get(account).copied()
    }

    /// Recipients sent by `account` in the last 24 h.
    pub fn used(&self, account: &str) -> u32 {
        let now = to_ms(self.now());
        self.shared.state.lock().map_or(0, |mut s| {
            prune(&mut s, account, now);
            total(s.sent.get(account))
        })
    }

    /// Reserves room for `n` recipients. A message with more recipients than
    /// the whole cap goes when the window is empty (it cannot fit otherwise).
    pub fn try_reserve(&self, account: &str, n: usize) -> Result<Reservation<'_>, Full> {
        let Some(limit) = self.limit(account) else {
            return Ok(Reservation {
                limits: self,
                account: account.to_string(),
                n: 0,
            });
        };
        let n = u32::try_from(n).unwrap_or(u32::MAX).max(1);
        let now = self.now();
        let Ok(mut s) = self.shared.state.lock() else {
            return Err(Full {
                limit,
                next_slot: now + WINDOW,
                wait: WINDOW,
            });
        };
        match room(&mut s, account, limit, n, now) {
            None => {
                *s.reserved.entry(account.to_string()).or_default() += n;
                Ok(Reservation {
                    limits: self,
                    account: account.to_string(),
                    n,
                })
            }
            Some(full) => Err(full),
        }
    }

    /// How long until `n` recipients fit (`None`: they fit now).
    pub fn wait_for(&self, account: &str, n: usize) -> Option<Duration> {
        self.full(account, n).map(|f| f.wait)
    }

    /// Why `n` recipients do not fit now (`None`: they do).
    pub fn full(&self, account: &str, n: usize) -> Option<Full> {
        let limit = self.limit(account)?;
        let n = u32::try_from(n).unwrap_or(u32::MAX).max(1);
        let now = self.now();
        let mut s = self.shared.state.lock().ok()?;
        room(&mut s, account, limit, n, now)
    }

    /// Counts `delivered` recipients as sent now; returns what to write to
    /// the file (the change's number and the window), if anything changed.
    fn record(&self, account: &str, delivered: u32) -> Option<(u64, Persisted)> {
        if delivered == 0 || !self.limits.contains_key(account) {
            return None;
        }
        let now = to_ms(self.now());
        let mut s = self.shared.state.lock().ok()?;
        s.sent
            .entry(account.to_string())
            .or_default()
            .push_back((now, delivered));
        let all: Vec<String> = s.sent.keys().cloned().collect();
        for a in all {
            prune(&mut s, &a, now);
        }
        s.changes += 1;
        let snapshot = Persisted {
            v: 1,
            accounts: s
                .sent
                .iter()
                .map(|(a, l)| (a.clone(), l.iter().copied().collect()))
                .collect(),
        };
        Some((s.changes, snapshot))
    }
}

/// Drops window entries older than 24 h (entries from the future, after the
/// clock was set back, are kept: they expire when their time has passed).
fn prune(s: &mut State, account: &str, now_ms: u64) {
    let cutoff = now_ms.saturating_sub(WINDOW.as_millis() as u64);
    if let Some(list) = s.sent.get_mut(account) {
        list.retain(|(t, _)| *t > cutoff);
    }
}

fn total(list: Option<&VecDeque<(u64, u32)>>) -> u32 {
    list.map_or(0, |l| l.iter().fold(0u32, |a, (_, n)| a.saturating_add(*n)))
}

/// `None` if `n` more fit now, else when they will.
fn room(s: &mut State, account: &str, limit: u32, n: u32, now: SystemTime) -> Option<Full> {
    let now_ms = to_ms(now);
    prune(s, account, now_ms);
    let reserved = s.reserved.get(account).copied().unwrap_or(0);
    let list = s.sent.get(account);
    let used = total(list).saturating_add(reserved);
    let need = n.min(limit);
    if used.saturating_add(need) <= limit {
        return None;
    }
    // Walk the window oldest first until enough has expired.
    let mut left = used;
    let mut slot_ms = None;
    for (t, k) in list.into_iter().flatten() {
        left = left.saturating_sub(*k);
        if left.saturating_add(need) <= limit {
            slot_ms = Some(t.saturating_add(WINDOW.as_millis() as u64));
            break;
        }
    }
    // Deliveries in progress hold the rest: look again shortly.
    let next_slot = slot_ms
        .map(from_ms)
        .unwrap_or(now + Duration::from_secs(1))
        .max(now);
    Some(Full {
        limit,
        next_slot,
        wait: next_slot.duration_since(now).unwrap_or_default(),
    })
}

fn load(path: &Path) -> HashMap<String, Vec<(u64, u32)>> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return HashMap::new(),
        Err(e) => {
            warn!(
                "cannot read {}: {e}; the daily count starts at zero",
                path.display()
            );
            return HashMap::new();
        }
    };
    match serde_json::from_slice::<Persisted>(&bytes) {
        Ok(p) => p.accounts,
        Err(e) => {
            let aside = path.with_extension("json.damaged");
            let _ = fs::rename(path, &aside);
            warn!(
                "{} is damaged ({e}); moved to {} and the daily count starts at zero",
                path.display(),
                aside.display()
            );
            HashMap::new()
        }
    }
}

/// Temp file beside it, fsync, rename, fsync the directory.
fn save(path: &Path, p: &Persisted) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(p).map_err(std::io::Error::other)?;
    let tmp = path.with_extension(format!("json.{}.tmp", crate::spool::unique_suffix()));
    let result = (|| {
        let mut f = crate::spool::create_private(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(name: &str, limit: Option<u32>) -> Account {
        let toml = format!(
            "[[accounts]]\nname = \"{name}\"\nprovider = \"gmail\"\nusername = \"u@example.com\"\npassword = \"x\"\ndaily_limit = {}\n",
            limit.unwrap_or(0)
        );
        crate::config::Config::parse(&toml, Path::new("/nonexistent/relay.toml"))
            .unwrap()
            .accounts
            .remove(0)
    }

    #[tokio::test]
    async fn counts_recipients_on_a_rolling_window_and_persists() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(from_ms(to_ms(SystemTime::now()))));
        let l = DailyLimits::open(dir.path(), &[account("a", Some(3))]);
        l.set_clock(clock.clone());
        l.try_reserve("a", 2).unwrap().commit(2).await;
        clock.advance(Duration::from_secs(3600));
        let r = l.try_reserve("a", 1).unwrap();
        // In flight: the cap is full until it finishes.
        assert!(l.try_reserve("a", 1).is_err());
        drop(r);
        l.try_reserve("a", 1).unwrap().commit(1).await;
        let full = l.try_reserve("a", 1).unwrap_err();
        assert_eq!(full.wait, WINDOW - Duration::from_secs(3600));
        assert!(full
            .reason()
            .starts_with("daily limit (3 in 24h), next slot at "));
        // A new process sees the same window (from the file).
        drop(l);
        let l2 = DailyLimits::open(dir.path(), &[account("a", Some(3))]);
        l2.set_clock(clock.clone());
        assert_eq!(l2.used("a"), 3);
        clock.advance(WINDOW - Duration::from_secs(3600));
        assert_eq!(l2.used("a"), 1);
        assert!(l2.wait_for("a", 2).is_none());
        assert!(l2.wait_for("a", 3).is_some());
    }

    #[tokio::test]
    async fn a_reload_counts_on_the_same_window() {
        let dir = tempfile::tempdir().unwrap();
        let window = Window::load(dir.path());
        let before = DailyLimits::new(window.clone(), &[account("a", Some(2))]);
        let held = before.try_reserve("a", 1).unwrap();
        // The reloaded config raises nothing but sees the delivery in progress.
        let after = DailyLimits::new(window, &[account("a", Some(2))]);
        after.try_reserve("a", 1).unwrap().commit(1).await;
        assert!(
            after.try_reserve("a", 1).is_err(),
            "the reservation is kept"
        );
        held.commit(1).await;
        assert_eq!((before.used("a"), after.used("a")), (2, 2));
        // Another spool directory is another window: nothing is shared by path.
        let other = tempfile::tempdir().unwrap();
        assert_eq!(
            DailyLimits::open(other.path(), &[account("a", Some(2))]).used("a"),
            0
        );
    }

    #[tokio::test]
    async fn damaged_file_is_moved_aside_and_no_cap_means_no_count() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(FILE_NAME), b"{not json").unwrap();
        let l = DailyLimits::open(dir.path(), &[account("a", Some(1)), account("b", None)]);
        assert_eq!(l.used("a"), 0);
        assert!(dir.path().join("daily-limits.json.damaged").exists());
        for _ in 0..5 {
            l.try_reserve("b", 10).unwrap().commit(10).await;
        }
        assert_eq!(l.used("b"), 0);
        // More recipients than the cap: fits only when the window is empty.
        l.try_reserve("a", 4).unwrap().commit(4).await;
        assert!(l.try_reserve("a", 4).is_err());
    }
}
