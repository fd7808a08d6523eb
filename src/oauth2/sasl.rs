//! SASL XOAUTH2: the initial client response (`user=..^Aauth=Bearer ..^A^A`,
//! base64) and the provider's base64 JSON error challenge sent with `334`
//! (Gmail: `{"status":"401","schemes":"Bearer","scope":"https://mail.google.com/"}`).

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::Deserialize;

use crate::secret::Secret;

/// Why an XOAUTH2 challenge could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    #[error("the XOAUTH2 challenge is not base64")]
    NotBase64,
    #[error("the XOAUTH2 challenge is not the JSON error object providers send")]
    NotJson,
    #[error("user name or token contains a byte XOAUTH2 cannot carry")]
    Unsendable,
}

/// The base64 initial response for `AUTH XOAUTH2` / `AUTHENTICATE XOAUTH2`.
/// It carries the access token, so it is a [`Secret`]. The ^A separator,
/// NUL, CR and LF cannot be carried.
pub fn initial_response(user: &str, access_token: &Secret) -> Result<Secret, SaslError> {
    let bad = ['\0', '\x01', '\r', '\n'];
    if user.contains(bad) || access_token.expose().contains(bad) {
        return Err(SaslError::Unsendable);
    }
    let raw = format!(
        "user={user}\x01auth=Bearer {}\x01\x01",
        access_token.expose()
    );
    Ok(Secret::new(STANDARD.encode(raw)))
}

/// What the provider said about a refused token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XOAuth2Failure {
    /// HTTP-like status: `401` (token invalid or expired), `400`, ...
    pub status: String,
    pub schemes: Option<String>,
    /// The scope the server wanted.
    pub scope: Option<String>,
}

impl XOAuth2Failure {
    /// True when a fresh token may succeed (the token was refused as invalid
    /// or expired), so one refresh and one retry are worth it.
    pub fn token_rejected(&self) -> bool {
        self.status == "401"
    }
}

#[derive(Deserialize)]
struct Challenge {
    status: Option<serde_json::Value>,
    schemes: Option<String>,
    scope: Option<String>,
}

/// Decodes the text after `334 ` (SMTP) or `+ ` (IMAP) on a failed XOAUTH2.
pub fn decode_failure(challenge: &str) -> Result<XOAuth2Failure, SaslError> {
    let bytes = STANDARD
        .decode(challenge.trim())
        .map_err(|_| SaslError::NotBase64)?;
    let c: Challenge = serde_json::from_slice(&bytes).map_err(|_| SaslError::NotJson)?;
    let status = match c.status {
        Some(serde_json::Value::String(s)) => s,
        Some(serde_json::Value::Number(n)) => n.to_string(),
        _ => return Err(SaslError::NotJson),
    };
    Ok(XOAuth2Failure {
        status,
        schemes: c.schemes,
        scope: c.scope,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_response_is_the_documented_format() {
        let r = initial_response(
            "someuser@example.com",
            &Secret::new("ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg"),
        )
        .unwrap();
        // The example from Google's XOAUTH2 protocol page.
        assert_eq!(
            r.expose(),
            "dXNlcj1zb21ldXNlckBleGFtcGxlLmNvbQFhdXRoPUJlYXJlciB5YTI5LnZGOWRmdDRxbVRjMk52YjNSbGNrQmhkSFJoZG1semRHRXVZMjl0Q2cBAQ=="
        );
        assert_eq!(format!("{r:?}"), "***");
        for (u, t) in [("a\x01b", "t"), ("a", "t\r\nA2 LOGOUT"), ("a\0", "t")] {
            assert_eq!(
                initial_response(u, &Secret::new(t)).unwrap_err(),
                SaslError::Unsendable
            );
        }
    }

    #[test]
    fn decodes_gmails_error_challenge() {
        let c = STANDARD
            .encode(r#"{"status":"401","schemes":"Bearer","scope":"https://mail.google.com/"}"#);
        let f = decode_failure(&c).unwrap();
        assert_eq!(f.status, "401");
        assert_eq!(f.schemes.as_deref(), Some("Bearer"));
        assert_eq!(f.scope.as_deref(), Some("https://mail.google.com/"));
        assert!(f.token_rejected());
        let f = decode_failure(&STANDARD.encode(r#"{"status":400}"#)).unwrap();
        assert_eq!(f.status, "400");
        assert!(!f.token_rejected());
    }

    #[test]
    fn bad_challenges_are_typed_errors() {
        assert_eq!(decode_failure("not base64!"), Err(SaslError::NotBase64));
        assert_eq!(
            decode_failure(&STANDARD.encode("hello")),
            Err(SaslError::NotJson)
        );
        assert_eq!(
            decode_failure(&STANDARD.encode("{}")),
            Err(SaslError::NotJson)
        );
    }
}
