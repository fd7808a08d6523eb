//! The grants, over the `oauth2` crate: device authorization (RFC 8628),
//! authorization code with PKCE (RFC 7636) and a loopback redirect on
//! 127.0.0.1 (RFC 8252), client credentials, and refresh. Provider errors
//! become [`FlowError`]s with their text escaped; a response body is never
//! quoted (it may hold a token).

use std::time::Duration;

use ::oauth2::basic::BasicClient;
use ::oauth2::{
    AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken,
    DeviceAuthorizationUrl, EndpointMaybeSet, EndpointNotSet, EndpointSet, PkceCodeChallenge,
    RedirectUrl, RefreshToken, RequestTokenError, Scope, StandardDeviceAuthorizationResponse,
    TokenResponse, TokenUrl,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::config::{OAuth2Settings, Provider};
use super::store::{now_ms, StoredToken};
use crate::secret::Secret;
use crate::text::Printable;

/// How long `mailbridge auth` waits for the browser's redirect (or a paste).
pub const REDIRECT_WAIT: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlowError {
    #[error("the authorization was declined (access_denied)")]
    Denied,
    #[error("the code expired before it was entered; run `mailbridge auth` again")]
    Expired,
    /// An OAuth2 error from the provider (`invalid_grant`, `invalid_client`, ...), text escaped.
    #[error("the provider refused: {error}{}", description.as_ref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Provider {
        error: String,
        description: Option<String>,
    },
    #[error("cannot reach the token endpoint: {0}")]
    Network(String),
    #[error("the token endpoint's answer is not an OAuth2 response")]
    BadResponse,
    #[error("the redirect's state does not match this request (a stale or forged redirect)")]
    StateMismatch,
    #[error("{0}")]
    Redirect(String),
    #[error("{0}")]
    Setup(String),
}

impl FlowError {
    /// True when trying again later cannot help: a person must run
    /// `mailbridge auth` (revoked or expired grant, wrong client, consent missing).
    pub fn needs_reauthorization(&self) -> bool {
        match self {
            FlowError::Denied | FlowError::Expired => true,
            FlowError::Provider { error, .. } => matches!(
                error.as_str(),
                "invalid_grant"
                    | "invalid_client"
                    | "unauthorized_client"
                    | "invalid_scope"
                    | "access_denied"
                    | "interaction_required"
                    | "consent_required"
            ),
            _ => false,
        }
    }
}

fn escaped(s: &str) -> String {
    Printable(s).to_string()
}

fn provider_error<T: ::oauth2::ErrorResponseType + std::fmt::Display>(
    e: &::oauth2::StandardErrorResponse<T>,
) -> FlowError {
    FlowError::Provider {
        error: escaped(&e.error().to_string()),
        description: e.error_description().map(|d| escaped(d)),
    }
}

fn map_err<RE: std::error::Error + 'static, T>(
    e: RequestTokenError<RE, ::oauth2::StandardErrorResponse<T>>,
) -> FlowError
where
    T: ::oauth2::ErrorResponseType + std::fmt::Display + 'static,
{
    match e {
        RequestTokenError::ServerResponse(r) => provider_error(&r),
        RequestTokenError::Request(re) => FlowError::Network(error_chain(&re)),
        RequestTokenError::Parse(..) => FlowError::BadResponse,
        RequestTokenError::Other(s) => FlowError::Network(escaped(&s)),
    }
}

/// An error with its sources, escaped ([`crate::text::error_chain`]).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    escaped(&crate::text::error_chain(e))
}

type Client =
    BasicClient<EndpointMaybeSet, EndpointMaybeSet, EndpointNotSet, EndpointNotSet, EndpointSet>;

