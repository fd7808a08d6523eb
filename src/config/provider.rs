//! `provider`: the known mail providers, their server presets and quirks.

use std::fmt;

use super::{Endpoint, TlsMode};

/// `accounts[].provider`: a preset for the servers, or `custom`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    Gmail,
    /// Personal Microsoft accounts (Outlook.com, Hotmail, Live).
    Outlook,
    /// Microsoft 365 work or school mailboxes (Exchange Online).
    Microsoft365,
    Yahoo,
    Icloud,
    Fastmail,
    /// Every server given in the account's own tables.
    Custom,
}

/// Every provider, in the order error messages list them.
pub const ALL: [Provider; 7] = [
    Provider::Gmail,
    Provider::Outlook,
    Provider::Microsoft365,
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
            Provider::Microsoft365 => "microsoft365",
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
            Provider::Microsoft365 => (
                ep("smtp.office365.com", 587, Starttls),
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
            Provider::Outlook | Provider::Microsoft365 => "outlook.office365.com",
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

    /// The Microsoft tenant of the provider's OAuth2 preset (`microsoft`):
    /// `consumers` for personal accounts, `organizations` (any work or
    /// school tenant; client credentials need the tenant's own id) for
    /// Microsoft 365. `None`: the provider still takes passwords.
    pub fn microsoft_tenant(self) -> Option<&'static str> {
        match self {
            Provider::Outlook => Some("consumers"),
            Provider::Microsoft365 => Some("organizations"),
            _ => None,
        }
    }

    /// Microsoft turned basic authentication (passwords, app passwords)
    /// off for these: they log in with OAuth2.
    pub fn refuses_passwords(self) -> bool {
        self.microsoft_tenant().is_some()
    }

    /// The `auth` an account of this provider gets when the key is not
    /// written: `oauth2` for Microsoft, unless the account has only a
    /// password and no `[accounts.oauth2]` table (a config written before
    /// OAuth2 existed keeps loading, with a warning).
    pub fn default_auth(self, has_oauth2_table: bool, has_password: bool) -> &'static str {
        if self.refuses_passwords() && (has_oauth2_table || !has_password) {
            "oauth2"
        } else {
            "password"
        }
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
        assert_eq!(Provider::from_name("Microsoft365"), None);
        assert_eq!(Provider::from_name("office365"), None);
    }

    #[test]
    fn presets_exist_for_all_but_custom_and_icloud_has_no_pop3() {
        for p in ALL {
            assert_eq!(p.preset().is_none(), p == Provider::Custom, "{p}");
        }
        assert!(Provider::Icloud.pop3_preset().is_none());
        assert_eq!(Provider::Gmail.pop3_preset().unwrap().port, 995);
    }

    #[test]
    fn microsoft_presets_have_the_documented_servers() {
        let (smtp, imap) = Provider::Outlook.preset().unwrap();
        assert_eq!(
            (smtp.host.as_str(), smtp.port, smtp.tls),
            ("smtp-mail.outlook.com", 587, TlsMode::Starttls)
        );
        assert_eq!(
            (imap.host.as_str(), imap.port),
            ("outlook.office365.com", 993)
        );
        let (smtp, imap) = Provider::Microsoft365.preset().unwrap();
        assert_eq!(
            (smtp.host.as_str(), smtp.port, smtp.tls),
            ("smtp.office365.com", 587, TlsMode::Starttls)
        );
        assert_eq!(
            (imap.host.as_str(), imap.port, imap.tls),
            ("outlook.office365.com", 993, TlsMode::Implicit)
        );
        for p in [Provider::Outlook, Provider::Microsoft365] {
            let pop3 = p.pop3_preset().unwrap();
            assert_eq!(
                (pop3.host.as_str(), pop3.port),
                ("outlook.office365.com", 995)
            );
        }
        assert_eq!(Provider::Outlook.microsoft_tenant(), Some("consumers"));
        assert_eq!(
            Provider::Microsoft365.microsoft_tenant(),
            Some("organizations")
        );
    }

    #[test]
    fn microsoft_defaults_to_oauth2_and_old_password_configs_keep_loading() {
        for p in [Provider::Outlook, Provider::Microsoft365] {
            assert_eq!(p.default_auth(true, false), "oauth2");
            assert_eq!(p.default_auth(false, false), "oauth2");
            assert_eq!(p.default_auth(true, true), "oauth2");
            assert_eq!(p.default_auth(false, true), "password");
            assert!(p.refuses_passwords());
        }
        for p in [Provider::Gmail, Provider::Yahoo, Provider::Custom] {
            assert_eq!(p.default_auth(false, true), "password");
            assert_eq!(p.default_auth(true, false), "password");
            assert!(!p.refuses_passwords());
        }
    }
}
