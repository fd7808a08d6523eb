//! Message fix-ups before the message is stored: a `Received:` trace header
//! on top, and `Date:` / `Message-ID:` when the header section lacks them
//! (Gmail penalises mail without a Message-ID). Every other byte the client
//! sent is kept exactly (8-bit and UTF-8 untouched).

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use time::format_description::FormatItem;
use time::macros::format_description;
use time::OffsetDateTime;

/// RFC 5322 date-time, always in UTC.
const RFC5322: &[FormatItem<'static>] = format_description!(
    "[weekday repr:short], [day padding:none] [month repr:short] [year] [hour]:[minute]:[second] +0000"
);

/// What the `Received:` header says about this hop.
pub struct TraceInfo<'a> {
    /// The name the client gave in HELO/EHLO ("unknown" if none).
    pub helo: &'a str,
    pub peer: IpAddr,
    /// Our host name.
    pub hostname: &'a str,
    /// "SMTP", "ESMTP", "ESMTPA", "UTF8SMTP", "UTF8SMTPA" (RFC 3848 / 6531).
    pub protocol: &'a str,
    /// The message's queue id (the one logs and `mailbridge queue` show).
    pub id: &'a str,
}

/// The current time as an RFC 5322 date.
pub fn rfc5322_now() -> String {
    OffsetDateTime::now_utc()
        .format(RFC5322)
        .unwrap_or_else(|_| "Thu, 1 Jan 1970 00:00:00 +0000".into())
}

/// A unique id for trace headers and generated Message-IDs.
pub fn unique_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let now = OffsetDateTime::now_utc().unix_timestamp_nanos() as u64;
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let r: u32 = rand::random();
    format!("{now:x}{n:x}{r:08x}")
}

/// Longest start of a message [`head`] looks at for `Date:` / `Message-ID:`:
/// a header section longer than this is judged by its first
/// `HEAD_WINDOW` bytes (a field further down is not seen, so one is added).
pub const HEAD_WINDOW: usize = 32 * 1024;

/// Returns the message with the trace header and any missing `Date:` /
/// `Message-ID:` added. `message` has CRLF line ends.
#[cfg(test)]
pub fn fix_up(message: &[u8], trace: &TraceInfo<'_>) -> Vec<u8> {
    let head = head(message, trace);
    let mut out = Vec::with_capacity(head.len() + message.len());
    out.extend_from_slice(&head);
    out.extend_from_slice(message);
    out
}

/// Is `start` (the first bytes of a message) enough for [`head`] to give the
/// same answer as for the whole message? True once it holds the end of the
/// header section, or [`HEAD_WINDOW`] bytes, or `complete` (it is all of it).
pub fn head_decided(start: &[u8], complete: bool) -> bool {
    complete || start.len() >= HEAD_WINDOW || find(start, b"\r\n\r\n").is_some()
}

/// The bytes [`fix_up`] puts before the message: the trace header, any
/// missing `Date:` / `Message-ID:`, and a separating empty line when the
/// message has no header section. `start` is the message, or its first
/// bytes once [`head_decided`] says they are enough; the message itself
/// follows unchanged.
pub fn head(start: &[u8], trace: &TraceInfo<'_>) -> Vec<u8> {
    let date = rfc5322_now();
    let mut head = String::new();
    // Sanitise the client-chosen HELO name so it cannot inject header lines.
    let helo: String = trace
        .helo
        .chars()
        .filter(|c| !c.is_control())
        .take(255)
        .collect();
    head.push_str(&format!(
        "Received: from {helo} ({peer})\r\n\tby {host} (mailbridge) with {proto} id {id};\r\n\t{date}\r\n",
        peer = trace.peer,
        host = trace.hostname,
        proto = trace.protocol,
        id = trace.id,
    ));
    let headers = header_section(start);
    if !has_field(headers, b"date") {
        head.push_str(&format!("Date: {date}\r\n"));
    }
    if !has_field(headers, b"message-id") {
        head.push_str(&format!(
            "Message-ID: <{}@{}>\r\n",
            unique_id(),
            trace.hostname
        ));
    }
    if !start.is_empty() && headers.is_empty() && !start.starts_with(b"\r\n") {
        // The client sent no header section at all: separate our headers from
        // its text so its first line is not read as a header.
        head.push_str("\r\n");
    }
    head.into_bytes()
}

/// The header section: from the start up to (not including) the empty line,
/// or empty if the first line is not a header field.
pub(crate) fn header_section(message: &[u8]) -> &[u8] {
    if !starts_with_field(message) {
        return &[];
    }
    match find(message, b"\r\n\r\n") {
        Some(pos) => &message[..pos + 2],
        None => message,
    }
}

