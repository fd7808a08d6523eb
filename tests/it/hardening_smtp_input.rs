//! Table-driven malformed SMTP input against the real daemon: each case runs
//! on a fresh connection from a given state, sends raw bytes, and must get
//! exactly the listed replies; afterwards a good client is still served.
//! (Cases already in smtp_limits.rs / smtp_inbound.rs are not repeated.)

use crate::support::smtp::*;

/// Where a case starts.
#[derive(Clone, Copy, Debug)]
enum At {
    Greeted,
    Ehlo,
    Mail,
    Rcpt,
    Data,
}

/// A reply: exact text, or with `*` at the end, an exact prefix.
type Expect = &'static str;

const QUEUED: Expect = "250 2.0.0 Ok: queued as *";
const OK: Expect = "250 2.0.0 Ok\r\n";
const CHARS: Expect = "500 5.5.2 Invalid characters in command (NUL or invalid UTF-8)\r\n";
const LONG: Expect = "500 5.5.2 Line too long\r\n";
const UNKNOWN: Expect = "502 5.5.2 Command not recognized\r\n";
const HELO_CTRL: Expect = "501 5.5.2 Control characters are not allowed in the HELO/EHLO name\r\n";
const FROM_CTRL: Expect = "553 5.1.7 Control characters are not allowed in the sender address\r\n";
const RCPT_CTRL: Expect =
    "553 5.1.3 Control characters are not allowed in the recipient address\r\n";
const NUL: Expect =
    "554 5.6.0 Message contains NUL bytes, which SMTP does not allow; not accepted\r\n";

struct Case {
    name: &'static str,
    at: At,
    input: Vec<u8>,
    replies: Vec<Expect>,
}

fn case(name: &'static str, at: At, input: impl AsRef<[u8]>, replies: &[Expect]) -> Case {
    Case {
        name,
        at,
        input: input.as_ref().to_vec(),
        replies: replies.to_vec(),
    }
}

