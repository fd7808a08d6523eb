//! `sent_copy = "skip"`: the client stream wrapper used by the post-login
//! pump. A client's `APPEND` to the Sent mailbox is answered OK locally and
//! its message literal discarded as it streams by (never buffered, never
//! forwarded), because Gmail already files SMTP-sent mail in Sent.
//!
//! Only command lines are parsed (tag, APPEND, mailbox as atom, quoted string
//! or literal, then the message literal `{n}` / `{n+}`), in a line buffer of
//! at most [`MAX_LINE`]; every other byte passes through as is. Literals of
//! every client command are tracked so their contents are never taken for a
//! command. Which mailbox is Sent is learned from the upstream's LIST
//! responses (`\Sent`, RFC 6154) as they pass by; until then the names
//! "[Gmail]/Sent Mail" and "Sent" are assumed. Our own replies go to the
//! client only between two complete upstream responses (the upstream side
//! tracks lines and literals too), so they never land inside one.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::responses;

/// Longest line held for parsing (client command lines, upstream LIST lines).
pub const MAX_LINE: usize = 8 * 1024;
/// Longest mailbox name accepted as a literal (longer ones are forwarded untouched).
const MAX_NAME_LITERAL: u64 = 1024;
/// Bytes kept of a line that is not held (enough to see a trailing `{n+}`).
const TAIL: usize = 32;
/// Fallback names of the Sent mailbox before a LIST told us.
const FALLBACK_SENT: &[&[u8]] = &[b"[Gmail]/Sent Mail", b"Sent"];
/// Names learned from LIST (a few at most).
const MAX_LEARNED: usize = 8;
/// Client reads processed per poll before yielding (fairness while discarding).
const READ_BUDGET: usize = 32;

