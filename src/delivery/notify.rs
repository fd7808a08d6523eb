//! Permanent-failure notices (`notify = "admin@example.com"` per account):
//! when a message lands in the failed area (5xx or expired), a short report
//! (queue id, recipients, the upstream's reply, the original headers but not
//! the body) is queued through the spool like any message, so it is durable
//! and goes out through the same account.
//!
//! Loops: a notice carries `X-Mailbridge-Notice` and `Auto-Submitted`, and
//! its envelope sender is null (`MAIL FROM:<>` semantics, RFC 5321 6.1).
//! Nothing is ever reported about a message with either mark, so a notice
//! that fails is recorded in the failed area and that is the end of it.

use tracing::{error, info, warn};

use crate::spool::{Envelope, QueueId};
use crate::Context;

/// The header that marks a notice.
pub const NOTICE_HEADER: &str = "X-Mailbridge-Notice";
/// How much of the original header section a notice quotes.
const MAX_HEADERS: usize = 16 * 1024;
/// Longest original subject quoted in the notice's subject.
const MAX_SUBJECT: usize = 200;

/// Queues a notice about the failed-area entry `failed_id`, if its account
/// has `notify` and the failed message is not itself a notice or a bounce.
/// Problems are logged; the failure itself is already recorded.
pub async fn failure_notice(ctx: &Context, failed_id: &QueueId) {
    let id = failed_id.clone();
    let entry = match ctx.spool.blocking(move |s| s.entry(&id)).await {
        Ok(e) => e,
        Err(e) => {
            warn!(failed_id = %failed_id, "no failure notice: {e}");
            return;
        }
    };
    let Some(account) = ctx.config.account(&entry.envelope.account) else {
        return;
    };
    let Some(to) = account.notify.as_deref() else {
        return;
    };
    if entry.envelope.mail_from.is_empty() {
        // A bounce or a notice: never reported (no loops).
        return;
    }
    if !plain_address(to) || !plain_address(&account.address) {
        warn!(failed_id = %failed_id, "no failure notice: notify or the account address is not a plain mail address");
        return;
    }
    let id = failed_id.clone();
    let message = ctx
        .spool
        .blocking(move |s| s.read_message(&id))
        .await
        .unwrap_or_default();
    let headers = header_section(&message);
    if is_notice(headers) {
        return;
    }
    let text = Notice {
        from: &account.address,
        to,
        hostname: &ctx.config.smtp.hostname,
        queue_id: &failed_id.0,
        account: &account.name,
        recipients: &entry.remaining,
        reply: entry.last_error.as_deref().unwrap_or("(no reply recorded)"),
        headers,
    }
    .render();
    let envelope = Envelope {
        account: account.name.clone(),
        mail_from: String::new(),
        recipients: vec![to.to_string()],
        client: "mailbridge (failure notice)".into(),
        helo: ctx.config.smtp.hostname.clone(),
        local_user: None,
        smtputf8: false,
        body_8bit: !text.is_ascii(),
    };
    match ctx.spool.enqueue(&envelope, &text).await {
        Ok(id) => {
            // The spool hands it to the worker like any message.
            info!(queue_id = %id, failed_id = %failed_id, to = %to, "failure notice queued");
        }
        Err(e) => error!(failed_id = %failed_id, "cannot queue the failure notice: {e}"),
    }
}

/// Does this header section carry the notice mark (or `Auto-Submitted` other than "no")?
pub fn is_notice(headers: &[u8]) -> bool {
    headers.split(|b| *b == b'\n').any(|line| {
        let line = String::from_utf8_lossy(line);
        let Some((name, value)) = line.split_once(':') else {
            return false;
        };
        let name = name.trim();
        name.eq_ignore_ascii_case(NOTICE_HEADER)
            || (name.eq_ignore_ascii_case("Auto-Submitted")
                && !value.trim().eq_ignore_ascii_case("no"))
    })
}

