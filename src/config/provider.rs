//! `provider`: the known mail providers, their server presets and quirks.

use std::fmt;

use super::{Endpoint, TlsMode};

/// `accounts[].provider`: a preset for the servers, or `custom`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    Gmail,
    Outlook,
    Yahoo,
    Icloud,
    Fastmail,
    /// Every server given in the account's own tables.
    Custom,
}

/// Every provider, in the order error messages list them.
pub const ALL: [Provider; 6] = [
    Provider::Gmail,
    Provider::Outlook,
    Provider::Yahoo,
    Provider::Icloud,
    Provider::Fastmail,
    Provider::Custom,
];

impl Provider {
    /// The name as written in `relay.toml`.
    pub fn name(self) -> &'static str {
        match self {
            Provider::Gmail => "gmail",
            Provider::Outlook => "outlook",
            Provider::Yahoo => "yahoo",
            Provider::Icloud => "icloud",
            Provider::Fastmail => "fastmail",
            Provider::Custom => "custom",
        }
    }

    /// Parses a `provider` value; `None` for an unknown one.
    pub fn from_name(name: &str) -> Option<Provider> {
        ALL.into_iter().find(|p| p.name() == name)
    }

    /// The preset (smtp, imap) servers; `None` for `custom`.
    pub fn preset(self) -> Option<(Endpoint, Endpoint)> {
        use TlsMode::*;
        Some(match self {
            Provider::Gmail => (
                ep("smtp.gmail.com", 465, Implicit),
                ep("imap.gmail.com", 993, Implicit),
            ),
            Provider::Outlook => (
                ep("smtp-mail.outlook.com", 587, Starttls),
                ep("outlook.office365.com", 993, Implicit),
            ),
            Provider::Yahoo => (
                ep("smtp.mail.yahoo.com", 465, Implicit),
                ep("imap.mail.yahoo.com", 993, Implicit),
            ),
            Provider::Icloud => (
                ep("smtp.mail.me.com", 587, Starttls),
                ep("imap.mail.me.com", 993, Implicit),
            ),
            Provider::Fastmail => (
                ep("smtp.fastmail.com", 465, Implicit),
                ep("imap.fastmail.com", 993, Implicit),
            ),
            Provider::Custom => return None,
        })
    }

    /// The preset POP3 server; `None` when the provider has none (iCloud) or for `custom`.
    pub fn pop3_preset(self) -> Option<Endpoint> {
        let host = match self {
            Provider::Gmail => "pop.gmail.com",
            Provider::Outlook => "outlook.office365.com",
            Provider::Yahoo => "pop.mail.yahoo.com",
            Provider::Fastmail => "pop.fastmail.com",
            Provider::Icloud | Provider::Custom => return None,
        };
        Some(ep(host, 995, TlsMode::Implicit))
    }

    /// Gmail's POP3 `recent:` login prefix (a custom account may point at Gmail).
    pub fn has_pop3_recent_mode(self) -> bool {
        matches!(self, Provider::Gmail | Provider::Custom)
    }

    /// The messages per 24 h the worker sends at most when `daily_limit` is not set.
    pub fn default_daily_limit(self) -> Option<u32> {
        (self == Provider::Gmail).then_some(super::GMAIL_DAILY_LIMIT)
    }

    /// App passwords of this provider are 16 letters (Gmail).
    pub fn app_password_letters(self) -> Option<usize> {
        (self == Provider::Gmail).then_some(16)
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

fn ep(host: &str, port: u16, tls: TlsMode) -> Endpoint {
    Endpoint {
        host: host.into(),
        port,
        tls,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_refused() {
        for p in ALL {
            assert_eq!(Provider::from_name(p.name()), Some(p));
        }
        assert_eq!(Provider::from_name("Gmail"), None);
        assert_eq!(Provider::from_name("microsoft365"), None);
    }

    #[test]
    fn presets_exist_for_all_but_custom_and_icloud_has_no_pop3() {
        for p in ALL {
            assert_eq!(p.preset().is_none(), p == Provider::Custom, "{p}");
        }
        assert!(Provider::Icloud.pop3_preset().is_none());
        assert_eq!(Provider::Gmail.pop3_preset().unwrap().port, 995);
    }
}
