//! Fuzzes the IMAP pre-login path as the proxy drives it: the framing
//! (lines, literals with their limits, `+` continuations) and then the
//! parser and session for each command. Checks that every response is
//! CRLF-terminated lines that start with the tag, `*` or `+`, that a
//! tagged status is OK/NO/BAD, and that nothing panics.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use mailbridge::imap::framing::{literal_announced, read_command, FrameError, LineBuffer};
use mailbridge::imap::parser::{parse_command, tag_of};
use mailbridge::imap::session::{Session, Step};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Reads from the fuzz input (in small pieces), collects what is written.
struct Peer<'a> {
    input: &'a [u8],
    written: Vec<u8>,
}

impl AsyncRead for Peer<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = self.input.len().min(buf.remaining()).min(97);
        let (head, rest) = self.input.split_at(n);
        buf.put_slice(head);
        self.input = rest;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Peer<'_> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        b: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.written.extend_from_slice(b);
        Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// `cmd` is the command answered (None for an AUTHENTICATE response line).
fn check_response(out: &[u8], cmd: Option<&[u8]>) {
    assert!(out.ends_with(b"\r\n"), "{:?}", String::from_utf8_lossy(out));
    for line in out[..out.len() - 2].split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let text = String::from_utf8_lossy(line);
        assert!(!line.contains(&b'\r'), "{text:?}");
        if text.starts_with("* ") || text.starts_with('+') {
            continue;
        }
        let (t, rest) = text
            .split_once(' ')
            .unwrap_or_else(|| panic!("line {text:?} has no tag"));
        assert!(!t.is_empty(), "{text:?}");
        if let Some(cmd) = cmd {
            assert!(
                cmd.starts_with(t.as_bytes()),
                "tag {t:?} not from the command"
            );
        }
        assert!(
            rest.starts_with("OK ") || rest.starts_with("NO ") || rest.starts_with("BAD "),
            "{text:?}"
        );
    }
}

/// Runs one input; panics on a broken invariant.
pub fn run(data: &[u8]) {
    // Whole-command parser and literal scanner on the raw input.
    let _ = parse_command(data);
    let _ = literal_announced(data);
    let _ = tag_of(data);

    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut peer = Peer {
            input: data,
            written: Vec::new(),
        };
        let mut buf = LineBuffer::default();
        let mut session = Session::new();
        for _ in 0..64 {
            let cmd = match read_command(&mut buf, &mut peer).await {
                Ok(c) => c,
                Err(FrameError::Closed) | Err(FrameError::Io(_)) => return,
                Err(FrameError::TooLong { .. }) | Err(FrameError::LiteralTooLarge { .. }) => return,
            };
            assert!(cmd.ends_with(b"\n"));
            let sasl = session.expects_sasl_response();
            let answered = (!sasl).then_some(cmd.as_slice());
            let step = if sasl {
                session.on_sasl_response(&cmd)
            } else {
                session.on_command(&cmd)
            };
            match step {
                Step::Reply(r) => check_response(&r, answered),
                Step::Continue(r) => assert!(r.starts_with(b"+")),
                Step::Close(r) => {
                    check_response(&r, answered);
                    return;
                }
                Step::StartTls(r) => {
                    check_response(&r, answered);
                    session.tls_started();
                }
                Step::Login(req) => {
                    assert!(!req.tag.is_empty());
                    return;
                }
            }
        }
    });
}