/// The header section as far as it is clearly headers: the leading lines
/// that are header fields (`Name: value`, the name printable ASCII without
/// spaces) or their continuations, ending at the blank line or at the first
/// line of any other shape, whichever comes first, and at most
/// [`MAX_HEADERS`] bytes, cut at a line end. A message without a blank line
/// thus never has its body text quoted: it ends where the lines stop looking
/// like headers (the rule MTAs apply to a missing separator).
fn header_section(message: &[u8]) -> &[u8] {
    let mut end = 0;
    for line in message.split_inclusive(|b| *b == b'\n') {
        let text = line.strip_suffix(b"\n").unwrap_or(line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        let continuation = end > 0
            && text.first().is_some_and(|b| matches!(b, b' ' | b'\t'))
            && text.iter().any(|b| !b.is_ascii_whitespace());
        if !(continuation || is_field(text)) || end + line.len() > MAX_HEADERS {
            break;
        }
        end += line.len();
    }
    &message[..end]
}

/// `Name: value` with a field name of printable ASCII other than `:` (RFC 5322 2.2).
fn is_field(line: &[u8]) -> bool {
    match line.iter().position(|b| *b == b':') {
        Some(colon) if colon > 0 => line[..colon].iter().all(|b| matches!(b, 33..=126)),
        _ => false,
    }
}

/// The original `Subject`, unfolded, without control characters, shortened.
fn subject_of(headers: &[u8]) -> String {
    let text = String::from_utf8_lossy(headers);
    let mut subject: Option<String> = None;
    for line in text.split("\r\n") {
        match &mut subject {
            Some(s) if line.starts_with([' ', '\t']) => s.push_str(line),
            Some(_) => break,
            None => {
                if let Some((name, value)) = line.split_once(':') {
                    if name.eq_ignore_ascii_case("subject") {
                        subject = Some(value.to_string());
                    }
                }
            }
        }
    }
    let clean: String = subject
        .unwrap_or_default()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let clean = clean.split_whitespace().collect::<Vec<_>>().join(" ");
    match clean.char_indices().nth(MAX_SUBJECT) {
        Some((i, _)) => format!("{}...", &clean[..i]),
        None if clean.is_empty() => "(no subject)".into(),
        None => clean,
    }
}

/// A bare address we can put into a header without quoting or injection.
fn plain_address(a: &str) -> bool {
    a.contains('@')
        && !a.is_empty()
        && a.len() <= 254
        && !a
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || matches!(c, '<' | '>' | ',' | '"'))
}

struct Notice<'a> {
    from: &'a str,
    to: &'a str,
    hostname: &'a str,
    queue_id: &'a str,
    account: &'a str,
    recipients: &'a [String],
    reply: &'a str,
    headers: &'a [u8],
}

