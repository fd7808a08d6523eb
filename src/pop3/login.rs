//! One POP3 login attempt: the local check (argon2 store and failure
//! slowdown, through [`local_check`] only) or passthrough, the per-account
//! session slot, then connect and USER/PASS upstream. The outcome is either a
//! ready upstream session or the `-ERR` refusing it.

use std::net::IpAddr;
use std::sync::Arc;

use tracing::{info, warn};

use super::responses;
use super::session::LoginRequest;
use super::upstream::{self, Connection, UpstreamError};
use crate::auth::FailureVerdict;
use crate::config::Account;
use crate::imap::login::{UPSTREAM_CONNECT_TIMEOUT, UPSTREAM_LOGIN_TIMEOUT};
use crate::secret::Secret;
use crate::slots::AccountSlot;
use crate::Context;

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

/// Runs the whole login for `req` from `ip`.
pub async fn attempt(req: LoginRequest, ctx: &Arc<Context>, ip: IpAddr) -> Outcome {
    let passthrough = ctx.config.pop3.passthrough && !ctx.auth.has_user(&req.user);
    let (account, username, password): (&Account, String, &Secret) = if passthrough {
        if let Err(reply) = passthrough_admit(ctx, ip) {
            return Outcome::Refused(reply);
        }
        let Some(account) = ctx.config.default_account() else {
            warn!("POP3 passthrough login but no default_account is configured");
            return Outcome::Refused(responses::NO_ACCOUNT);
        };
        (account, req.user.clone(), &req.password)
    } else {
        let name = match local_check(ctx, ip, &req).await {
            Ok(name) => name,
            Err(reply) => return Outcome::Refused(reply),
        };
        let Some(account) = ctx.config.account(&name) else {
            warn!(account = %name, "local user points at an unknown account");
            return Outcome::Refused(responses::NO_ACCOUNT);
        };
        let Some(password) = account.password.as_ref() else {
            warn!(
                account = %account.name,
                "POP3 login refused: the account has no usable password ({})",
                account.password_problem.as_deref().unwrap_or("unknown reason")
            );
            return Outcome::Refused(responses::ACCOUNT_UNUSABLE);
        };
        let user = upstream::upstream_user(&account.username, account.pop3_recent_mode);
        (account, user, password)
    };
    let Some(endpoint) = account.pop3.as_ref() else {
        warn!(account = %account.name, "POP3 login refused: the account has no POP3 server");
        return Outcome::Refused(responses::NO_POP3);
    };
    let Some(slot) = ctx.pop3.slots.acquire(&account.name) else {
        warn!(account = %account.name, limit = ctx.pop3.slots.max(), "POP3 login refused: per-account session limit reached");
        return Outcome::Refused(responses::TOO_MANY_CONNECTIONS);
    };
    let Some(tls) = ctx.imap.tls_for(&account.name) else {
        return Outcome::Refused(responses::UPSTREAM_UNAVAILABLE);
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
            if passthrough {
                passthrough_accepted(ctx, ip);
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
            if passthrough {
                Outcome::Refused(
                    record_failure(ctx, ip, "upstream refused passthrough credentials").await,
                )
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

// ---------------------------------------------------------------------------
// The only calls into `crate::auth` (store and failure tracker, the same calls
// the IMAP login makes): local_check, passthrough_admit, passthrough_accepted
// and record_failure.

/// Passthrough: is this address allowed to try (not blocked for failures)?
fn passthrough_admit(ctx: &Context, ip: IpAddr) -> Result<(), &'static [u8]> {
    if ctx.auth.failures().is_blocked(ip) {
        return Err(responses::AUTH_BLOCKED);
    }
    Ok(())
}

/// Passthrough: the upstream accepted the client's own credentials.
fn passthrough_accepted(ctx: &Context, ip: IpAddr) {
    ctx.auth.failures().record_success(ip);
}

/// The local user check. `Ok` is the account name; `Err` the reply, after
/// any slowdown.
async fn local_check(
    ctx: &Context,
    ip: IpAddr,
    req: &LoginRequest,
) -> Result<String, &'static [u8]> {
    let failures = ctx.auth.failures();
    if failures.is_blocked(ip) {
        return Err(responses::AUTH_BLOCKED);
    }
    match ctx.auth.verify(&req.user, req.password.expose()).await {
        Some(account) => {
            failures.record_success(ip);
            Ok(account)
        }
        None => Err(record_failure(ctx, ip, "wrong local user name or password").await),
    }
}

/// Records a failed login from `ip`, waits the growing delay, and says how to answer.
async fn record_failure(ctx: &Context, ip: IpAddr, why: &str) -> &'static [u8] {
    ctx.metrics.auth_failure("pop3");
    match ctx.auth.failures().record_failure(ip) {
        FailureVerdict::Delay(d) => {
            info!(reason = why, "POP3 login failed");
            tokio::time::sleep(d).await;
            responses::AUTH_FAILED
        }
        FailureVerdict::Blocked { first } => {
            if first {
                warn!(%ip, "too many failed logins; refusing this address for a while");
            }
            responses::AUTH_BLOCKED
        }
    }
}
