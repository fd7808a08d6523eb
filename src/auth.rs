//! Local logins for devices: argon2 verification (with a cache of recently
//! verified credentials so repeat logins stay cheap), and a per-address
//! failure tracker that slows down and then refuses brute force.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::User;
use crate::secret::Secret;

/// Failures from one address inside this window count together.
const FAILURE_WINDOW: Duration = Duration::from_secs(10 * 60);
/// After this many failures in the window the address is refused...
const FAILURES_BEFORE_BLOCK: u32 = 10;
/// ...for this long.
const BLOCK_FOR: Duration = Duration::from_secs(15 * 60);
const FIRST_DELAY: Duration = Duration::from_millis(250);
const MAX_DELAY: Duration = Duration::from_secs(8);

struct Entry {
    account: String,
    hash: Secret,
}

/// The configured local users and what has been verified recently.
pub struct LocalAuth {
    users: HashMap<String, Entry>,
    /// user -> SHA-256(pepper || password) of the last password argon2 accepted.
    verified: Mutex<HashMap<String, [u8; 32]>>,
    pepper: [u8; 32],
    /// Hash verified for unknown users so they take as long as known ones.
    dummy_hash: String,
    failures: std::sync::Arc<FailureTracker>,
    /// Each argon2 check holds ~19 MiB; a login flood must not multiply that.
    hashing: tokio::sync::Semaphore,
}

/// Concurrent argon2 checks at most (beyond it logins wait their turn).
const MAX_CONCURRENT_HASHES: usize = 2;

impl LocalAuth {
    pub fn new(users: &[User]) -> Self {
        let dummy_hash = hash_password("mailbridge-dummy-password").unwrap_or_default();
        LocalAuth {
            users: users
                .iter()
                .map(|u| {
                    (
                        u.name.clone(),
                        Entry {
                            account: u.account.clone(),
                            hash: u.password_hash.clone(),
                        },
                    )
                })
                .collect(),
            verified: Mutex::new(HashMap::new()),
            pepper: rand::random(),
            dummy_hash,
            failures: Default::default(),
            hashing: tokio::sync::Semaphore::new(MAX_CONCURRENT_HASHES),
        }
    }

    /// The users of a reloaded config, keeping the brute-force record.
    pub fn reloaded(&self, users: &[User]) -> Self {
        let mut fresh = LocalAuth::new(users);
        fresh.failures = self.failures.clone();
        fresh
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    pub fn has_user(&self, name: &str) -> bool {
        self.users.contains_key(name)
    }

    /// Checks `name`/`password`; on success returns the user's account name.
    pub async fn verify(&self, name: &str, password: &str) -> Option<String> {
        let digest = self.digest(password);
        let Some(entry) = self.users.get(name) else {
            // Same cost as a real check, so timing does not reveal user names.
            let dummy = self.dummy_hash.clone();
            let pw = Secret::new(password);
            let _permit = self.hashing.acquire().await.ok()?;
            let _ = tokio::task::spawn_blocking(move || check_hash(&dummy, pw.expose())).await;
            return None;
        };
        if let Ok(cache) = self.verified.lock() {
            if let Some(known) = cache.get(name) {
                if bool::from(known.ct_eq(&digest)) {
                    return Some(entry.account.clone());
                }
            }
        }
        let hash = entry.hash.clone();
        let pw = Secret::new(password);
        let _permit = self.hashing.acquire().await.ok()?;
        let ok = tokio::task::spawn_blocking(move || check_hash(hash.expose(), pw.expose()))
            .await
            .unwrap_or(false);
        if !ok {
            return None;
        }
        if let Ok(mut cache) = self.verified.lock() {
            cache.insert(name.to_string(), digest);
        }
        Some(entry.account.clone())
    }

    fn digest(&self, password: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.pepper);
        h.update(password.as_bytes());
        h.finalize().into()
    }

    pub fn failures(&self) -> &FailureTracker {
        &self.failures
    }
}

