//! `mailbridge check`: the configuration is valid, and every account can log
//! in to its SMTP and IMAP servers (and POP3 when a POP3 listener is
//! configured); each problem comes with a hint. What the servers said is
//! printed escaped ([`Printable`]).

use std::process::ExitCode;
use std::time::Duration;

use crate::config::{tls_for_port, Account, Config, Endpoint};
use crate::text::Printable;

const CHECK_TIMEOUT: Duration = Duration::from_secs(20);

/// Runs every check, prints a report on stdout, exits non-zero on any failure.
pub async fn run(config: &Config) -> ExitCode {
    crate::tls::install_crypto_provider();
    let mut ok = true;
    println!(
        "config: {} is valid ({} account(s), {} local user(s))",
        config.path.display(),
        config.accounts.len(),
        config.users.len()
    );
    if let Some(w) = config.permission_warning() {
        println!("warning: {w}");
    }
    for account in &config.accounts {
        println!(
            "account {} ({}, provider {}):",
            account.name, account.username, account.provider
        );
        let Some(password) = &account.password else {
            println!(
                "  password: FAILED: {}",
                account.password_problem.as_deref().unwrap_or("no password")
            );
            ok = false;
            continue;
        };
        if account.provider == "gmail" && password.expose().chars().count() != 16 {
            println!(
                "  password: warning: Gmail app passwords are 16 letters; this one has {} after removing spaces",
                password.expose().chars().count()
            );
        }
        for (proto, endpoint) in [("smtp", &account.smtp), ("imap", &account.imap)] {
            if let Some(hint) = port_hint(endpoint) {
                println!("  {proto}: warning: {hint}");
            }
            let result = match proto {
                "smtp" => crate::delivery::check_login(account, CHECK_TIMEOUT).await,
                _ => crate::imap::check_login(account, CHECK_TIMEOUT).await,
            };
            match result {
                Ok(summary) => println!("  {proto} {endpoint}: OK: {}", Printable(&summary)),
                Err(problem) => {
                    ok = false;
                    println!(
                        "  {proto} {endpoint}: FAILED: {}",
                        Printable(&scrub(&problem, account))
                    );
                }
            }
        }
        // POP3 only when a POP3 listener is configured (then the account must reach it).
        if let (true, Some(endpoint)) = (config.pop3.enabled(), &account.pop3) {
            if let Some(hint) = port_hint(endpoint) {
                println!("  pop3: warning: {hint}");
            }
            match crate::pop3::check_login(account, CHECK_TIMEOUT).await {
                Ok(summary) => println!("  pop3 {endpoint}: OK: {summary}"),
                Err(problem) => {
                    ok = false;
                    println!("  pop3 {endpoint}: FAILED: {}", scrub(&problem, account));
                }
            }
        }
    }
    if ok {
        println!("all checks passed");
        ExitCode::SUCCESS
    } else {
        println!("some checks failed (see above)");
        ExitCode::from(1)
    }
}

/// A hint when the TLS mode does not match what the well-known port uses.
fn port_hint(e: &Endpoint) -> Option<String> {
    let expected = tls_for_port(e.port)?;
    (expected != e.tls).then(|| {
        format!(
            "port {} normally uses {} TLS, but tls = \"{}\" is configured",
            e.port, expected, e.tls
        )
    })
}

/// Belt and braces: never print the password even if an error text carried it.
fn scrub(text: &str, account: &Account) -> String {
    match &account.password {
        Some(p) if !p.is_empty() => text.replace(p.expose(), "***"),
        _ => text.to_string(),
    }
}
