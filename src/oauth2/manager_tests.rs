//! The token manager's timing on tokio's paused clock, with a fake token source.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex as StdMutex;

use super::*;

const HOUR: Duration = Duration::from_secs(3600);

fn token(n: usize, life: Duration) -> StoredToken {
    StoredToken {
        access_token: Secret::new(format!("access-{n}")),
        refresh_token: Some(Secret::new(format!("refresh-{n}"))),
        expires_at_ms: Some(now_ms() + life.as_millis() as u64),
        scopes: vec!["mail".into()],
        obtained_at_ms: now_ms(),
    }
}

/// Counts refreshes; each takes a second and answers with the next token or `fail`.
struct Fake {
    calls: AtomicUsize,
    fail: StdMutex<Option<RefreshError>>,
    seen_refresh: StdMutex<Vec<String>>,
    /// Lifetime of the tokens it gives.
    life: StdMutex<Duration>,
}

impl Fake {
    fn new() -> Arc<Fake> {
        Arc::new(Fake {
            calls: AtomicUsize::new(0),
            fail: StdMutex::new(None),
            seen_refresh: StdMutex::new(Vec::new()),
            life: StdMutex::new(HOUR),
        })
    }
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl TokenSource for Fake {
    fn refresh<'a>(&'a self, current: &'a StoredToken) -> RefreshFuture<'a> {
        Box::pin(async move {
            let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            self.seen_refresh.lock().unwrap().push(
                current
                    .refresh_token
                    .as_ref()
                    .map(|s| s.expose().to_string())
                    .unwrap_or_default(),
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
            if let Some(e) = self.fail.lock().unwrap().clone() {
                return Err(e);
            }
            let life = *self.life.lock().unwrap();
            Ok(token(100 + n, life))
        })
    }
}

fn setup(life: Duration) -> (tempfile::TempDir, TokenStore, Arc<Fake>, Arc<TokenManager>) {
    let dir = tempfile::tempdir().unwrap();
    let store = TokenStore::new(dir.path());
    // Obtained long ago: the full margin applies.
    let old = StoredToken {
        obtained_at_ms: 0,
        ..token(1, life)
    };
    store.save("acct", &old).unwrap();
    let fake = Fake::new();
    let m = Arc::new(TokenManager::new("acct", store.clone(), fake.clone()));
    (dir, store, fake, m)
}

#[tokio::test(start_paused = true)]
async fn reuses_the_token_until_shortly_before_expiry_then_refreshes_once() {
    let (_d, store, fake, m) = setup(HOUR);
    assert_eq!(m.access_token().await.unwrap().expose(), "access-1");
    // 65 s before expiry: reused; 55 s before: refreshed (the margin is 60 s).
    tokio::time::advance(HOUR - Duration::from_secs(65)).await;
    assert_eq!(m.access_token().await.unwrap().expose(), "access-1");
    assert_eq!(fake.calls(), 0, "reused before expiry");
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(m.access_token().await.unwrap().expose(), "access-101");
    assert_eq!(fake.calls(), 1, "refreshed just before expiry");
    assert_eq!(fake.seen_refresh.lock().unwrap()[0], "refresh-1");
    // The rotated refresh token is on disk before anyone uses the new token.
    let saved = store.load("acct").unwrap().unwrap();
    assert_eq!(saved.refresh_token.unwrap().expose(), "refresh-101");
    assert_eq!(m.access_token().await.unwrap().expose(), "access-101");
    assert_eq!(fake.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn fifty_concurrent_callers_share_one_refresh() {
    let (_d, store, fake, m) = setup(Duration::from_secs(30));
    // Tokens shorter-lived than the margin: refreshed at half their life.
    store
        .save("acct", &token(1, Duration::from_secs(30)))
        .unwrap();
    *fake.life.lock().unwrap() = Duration::from_secs(30);
    assert_eq!(m.access_token().await.unwrap().expose(), "access-1");
    tokio::time::advance(Duration::from_secs(16)).await;
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let m = m.clone();
            tokio::spawn(async move { m.access_token().await })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap().expose(), "access-101");
    }
    assert_eq!(fake.calls(), 1, "single flight");
    // The new token is used as it is, not refreshed again by each caller.
    assert_eq!(m.access_token().await.unwrap().expose(), "access-101");
    assert_eq!(fake.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_token_living_less_than_the_margin_is_reused_for_half_its_life() {
    let (_d, store, fake, m) = setup(Duration::from_secs(20));
    store
        .save("acct", &token(1, Duration::from_secs(20)))
        .unwrap();
    assert_eq!(m.access_token().await.unwrap().expose(), "access-1");
    tokio::time::advance(Duration::from_secs(9)).await;
    assert_eq!(m.access_token().await.unwrap().expose(), "access-1");
    assert_eq!(fake.calls(), 0);
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(m.access_token().await.unwrap().expose(), "access-101");
    assert_eq!(fake.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_rejected_token_is_refreshed_once_for_a_retry() {
    let (_d, _store, fake, m) = setup(HOUR);
    let first = m.access_token().await.unwrap();
    // Many sessions refused with the same token: still one refresh.
    for _ in 0..5 {
        m.invalidate(&first).await;
    }
    let retry = m.access_token().await.unwrap();
    assert_eq!(retry.expose(), "access-101");
    // A late report about the old token does not throw the new one away.
    m.invalidate(&first).await;
    assert_eq!(m.access_token().await.unwrap().expose(), "access-101");
    assert_eq!(fake.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn invalid_grant_needs_reauthorization_until_the_store_file_changes() {
    let (_d, store, fake, m) = setup(Duration::from_secs(10));
    *fake.fail.lock().unwrap() = Some(RefreshError::Permanent("invalid_grant".into()));
    let e = m.access_token().await.unwrap_err();
    assert!(
        matches!(e, TokenError::NeedsReauthorization { .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("mailbridge auth acct"), "{e}");
    // Not asked again: the provider said no for good.
    assert!(matches!(
        m.access_token().await.unwrap_err(),
        TokenError::NeedsReauthorization { .. }
    ));
    assert_eq!(fake.calls(), 1);
    // `mailbridge auth` writes a new grant: picked up without a restart.
    store.save("acct", &token(7, HOUR)).unwrap();
    assert_eq!(m.access_token().await.unwrap().expose(), "access-7");
    assert_eq!(fake.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_temporary_failure_is_retried_on_the_next_call() {
    let (_d, _store, fake, m) = setup(Duration::from_secs(10));
    *fake.fail.lock().unwrap() = Some(RefreshError::Temporary("connection refused".into()));
    assert!(matches!(
        m.access_token().await.unwrap_err(),
        TokenError::Temporary { .. }
    ));
    *fake.fail.lock().unwrap() = None;
    assert_eq!(m.access_token().await.unwrap().expose(), "access-102");
    assert_eq!(fake.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn no_token_and_a_forgotten_token_need_reauthorization() {
    let dir = tempfile::tempdir().unwrap();
    let store = TokenStore::new(dir.path());
    let m = TokenManager::new("acct", store.clone(), Fake::new());
    assert!(matches!(
        m.access_token().await.unwrap_err(),
        TokenError::NeedsReauthorization { .. }
    ));
    store.save("acct", &token(1, HOUR)).unwrap();
    assert_eq!(m.access_token().await.unwrap().expose(), "access-1");
    store.remove("acct").unwrap();
    assert!(matches!(
        m.access_token().await.unwrap_err(),
        TokenError::NeedsReauthorization { .. }
    ));
}
