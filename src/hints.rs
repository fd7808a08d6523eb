//! Hints for the common set-up mistakes, in one place for SMTP, IMAP and
//! POP3 (delivery log, `mailbridge check`, the status page): a failure is
//! first classified as a [`Problem`] (from the error's types, from an
//! upstream reply's code and enhanced code, or, for text already stored in
//! the spool, from its words), and the problem has the hint.

use std::error::Error;

use crate::delivery::Reply;

/// A set-up mistake we know how to explain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// The certificate is signed by a CA we do not trust.
    UntrustedCa,
    /// The certificate is for another host name.
    WrongName,
    CertificateExpired,
    /// Any other certificate problem.
    Certificate,
    /// The server did not speak TLS where we expected it.
    NotTls,
    /// Nothing listens on the port.
    Refused,
    /// The server closed the connection.
    Closed,
    /// The host name does not resolve.
    Dns,
    /// The upstream refused the login.
    AuthRefused,
}

/// The hint added to an AUTH rejection.
pub const AUTH_HINT: &str = "the upstream refused the login: check username and the app password \
     (Gmail app passwords need 2-step verification on the Google account; spaces in the password are removed)";

impl Problem {
    /// From an error's cause chain, by type (rustls and I/O errors); errors
    /// that keep only a message need [`Problem::of_text`].
    pub fn of_error(e: &(dyn Error + 'static)) -> Option<Problem> {
        let mut src: Option<&(dyn Error + 'static)> = Some(e);
        while let Some(s) = src {
            if let Some(p) = s.downcast_ref::<rustls::Error>().and_then(of_rustls) {
                return Some(p);
            }
            if let Some(io) = s.downcast_ref::<std::io::Error>() {
                if let Some(p) = io
                    .get_ref()
                    .and_then(|i| i.downcast_ref::<rustls::Error>())
                    .and_then(of_rustls)
                {
                    return Some(p);
                }
                match io.kind() {
                    std::io::ErrorKind::ConnectionRefused => return Some(Problem::Refused),
                    std::io::ErrorKind::UnexpectedEof => return Some(Problem::Closed),
                    _ => {}
                }
            }
            src = s.source();
        }
        None
    }

    /// From an upstream reply: a refused login (`535`, `5.7.8`).
    pub fn of_reply(r: &Reply) -> Option<Problem> {
        let auth = r.code == 535
            || r.enhanced.as_deref() == Some("5.7.8")
            || r.text
                .to_ascii_lowercase()
                .contains("authentication failed");
        auth.then_some(Problem::AuthRefused)
    }

    /// From text already turned into words (a stored last error, an error
    /// type that keeps only its message).
    pub fn of_text(text: &str) -> Option<Problem> {
        let lower = text.to_ascii_lowercase();
        let p = if lower.contains("unknownissuer") || lower.contains("unknown issuer") {
            Problem::UntrustedCa
        } else if lower.contains("notvalidforname") || lower.contains("not valid for name") {
            Problem::WrongName
        } else if lower.contains("expired") {
            Problem::CertificateExpired
        } else if lower.contains("certificate") {
            Problem::Certificate
        } else if lower.contains("corrupt message") || lower.contains("invalidcontenttype") {
            Problem::NotTls
        } else if lower.contains("connection refused") {
            Problem::Refused
        } else if lower.contains("incomplete response") || lower.contains("unexpected eof") {
            Problem::Closed
        } else if lower.contains("failed to lookup") || lower.contains("name or service not known")
        {
            Problem::Dns
        } else {
            return None;
        };
        Some(p)
    }

    /// A problem with the server's certificate?
    pub fn is_certificate(self) -> bool {
        matches!(
            self,
            Problem::UntrustedCa
                | Problem::WrongName
                | Problem::CertificateExpired
                | Problem::Certificate
        )
    }

    /// What to tell the admin (the SMTP account's settings are named).
    pub fn hint(self) -> &'static str {
        match self {
            Problem::UntrustedCa => "the upstream's certificate is signed by a CA we do not trust: for a private CA or a \
         TLS-inspecting proxy add its certificate with ca_file",
            Problem::WrongName => "the upstream's certificate is not valid for this host name: check smtp.host",
            Problem::CertificateExpired => "the upstream's certificate has expired, or this machine's clock is wrong",
            Problem::Certificate => "the upstream's certificate was not accepted: check smtp.host, or add its CA with ca_file",
            Problem::NotTls => "the server did not speak TLS: is tls = \"implicit\" right for this port? 587 and 25 use \"starttls\", 465 uses \"implicit\"",
            Problem::Refused => "nothing listens there: check smtp.host and smtp.port",
            Problem::Closed => "the server closed the connection: wrong TLS mode for the port, or the server dropped us",
            Problem::Dns => "cannot resolve the host name: check smtp.host and DNS",
            Problem::AuthRefused => AUTH_HINT,
        }
    }
}

/// The hint for an AUTH refusal without a more specific provider message.
pub const OAUTH2_AUTH_HINT: &str = "the upstream refused the OAuth2 token: check that username is the \
     account the token was issued for and that the app has the mail scopes; run `mailbridge auth ACCOUNT` again";

/// Provider messages users hit, with what to do: (words that must all be
/// in the text, lower case; only for Google accounts; the hint). The first
/// match wins, so the specific codes come before the general ones.
const PROVIDER_HINTS: &[(&[&str], bool, &str)] = &[
    (&["5.7.139"], false, "Microsoft refuses this login: basic authentication (a password) is disabled for the account, \
     or SMTP AUTH is disabled for the mailbox or the tenant. Use auth = \"oauth2\"; an admin enables SMTP AUTH for the \
     mailbox in the Microsoft 365 admin center (Mail > Manage email apps > Authenticated SMTP) or with \
     `Set-CASMailbox -Identity USER -SmtpClientAuthenticationDisabled $false`"),
    (&["5.7.30"], false, "Microsoft no longer accepts a password for client submission: use auth = \"oauth2\" \
     for this account (see the README's Microsoft section) and run `mailbridge auth ACCOUNT`"),
    (&["aadsts65001"], false, "consent is missing: the user (or for client_credentials an admin) has not granted the app \
     its permissions; run `mailbridge auth ACCOUNT` and accept, or grant admin consent in Entra ID > App registrations > API permissions"),
    (&["aadsts7000215"], false, "the client secret is wrong or expired: create a new one under Certificates & secrets \
     of the app registration and set client_secret / client_secret_file (the secret's Value, not its ID)"),
    (&["aadsts700016"], false, "the app (client_id) is not found in this tenant: check client_id, and tenant \
     (a personal-account app needs tenant = \"consumers\" or \"common\", a work app your tenant id)"),
    (&["aadsts50076"], false, "multi-factor authentication is required: run `mailbridge auth ACCOUNT` again and complete MFA in the browser"),
    (&["aadsts50079"], false, "the account must register for multi-factor authentication or a conditional access policy \
     blocks it: complete the MFA registration, then run `mailbridge auth ACCOUNT` again"),
    (&["aadsts70000"], false, "the grant is invalid or was revoked (password change, consent withdrawn): run `mailbridge auth ACCOUNT` again"),
    (&["5.7.9"], false, "Google wants an app password or OAuth2 for this account: create an app password \
     (2-step verification must be on) or use auth = \"oauth2\""),
    (&["invalid_grant", "expired or revoked"], true, "Google revoked the refresh token: if the app's OAuth consent screen \
     is in \"Testing\" publishing status its refresh tokens expire after 7 days; publish the app (\"In production\") \
     and run `mailbridge auth ACCOUNT` again"),
    (&["invalid_grant"], false, "the refresh token is no longer valid (expired, revoked, or the password changed): run `mailbridge auth ACCOUNT` again"),
    (&["5.7.8"], false, "wrong credentials: for a password check username and the app password; \
     for OAuth2 the token was refused (run `mailbridge auth ACCOUNT` again if it keeps failing)"),
];

/// The hint for a provider's message (an AUTH reply's text, a token
/// endpoint's error), if it is one users are known to hit. `google`: the
/// account uses the Google OAuth2 preset.
pub fn for_provider_text(text: &str, google: bool) -> Option<&'static str> {
    let lower = text.to_ascii_lowercase();
    PROVIDER_HINTS
        .iter()
        .find(|(words, only_google, _)| {
            (google || !only_google) && words.iter().all(|w| lower.contains(w))
        })
        .map(|(_, _, hint)| *hint)
}