impl Notice<'_> {
    /// The notice as a message (CRLF line ends, ready for the spool).
    fn render(&self) -> Vec<u8> {
        let date = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc2822)
            .unwrap_or_default();
        let host = if self.hostname.is_empty() {
            "localhost"
        } else {
            self.hostname
        };
        let reply: String = self
            .reply
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        let mut m = String::new();
        let mut line = |s: &str| {
            m.push_str(s);
            m.push_str("\r\n");
        };
        line(&format!("From: <{}>", self.from));
        line(&format!("To: <{}>", self.to));
        line(&format!(
            "Subject: Undelivered mail: {}",
            subject_of(self.headers)
        ));
        line(&format!("Date: {date}"));
        line(&format!(
            "Message-ID: <notice.{}.{}@{host}>",
            self.queue_id,
            crate::spool::unique_suffix()
        ));
        line("Auto-Submitted: auto-replied");
        line(&format!("{NOTICE_HEADER}: failure"));
        line("MIME-Version: 1.0");
        line("Content-Type: text/plain; charset=utf-8");
        line("Content-Transfer-Encoding: 8bit");
        line("");
        line("mailbridge could not deliver a message and gave up on it.");
        line("");
        line(&format!("Queue id:       {}", self.queue_id));
        line(&format!("Account:        {}", self.account));
        line(&format!("Recipients:     {}", self.recipients.join(", ")));
        line(&format!("Upstream reply: {reply}"));
        line("");
        line(&format!(
            "It is kept in the failed area: `mailbridge queue show {}`,",
            self.queue_id
        ));
        line(&format!(
            "and `mailbridge queue retry {}` sends it again.",
            self.queue_id
        ));
        line("");
        line("The original message's headers (its body is not included):");
        line("");
        let mut out = m.into_bytes();
        out.extend_from_slice(self.headers);
        if !out.ends_with(b"\r\n") {
            out.extend_from_slice(b"\r\n");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A notice about a message to a@example.org with `reply` and `headers`.
    fn render(reply: &str, headers: &[u8]) -> Vec<u8> {
        Notice {
            from: "relay@example.com",
            to: "admin@example.com",
            hostname: "mb.local",
            queue_id: "0abc",
            account: "gmail",
            recipients: &["a@example.org".into()],
            reply,
            headers,
        }
        .render()
    }

    #[test]
    fn renders_a_marked_notice_with_subject_reply_and_headers_only() {
        let orig =
            b"From: scanner@local\r\nSubject: Scan\r\n  page 1\r\nX-A: b\r\n\r\nSECRET BODY\r\n";
        let headers = header_section(orig);
        assert_eq!(subject_of(headers), "Scan page 1");
        let n = render("DATA: 554 5.7.0 rejected\r\nX-Injected: 1", headers);
        let text = String::from_utf8(n.clone()).unwrap();
        assert!(text.contains("Subject: Undelivered mail: Scan page 1\r\n"));
        assert!(text.contains("Upstream reply: DATA: 554 5.7.0 rejected  X-Injected: 1\r\n"));
        assert!(text.contains("X-A: b\r\n"));
        assert!(!text.contains("SECRET BODY"));
        assert!(is_notice(header_section(&n)));
        assert!(!is_notice(headers));
        assert!(is_notice(b"Auto-Submitted: auto-generated\r\n"));
        assert!(!is_notice(b"Auto-Submitted: no\r\n"));
    }

    #[test]
    fn only_header_shaped_lines_are_quoted_even_without_a_blank_line() {
        let cases: &[(&[u8], &[u8])] = &[
            // No blank line: the first line that is not a field ends the quote.
            (
                b"Subject: Scan\r\nFrom: a@b\r\nSECRET BODY line\r\nX-Later: v\r\n",
                b"Subject: Scan\r\nFrom: a@b\r\n",
            ),
            (b"SECRET BODY with no headers\r\nmore\r\n", b""),
            (
                b"Subject: only headers\r\nX-A: b",
                b"Subject: only headers\r\nX-A: b",
            ),
            // Folded headers stay; a blank line ends the section as before.
            (
                b"Subject: a\r\n  b\r\n\r\nSECRET: BODY\r\n",
                b"Subject: a\r\n  b\r\n",
            ),
            // A whitespace-only line or a space in a field name is not a header.
            (b"A: 1\r\n \r\nSECRET\r\n", b"A: 1\r\n"),
            (b"A: 1\r\nSECRET text: here\r\n", b"A: 1\r\n"),
            (b" leading: fold\r\n", b""),
            (b": no name\r\n", b""),
        ];
        for (message, quoted) in cases {
            assert_eq!(
                String::from_utf8_lossy(header_section(message)),
                String::from_utf8_lossy(quoted)
            );
        }
        // The bound cuts at a line end.
        let mut big = Vec::new();
        while big.len() < 2 * MAX_HEADERS {
            big.extend_from_slice(b"X-Filler: 0123456789012345678901234567890123456789\r\n");
        }
        let h = header_section(&big);
        assert!(h.len() <= MAX_HEADERS && h.len() > MAX_HEADERS - 64);
        assert!(h.ends_with(b"\r\n"));
        let n = render("554 no", header_section(b"Subject: s\r\nSECRET BODY\r\n"));
        let text = String::from_utf8(n).unwrap();
        assert!(
            text.ends_with("Subject: s\r\n") && !text.contains("SECRET"),
            "{text}"
        );
    }

    #[test]
    fn addresses_that_could_inject_headers_are_refused() {
        assert!(plain_address("admin@example.com"));
        assert!(!plain_address("admin@example.com\r\nBcc: x@y"));
        assert!(!plain_address("a <b@c>"));
        assert!(!plain_address("nobody"));
    }
}
