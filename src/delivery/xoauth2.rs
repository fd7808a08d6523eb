//! The SMTP login of `auth = "oauth2"` accounts: the access token from the
//! account's [`TokenManager`], `AUTH XOAUTH2` with the initial response
//! (our own exchange: on the provider's `334` JSON challenge we answer the
//! empty line and keep its final reply), and on a refused token one
//! invalidation, one refresh and one retry on a new connection
//! ([`crate::oauth2::retry`], shared with IMAP and POP3).

use std::time::Duration;

use lettre::transport::smtp::client::AsyncSmtpConnection;
use lettre::transport::smtp::extension::ClientId;

use super::outcome::{describe, ConnectFailure};
use super::reply::Reply;
use super::transport::AccountTls;
use super::upstream::{open, Line};
use crate::config::Account;
use crate::oauth2::manager::{TokenError, TokenManager};
use crate::oauth2::retry::{self, LoginError};
use crate::oauth2::sasl::{self, XOAuth2Failure};
use crate::secret::Secret;

/// For the worker's rescan: whether `account`, whose mail is held for
/// re-authorization, has a token now (`mailbridge auth` wrote a new token
/// file, which the manager picks up). Then its mail is released.
pub(super) async fn reauthorized(ctx: &crate::Context, account: &str) -> bool {
    let Some(a) = ctx.config.account(account) else {
        return false;
    };
    let Ok(Some(m)) = ctx.tokens.manager(a) else {
        return false;
    };
    match m.access_token().await {
        Ok(_) => {
            ctx.metrics.reauthorized(account);
            tracing::info!(account = %account, "the account has an OAuth2 token again: delivering its held mail");
            true
        }
        // Still lost (also after a restart, before the mail is tried again): shown.
        Err(e) => {
            if let ConnectFailure::NeedsReauthorization(reason) = failure(a, &e) {
                ctx.metrics.reauthorization_needed(account, &reason);
            }
            false
        }
    }
}

/// How an `AUTH XOAUTH2` ended, short of success.
#[derive(Debug)]
enum Refusal {
    /// The server answered with `reply` (after the JSON challenge, if any).
    Answered {
        reply: Reply,
        challenge: Option<XOAuth2Failure>,
    },
    /// The connection failed or the name/token cannot be carried.
    Failed(ConnectFailure),
}

/// True when a fresh token may be accepted: `535`, or a JSON challenge
/// saying the token was invalid (401) or refused (400).
fn token_rejected(reply: &Reply, challenge: Option<&XOAuth2Failure>) -> bool {
    reply.code == 535 || challenge.is_some_and(|c| c.status == "401" || c.status == "400")
}

/// The account's access token now, as a connect failure when there is none:
/// a lost grant holds the mail, a token endpoint problem defers it.
pub(crate) async fn token(account: &Account, m: &TokenManager) -> Result<Secret, ConnectFailure> {
    m.access_token().await.map_err(|e| failure(account, &e))
}

/// A [`TokenError`] as the delivery's [`ConnectFailure`], with the provider hint.
pub(crate) fn failure(account: &Account, e: &TokenError) -> ConnectFailure {
    let text = e.to_string();
    let google = account
        .oauth2
        .as_ref()
        .is_some_and(|s| s.provider == crate::oauth2::config::Provider::Google);
    let reason = match crate::hints::for_provider_text(&text, google) {
        Some(hint) => format!("{text} ({hint})"),
        None => text,
    };
    match e {
        TokenError::NeedsReauthorization { .. } => ConnectFailure::NeedsReauthorization(reason),
        TokenError::Temporary { .. } => ConnectFailure::Temporary(reason),
    }
}

/// Opens a connection and logs in with `token`; a refused token is
/// invalidated, refreshed once and tried once more on a new connection
/// ([`retry::with_refresh`], as the IMAP and POP3 logins do).
/// Returns the connection and the token it logged in with.
pub(crate) async fn connect(
    account: &Account,
    tls: &AccountTls,
    hello: &ClientId,
    timeout: Duration,
    manager: &TokenManager,
    token: Secret,
) -> Result<(AsyncSmtpConnection, Secret), ConnectFailure> {
    let refused = |r: &Refusal| match r {
        Refusal::Answered { reply, challenge } => token_rejected(reply, challenge.as_ref()),
        Refusal::Failed(_) => false,
    };
    retry::with_refresh(manager, token, refused, |token| async move {
        attempt(account, tls, hello, timeout, &token).await
    })
    .await
    .map_err(|e| match e {
        LoginError::Token(e) => failure(account, &e),
        LoginError::Upstream(r) => refusal(account, r),
    })
}

