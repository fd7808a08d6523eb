//! Printing for `mailbridge check` over the [`crate::check::Report`]. What
//! the servers said is printed escaped ([`Printable`]).

use std::process::ExitCode;

use crate::check::{self, PasswordCheck, Report};
use crate::config::Config;
use crate::text::Printable;

/// Runs every check, prints the report on stdout, exits non-zero on any failure.
pub async fn run(config: &Config) -> ExitCode {
    let report = check::run(config).await;
    print(config, &report);
    if report.passed() {
        println!("all checks passed");
        ExitCode::SUCCESS
    } else {
        println!("some checks failed (see above)");
        ExitCode::from(1)
    }
}

fn print(config: &Config, report: &Report) {
    println!(
        "config: {} is valid ({} account(s), {} local user(s))",
        report.config.display(),
        config.accounts.len(),
        report.users
    );
    if let Some(w) = &report.permission_warning {
        println!("warning: {w}");
    }
    for account in &report.accounts {
        println!(
            "account {} ({}, provider {}):",
            account.name, account.username, account.provider
        );
        match &account.password {
            PasswordCheck::Usable => {}
            PasswordCheck::Suspicious(w) => println!("  password: warning: {w}"),
            PasswordCheck::Unusable(why) => println!("  password: FAILED: {why}"),
        }
        for probe in &account.probes {
            let (proto, endpoint) = (probe.protocol, &probe.endpoint);
            if let Some(hint) = &probe.port_hint {
                println!("  {proto}: warning: {hint}");
            }
            match &probe.result {
                Ok(summary) => println!("  {proto} {endpoint}: OK: {}", Printable(summary)),
                Err(problem) => println!("  {proto} {endpoint}: FAILED: {}", Printable(problem)),
            }
        }
    }
}
