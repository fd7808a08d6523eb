//! Bounded reading of IMAP lines and pre-login commands: a command is its
//! lines plus the literals they announce (`{n}` gets a `+` continuation,
//! `{n+}` does not). Limits are checked before anything is read, so an
//! oversized literal is refused without reading it into memory.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::parser::tag_of;
use super::responses;

/// RFC 2971 3.3: an ID has at most 30 field/value pairs, fields of at most
/// 30 octets and values of at most 1024 octets.
pub const ID_MAX_PAIRS: usize = 30;
pub const ID_MAX_FIELD: usize = 30;
pub const ID_MAX_VALUE: usize = 1024;

/// The longest encoding the grammar allows for a string of `n` octets: quoted,
/// every octet escaped (`\"` or `\\`). A literal (`{n}` CRLF, data) is shorter.
const fn string_max(n: usize) -> usize {
    2 + 2 * n
}

/// `ID (` pairs `)` at the RFC 2971 maximum, encoded as long as the grammar
/// permits. The largest pre-login command the RFCs bound: the others are far
/// smaller (AUTHENTICATE PLAIN, RFC 4616: three 255-octet parts, is about
/// 1 KiB of base64; a LOGIN user name and password are what a person types).
pub const ID_MAX_ENCODED: usize = "ID (".len()
    + ID_MAX_PAIRS * (string_max(ID_MAX_FIELD) + " ".len() + string_max(ID_MAX_VALUE))
    + (ID_MAX_PAIRS - 1) * " ".len()
    + ")".len();

/// Room for the tag, the space after it and CRLF around [`ID_MAX_ENCODED`].
const SLACK: usize = 2 * 1024;

/// Longest pre-login line (CRLF included): the largest command the RFCs
/// allow before login, plus slack. A hard cap: a longer line is refused and
/// the connection closed, so a client before login holds at most this much.
pub const MAX_LINE: usize = ID_MAX_ENCODED + SLACK;
/// Largest pre-login literal (one ID value, a user name or password).
pub const MAX_LITERAL: usize = 8 * 1024;
/// Largest whole pre-login command (lines and literals together). Literals
/// are shorter than the worst quoted form, so the line cap covers them too.
pub const MAX_COMMAND: usize = MAX_LINE;
const READ_CHUNK: usize = 4096;

#[derive(Debug)]
pub enum FrameError {
    /// The peer closed the connection (cleanly or mid-command).
    Closed,
    Io(io::Error),
    /// A line (or the command) grew past the limit; `tag` if one was seen.
    TooLong {
        tag: Option<String>,
    },
    LiteralTooLarge {
        tag: Option<String>,
    },
}

impl From<io::Error> for FrameError {
    fn from(e: io::Error) -> Self {
        FrameError::Io(e)
    }
}

/// Bytes read from a peer and not yet consumed.
#[derive(Default)]
pub struct LineBuffer {
    buf: Vec<u8>,
}

