//! Stored tokens: one JSON file per account at `<spool_dir>/oauth2/<account>.json`,
//! 0600 in a 0700 directory whatever the umask, replaced atomically (the
//! spool's own temp-file, fsync, rename, fsync-dir helpers).

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::secret::Secret;
use crate::spool::store::{private_dir, sync_dir, write_atomic};

/// Errors reading or writing a token file (paths only, never the contents).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a token file this version understands ({reason})")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{0}")]
    Spool(String),
}

/// One account's tokens as stored. The secrets never print themselves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredToken {
    pub access_token: Secret,
    /// Absent for client credentials (a new access token is simply requested).
    pub refresh_token: Option<Secret>,
    /// Unix ms; `None` when the server gave no lifetime.
    pub expires_at_ms: Option<u64>,
    pub scopes: Vec<String>,
    /// Unix ms of the grant or refresh that produced it.
    pub obtained_at_ms: u64,
}

/// The file format (version 1).
#[derive(Serialize, Deserialize)]
struct TokenFile {
    v: u32,
    access_token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refresh_token: Option<String>,
    #[serde(default)]
    expires_at_ms: Option<u64>,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    obtained_at_ms: u64,
}

/// What identifies one version of a token file: a new file written by
/// `mailbridge auth` (rename: new inode) or by hand changes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    ino: u64,
    modified: Option<SystemTime>,
    len: u64,
}

/// Unix time in ms now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A file name for any account name: ASCII letters, digits, `-` and `_`
/// stay, every other byte becomes `%XX` (so `../x` or `a/b` cannot leave the
/// directory and two names never share a file).
pub fn file_name(account: &str) -> String {
    let mut out = String::new();
    for b in account.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    format!("{out}.json")
}

/// The token directory of one spool.
#[derive(Debug, Clone)]
pub struct TokenStore {
    dir: PathBuf,
}

impl TokenStore {
    /// Tokens live next to the spool, in `<spool_dir>/oauth2/`.
    pub fn new(spool_dir: &Path) -> TokenStore {
        TokenStore {
            dir: spool_dir.join("oauth2"),
        }
    }

    pub fn path(&self, account: &str) -> PathBuf {
        self.dir.join(file_name(account))
    }

    /// The account's tokens, `None` when none are stored.
    pub fn load(&self, account: &str) -> Result<Option<StoredToken>, StoreError> {
        let path = self.path(account);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StoreError::Io { path, source }),
        };
        // serde_json's messages can quote the input: say only where it broke.
        let f: TokenFile = serde_json::from_slice(&text).map_err(|e| StoreError::Corrupt {
            path: path.clone(),
            reason: format!("bad JSON at line {} column {}", e.line(), e.column()),
        })?;
        if f.v != 1 {
            return Err(StoreError::Corrupt {
                path,
                reason: format!("version {}", f.v),
            });
        }
        Ok(Some(StoredToken {
            access_token: Secret::new(f.access_token),
            refresh_token: f.refresh_token.map(Secret::new),
            expires_at_ms: f.expires_at_ms,
            scopes: f.scopes,
            obtained_at_ms: f.obtained_at_ms,
        }))
    }

    /// Replaces the account's tokens durably (fsynced file and directory).
    pub fn save(&self, account: &str, token: &StoredToken) -> Result<(), StoreError> {
        private_dir(&self.dir).map_err(|e| StoreError::Spool(e.to_string()))?;
        let f = TokenFile {
            v: 1,
            access_token: token.access_token.expose().to_string(),
            refresh_token: token.refresh_token.as_ref().map(|s| s.expose().to_string()),
            expires_at_ms: token.expires_at_ms,
            scopes: token.scopes.clone(),
            obtained_at_ms: token.obtained_at_ms,
        };
        let json = serde_json::to_vec(&f).map_err(|e| StoreError::Spool(e.to_string()))?;
        write_atomic(&self.dir, &self.path(account), &[&json, b"\n"], true)
            .map_err(|e| StoreError::Spool(e.to_string()))?;
        sync_dir(&self.dir).map_err(|e| StoreError::Spool(e.to_string()))
    }

    /// Removes the account's tokens; false when there were none.
    pub fn remove(&self, account: &str) -> Result<bool, StoreError> {
        let path = self.path(account);
        match std::fs::remove_file(&path) {
            Ok(()) => {
                let _ = sync_dir(&self.dir);
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(StoreError::Io { path, source }),
        }
    }

    /// The current version of the account's file, `None` when there is none.
    pub fn stamp(&self, account: &str) -> Option<FileStamp> {
        let meta = std::fs::metadata(self.path(account)).ok()?;
        #[cfg(unix)]
        let ino = std::os::unix::fs::MetadataExt::ino(&meta);
        #[cfg(not(unix))]
        let ino = 0;
        Some(FileStamp {
            ino,
            modified: meta.modified().ok(),
            len: meta.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(access: &str, refresh: Option<&str>) -> StoredToken {
        StoredToken {
            access_token: Secret::new(access),
            refresh_token: refresh.map(Secret::new),
            expires_at_ms: Some(1_000),
            scopes: vec!["mail".into()],
            obtained_at_ms: 5,
        }
    }

    #[test]
    fn file_names_cannot_escape_the_directory_or_collide() {
        assert_eq!(file_name("work"), "work.json");
        assert_eq!(file_name("../x"), "%2E%2E%2Fx.json");
        assert_eq!(file_name("a/b"), "a%2Fb.json");
        assert_ne!(file_name("a.b"), file_name("a%2Eb"));
        assert!(!file_name("é").contains('/'));
    }

    #[test]
    fn saves_0600_in_a_0700_dir_whatever_the_umask_and_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::new(dir.path());
        assert!(store.load("a").unwrap().is_none());
        assert!(store.stamp("a").is_none());
        let t = token("at-1", Some("rt-1"));
        store.save("a", &t).unwrap();
        assert_eq!(store.load("a").unwrap(), Some(t));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&store.path("a")), 0o600);
            assert_eq!(mode(&dir.path().join("oauth2")), 0o700);
        }
        let before = store.stamp("a").unwrap();
        store.save("a", &token("at-2", None)).unwrap();
        assert_ne!(
            store.stamp("a").unwrap(),
            before,
            "a new file is a new stamp"
        );
        assert_eq!(store.load("a").unwrap().unwrap().refresh_token, None);
        // No temp files left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path().join("oauth2"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        assert!(store.remove("a").unwrap());
        assert!(!store.remove("a").unwrap());
    }

    #[test]
    fn a_damaged_file_is_an_error_that_does_not_quote_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::new(dir.path());
        std::fs::create_dir_all(dir.path().join("oauth2")).unwrap();
        std::fs::write(store.path("a"), "{\"v\":1,\"access_token\":\"sekrit\",").unwrap();
        let e = store.load("a").unwrap_err().to_string();
        assert!(!e.contains("sekrit"), "{e}");
        assert!(!format!("{:?}", token("sekrit", Some("r"))).contains("sekrit"));
    }
}
