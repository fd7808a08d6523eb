//! What the IMAP and POP3 login checks share (the same upstream error type,
//! the same failure kinds): the password and TLS config before connecting,
//! and the explanation of a failure.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;

use crate::config::{Account, Endpoint};
use crate::imap::upstream::UpstreamError;
use crate::secret::Secret;

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
    /// The usable password and the upstream TLS config, or why not.
    pub fn prepare<'p>(
        &self,
        account: &'p Account,
    ) -> Result<(&'p Secret, Arc<ClientConfig>), String> {
        let (label, ep) = (self.label, self.endpoint);
        let Some(password) = account.password.secret() else {
            let why = account.password.problem().unwrap_or("none configured");
            return Err(format!("{label} {ep}: no usable password: {why}"));
        };
        let tls = crate::tls::upstream_client_config(account.ca_file.as_deref())
            .map_err(|e| format!("{label} {ep}: {e}"))?;
        Ok((password, tls))
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