fn check_hash(hash: &str, password: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// Makes a PHC-format argon2id hash for `relay.toml` (`mailbridge hash-password`).
pub fn hash_password(password: &str) -> Result<String, argon2::password_hash::Error> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    Ok(Argon2::default()
        .hash_password(password.as_bytes(), &salt)?
        .to_string())
}

/// What to do with a client address after a failed login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureVerdict {
    /// Wait this long before answering.
    Delay(Duration),
    /// The address has failed too often: refuse logins for a while. `first`
    /// is true only for the failure that started the block (log it once).
    Blocked { first: bool },
}

#[derive(Default)]
pub struct FailureTracker {
    by_ip: Mutex<HashMap<IpAddr, FailState>>,
}

struct FailState {
    count: u32,
    window_start: Instant,
    blocked_until: Option<Instant>,
}

impl FailureTracker {
    /// Is `ip` currently refused?
    pub fn is_blocked(&self, ip: IpAddr) -> bool {
        let now = Instant::now();
        let Ok(map) = self.by_ip.lock() else {
            return false;
        };
        map.get(&ip)
            .and_then(|s| s.blocked_until)
            .is_some_and(|t| t > now)
    }

    /// Records a failure and says how to answer it.
    pub fn record_failure(&self, ip: IpAddr) -> FailureVerdict {
        let now = Instant::now();
        let Ok(mut map) = self.by_ip.lock() else {
            return FailureVerdict::Delay(MAX_DELAY);
        };
        if map.len() > 100_000 {
            map.retain(|_, s| now.duration_since(s.window_start) < FAILURE_WINDOW);
        }
        let s = map.entry(ip).or_insert(FailState {
            count: 0,
            window_start: now,
            blocked_until: None,
        });
        if let Some(until) = s.blocked_until {
            if until > now {
                return FailureVerdict::Blocked { first: false };
            }
            s.blocked_until = None;
            s.count = 0;
            s.window_start = now;
        }
        if now.duration_since(s.window_start) > FAILURE_WINDOW {
            s.count = 0;
            s.window_start = now;
        }
        s.count += 1;
        if s.count >= FAILURES_BEFORE_BLOCK {
            s.blocked_until = Some(now + BLOCK_FOR);
            return FailureVerdict::Blocked { first: true };
        }
        let delay = FIRST_DELAY
            .saturating_mul(1 << (s.count - 1).min(6))
            .min(MAX_DELAY);
        FailureVerdict::Delay(delay)
    }

    /// A successful login clears the address's record.
    pub fn record_success(&self, ip: IpAddr) {
        if let Ok(mut map) = self.by_ip.lock() {
            map.remove(&ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn verifies_and_caches() {
        let hash = hash_password("s3cret pass").unwrap();
        let auth = LocalAuth::new(&[User {
            name: "scanner".into(),
            password_hash: Secret::new(hash),
            account: "gmail".into(),
        }]);
        assert_eq!(
            auth.verify("scanner", "s3cret pass").await.as_deref(),
            Some("gmail")
        );
        assert_eq!(
            auth.verify("scanner", "s3cret pass").await.as_deref(),
            Some("gmail")
        );
        assert_eq!(auth.verify("scanner", "wrong").await, None);
        assert_eq!(auth.verify("nobody", "s3cret pass").await, None);
    }

    #[test]
    fn failures_grow_then_block() {
        let t = FailureTracker::default();
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        let mut last = Duration::ZERO;
        for _ in 0..FAILURES_BEFORE_BLOCK - 1 {
            match t.record_failure(ip) {
                FailureVerdict::Delay(d) => {
                    assert!(d >= last);
                    last = d;
                }
                v => panic!("blocked too early: {v:?}"),
            }
        }
        assert_eq!(
            t.record_failure(ip),
            FailureVerdict::Blocked { first: true }
        );
        assert!(t.is_blocked(ip));
        assert_eq!(
            t.record_failure(ip),
            FailureVerdict::Blocked { first: false }
        );
        assert!(!t.is_blocked("127.0.0.10".parse().unwrap()));
    }
}