fn client(s: &OAuth2Settings, redirect: Option<RedirectUrl>) -> Result<Client, FlowError> {
    let bad_url = |e: ::oauth2::url::ParseError| FlowError::Setup(format!("bad endpoint URL: {e}"));
    let mut c = BasicClient::new(ClientId::new(s.client_id.clone()))
        .set_auth_uri_option(
            s.authorize_url
                .clone()
                .map(AuthUrl::new)
                .transpose()
                .map_err(bad_url)?,
        )
        .set_device_authorization_url_option(
            s.device_url
                .clone()
                .map(DeviceAuthorizationUrl::new)
                .transpose()
                .map_err(bad_url)?,
        )
        .set_token_uri(TokenUrl::new(s.token_url.clone()).map_err(bad_url)?);
    if let Some(secret) = &s.client_secret {
        c = c.set_client_secret(ClientSecret::new(secret.expose().to_string()));
    }
    if s.provider != Provider::Custom {
        // Both presets take the secret as a form field.
        c = c.set_auth_type(AuthType::RequestBody);
    }
    if let Some(r) = redirect {
        c = c.set_redirect_uri(r);
    }
    Ok(c)
}

fn scopes(s: &OAuth2Settings) -> Vec<Scope> {
    s.scopes.iter().cloned().map(Scope::new).collect()
}

/// A token response as stored; `previous_refresh` is kept when the server did not rotate it.
fn stored<TR: TokenResponse>(
    t: &TR,
    s: &OAuth2Settings,
    previous_refresh: Option<Secret>,
) -> StoredToken {
    let now = now_ms();
    StoredToken {
        access_token: Secret::new(t.access_token().secret().clone()),
        refresh_token: t
            .refresh_token()
            .map(|r| Secret::new(r.secret().clone()))
            .or(previous_refresh),
        expires_at_ms: t.expires_in().map(|d| now + d.as_millis() as u64),
        scopes: t
            .scopes()
            .map(|v| v.iter().map(|s| s.to_string()).collect())
            .unwrap_or_else(|| s.scopes.clone()),
        obtained_at_ms: now,
    }
}

/// What the device flow shows the user.
pub struct DevicePrompt {
    pub verification_uri: String,
    pub user_code: String,
    pub verification_uri_complete: Option<String>,
    pub expires_in: Duration,
}

/// RFC 8628: asks for a user code, hands it to `show`, then polls at the
/// server's interval (slower after `slow_down`) until approved, declined or expired.
pub async fn device(
    s: &OAuth2Settings,
    http: &reqwest::Client,
    show: impl FnOnce(&DevicePrompt),
) -> Result<StoredToken, FlowError> {
    let c = client(s, None)?;
    let details: StandardDeviceAuthorizationResponse = c
        .exchange_device_code()
        .map_err(|e| FlowError::Setup(e.to_string()))?
        .add_scopes(scopes(s))
        .request_async(http)
        .await
        .map_err(map_err)?;
    show(&DevicePrompt {
        verification_uri: escaped(details.verification_uri().as_str()),
        user_code: escaped(details.user_code().secret()),
        verification_uri_complete: details
            .verification_uri_complete()
            .map(|u| escaped(u.secret())),
        expires_in: details.expires_in(),
    });
    let t = c
        .exchange_device_access_token(&details)
        .request_async(http, tokio::time::sleep, None)
        .await
        .map_err(|e| match e {
            RequestTokenError::ServerResponse(r) => match r.error() {
                ::oauth2::DeviceCodeErrorResponseType::AccessDenied => FlowError::Denied,
                ::oauth2::DeviceCodeErrorResponseType::ExpiredToken => FlowError::Expired,
                _ => provider_error(&r),
            },
            other => map_err(other),
        })?;
    Ok(stored(&t, s, None))
}

/// App-only access (no person involved).
pub async fn client_credentials(
    s: &OAuth2Settings,
    http: &reqwest::Client,
) -> Result<StoredToken, FlowError> {
    let t = client(s, None)?
        .exchange_client_credentials()
        .add_scopes(scopes(s))
        .request_async(http)
        .await
        .map_err(map_err)?;
    Ok(stored(&t, s, None))
}

/// A new access token for a refresh token; the old refresh token is kept
/// when the server does not rotate it.
pub async fn refresh(
    s: &OAuth2Settings,
    http: &reqwest::Client,
    refresh_token: &Secret,
) -> Result<StoredToken, FlowError> {
    let rt = RefreshToken::new(refresh_token.expose().to_string());
    let t = client(s, None)?
        .exchange_refresh_token(&rt)
        .add_scopes(scopes(s))
        .request_async(http)
        .await
        .map_err(map_err)?;
    Ok(stored(&t, s, Some(refresh_token.clone())))
}

