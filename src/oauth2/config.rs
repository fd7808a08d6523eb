//! The `[accounts.oauth2]` table: its serde form and its validation into
//! [`OAuth2Settings`] (provider presets with the real endpoints and scopes,
//! which flows each provider allows, https-only URLs). Pure: no I/O beyond
//! reading `client_secret_file` / `client_secret_env`.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::secret::Secret;

/// `[accounts.oauth2]` as written.
#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawOAuth2 {
    pub provider: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    pub client_secret_file: Option<PathBuf>,
    pub client_secret_env: Option<String>,
    pub tenant: Option<String>,
    pub flow: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub authorize_url: Option<String>,
    pub token_url: Option<String>,
    pub device_url: Option<String>,
}

/// Which authorization server a preset stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    Microsoft,
    Google,
    /// Any other server: every URL and the scopes come from the table.
    Custom,
}

/// How `mailbridge auth` obtains the first token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// RFC 8628 device authorization grant (a code typed in on another device).
    Device,
    /// RFC 6749 authorization code with PKCE (RFC 7636) and a loopback redirect.
    AuthorizationCode,
    /// App-only access (no user; a tenant admin granted consent).
    ClientCredentials,
}

impl Flow {
    pub fn as_str(self) -> &'static str {
        match self {
            Flow::Device => "device",
            Flow::AuthorizationCode => "authorization_code",
            Flow::ClientCredentials => "client_credentials",
        }
    }
}

/// The validated OAuth2 settings of one account.
#[derive(Debug, Clone)]
pub struct OAuth2Settings {
    pub provider: Provider,
    pub client_id: String,
    /// `None` for public clients (device flow, PKCE without a secret).
    pub client_secret: Option<Secret>,
    /// Why a configured secret source gave nothing (unset variable, unreadable file).
    pub client_secret_problem: Option<String>,
    /// Microsoft only: `common`, `consumers`, `organizations`, a tenant id or domain.
    pub tenant: Option<String>,
    pub flow: Flow,
    pub scopes: Vec<String>,
    /// https URLs (checked).
    pub authorize_url: Option<String>,
    pub token_url: String,
    pub device_url: Option<String>,
}

/// A validation failure: the key under `accounts[..].oauth2` and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct OAuth2ConfigError {
    /// The sub-key, e.g. `oauth2.tenant` or `auth`.
    pub key: String,
    pub message: String,
}

fn bad(key: &str, message: impl Into<String>) -> OAuth2ConfigError {
    OAuth2ConfigError {
        key: key.to_string(),
        message: message.into(),
    }
}

pub const GOOGLE_AUTHORIZE_URL: &str = "https://accounts.google.com/o/oauth2/v2/auth";
pub const GOOGLE_TOKEN_URL: &str = "https://oauth2.googleapis.com/token";
pub const GOOGLE_MAIL_SCOPE: &str = "https://mail.google.com/";
/// Microsoft's delegated mail scopes (IMAP, POP, SMTP AUTH) and a refresh token.
pub const MICROSOFT_SCOPES: [&str; 4] = [
    "https://outlook.office.com/IMAP.AccessAsUser.All",
    "https://outlook.office.com/POP.AccessAsUser.All",
    "https://outlook.office.com/SMTP.Send",
    "offline_access",
];
/// App-only (client credentials) access to Exchange Online.
pub const MICROSOFT_APP_SCOPE: &str = "https://outlook.office365.com/.default";

fn microsoft_url(tenant: &str, endpoint: &str) -> String {
    format!("https://login.microsoftonline.com/{tenant}/oauth2/v2.0/{endpoint}")
}

/// True for the tenants that name a group of accounts rather than one directory.
fn is_multi_tenant(tenant: &str) -> bool {
    matches!(tenant, "common" | "consumers" | "organizations")
}