/// The hint added to a refused AUTH: the provider's message explained if
/// known, else the general one for a password or a token login.
pub fn for_auth_reply(reply: &Reply, oauth2: bool, google: bool) -> &'static str {
    let text = format!("{} {}", reply.enhanced.as_deref().unwrap_or(""), reply.text);
    let known = for_provider_text(&text, google);
    // 5.7.8 is "wrong credentials": the general hint of the login kind says more.
    match known {
        Some(h) if reply.enhanced.as_deref() != Some("5.7.8") => h,
        _ if oauth2 => OAUTH2_AUTH_HINT,
        _ => AUTH_HINT,
    }
}

fn of_rustls(e: &rustls::Error) -> Option<Problem> {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(c) => Some(match c {
            C::UnknownIssuer => Problem::UntrustedCa,
            C::NotValidForName | C::NotValidForNameContext { .. } => Problem::WrongName,
            C::Expired | C::ExpiredContext { .. } => Problem::CertificateExpired,
            _ => Problem::Certificate,
        }),
        rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType) => {
            Some(Problem::NotTls)
        }
        _ => None,
    }
}

/// The transport hint for an error text (what `check` and the delivery log
/// add to a connection failure), if any. A refused login is not a transport
/// problem: its hint comes with the AUTH reply.
pub fn for_transport_text(text: &str) -> Option<&'static str> {
    Problem::of_text(text).map(Problem::hint)
}

