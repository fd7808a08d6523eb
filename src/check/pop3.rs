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
    let probe = super::ProxyProbe {
        label: "POP3",
        endpoint: ep,
        auth_hint: responses::CHECK_AUTH_HINT,
        mode_hint: format!(
            "is the TLS mode right for port {}? (995 is implicit TLS, 110 is STLS)",
            ep.port
        ),
    };
    let (password, tls) = probe.prepare(account)?;
    let user = upstream::upstream_user(&account.username, account.pop3_recent_mode);
    let run = async {
        let mut conn = upstream::connect(ep, &tls, timeout).await?;
        upstream::login(&mut conn, &user, password, timeout).await?;
        upstream::quit(&mut conn).await;
        Ok(())
    };
    probe.conclude(account, timeout, run).await?;
    Ok(format!("POP3 {ep}: logged in as {user}"))
}
