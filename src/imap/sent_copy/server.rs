//! The upstream -> client side of the sent_copy filter: where complete
//! responses end (so our replies never land inside one) and which mailbox
//! LIST flags `\Sent` (no I/O).

use super::client::trailing_literal;
use super::client::ClientSide;
use super::{FALLBACK_SENT, MAX_LEARNED, MAX_LINE, TAIL};

/// Sent mailbox names learned from LIST.
#[derive(Default)]
pub(super) struct Learned(Vec<Vec<u8>>);

impl Learned {
    pub(super) fn is_sent(&self, name: &[u8]) -> bool {
        if self.0.is_empty() {
            FALLBACK_SENT.contains(&name)
        } else {
            self.0.iter().any(|n| n == name)
        }
    }

    /// Learns from `* LIST (\HasNoChildren \Sent) "/" "[Gmail]/Sent Mail"`.
    pub(super) fn observe(&mut self, line: &[u8]) {
        let Some(name) = sent_from_list(line) else {
            return;
        };
        if !self.0.contains(&name) && self.0.len() < MAX_LEARNED {
            self.0.push(name);
        }
    }
}

pub(super) fn sent_from_list(line: &[u8]) -> Option<Vec<u8>> {
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
pub(super) struct ServerSide {
    line: Vec<u8>,
    long: bool,
    literal: u64,
    /// A literal ended the last line: the response goes on after it.
    continued: bool,
    pub(super) learned: Learned,
}

impl ServerSide {
    /// Between two complete responses (our replies may go to the client).
    pub(super) fn at_boundary(&self) -> bool {
        self.literal == 0 && self.line.is_empty() && !self.continued
    }

    /// How much of `buf` reaches the next line end or literal end.
    pub(super) fn chunk_len(&self, buf: &[u8]) -> usize {
        if self.literal > 0 {
            return self.literal.min(buf.len() as u64) as usize;
        }
        buf.iter()
            .position(|b| *b == b'\n')
            .map_or(buf.len(), |p| p + 1)
    }

    pub(super) fn feed(&mut self, mut data: &[u8], client: &mut ClientSide) {
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
                    client.upstream_line(&line);
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