/// A Microsoft tenant: one of the three keywords, a GUID, or a verified domain.
pub fn valid_tenant(t: &str) -> bool {
    let guid = t.len() == 36
        && t.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        });
    let domain = t.contains('.')
        && !t.starts_with('.')
        && !t.ends_with('.')
        && !t.contains("..")
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    is_multi_tenant(t) || guid || domain
}

/// An absolute https URL with a host; anything else (http://, a typo) is refused.
pub fn check_https(key: &str, url: &str) -> Result<String, OAuth2ConfigError> {
    let parsed = reqwest::Url::parse(url.trim())
        .map_err(|e| bad(key, format!("{url:?} is not a URL ({e})")))?;
    if parsed.scheme() != "https" {
        return Err(bad(
            key,
            format!("{url:?} must be an https:// URL (tokens never travel in plaintext)"),
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(bad(key, format!("{url:?} has no host")));
    }
    Ok(parsed.to_string())
}

/// What a Microsoft server preset (`outlook`, `microsoft365`) implies for
/// its `[accounts.oauth2]` table: `provider = "microsoft"` and `tenant`
/// when not written. Keys the user wrote win.
pub fn with_server_preset(mut raw: RawOAuth2, tenant: &str) -> RawOAuth2 {
    if raw.provider.is_none() {
        raw.provider = Some("microsoft".into());
    }
    if raw.provider.as_deref() == Some("microsoft") && raw.tenant.is_none() {
        raw.tenant = Some(tenant.into());
    }
    raw
}

/// Validates the account's `auth` and `oauth2` keys: `None` for a password
/// account, the settings for `auth = "oauth2"`. `base` resolves a relative
/// `client_secret_file`.
pub fn validate(
    auth: Option<&str>,
    raw: Option<RawOAuth2>,
    base: &Path,
) -> Result<Option<OAuth2Settings>, OAuth2ConfigError> {
    match auth.unwrap_or("password") {
        "password" => {
            if raw.is_some() {
                return Err(bad(
                    "oauth2",
                    "is set but auth is \"password\"; add auth = \"oauth2\" to use it",
                ));
            }
            Ok(None)
        }
        "oauth2" => {
            let raw =
                raw.ok_or_else(|| bad("oauth2", "auth = \"oauth2\" needs an [accounts.oauth2] table with provider and client_id"))?;
            settings(raw, base).map(Some)
        }
        other => Err(bad(
            "auth",
            format!("{other:?} is not \"password\" or \"oauth2\""),
        )),
    }
}

fn settings(raw: RawOAuth2, base: &Path) -> Result<OAuth2Settings, OAuth2ConfigError> {
    let provider = match raw.provider.as_deref() {
        Some("microsoft") => Provider::Microsoft,
        Some("google") => Provider::Google,
        Some("custom") => Provider::Custom,
        Some(p) => {
            return Err(bad(
                "oauth2.provider",
                format!("{p:?} is not \"microsoft\", \"google\" or \"custom\""),
            ))
        }
        None => {
            return Err(bad(
                "oauth2.provider",
                "missing: \"microsoft\", \"google\" or \"custom\"",
            ))
        }
    };
    let client_id = raw.client_id.unwrap_or_default().trim().to_string();
    if client_id.is_empty() {
        return Err(bad(
            "oauth2.client_id",
            "missing: the application (client) id you registered with the provider",
        ));
    }
    let flow = match raw.flow.as_deref() {
        None => match provider {
            Provider::Microsoft => Flow::Device,
            Provider::Google | Provider::Custom => Flow::AuthorizationCode,
        },
        Some("device") => Flow::Device,
        Some("authorization_code") => Flow::AuthorizationCode,
        Some("client_credentials") => Flow::ClientCredentials,
        Some(f) => {
            return Err(bad(
                "oauth2.flow",
                format!(
                    "{f:?} is not \"device\", \"authorization_code\" or \"client_credentials\""
                ),
            ))
        }
    };
    let tenant = match (provider, raw.tenant) {
        (Provider::Microsoft, t) => {
            let t = t.unwrap_or_else(|| "common".into()).trim().to_string();
            if !valid_tenant(&t) {
                return Err(bad(
                    "oauth2.tenant",
                    format!("{t:?} is not \"common\", \"consumers\", \"organizations\", a tenant id (GUID) or a domain"),
                ));
            }
            Some(t)
        }
        (_, Some(_)) => {
            return Err(bad(
                "oauth2.tenant",
                "only a Microsoft account has a tenant",
            ))
        }
        (_, None) => None,
    };
    match (provider, flow) {
        (Provider::Google, Flow::Device) => {
            return Err(bad(
                "oauth2.flow",
                "Google's device flow refuses the mail scope (https://mail.google.com/); use flow = \"authorization_code\"",
            ))
        }
        (Provider::Google, Flow::ClientCredentials) => {
            return Err(bad(
                "oauth2.flow",
                "Google has no client-credentials grant for mail; use flow = \"authorization_code\"",
            ))
        }
        (Provider::Microsoft, Flow::ClientCredentials)
            if tenant.as_deref().is_some_and(is_multi_tenant) =>
        {
            return Err(bad(
                "oauth2.tenant",
                "client_credentials needs your own tenant (its id or domain), not common/consumers/organizations",
            ))
        }
        _ => {}
    }

    let (client_secret, client_secret_problem) = client_secret(
        raw.client_secret,
        raw.client_secret_env,
        raw.client_secret_file,
        base,
    )?;
    if flow == Flow::ClientCredentials && client_secret.is_none() && client_secret_problem.is_none()
    {
        return Err(bad(
            "oauth2.client_secret",
            "client_credentials needs client_secret, client_secret_file or client_secret_env",
        ));
    }

    let tenant_str = tenant.as_deref().unwrap_or("common");
    let (authorize_default, token_default, device_default, scopes_default): (
        Option<String>,
        Option<String>,
        Option<String>,
        Vec<String>,
    ) = match provider {
        Provider::Google => (
            Some(GOOGLE_AUTHORIZE_URL.into()),
            Some(GOOGLE_TOKEN_URL.into()),
            None,
            vec![GOOGLE_MAIL_SCOPE.into()],
        ),
        Provider::Microsoft => (
            Some(microsoft_url(tenant_str, "authorize")),
            Some(microsoft_url(tenant_str, "token")),
            Some(microsoft_url(tenant_str, "devicecode")),
            if flow == Flow::ClientCredentials {
                vec![MICROSOFT_APP_SCOPE.into()]
            } else {
                MICROSOFT_SCOPES.iter().map(|s| s.to_string()).collect()
            },
        ),
        Provider::Custom => (None, None, None, Vec::new()),
    };
    let url = |key: &str, given: Option<String>, default: Option<String>| {
        given.or(default).map(|u| check_https(key, &u)).transpose()
    };
    let authorize_url = url("oauth2.authorize_url", raw.authorize_url, authorize_default)?;
    let device_url = url("oauth2.device_url", raw.device_url, device_default)?;
    let token_url = url("oauth2.token_url", raw.token_url, token_default)?.ok_or_else(|| {
        bad(
            "oauth2.token_url",
            "missing: provider = \"custom\" needs the token endpoint",
        )
    })?;
    if flow == Flow::AuthorizationCode && authorize_url.is_none() {
        return Err(bad(
            "oauth2.authorize_url",
            "missing: flow = \"authorization_code\" needs the authorization endpoint",
        ));
    }
    if flow == Flow::Device && device_url.is_none() {
        return Err(bad(
            "oauth2.device_url",
            "missing: flow = \"device\" needs the device authorization endpoint",
        ));
    }
    let scopes = raw.scopes.unwrap_or(scopes_default);
    if let Some(s) = scopes
        .iter()
        .find(|s| s.trim().is_empty() || s.contains(char::is_whitespace))
    {
        return Err(bad(
            "oauth2.scopes",
            format!("{s:?} is not a scope (one scope per list item, no spaces)"),
        ));
    }
    if scopes.is_empty() {
        return Err(bad(
            "oauth2.scopes",
            "missing: the scopes that allow IMAP/POP/SMTP access",
        ));
    }
    Ok(OAuth2Settings {
        provider,
        client_id,
        client_secret,
        client_secret_problem,
        tenant,
        flow,
        scopes,
        authorize_url,
        token_url,
        device_url,
    })
}

/// At most one of the three secret sources; a source that gives nothing is
/// a problem reported when the secret is needed, as for passwords.
fn client_secret(
    inline: Option<String>,
    env: Option<String>,
    file: Option<PathBuf>,
    base: &Path,
) -> Result<(Option<Secret>, Option<String>), OAuth2ConfigError> {
    let count = [inline.is_some(), env.is_some(), file.is_some()]
        .iter()
        .filter(|x| **x)
        .count();
    if count > 1 {
        return Err(bad(
            "oauth2.client_secret",
            "give only one of client_secret, client_secret_file, client_secret_env",
        ));
    }
    let trimmed = |s: &str| {
        let s = s.trim();
        (!s.is_empty()).then(|| Secret::new(s))
    };
    Ok(if let Some(s) = inline {
        (trimmed(&s), None)
    } else if let Some(var) = env {
        match std::env::var(&var) {
            Ok(s) => (trimmed(&s), None),
            Err(_) => (
                None,
                Some(format!(
                    "environment variable {var} (client_secret_env) is not set"
                )),
            ),
        }
    } else if let Some(f) = file {
        let f = if f.is_absolute() { f } else { base.join(f) };
        match std::fs::read_to_string(&f) {
            Ok(s) => (trimmed(&s), None),
            Err(e) => (
                None,
                Some(format!(
                    "cannot read client_secret_file {}: {e}",
                    f.display()
                )),
            ),
        }
    } else {
        (None, None)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(toml_text: &str) -> RawOAuth2 {
        toml::from_str(toml_text).unwrap()
    }

    fn ok(toml_text: &str) -> OAuth2Settings {
        validate(Some("oauth2"), Some(raw(toml_text)), Path::new("/"))
            .unwrap()
            .unwrap()
    }

    fn err(toml_text: &str) -> OAuth2ConfigError {
        validate(Some("oauth2"), Some(raw(toml_text)), Path::new("/")).unwrap_err()
    }

    #[test]
    fn password_is_the_default_and_needs_no_table() {
        assert!(validate(None, None, Path::new("/")).unwrap().is_none());
        assert!(validate(Some("password"), None, Path::new("/"))
            .unwrap()
            .is_none());
        let e = validate(None, Some(raw("provider = \"google\"")), Path::new("/")).unwrap_err();
        assert_eq!(e.key, "oauth2");
        let e = validate(Some("xoauth"), None, Path::new("/")).unwrap_err();
        assert_eq!(e.key, "auth");
        let e = validate(Some("oauth2"), None, Path::new("/")).unwrap_err();
        assert_eq!(e.key, "oauth2");
    }

    #[test]
    fn microsoft_preset_has_the_real_endpoints_scopes_and_device_flow() {
        let s = ok("provider = \"microsoft\"\nclient_id = \"abc\"");
        assert_eq!(s.flow, Flow::Device);
        assert_eq!(s.tenant.as_deref(), Some("common"));
        assert_eq!(
            s.token_url,
            "https://login.microsoftonline.com/common/oauth2/v2.0/token"
        );
        assert_eq!(
            s.device_url.as_deref(),
            Some("https://login.microsoftonline.com/common/oauth2/v2.0/devicecode")
        );
        assert_eq!(
            s.authorize_url.as_deref(),
            Some("https://login.microsoftonline.com/common/oauth2/v2.0/authorize")
        );
        assert_eq!(s.scopes, MICROSOFT_SCOPES);
        let s = ok("provider = \"microsoft\"\nclient_id = \"abc\"\ntenant = \"consumers\"");
        assert!(s.token_url.contains("/consumers/"));
    }

    #[test]
    fn microsoft_client_credentials_need_a_real_tenant_and_a_secret() {
        let s = ok("provider = \"microsoft\"\nclient_id = \"abc\"\nflow = \"client_credentials\"\ntenant = \"contoso.onmicrosoft.com\"\nclient_secret = \"s\"");
        assert_eq!(s.scopes, vec![MICROSOFT_APP_SCOPE.to_string()]);
        assert!(s.token_url.contains("/contoso.onmicrosoft.com/"));
        assert_eq!(s.client_secret.as_ref().map(Secret::expose), Some("s"));
        let e = err("provider = \"microsoft\"\nclient_id = \"abc\"\nflow = \"client_credentials\"\nclient_secret = \"s\"");
        assert_eq!(e.key, "oauth2.tenant");
        let e = err("provider = \"microsoft\"\nclient_id = \"abc\"\nflow = \"client_credentials\"\ntenant = \"9188040d-6c67-4c5b-b112-36a304b66dad\"");
        assert_eq!(e.key, "oauth2.client_secret");
    }

    #[test]
    fn tenants_are_validated() {
        for t in [
            "common",
            "organizations",
            "consumers",
            "9188040d-6c67-4c5b-b112-36a304b66dad",
            "contoso.onmicrosoft.com",
        ] {
            assert!(valid_tenant(t), "{t}");
        }
        for t in [
            "",
            "x",
            "9188040d-6c67-4c5b-b112",
            "a/b.com",
            "a..b",
            ".a.b",
            "common?x",
        ] {
            assert!(!valid_tenant(t), "{t}");
        }
        let e = err("provider = \"microsoft\"\nclient_id = \"abc\"\ntenant = \"evil/../x\"");
        assert_eq!(e.key, "oauth2.tenant");
        let e = err("provider = \"google\"\nclient_id = \"abc\"\ntenant = \"common\"");
        assert_eq!(e.key, "oauth2.tenant");
    }

    #[test]
    fn google_preset_uses_authorization_code_and_refuses_device_and_app_flows() {
        let s = ok("provider = \"google\"\nclient_id = \"abc\"\nclient_secret = \"s\"");
        assert_eq!(s.flow, Flow::AuthorizationCode);
        assert_eq!(s.authorize_url.as_deref(), Some(GOOGLE_AUTHORIZE_URL));
        assert_eq!(s.token_url, GOOGLE_TOKEN_URL);
        assert_eq!(s.scopes, vec![GOOGLE_MAIL_SCOPE.to_string()]);
        let e = err("provider = \"google\"\nclient_id = \"abc\"\nflow = \"device\"");
        assert_eq!(e.key, "oauth2.flow");
        assert!(e.message.contains("refuses"), "{}", e.message);
        let e = err("provider = \"google\"\nclient_id = \"abc\"\nflow = \"client_credentials\"\nclient_secret = \"s\"");
        assert_eq!(e.key, "oauth2.flow");
    }

    #[test]
    fn custom_needs_its_urls_and_scopes_and_every_url_must_be_https() {
        let e = err("provider = \"custom\"\nclient_id = \"abc\"\nscopes = [\"mail\"]");
        assert_eq!(e.key, "oauth2.token_url");
        let e = err("provider = \"custom\"\nclient_id = \"abc\"\nscopes = [\"mail\"]\ntoken_url = \"https://a.example/t\"");
        assert_eq!(e.key, "oauth2.authorize_url");
        let e = err("provider = \"custom\"\nclient_id = \"abc\"\nscopes = [\"mail\"]\ntoken_url = \"https://a.example/t\"\nflow = \"device\"");
        assert_eq!(e.key, "oauth2.device_url");
        let e = err("provider = \"custom\"\nclient_id = \"abc\"\ntoken_url = \"https://a.example/t\"\nauthorize_url = \"https://a.example/a\"");
        assert_eq!(e.key, "oauth2.scopes");
        let e = err("provider = \"custom\"\nclient_id = \"abc\"\nscopes = [\"mail\"]\ntoken_url = \"http://a.example/t\"\nauthorize_url = \"https://a.example/a\"");
        assert_eq!(e.key, "oauth2.token_url");
        assert!(e.message.contains("https"), "{}", e.message);
        let e = err(
            "provider = \"microsoft\"\nclient_id = \"abc\"\ndevice_url = \"http://127.0.0.1/dc\"",
        );
        assert_eq!(e.key, "oauth2.device_url");
        let e = err("provider = \"custom\"\nclient_id = \"abc\"\nscopes = [\"a b\"]\ntoken_url = \"https://a.example/t\"\nauthorize_url = \"https://a.example/a\"");
        assert_eq!(e.key, "oauth2.scopes");
        let s = ok("provider = \"custom\"\nclient_id = \"abc\"\nscopes = [\"mail\"]\ntoken_url = \"https://127.0.0.1:8443/t\"\ndevice_url = \"https://127.0.0.1:8443/d\"\nflow = \"device\"");
        assert_eq!(s.token_url, "https://127.0.0.1:8443/t");
    }

    #[test]
    fn keys_are_named_for_missing_or_unknown_values() {
        assert_eq!(err("client_id = \"abc\"").key, "oauth2.provider");
        assert_eq!(
            err("provider = \"yahoo\"\nclient_id = \"a\"").key,
            "oauth2.provider"
        );
        assert_eq!(err("provider = \"google\"").key, "oauth2.client_id");
        assert_eq!(
            err("provider = \"microsoft\"\nclient_id = \"a\"\nflow = \"implicit\"").key,
            "oauth2.flow"
        );
        assert_eq!(
            err("provider = \"google\"\nclient_id = \"a\"\nclient_secret = \"x\"\nclient_secret_env = \"Y\"").key,
            "oauth2.client_secret"
        );
        assert!(toml::from_str::<RawOAuth2>("clientid = \"x\"").is_err());
    }

    #[test]
    fn a_missing_secret_source_is_a_problem_not_a_load_failure_and_never_printed() {
        let s = ok("provider = \"google\"\nclient_id = \"a\"\nclient_secret_env = \"MAILBRIDGE_TEST_SURELY_UNSET_VAR\"");
        assert!(s.client_secret.is_none());
        assert!(s
            .client_secret_problem
            .unwrap()
            .contains("MAILBRIDGE_TEST_SURELY_UNSET_VAR"));
        let s = ok("provider = \"google\"\nclient_id = \"a\"\nclient_secret = \"hunter2\"");
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn relay_toml_errors_name_the_account_key_and_oauth2_accounts_need_no_password() {
        let base = "[[accounts]]\nname = \"o\"\nprovider = \"outlook\"\nusername = \"me@outlook.com\"\nauth = \"oauth2\"\n[accounts.oauth2]\nprovider = \"microsoft\"\nclient_id = \"abc\"\n";
        let path = Path::new("/nonexistent/relay.toml");
        let c = crate::config::Config::parse(base, path).unwrap();
        let a = &c.accounts[0];
        assert!(a.password.secret().is_none());
        assert_eq!(a.oauth2.as_ref().map(|s| s.flow), Some(Flow::Device));
        let e = crate::config::Config::parse(&format!("{base}tenant = \"not a tenant\"\n"), path)
            .unwrap_err();
        assert_eq!(e.key, "accounts[0].oauth2.tenant");
        // Password accounts are as before.
        let c = crate::config::Config::parse(
            "[[accounts]]\nname = \"g\"\nusername = \"u@gmail.com\"\npassword = \"x\"\n",
            path,
        )
        .unwrap();
        assert!(c.accounts[0].oauth2.is_none());
    }
}
