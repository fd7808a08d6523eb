//! The daemon's token managers: one per OAuth2 account, made on first use
//! and kept across reloads, shared by SMTP delivery, the IMAP proxy and the
//! POP3 proxy. A reload that changes an account's OAuth2 settings or
//! `ca_file` gets a fresh manager; the stored token is the same file.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use super::http::{self, HttpError};
use super::manager::{ProviderSource, TokenManager};
use super::store::TokenStore;
use crate::config::Account;

/// What a manager was built from; a different one means a new manager.
/// Secrets enter only as a digest, so it can be compared but not read back.
#[derive(PartialEq, Eq)]
struct Fingerprint(Vec<u8>);

fn fingerprint(account: &Account) -> Option<Fingerprint> {
    let s = account.oauth2.as_ref()?;
    let mut h = Sha256::new();
    let (provider, flow) = (format!("{:?}", s.provider), format!("{:?}", s.flow));
    for part in [
        provider.as_str(),
        &s.client_id,
        s.client_secret.as_ref().map(|c| c.expose()).unwrap_or(""),
        s.tenant.as_deref().unwrap_or(""),
        flow.as_str(),
        &s.scopes.join(" "),
        s.authorize_url.as_deref().unwrap_or(""),
        &s.token_url,
        s.device_url.as_deref().unwrap_or(""),
        &account
            .ca_file
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
    ] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    Some(Fingerprint(h.finalize().to_vec()))
}

/// The token managers by account name (built once, in `reload::Shared`).
pub struct Tokens {
    store: TokenStore,
    managers: Mutex<HashMap<String, (Fingerprint, Arc<TokenManager>)>>,
}

impl Tokens {
    pub fn new(spool_dir: &Path) -> Tokens {
        Tokens {
            store: TokenStore::new(spool_dir),
            managers: Mutex::new(HashMap::new()),
        }
    }

    /// The account's manager; `Ok(None)` for a password account.
    pub fn manager(&self, account: &Account) -> Result<Option<Arc<TokenManager>>, HttpError> {
        let (Some(settings), Some(print)) = (account.oauth2.as_ref(), fingerprint(account)) else {
            return Ok(None);
        };
        let mut managers = self
            .managers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((known, m)) = managers.get(&account.name) {
            if *known == print {
                return Ok(Some(m.clone()));
            }
        }
        let source = ProviderSource {
            settings: settings.clone(),
            http: http::client(account.ca_file.as_deref(), http::REQUEST_TIMEOUT)?,
        };
        let m = Arc::new(TokenManager::new(
            &account.name,
            self.store.clone(),
            Arc::new(source),
        ));
        managers.insert(account.name.clone(), (print, m.clone()));
        Ok(Some(m))
    }
}
