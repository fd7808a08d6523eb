//! Folding of lines longer than SMTP allows (RFC 5321 4.5.3.1.6: 998 octets
//! plus CRLF) on the way out, as Postfix's `smtp_line_length_limit` does:
//! a strict upstream refuses such mail (`500 Line too long`) after the
//! device was already told `250`. Header lines are broken with CRLF + space,
//! so the rest stays part of the same (folded) header field; body lines
//! with a plain CRLF. No allocation when every line fits.

use std::borrow::Cow;

/// Longest line we send, CRLF not counted.
pub const MAX_LINE: usize = 998;

/// `message` (CRLF line ends) with every line over `limit` octets broken
/// into pieces of at most `limit` octets (a continuation header piece
/// counts its leading space). Breaks fall on UTF-8 character boundaries
/// where one is near.
pub fn fold_long_lines(message: &[u8], limit: usize) -> Cow<'_, [u8]> {
    // A header piece is " " + at least one byte.
    let limit = limit.max(2);
    let fits = message
        .split(|b| *b == b'\n')
        .all(|l| l.strip_suffix(b"\r").unwrap_or(l).len() <= limit);
    if fits {
        return Cow::Borrowed(message);
    }
    let mut out = Vec::with_capacity(message.len() + message.len() / limit * 3 + 3);
    let mut in_header = true;
    let mut rest = message;
    while !rest.is_empty() {
        let (line, ending, next) = match rest.iter().position(|b| *b == b'\n') {
            Some(i) if i > 0 && rest[i - 1] == b'\r' => {
                (&rest[..i - 1], &b"\r\n"[..], &rest[i + 1..])
            }
            Some(i) => (&rest[..i], &b"\n"[..], &rest[i + 1..]),
            None => (rest, &b""[..], &rest[rest.len()..]),
        };
        rest = next;
        if line.is_empty() {
            in_header = false;
        }
        fold_line(&mut out, line, limit, in_header);
        out.extend_from_slice(ending);
    }
    Cow::Owned(out)
}

/// Appends `line` (no line end), broken into pieces of at most `limit` octets.
fn fold_line(out: &mut Vec<u8>, mut line: &[u8], limit: usize, header: bool) {
    let mut first = true;
    loop {
        let room = if first || !header { limit } else { limit - 1 };
        if !first {
            out.extend_from_slice(if header { b"\r\n " } else { b"\r\n" });
        }
        if line.len() <= room {
            out.extend_from_slice(line);
            return;
        }
        let cut = char_boundary(line, room);
        out.extend_from_slice(&line[..cut]);
        line = &line[cut..];
        first = false;
    }
}

/// The largest cut at or below `at` that does not split a UTF-8 sequence
/// (looking back at most 3 bytes; other bytes are cut where they are).
fn char_boundary(line: &[u8], at: usize) -> usize {
    let is_continuation = |b: u8| b & 0xc0 == 0x80;
    (at.saturating_sub(3).max(1)..=at)
        .rev()
        .find(|&i| !is_continuation(line[i]))
        .unwrap_or(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(m: &[u8]) -> Vec<&[u8]> {
        m.split(|b| *b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .collect()
    }

    #[test]
    fn short_lines_are_borrowed_unchanged() {
        let m = b"Subject: x\r\n\r\nbody\r\n";
        assert!(matches!(fold_long_lines(m, MAX_LINE), Cow::Borrowed(_)));
        let exact = [vec![b'a'; MAX_LINE], b"\r\n".to_vec()].concat();
        assert!(matches!(
            fold_long_lines(&exact, MAX_LINE),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn body_line_broken_with_crlf_only() {
        let long = vec![b'A'; 2500];
        let m = [
            b"Subject: scan\r\n\r\n".to_vec(),
            long.clone(),
            b"\r\nend\r\n".to_vec(),
        ]
        .concat();
        let out = fold_long_lines(&m, MAX_LINE);
        let l = lines(&out);
        assert_eq!(l[2].len(), 998);
        assert_eq!(l[3].len(), 998);
        assert_eq!(l[4].len(), 504);
        assert_eq!(l[5], b"end");
        // Removing the inserted CRLFs gives the original back.
        let joined: Vec<u8> = l[2..5].concat();
        assert_eq!(joined, long);
        assert!(out.ends_with(b"\r\nend\r\n"));
    }

    #[test]
    fn header_line_folded_with_crlf_space() {
        let value = vec![b'x'; 1500];
        let m = [
            b"X-Long: ".to_vec(),
            value,
            b"\r\nSubject: s\r\n\r\nb\r\n".to_vec(),
        ]
        .concat();
        let out = fold_long_lines(&m, MAX_LINE);
        let l = lines(&out);
        assert_eq!(l[0].len(), 998);
        assert!(l[1].starts_with(b" x"), "continuation starts with a space");
        assert!(l[1].len() <= 998);
        assert_eq!(l[2], b"Subject: s");
        assert_eq!(l[4], b"b");
        assert!(l.iter().all(|x| x.len() <= 998));
    }

    #[test]
    fn utf8_not_split_and_limits_respected() {
        // "é" is two bytes; 10-byte limit with an odd start forces a boundary choice.
        let m = "\r\na\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\r\n".as_bytes();
        let out = fold_long_lines(m, 6);
        for l in lines(&out) {
            assert!(l.len() <= 6);
            assert!(std::str::from_utf8(l).is_ok(), "{l:?}");
        }
        // Binary junk is still cut at the limit.
        let junk = [b"\r\n".to_vec(), vec![0x80; 25], b"\r\n".to_vec()].concat();
        let out = fold_long_lines(&junk, 10);
        assert!(lines(&out).iter().all(|l| l.len() <= 10));
    }

    #[test]
    fn only_crlf_and_no_bare_line_ends_added() {
        let m = [vec![b'q'; 3000], b"\r\n\r\n".to_vec(), vec![b'z'; 3000]].concat();
        let out = fold_long_lines(&m, MAX_LINE);
        for (i, b) in out.iter().enumerate() {
            assert!(*b != b'\n' || out[i - 1] == b'\r');
            assert!(*b != b'\r' || out.get(i + 1) == Some(&b'\n'));
        }
        assert!(lines(&out).iter().all(|l| l.len() <= 998));
    }
}
