//! SASL PLAIN and LOGIN decoding for SMTP AUTH (RFC 4954, 4616). Decoded
//! passwords are wrapped in [`Secret`] at once and never logged.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use crate::secret::Secret;

#[derive(Debug, PartialEq, Eq)]
pub enum SaslError {
    /// Not valid base64.
    Base64,
    /// Decoded, but not a valid credential (bad structure, not UTF-8,
    /// authorization identity different from the login).
    Invalid,
}

/// Decodes one base64 client response; "=" is the empty response.
fn decode(text: &str) -> Result<Vec<u8>, SaslError> {
    let t = text.trim();
    if t == "=" {
        return Ok(Vec::new());
    }
    STANDARD.decode(t).map_err(|_| SaslError::Base64)
}

/// PLAIN: base64(authzid NUL authcid NUL password) -> (user, password).
pub fn decode_plain(text: &str) -> Result<(String, Secret), SaslError> {
    let raw = Secret::new(String::from_utf8(decode(text)?).map_err(|_| SaslError::Invalid)?);
    let mut parts = raw.expose().split('\0');
    let (Some(authz), Some(user), Some(pass), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::Invalid);
    };
    if user.is_empty() || (!authz.is_empty() && authz != user) {
        return Err(SaslError::Invalid);
    }
    Ok((user.to_string(), Secret::new(pass)))
}

/// LOGIN: one base64 field (the user name or the password).
pub fn decode_login_field(text: &str) -> Result<Secret, SaslError> {
    let raw = decode(text)?;
    String::from_utf8(raw)
        .map(Secret::new)
        .map_err(|_| SaslError::Invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        STANDARD.encode(s)
    }

    #[test]
    fn plain_variants() {
        let (u, p) = decode_plain(&b64("\0scanner\0pw 1")).unwrap();
        assert_eq!((u.as_str(), p.expose()), ("scanner", "pw 1"));
        let (u, _) = decode_plain(&b64("scanner\0scanner\0pw")).unwrap();
        assert_eq!(u, "scanner");
        assert_eq!(
            decode_plain(&b64("other\0scanner\0pw")),
            Err(SaslError::Invalid)
        );
        assert_eq!(decode_plain(&b64("scanner pw")), Err(SaslError::Invalid));
        assert_eq!(decode_plain("!!!"), Err(SaslError::Base64));
        assert_eq!(decode_plain("="), Err(SaslError::Invalid));
    }

    #[test]
    fn login_field() {
        assert_eq!(
            decode_login_field(&b64("scanner")).unwrap().expose(),
            "scanner"
        );
        assert_eq!(decode_login_field("=").unwrap().expose(), "");
        assert!(decode_login_field("%%").is_err());
    }
}
