//! What the IMAP and POP3 login checks share (the same upstream error type,
//! the same failure kinds): the password (or for `auth = "oauth2"` the
//! access token from the token manager) and TLS config before connecting,
//! and the explanation of a failure.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;

use crate::config::{Account, Endpoint};
use crate::imap::upstream::UpstreamError;
use crate::oauth2::Tokens;
use crate::secret::Secret;

/// What a check logs in with.
pub(super) enum Credential<'a> {
    Password(&'a Secret),
    /// `auth = "oauth2"`: the access token (never printed).
    Token(Secret),
}

/// The account's access token from its manager (refreshed if due), or why
/// there is none, with the provider hint; `None` for a password account.
pub(super) async fn oauth2_token(
    account: &Account,
    tokens: &Tokens,
) -> Result<Option<Secret>, String> {
    let manager = tokens
        .manager(account)
        .map_err(|e| format!("account {:?}: {e}", account.name))?;
    match manager {
        None => Ok(None),
        Some(m) => m.access_token().await.map(Some).map_err(|e| {
            crate::delivery::token_failure(account, &e)
                .reason()
                .to_string()
        }),
    }
}

/// One IMAP or POP3 probe: how its messages are worded.
pub(super) struct ProxyProbe<'a> {
    /// "IMAP" or "POP3", at the start of every message.
    pub label: &'static str,
    pub endpoint: &'a Endpoint,
    /// What a refused login means for this protocol.
    pub auth_hint: &'static str,
    /// The question about the protocol's TLS ports.
    pub mode_hint: String,
}

impl ProxyProbe<'_> {
    /// The usable password (or the OAuth2 access token, with `tokens`) and
    /// the upstream TLS config, or why not.
    pub async fn prepare<'p>(
        &self,
        account: &'p Account,
        tokens: Option<&Tokens>,
    ) -> Result<(Credential<'p>, Arc<ClientConfig>), String> {
        let (label, ep) = (self.label, self.endpoint);
        let credential = match (tokens, account.password.secret()) {
            (Some(tokens), _) if account.oauth2.is_some() => {
                let token = oauth2_token(account, tokens)
                    .await
                    .map_err(|e| format!("{label} {ep}: {e}"))?
                    .ok_or_else(|| format!("{label} {ep}: no OAuth2 settings"))?;
                Credential::Token(token)
            }
            (_, Some(password)) => Credential::Password(password),
            (_, None) => {
                let why = account.password.problem().unwrap_or("none configured");
                return Err(format!("{label} {ep}: no usable password: {why}"));
            }
        };
        let tls = crate::tls::upstream_client_config(account.ca_file.as_deref())
            .map_err(|e| format!("{label} {ep}: {e}"))?;
        Ok((credential, tls))
    }

    /// Runs `login` under `timeout`; a failure comes back explained.
    pub async fn conclude<T>(
        &self,
        account: &Account,
        timeout: Duration,
        login: impl Future<Output = Result<T, UpstreamError>>,
    ) -> Result<T, String> {
        let (label, ep) = (self.label, self.endpoint);
        match tokio::time::timeout(timeout, login).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(format!("{label} {ep}: {}", self.explain(&e, account))),
            Err(_) => Err(format!(
                "{label} {ep}: timed out after {}; is the host reachable, and {}",
                humantime::format_duration(timeout),
                self.mode_hint
            )),
        }
    }

    fn explain(&self, e: &UpstreamError, account: &Account) -> String {
        use UpstreamError as E;
        match e {
            E::Rejected { text } => format!("{} (server said: {text})", self.auth_hint),
            E::Tls { .. } if e.is_certificate() => format!(
                "{e}; the server's certificate is not trusted for {}: if the server uses a private CA, set ca_file = \"/path/to/ca.pem\" in this account{}",
                self.endpoint.host,
                account.ca_file.as_ref().map(|p| format!(" (now {})", p.display())).unwrap_or_default()
            ),
            E::Tls { .. } | E::Timeout(_) | E::Closed(_) => format!("{e}; {}", self.mode_hint),
            E::Connect { .. } | E::Resolve(_) => format!(
                "{e}; is the host name right and the server reachable (DNS, firewall, port)?"
            ),
            E::Protocol(_) | E::Io(_) | E::TokenRejected { .. } => e.to_string(),
        }
    }
}
