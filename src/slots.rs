//! Per-account upstream connection slots (IMAP and POP3 each keep their own
//! counters): a counter per account, a cap, and a guard that frees the slot
//! on drop whatever path the session takes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// One held per-account connection slot; released on drop, whatever the path.
pub struct AccountSlot(Arc<AtomicUsize>);

impl AccountSlot {
    /// Takes a slot from `counter` if fewer than `max` are held.
    pub fn try_take(counter: &Arc<AtomicUsize>, max: usize) -> Option<AccountSlot> {
        counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some(AccountSlot(counter.clone()))
    }
}

impl Drop for AccountSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counters for every account of a config, with one cap for all.
pub struct AccountSlots {
    counters: HashMap<String, Arc<AtomicUsize>>,
    max: usize,
}

impl AccountSlots {
    pub fn new<'a>(accounts: impl IntoIterator<Item = &'a str>, max: usize) -> AccountSlots {
        let counters = accounts
            .into_iter()
            .map(|a| (a.to_string(), Arc::new(AtomicUsize::new(0))))
            .collect();
        AccountSlots { counters, max }
    }

    /// Like [`AccountSlots::new`] for a reloaded config, keeping the counters
    /// of accounts that still exist (their sessions stay counted).
    pub fn reloaded<'a>(
        accounts: impl IntoIterator<Item = &'a str>,
        max: usize,
        previous: &AccountSlots,
    ) -> AccountSlots {
        let mut slots = AccountSlots::new(accounts, max);
        for (name, c) in slots.counters.iter_mut() {
            if let Some(old) = previous.counters.get(name) {
                *c = old.clone();
            }
        }
        slots
    }

    /// Takes one of the account's slots, if one is free.
    pub fn acquire(&self, account: &str) -> Option<AccountSlot> {
        AccountSlot::try_take(self.counters.get(account)?, self.max)
    }

    /// Slots currently held for `account`.
    pub fn held(&self, account: &str) -> usize {
        self.counters
            .get(account)
            .map_or(0, |c| c.load(Ordering::Acquire))
    }

    pub fn max(&self) -> usize {
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_and_release_and_reload() {
        let s = AccountSlots::new(["a"], 2);
        let one = s.acquire("a").unwrap();
        let _two = s.acquire("a").unwrap();
        assert!(s.acquire("a").is_none());
        assert!(s.acquire("unknown").is_none());
        drop(one);
        assert_eq!(s.held("a"), 1);
        let r = AccountSlots::reloaded(["a", "b"], 2, &s);
        assert_eq!(r.held("a"), 1);
        let _three = r.acquire("a").unwrap();
        assert!(r.acquire("a").is_none());
    }
}
