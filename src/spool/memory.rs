//! The byte budget of whole messages held in memory for delivery: the worker
//! and direct mode read a message back into one buffer (lettre wants the
//! bytes in memory), and every such buffer first claims its size from one
//! shared budget (`delivery.message_buffer_budget`). Large messages go one
//! at a time, small ones stay concurrent, and the total never passes the
//! budget, whatever the message sizes and `delivery.concurrency`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// What a message of `size` bytes claims from a budget of `total` bytes:
/// its size, or the whole budget for one at least that large (so it goes
/// alone rather than never).
pub fn claim_for(size: u64, total: usize) -> usize {
    usize::try_from(size).map_or(total, |s| s.min(total))
}

/// The shared budget (one semaphore permit a byte).
pub struct MemoryBudget {
    total: usize,
    permits: Arc<Semaphore>,
    counts: Arc<Counts>,
}

/// What the budget reports (the semaphore's own count also includes bytes
/// set aside for a claim still waiting for the rest).
#[derive(Default)]
struct Counts {
    in_use: AtomicUsize,
    waiting: AtomicUsize,
}

/// Bytes of the budget held until dropped.
pub struct Claim {
    bytes: usize,
    counts: Arc<Counts>,
    _permit: Option<OwnedSemaphorePermit>,
}

impl Claim {
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.counts.in_use.fetch_sub(self.bytes, Ordering::SeqCst);
    }
}

/// A message's bytes together with the claim that pays for them: the
/// claim is given back when the bytes are dropped, never before.
pub struct InMemory {
    bytes: Vec<u8>,
    _claim: Claim,
}

impl InMemory {
    /// `bytes` under `claim` (which was taken for their size).
    pub fn new(bytes: Vec<u8>, claim: Claim) -> InMemory {
        InMemory {
            bytes,
            _claim: claim,
        }
    }
}

impl std::ops::Deref for InMemory {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

impl AsRef<[u8]> for InMemory {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl MemoryBudget {
    /// A budget of `total` bytes (at least 1; at most what a semaphore counts).
    pub fn new(total: usize) -> MemoryBudget {
        let total = total.clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
        MemoryBudget {
            total,
            permits: Arc::new(Semaphore::new(total)),
            counts: Arc::default(),
        }
    }

    pub fn total(&self) -> usize {
        self.total
    }

    /// Bytes claimed now.
    pub fn in_use(&self) -> usize {
        self.counts.in_use.load(Ordering::SeqCst)
    }

    /// Claims waiting for room now.
    pub fn waiting(&self) -> usize {
        self.counts.waiting.load(Ordering::SeqCst)
    }

    /// Waits until `size` bytes (see [`claim_for`]) fit, and claims them.
    /// Claims are served in order, so a large message is not starved by
    /// small ones arriving after it.
    pub async fn claim(&self, size: u64) -> Claim {
        let bytes = claim_for(size, self.total);
        let _waiting = Waiting::new(&self.counts);
        // `bytes` fits in u32 (see `new`). The semaphore is never closed;
        // if it were, going on unbudgeted beats refusing to deliver.
        let permit = self
            .permits
            .clone()
            .acquire_many_owned(bytes as u32)
            .await
            .ok();
        self.counts.in_use.fetch_add(bytes, Ordering::SeqCst);
        Claim {
            bytes,
            counts: self.counts.clone(),
            _permit: permit,
        }
    }
}

impl MemoryBudget {
    /// [`MemoryBudget::claim`] when `size` fits right now (and no earlier
    /// claim waits for the room: the semaphore hands released bytes to the
    /// waiting claims first); `None` otherwise. Callable off the runtime.
    pub fn try_claim(&self, size: u64) -> Option<Claim> {
        let bytes = claim_for(size, self.total);
        let permit = self
            .permits
            .clone()
            .try_acquire_many_owned(bytes as u32)
            .ok()?;
        self.counts.in_use.fetch_add(bytes, Ordering::SeqCst);
        Some(Claim {
            bytes,
            counts: self.counts.clone(),
            _permit: Some(permit),
        })
    }
}

/// Counts one claim as waiting until dropped (also when the claim is
/// abandoned, e.g. its session ends while it waits).
struct Waiting<'a>(&'a Counts);

impl<'a> Waiting<'a> {
    fn new(counts: &'a Counts) -> Waiting<'a> {
        counts.waiting.fetch_add(1, Ordering::SeqCst);
        Waiting(counts)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_claims_its_size_or_the_whole_budget() {
        assert_eq!(claim_for(0, 100), 0);
        assert_eq!(claim_for(40, 100), 40);
        assert_eq!(claim_for(100, 100), 100);
        assert_eq!(claim_for(250, 100), 100);
        assert_eq!(claim_for(u64::MAX, 100), 100);
    }

    #[tokio::test]
    async fn claims_never_exceed_the_budget_and_wait_in_order() {
        let b = Arc::new(MemoryBudget::new(100));
        let small = b.claim(30).await;
        let second = b.claim(60).await;
        assert_eq!(b.in_use(), 90);
        // A large one waits for room; a small one asked for after it waits too.
        let (b1, b2) = (b.clone(), b.clone());
        let large = tokio::spawn(async move { b1.claim(500).await });
        while b.waiting() < 1 {
            tokio::task::yield_now().await;
        }
        let late = tokio::spawn(async move { b2.claim(5).await });
        while b.waiting() < 2 {
            tokio::task::yield_now().await;
        }
        assert_eq!(b.in_use(), 90, "nothing more was claimed");
        drop(small);
        assert_eq!(b.in_use(), 60, "the large one still waits for all of it");
        assert_eq!(b.waiting(), 2);
        drop(second);
        let large = large.await.unwrap();
        assert_eq!((large.bytes(), b.in_use()), (100, 100));
        drop(large);
        let late = late.await.unwrap();
        assert_eq!((late.bytes(), b.in_use()), (5, 5));
        drop(late);
        assert_eq!((b.in_use(), b.waiting()), (0, 0));
    }

    #[test]
    fn bytes_give_their_claim_back_when_dropped() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let b = MemoryBudget::new(10);
        let m = InMemory::new(b"hello".to_vec(), rt.block_on(b.claim(5)));
        assert_eq!((&*m, b.in_use()), (&b"hello"[..], 5));
        drop(m);
        assert_eq!(b.in_use(), 0);
    }

    #[tokio::test]
    async fn a_try_claim_never_jumps_ahead_of_a_waiting_claim() {
        let budget = Arc::new(MemoryBudget::new(100));
        let small = budget.try_claim(60).expect("fits");
        assert_eq!(budget.in_use(), 60);
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.claim(80).await }
        });
        while budget.waiting() == 0 && !waiting.is_finished() {
            tokio::task::yield_now().await;
        }
        // 40 bytes are free, but the claim of 80 came first.
        assert!(budget.try_claim(30).is_none());
        drop(small);
        let large = waiting.await.unwrap();
        assert_eq!(large.bytes(), 80);
        let rest = budget.try_claim(20);
        assert!(rest.is_some());
        assert!(budget.try_claim(1).is_none(), "the budget is full");
    }
}
