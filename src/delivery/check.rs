//! `check_login`: one real upstream SMTP login (TLS, EHLO, AUTH, QUIT) with
//! a human explanation and a hint when it fails. Used by `mailbridge check`.

use std::time::Duration;

use lettre::transport::smtp::extension::ClientId;

use super::transport::account_tls;
use super::upstream::connect;
use crate::config::{tls_for_port, Account, TlsMode};

/// Connects with the account's TLS mode, authenticates and quits. `Ok` is a
/// one-line summary; `Err` says what is wrong and how to fix it. Never
/// contains the password.
pub async fn check_login(account: &Account, timeout: Duration) -> Result<String, String> {
    let ep = &account.smtp;
    if account.password.is_none() {
        return Err(super::upstream::no_password(account));
    }
    let tls = account_tls(account)?;
    let hello = ClientId::Domain("localhost.localdomain".into());
    let port_hint = match tls_for_port(ep.port) {
        Some(expected) if expected != ep.tls => format!(
            " Port {} normally uses tls = \"{expected}\", but this account has tls = \"{}\".",
            ep.port, ep.tls
        ),
        _ => String::new(),
    };
    match tokio::time::timeout(timeout, connect(account, &tls, &hello, timeout)).await {
        Err(_) => {
            let what = match ep.tls {
                TlsMode::Implicit => "no TLS handshake; if this port expects plaintext first (587, 25) set tls = \"starttls\"",
                TlsMode::Starttls => "no SMTP greeting; if this port uses implicit TLS (465) set tls = \"implicit\"",
            };
            Err(format!(
                "{ep}: no answer within {}: {what}; or a firewall drops the connection.{port_hint}",
                humantime::format_duration(timeout)
            ))
        }
        Ok(Err(f)) => Err(format!("{}{port_hint}", f.reason())),
        Ok(Ok(mut conn)) => {
            let _ = conn.quit().await;
            Ok(format!(
                "{ep}: TLS verified, logged in as {}",
                account.username
            ))
        }
    }
}
