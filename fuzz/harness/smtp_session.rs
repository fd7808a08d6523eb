//! Fuzzes the inbound SMTP session as the connection loop drives it: command
//! lines (with the line limit) into the state machine, and after 354 the
//! DATA reader, then back to commands. Checks every reply is well formed and
//! that the DATA reader gives the same result however the input is chunked.

use mailbridge::smtp::connection::MAX_LINE;
use mailbridge::smtp::data::{DataOutcome, DataReader, EndOfData};
use mailbridge::smtp::session::{Session, SessionConfig, Step};

fn config(flags: u8) -> SessionConfig {
    SessionConfig {
        hostname: "fuzz.test".into(),
        max_message_size: 4096,
        max_client_recipients: 20,
        require_auth: flags & 1 != 0,
        auth_offered: flags & 2 != 0,
        default_account: (flags & 4 != 0).then(|| "acct".to_string()),
        starttls_offered: flags & 8 != 0,
        allow_lf_only_clients: flags & 16 != 0,
    }
}

/// One or more replies (a Close may carry the reply to the command and the
/// 421): lines "NNN-text" continue a reply with the same code, "NNN text"
/// ends it; codes are 2xx-5xx; no CR or LF inside a line.
fn check_reply(r: &str) {
    assert!(r.ends_with("\r\n"), "{r:?}");
    let mut open: Option<u16> = None;
    for l in r[..r.len() - 2].split("\r\n") {
        assert!(!l.contains('\r') && !l.contains('\n'), "{r:?}");
        let code: u16 = l.get(..3).and_then(|c| c.parse().ok()).expect("code");
        assert!((200..600).contains(&code), "{r:?}");
        if let Some(c) = open {
            assert_eq!(c, code, "continuation with another code: {r:?}");
        }
        open = match l.as_bytes().get(3) {
            Some(b'-') => Some(code),
            Some(b' ') | None => None,
            _ => panic!("bad separator: {r:?}"),
        };
    }
    assert!(open.is_none(), "reply ends with a continuation line: {r:?}");
}

/// Bytes used, the outcome, and every byte the reader appended.
fn read_data(input: &[u8], chunk: usize, end: EndOfData) -> (usize, Option<DataOutcome>, Vec<u8>) {
    let mut r = DataReader::new(4096, end);
    let mut used = 0;
    let mut msg = Vec::new();
    while used < input.len() {
        let end = used.saturating_add(chunk).min(input.len());
        let before = msg.len();
        let (n, out) = r.ingest(&input[used..end], &mut msg);
        assert!(n <= end - used);
        assert!(msg.len() - before <= 2 * n + 3, "output bounded by input");
        used += n;
        if out.is_some() {
            return (used, out, msg);
        }
        // Without an end the reader keeps everything it was given.
        assert_eq!(used, end, "bytes left unconsumed without an outcome");
    }
    (used, None, msg)
}

/// Runs one input; panics on a broken invariant.
pub fn run(data: &[u8]) {
    let Some((&flags, mut input)) = data.split_first() else {
        return;
    };
    let mut s = Session::new(config(flags));
    let mut authed = false;
    while !input.is_empty() {
        let Some(pos) = input.iter().position(|b| *b == b'\n') else {
            return; // incomplete line: the connection would read more
        };
        let (line, rest) = input.split_at(pos + 1);
        input = rest;
        let step = if line.len() > MAX_LINE {
            s.line_too_long()
        } else {
            s.handle_line(line)
        };
        let step = match step {
            Step::Authenticate { user, .. } => {
                authed = !authed;
                if authed {
                    s.auth_succeeded(user, "acct".into())
                } else {
                    s.auth_failed()
                }
            }
            other => other,
        };
        match step {
            Step::Reply(r) => check_reply(&r),
            Step::Close(r) => {
                check_reply(&r);
                return;
            }
            Step::StartTls(r) => {
                check_reply(&r);
                s.tls_started();
            }
            Step::Authenticate { .. } => panic!("authenticate twice"),
            Step::Data(r) => {
                assert!(r.starts_with("354 "), "{r:?}");
                let end = s.end_of_data();
                let (used, out, msg) = read_data(input, usize::MAX, end);
                // Chunking must not change where the message ends or what it is.
                let (used7, out7, msg7) = read_data(input, 7, end);
                assert_eq!(used, used7);
                assert_eq!(out, out7);
                assert_eq!(msg, msg7);
                match out {
                    None => return,
                    Some(DataOutcome::Complete) => {
                        assert!(msg.len() <= 4096 + 2);
                        // Line ends are CRLF only.
                        for (i, b) in msg.iter().enumerate() {
                            if *b == b'\n' {
                                assert!(i > 0 && msg[i - 1] == b'\r');
                            }
                            if *b == b'\r' {
                                assert_eq!(msg.get(i + 1), Some(&b'\n'));
                            }
                        }
                        assert!(msg.is_empty() || msg.ends_with(b"\r\n"));
                        assert!(s.take_transaction().is_some());
                    }
                    Some(DataOutcome::TooBig | DataOutcome::NulByte) => {
                        assert!(s.take_transaction().is_some());
                    }
                }
                input = &input[used..];
            }
        }
    }
}
