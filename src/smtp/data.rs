//! The DATA phase reader (no I/O): finds the end of the message, removes the
//! client's dot-stuffing, normalises every line end to CRLF and enforces the
//! size limit. It is a streaming transform: each call appends the cleaned
//! bytes of its input to the caller's buffer (which the caller writes to the
//! spool and empties), so it holds no message bytes itself; its output for
//! a stream is the same whatever the chunking.
//!
//! SMTP smuggling defence: only CRLF "." CRLF ends the message (or "." CRLF
//! as the very first line). A "." line that starts or ends with a bare LF or
//! bare CR (`\n.\n`, `\r\n.\r`, `\n.\r\n`) is content: it is stored as a
//! "." line, which the upstream client dot-stuffs on send, so it round-trips.
//!
//! LF-only clients (old devices whose every command line so far ended in a
//! bare LF, see [`EndOfData`]): for them a "." line between two line ends
//! of either kind (`\n.\n`, `\r\n.\n`, `\n.\r\n`) also ends the message.
//! Such a client cannot be forwarding someone else's content with a
//! different line-end convention, so this reopens no smuggling hole; a
//! session that has sent one CRLF line keeps the strict rule.
//!
//! smtp-proto's `DataReceiver` was not used: it keeps bare LF and bare CR
//! as they are and has no size limit.

/// Which "." lines end the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndOfData {
    /// Only CRLF "." CRLF (every client that has sent a CRLF line).
    CrlfOnly,
    /// Also a "." line next to bare LFs (a client that only ever sent bare LF).
    BareLfAllowed,
}

/// Where the reader is inside the current line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a line; `crlf` says whether the line before ended
    /// in a way that may precede the final "." (a real CRLF, the first line,
    /// or a bare LF under [`EndOfData::BareLfAllowed`]).
    LineStart { crlf: bool },
    /// A leading "." was seen (not yet stored).
    Dot { crlf: bool },
    /// "." then CR at the start of a line.
    DotCr { crlf: bool },
    /// Inside a line.
    Mid,
    /// A CR inside a line, not yet known to be followed by LF.
    Cr,
}

/// What the body looked like once the end was found.
#[derive(Debug, PartialEq, Eq)]
pub enum DataOutcome {
    /// The message is complete: everything appended to the output buffers,
    /// in order, is it (CRLF line ends, dot-stuffing removed).
    Complete,
    /// The message was over the limit; the output stopped there (what was
    /// already appended must be discarded) and the rest was read and dropped.
    TooBig,
    /// The message contained a NUL byte (RFC 5321 2.3.8 forbids it); the
    /// output stopped at it and must be discarded, the rest was read and dropped.
    NulByte,
}

pub struct DataReader {
    state: State,
    /// A bare LF counts as a line end for the terminator.
    bare_lf_ends: bool,
    /// Message bytes produced so far (all of them, written or not).
    size: u64,
    max: u64,
    too_big: bool,
    /// Did the body contain a NUL byte?
    nul: bool,
    /// Did the body contain bytes above 0x7f (8-bit content)?
    eight_bit: bool,
}

impl DataReader {
    pub fn new(max_size: u64, end: EndOfData) -> Self {
        DataReader {
            state: State::LineStart { crlf: true },
            bare_lf_ends: end == EndOfData::BareLfAllowed,
            size: 0,
            max: max_size,
            too_big: false,
            nul: false,
            eight_bit: false,
        }
    }

    pub fn eight_bit(&self) -> bool {
        self.eight_bit
    }

    /// Message bytes produced so far (the size the limit is checked against).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Feeds `input`, appending the message bytes it holds to `out` (at most
    /// `2 * input.len() + 3` bytes: a bare line end grows to CRLF); returns
    /// how many bytes were used and, once the final "." line was seen, the
    /// outcome. Bytes after the end are not consumed (they are pipelined
    /// commands).
    pub fn ingest(&mut self, input: &[u8], out: &mut Vec<u8>) -> (usize, Option<DataOutcome>) {
        let mut i = 0;
        while i < input.len() {
            if self.state == State::Mid {
                // Fast path: copy up to the next CR or LF in one go.
                let rest = &input[i..];
                let run = rest
                    .iter()
                    .position(|&b| b == b'\r' || b == b'\n')
                    .unwrap_or(rest.len());
                if run > 0 {
                    self.push(out, &rest[..run]);
                    i += run;
                    continue;
                }
            }
            let b = input[i];
            i += 1;
            if self.step(b, out) {
                let outcome = if self.too_big {
                    DataOutcome::TooBig
                } else if self.nul {
                    DataOutcome::NulByte
                } else {
                    DataOutcome::Complete
                };
                return (i, Some(outcome));
            }
        }
        (i, None)
    }

