//! Local logins for devices: argon2 verification (with a cache of recently
//! verified credentials so repeat logins stay cheap), and a per-address
//! failure tracker that slows down and then refuses brute force.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
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
}

/// Concurrent argon2 checks at most, process-wide (beyond it logins wait
/// their turn): each check works in ~19 MiB, and a login flood must not
/// multiply that.
const MAX_CONCURRENT_HASHES: usize = 2;
static HASHING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_CONCURRENT_HASHES);
/// argon2 working memory, reused from check to check. Allocating ~19 MiB per
/// check and freeing it left glibc holding hundreds of MiB after a burst of
/// logins (freed blocks stay in its arenas); a fixed pool keeps the resident
/// size at what the concurrent checks need.
static WORK_MEMORY: Mutex<Vec<Vec<Block>>> = Mutex::new(Vec::new());
/// Hash checked for unknown users, made once per process.
static DUMMY_HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();

impl LocalAuth {
    pub fn new(users: &[User]) -> Self {
        let dummy_hash = DUMMY_HASH
            .get_or_init(|| hash_password("mailbridge-dummy-password").unwrap_or_default())
            .clone();
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
            let _permit = HASHING.acquire().await.ok()?;
            let _ = tokio::task::spawn_blocking(move || check_hash(&dummy, pw.expose())).await;
            return None;
        };
        if self.is_cached(name, &digest) {
            return Some(entry.account.clone());
        }
        let hash = entry.hash.clone();
        let pw = Secret::new(password);
        let _permit = HASHING.acquire().await.ok()?;
        // Another login of this user may have been verified while we waited.
        if self.is_cached(name, &digest) {
            return Some(entry.account.clone());
        }
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

    /// Was this exact password verified for `name` before? (Constant-time compare.)
    fn is_cached(&self, name: &str, digest: &[u8; 32]) -> bool {
        self.verified
            .lock()
            .ok()
            .and_then(|cache| cache.get(name).map(|known| bool::from(known.ct_eq(digest))))
            .unwrap_or(false)
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

/// Verifies `password` against a PHC argon2 hash in pooled working memory;
/// the comparison is constant-time.
fn check_hash(hash: &str, password: &str) -> bool {
    let mut memory = WORK_MEMORY
        .lock()
        .ok()
        .and_then(|mut pool| pool.pop())
        .unwrap_or_default();
    let ok = check_hash_in(hash, password, &mut memory);
    if let Ok(mut pool) = WORK_MEMORY.lock() {
        if pool.len() < MAX_CONCURRENT_HASHES {
            pool.push(memory);
        }
    }
    ok
}

fn check_hash_in(hash: &str, password: &str, memory: &mut Vec<Block>) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return false;
    };
    let (Ok(params), Ok(algorithm)) = (
        Params::try_from(&parsed),
        Algorithm::try_from(parsed.algorithm),
    ) else {
        return false;
    };
    let version = match parsed.version.map(Version::try_from) {
        None => Version::default(),
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
    };
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let blocks = params.block_count();
    if memory.len() < blocks {
        memory.resize(blocks, Block::default());
    }
    let mut out = vec![0u8; expected.len()];
    let argon = Argon2::new(algorithm, version, params);
    if argon
        .hash_password_into_with_memory(password.as_bytes(), salt, &mut out, &mut memory[..blocks])
        .is_err()
    {
        return false;
    }
    out.ct_eq(expected.as_bytes()).into()
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
    fn checks_hashes_of_any_argon2_variant_and_cost_in_pooled_memory() {
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        for (alg, m) in [
            (Algorithm::Argon2id, 32 * 1024),
            (Algorithm::Argon2i, 8 * 1024),
            (Algorithm::Argon2d, 16 * 1024),
        ] {
            let params = Params::new(m, 2, 1, None).unwrap();
            let hash = Argon2::new(alg, Version::V0x13, params)
                .hash_password("p\u{e4}ss word".as_bytes(), &salt)
                .unwrap()
                .to_string();
            assert!(check_hash(&hash, "p\u{e4}ss word"), "{alg:?}");
            assert!(!check_hash(&hash, "p\u{e4}ss wore"), "{alg:?}");
        }
        assert!(!check_hash(
            "$argon2id$v=19$m=19456,t=2,p=1$bm90IGEgaGFzaA",
            "x"
        ));
        assert!(!check_hash("plain text", "plain text"));
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
