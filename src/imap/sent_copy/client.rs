//! The client -> upstream side of the sent_copy filter: command lines and
//! literals, and the APPEND-to-Sent recogniser (no I/O).

use super::responses;
use super::server::Learned;
use super::{MAX_LINE, MAX_NAME_LITERAL, TAIL};

/// `{n}` or `{n+}` (also `~{n}`) at the end of a line: (n, synchronising).
pub(super) fn trailing_literal(line: &[u8]) -> Option<(u64, bool)> {
    let body = line
        .strip_suffix(b"\r\n")
        .or_else(|| line.strip_suffix(b"\n"))?
        .strip_suffix(b"}")?;
    let open = body.iter().rposition(|b| *b == b'{')?;
    let inner = &body[open + 1..];
    let (digits, sync) = match inner.strip_suffix(b"+") {
        Some(d) => (d, false),
        None => (inner, true),
    };
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits)
        .ok()?
        .parse()
        .ok()
        .map(|n| (n, sync))
}

/// A mailbox argument of APPEND.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Mailbox {
    Name(Vec<u8>),
    /// Given as a literal ending the line: (n, synchronising).
    Literal(u64, bool),
}

/// A recognised APPEND command line.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Append {
    tag: Vec<u8>,
    mailbox: Mailbox,
    /// The message literal ending the line (for a named mailbox).
    message: Option<(u64, bool)>,
}

/// Parses `tag SP APPEND SP mailbox ...` (a complete line with its CRLF).
pub(super) fn parse_append(line: &[u8]) -> Option<Append> {
    let sp = line.iter().position(|b| *b == b' ')?;
    let (tag, rest) = (&line[..sp], &line[sp + 1..]);
    if tag.is_empty() || tag.iter().any(|b| b.is_ascii_control() || *b == b'+') {
        return None;
    }
    let rest = rest
        .get(..7)
        .filter(|w| w.eq_ignore_ascii_case(b"APPEND "))
        .map(|_| &rest[7..])?;
    let (mailbox, after) = match rest.first()? {
        b'"' => {
            let mut name = Vec::new();
            let mut k = 1;
            loop {
                match *rest.get(k)? {
                    b'"' => break,
                    b'\\' => {
                        name.push(*rest.get(k + 1)?);
                        k += 2;
                    }
                    b'\r' | b'\n' => return None,
                    c => {
                        name.push(c);
                        k += 1;
                    }
                }
            }
            (Mailbox::Name(name), &rest[k + 1..])
        }
        b'{' => {
            let (n, sync) = trailing_literal(rest)?;
            let close = rest.iter().position(|b| *b == b'}')?;
            // The literal must be the mailbox itself, ending the line.
            if !matches!(&rest[close + 1..], b"\r\n" | b"\n") {
                return None;
            }
            return Some(Append {
                tag: tag.to_vec(),
                mailbox: Mailbox::Literal(n, sync),
                message: None,
            });
        }
        _ => {
            let end = rest
                .iter()
                .position(|b| matches!(b, b' ' | b'\r' | b'\n' | b'(' | b'{' | b'"'))
                .unwrap_or(rest.len());
            if end == 0 {
                return None;
            }
            (Mailbox::Name(rest[..end].to_vec()), &rest[end..])
        }
    };
    let upper = after.to_ascii_uppercase();
    if upper.windows(8).any(|w| w == b"CATENATE") || !after.starts_with(b" ") {
        return None;
    }
    Some(Append {
        tag: tag.to_vec(),
        mailbox,
        message: Some(trailing_literal(after)?),
    })
}

/// What the client side is in the middle of.
#[derive(Debug)]
pub(super) enum ClientState {
    /// A line: held whole if it starts a command, else only its tail is kept.
    Line,
    /// A line longer than [`MAX_LINE`], forwarded as it comes.
    LongLine,
    /// Literal bytes of a forwarded command.
    Literal(u64),
    /// A literal mailbox name being collected (line not forwarded yet).
    MailboxLiteral { tag: Vec<u8>, n: u64, name: Vec<u8> },
    /// The line after a literal mailbox name (held).
    AfterMailbox { tag: Vec<u8>, name: Vec<u8> },
    /// Message bytes of a skipped APPEND, discarded.
    Skip(u64),
    /// The rest of a skipped APPEND after a message literal, discarded.
    SkipRest,
}

