//! One POP3 login attempt: the local check (argon2 store and failure
//! slowdown, through [`local_check`] only) or passthrough, the per-account
//! session slot, then connect and USER/PASS upstream (or AUTH XOAUTH2 with
//! the account's OAuth2 token). The outcome is either a ready upstream
//! session or the `-ERR` refusing it.

use std::net::IpAddr;
use std::sync::Arc;

use tracing::{debug, info, warn};

use super::responses;
use super::session::LoginRequest;
use super::upstream::{self, Connection, UpstreamError};
use super::Pop3Context;
use crate::auth::Denied;
use crate::config::Account;
use crate::config::Endpoint;
use crate::imap::login::{
    credential, oauth2_refusal, Credential, OAuth2Refusal, Unusable, UPSTREAM_CONNECT_TIMEOUT,
    UPSTREAM_LOGIN_TIMEOUT,
};
use crate::oauth2::manager::TokenManager;
use crate::oauth2::retry::{self, LoginError};
use crate::slots::AccountSlot;

pub struct LoggedIn {
    pub upstream: Connection,
    pub slot: AccountSlot,
    pub account: String,
    pub passthrough: bool,
}

pub enum Outcome {
    LoggedIn(Box<LoggedIn>),
    /// The reply to send; the session stays in AUTHORIZATION state.
    Refused(&'static [u8]),
}

/// Connects and runs `AUTH XOAUTH2` as `user`, with one refresh and retry.
async fn xoauth2(
    endpoint: &Endpoint,
    user: &str,
    tls: &std::sync::Arc<rustls::ClientConfig>,
    manager: &TokenManager,
) -> Result<Connection, LoginError> {
    retry::login(manager, |token| async move {
        let mut conn = upstream::connect(endpoint, tls, UPSTREAM_CONNECT_TIMEOUT).await?;
        match upstream::authenticate_xoauth2(&mut conn, user, &token, UPSTREAM_LOGIN_TIMEOUT).await
        {
            Ok(()) => Ok(conn),
            Err(e) => {
                upstream::close(&mut conn.stream).await;
                Err(e)
            }
        }
    })
    .await
}

/// Runs the whole login for `req` from `ip`.
pub async fn attempt(req: LoginRequest, ctx: &Arc<Pop3Context>, ip: IpAddr) -> Outcome {
    let passthrough = ctx.config.pop3.passthrough && !ctx.auth.has_user(&req.user);
    let mut pending = None;
    let (account, username, credential): (&Account, String, Credential) = if passthrough {
        // The upstream judges the password: the reserved attempt stays open
        // until it has answered.
        match ctx.auth.throttle().admit(ip, &req.user).await {
            Ok(a) => pending = Some(a),
            Err(d) => return Outcome::Refused(denied(ctx, d, "")),
        }
        let Some(account) = ctx.config.default_account() else {
            warn!("POP3 passthrough login but no default_account is configured");
            return Outcome::Refused(responses::NO_ACCOUNT);
        };
        (
            account,
            req.user.clone(),
            Credential::Password(&req.password),
        )
    } else {
        let name = match ctx.auth.login(ip, &req.user, &req.password).await {
            Ok(name) => name,
            Err(d) => return Outcome::Refused(denied(ctx, d, "wrong local user name or password")),
        };
        let Some(account) = ctx.config.account(&name) else {
            warn!(account = %name, "local user points at an unknown account");
            return Outcome::Refused(responses::NO_ACCOUNT);
        };
        let credential = match credential(account, &ctx.tokens, "POP3") {
            Ok(c) => c,
            Err(Unusable::NoCredential) => return Outcome::Refused(responses::ACCOUNT_UNUSABLE),
            Err(Unusable::Unavailable) => return Outcome::Refused(responses::UPSTREAM_UNAVAILABLE),
        };
        let user = upstream::upstream_user(&account.username, account.pop3_recent_mode);
        (account, user, credential)
    };
    let Some(endpoint) = account.pop3.as_ref() else {
        warn!(account = %account.name, "POP3 login refused: the account has no POP3 server");
        return Outcome::Refused(responses::NO_POP3);
    };
    let Some(slot) = ctx.state.slots.acquire(&account.name) else {
        warn!(account = %account.name, limit = ctx.state.slots.max(), "POP3 login refused: per-account session limit reached");
        return Outcome::Refused(responses::TOO_MANY_CONNECTIONS);
    };
    let Some(tls) = ctx.upstream_tls.get(&account.name) else {
        return Outcome::Refused(responses::UPSTREAM_UNAVAILABLE);
    };
    let password = match credential {
        Credential::Password(p) => p,
        Credential::OAuth2(manager) => {
            return match xoauth2(endpoint, &username, &tls, &manager).await {
                Ok(conn) => Outcome::LoggedIn(Box::new(LoggedIn {
                    upstream: conn,
                    slot,
                    account: account.name.clone(),
                    passthrough,
                })),
                Err(e) => Outcome::Refused(match oauth2_refusal(&e, account, "POP3") {
                    OAuth2Refusal::NeedsReauthorization => responses::NEEDS_REAUTHORIZATION,
                    OAuth2Refusal::Unavailable => responses::UPSTREAM_UNAVAILABLE,
                    OAuth2Refusal::Refused => responses::UPSTREAM_TOKEN_REFUSED,
                }),
            }
        }
    };
    let mut conn = match upstream::connect(endpoint, &tls, UPSTREAM_CONNECT_TIMEOUT).await {
        Ok(c) => c,
        Err(e) => {
            warn!(account = %account.name, upstream = %endpoint, error = %e, "upstream POP3 unavailable");
            return Outcome::Refused(responses::UPSTREAM_UNAVAILABLE);
        }
    };
    match upstream::login(&mut conn, &username, password, UPSTREAM_LOGIN_TIMEOUT).await {
        Ok(()) => {
            if let Some(a) = pending {
                a.succeeded();
            }
            Outcome::LoggedIn(Box::new(LoggedIn {
                upstream: conn,
                slot,
                account: account.name.clone(),
                passthrough,
            }))
        }
        Err(UpstreamError::Rejected { text }) => {
            upstream::close(&mut conn.stream).await;
            if let Some(a) = pending {
                let d = a.failed();
                Outcome::Refused(denied(ctx, d, "upstream refused passthrough credentials"))
            } else {
                warn!(account = %account.name, upstream_reply = %text, "upstream POP3 refused the account's credentials; check the app password and that POP is enabled (mailbridge check)");
                Outcome::Refused(responses::UPSTREAM_AUTH_FAILED)
            }
        }
        Err(e) => {
            warn!(account = %account.name, upstream = %endpoint, error = %e, "upstream POP3 login failed");
            Outcome::Refused(responses::UPSTREAM_UNAVAILABLE)
        }
    }
}

/// The reply to a login the throttle or the password check refused (the same
/// login throttle as SMTP AUTH and IMAP LOGIN: `crate::auth`).
fn denied(ctx: &Pop3Context, d: Denied, why: &str) -> &'static [u8] {
    if d.was_verified() {
        ctx.metrics.auth_failure("pop3");
    }
    match d {
        Denied::Failed => {
            info!(reason = why, "POP3 login failed");
            responses::AUTH_FAILED
        }
        Denied::Blocked { .. } => responses::AUTH_BLOCKED,
        Denied::Busy => {
            // Not logged above debug: a flood would make one line per attempt.
            debug!("POP3 login refused for now: too many logins in progress from this address");
            responses::LOGIN_BUSY
        }
    }
}