fn cases() -> Vec<Case> {
    use At::*;
    let line_of = |n: usize| {
        // "NOOP " + filler + CRLF, exactly n bytes.
        let mut l = b"NOOP ".to_vec();
        l.resize(n - 2, b'a');
        l.extend_from_slice(b"\r\n");
        l
    };
    let body = |tail: &[u8]| {
        let mut b = b"Subject: s\r\n\r\nfirst".to_vec();
        b.extend_from_slice(tail);
        b.extend_from_slice(b"MAIL FROM:<evil@example.com>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\nevil\r\n.\r\nNOOP\r\n");
        b
    };
    vec![
        // --- line length and framing
        case("line at the limit", Ehlo, line_of(4096), &[OK]),
        case("line one over the limit", Ehlo, line_of(4097), &[LONG]),
        case(
            "long line then a good command in one write",
            Ehlo,
            [line_of(9000), b"NOOP\r\n".to_vec()].concat(),
            &[LONG, OK],
        ),
        case("bare LF ends a command", Ehlo, "NOOP\n", &[OK]),
        case(
            "bare CR inside a command",
            Ehlo,
            "NOOP\rRSET\r\n",
            &[UNKNOWN],
        ),
        case("empty line", Ehlo, "\r\n", &[UNKNOWN]),
        case("only spaces", Ehlo, "    \r\n", &[UNKNOWN]),
        case("CR CR LF", Ehlo, "NOOP\r\r\n", &[OK]),
        // --- NUL, control bytes, invalid UTF-8
        case("NUL alone", Ehlo, "\0\r\n", &[CHARS]),
        case("NUL inside the verb", Ehlo, "NO\0OP\r\n", &[CHARS]),
        case(
            "NUL in the sender",
            Ehlo,
            "MAIL FROM:<a\0b@example.com>\r\n",
            &[CHARS],
        ),
        case(
            "NUL in the recipient",
            Mail,
            "RCPT TO:<a\0@example.com>\r\n",
            &[CHARS],
        ),
        case(
            "invalid UTF-8 in EHLO",
            Greeted,
            b"EHLO \xc3\x28\r\n",
            &[CHARS],
        ),
        case(
            "overlong UTF-8 slash",
            Ehlo,
            b"MAIL FROM:<\xc0\xaf@example.com>\r\n",
            &[CHARS],
        ),
        case(
            "lone continuation byte",
            Mail,
            b"RCPT TO:<\x80@example.com>\r\n",
            &[CHARS],
        ),
        case(
            "UTF-16 surrogate encoded",
            Mail,
            b"RCPT TO:<\xed\xa0\x80@example.com>\r\n",
            &[CHARS],
        ),
        case(
            "high bytes in the verb",
            Ehlo,
            b"\xff\xfe\xfd\r\n",
            &[CHARS],
        ),
        case("escape sequence", Ehlo, "\x1b[2J\r\n", &[UNKNOWN]),
        // --- HELO/EHLO
        case(
            "EHLO without a name",
            Greeted,
            "EHLO\r\n",
            &["501 5.5.4 Syntax: EHLO domain\r\n"],
        ),
        case("TAB between verb and argument", Ehlo, "NOOP\tx\r\n", &[OK]),
        // --- control characters in HELO names and addresses (as Postfix refuses non-printables)
        case(
            "ESC sequence in the EHLO name",
            Greeted,
            "EHLO \x1b[2Jhost\r\n",
            &[HELO_CTRL],
        ),
        case(
            "BEL in the HELO name",
            Greeted,
            "HELO a\x07b\r\n",
            &[HELO_CTRL],
        ),
        case(
            "DEL in the EHLO name",
            Greeted,
            "EHLO host\x7f\r\n",
            &[HELO_CTRL],
        ),
        case(
            "C1 CSI (U+009B) in the EHLO name",
            Greeted,
            "EHLO a\u{9b}31m\r\n",
            &[HELO_CTRL],
        ),
        case(
            "bare CR inside the EHLO name",
            Greeted,
            "EHLO a\rb\r\n",
            &[HELO_CTRL],
        ),
        case(
            "ESC after the EHLO name",
            Greeted,
            "EHLO host \x1b]0;x\x07\r\n",
            &[HELO_CTRL],
        ),
        case("NUL in the EHLO name", Greeted, "EHLO a\0b\r\n", &[CHARS]),
        case(
            "ESC sequence in the sender",
            Ehlo,
            "MAIL FROM:<a\x1b[31m@example.com>\r\n",
            &[FROM_CTRL],
        ),
        case(
            "BEL in a quoted sender",
            Ehlo,
            "MAIL FROM:<\"a\x07\"@example.com>\r\n",
            &[FROM_CTRL],
        ),
        case(
            "DEL in the sender",
            Ehlo,
            "MAIL FROM:<a\x7f@example.com>\r\n",
            &[FROM_CTRL],
        ),
        case(
            "C1 NEL (U+0085) in the sender domain",
            Ehlo,
            "MAIL FROM:<a@exa\u{85}mple.com>\r\n",
            &[FROM_CTRL],
        ),
        case(
            "ESC in a quoted recipient",
            Mail,
            "RCPT TO:<\"\x1b[2J\"@example.com>\r\n",
            &[RCPT_CTRL],
        ),
        case(
            "C1 CSI (U+009B) in the recipient",
            Mail,
            "RCPT TO:<a\u{9b}2J@example.com>\r\n",
            &[RCPT_CTRL],
        ),
        case(
            "bare CR in the recipient",
            Mail,
            "RCPT TO:<a\rb@example.com>\r\n",
            &[RCPT_CTRL],
        ),
        case(
            "TAB in a quoted recipient",
            Mail,
            "RCPT TO:<\"a\tb\"@example.com>\r\n",
            &[RCPT_CTRL],
        ),
        case(
            "BS in a source route",
            Mail,
            "RCPT TO:<@relay\x08.example:b@example.com>\r\n",
            &[RCPT_CTRL],
        ),
        case(
            "quoted local part is accepted",
            Mail,
            "RCPT TO:<\"a b\"@example.com>\r\n",
            &["250 2.1.5 Ok\r\n"],
        ),
        // --- MAIL FROM and its parameters
        case(
            "SIZE = u64::MAX + 1",
            Ehlo,
            "MAIL FROM:<a@example.com> SIZE=18446744073709551616\r\n",
            &["501 5.5.4 Invalid parameter SIZE\r\n"],
        ),
        case(
            "SIZE negative",
            Ehlo,
            "MAIL FROM:<a@example.com> SIZE=-1\r\n",
            &["501 5.5.4 Invalid parameter SIZE\r\n"],
        ),
        case(
            "SIZE not a number",
            Ehlo,
            "MAIL FROM:<a@example.com> SIZE=abc\r\n",
            &["501 5.5.4 Invalid parameter SIZE\r\n"],
        ),
        case(
            "SIZE empty",
            Ehlo,
            "MAIL FROM:<a@example.com> SIZE=\r\n",
            &["501 5.5.4 Invalid parameter SIZE\r\n"],
        ),
        case(
            "SIZE zero is fine",
            Ehlo,
            "MAIL FROM:<a@example.com> SIZE=0\r\n",
            &["250 2.1.0 Ok\r\n"],
        ),
        case(
            "unterminated angle bracket",
            Ehlo,
            "MAIL FROM:<a@example.com\r\n",
            &["501 5.5.4 Syntax: MAIL FROM:<reverse-path> [parameters]\r\n"],
        ),
        case(
            "two senders",
            Ehlo,
            "MAIL FROM:<a@example.com> <b@example.com>\r\n",
            &["501 5.5.4 Syntax: MAIL FROM:<reverse-path> [parameters]\r\n"],
        ),
        // Accepted like Postfix does; without BDAT the body still ends with CRLF.CRLF.
        case(
            "BODY=BINARYMIME is tolerated",
            Ehlo,
            "MAIL FROM:<a@example.com> BODY=BINARYMIME\r\n",
            &["250 2.1.0 Ok\r\n"],
        ),
        case(
            "very long local part",
            Ehlo,
            format!("MAIL FROM:<{}@example.com>\r\n", "a".repeat(3000)),
            &["501 5.1.7 Bad sender address syntax\r\n"],
        ),
        case(
            "MAIL without FROM:",
            Ehlo,
            "MAIL <a@example.com>\r\n",
            &["501 5.5.4 Syntax: MAIL FROM:<reverse-path> [parameters]\r\n"],
        ),
        // --- RCPT
        case(
            "null recipient",
            Mail,
            "RCPT TO:<>\r\n",
            &["501 5.1.3 Bad recipient address syntax\r\n"],
        ),
        // DSN is not offered; its parameters are ignored (upstream decides DSNs).
        case(
            "DSN NOTIFY is ignored",
            Mail,
            "RCPT TO:<b@example.com> NOTIFY=NEVER\r\n",
            &["250 2.1.5 Ok\r\n"],
        ),
        case(
            "source route",
            Mail,
            "RCPT TO:<@evil.example:b@example.com>\r\n",
            &["250 2.1.5 Ok\r\n"],
        ),
        case(
            "percent hack relay attempt",
            Mail,
            "RCPT TO:<b%evil.example@example.com>\r\n",
            &["250 2.1.5 Ok\r\n"],
        ),
        // --- DATA and what comes after it
        case(
            "DATA with an argument starts DATA",
            Rcpt,
            "DATA now\r\n.\r\n",
            &["354 End data with <CR><LF>.<CR><LF>\r\n", QUEUED],
        ),
        case(
            "garbage pipelined after DATA is content",
            Rcpt,
            b"DATA\r\nGARBAGE\r\n\xff\r\n.\r\nNOOP\r\n",
            &["354 End data with <CR><LF>.<CR><LF>\r\n", QUEUED, OK],
        ),
        case(
            "garbage with a NUL pipelined after DATA is refused, the session goes on",
            Rcpt,
            b"DATA\r\nGARBAGE\r\n\0\xff\r\n.\r\nNOOP\r\n",
            &["354 End data with <CR><LF>.<CR><LF>\r\n", NUL, OK],
        ),
        case(
            "garbage after the end of data is a command",
            Data,
            "x\r\n.\r\nXYZZY\r\n",
            &[QUEUED, UNKNOWN],
        ),
        case("empty message", Data, ".\r\n", &[QUEUED]),
        // RFC 5321 2.3.8: no NUL in mail; refused before 250, nothing stored.
        case(
            "NUL bytes in the body",
            Data,
            "a\0b\r\n.\r\nNOOP\r\n",
            &[NUL, OK],
        ),
        case(
            "NUL byte in a header",
            Data,
            "Subject: a\0\r\n\r\nb\r\n.\r\n",
            &[NUL],
        ),
        case(
            "10 kB body line",
            Data,
            [vec![b'x'; 10_000], b"\r\n.\r\n".to_vec()].concat(),
            &[QUEUED],
        ),
        // --- smuggling: only CRLF.CRLF ends a message, the smuggled MAIL stays content
        case("smuggle LF.LF", Data, body(b"\n.\n"), &[QUEUED, OK]),
        case("smuggle CRLF.CR", Data, body(b"\r\n.\r"), &[QUEUED, OK]),
        case("smuggle LF.CRLF", Data, body(b"\n.\r\n"), &[QUEUED, OK]),
        case("smuggle CR.CRLF", Data, body(b"\r.\r\n"), &[QUEUED, OK]),
        case("smuggle CRLF.LF", Data, body(b"\r\n.\n"), &[QUEUED, OK]),
        case("smuggle CR.CR", Data, body(b"\r.\r"), &[QUEUED, OK]),
        case(
            // Not the end of data, and refused as a whole for its NUL.
            "smuggle CRLF.NUL CRLF",
            Data,
            body(b"\r\n.\0\r\n"),
            &[NUL, OK],
        ),
        case(
            "smuggle CRLF SP.CRLF",
            Data,
            body(b"\r\n .\r\n"),
            &[QUEUED, OK],
        ),
        // --- AUTH oddities
        case(
            "AUTH PLAIN of a blob without NULs",
            Ehlo,
            "AUTH PLAIN YWJj\r\n",
            &["535 5.7.8 Authentication credentials invalid\r\n"],
        ),
        case(
            "AUTH PLAIN base64 padding only",
            Ehlo,
            "AUTH PLAIN ====\r\n",
            &["501 5.5.2 Invalid base64 data\r\n"],
        ),
        case(
            "AUTH LOGIN cancelled",
            Ehlo,
            "AUTH LOGIN\r\n*\r\n",
            &[
                "334 VXNlcm5hbWU6\r\n",
                "501 5.7.0 Authentication cancelled\r\n",
            ],
        ),
        case(
            "AUTH inside a transaction",
            Mail,
            "AUTH PLAIN AHNjYW5uZXIAeA==\r\n",
            &["503 5.5.1 AUTH not permitted during a mail transaction\r\n"],
        ),
        case(
            "AUTH without mechanism",
            Ehlo,
            "AUTH\r\n",
            &["501 5.5.4 Syntax: AUTH mechanism [initial-response]\r\n"],
        ),
        // --- commands we do not implement
        case(
            "BDAT",
            Rcpt,
            "BDAT 10 LAST\r\n",
            &["502 5.5.1 Command not implemented\r\n"],
        ),
        case(
            "EXPN",
            Ehlo,
            "EXPN staff\r\n",
            &["502 5.5.1 Command not implemented\r\n"],
        ),
        case(
            "ETRN",
            Ehlo,
            "ETRN example.com\r\n",
            &["502 5.5.1 Command not implemented\r\n"],
        ),
        case(
            "HTTP request",
            Greeted,
            "GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            &[UNKNOWN, UNKNOWN, UNKNOWN],
        ),
    ]
}