    /// One byte; true at the end of the message.
    fn step(&mut self, b: u8, out: &mut Vec<u8>) -> bool {
        match self.state {
            State::LineStart { crlf } => {
                if b == b'.' {
                    self.state = State::Dot { crlf };
                } else {
                    self.mid(b, out);
                }
            }
            State::Dot { crlf } => match b {
                b'\r' => self.state = State::DotCr { crlf },
                b'\n' => {
                    if crlf && self.bare_lf_ends {
                        return true;
                    }
                    // "." ended by a bare LF: content, kept as a "." line.
                    self.push(out, b".\r\n");
                    self.state = State::LineStart {
                        crlf: self.bare_lf_ends,
                    };
                }
                _ => {
                    // A stuffed leading dot: drop it, keep the rest of the line.
                    self.state = State::Mid;
                    self.mid(b, out);
                }
            },
            State::DotCr { crlf } => {
                if b == b'\n' {
                    if crlf {
                        return true;
                    }
                    // "\n.\r\n": a "." line after a bare LF is content
                    // (`crlf` is already true here for an LF-only client).
                    self.push(out, b".\r\n");
                    self.state = State::LineStart { crlf: true };
                } else {
                    // ".\r" then something else: a "." line ended by a bare CR.
                    self.push(out, b".\r\n");
                    self.state = State::LineStart { crlf: false };
                    return self.step(b, out);
                }
            }
            State::Mid => self.mid(b, out),
            State::Cr => match b {
                b'\n' => {
                    self.push(out, b"\r\n");
                    self.state = State::LineStart { crlf: true };
                }
                b'\r' => {
                    // The first CR was bare; this one may start a CRLF.
                    self.push(out, b"\r\n");
                    self.state = State::Cr;
                }
                _ => {
                    self.push(out, b"\r\n");
                    self.state = State::LineStart { crlf: false };
                    return self.step(b, out);
                }
            },
        }
        false
    }

    /// A byte inside a line (or the first byte of a line that is not ".").
    fn mid(&mut self, b: u8, out: &mut Vec<u8>) {
        match b {
            b'\r' => self.state = State::Cr,
            b'\n' => {
                // Bare LF: normalised to CRLF, but it is not a real line end
                // for the terminator (unless the client is LF-only).
                self.push(out, b"\r\n");
                self.state = State::LineStart {
                    crlf: self.bare_lf_ends,
                };
            }
            _ => {
                self.push(out, &[b]);
                self.state = State::Mid;
            }
        }
    }

