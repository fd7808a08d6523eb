//! Envelope paths (`MAIL FROM:<...>`, `RCPT TO:<...>`) exactly as the client
//! wrote them. smtp-proto's parser drops the quotes and backslashes of a
//! quoted local part (`"a b"@example.com` would become the different mailbox
//! `a b@example.com`) and any CR, so the session takes the path from the
//! command line itself; the upstream client checks that a stored path still
//! fits between `<` and `>` on one command line.

use crate::text::has_control;

/// Where the first `<` or `>` outside a quoted string is (a backslash inside
/// quotes escapes the next character), and whether a quote is left open.
fn first_bracket(s: &str) -> (Option<usize>, bool) {
    let mut in_quote = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if in_quote => escaped = true,
            '"' => in_quote = !in_quote,
            '<' | '>' if !in_quote => return (Some(i), in_quote),
            _ => {}
        }
    }
    (None, in_quote)
}

/// The text after the first `<` of a MAIL/RCPT line up to the `>` that
/// closes it (`Ok`), or up to the end of the line without CR/LF if it is
/// never closed (`Err`).
fn region(line: &str) -> Result<&str, &str> {
    let rest = line.split_once('<').map_or("", |(_, r)| r);
    match first_bracket(rest) {
        (Some(end), _) if rest[end..].starts_with('>') => Ok(&rest[..end]),
        _ => Err(rest.trim_end_matches(['\r', '\n'])),
    }
}

/// The path of a MAIL/RCPT line as received: between the first `<` and the
/// `>` that closes it (a `>` inside a quoted string does not), quotes and
/// backslashes kept, without a source route (`@a,@b:` is ignored, RFC 5321
/// 3.6.1 and 4.1.1.3) and without the spaces smtp-proto tolerates before
/// the mailbox. `None` if the path is not closed.
pub fn as_received(line: &str) -> Option<&str> {
    let mut path = region(line).ok()?.trim_start_matches(' ');
    // Like smtp-proto: every `:` after a leading `@` ends a route.
    while let Some((_route, mailbox)) = path.strip_prefix('@').and_then(|r| r.split_once(':')) {
        path = mailbox.trim_start_matches(' ');
    }
    Some(path)
}

/// Does the path of this MAIL/RCPT line (closed or not) contain a control
/// character?
pub fn has_control_in_path(line: &str) -> bool {
    has_control(region(line).unwrap_or_else(|open| open))
}

/// Can `path` be sent as `<path>` on one command line: no control character
/// (so no CR or LF) and no `<` or `>` outside a quoted string, quotes closed.
pub fn fits_in_brackets(path: &str) -> bool {
    !has_control(path) && first_bracket(path) == (None, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_local_part_is_kept_as_received() {
        assert_eq!(
            as_received("RCPT TO:<\"a b\"@example.com>\r\n"),
            Some("\"a b\"@example.com")
        );
        assert_eq!(
            as_received("MAIL FROM: <\"x\\\"> y\"@example.com> SIZE=10\r\n"),
            Some("\"x\\\"> y\"@example.com")
        );
        assert_eq!(as_received("MAIL FROM:<>\r\n"), Some(""));
        assert_eq!(as_received("RCPT TO:<a@b.c> NOTIFY=NEVER\n"), Some("a@b.c"));
        assert_eq!(as_received("RCPT TO:<  a@b.c>\r\n"), Some("a@b.c"));
        assert_eq!(as_received("RCPT TO:< \" a\"@b.c>\r\n"), Some("\" a\"@b.c"));
    }

    #[test]
    fn source_route_is_dropped() {
        assert_eq!(
            as_received("RCPT TO:<@relay.example,@b.example:b@example.com>\r\n"),
            Some("b@example.com")
        );
        assert_eq!(
            as_received("RCPT TO:< @r.example: b@x.example>\n"),
            Some("b@x.example")
        );
    }

    #[test]
    fn unclosed_paths() {
        assert_eq!(as_received("RCPT TO:<a@example.com\r\n"), None);
        assert_eq!(as_received("RCPT TO:<\"a>@example.com\r\n"), None);
        assert_eq!(as_received("RCPT TO:<a<b>\r\n"), None);
    }

    #[test]
    fn control_characters_found_in_open_and_closed_paths() {
        assert!(has_control_in_path("MAIL FROM:<a\x1b[2J@example.com>\r\n"));
        assert!(has_control_in_path("MAIL FROM:<\"a\x07\"@example.com>\r\n"));
        assert!(has_control_in_path("RCPT TO:<a\rb@example.com>\r\n"));
        assert!(has_control_in_path("RCPT TO:<a\x7f@example.com\r\n"));
        assert!(has_control_in_path("RCPT TO:<a\u{9b}@example.com>\r\n"));
        assert!(!has_control_in_path("RCPT TO:<a@example.com>\r\n"));
        assert!(!has_control_in_path("RCPT TO:<a@example.com\r\n"));
        // Parameters after the path are not part of it.
        assert!(!has_control_in_path("RCPT TO:<a@example.com> X=\x01\r\n"));
    }

    #[test]
    fn what_fits_between_brackets() {
        assert!(fits_in_brackets("\"a b\"@example.com"));
        assert!(fits_in_brackets("\"a>b\"@example.com"));
        assert!(fits_in_brackets("a@example.com"));
        assert!(!fits_in_brackets("a>b@example.com"));
        assert!(!fits_in_brackets("a@example.com>\r\nRSET"));
        assert!(!fits_in_brackets("\"open@example.com"));
        assert!(!fits_in_brackets("a\x1b@example.com"));
    }
}
