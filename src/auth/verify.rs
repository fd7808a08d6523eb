//! argon2: making PHC hashes for `relay.toml` and checking passwords against
//! them, at most [`MAX_CONCURRENT_HASHES`] at once process-wide, in pooled
//! working memory that is given back once no check is running.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use argon2::password_hash::{PasswordHash, PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use subtle::ConstantTimeEq;

use crate::secret::Secret;

/// Concurrent argon2 checks at most, process-wide (beyond it logins wait
/// their turn, first come first served): each check works in ~19 MiB, and a
/// login flood must not multiply that.
const MAX_CONCURRENT_HASHES: usize = 2;
static HASHING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_CONCURRENT_HASHES);
/// argon2 working memory, reused from check to check. Allocating ~19 MiB per
/// check and freeing it left glibc holding hundreds of MiB after a burst of
/// logins (freed blocks stay in its arenas); a fixed pool keeps the resident
/// size at what the concurrent checks need. When the last running check
/// ends the pool is emptied: blocks this large are mmapped by glibc, so
/// freeing them returns them to the system, and an idle daemon does not keep
/// 2 x 19 MiB resident for good after its first logins.
static WORK_MEMORY: Mutex<Vec<Vec<Block>>> = Mutex::new(Vec::new());
/// Checks running now (the pool is emptied when this falls to zero).
static RUNNING: AtomicUsize = AtomicUsize::new(0);

/// Waits for one of the argon2 slots.
pub(super) async fn hash_slot() -> Option<tokio::sync::SemaphorePermit<'static>> {
    HASHING.acquire().await.ok()
}

/// [`check_hash`] on the blocking pool (call it holding a [`hash_slot`]).
pub(super) async fn check_off_thread(hash: Secret, password: Secret) -> bool {
    tokio::task::spawn_blocking(move || check_hash(hash.expose(), password.expose()))
        .await
        .unwrap_or(false)
}

/// Verifies `password` against a PHC argon2 hash in pooled working memory;
/// the comparison is constant-time.
fn check_hash(hash: &str, password: &str) -> bool {
    RUNNING.fetch_add(1, Ordering::SeqCst);
    let mut memory = WORK_MEMORY
        .lock()
        .ok()
        .and_then(|mut pool| pool.pop())
        .unwrap_or_default();
    let ok = check_hash_in(hash, password, &mut memory);
    let others = RUNNING.fetch_sub(1, Ordering::SeqCst).saturating_sub(1);
    if let Ok(mut pool) = WORK_MEMORY.lock() {
        if others == 0 {
            // Idle: give the working memory back (this one and any pooled).
            pool.clear();
            pool.shrink_to_fit();
        } else if pool.len() < MAX_CONCURRENT_HASHES {
            pool.push(memory);
        }
    }
    ok
}

/// A PHC hash with the default argon2id parameters that no password
/// matches (its output is random bytes, not a hash of anything), made
/// without running argon2: checking a password against it costs what a real
/// check costs, but building it does not cost 19 MiB at start-up.
pub fn unmatchable_hash() -> String {
    use argon2::password_hash::Output;
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    let params = Params::default();
    let random: [u8; 32] = rand::random();
    let output = Output::new(&random);
    let hash = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: (&params).try_into().unwrap_or_default(),
        salt: Some(salt.as_salt()),
        hash: output.ok(),
    };
    hash.to_string()
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn unmatchable_hash_has_the_default_cost_and_matches_nothing() {
        let dummy = unmatchable_hash();
        let real = hash_password("x").unwrap();
        let params = |h: &str| {
            let p = PasswordHash::new(h).unwrap();
            (
                p.algorithm.to_string(),
                p.version,
                Params::try_from(&p).unwrap().m_cost(),
                p.hash.unwrap().len(),
            )
        };
        assert_eq!(params(&dummy), params(&real));
        assert!(!check_hash(&dummy, ""));
        assert!(!check_hash(&dummy, "mailbridge-dummy-password"));
    }
}
