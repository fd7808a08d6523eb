//! The SMTP login check: one real upstream login (TLS, EHLO, AUTH with the
//! password or XOAUTH2 with the OAuth2 token, QUIT) on the delivery
//! client's own [`crate::delivery::connect`], with a human explanation and
//! a hint when it fails.

use std::time::Duration;

use lettre::transport::smtp::extension::ClientId;

use crate::config::{Account, TlsMode};
use crate::delivery::{account_tls, connect, no_password};
use crate::oauth2::Tokens;

/// Connects with the account's TLS mode, authenticates and quits: the
/// password, or for an `auth = "oauth2"` account XOAUTH2 with its token from
/// `tokens` (refreshed if due; a refused token is refreshed once). `Ok` is a
/// one-line summary; `Err` says what is wrong and how to fix it. Never
/// contains the password or the token. (The port/TLS mode mismatch is
/// reported once, by [`super::run`].)
pub async fn login(
    account: &Account,
    tokens: Option<&Tokens>,
    timeout: Duration,
) -> Result<String, String> {
    let ep = &account.smtp;
    // Without the token store only a password login is possible.
    let no_store = Tokens::new(std::path::Path::new(""));
    let tokens = match tokens {
        Some(t) => t,
        None if account.oauth2.is_some() => {
            return Err(format!(
            "account {:?} uses auth = \"oauth2\": run `mailbridge check`, which reads its token",
            account.name
        ))
        }
        None => &no_store,
    };
    if account.oauth2.is_none() && account.password.secret().is_none() {
        return Err(no_password(account));
    }
    let tls = account_tls(account)?;
    let hello = ClientId::Domain("localhost.localdomain".into());
    let connecting = connect(account, &tls, &hello, timeout, tokens);
    match tokio::time::timeout(timeout, connecting).await {
        Err(_) => {
            let what = match ep.tls {
                TlsMode::Implicit => "no TLS handshake; if this port expects plaintext first (587, 25) set tls = \"starttls\"",
                TlsMode::Starttls => "no SMTP greeting; if this port uses implicit TLS (465) set tls = \"implicit\"",
            };
            Err(format!(
                "{ep}: no answer within {}: {what}; or a firewall drops the connection.",
                humantime::format_duration(timeout)
            ))
        }
        Ok(Err(f)) => Err(f.reason().to_string()),
        Ok(Ok((mut conn, token))) => {
            let _ = conn.quit().await;
            let how = if token.is_some() { " with XOAUTH2" } else { "" };
            Ok(format!(
                "{ep}: TLS verified, logged in as {}{how}",
                account.username
            ))
        }
    }
}
