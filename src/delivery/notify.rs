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
    let entry = match ctx.spool.entry(failed_id) {
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
    let message = ctx.spool.read_message(failed_id).unwrap_or_default();
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
            info!(queue_id = %id, failed_id = %failed_id, to = %to, "failure notice queued");
            ctx.wake_delivery.notify_one();
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

/// The header section (up to the blank line), at most [`MAX_HEADERS`] bytes.
fn header_section(message: &[u8]) -> &[u8] {
    let end = message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 2)
        .unwrap_or(message.len());
    let mut end = end.min(MAX_HEADERS);
    // Cut at a line end so a header is never half quoted.
    if end < message.len() && end > 0 && message[end - 1] != b'\n' {
        end = message[..end]
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |p| p + 1);
    }
    &message[..end]
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

    #[test]
    fn renders_a_marked_notice_with_subject_reply_and_headers_only() {
        let orig =
            b"From: scanner@local\r\nSubject: Scan\r\n  page 1\r\nX-A: b\r\n\r\nSECRET BODY\r\n";
        let headers = header_section(orig);
        assert_eq!(subject_of(headers), "Scan page 1");
        let n = Notice {
            from: "relay@example.com",
            to: "admin@example.com",
            hostname: "mb.local",
            queue_id: "0abc",
            account: "gmail",
            recipients: &["a@example.org".into()],
            reply: "DATA: 554 5.7.0 rejected\r\nX-Injected: 1",
            headers,
        }
        .render();
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
    fn addresses_that_could_inject_headers_are_refused() {
        assert!(plain_address("admin@example.com"));
        assert!(!plain_address("admin@example.com\r\nBcc: x@y"));
        assert!(!plain_address("a <b@c>"));
        assert!(!plain_address("nobody"));
    }
}
