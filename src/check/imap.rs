//! The IMAP login check: connect with the account's TLS mode, log in with
//! its real credentials and log out, on [`crate::imap::upstream`].

use std::time::Duration;

use crate::config::Account;
use crate::imap::{responses, upstream};

/// `Ok` is a one-line summary, `Err` a message with a hint. Neither ever
/// contains the password.
pub async fn login(account: &Account, timeout: Duration) -> Result<String, String> {
    let ep = &account.imap;
    let Some(password) = account.password.secret() else {
        return Err(format!(
            "IMAP {ep}: no usable password: {}",
            account.password.problem().unwrap_or("none configured")
        ));
    };
    let tls = crate::tls::upstream_client_config(account.ca_file.as_deref())
        .map_err(|e| format!("IMAP {ep}: {e}"))?;
    let run = async {
        let mut conn = upstream::connect(ep, &tls, timeout).await?;
        let reply = upstream::login(&mut conn, &account.username, password, timeout).await?;
        upstream::logout(&mut conn).await;
        Ok::<_, upstream::UpstreamError>(reply)
    };
    let mode_hint = format!(
        "is the TLS mode right for port {}? (993 is implicit TLS, 143 is STARTTLS)",
        ep.port
    );
    match tokio::time::timeout(timeout, run).await {
        Ok(Ok(reply)) => {
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
        Ok(Err(e)) => Err(format!(
            "IMAP {ep}: {}",
            super::explain(
                &e,
                account,
                &ep.host,
                responses::CHECK_AUTH_HINT,
                &mode_hint
            )
        )),
        Err(_) => Err(format!(
            "IMAP {ep}: {}",
            super::timed_out(timeout, &mode_hint)
        )),
    }
}