/// Does `line` start with `name:` (RFC 5322 field name: printable ASCII but ':')?
fn starts_with_field(line: &[u8]) -> bool {
    let name_len = line
        .iter()
        .take_while(|b| (33..=126).contains(*b) && **b != b':')
        .count();
    name_len > 0 && line.get(name_len) == Some(&b':')
}

/// Is there a field named `name` (lowercase) at the start of a line in `headers`?
fn has_field(headers: &[u8], name: &[u8]) -> bool {
    headers
        .split(|b| *b == b'\n')
        .map(|l| l.strip_prefix(b"\r").unwrap_or(l))
        .any(|line| {
            line.len() > name.len()
                && line[..name.len()].eq_ignore_ascii_case(name)
                && line[name.len()..]
                    .iter()
                    .find(|b| **b != b' ' && **b != b'\t')
                    == Some(&b':')
        })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace() -> TraceInfo<'static> {
        TraceInfo {
            helo: "printer",
            peer: "127.0.0.1".parse().unwrap(),
            hostname: "relay.local",
            protocol: "ESMTP",
            id: "abc123",
        }
    }

    fn split(out: &[u8]) -> (String, Vec<u8>) {
        // Our added lines all come before the client's first byte.
        let s = String::from_utf8_lossy(out).to_string();
        (s, out.to_vec())
    }

    #[test]
    fn adds_missing_date_and_message_id() {
        let msg = b"Subject: hi\r\nFrom: a@b\r\n\r\nbody\r\n";
        let out = fix_up(msg, &trace());
        let (s, bytes) = split(&out);
        assert!(s.starts_with("Received: from printer (127.0.0.1)\r\n\tby relay.local (mailbridge) with ESMTP id abc123;\r\n\t"));
        assert!(s.contains("\r\nDate: "));
        assert!(s.contains("\r\nMessage-ID: <"));
        assert!(s.contains("@relay.local>\r\n"));
        assert!(bytes.ends_with(msg));
    }

    #[test]
    fn keeps_existing_date_and_message_id() {
        let msg = b"date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-Id : <x@y>\r\nSubject: hi\r\n\r\nDate: in body\r\n";
        let out = fix_up(msg, &trace());
        let s = String::from_utf8_lossy(&out);
        assert_eq!(s.matches("Date:").count(), 1, "{s}");
        assert!(!s.contains("Message-ID:"));
        assert!(out.ends_with(msg));
    }

    #[test]
    fn header_in_body_does_not_count() {
        let msg = b"Subject: hi\r\n\r\nMessage-ID: <in@body>\r\n";
        let s = String::from_utf8_lossy(&fix_up(msg, &trace())).to_string();
        assert!(s.contains("Message-ID: <"), "{s}");
        assert_eq!(s.matches("Message-ID:").count(), 2);
    }

    #[test]
    fn no_header_section_gets_a_separator() {
        let msg = b"just text\r\n";
        let out = fix_up(msg, &trace());
        assert!(out.ends_with(b"\r\n\r\njust text\r\n"));
    }

    #[test]
    fn eight_bit_untouched_and_helo_sanitised() {
        let msg: &[u8] = b"Subject: caf\xc3\xa9\r\n\r\n\xf0\x9f\x98\x80\xff";
        let mut t = trace();
        t.helo = "evil\r\nX-Injected: 1";
        let out = fix_up(msg, &t);
        assert!(out.ends_with(msg));
        assert!(!String::from_utf8_lossy(&out).contains("\r\nX-Injected"));
    }

    #[test]
    fn date_format() {
        let d = rfc5322_now();
        assert!(d.ends_with(" +0000"), "{d}");
        assert_eq!(&d[3..5], ", ");
    }

    #[test]
    fn head_of_a_decided_start_matches_the_whole_message() {
        let body = vec![b'b'; 3 * HEAD_WINDOW];
        let with_date = [b"Date: x\r\nSubject: s\r\n\r\n".to_vec(), body.clone()].concat();
        let no_headers = [b"text\r\n".to_vec(), body.clone()].concat();
        for msg in [&with_date, &no_headers] {
            let cut = (1..=msg.len())
                .find(|&n| head_decided(&msg[..n], false))
                .unwrap();
            assert!(cut <= HEAD_WINDOW);
            let part = String::from_utf8(head(&msg[..cut], &trace())).unwrap();
            let whole = String::from_utf8(head(msg, &trace())).unwrap();
            let fields = |s: &str| {
                (
                    s.contains("\r\nDate:"),
                    s.contains("Message-ID:"),
                    s.ends_with("\r\n\r\n"),
                )
            };
            assert_eq!(fields(&part), fields(&whole));
        }
        assert!(!head_decided(b"Subject: s\r\n", false));
        assert!(head_decided(b"Subject: s\r\n", true));
    }
}
