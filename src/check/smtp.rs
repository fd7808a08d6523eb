//! The SMTP login check: one real upstream login (TLS, EHLO, AUTH, QUIT) on
//! the delivery client's own [`crate::delivery::connect`], with a human
//! explanation and a hint when it fails.

use std::time::Duration;

use lettre::transport::smtp::extension::ClientId;

use crate::config::{Account, TlsMode};
use crate::delivery::{account_tls, connect, no_password};

/// Connects with the account's TLS mode, authenticates and quits. `Ok` is a
/// one-line summary; `Err` says what is wrong and how to fix it. Never
/// contains the password. (The port/TLS mode mismatch is reported once, by
/// [`super::run`].)
pub async fn login(account: &Account, timeout: Duration) -> Result<String, String> {
    let ep = &account.smtp;
    if account.password.secret().is_none() {
        return Err(no_password(account));
    }
    let tls = account_tls(account)?;
    let hello = ClientId::Domain("localhost.localdomain".into());
    match tokio::time::timeout(timeout, connect(account, &tls, &hello, timeout)).await {
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
        Ok(Ok(mut conn)) => {
            let _ = conn.quit().await;
            Ok(format!(
                "{ep}: TLS verified, logged in as {}",
                account.username
            ))
        }
    }
}
