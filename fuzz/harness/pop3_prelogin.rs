//! Fuzzes the POP3 pre-login path as the proxy drives it: bounded line
//! reading and then the session for each line. Checks that every reply is
//! CRLF-terminated lines starting with `+OK`, `-ERR` or `+ ` (multi-line
//! replies end with "."), that a login request has a user name, that no
//! line read is longer than the limit, and that nothing panics.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use mailbridge::imap::framing::{FrameError, LineBuffer};
use mailbridge::pop3::session::{Session, Step, MAX_LINE};
use tokio::io::{AsyncRead, ReadBuf};

/// Reads from the fuzz input in small pieces.
struct Peer<'a> {
    input: &'a [u8],
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

fn check_reply(out: &[u8]) {
    let text = String::from_utf8_lossy(out);
    assert!(out.ends_with(b"\r\n"), "{text:?}");
    let lines: Vec<&[u8]> = out[..out.len() - 2].split(|b| *b == b'\n').collect();
    for l in &lines {
        assert!(
            !l.strip_suffix(b"\r").unwrap_or(l).contains(&b'\r'),
            "{text:?}"
        );
    }
    let first = lines[0];
    assert!(
        first.starts_with(b"+OK") || first.starts_with(b"-ERR"),
        "{text:?}"
    );
    // A multi-line +OK (CAPA, AUTH list) ends with the "." line.
    if first.starts_with(b"+OK") && lines.len() > 1 {
        assert_eq!(*lines.last().unwrap_or(&&b""[..]), b".", "{text:?}");
    }
    // Each -ERR stands alone (the too-many-errors close has two).
    if first.starts_with(b"-ERR") {
        assert!(lines.iter().all(|l| l.starts_with(b"-ERR")), "{text:?}");
    }
}

/// Runs one input; panics on a broken invariant.
pub fn run(data: &[u8]) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut peer = Peer { input: data };
        let mut buf = LineBuffer::default();
        for stls in [false, true] {
            let mut session = if stls {
                Session::with_stls()
            } else {
                Session::new()
            };
            peer.input = data;
            buf.take_rest();
            for _ in 0..64 {
                let line = match buf.read_line(&mut peer, MAX_LINE).await {
                    Ok(l) => l,
                    // The proxy answers an over-long line with -ERR and closes.
                    Err(FrameError::TooLong { .. }) | Err(_) => break,
                };
                assert!(line.len() <= MAX_LINE && line.ends_with(b"\n"));
                match session.on_line(&line) {
                    Step::Reply(r) => check_reply(&r),
                    Step::Continue(r) => assert_eq!(r, b"+ \r\n"),
                    Step::Close(r) => {
                        check_reply(&r);
                        break;
                    }
                    Step::StartTls(r) => {
                        assert!(stls && r.starts_with(b"+OK"));
                        session.tls_started();
                    }
                    Step::Login(req) => {
                        assert!(!req.user.is_empty());
                        // The proxy answers a refused login with -ERR and goes on.
                        session.login_failed();
                    }
                }
            }
        }
    });
}
