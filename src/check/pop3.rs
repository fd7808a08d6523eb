//! The POP3 login check: connect with the account's POP3 TLS mode, log in
//! with its real credentials (USER/PASS, or AUTH XOAUTH2 with the OAuth2
//! access token) and QUIT (which changes nothing), on
//! [`crate::pop3::upstream`].

use std::time::Duration;

use crate::config::Account;
use crate::oauth2::Tokens;
use crate::pop3::{responses, upstream};

use super::probe::Credential;

/// One login, with the password or for an `auth = "oauth2"` account XOAUTH2
/// with its token from `tokens`. `Ok` is a one-line summary, `Err` a message
/// with a hint; neither ever contains the password or the token.
pub async fn login(
    account: &Account,
    tokens: Option<&Tokens>,
    timeout: Duration,
) -> Result<String, String> {
    let Some(ep) = account.pop3.as_ref() else {
        return Err("POP3: this account has no POP3 server".into());
    };
    let probe = super::ProxyProbe {
        label: "POP3",
        endpoint: ep,
        auth_hint: responses::CHECK_AUTH_HINT,
        mode_hint: format!(
            "is the TLS mode right for port {}? (995 is implicit TLS, 110 is STLS)",
            ep.port
        ),
    };
    let (credential, tls) = probe.prepare(account, tokens).await?;
    let user = upstream::upstream_user(&account.username, account.pop3_recent_mode);
    let run = async {
        let mut conn = upstream::connect(ep, &tls, timeout).await?;
        match &credential {
            Credential::Password(p) => upstream::login(&mut conn, &user, p, timeout).await?,
            Credential::Token(t) => {
                upstream::authenticate_xoauth2(&mut conn, &user, t, timeout).await?
            }
        }
        upstream::quit(&mut conn).await;
        Ok(())
    };
    probe.conclude(account, timeout, run).await?;
    Ok(format!("POP3 {ep}: logged in as {user}"))
}
