//! An account's upstream password: where it came from and whether it is usable.
//!
//! A later credential kind (an OAuth2 token, chosen by `auth = "oauth2"`)
//! sits next to [`Password`] in the account, not inside it.

use crate::secret::Secret;

/// The placeholder in the shipped relay.toml.
const EXAMPLE_APP_PASSWORD: &str = "abcdefghijklmnop";

/// `password`, `password_env` or `password_file`, resolved at load time.
/// Only [`Password::Set`] can be used; the others say why not.
#[derive(Debug, Clone)]
pub enum Password {
    /// A usable password (whitespace removed).
    Set(Secret),
    /// None given, or an environment variable that is not set.
    Missing { why: String },
    /// A password file that cannot be read.
    Unreadable { why: String },
    /// Given but empty, or still the shipped example.
    Unusable { why: String },
    /// None given, and none needed: `auth = "oauth2"` logs in with a token.
    NotNeeded,
}

impl Password {
    /// The secret, when usable.
    pub fn secret(&self) -> Option<&Secret> {
        match self {
            Password::Set(s) => Some(s),
            _ => None,
        }
    }

    /// Why there is no usable password (`None` when there is one).
    pub fn problem(&self) -> Option<&str> {
        match self {
            Password::Set(_) | Password::NotNeeded => None,
            Password::Missing { why }
            | Password::Unreadable { why }
            | Password::Unusable { why } => Some(why),
        }
    }

    /// Normalises a password read from `source`: removes all whitespace
    /// (Gmail shows app passwords as `abcd efgh ijkl mnop`), refuses an empty
    /// one and the shipped example.
    pub fn from_text(p: &str, source: &str) -> Password {
        let cleaned: String = p.chars().filter(|c| !c.is_whitespace()).collect();
        if cleaned == EXAMPLE_APP_PASSWORD {
            Password::Unusable { why: format!("the password in {source} is still the example \"abcd efgh ijkl mnop\"; put the account's app password there") }
        } else if cleaned.is_empty() {
            Password::Unusable {
                why: format!("the password in {source} is empty"),
            }
        } else {
            Password::Set(Secret::new(cleaned))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spaces_are_removed_and_the_example_and_empty_ones_are_unusable() {
        let p = Password::from_text(" wxyz efgh\tijkl mnop\n", "the `password` key");
        assert_eq!(p.secret().map(|s| s.expose()), Some("wxyzefghijklmnop"));
        assert_eq!(p.problem(), None);
        let example = Password::from_text("abcd efgh ijkl mnop", "file p");
        assert!(example.secret().is_none());
        assert!(example
            .problem()
            .is_some_and(|w| w.contains("example") && w.contains("file p")));
        let empty = Password::from_text(" \n", "file p");
        assert_eq!(empty.problem(), Some("the password in file p is empty"));
        // auth = "oauth2" needs none: no secret and nothing to warn about.
        assert!(Password::NotNeeded.secret().is_none());
        assert_eq!(Password::NotNeeded.problem(), None);
    }
}