/// One connection and one `AUTH XOAUTH2`; a connection that could not be
/// opened is [`Refusal::Failed`].
async fn attempt(
    account: &Account,
    tls: &AccountTls,
    hello: &ClientId,
    timeout: Duration,
    token: &Secret,
) -> Result<AsyncSmtpConnection, Refusal> {
    let mut conn = open(account, tls, hello, timeout)
        .await
        .map_err(Refusal::Failed)?;
    match auth(&mut conn, &account.username, token).await {
        Ok(()) => Ok(conn),
        Err(r) => {
            conn.abort().await;
            Err(r)
        }
    }
}

/// `AUTH XOAUTH2 <initial response>`; a `334` carries the provider's JSON
/// error, answered with the empty line, after which the final reply comes.
async fn auth(conn: &mut AsyncSmtpConnection, user: &str, token: &Secret) -> Result<(), Refusal> {
    let ir = sasl::initial_response(user, token).map_err(|e| {
        Refusal::Failed(ConnectFailure::Config(format!(
            "AUTH XOAUTH2 as {user}: {e}"
        )))
    })?;
    let answered = |e: &lettre::transport::smtp::Error, challenge| match Reply::from_error(e) {
        Some(reply) => Refusal::Answered { reply, challenge },
        None => Refusal::Failed(ConnectFailure::Temporary(describe(e, "AUTH XOAUTH2"))),
    };
    let first = conn
        .command(Line(format!("AUTH XOAUTH2 {}", ir.expose())))
        .await
        .map_err(|e| answered(&e, None))?;
    if u16::from(first.code()) != 334 {
        return Ok(());
    }
    let text: Vec<&str> = first.message().collect();
    let challenge = sasl::decode_failure(&text.join("")).ok();
    match conn.command(Line(String::new())).await {
        Err(e) => Err(answered(&e, challenge)),
        // Positive after the challenge: not what any provider does; not logged in.
        Ok(resp) => Err(Refusal::Answered {
            reply: Reply::from_response(&resp),
            challenge,
        }),
    }
}

/// The typed failure for a refused login (a configuration problem: mail waits).
fn refusal(account: &Account, r: Refusal) -> ConnectFailure {
    match r {
        Refusal::Failed(f) => f,
        Refusal::Answered { reply, challenge } => {
            let google = account
                .oauth2
                .as_ref()
                .is_some_and(|s| s.provider == crate::oauth2::config::Provider::Google);
            let said = challenge
                .map(|c| format!(" (the provider said status {})", c.status))
                .unwrap_or_default();
            let hint = crate::hints::for_auth_reply(&reply, true, google);
            ConnectFailure::AuthRefused {
                reason: format!(
                    "AUTH XOAUTH2 as {} at {}: {reply}{said}; {hint}",
                    account.username, account.smtp
                ),
                reply,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_grant_holds_and_an_unreachable_endpoint_defers_with_the_hint() {
        let toml = "[[accounts]]\nname = \"g\"\nprovider = \"gmail\"\nusername = \"me@gmail.com\"\nauth = \"oauth2\"\n\
                    [accounts.oauth2]\nprovider = \"google\"\nclient_id = \"abc\"\nclient_secret = \"s\"\n";
        let c = crate::config::Config::parse(toml, std::path::Path::new("/x/relay.toml")).unwrap();
        let a = &c.accounts[0];
        let lost = TokenError::NeedsReauthorization {
            account: "g".into(),
            reason: "invalid_grant: Token has been expired or revoked.".into(),
        };
        let ConnectFailure::NeedsReauthorization(why) = failure(a, &lost) else {
            panic!("not held");
        };
        assert!(
            why.contains("mailbridge auth g") && why.contains("7 days"),
            "{why}"
        );
        let down = TokenError::Temporary {
            account: "g".into(),
            reason: "connection refused".into(),
        };
        assert!(matches!(failure(a, &down), ConnectFailure::Temporary(_)));
    }

    #[test]
    fn which_refusals_are_worth_a_new_token() {
        let challenge = |s: &str| XOAuth2Failure {
            status: s.into(),
            schemes: None,
            scope: None,
        };
        let r535 = Reply::from_parts(535, "5.7.8 Username and Password not accepted");
        let r454 = Reply::from_parts(454, "4.7.0 try later");
        let r550 = Reply::from_parts(550, "5.7.30 Basic authentication is not supported");
        assert!(token_rejected(&r535, None));
        assert!(token_rejected(&r454, Some(&challenge("401"))));
        assert!(token_rejected(&r454, Some(&challenge("400"))));
        assert!(!token_rejected(&r454, Some(&challenge("500"))));
        assert!(!token_rejected(&r550, None));
    }
}
