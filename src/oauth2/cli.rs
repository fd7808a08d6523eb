//! `mailbridge auth`: run an account's grant and store the token, list token
//! state (`--status`, never a token), remove tokens (`--forget`).

use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use super::config::{Flow, OAuth2Settings};
use super::flows::{self, BrowserPrompt, DevicePrompt, RedirectSource};
use super::store::{now_ms, StoredToken, TokenStore};
use crate::config::{Account, Config};
use crate::text::Printable;

#[derive(clap::Args, Debug, Clone)]
pub struct AuthArgs {
    /// The account to authorize (an [[accounts]] entry with auth = "oauth2").
    pub account: Option<String>,
    /// Print the authorization URL and read the redirected URL pasted back on stdin (for SSH).
    #[arg(long)]
    pub no_browser: bool,
    /// List each OAuth2 account with its token state and expiry.
    #[arg(long, conflicts_with_all = ["account", "forget", "no_browser"])]
    pub status: bool,
    /// Remove the stored tokens of ACCOUNT.
    #[arg(long, value_name = "ACCOUNT", conflicts_with_all = ["account", "no_browser"])]
    pub forget: Option<String>,
}

/// Runs `mailbridge auth ...`.
pub async fn run(config: &Config, args: &AuthArgs) -> ExitCode {
    let store = TokenStore::new(&config.smtp.spool_dir);
    let result = if args.status {
        status(config, &store)
    } else if let Some(name) = &args.forget {
        forget(config, &store, name)
    } else if let Some(name) = &args.account {
        authorize(config, &store, name, args.no_browser).await
    } else {
        Err("name the account: mailbridge auth ACCOUNT (or --status, --forget ACCOUNT)".into())
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mailbridge: {e}");
            ExitCode::from(1)
        }
    }
}

fn oauth2_account<'c>(
    config: &'c Config,
    name: &str,
) -> Result<(&'c Account, &'c OAuth2Settings), String> {
    let account = config.account(name).ok_or_else(|| {
        let names: Vec<String> = config
            .accounts
            .iter()
            .filter(|a| a.oauth2.is_some())
            .map(|a| a.name.clone())
            .collect();
        format!(
            "no [[accounts]] entry is named {:?} (OAuth2 accounts: {})",
            Printable(name).to_string(),
            if names.is_empty() {
                "none".into()
            } else {
                names.join(", ")
            }
        )
    })?;
    let settings = account.oauth2.as_ref().ok_or_else(|| {
        format!(
            "account {:?} logs in with a password; set auth = \"oauth2\" and an [accounts.oauth2] table to use OAuth2",
            account.name
        )
    })?;
    Ok((account, settings))
}

async fn authorize(
    config: &Config,
    store: &TokenStore,
    name: &str,
    no_browser: bool,
) -> Result<(), String> {
    let (account, s) = oauth2_account(config, name)?;
    let ctx = |e: String| format!("account {:?}: {e}", account.name);
    if s.client_secret.is_none() {
        if let Some(problem) = &s.client_secret_problem {
            return Err(ctx(problem.clone()));
        }
    }
    let http = super::http::client(account.ca_file.as_deref(), super::http::REQUEST_TIMEOUT)
        .map_err(|e| ctx(e.to_string()))?;
    let token = match s.flow {
        Flow::Device => flows::device(s, &http, |p: &DevicePrompt| {
            println!(
                "To authorize account {:?}, open {} in a browser and enter the code {}",
                account.name, p.verification_uri, p.user_code
            );
            if let Some(full) = &p.verification_uri_complete {
                println!("(or open {full})");
            }
            println!(
                "Waiting for the approval (the code expires in {}) ...",
                humantime::format_duration(p.expires_in)
            );
        })
        .await,
        Flow::AuthorizationCode => {
            let source = if no_browser { RedirectSource::Paste } else { RedirectSource::Loopback };
            flows::authorization_code(s, &http, source, |p: &BrowserPrompt| {
                println!("To authorize account {:?}, open this URL in a browser:\n\n{}\n", account.name, p.url);
                if p.paste {
                    println!("After approving, the browser goes to a http://127.0.0.1:... page that may not load;");
                    println!("copy that page's full URL from the address bar and paste it here:");
                } else {
                    println!("Waiting for the browser to come back to this machine (or run with --no-browser over SSH) ...");
                }
            })
            .await
        }
        Flow::ClientCredentials => flows::client_credentials(s, &http).await,
    }
    .map_err(|e| ctx(e.to_string()))?;
    store
        .save(&account.name, &token)
        .map_err(|e| ctx(e.to_string()))?;
    println!(
        "Account {:?} is authorized ({}); token stored in {}",
        account.name,
        describe(Some(&token)),
        store.path(&account.name).display()
    );
    Ok(())
}

/// Token state in words, never the token.
fn describe(token: Option<&StoredToken>) -> String {
    let Some(t) = token else {
        return "no token; run mailbridge auth ACCOUNT".into();
    };
    let refresh = if t.refresh_token.is_some() {
        ", refresh token stored"
    } else {
        ""
    };
    match t.expires_at_ms {
        None => format!("access token without expiry{refresh}"),
        Some(at) => {
            let when = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(at));
            let now = now_ms();
            if at > now {
                let left = Duration::from_secs((at - now) / 1000);
                format!(
                    "valid, expires {when} (in {}){refresh}",
                    humantime::format_duration(left)
                )
            } else {
                format!("expired {when}{refresh}")
            }
        }
    }
}

fn status(config: &Config, store: &TokenStore) -> Result<(), String> {
    let accounts: Vec<_> = config
        .accounts
        .iter()
        .filter_map(|a| a.oauth2.as_ref().map(|s| (a, s)))
        .collect();
    if accounts.is_empty() {
        println!("no account has auth = \"oauth2\"");
        return Ok(());
    }
    for (a, s) in accounts {
        let state = match store.load(&a.name) {
            Ok(t) => describe(t.as_ref()),
            Err(e) => format!("unreadable token file: {e}"),
        };
        println!("{}\t{:?}\t{}\t{state}", a.name, s.provider, s.flow.as_str());
    }
    Ok(())
}

fn forget(config: &Config, store: &TokenStore, name: &str) -> Result<(), String> {
    let (account, _) = oauth2_account(config, name)?;
    match store.remove(&account.name) {
        Ok(true) => println!("Removed the stored tokens of account {:?}", account.name),
        Ok(false) => println!("Account {:?} had no stored tokens", account.name),
        Err(e) => return Err(format!("account {:?}: {e}", account.name)),
    }
    Ok(())
}
