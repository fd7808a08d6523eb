//! One login attempt: local check (throttled argon2) or passthrough,
//! the per-account connection slot, then connect and log in upstream. The
//! outcome is either a ready upstream session or the reply refusing it.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, info, warn};

use super::session::LoginRequest;
use super::upstream::{self, Connection, UpstreamError};
use super::ImapContext;
use super::{responses, AccountSlot};
use crate::auth::Denied;
use crate::config::Account;
use crate::secret::Secret;
use crate::text::Printable;

/// Connect, TLS and greeting together must finish within this.
pub const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// The upstream's answer to LOGIN (Gmail can take a few seconds).
pub const UPSTREAM_LOGIN_TIMEOUT: Duration = Duration::from_secs(30);

pub struct LoggedIn {
    pub upstream: Connection,
    /// Untagged lines and the client-tagged OK to send the client.
    pub reply: Vec<u8>,
    pub slot: AccountSlot,
    pub account: String,
    pub passthrough: bool,
}

pub enum Outcome {
    LoggedIn(Box<LoggedIn>),
    Refused(Vec<u8>),
}

/// Runs the whole login for `req` from `ip`.
pub async fn attempt(req: LoginRequest, ctx: &Arc<ImapContext>, ip: IpAddr) -> Outcome {
    let tag = req.tag.as_str();
    let passthrough = ctx.config.imap.passthrough && !ctx.auth.has_user(&req.user);
    // Passthrough: the upstream judges the password, so the reserved attempt
    // stays open until it has answered.
    let mut pending = None;
    let (account, username, password): (&Account, &str, &Secret) = if passthrough {
        match ctx.auth.throttle().admit(ip, &req.user).await {
            Ok(a) => pending = Some(a),
            Err(d) => return Outcome::Refused(denied(ctx, tag, d, "")),
        }
        let Some(account) = ctx.config.default_account() else {
            warn!("passthrough login but no default_account is configured");
            return Outcome::Refused(responses::no_account(tag));
        };
        (account, req.user.as_str(), &req.password)
    } else {
        let name = match ctx.auth.login(ip, &req.user, &req.password).await {
            Ok(name) => name,
            Err(d) => {
                return Outcome::Refused(denied(ctx, tag, d, "wrong local user name or password"))
            }
        };
        let Some(account) = ctx.config.account(&name) else {
            warn!(account = %name, "local user points at an unknown account");
            return Outcome::Refused(responses::no_account(tag));
        };
        let Some(password) = account.password.secret() else {
            warn!(
                account = %account.name,
                "login refused: the account has no usable password ({})",
                account.password.problem().unwrap_or("unknown reason")
            );
            return Outcome::Refused(responses::account_unusable(tag));
        };
        (account, account.username.as_str(), password)
    };
    let Some(slot) = ctx.state.acquire(&account.name) else {
        warn!(account = %account.name, limit = ctx.config.imap.max_connections_per_account, "login refused: per-account connection limit reached");
        return Outcome::Refused(responses::too_many_connections(tag));
    };
    let Some(tls) = ctx.upstream_tls.get(&account.name) else {
        return Outcome::Refused(responses::upstream_unavailable(tag));
    };
    let mut conn = match upstream::connect(&account.imap, &tls, UPSTREAM_CONNECT_TIMEOUT).await {
        Ok(c) => c,
        Err(e) => {
            warn!(account = %account.name, upstream = %account.imap, error = %Printable(&e.to_string()), "upstream IMAP unavailable");
            return Outcome::Refused(responses::upstream_unavailable(tag));
        }
    };
    match upstream::login(&mut conn, username, password, UPSTREAM_LOGIN_TIMEOUT).await {
        Ok(reply) => {
            if let Some(a) = pending {
                a.succeeded();
            }
            let mut bytes = reply.untagged;
            bytes.extend(responses::login_ok(tag, reply.code.as_deref()));
            Outcome::LoggedIn(Box::new(LoggedIn {
                upstream: conn,
                reply: bytes,
                slot,
                account: account.name.clone(),
                passthrough,
            }))
        }
        Err(UpstreamError::Rejected { text }) => {
            upstream::close(&mut conn.stream).await;
            if let Some(a) = pending {
                let d = a.failed();
                Outcome::Refused(denied(
                    ctx,
                    tag,
                    d,
                    "upstream refused passthrough credentials",
                ))
            } else {
                warn!(account = %account.name, upstream_reply = %Printable(&text), "upstream refused the account's credentials; check the app password (mailbridge check)");
                Outcome::Refused(responses::upstream_auth_failed(tag))
            }
        }
        Err(e) => {
            warn!(account = %account.name, upstream = %account.imap, error = %Printable(&e.to_string()), "upstream IMAP login failed");
            Outcome::Refused(responses::upstream_unavailable(tag))
        }
    }
}

/// The reply to a login the throttle or the password check refused.
fn denied(ctx: &ImapContext, tag: &str, d: Denied, why: &str) -> Vec<u8> {
    if d.was_verified() {
        ctx.metrics.auth_failure("imap");
    }
    match d {
        Denied::Failed => {
            info!(reason = why, "login failed");
            responses::auth_failed(tag)
        }
        Denied::Blocked { .. } => responses::auth_blocked(tag),
        Denied::Busy => {
            // Not logged above debug: a flood would make one line per attempt.
            debug!("login refused for now: too many logins in progress from this address");
            responses::login_busy(tag)
        }
    }
}