    fn push(&mut self, out: &mut Vec<u8>, bytes: &[u8]) {
        if !self.eight_bit && bytes.iter().any(|b| *b >= 0x80) {
            self.eight_bit = true;
        }
        if !self.nul && bytes.contains(&0) {
            self.nul = true;
        }
        if self.too_big {
            return;
        }
        self.size += bytes.len() as u64;
        if self.size > self.max {
            self.too_big = true;
            return;
        }
        if !self.nul {
            out.extend_from_slice(bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An outcome with the bytes the reader appended (as the old API returned them).
    #[derive(Debug, PartialEq, Eq)]
    enum Got {
        Complete(Vec<u8>),
        TooBig,
        NulByte,
    }

    fn got(o: DataOutcome, out: Vec<u8>) -> Got {
        match o {
            DataOutcome::Complete => Got::Complete(out),
            DataOutcome::TooBig => Got::TooBig,
            DataOutcome::NulByte => Got::NulByte,
        }
    }

    /// Feeds `chunks` one by one; returns the outcome and the unconsumed tail.
    fn run(chunks: &[&[u8]], max: u64) -> (Option<Got>, Vec<u8>) {
        run_mode(chunks, max, EndOfData::CrlfOnly)
    }

    fn run_mode(chunks: &[&[u8]], max: u64, end: EndOfData) -> (Option<Got>, Vec<u8>) {
        let mut r = DataReader::new(max, end);
        let mut out = Vec::new();
        for (n, c) in chunks.iter().enumerate() {
            let (used, outcome) = r.ingest(c, &mut out);
            if let Some(o) = outcome {
                let o = got(o, std::mem::take(&mut out));
                let mut tail = c[used..].to_vec();
                for rest in &chunks[n + 1..] {
                    tail.extend_from_slice(rest);
                }
                return (Some(o), tail);
            }
            assert_eq!(used, c.len());
        }
        (None, Vec::new())
    }

    fn complete(input: &[u8]) -> (Vec<u8>, Vec<u8>) {
        match run(&[input], 1 << 20) {
            (Some(Got::Complete(m)), tail) => (m, tail),
            other => panic!("not complete: {other:?}"),
        }
    }

    #[test]
    fn plain_message_and_pipelined_tail() {
        let (m, tail) = complete(b"Subject: x\r\n\r\nhello\r\n.\r\nQUIT\r\n");
        assert_eq!(m, b"Subject: x\r\n\r\nhello\r\n");
        assert_eq!(tail, b"QUIT\r\n");
    }

    #[test]
    fn empty_message() {
        let (m, tail) = complete(b".\r\n");
        assert!(m.is_empty());
        assert!(tail.is_empty());
    }

    #[test]
    fn dot_unstuffing_and_dot_line() {
        let (m, _) = complete(b"a\r\n..\r\n..b\r\n.c\r\n\r\n.\r\n");
        assert_eq!(m, b"a\r\n.\r\n.b\r\nc\r\n\r\n");
    }

    #[test]
    fn bare_lf_and_cr_normalised() {
        let (m, _) = complete(b"a\nb\rc\r\r\nd\r\n.\r\n");
        assert_eq!(m, b"a\r\nb\r\nc\r\n\r\nd\r\n");
    }

    #[test]
    fn bare_lf_only_message_needs_crlf_dot_crlf() {
        // A client using bare LF throughout never ends with "\n.\n".
        let (o, _) = run(&[b"a\nb\n.\n"], 1 << 20);
        assert!(o.is_none());
        let (m, _) = complete(b"a\nb\n.\nc\r\n.\r\n");
        assert_eq!(m, b"a\r\nb\r\n.\r\nc\r\n");
    }

    #[test]
    fn smuggling_payloads_are_content() {
        let smuggled: &[&[u8]] = &[b"\n.\n", b"\r\n.\r", b"\n.\r\n", b"\r.\r\n"];
        for s in smuggled {
            let mut input = b"Subject: s\r\n\r\nbody".to_vec();
            input.extend_from_slice(s);
            input.extend_from_slice(b"MAIL FROM:<evil@x>\r\nRCPT TO:<v@y>\r\nDATA\r\n\r\n.\r\n");
            let (m, tail) = complete(&input);
            assert!(tail.is_empty(), "{s:?}");
            let text = String::from_utf8(m.clone()).unwrap();
            assert!(
                text.contains("\r\n.\r\nMAIL FROM:<evil@x>\r\n"),
                "{s:?}: {text:?}"
            );
            // No bare CR or LF anywhere.
            for (i, b) in m.iter().enumerate() {
                if *b == b'\n' {
                    assert_eq!(m[i - 1], b'\r', "{s:?}");
                }
                if *b == b'\r' {
                    assert_eq!(m[i + 1], b'\n', "{s:?}");
                }
            }
        }
    }

    fn complete_lf(input: &[u8]) -> (Vec<u8>, Vec<u8>) {
        match run_mode(&[input], 1 << 20, EndOfData::BareLfAllowed) {
            (Some(Got::Complete(m)), tail) => (m, tail),
            other => panic!("not complete: {other:?}"),
        }
    }

    #[test]
    fn lf_only_client_ends_with_lf_dot_lf() {
        let (m, tail) = complete_lf(b"Subject: x\n\nhello\n..dot\n.\nQUIT\n");
        assert_eq!(m, b"Subject: x\r\n\r\nhello\r\n.dot\r\n");
        assert_eq!(tail, b"QUIT\n");
        // The first line, mixed line ends, and the strict form still work.
        assert_eq!(complete_lf(b".\n").0, b"");
        for input in [&b"a\r\n.\n"[..], b"a\n.\r\n", b"a\r\n.\r\n"] {
            assert_eq!(complete_lf(input).0, b"a\r\n", "{input:?}");
        }
        // Byte by byte gives the same.
        let input = b"a\nb\n.\nNOOP\n";
        let chunks: Vec<&[u8]> = input.chunks(1).collect();
        let (o, tail) = run_mode(&chunks, 1 << 20, EndOfData::BareLfAllowed);
        assert_eq!(o, Some(Got::Complete(b"a\r\nb\r\n".to_vec())));
        assert_eq!(tail, b"NOOP\n");
    }

    #[test]
    fn lf_only_client_bare_cr_is_still_content() {
        // A bare CR is no line end for anyone: "\r.\n" and "\n.\r" stay content.
        let (m, _) = complete_lf(b"a\r.\nb\n.\rc\n.\n");
        assert_eq!(m, b"a\r\n.\r\nb\r\n.\r\nc\r\n");
    }

    #[test]
    fn crlf_session_smuggling_attempts_stay_content() {
        // What an LF-only client may use to end its message is content from a
        // session in strict mode, whatever follows it.
        for s in [&b"\n.\n"[..], b"\r\n.\n", b"\n.\r\n"] {
            let mut input = b"Subject: s\r\n\r\nbody".to_vec();
            input.extend_from_slice(s);
            input.extend_from_slice(b"MAIL FROM:<evil@x>\r\n");
            let (o, _) = run(&[&input], 1 << 20);
            assert!(o.is_none(), "{s:?} ended the message");
            input.extend_from_slice(b"\r\n.\r\n");
            let (m, tail) = complete(&input);
            assert!(tail.is_empty());
            assert!(
                String::from_utf8_lossy(&m).contains("\r\n.\r\nMAIL FROM:<evil@x>\r\n"),
                "{s:?}"
            );
        }
    }

    #[test]
    fn nul_byte_is_refused_at_the_end() {
        let (o, tail) = run(&[b"Subject: x\r\n\r\na\0b\r\n", b".\r\nQUIT\r\n"], 1 << 20);
        assert_eq!(o, Some(Got::NulByte));
        assert_eq!(tail, b"QUIT\r\n");
        // Over the size limit wins: the size is the client's first problem.
        let (o, _) = run(&[b"\0\x00456789abcdef\r\n.\r\n"], 10);
        assert_eq!(o, Some(Got::TooBig));
    }

    #[test]
    fn end_split_across_chunks() {
        let chunks: &[&[u8]] = &[b"abc\r", b"\n", b".", b"\r", b"\nNOOP\r\n"];
        let (o, tail) = run(chunks, 1 << 20);
        assert_eq!(o, Some(Got::Complete(b"abc\r\n".to_vec())));
        assert_eq!(tail, b"NOOP\r\n");
        // Byte by byte.
        let input = b"x\r\n..y\n.\r\n\r\n.\r\n";
        let chunks: Vec<&[u8]> = input.chunks(1).collect();
        let (o, _) = run(&chunks, 1 << 20);
        assert_eq!(o, Some(Got::Complete(b"x\r\n.y\r\n.\r\n\r\n".to_vec())));
    }

    #[test]
    fn too_big_is_read_to_the_end_and_discarded() {
        let mut r = DataReader::new(10, EndOfData::CrlfOnly);
        let mut out = Vec::new();
        let (used, o) = r.ingest(b"0123456789abcdef\r\nmore\r\n", &mut out);
        assert!(o.is_none());
        assert_eq!(used, 24);
        assert!(out.len() <= 10);
        let (used, o) = r.ingest(b".\r\nQUIT\r\n", &mut out);
        assert_eq!((used, o), (3, Some(DataOutcome::TooBig)));
        assert!(out.len() <= 10, "nothing appended past the limit");
        // Exactly at the limit is fine.
        let (o, _) = run(&[b"12345678\r\n.\r\n"], 10);
        assert_eq!(o, Some(Got::Complete(b"12345678\r\n".to_vec())));
    }

    #[test]
    fn eight_bit_detected_and_kept() {
        let mut r = DataReader::new(100, EndOfData::CrlfOnly);
        let mut out = Vec::new();
        let (_, o) = r.ingest("Subject: é\r\n\r\n\u{1F600}\r\n.\r\n".as_bytes(), &mut out);
        assert!(r.eight_bit());
        assert_eq!(o, Some(DataOutcome::Complete));
        assert_eq!(out, "Subject: é\r\n\r\n\u{1F600}\r\n".as_bytes());
    }

    #[test]
    fn random_chunking_gives_the_same_result() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let alphabet = b"\r\n.a\xff";
        for _ in 0..5_000 {
            let mut input: Vec<u8> = (0..rng.gen_range(0..60))
                .map(|_| alphabet[rng.gen_range(0..alphabet.len())])
                .collect();
            input.extend_from_slice(b"\r\n.\r\nTAIL");
            let max = rng.gen_range(10..80);
            let whole = run(&[&input], max);
            let mut chunks = Vec::new();
            let mut rest = &input[..];
            while !rest.is_empty() {
                let n = rng.gen_range(1..=rest.len().min(7));
                chunks.push(&rest[..n]);
                rest = &rest[n..];
            }
            assert_eq!(run(&chunks, max), whole, "{input:?}");
            if let (Some(Got::Complete(m)), _) = &whole {
                assert!(m.len() as u64 <= max);
                for (i, b) in m.iter().enumerate() {
                    assert!(*b != b'\n' || (i > 0 && m[i - 1] == b'\r'), "{input:?}");
                    assert!(*b != b'\r' || m.get(i + 1) == Some(&b'\n'), "{input:?}");
                }
            }
        }
    }

    /// Every split of `input` into two and three chunks gives the whole-input result.
    fn same_at_every_split(input: &[u8], max: u64, end: EndOfData) {
        let whole = run_mode(&[input], max, end);
        for i in 0..=input.len() {
            let two = run_mode(&[&input[..i], &input[i..]], max, end);
            assert_eq!(two, whole, "split at {i}: {input:?}");
            for j in i..=input.len() {
                let three = run_mode(&[&input[..i], &input[i..j], &input[j..]], max, end);
                assert_eq!(three, whole, "split at {i}, {j}: {input:?}");
            }
        }
    }

    #[test]
    fn terminator_split_at_every_position() {
        // The final "\r\n.\r\n" (and the smuggling look-alikes before it)
        // cut at every byte, in both end-of-data modes.
        let inputs: &[&[u8]] = &[
            b"Subject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n",
            b".\r\nNOOP\r\n",
            b"a\n.\nb\r\n.\rc\r\n.\r\nRSET\r\n",
            b"a\r.\r\nb\n.\r\n\r\n.\r\n",
        ];
        for input in inputs {
            same_at_every_split(input, 1 << 20, EndOfData::CrlfOnly);
            same_at_every_split(input, 1 << 20, EndOfData::BareLfAllowed);
        }
        let (o, tail) = run(
            &[b"Subject: x\r\n\r\nbody\r", b"\n.\r", b"\nQUIT\r\n"],
            1 << 20,
        );
        assert_eq!(
            o,
            Some(Got::Complete(b"Subject: x\r\n\r\nbody\r\n".to_vec()))
        );
        assert_eq!(tail, b"QUIT\r\n");
    }

    #[test]
    fn dot_stuffing_split_at_every_position() {
        let input = b"..a\r\n...\r\n..\r\nx\r\n.b\r\n..\r\n.\r\n";
        let (o, _) = run(&[input], 1 << 20);
        assert_eq!(
            o,
            Some(Got::Complete(b".a\r\n..\r\n.\r\nx\r\nb\r\n.\r\n".to_vec()))
        );
        same_at_every_split(input, 1 << 20, EndOfData::CrlfOnly);
        // And the size limit lands on the same byte whatever the split.
        same_at_every_split(input, 12, EndOfData::CrlfOnly);
    }

    #[test]
    fn output_bounded_by_input() {
        // What one call appends is bounded by its input, so a caller that
        // feeds slices of n bytes never holds more than 2n + 3 of them.
        let mut r = DataReader::new(1 << 20, EndOfData::CrlfOnly);
        let input = b"\n\n\n\r\r\r.\n.\r.\r\nxyz";
        for n in 1..input.len() {
            for c in input.chunks(n) {
                let mut out = Vec::new();
                let (used, _) = r.ingest(c, &mut out);
                assert!(out.len() <= 2 * used + 3, "{c:?}: {out:?}");
            }
        }
    }
}
