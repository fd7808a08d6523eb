//! One login attempt: local check (throttled argon2) or passthrough,
//! the per-account connection slot, then connect and log in upstream (LOGIN
//! with the password, or AUTHENTICATE XOAUTH2 with the account's OAuth2
//! token). The outcome is either a ready upstream session or the reply
//! refusing it.

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
use crate::oauth2::manager::{TokenError, TokenManager};
use crate::oauth2::retry::{self, LoginError};
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

/// How the proxy logs in upstream for an account.
pub(crate) enum Credential<'a> {
    Password(&'a Secret),
    /// `auth = "oauth2"`: SASL XOAUTH2 with the account's token.
    OAuth2(Arc<TokenManager>),
}

/// The account's upstream credential, or why it has none (logged here).
pub(crate) fn credential<'a>(
    account: &'a Account,
    tokens: &crate::oauth2::Tokens,
    protocol: &str,
) -> Result<Credential<'a>, Unusable> {
    if account.oauth2.is_some() {
        return match tokens.manager(account) {
            Ok(Some(m)) => Ok(Credential::OAuth2(m)),
            Ok(None) => Err(Unusable::NoCredential),
            Err(e) => {
                warn!(account = %account.name, error = %e, "{protocol} login refused: cannot set up the OAuth2 token client");
                Err(Unusable::Unavailable)
            }
        };
    }
    match account.password.secret() {
        Some(p) => Ok(Credential::Password(p)),
        None => {
            warn!(
                account = %account.name,
                "{protocol} login refused: the account has no usable password ({})",
                account.password.problem().unwrap_or("unknown reason")
            );
            Err(Unusable::NoCredential)
        }
    }
}

/// Why [`credential`] gave none.
pub(crate) enum Unusable {
    NoCredential,
    Unavailable,
}

/// What the device is told, and what the log says, when the XOAUTH2 login failed.
pub(crate) enum OAuth2Refusal {
    /// `mailbridge auth ACCOUNT` must run (the manager logged it loudly once).
    NeedsReauthorization,
    /// Try again later (token endpoint or upstream unreachable).
    Unavailable,
    /// The server refused a fresh token too (scopes, IMAP/POP disabled).
    Refused,
}

/// Logs `e` (never a token: errors carry only the server's own text) and
/// decides the answer.
pub(crate) fn oauth2_refusal(e: &LoginError, account: &Account, protocol: &str) -> OAuth2Refusal {
    match e {
        LoginError::Token(TokenError::NeedsReauthorization { .. }) => {
            info!(account = %account.name, "{protocol} login answered with a temporary failure: the account needs re-authorization (mailbridge auth {})", account.name);
            OAuth2Refusal::NeedsReauthorization
        }
        LoginError::Token(TokenError::Temporary { reason, .. }) => {
            warn!(account = %account.name, reason = %Printable(reason), "{protocol} login failed: no OAuth2 access token for now");
            OAuth2Refusal::Unavailable
        }
        LoginError::Upstream(UpstreamError::TokenRejected { text, .. }) => {
            warn!(account = %account.name, upstream_reply = %Printable(text), "upstream {protocol} refused a freshly refreshed OAuth2 token; check the scopes and that {protocol} is enabled for the mailbox (mailbridge check)");
            OAuth2Refusal::Refused
        }
        LoginError::Upstream(e) => {
            warn!(account = %account.name, error = %Printable(&e.to_string()), "upstream {protocol} unavailable");
            OAuth2Refusal::Unavailable
        }
    }
}

/// Connects and runs `AUTHENTICATE XOAUTH2`, with one refresh and retry.
async fn xoauth2(
    account: &Account,
    tls: &Arc<rustls::ClientConfig>,
    manager: &TokenManager,
) -> Result<(Connection, upstream::LoginReply), LoginError> {
    retry::login(manager, |token| async move {
        let mut conn = upstream::connect(&account.imap, tls, UPSTREAM_CONNECT_TIMEOUT).await?;
        match upstream::authenticate_xoauth2(
            &mut conn,
            &account.username,
            &token,
            UPSTREAM_LOGIN_TIMEOUT,
        )
        .await
        {
            Ok(reply) => Ok((conn, reply)),
            Err(e) => {
                upstream::close(&mut conn.stream).await;
                Err(e)
            }
        }
    })
    .await
}

/// The session after a successful upstream login.
fn logged_in(
    conn: Connection,
    reply: upstream::LoginReply,
    tag: &str,
    slot: AccountSlot,
    account: &Account,
    passthrough: bool,
) -> Outcome {
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

/// Runs the whole login for `req` from `ip`.
pub async fn attempt(req: LoginRequest, ctx: &Arc<ImapContext>, ip: IpAddr) -> Outcome {
    let tag = req.tag.as_str();
    let passthrough = ctx.config.imap.passthrough && !ctx.auth.has_user(&req.user);
    // Passthrough: the upstream judges the password, so the reserved attempt
    // stays open until it has answered.
    let mut pending = None;
    let (account, username, credential): (&Account, &str, Credential) = if passthrough {
        match ctx.auth.throttle().admit(ip, &req.user).await {
            Ok(a) => pending = Some(a),
            Err(d) => return Outcome::Refused(denied(ctx, tag, d, "")),
        }
        let Some(account) = ctx.config.default_account() else {
            warn!("passthrough login but no default_account is configured");
            return Outcome::Refused(responses::no_account(tag));
        };
        (
            account,
            req.user.as_str(),
            Credential::Password(&req.password),
        )
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
        let credential = match credential(account, &ctx.tokens, "IMAP") {
            Ok(c) => c,
            Err(Unusable::NoCredential) => {
                return Outcome::Refused(responses::account_unusable(tag))
            }
            Err(Unusable::Unavailable) => {
                return Outcome::Refused(responses::upstream_unavailable(tag))
            }
        };
        (account, account.username.as_str(), credential)
    };
    let Some(slot) = ctx.state.acquire(&account.name) else {
        warn!(account = %account.name, limit = ctx.config.imap.max_connections_per_account, "login refused: per-account connection limit reached");
        return Outcome::Refused(responses::too_many_connections(tag));
    };
    let Some(tls) = ctx.upstream_tls.get(&account.name) else {
        return Outcome::Refused(responses::upstream_unavailable(tag));
    };
    let password = match credential {
        Credential::Password(p) => p,
        Credential::OAuth2(manager) => {
            return match xoauth2(account, &tls, &manager).await {
                Ok((conn, reply)) => logged_in(conn, reply, tag, slot, account, passthrough),
                Err(e) => Outcome::Refused(match oauth2_refusal(&e, account, "IMAP") {
                    OAuth2Refusal::NeedsReauthorization => responses::needs_reauthorization(tag),
                    OAuth2Refusal::Unavailable => responses::upstream_unavailable(tag),
                    OAuth2Refusal::Refused => responses::upstream_token_refused(tag),
                }),
            }
        }
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
            logged_in(conn, reply, tag, slot, account, passthrough)
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
