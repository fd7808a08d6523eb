//! The IMAP login check: connect with the account's TLS mode, log in with
//! its real credentials and log out, on [`crate::imap::upstream`].

use std::time::Duration;

use crate::config::Account;
use crate::imap::{responses, upstream};

/// `Ok` is a one-line summary, `Err` a message with a hint. Neither ever
/// contains the password.
pub async fn login(account: &Account, timeout: Duration) -> Result<String, String> {
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
    let (password, tls) = probe.prepare(account)?;
    let run = async {
        let mut conn = upstream::connect(ep, &tls, timeout).await?;
        let reply = upstream::login(&mut conn, &account.username, password, timeout).await?;
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
