//! The HTTPS client for token endpoints: the mail upstreams' verified trust
//! roots (webpki + the account's `ca_file`, built by
//! [`crate::tls::upstream_client_config`]), a timeout on every request, no
//! redirects and no plaintext (http:// is refused before anything is sent).

use std::path::Path;
use std::time::Duration;

/// Connect and whole-request bound for one token-endpoint request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{0}")]
    Tls(String),
    #[error("cannot build the HTTPS client: {0}")]
    Client(String),
}

/// An HTTPS-only client for the account's token endpoints.
pub fn client(ca_file: Option<&Path>, timeout: Duration) -> Result<reqwest::Client, HttpError> {
    let tls =
        crate::tls::upstream_client_config(ca_file).map_err(|e| HttpError::Tls(e.to_string()))?;
    reqwest::Client::builder()
        .use_preconfigured_tls((*tls).clone())
        .https_only(true)
        // A token endpoint that redirects is misconfigured or hostile (the
        // oauth2 crate's advice: following redirects invites SSRF).
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(timeout)
        .timeout(timeout)
        .user_agent(concat!("mailbridge/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| HttpError::Client(e.to_string()))
}
