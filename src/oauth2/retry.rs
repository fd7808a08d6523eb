//! One upstream XOAUTH2 login with an account's [`TokenManager`], shared by
//! the IMAP and POP3 proxies: the current access token, and when the server
//! refuses it, one invalidate, one refresh and one retry.

use std::future::Future;

use super::manager::{TokenError, TokenManager};
use crate::imap::upstream::UpstreamError;
use crate::secret::Secret;

/// Why the XOAUTH2 login did not happen.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// No access token (needs `mailbridge auth`, or the token endpoint failed).
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The upstream (connect, TLS, or the server refused the fresh token too).
    #[error(transparent)]
    Upstream(UpstreamError),
}

/// True when a fresh token may be accepted where this one was refused.
pub fn worth_retry(e: &UpstreamError) -> bool {
    matches!(e, UpstreamError::TokenRejected { .. })
}

/// Runs `attempt` (connect and authenticate with the given token) with the
/// manager's token; a refused token is invalidated and `attempt` runs once
/// more with the refreshed one.
pub async fn login<T, F, Fut>(manager: &TokenManager, mut attempt: F) -> Result<T, LoginError>
where
    F: FnMut(Secret) -> Fut,
    Fut: Future<Output = Result<T, UpstreamError>>,
{
    let token = manager.access_token().await?;
    match attempt(token.clone()).await {
        Err(e) if worth_retry(&e) => {
            tracing::debug!(
                "upstream refused the OAuth2 access token; refreshing it and trying once more"
            );
            manager.invalidate(&token).await;
            let fresh = manager.access_token().await?;
            attempt(fresh).await.map_err(LoginError::Upstream)
        }
        other => other.map_err(LoginError::Upstream),
    }
}
