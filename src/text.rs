//! Text that came from a client or a provider (HELO names, addresses,
//! headers, upstream replies, user names), made safe to print on a terminal
//! or in a log: [`Printable`] escapes every control character and every bidi
//! override, so `queue list`, `queue show` and the logs can never be driven
//! by escape sequences (CSI, OSC, a bare CR that overwrites the line, text
//! reversed by U+202E).

use std::fmt;

/// An error's message followed by its sources', each added unless the text
/// already holds it ("error sending request: ...: invalid peer certificate").
/// Not escaped: callers print it through [`Printable`] or escape it.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// Shows a string with the characters a terminal could act on escaped:
/// C0 controls (except TAB) and DEL as `\x1b`, C1 controls (U+0080-U+009F)
/// and bidi embeddings, overrides and isolates (U+202A-U+202E,
/// U+2066-U+2069) as `\u{9b}`, `\u{202e}`. Everything else, UTF-8 included,
/// is shown as it is.
///
/// TAB is kept: it only moves to the next column stop (folded header lines
/// start with one) and cannot start a sequence.
#[derive(Clone, Copy)]
pub struct Printable<'a>(pub &'a str);

/// Would a terminal act on `c` rather than show it?
pub fn is_unsafe(c: char) -> bool {
    (c.is_control() && c != '\t') || is_bidi_control(c)
}

/// Does `s` contain a control character (C0 including TAB, DEL, C1)? For
/// refusing such input outright (HELO names, envelope addresses).
pub fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

/// The embeddings, overrides and isolates of the Unicode bidi algorithm that
/// reorder how the following text is shown (CVE-2021-42574, "Trojan Source").
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

impl fmt::Display for Printable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some((at, c)) = rest.char_indices().find(|(_, c)| is_unsafe(*c)) {
            f.write_str(&rest[..at])?;
            if (c as u32) < 0x80 {
                write!(f, "\\x{:02x}", c as u32)?;
            } else {
                write!(f, "\\u{{{:x}}}", c as u32)?;
            }
            rest = &rest[at + c.len_utf8()..];
        }
        f.write_str(rest)
    }
}

impl fmt::Debug for Printable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// JSON text (as serde_json writes it) with the unsafe characters serde_json
/// leaves raw (DEL, C1 controls, bidi controls; it escapes only C0) written
/// as `\u007f`-style escapes. Such characters can only occur inside JSON
/// strings, where the escape means the same character, so the JSON value is
/// unchanged. (C0 stays: serde_json escapes it inside strings, and the
/// newlines and indentation between tokens are its own.)
pub fn printable_json(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if is_unsafe(c) && u32::from(c) >= 0x7f {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(s: &str) -> String {
        Printable(s).to_string()
    }

    #[test]
    fn plain_text_and_utf8_are_unchanged() {
        for s in [
            "",
            "a@example.com",
            "caf\u{e9} \u{65e5}\u{672c}",
            "a\tb",
            "x\\y",
        ] {
            assert_eq!(shown(s), s);
        }
    }

    #[test]
    fn c0_and_del_are_hex_escaped() {
        assert_eq!(
            shown("\x1b[2J\x1b]0;pwned\x07"),
            "\\x1b[2J\\x1b]0;pwned\\x07"
        );
        assert_eq!(shown("a\rb\nc\0d\x7f"), "a\\x0db\\x0ac\\x00d\\x7f");
        assert_eq!(shown("\x08\x0c\x1f"), "\\x08\\x0c\\x1f");
    }

    #[test]
    fn c1_and_bidi_controls_are_unicode_escaped() {
        assert_eq!(shown("\u{9b}31m"), "\\u{9b}31m");
        assert_eq!(shown("\u{80}\u{9f}"), "\\u{80}\\u{9f}");
        assert_eq!(shown("abc\u{202e}fed"), "abc\\u{202e}fed");
        for c in [
            '\u{202a}', '\u{202b}', '\u{202c}', '\u{202d}', '\u{2066}', '\u{2069}',
        ] {
            assert!(shown(&c.to_string()).starts_with("\\u{20"), "{c:?}");
        }
        // Neighbours that are ordinary text stay.
        assert_eq!(shown("\u{a0}\u{2029}\u{206a}"), "\u{a0}\u{2029}\u{206a}");
    }

    #[test]
    fn every_unsafe_char_is_escaped_and_nothing_else() {
        for n in 0..=0x2100u32 {
            let Some(c) = char::from_u32(n) else { continue };
            let out = shown(&c.to_string());
            assert_eq!(out != c.to_string(), is_unsafe(c), "{c:?}");
            assert!(!out.chars().any(is_unsafe), "{c:?} -> {out:?}");
        }
    }

    #[test]
    fn has_control_includes_tab_but_not_bidi() {
        assert!(has_control("a\tb") && has_control("\u{85}") && has_control("\x7f"));
        assert!(!has_control("a b\u{202e}") && !has_control("\u{e9}"));
    }

    #[test]
    fn json_keeps_its_value_and_loses_raw_controls() {
        let value = serde_json::json!({"subject": "\x1b[31m\u{9b}\u{7f}\u{202e}x\t\u{e9}"});
        let json = serde_json::to_string_pretty(&value).unwrap();
        let safe = printable_json(&json);
        assert!(!safe.chars().any(|c| is_unsafe(c) && c != '\n'), "{safe}");
        assert!(safe.contains("\\u009b") && safe.contains("\\u202e") && safe.contains("\\u007f"));
        let back: serde_json::Value = serde_json::from_str(&safe).unwrap();
        assert_eq!(back, value);
    }
}
