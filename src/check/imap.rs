//! The IMAP login check: connect with the account's TLS mode, log in with
//! its real credentials (LOGIN, or AUTHENTICATE XOAUTH2 with the OAuth2
//! access token) and log out, on [`crate::imap::upstream`].

use std::time::Duration;

use crate::config::Account;
use crate::imap::{responses, upstream};
use crate::oauth2::Tokens;

use super::probe::Credential;

/// One login, with the password or for an `auth = "oauth2"` account XOAUTH2
/// with its token from `tokens`. `Ok` is a one-line summary, `Err` a message
/// with a hint; neither ever contains the password or the token.
pub async fn login(
    account: &Account,
    tokens: Option<&Tokens>,
    timeout: Duration,
) -> Result<String, String> {
    let ep = &account.imap;
    let probe = super::ProxyProbe {
        label: "IMAP",
        endpoint: ep,
        auth_hint: responses::CHECK_AUTH_HINT,
        mode_hint: format!(
            "is the TLS mode right for port {}? (993 is implicit TLS, 143 is STARTTLS)",
            ep.port
        ),
    };
    let (credential, tls) = probe.prepare(account, tokens).await?;
    let run = async {
        let mut conn = upstream::connect(ep, &tls, timeout).await?;
        let user = &account.username;
        let reply = match &credential {
            Credential::Password(p) => upstream::login(&mut conn, user, p, timeout).await?,
            Credential::Token(t) => {
                upstream::authenticate_xoauth2(&mut conn, user, t, timeout).await?
            }
        };
        upstream::logout(&mut conn).await;
        Ok(reply)
    };
    let reply = probe.conclude(account, timeout, run).await?;
    let caps = reply
        .code
        .as_deref()
        .and_then(|c| c.strip_prefix("CAPABILITY "))
        .map(|c| format!("; {} capabilities", c.split_whitespace().count()))
        .unwrap_or_default();
    Ok(format!(
        "IMAP {ep}: logged in as {}{caps}",
        account.username
    ))
}