/// Where the authorization code comes back from.
pub enum RedirectSource {
    /// The browser on this machine follows the redirect to our listener.
    Loopback,
    /// `--no-browser`: the user pastes the redirected URL (over SSH); a
    /// redirect reaching the listener is taken too.
    Paste,
}

/// What the authorization-code flow shows the user.
pub struct BrowserPrompt {
    pub url: String,
    pub paste: bool,
}

/// Authorization code + PKCE (S256) with the redirect on 127.0.0.1 at a random port.
pub async fn authorization_code(
    s: &OAuth2Settings,
    http: &reqwest::Client,
    source: RedirectSource,
    show: impl FnOnce(&BrowserPrompt),
) -> Result<StoredToken, FlowError> {
    let listener = TcpListener::bind("127.0.0.1:0").await.map_err(|e| {
        FlowError::Redirect(format!("cannot listen on 127.0.0.1 for the redirect: {e}"))
    })?;
    let port = listener
        .local_addr()
        .map_err(|e| FlowError::Redirect(e.to_string()))?
        .port();
    let redirect = RedirectUrl::new(format!("http://127.0.0.1:{port}/"))
        .map_err(|e| FlowError::Setup(e.to_string()))?;
    let c = client(s, Some(redirect))?;
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let mut req = c
        .authorize_url(CsrfToken::new_random)
        .map_err(|e| FlowError::Setup(e.to_string()))?
        .add_scopes(scopes(s))
        .set_pkce_challenge(challenge);
    if s.provider == Provider::Google {
        // Without these Google issues no refresh token (or only the first time).
        req = req
            .add_extra_param("access_type", "offline")
            .add_extra_param("prompt", "consent");
    }
    let (url, state) = req.url();
    let paste = matches!(source, RedirectSource::Paste);
    show(&BrowserPrompt {
        url: url.to_string(),
        paste,
    });
    let wait = async {
        if paste {
            tokio::select! {
                r = read_pasted() => r,
                r = accept_redirect(&listener) => r,
            }
        } else {
            accept_redirect(&listener).await
        }
    };
    let target = tokio::time::timeout(REDIRECT_WAIT, wait)
        .await
        .map_err(|_| FlowError::Redirect("no redirect arrived within 10 minutes".into()))??;
    let code = code_from_redirect(&target, state.secret())?;
    let t = c
        .exchange_code(AuthorizationCode::new(code.expose().to_string()))
        .set_pkce_verifier(verifier)
        .request_async(http)
        .await
        .map_err(map_err)?;
    Ok(stored(&t, s, None))
}

/// One line from stdin: the URL the browser was sent to. (A blocking read
/// on its own thread; the process ends when the flow does.)
async fn read_pasted() -> Result<String, FlowError> {
    let line = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map(|n| (n, line))
    })
    .await
    .map_err(|e| FlowError::Redirect(format!("cannot read stdin: {e}")))?;
    match line {
        Ok((0, _)) => Err(FlowError::Redirect(
            "stdin closed before a URL was pasted".into(),
        )),
        Ok((_, line)) => Ok(line.trim().to_string()),
        Err(e) => Err(FlowError::Redirect(format!("cannot read stdin: {e}"))),
    }
}

