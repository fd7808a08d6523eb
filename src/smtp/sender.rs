//! The `From:` check: Gmail rewrites a message's `From:` to the account's
//! address unless it is a verified "Send mail as" alias, which surprises
//! users of shared devices. This module finds the header's address (no I/O)
//! and says when it is neither the account's address nor one of its
//! `send_as` aliases, and remembers which senders were already warned about
//! (one log line per address per process).

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};

use super::message::header_section;
use crate::config::Account;
use crate::text::Printable;

/// Warned-about sender addresses above this many are not remembered (a
/// client cannot grow memory without bound by sending many From: values).
const MAX_REMEMBERED: usize = 10_000;

/// The address of the first mailbox in the `From:` header field, or `None`
/// when there is no `From:` or no address in it. Display names, quoted
/// strings, comments, encoded words and folding are skipped.
pub fn from_address(message: &[u8]) -> Option<String> {
    let value = field_value(header_section(message), b"from")?;
    first_address(&value)
}

/// Why the upstream will likely rewrite `From:` (client text escaped, safe
/// for logs and terminals), or `None` if it will not:
/// the `From:` address is the account's address or username, or is listed
/// in `send_as` (compared without regard to case).
pub fn rewrite_warning(message: &[u8], account: &Account) -> Option<String> {
    let from = from_address(message)?;
    let known = std::iter::once(&account.address)
        .chain(std::iter::once(&account.username))
        .chain(&account.send_as)
        .any(|a| same_address(a, &from));
    (!known).then(|| {
        format!(
            "From: <{}> is neither the address of account {:?} ({}) nor in its send_as list; \
             {} may rewrite it to the account's address",
            Printable(&from),
            account.name,
            account.address,
            account.provider
        )
    })
}

/// True the first time `address` is seen in this process (case-insensitive).
pub fn first_warning_for(address: &str) -> bool {
    static SEEN: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    let Ok(mut seen) = SEEN.get_or_init(Default::default).lock() else {
        return true;
    };
    let key = address.to_ascii_lowercase();
    if seen.contains(&key) {
        return false;
    }
    if seen.len() < MAX_REMEMBERED {
        seen.insert(key);
    }
    true
}

/// Addresses are the same if equal ignoring ASCII case: the domain is
/// case-insensitive by RFC 5321, and Gmail (like nearly every provider)
/// ignores case in the local part too.
fn same_address(a: &str, b: &str) -> bool {
    a.trim().eq_ignore_ascii_case(b.trim())
}

/// The unfolded value of the first field named `name` (lowercase).
fn field_value(headers: &[u8], name: &[u8]) -> Option<String> {
    let mut lines = headers
        .split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    while let Some(line) = lines.next() {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let field = line[..colon].trim_ascii_end();
        if !field.eq_ignore_ascii_case(name) {
            continue;
        }
        let mut value = line[colon + 1..].to_vec();
        // Continuation lines start with white space.
        for next in lines.by_ref() {
            if !next.starts_with(b" ") && !next.starts_with(b"\t") {
                break;
            }
            value.push(b' ');
            value.extend_from_slice(next);
        }
        return Some(String::from_utf8_lossy(&value).into_owned());
    }
    None
}

/// The first mailbox's address in an RFC 5322 address list: the part in
/// angle brackets if there is one, else the bare addr-spec; quoted strings
/// and (nested) comments are skipped, a source route is dropped.
fn first_address(value: &str) -> Option<String> {
    let mut bare = String::new();
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                // A quoted display name (or quoted local part: keep it).
                let mut quoted = String::from('"');
                while let Some(q) = chars.next() {
                    match q {
                        '\\' => quoted.extend(chars.next()),
                        '"' => break,
                        _ => quoted.push(q),
                    }
                }
                quoted.push('"');
                bare.push_str(&quoted);
            }
            '(' => skip_comment(&mut chars),
            '<' => {
                let inner: String = chars.by_ref().take_while(|c| *c != '>').collect();
                let addr = match inner.rsplit_once(':') {
                    // "<@relay1,@relay2:user@host>": obsolete source route.
                    Some((route, addr)) if route.starts_with('@') => addr,
                    _ => inner.as_str(),
                };
                return nonempty(addr);
            }
            // The end of the first mailbox, or a group's name.
            ',' | ';' => break,
            ':' => bare.clear(),
            _ if c.is_whitespace() => {}
            _ => bare.push(c),
        }
    }
    // No angle brackets: an addr-spec (white space outside quotes dropped).
    nonempty(&bare)
}