impl LineBuffer {
    /// Reads one line ending in LF (bare LF included: the parser refuses it),
    /// at most `max` bytes long.
    pub async fn read_line<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
        max: usize,
    ) -> Result<Vec<u8>, FrameError> {
        let mut scanned = 0;
        loop {
            if let Some(pos) = self.buf[scanned..].iter().position(|b| *b == b'\n') {
                let end = scanned + pos + 1;
                if end > max {
                    return Err(FrameError::TooLong {
                        tag: tag_of(&self.buf),
                    });
                }
                let rest = self.buf.split_off(end);
                return Ok(std::mem::replace(&mut self.buf, rest));
            }
            scanned = self.buf.len();
            if scanned >= max {
                return Err(FrameError::TooLong {
                    tag: tag_of(&self.buf),
                });
            }
            self.fill(r).await?;
        }
    }

    /// Reads exactly `n` bytes.
    pub async fn read_exact<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
        n: usize,
    ) -> Result<Vec<u8>, FrameError> {
        while self.buf.len() < n {
            self.fill(r).await?;
        }
        let rest = self.buf.split_off(n);
        Ok(std::mem::replace(&mut self.buf, rest))
    }

    async fn fill<R: AsyncRead + Unpin>(&mut self, r: &mut R) -> Result<(), FrameError> {
        self.buf.reserve(READ_CHUNK);
        let n = r.read_buf(&mut self.buf).await?;
        if n == 0 {
            return Err(FrameError::Closed);
        }
        Ok(())
    }

    /// What was read beyond the last consumed byte (to pass on after login).
    pub fn take_rest(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

/// Reads one whole pre-login command, answering `+` to synchronising
/// literals on `w`.
pub async fn read_command<S: AsyncRead + AsyncWrite + Unpin>(
    buf: &mut LineBuffer,
    s: &mut S,
) -> Result<Vec<u8>, FrameError> {
    let mut cmd = Vec::new();
    loop {
        let line = buf.read_line(s, MAX_LINE).await?;
        cmd.extend_from_slice(&line);
        if cmd.len() > MAX_COMMAND {
            return Err(FrameError::TooLong { tag: tag_of(&cmd) });
        }
        let Some((n, sync)) = literal_announced(&line) else {
            return Ok(cmd);
        };
        if n > MAX_LITERAL || cmd.len() + n > MAX_COMMAND {
            return Err(FrameError::LiteralTooLarge { tag: tag_of(&cmd) });
        }
        if sync {
            s.write_all(responses::LITERAL_READY).await?;
            s.flush().await?;
        }
        let data = buf.read_exact(s, n).await?;
        cmd.extend_from_slice(&data);
    }
}

/// `Some((size, synchronising))` when `line` ends with `{n}` or `{n+}` CRLF.
/// Sizes that do not fit are reported as `usize::MAX` (too large).
pub fn literal_announced(line: &[u8]) -> Option<(usize, bool)> {
    let body = line.strip_suffix(b"}\r\n")?;
    let open = body.iter().rposition(|b| *b == b'{')?;
    let inner = &body[open + 1..];
    let (digits, sync) = match inner.strip_suffix(b"+") {
        Some(d) => (d, false),
        None => (inner, true),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = std::str::from_utf8(digits)
        .ok()
        .and_then(|d| d.parse::<usize>().ok())
        .unwrap_or(usize::MAX);
    Some((n, sync))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_detection() {
        assert_eq!(literal_announced(b"a LOGIN {5}\r\n"), Some((5, true)));
        assert_eq!(
            literal_announced(b"a LOGIN joe {12+}\r\n"),
            Some((12, false))
        );
        assert_eq!(
            literal_announced(b"a LOGIN {99999999999999999999999}\r\n"),
            Some((usize::MAX, true))
        );
        assert_eq!(literal_announced(b"a LOGIN {}\r\n"), None);
        assert_eq!(literal_announced(b"a LOGIN {5}\n"), None);
        assert_eq!(literal_announced(b"a NOOP\r\n"), None);
    }

    #[tokio::test]
    async fn reads_commands_with_literals() {
        let (mut client, mut server) = tokio::io::duplex(1 << 16);
        client
            .write_all(b"a LOGIN {3}\r\njoe {4+}\r\npass\r\nb NOOP\r\n")
            .await
            .unwrap();
        let mut buf = LineBuffer::default();
        let cmd = read_command(&mut buf, &mut server).await.unwrap();
        assert_eq!(cmd, b"a LOGIN {3}\r\njoe {4+}\r\npass\r\n");
        let mut cont = [0u8; 26];
        client.read_exact(&mut cont).await.unwrap();
        assert_eq!(&cont, responses::LITERAL_READY);
        assert_eq!(buf.take_rest(), b"b NOOP\r\n");
    }

    #[tokio::test]
    async fn oversized_literal_is_refused_unread() {
        let (mut client, mut server) = tokio::io::duplex(1 << 16);
        client.write_all(b"t1 LOGIN joe {9000}\r\n").await.unwrap();
        let mut buf = LineBuffer::default();
        match read_command(&mut buf, &mut server).await {
            Err(FrameError::LiteralTooLarge { tag }) => assert_eq!(tag.as_deref(), Some("t1")),
            r => panic!("{r:?}"),
        }
    }

    /// The RFC 2971 maximum ID is read whole in every encoding, with a `+`
    /// for each synchronising literal, and the next command stays buffered.
    #[tokio::test]
    async fn maximal_id_is_read_whole() {
        use crate::imap::parser::{maximal_id, IdForm};
        for form in [IdForm::Escaped, IdForm::Literal, IdForm::LiteralPlus] {
            let id = maximal_id("t3", form);
            let (mut client, mut server) = tokio::io::duplex(1 << 20);
            client.write_all(&id).await.unwrap();
            client.write_all(b"t4 NOOP\r\n").await.unwrap();
            let mut buf = LineBuffer::default();
            let cmd = read_command(&mut buf, &mut server).await.unwrap();
            assert!(cmd == id, "{form:?}");
            assert_eq!(buf.take_rest(), b"t4 NOOP\r\n");
            drop(server);
            let mut said = Vec::new();
            client.read_to_end(&mut said).await.unwrap();
            let literals = if matches!(form, IdForm::Literal) {
                2 * ID_MAX_PAIRS
            } else {
                0
            };
            assert_eq!(said, responses::LITERAL_READY.repeat(literals), "{form:?}");
        }
        assert!(ID_MAX_ENCODED + "tag ".len() + 2 <= MAX_LINE);
    }

    #[tokio::test]
    async fn long_line_is_refused() {
        let (mut client, mut server) = tokio::io::duplex(1 << 16);
        let mut line = b"t2 LOGIN ".to_vec();
        line.resize(MAX_LINE + 10, b'a');
        client.write_all(&line).await.unwrap();
        let mut buf = LineBuffer::default();
        assert!(matches!(
            read_command(&mut buf, &mut server).await,
            Err(FrameError::TooLong { tag: Some(t) }) if t == "t2"
        ));
    }
}