/// Serves the loopback redirect: the first request carrying `code`, `state`
/// or `error` ends the wait; anything else (a favicon) gets 404.
async fn accept_redirect(listener: &TcpListener) -> Result<String, FlowError> {
    loop {
        let (mut conn, _) = listener
            .accept()
            .await
            .map_err(|e| FlowError::Redirect(format!("redirect listener: {e}")))?;
        let mut buf = vec![0u8; 8192];
        let mut len = 0;
        let head = tokio::time::timeout(Duration::from_secs(10), async {
            while len < buf.len() {
                let n = conn.read(&mut buf[len..]).await.ok()?;
                if n == 0 {
                    return None;
                }
                len += n;
                if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            Some(())
        })
        .await;
        if !matches!(head, Ok(Some(()))) {
            continue;
        }
        let text = String::from_utf8_lossy(&buf[..len]).into_owned();
        let target = request_target(&text);
        let carries = target
            .is_some_and(|t| t.contains("code=") || t.contains("error=") || t.contains("state="));
        let (status, body) = if carries {
            (
                "200 OK",
                "mailbridge received the authorization; you can close this window.",
            )
        } else {
            ("404 Not Found", "not found")
        };
        let reply = format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = conn.write_all(reply.as_bytes()).await;
        let _ = conn.shutdown().await;
        if let (true, Some(t)) = (carries, target) {
            return Ok(t.to_string());
        }
    }
}

/// The target of `GET <target> HTTP/1.1`.
fn request_target(head: &str) -> Option<&str> {
    let line = head.lines().next()?;
    let mut parts = line.split(' ');
    (parts.next()? == "GET").then_some(())?;
    parts.next()
}

/// The code from a redirect (a full URL as pasted, or the request target
/// `/?code=..&state=..`), after checking `state`.
pub fn code_from_redirect(redirect: &str, expected_state: &str) -> Result<Secret, FlowError> {
    let base =
        reqwest::Url::parse("http://127.0.0.1/").map_err(|e| FlowError::Setup(e.to_string()))?;
    let url = base
        .join(redirect.trim())
        .map_err(|_| FlowError::Redirect("that is not the URL the browser was sent to".into()))?;
    let param = |name: &str| {
        url.query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    };
    if let Some(error) = param("error") {
        if error == "access_denied" {
            return Err(FlowError::Denied);
        }
        return Err(FlowError::Provider {
            error: escaped(&error),
            description: param("error_description").map(|d| escaped(&d)),
        });
    }
    let state = param("state").unwrap_or_default();
    let same: bool =
        subtle::ConstantTimeEq::ct_eq(state.as_bytes(), expected_state.as_bytes()).into();
    if !same {
        return Err(FlowError::StateMismatch);
    }
    match param("code") {
        Some(c) if !c.is_empty() => Ok(Secret::new(c)),
        _ => Err(FlowError::Redirect(
            "the redirect carries no authorization code".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_code_comes_only_with_the_right_state() {
        let c = code_from_redirect("http://127.0.0.1:4711/?code=abc&state=xyz", "xyz").unwrap();
        assert_eq!(c.expose(), "abc");
        let c = code_from_redirect("/?state=xyz&code=a%2Fb", "xyz").unwrap();
        assert_eq!(c.expose(), "a/b");
        assert_eq!(
            code_from_redirect("http://127.0.0.1:4711/?code=abc&state=other", "xyz").unwrap_err(),
            FlowError::StateMismatch
        );
        assert_eq!(
            code_from_redirect("http://127.0.0.1:4711/?code=abc", "xyz").unwrap_err(),
            FlowError::StateMismatch
        );
        assert!(matches!(
            code_from_redirect("/?state=xyz", "xyz").unwrap_err(),
            FlowError::Redirect(_)
        ));
    }

    #[test]
    fn redirect_errors_are_named_and_escaped() {
        assert_eq!(
            code_from_redirect("/?error=access_denied&state=xyz", "xyz").unwrap_err(),
            FlowError::Denied
        );
        let e = code_from_redirect("/?error=server_error&error_description=bad%1B%5B2J", "xyz")
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "the provider refused: server_error (bad\\x1b[2J)"
        );
    }

    #[test]
    fn only_lost_grants_need_a_person() {
        let p = |e: &str| FlowError::Provider {
            error: e.into(),
            description: None,
        };
        assert!(p("invalid_grant").needs_reauthorization());
        assert!(p("invalid_client").needs_reauthorization());
        assert!(!p("temporarily_unavailable").needs_reauthorization());
        assert!(!FlowError::Network("x".into()).needs_reauthorization());
        assert!(!FlowError::BadResponse.needs_reauthorization());
    }

    #[test]
    fn request_targets_are_read_from_get_lines_only() {
        assert_eq!(
            request_target("GET /?code=1 HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some("/?code=1")
        );
        assert_eq!(request_target("POST / HTTP/1.1\r\n\r\n"), None);
        assert_eq!(request_target(""), None);
    }
}