fn nonempty(addr: &str) -> Option<String> {
    let addr = addr.trim();
    (addr.contains('@') && !addr.starts_with('@') && !addr.ends_with('@')).then(|| addr.to_string())
}

/// Consumes a comment after its opening parenthesis (comments nest).
fn skip_comment(chars: &mut std::str::Chars<'_>) {
    let mut depth = 1;
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return;
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(header: &str) -> Option<String> {
        from_address(format!("Subject: x\r\n{header}\r\n\r\nFrom: body@x\r\n").as_bytes())
    }

    #[test]
    fn finds_the_address_in_every_common_form() {
        let cases = [
            ("From: a@example.com", "a@example.com"),
            ("From: <a@example.com>", "a@example.com"),
            ("from:   John Doe <a@example.com>", "a@example.com"),
            ("FROM : \"Doe, John\" <a@example.com>", "a@example.com"),
            (
                "From: \"x <evil@y> \\\" z\" <a@example.com>",
                "a@example.com",
            ),
            ("From: a@example.com (Scanner <b@c>)", "a@example.com"),
            (
                "From: (comment (nested <x@y>)) a@example.com",
                "a@example.com",
            ),
            (
                "From: =?UTF-8?B?w4lyaWM=?= <a@example.com>",
                "a@example.com",
            ),
            (
                "From: =?ISO-8859-1?Q?Andr=E9?=\r\n <a@example.com>",
                "a@example.com",
            ),
            ("From: Printer\r\n\t<a@example.com>", "a@example.com"),
            ("From: <@relay.example:a@example.com>", "a@example.com"),
            ("From: a@example.com, b@example.com", "a@example.com"),
            (
                "From: \"quoted local\"@example.com",
                "\"quoted local\"@example.com",
            ),
        ];
        for (header, want) in cases {
            assert_eq!(from(header).as_deref(), Some(want), "{header:?}");
        }
    }

    #[test]
    fn no_address_is_none() {
        for header in [
            "X-Other: a@b",
            "From:",
            "From: Printer",
            "From: undisclosed:;",
            "From: <>",
        ] {
            assert_eq!(from(header), None, "{header:?}");
        }
        // Only the header section counts.
        assert_eq!(from_address(b"Subject: x\r\n\r\nFrom: a@b\r\n"), None);
    }

    fn account(send_as: &[&str]) -> Account {
        let toml = format!(
            "[[accounts]]\nname = \"gmail\"\nusername = \"me@gmail.com\"\npassword = \"x\"\nsend_as = {send_as:?}\n"
        );
        crate::config::Config::parse(&toml, std::path::Path::new("/nonexistent/relay.toml"))
            .unwrap()
            .accounts
            .remove(0)
    }

    #[test]
    fn warns_only_for_unknown_senders() {
        let a = account(&["Alias@Example.com"]);
        let msg = |f: &str| format!("From: {f}\r\nSubject: s\r\n\r\nb\r\n");
        for known in [
            "me@gmail.com",
            "Me <ME@GMAIL.COM>",
            "alias@example.COM",
            "x <alias@example.com>",
        ] {
            assert_eq!(rewrite_warning(msg(known).as_bytes(), &a), None, "{known}");
        }
        let w = rewrite_warning(msg("Scanner <scanner@office.example>").as_bytes(), &a).unwrap();
        assert!(
            w.contains("<scanner@office.example>") && w.contains("send_as"),
            "{w}"
        );
        // The client's text is escaped: the warning goes to logs and terminals.
        let w = rewrite_warning(msg("<\x1b]0;x\x07@evil.example>").as_bytes(), &a).unwrap();
        assert!(
            w.contains("<\\x1b]0;x\\x07@evil.example>") && !w.contains('\x1b'),
            "{w}"
        );
        // No From: at all: nothing to rewrite.
        assert_eq!(rewrite_warning(b"Subject: s\r\n\r\nb\r\n", &a), None);
    }

    #[test]
    fn each_sender_is_warned_about_once() {
        assert!(first_warning_for("once-test@example.com"));
        assert!(!first_warning_for("Once-Test@Example.com"));
        assert!(first_warning_for("other-test@example.com"));
    }
}
