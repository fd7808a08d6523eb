//! One [`TokenManager`] per OAuth2 account, shared by SMTP delivery, IMAP
//! and POP3: the access token is reused until shortly before it expires and
//! refreshed once however many callers wait (single flight); a rejected
//! token is invalidated for one refresh and retry; a grant lost for good is
//! [`TokenError::NeedsReauthorization`] until `mailbridge auth` writes a new
//! token file, which the manager notices without a restart.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

use super::config::{Flow, OAuth2Settings};
use super::store::{now_ms, FileStamp, StoredToken, TokenStore};
use crate::secret::Secret;

/// Refresh this long before the token's expiry (clock skew, a slow SMTP session).
pub const REFRESH_MARGIN: Duration = Duration::from_secs(60);

/// Why no access token could be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// A person must run `mailbridge auth ACCOUNT` (revoked consent, expired
    /// refresh token, no token stored yet). Mail waits; retrying cannot help.
    #[error(
        "account {account:?} needs re-authorization ({reason}); run: mailbridge auth {account}"
    )]
    NeedsReauthorization { account: String, reason: String },
    /// The token endpoint could not be reached or failed; try again later.
    #[error("account {account:?}: token refresh failed: {reason}")]
    Temporary { account: String, reason: String },
}

/// What a token source says when it cannot give a new token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshError {
    /// The grant is gone (`invalid_grant` and the like).
    Permanent(String),
    Temporary(String),
}

pub type RefreshFuture<'a> =
    Pin<Box<dyn Future<Output = Result<StoredToken, RefreshError>> + Send + 'a>>;

/// Where new access tokens come from (the provider in the daemon, a fake in tests).
pub trait TokenSource: Send + Sync {
    /// A new token in place of `current` (refresh grant, or client credentials again).
    fn refresh<'a>(&'a self, current: &'a StoredToken) -> RefreshFuture<'a>;
}

/// The provider's token endpoint as a [`TokenSource`].
pub struct ProviderSource {
    pub settings: OAuth2Settings,
    pub http: reqwest::Client,
}

impl TokenSource for ProviderSource {
    fn refresh<'a>(&'a self, current: &'a StoredToken) -> RefreshFuture<'a> {
        Box::pin(async move {
            let result = if self.settings.flow == Flow::ClientCredentials {
                super::flows::client_credentials(&self.settings, &self.http).await
            } else {
                match &current.refresh_token {
                    Some(rt) => super::flows::refresh(&self.settings, &self.http, rt).await,
                    None => {
                        return Err(RefreshError::Permanent(
                            "the stored grant has no refresh token".into(),
                        ))
                    }
                }
            };
            result.map_err(|e| {
                if e.needs_reauthorization() {
                    RefreshError::Permanent(e.to_string())
                } else {
                    RefreshError::Temporary(e.to_string())
                }
            })
        })
    }
}

struct Current {
    token: StoredToken,
    /// When to refresh (expiry minus [`REFRESH_MARGIN`]) on the tokio clock.
    refresh_at: Option<Instant>,
}

struct Inner {
    current: Option<Current>,
    /// The token file as last read or written by us.
    stamp: Option<FileStamp>,
    /// Set when the grant was lost; cleared when the file changes.
    lost: Option<String>,
}

/// The access token of one account.
pub struct TokenManager {
    account: String,
    store: TokenStore,
    source: Arc<dyn TokenSource>,
    inner: Mutex<Inner>,
}

fn refresh_at(token: &StoredToken) -> Option<Instant> {
    let expires = token.expires_at_ms?;
    let left = Duration::from_millis(expires.saturating_sub(now_ms()));
    Some(Instant::now() + left.saturating_sub(margin(token)))
}

/// [`REFRESH_MARGIN`], or half the token's lifetime when that is shorter:
/// a token living less than the margin would otherwise be refreshed by
/// every caller, one after the other, instead of once.
fn margin(token: &StoredToken) -> Duration {
    let lifetime = token
        .expires_at_ms
        .map(|e| Duration::from_millis(e.saturating_sub(token.obtained_at_ms)))
        .unwrap_or(REFRESH_MARGIN);
    REFRESH_MARGIN.min(lifetime / 2)
}

