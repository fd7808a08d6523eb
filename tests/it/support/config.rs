//! Writing relay.toml for tests: the one `[[accounts]]` table builder (a
//! custom provider on 127.0.0.1; every port defaults to 1, where nothing
//! listens), the `[[users]]` table, and the one password-hash helper.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;

/// The argon2 hash of `password`, made once per password for the whole test
/// crate (argon2 is slow in debug builds).
pub fn hash(password: &str) -> String {
    static HASHES: Mutex<Option<HashMap<String, String>>> = Mutex::new(None);
    let mut hashes = HASHES.lock().unwrap_or_else(|e| e.into_inner());
    hashes
        .get_or_insert_with(HashMap::new)
        .entry(password.to_string())
        .or_insert_with(|| mailbridge::auth::hash_password(password).unwrap())
        .clone()
}

/// `s` as a TOML string (quoted and escaped).
pub fn quoted(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// A `[[users]]` table: local `name` with `password`, mapped to `account`.
pub fn user(name: &str, password: &str, account: &str) -> String {
    format!(
        "[[users]]\nname = {}\npassword_hash = {}\naccount = {}\n",
        quoted(name),
        quoted(&hash(password)),
        quoted(account)
    )
}

/// An `[[accounts]]` table with `provider = "custom"` and its upstreams on
/// 127.0.0.1. Written out by `Display` (use it in `format!`).
pub struct Account {
    name: String,
    username: String,
    password_line: String,
    ca_file: Option<String>,
    smtp: (u16, String),
    imap: (u16, String),
    pop3: Option<(u16, String)>,
    extra: Vec<String>,
}

impl Account {
    /// Account "acct" logging in upstream as `username` with `password`;
    /// SMTP and IMAP upstreams on port 1 with implicit TLS, no `ca_file`.
    pub fn new(username: &str, password: &str) -> Account {
        Account {
            name: "acct".into(),
            username: username.into(),
            password_line: format!("password = {}", quoted(password)),
            ca_file: None,
            smtp: (1, "implicit".into()),
            imap: (1, "implicit".into()),
            pop3: None,
            extra: Vec::new(),
        }
    }

    pub fn name(mut self, name: &str) -> Account {
        self.name = name.into();
        self
    }

    /// The password as a raw TOML line (e.g. `password_file = "..."`).
    pub fn password_line(mut self, line: &str) -> Account {
        self.password_line = line.into();
        self
    }

    pub fn ca_file(mut self, path: impl fmt::Display) -> Account {
        self.ca_file = Some(path.to_string());
        self
    }

    pub fn smtp(mut self, port: u16, tls: &str) -> Account {
        self.smtp = (port, tls.into());
        self
    }

    pub fn imap(mut self, port: u16, tls: &str) -> Account {
        self.imap = (port, tls.into());
        self
    }

    pub fn pop3(mut self, port: u16, tls: &str) -> Account {
        self.pop3 = Some((port, tls.into()));
        self
    }

    /// Another raw line in the table (e.g. `sent_copy = false`).
    pub fn line(mut self, line: &str) -> Account {
        self.extra.push(line.into());
        self
    }
}

impl fmt::Display for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "[[accounts]]")?;
        writeln!(f, "name = {}", quoted(&self.name))?;
        writeln!(f, "provider = \"custom\"")?;
        writeln!(f, "username = {}", quoted(&self.username))?;
        writeln!(f, "{}", self.password_line)?;
        if let Some(ca) = &self.ca_file {
            writeln!(f, "ca_file = {}", quoted(ca))?;
        }
        let upstream = |f: &mut fmt::Formatter<'_>, key: &str, (port, tls): &(u16, String)| {
            writeln!(
                f,
                "{key} = {{ host = \"127.0.0.1\", port = {port}, tls = {} }}",
                quoted(tls)
            )
        };
        upstream(f, "smtp", &self.smtp)?;
        upstream(f, "imap", &self.imap)?;
        if let Some(pop3) = &self.pop3 {
            upstream(f, "pop3", pop3)?;
        }
        for line in &self.extra {
            writeln!(f, "{line}")?;
        }
        Ok(())
    }
}