/// The client -> upstream direction.
pub(super) struct ClientSide {
    state: ClientState,
    /// The current line starts a command.
    command_start: bool,
    line: Vec<u8>,
    /// Tag of the APPEND being skipped.
    skip_tag: Vec<u8>,
    /// Tag of the command whose lines are being forwarded.
    cmd_tag: Vec<u8>,
    /// A forwarded synchronising literal waits for the upstream's `+`: if
    /// the upstream answers its command with a tagged NO/BAD instead, the
    /// client will not send it (RFC 3501 7.5). Holds the command's tag.
    sync_pending: Option<Vec<u8>>,
}

impl ClientSide {
    pub(super) fn new() -> ClientSide {
        ClientSide {
            state: ClientState::Line,
            command_start: true,
            line: Vec::new(),
            skip_tag: Vec::new(),
            cmd_tag: Vec::new(),
            sync_pending: None,
        }
    }

    /// The upstream finished a response line (not inside a literal).
    pub(super) fn upstream_line(&mut self, line: &[u8]) {
        let Some(tag) = self.sync_pending.take() else {
            return;
        };
        if line.starts_with(b"+") {
            return; // Continuation: the literal comes.
        }
        let tagged = line.len() > tag.len() && line.starts_with(&tag) && line[tag.len()] == b' ';
        if tagged && matches!(self.state, ClientState::Literal(_)) {
            // Refused: the client goes on with a new command.
            self.state = ClientState::Line;
            self.command_start = true;
            return;
        }
        self.sync_pending = Some(tag);
    }

    fn holding(&self) -> bool {
        match self.state {
            ClientState::Line => self.command_start,
            ClientState::AfterMailbox { .. } => true,
            _ => false,
        }
    }

    /// Processes client bytes: what goes upstream is appended to `out`, what
    /// we answer ourselves to `inject`.
    pub(super) fn feed(
        &mut self,
        mut input: &[u8],
        sent: &Learned,
        out: &mut Vec<u8>,
        inject: &mut Vec<u8>,
    ) {
        while !input.is_empty() {
            match &mut self.state {
                ClientState::Literal(n) | ClientState::Skip(n) => {
                    self.sync_pending = None;
                    let k = (*n).min(input.len() as u64) as usize;
                    *n -= k as u64;
                    let done = *n == 0;
                    if matches!(self.state, ClientState::Literal(_)) {
                        out.extend_from_slice(&input[..k]);
                        if done {
                            self.state = ClientState::Line;
                            self.command_start = false;
                        }
                    } else if done {
                        self.state = ClientState::SkipRest;
                    }
                    input = &input[k..];
                }
                ClientState::MailboxLiteral { tag, n, name } => {
                    let k = (*n - name.len() as u64).min(input.len() as u64) as usize;
                    name.extend_from_slice(&input[..k]);
                    input = &input[k..];
                    if name.len() as u64 == *n {
                        let (tag, name) = (std::mem::take(tag), std::mem::take(name));
                        self.state = ClientState::AfterMailbox { tag, name };
                    }
                }
                _ => {
                    let (chunk, lf) = match input.iter().position(|b| *b == b'\n') {
                        Some(p) => (&input[..=p], true),
                        None => (input, false),
                    };
                    input = &input[chunk.len()..];
                    self.take_line_bytes(chunk, out);
                    if lf {
                        self.line_end(sent, out, inject);
                    }
                }
            }
        }
    }

    fn take_line_bytes(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        let holding = self.holding();
        if !holding && !matches!(self.state, ClientState::SkipRest) {
            out.extend_from_slice(chunk);
        }
        self.line.extend_from_slice(chunk);
        if holding && self.line.len() > MAX_LINE {
            // Too long to be a command we parse: forward it as it is.
            if let ClientState::AfterMailbox { tag, name } = &self.state {
                out.extend_from_slice(&rewritten_prefix(tag, name));
            }
            out.extend_from_slice(&self.line);
            self.state = ClientState::LongLine;
        }
        if !self.holding() && self.line.len() > TAIL {
            self.line.drain(..self.line.len() - TAIL);
        }
    }