impl TokenManager {
    pub fn new(account: &str, store: TokenStore, source: Arc<dyn TokenSource>) -> TokenManager {
        TokenManager {
            account: account.to_string(),
            store,
            source,
            inner: Mutex::new(Inner {
                current: None,
                stamp: None,
                lost: None,
            }),
        }
    }

    fn reauth(&self, reason: impl Into<String>) -> TokenError {
        TokenError::NeedsReauthorization {
            account: self.account.clone(),
            reason: reason.into(),
        }
    }

    /// The account this manager keeps tokens for.
    pub fn account(&self) -> &str {
        &self.account
    }

    /// A valid access token: the cached one, or one refresh shared by every
    /// caller waiting at the time (the lock is held across the refresh).
    pub async fn access_token(&self) -> Result<Secret, TokenError> {
        let mut inner = self.inner.lock().await;
        self.reload_if_changed(&mut inner).await?;
        if let Some(reason) = &inner.lost {
            return Err(self.reauth(reason.clone()));
        }
        let Some(current) = &inner.current else {
            // Logged once, like a lost grant; a new token file clears it.
            let reason = "no token stored";
            tracing::error!(account = %self.account, "no OAuth2 token stored; mail and logins for this account wait until `mailbridge auth {}` is run", self.account);
            inner.lost = Some(reason.into());
            return Err(self.reauth(reason));
        };
        if current.refresh_at.is_none_or(|at| Instant::now() < at) {
            return Ok(current.token.access_token.clone());
        }
        let old = current.token.clone();
        match self.source.refresh(&old).await {
            Ok(new) => {
                // Saved before it is used: a rotated refresh token must survive a crash.
                let saved = new.clone();
                let (result, stamp) = self
                    .with_store(move |store, account| {
                        (store.save(account, &saved), store.stamp(account))
                    })
                    .await?;
                if let Err(e) = result {
                    tracing::warn!(account = %self.account, "cannot save the refreshed OAuth2 token: {e}");
                }
                inner.stamp = stamp;
                let token = new.access_token.clone();
                inner.current = Some(Current {
                    refresh_at: refresh_at(&new),
                    token: new,
                });
                Ok(token)
            }
            Err(RefreshError::Permanent(reason)) => {
                tracing::error!(account = %self.account, "OAuth2 grant lost ({reason}); mail for this account waits until `mailbridge auth {}` is run", self.account);
                inner.lost = Some(reason.clone());
                Err(self.reauth(reason))
            }
            Err(RefreshError::Temporary(reason)) => Err(TokenError::Temporary {
                account: self.account.clone(),
                reason,
            }),
        }
    }

    /// The server refused `rejected`: the next [`Self::access_token`]
    /// refreshes. Only the token in use is invalidated, so many sessions
    /// refused with the same token cause one refresh, and a caller retries once.
    pub async fn invalidate(&self, rejected: &Secret) {
        let mut inner = self.inner.lock().await;
        if let Some(c) = &mut inner.current {
            if c.token.access_token == *rejected {
                c.refresh_at = Some(Instant::now());
            }
        }
    }

    /// Runs `work` on the token store off the runtime threads (it stats,
    /// reads and fsyncs files), as the spool does its file work.
    async fn with_store<T: Send + 'static>(
        &self,
        work: impl FnOnce(&TokenStore, &str) -> T + Send + 'static,
    ) -> Result<T, TokenError> {
        let (store, account) = (self.store.clone(), self.account.clone());
        tokio::task::spawn_blocking(move || work(&store, &account))
            .await
            .map_err(|e| TokenError::Temporary {
                account: self.account.clone(),
                reason: format!("token store: {e}"),
            })
    }

    /// Re-reads the store when its file changed (a new `mailbridge auth`, a `--forget`).
    async fn reload_if_changed(&self, inner: &mut Inner) -> Result<(), TokenError> {
        let stamp = self
            .with_store(|store, account| store.stamp(account))
            .await?;
        if stamp == inner.stamp
            && (inner.current.is_some() || inner.lost.is_some() || stamp.is_none())
        {
            return Ok(());
        }
        let loaded = self
            .with_store(|store, account| store.load(account))
            .await?
            .map_err(|e| self.reauth(e.to_string()))?;
        inner.stamp = stamp;
        inner.lost = None;
        inner.current = loaded.map(|token| Current {
            refresh_at: refresh_at(&token),
            token,
        });
        Ok(())
    }
}

#[cfg(test)]
#[path = "manager_tests.rs"]
mod tests;