/// The hint for a stored error text (the status page), including a refused
/// login. For a message that expired, the hint is about its last error.
pub fn for_stored_text(text: &str) -> Option<&'static str> {
    let text = text.split_once("; last error: ").map_or(text, |(_, e)| e);
    if let Some(h) = for_provider_text(text, false).filter(|_| !text.contains("5.7.8")) {
        return Some(h);
    }
    if let Some(p) = Problem::of_text(text) {
        return Some(p.hint());
    }
    // Stored as `[STAGE: ]550 5.7.8 text`.
    let reply = text.rsplit_once(": ").map_or(text, |(_, r)| r);
    let auth = text.starts_with("535")
        || text.contains("5.7.8")
        || text.to_ascii_lowercase().contains("authentication failed");
    let typed = reply
        .split_once(' ')
        .and_then(|(c, rest)| Some(Reply::from_parts(c.parse().ok()?, rest)))
        .and_then(|r| Problem::of_reply(&r));
    (auth || typed.is_some()).then_some(AUTH_HINT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_from_types_replies_and_text() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(Problem::of_error(&io), Some(Problem::Refused));
        let tls = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        assert_eq!(Problem::of_error(&tls), Some(Problem::UntrustedCa));
        assert_eq!(
            Problem::of_reply(&Reply::from_parts(535, "5.7.8 bad credentials")),
            Some(Problem::AuthRefused)
        );
        assert_eq!(Problem::of_reply(&Reply::from_parts(550, "5.1.1 no")), None);
        assert!(for_stored_text("connect to x: Connection refused")
            .unwrap()
            .contains("smtp.port"));
        assert_eq!(
            for_stored_text("535 5.7.8 bad credentials"),
            Some(AUTH_HINT)
        );
        assert_eq!(for_stored_text("451 4.3.0 try later"), None);
        assert_eq!(
            for_stored_text("expired after 1h in the queue; last error: 451 4.3.0 busy"),
            None
        );
    }

    #[test]
    fn provider_messages_get_their_hints() {
        let h = |t: &str| for_provider_text(t, false).unwrap_or("");
        assert!(
            h("535 5.7.139 Authentication unsuccessful, basic authentication is disabled")
                .contains("Set-CASMailbox -Identity USER -SmtpClientAuthenticationDisabled $false")
        );
        assert!(
            h("550 5.7.30 Basic authentication is not supported for Client Submission")
                .contains("auth = \"oauth2\"")
        );
        assert!(
            h("invalid_grant: AADSTS65001: The user or administrator has not consented")
                .contains("consent is missing")
        );
        assert!(
            h("invalid_client: AADSTS7000215: Invalid client secret provided")
                .contains("client secret is wrong")
        );
        assert!(h(
            "unauthorized_client: AADSTS700016: Application with identifier 'x' was not found"
        )
        .contains("tenant"));
        assert!(h("invalid_grant: AADSTS50076: you must use multi-factor").contains("multi-factor"));
        assert!(h("invalid_grant: AADSTS50079: must enroll").contains("MFA registration"));
        assert!(h("invalid_grant: AADSTS70000: the grant was revoked").contains("revoked"));
        assert!(h("534-5.7.9 Application-specific password required").contains("app password"));
        assert!(h("535-5.7.8 Username and Password not accepted").contains("wrong credentials"));
        // Google's expired or revoked refresh token: the 7-day "Testing" limit, for Google only.
        let g = "invalid_grant: Token has been expired or revoked.";
        assert!(for_provider_text(g, true).unwrap().contains("7 days"));
        assert!(!for_provider_text(g, false).unwrap().contains("7 days"));
        assert!(for_provider_text("400 invalid_grant", false)
            .unwrap()
            .contains("mailbridge auth"));
        assert_eq!(for_provider_text("451 4.3.0 try later", true), None);
        // A refused token is not a password problem; other replies keep the password hint.
        let r = Reply::from_parts(535, "5.7.8 Username and Password not accepted");
        assert_eq!(for_auth_reply(&r, true, true), OAUTH2_AUTH_HINT);
        assert_eq!(for_auth_reply(&r, false, false), AUTH_HINT);
        let ms = Reply::from_parts(535, "5.7.139 Authentication unsuccessful");
        assert!(for_auth_reply(&ms, true, false).contains("SMTP AUTH"));
        assert_eq!(
            for_auth_reply(&Reply::from_parts(535, "no"), false, false),
            AUTH_HINT
        );
        assert!(for_stored_text(
            "AUTH as a at b: 550 5.7.30 Basic authentication is not supported"
        )
        .unwrap()
        .contains("oauth2"));
    }
}