    fn line_end(&mut self, sent: &Learned, out: &mut Vec<u8>, inject: &mut Vec<u8>) {
        let line = std::mem::take(&mut self.line);
        if self.command_start {
            // A long line keeps only its tail: its tag is unknown.
            self.cmd_tag = match self.state {
                ClientState::Line => line
                    .iter()
                    .position(|b| *b == b' ')
                    .map(|p| line[..p].to_vec())
                    .unwrap_or_default(),
                _ => Vec::new(),
            };
        }
        match std::mem::replace(&mut self.state, ClientState::Line) {
            ClientState::Line if self.command_start => match parse_append(&line) {
                Some(Append {
                    tag,
                    mailbox: Mailbox::Name(name),
                    message: Some((n, sync)),
                }) if sent.is_sent(&name) => self.start_skip(tag, n, sync, inject),
                Some(Append {
                    tag,
                    mailbox: Mailbox::Literal(n, sync),
                    ..
                }) if n <= MAX_NAME_LITERAL => {
                    if sync {
                        inject.extend_from_slice(responses::LITERAL_READY);
                    }
                    self.state = if n == 0 {
                        ClientState::AfterMailbox {
                            tag,
                            name: Vec::new(),
                        }
                    } else {
                        ClientState::MailboxLiteral {
                            tag,
                            n,
                            name: Vec::new(),
                        }
                    };
                }
                _ => {
                    out.extend_from_slice(&line);
                    self.after_forwarded_line(&line);
                }
            },
            ClientState::AfterMailbox { tag, name } => {
                if sent.is_sent(&name) && line.starts_with(b" ") {
                    match trailing_literal(&line) {
                        Some((n, sync)) => self.start_skip(tag, n, sync, inject),
                        None => {
                            out.extend_from_slice(&rewritten_prefix(&tag, &name));
                            out.extend_from_slice(&line);
                            self.command_start = true;
                        }
                    }
                } else {
                    out.extend_from_slice(&rewritten_prefix(&tag, &name));
                    out.extend_from_slice(&line);
                    self.after_forwarded_line(&line);
                }
            }
            ClientState::SkipRest => match trailing_literal(&line) {
                // MULTIAPPEND: another message for the same mailbox.
                Some((n, sync)) => {
                    let tag = std::mem::take(&mut self.skip_tag);
                    self.start_skip(tag, n, sync, inject);
                }
                None => {
                    let tag = String::from_utf8_lossy(&self.skip_tag).into_owned();
                    inject.extend_from_slice(&responses::append_to_sent_skipped(&tag));
                    self.command_start = true;
                }
            },
            // Line (continuation) and LongLine: already forwarded.
            _ => self.after_forwarded_line(&line),
        }
    }

    fn after_forwarded_line(&mut self, line_or_tail: &[u8]) {
        match trailing_literal(line_or_tail) {
            Some((n, sync)) if n > 0 => {
                self.state = ClientState::Literal(n);
                self.command_start = false;
                if sync && !self.cmd_tag.is_empty() {
                    self.sync_pending = Some(self.cmd_tag.clone());
                }
            }
            Some(_) => self.command_start = false,
            None => self.command_start = true,
        }
    }

    fn start_skip(&mut self, tag: Vec<u8>, n: u64, sync: bool, inject: &mut Vec<u8>) {
        if sync {
            inject.extend_from_slice(responses::LITERAL_READY);
        }
        self.skip_tag = tag;
        self.command_start = false;
        self.state = if n == 0 {
            ClientState::SkipRest
        } else {
            ClientState::Skip(n)
        };
    }

    /// At end of stream: a held partial line still goes upstream.
    pub(super) fn finish(&mut self, out: &mut Vec<u8>) {
        if self.holding() {
            if let ClientState::AfterMailbox { tag, name } = &self.state {
                out.extend_from_slice(&rewritten_prefix(tag, name));
            }
            out.extend_from_slice(&self.line);
        }
        self.line.clear();
        self.state = ClientState::LongLine;
    }
}

/// `tag APPEND "name"` for a mailbox the client sent as a literal and that
/// we answered the continuation for ourselves (a quoted string needs none;
/// a name that cannot be quoted goes as a non-synchronising literal).
pub(super) fn rewritten_prefix(tag: &[u8], name: &[u8]) -> Vec<u8> {
    let mut v = tag.to_vec();
    v.extend_from_slice(b" APPEND ");
    if name.iter().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
        v.extend_from_slice(format!("{{{}+}}\r\n", name.len()).as_bytes());
        v.extend_from_slice(name);
    } else {
        v.push(b'"');
        for b in name {
            if matches!(b, b'"' | b'\\') {
                v.push(b'\\');
            }
            v.push(*b);
        }
        v.push(b'"');
    }
    v
}
