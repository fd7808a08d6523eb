//! One upstream XOAUTH2 login with an account's [`TokenManager`], shared by
//! SMTP delivery and the IMAP and POP3 proxies: the current access token,
//! and when the server refuses it, one invalidate, one refresh and one retry.

use std::future::Future;

use super::manager::{TokenError, TokenManager};
use crate::imap::upstream::UpstreamError;
use crate::secret::Secret;

/// Why the XOAUTH2 login did not happen.
#[derive(Debug, thiserror::Error)]
pub enum LoginError<E = UpstreamError> {
    /// No access token (needs `mailbridge auth`, or the token endpoint failed).
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The upstream (connect, TLS, or the server refused the fresh token too).
    #[error(transparent)]
    Upstream(E),
}

/// True when a fresh token may be accepted where this one was refused.
pub fn worth_retry(e: &UpstreamError) -> bool {
    matches!(e, UpstreamError::TokenRejected { .. })
}

/// The IMAP and POP3 login: [`with_refresh`] starting from the manager's
/// current token, retried on [`worth_retry`].
pub async fn login<T, F, Fut>(manager: &TokenManager, attempt: F) -> Result<T, LoginError>
where
    F: FnMut(Secret) -> Fut,
    Fut: Future<Output = Result<T, UpstreamError>>,
{
    let token = manager.access_token().await?;
    with_refresh(manager, token, worth_retry, attempt)
        .await
        .map(|(value, _)| value)
}

/// Runs `attempt` (connect and authenticate with the given token) with
/// `token`; when `refused` says the server refused that token, it is
/// invalidated and `attempt` runs once more with the refreshed one. Returns
/// what the attempt gave and the token it logged in with.
pub async fn with_refresh<T, E, F, Fut>(
    manager: &TokenManager,
    token: Secret,
    refused: impl Fn(&E) -> bool,
    mut attempt: F,
) -> Result<(T, Secret), LoginError<E>>
where
    F: FnMut(Secret) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    match attempt(token.clone()).await {
        Ok(value) => Ok((value, token)),
        Err(e) if refused(&e) => {
            tracing::info!(
                account = %manager.account(),
                "the upstream refused the OAuth2 access token; refreshing it and trying once more"
            );
            manager.invalidate(&token).await;
            let fresh = manager.access_token().await?;
            match attempt(fresh.clone()).await {
                Ok(value) => Ok((value, fresh)),
                Err(e) => Err(LoginError::Upstream(e)),
            }
        }
        Err(e) => Err(LoginError::Upstream(e)),
    }
}