fn matches(got: &str, want: Expect) -> bool {
    match want.strip_suffix('*') {
        Some(prefix) => got.starts_with(prefix),
        None => got == want,
    }
}

async fn reach(c: &mut Client, at: At) {
    let steps: &[(&str, &str)] = &[
        ("EHLO table", "250"),
        ("MAIL FROM:<a@example.com>", "250"),
        ("RCPT TO:<b@example.com>", "250"),
        ("DATA", "354"),
    ];
    let n = match at {
        At::Greeted => 0,
        At::Ehlo => 1,
        At::Mail => 2,
        At::Rcpt => 3,
        At::Data => 4,
    };
    for (cmd, code) in &steps[..n] {
        assert_ok(&c.cmd(cmd).await, code);
    }
}

#[tokio::test]
async fn malformed_smtp_table() {
    let d = start("").await;
    let cases = cases();
    assert!(cases.len() >= 40, "only {} cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let (mut c, _) = Client::connect(d.smtp_addr()).await;
        reach(&mut c, case.at).await;
        c.send(&case.input).await;
        let mut got = Vec::new();
        for _ in &case.replies {
            got.push(c.reply().await);
        }
        let ok = got.len() == case.replies.len()
            && got.iter().zip(&case.replies).all(|(g, w)| matches(g, w));
        if !ok {
            failures.push(format!(
                "{} ({:?}):\n   sent {:?}\n   want {:?}\n   got  {:?}",
                case.name,
                case.at,
                String::from_utf8_lossy(&case.input[..case.input.len().min(120)]),
                case.replies,
                got
            ));
            continue;
        }
        // Nothing more was answered than expected (e.g. no smuggled command).
        let r = c.cmd("QUIT").await;
        if r != "221 2.0.0 Bye\r\n" {
            failures.push(format!("{}: after the case, QUIT got {r:?}", case.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    assert_serves(&d).await;
    d.stop().await;
}

/// Smuggled commands must stay inside the stored message.
#[tokio::test]
async fn smuggled_text_is_stored_as_content_with_one_recipient() {
    let d = start("").await;
    for tail in [&b"\r.\r\n"[..], b"\r\n.\n", b"\r.\r", b"\r\n .\r\n"] {
        let (mut c, _) = Client::connect(d.smtp_addr()).await;
        reach(&mut c, At::Data).await;
        let mut b = b"Subject: s\r\n\r\nfirst".to_vec();
        b.extend_from_slice(tail);
        b.extend_from_slice(
            b"MAIL FROM:<evil@example.com>\r\nRCPT TO:<victim@example.com>\r\n.\r\n",
        );
        c.send(&b).await;
        let id = queue_id(&c.reply().await);
        let (entry, bytes) = stored(&d, &id);
        assert_eq!(entry.envelope.recipients, vec!["b@example.com".to_string()]);
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            text.contains("RCPT TO:<victim@example.com>"),
            "{tail:?}: {text:?}"
        );
    }
    assert_serves(&d).await;
    d.stop().await;
}

/// Quoted local parts are stored exactly as received (smtp-proto alone drops
/// the quotes, which names another mailbox); `queue show` and delivery use
/// the stored envelope.
#[tokio::test]
async fn quoted_local_parts_are_stored_as_received() {
    let d = start("").await;
    let (mut c, _) = Client::connect(d.smtp_addr()).await;
    reach(&mut c, At::Ehlo).await;
    let reply = c
        .send_mail(
            "\"x y\"@example.com",
            &["\"a b\"@example.com", "\"q\\\"t\"@example.com"],
            b"Subject: s\r\n\r\nbody",
        )
        .await;
    let (entry, _) = stored(&d, &queue_id(&reply));
    assert_eq!(entry.envelope.mail_from, "\"x y\"@example.com");
    assert_eq!(
        entry.envelope.recipients,
        vec![
            "\"a b\"@example.com".to_string(),
            "\"q\\\"t\"@example.com".to_string()
        ]
    );
    assert_serves(&d).await;
    d.stop().await;
}
