//! Local logins for devices: the configured users, argon2 verification with
//! a cache of recently verified credentials (so repeat logins stay cheap),
//! and [`LocalAuth::login`], the one throttled entry every protocol uses.
//!
//! - `verify`: argon2 hashing and checking, a few at a time process-wide.
//! - `throttle`: per-address and per-(address, user) login throttling.

mod throttle;
mod verify;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::User;
use crate::secret::Secret;

pub use throttle::{Attempt, Denied, Throttle, BLOCK_FOR, FAILURES_BEFORE_BLOCK};
pub use verify::hash_password;

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
    throttle: Arc<Throttle>,
}

/// Hash checked for unknown users, made once per process.
static DUMMY_HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();

impl LocalAuth {
    pub fn new(users: &[User]) -> Self {
        let dummy_hash = DUMMY_HASH.get_or_init(verify::unmatchable_hash).clone();
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
            throttle: Default::default(),
        }
    }

    /// The users of a reloaded config, keeping the brute-force record.
    pub fn reloaded(&self, users: &[User]) -> Self {
        let mut fresh = LocalAuth::new(users);
        fresh.throttle = self.throttle.clone();
        fresh
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    pub fn has_user(&self, name: &str) -> bool {
        self.users.contains_key(name)
    }

    /// A local login from `ip`, throttled: on success the user's account name.
    pub async fn login(&self, ip: IpAddr, name: &str, password: &Secret) -> Result<String, Denied> {
        let attempt = self.throttle.admit(ip, name).await?;
        match self.verify(name, password.expose()).await {
            Some(account) => {
                attempt.succeeded();
                Ok(account)
            }
            None => Err(attempt.failed()),
        }
    }

    /// The throttle for logins checked elsewhere (IMAP passthrough: the
    /// upstream judges the password).
    pub fn throttle(&self) -> &Arc<Throttle> {
        &self.throttle
    }

    /// Checks `name`/`password` without throttling; on success returns the
    /// user's account name. Sessions use [`LocalAuth::login`].
    async fn verify(&self, name: &str, password: &str) -> Option<String> {
        let digest = self.digest(password);
        let Some(entry) = self.users.get(name) else {
            // Same cost as a real check, so timing does not reveal user names.
            let dummy = Secret::new(self.dummy_hash.clone());
            let _permit = verify::hash_slot().await?;
            verify::check_off_thread(dummy, Secret::new(password)).await;
            return None;
        };
        if self.is_cached(name, &digest) {
            return Some(entry.account.clone());
        }
        let _permit = verify::hash_slot().await?;
        // Another login of this user may have been verified while we waited.
        if self.is_cached(name, &digest) {
            return Some(entry.account.clone());
        }
        if !verify::check_off_thread(entry.hash.clone(), Secret::new(password)).await {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(password: &str) -> LocalAuth {
        let hash = hash_password(password).unwrap();
        LocalAuth::new(&[User {
            name: "scanner".into(),
            password_hash: Secret::new(hash),
            account: "gmail".into(),
        }])
    }

    #[tokio::test]
    async fn verifies_and_caches() {
        let auth = auth("s3cret pass");
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

    #[tokio::test(start_paused = true)]
    async fn blocked_login_is_refused_even_with_the_right_password() {
        let auth = auth("s3cret pass");
        let ip: IpAddr = "127.0.0.7".parse().unwrap();
        let (right, wrong) = (Secret::new("s3cret pass"), Secret::new("guess"));
        assert_eq!(
            auth.login(ip, "scanner", &right).await.as_deref(),
            Ok("gmail")
        );
        for _ in 0..FAILURES_BEFORE_BLOCK - 1 {
            assert_eq!(auth.login(ip, "scanner", &wrong).await, Err(Denied::Failed));
        }
        assert_eq!(
            auth.login(ip, "scanner", &wrong).await,
            Err(Denied::Blocked { now: true })
        );
        assert_eq!(
            auth.login(ip, "scanner", &right).await,
            Err(Denied::Blocked { now: false })
        );
        // Another address, and after the block, the right password works.
        let other: IpAddr = "127.0.0.8".parse().unwrap();
        assert_eq!(
            auth.login(other, "scanner", &right).await.as_deref(),
            Ok("gmail")
        );
        tokio::time::advance(BLOCK_FOR + std::time::Duration::from_secs(1)).await;
        assert_eq!(
            auth.login(ip, "scanner", &right).await.as_deref(),
            Ok("gmail")
        );
    }
}