/// `{n}` or `{n+}` (also `~{n}`) at the end of a line: (n, synchronising).
pub fn trailing_literal(line: &[u8]) -> Option<(u64, bool)> {
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
enum Mailbox {
    Name(Vec<u8>),
    /// Given as a literal ending the line: (n, synchronising).
    Literal(u64, bool),
}

/// A recognised APPEND command line.
#[derive(Debug, PartialEq, Eq)]
struct Append {
    tag: Vec<u8>,
    mailbox: Mailbox,
    /// The message literal ending the line (for a named mailbox).
    message: Option<(u64, bool)>,
}

/// Parses `tag SP APPEND SP mailbox ...` (a complete line with its CRLF).
fn parse_append(line: &[u8]) -> Option<Append> {
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
enum ClientState {
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
struct ClientSide {
    state: ClientState,
    /// The current line starts a command.
    command_start: bool,
    line: Vec<u8>,
    /// Tag of the APPEND being skipped.
    skip_tag: Vec<u8>,
}

impl ClientSide {
    fn new() -> ClientSide {
        ClientSide {
            state: ClientState::Line,
            command_start: true,
            line: Vec::new(),
            skip_tag: Vec::new(),
        }
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
    fn feed(&mut self, mut input: &[u8], sent: &Learned, out: &mut Vec<u8>, inject: &mut Vec<u8>) {
        while !input.is_empty() {
            match &mut self.state {
                ClientState::Literal(n) | ClientState::Skip(n) => {
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
            Some((n, _)) if n > 0 => {
                self.state = ClientState::Literal(n);
                self.command_start = false;
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
    fn finish(&mut self, out: &mut Vec<u8>) {
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
fn rewritten_prefix(tag: &[u8], name: &[u8]) -> Vec<u8> {
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

/// Sent mailbox names learned from LIST.
#[derive(Default)]
struct Learned(Vec<Vec<u8>>);

impl Learned {
    fn is_sent(&self, name: &[u8]) -> bool {
        if self.0.is_empty() {
            FALLBACK_SENT.contains(&name)
        } else {
            self.0.iter().any(|n| n == name)
        }
    }

    /// Learns from `* LIST (\HasNoChildren \Sent) "/" "[Gmail]/Sent Mail"`.
    fn observe(&mut self, line: &[u8]) {
        let Some(name) = sent_from_list(line) else {
            return;
        };
        if !self.0.contains(&name) && self.0.len() < MAX_LEARNED {
            self.0.push(name);
        }
    }
}

fn sent_from_list(line: &[u8]) -> Option<Vec<u8>> {
    let upper = line.get(..9)?.to_ascii_uppercase();
    let rest = if upper.starts_with(b"* LIST (") {
        &line[8..]
    } else if upper.starts_with(b"* XLIST (") {
        &line[9..]
    } else {
        return None;
    };
    let close = rest.iter().position(|b| *b == b')')?;
    let is_sent = rest[..close]
        .split(|b| *b == b' ')
        .any(|f| f.eq_ignore_ascii_case(b"\\Sent"));
    if !is_sent {
        return None;
    }
    let rest = rest.get(close + 1..)?.strip_prefix(b" ")?;
    // The hierarchy delimiter: a quoted character or NIL.
    let rest = if rest.len() >= 3 && rest[0] == b'"' {
        let end = if rest[1] == b'\\' { 4 } else { 3 };
        rest.get(end..)?
    } else if rest.len() >= 3 && rest[..3].eq_ignore_ascii_case(b"NIL") {
        &rest[3..]
    } else {
        return None;
    };
    let rest = rest.strip_prefix(b" ")?;
    let rest = rest
        .strip_suffix(b"\r\n")
        .or_else(|| rest.strip_suffix(b"\n"))?;
    if let Some(q) = rest.strip_prefix(b"\"") {
        let mut name = Vec::new();
        let mut k = 0;
        while k < q.len() {
            match q[k] {
                b'"' => return Some(name),
                b'\\' => {
                    name.push(*q.get(k + 1)?);
                    k += 2;
                }
                c => {
                    name.push(c);
                    k += 1;
                }
            }
        }
        None
    } else if rest.is_empty() || rest.contains(&b' ') || rest.starts_with(b"{") {
        None
    } else {
        Some(rest.to_vec())
    }
}

/// The upstream -> client direction: where responses end, and LIST learning.
#[derive(Default)]
struct ServerSide {
    line: Vec<u8>,
    long: bool,
    literal: u64,
    /// A literal ended the last line: the response goes on after it.
    continued: bool,
    learned: Learned,
}

impl ServerSide {
    /// Between two complete responses (our replies may go to the client).
    fn at_boundary(&self) -> bool {
        self.literal == 0 && self.line.is_empty() && !self.continued
    }

    /// How much of `buf` reaches the next line end or literal end.
    fn chunk_len(&self, buf: &[u8]) -> usize {
        if self.literal > 0 {
            return self.literal.min(buf.len() as u64) as usize;
        }
        buf.iter()
            .position(|b| *b == b'\n')
            .map_or(buf.len(), |p| p + 1)
    }

    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.literal > 0 {
                let k = self.literal.min(data.len() as u64) as usize;
                self.literal -= k as u64;
                data = &data[k..];
                continue;
            }
            let (chunk, lf) = match data.iter().position(|b| *b == b'\n') {
                Some(p) => (&data[..=p], true),
                None => (data, false),
            };
            data = &data[chunk.len()..];
            self.line.extend_from_slice(chunk);
            if self.line.len() > MAX_LINE || (self.long && self.line.len() > TAIL) {
                self.long = true;
                self.line.drain(..self.line.len() - TAIL);
            }
            if lf {
                let line = std::mem::take(&mut self.line);
                if !self.long && !self.continued {
                    self.learned.observe(&line);
                }
                self.long = false;
                match trailing_literal(&line) {
                    Some((n, _)) => {
                        self.literal = n;
                        self.continued = true;
                    }
                    None => self.continued = false,
                }
            }
        }
    }
}

/// The client stream with `sent_copy = "skip"` applied; give it to the pump
/// in place of the client stream.
pub struct SentCopyFilter<'a, S> {
    inner: &'a mut S,
    client: ClientSide,
    server: ServerSide,
    /// Filtered client bytes not yet handed to the pump.
    out: Vec<u8>,
    out_pos: usize,
    /// Our replies waiting for a response boundary.
    inject: Vec<u8>,
    inject_pos: usize,
    read_eof: bool,
    read_waker: Option<Waker>,
}

impl<'a, S> SentCopyFilter<'a, S> {
    pub fn new(inner: &'a mut S) -> Self {
        SentCopyFilter {
            inner,
            client: ClientSide::new(),
            server: ServerSide::default(),
            out: Vec::new(),
            out_pos: 0,
            inject: Vec::new(),
            inject_pos: 0,
            read_eof: false,
            read_waker: None,
        }
    }

    /// Client bytes read ahead before the pump started (sent after LOGIN).
    pub fn preload(&mut self, data: &[u8]) {
        let (learned, out, inject) = (&self.server.learned, &mut self.out, &mut self.inject);
        self.client.feed(data, learned, out, inject);
    }

    fn injecting(&self) -> bool {
        self.inject_pos < self.inject.len()
    }
}

impl<S: AsyncWrite + Unpin> SentCopyFilter<'_, S> {
    /// Writes our pending replies (only call at a response boundary).
    fn poll_inject(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.injecting() {
            let n =
                ready!(Pin::new(&mut *self.inner).poll_write(cx, &self.inject[self.inject_pos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.inject_pos += n;
        }
        self.inject.clear();
        self.inject_pos = 0;
        Pin::new(&mut *self.inner).poll_flush(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for SentCopyFilter<'_, S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        for _ in 0..READ_BUDGET {
            if this.injecting() && this.server.at_boundary() {
                ready!(this.poll_inject(cx))?;
            }
            if this.out_pos < this.out.len() {
                let k = (this.out.len() - this.out_pos).min(buf.remaining());
                buf.put_slice(&this.out[this.out_pos..this.out_pos + k]);
                this.out_pos += k;
                if this.out_pos == this.out.len() {
                    this.out.clear();
                    this.out_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.read_eof {
                return Poll::Ready(Ok(()));
            }
            let mut tmp = [0u8; 4096];
            let mut rb = ReadBuf::new(&mut tmp);
            match Pin::new(&mut *this.inner).poll_read(cx, &mut rb) {
                Poll::Pending => {
                    this.read_waker = Some(cx.waker().clone());
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) if rb.filled().is_empty() => {
                    this.client.finish(&mut this.out);
                    this.read_eof = true;
                }
                Poll::Ready(Ok(())) => {
                    let (learned, out, inject) =
                        (&this.server.learned, &mut this.out, &mut this.inject);
                    this.client.feed(rb.filled(), learned, out, inject);
                }
            }
        }
        // Discarding a large literal: let other tasks run.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for SentCopyFilter<'_, S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.injecting() && this.server.at_boundary() {
            ready!(this.poll_inject(cx))?;
        }
        // While a reply waits, write up to the next line or literal end only,
        // so it can go out at the next boundary.
        let len = if this.injecting() {
            this.server.chunk_len(buf)
        } else {
            buf.len()
        };
        let n = ready!(Pin::new(&mut *this.inner).poll_write(cx, &buf[..len]))?;
        this.server.feed(&buf[..n]);
        if this.injecting() && this.server.at_boundary() {
            if let Some(w) = this.read_waker.take() {
                w.wake();
            }
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.injecting() && this.server.at_boundary() {
            ready!(this.poll_inject(cx))?;
        }
        Pin::new(&mut *this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
