//! The POP3 login check: connect with the account's POP3 TLS mode, log in
//! with its real credentials and QUIT (which changes nothing), on
//! [`crate::pop3::upstream`].

use std::time::Duration;

use crate::config::Account;
use crate::pop3::{responses, upstream};

/// `Ok` is a one-line summary, `Err` a message with a hint; neither has the password.
pub async fn login(account: &Account, timeout: Duration) -> Result<String, String> {
    let Some(ep) = account.pop3.as_ref() else {
        return Err("POP3: this account has no POP3 server".into());
    };
    let Some(password) = account.password.secret() else {
        return Err(format!(
            "POP3 {ep}: no usable password: {}",
            account.password.problem().unwrap_or("none configured")
        ));
    };
    let tls = crate::tls::upstream_client_config(account.ca_file.as_deref())
        .map_err(|e| format!("POP3 {ep}: {e}"))?;
    let user = upstream::upstream_user(&account.username, account.pop3_recent_mode);
    let run = async {
        let mut conn = upstream::connect(ep, &tls, timeout).await?;
        upstream::login(&mut conn, &user, password, timeout).await?;
        upstream::quit(&mut conn).await;
        Ok::<_, upstream::UpstreamError>(())
    };
    let mode_hint = format!(
        "is the TLS mode right for port {}? (995 is implicit TLS, 110 is STLS)",
        ep.port
    );
    match tokio::time::timeout(timeout, run).await {
        Ok(Ok(())) => Ok(format!("POP3 {ep}: logged in as {user}")),
        Ok(Err(e)) => Err(format!(
            "POP3 {ep}: {}",
            super::explain(
                &e,
                account,
                &ep.host,
                responses::CHECK_AUTH_HINT,
                &mode_hint
            )
        )),
        Err(_) => Err(format!(
            "POP3 {ep}: {}",
            super::timed_out(timeout, &mode_hint)
        )),
    }
}
